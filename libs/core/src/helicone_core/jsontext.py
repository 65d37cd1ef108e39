"""Reading JSON a caller sent (request bodies, header values, gRPC fields)."""

from __future__ import annotations

import json
from typing import Any


def json_object(text: str | bytes) -> dict[str, Any] | None:
    """The JSON object `text` holds; None for text that is not JSON, JSON that is not an object, or JSON
    nested deeper than the parser reads (that raises RecursionError, which is no ValueError)."""
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError):
        return None
    return doc if isinstance(doc, dict) else None

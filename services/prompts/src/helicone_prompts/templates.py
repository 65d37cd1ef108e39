"""Prompt templates: JSON request bodies with {{variable}} placeholders inside string values."""

from __future__ import annotations

import json
import re

PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_\-]*)\s*\}\}")


class TemplateError(ValueError):
    pass


def variables(template_json: str) -> list[str]:
    seen: dict[str, None] = {}
    for m in PLACEHOLDER.finditer(template_json):
        seen.setdefault(m.group(1), None)
    return list(seen)


def validate(template_json: str) -> None:
    try:
        doc = json.loads(template_json)
    except ValueError as exc:
        raise TemplateError(f"template is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise TemplateError("template must be a JSON object (a provider request body)")


def render(template_json: str, inputs: dict[str, str]) -> str:
    """Substitutes every placeholder; values are JSON-escaped so the result stays valid JSON."""
    missing = [v for v in variables(template_json) if v not in inputs]
    if missing:
        raise TemplateError(f"missing inputs: {', '.join(missing)}")
    out = PLACEHOLDER.sub(lambda m: json.dumps(inputs[m.group(1)])[1:-1], template_json)
    json.loads(out)  # a placeholder outside a string value would break the JSON
    return out

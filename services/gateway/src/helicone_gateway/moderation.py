"""Helicone-Moderations-Enabled: the latest message of an OpenAI chat completion, when it is the user's, is sent to
OpenAI's moderation endpoint (next to the chat endpoint, with the caller's own key) before the request is; flagged,
the request is answered with Helicone's 400 and never sent. As in Helicone (worker/src/lib/managers/ModerationManager.ts).

The pure part lives here (what is asked, how the answer is read, the flagged answer's body); the call is the
gateway's (app.py), through its upstream pool. Only requests sending the header ever reach this module."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

MODERATIONS_HEADER = "Helicone-Moderations-Enabled"
# Helicone's answer to a flagged prompt: its code and message, as its docs show them
FLAGGED_CODE = "PROMPT_FLAGGED_FOR_MODERATION"
FLAGGED_MESSAGE = "The given prompt was flagged by the OpenAI Moderation endpoint."
FLAGGED_STATUS = 400
CHAT_PATH = "/chat/completions"
MODERATIONS_PATH = "/moderations"
# The caller's headers the moderation call leaves out: its own body's (it sends JSON, read uncompressed) and the chat
# request's idempotency key (the moderation call is another request)
NOT_SENT = frozenset({"content-type", "content-encoding", "accept", "accept-encoding", "idempotency-key"})
# Moderation endpoint answers relayed with their status (the caller's key, quota or input); any other is a 502
RELAYED = frozenset({400, 401, 403, 429})
MAX_ANSWER_BYTES = 1024 * 1024  # a moderation verdict is a few hundred bytes
REMOVE = f"Remove the header (or send '{MODERATIONS_HEADER}: false') to send the request unmoderated"


class ModerationError(Exception):
    """A moderated request the gateway answers itself: one that cannot be moderated (400), or a moderation call that
    failed (fail closed: the request is never sent unmoderated)."""

    def __init__(
        self,
        status: int,
        message: str,
        kind: str = "helicone_moderation_error",
        logged: str = "",
        headers: tuple[tuple[bytes, bytes], ...] = (),
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.headers = status, message, kind, headers
        self.logged = logged or message  # the log's error: never the endpoint's own message (it may quote the key)


@dataclass(frozen=True)
class Verdict:
    flagged: bool
    categories: tuple[str, ...]  # the flagged categories, sorted


def moderation_path(provider: str, method: str, path: str) -> str:
    """The moderation endpoint's path next to the chat completions `path` (/v1/chat/completions -> /v1/moderations);
    ModerationError (400) for a request Helicone's moderation does not apply to: not OpenAI, or not a chat completion."""
    if provider != "openai":
        raise ModerationError(
            400,
            f"{MODERATIONS_HEADER} works with OpenAI only (it uses OpenAI's moderation endpoint); "
            f"this request goes to {provider!r}. {REMOVE}",
            "helicone_header_error",
        )
    if method != "POST" or not path.endswith(CHAT_PATH):
        raise ModerationError(
            400,
            f"{MODERATIONS_HEADER} moderates chat completions (POST .../chat/completions: the "
            f"latest user message); {method} {path[:200]} has none. {REMOVE}",
            "helicone_header_error",
        )
    return path[: -len(CHAT_PATH)] + MODERATIONS_PATH


def moderation_input(body: bytes) -> Any:
    """What the moderation endpoint is asked about: the latest message's content (a string, or its text and image
    parts), or None when there is nothing to moderate: the latest message is not the user's, or is empty (as in
    Helicone: a tool result or an assistant turn goes as sent). ModerationError (400) when the body has no messages."""
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        doc = None
    messages = doc.get("messages") if isinstance(doc, dict) else None
    if not isinstance(messages, list) or not messages or not isinstance(messages[-1], dict):
        raise ModerationError(
            400,
            f"{MODERATIONS_HEADER}: the request body is not a chat completion with messages "
            '(a JSON object with "messages": [...]), so there is no user message to moderate',
            "helicone_header_error",
        )
    latest = messages[-1]
    content = latest.get("content")
    if latest.get("role") != "user" or not content:
        return None
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return [_part(p) for p in content]
    raise ModerationError(
        400,
        f"{MODERATIONS_HEADER}: the latest user message's content must be a string or a list of content parts",
        "helicone_header_error",
    )


def _part(part: Any) -> dict[str, Any]:
    """A chat content part as the moderation endpoint takes it (text, or an image by URL); any other part cannot be
    moderated, so the request is refused rather than sent with it unchecked."""
    kind = part.get("type") if isinstance(part, dict) else None
    if kind == "text" and isinstance(part.get("text"), str):
        return {"type": "text", "text": part["text"]}
    if kind == "image_url":
        image = part.get("image_url")
        url = image.get("url") if isinstance(image, dict) else image
        if isinstance(url, str):
            return {"type": "image_url", "image_url": {"url": url}}
    raise ModerationError(
        400,
        f"{MODERATIONS_HEADER}: a content part of type {str(kind)[:40]!r} cannot be moderated "
        f"(OpenAI's moderation endpoint takes text and image_url parts). {REMOVE}",
        "helicone_header_error",
    )


def request_headers(forwarded: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The moderation call's headers: the caller's as the provider gets them (its key, organization, project), minus
    NOT_SENT, as JSON."""
    return [(n, v) for n, v in forwarded if n not in NOT_SENT] + [
        ("content-type", "application/json"),
        ("accept", "application/json"),
    ]


def read_verdict(status: int, body: bytes, retry_after: str | None = None) -> Verdict:
    """The moderation endpoint's answer read; ModerationError when it gave none (the request is not sent)."""
    if status != 200:
        relayed = status if status in RELAYED else 502
        detail = _error_message(body)
        message = f"{MODERATIONS_HEADER}: the moderation endpoint answered {status}" + (f" ({detail})" if detail else "")
        headers = ((b"retry-after", retry_after.encode()),) if status == 429 and retry_after else ()
        raise ModerationError(
            relayed,
            message + "; the request was not sent",
            logged=f"{MODERATIONS_HEADER}: the moderation endpoint answered {status}; the request was not sent",
            headers=headers,
        )
    try:
        results = json.loads(body)["results"]
        flagged = [r["flagged"] for r in results]
        if not results or not all(isinstance(f, bool) for f in flagged):
            raise ValueError("no verdict")
        categories = sorted(
            {name for r in results if r["flagged"] for name, on in (r.get("categories") or {}).items() if on is True}
        )
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
        raise ModerationError(
            502,
            f"{MODERATIONS_HEADER}: the moderation endpoint's answer holds no verdict "
            '({"results": [{"flagged": ...}]}); the request was not sent',
        ) from None
    return Verdict(any(flagged), tuple(categories))


def _error_message(body: bytes) -> str:
    """An OpenAI error answer's message, cut short."""
    try:
        message = json.loads(body)["error"]["message"]
    except (ValueError, KeyError, TypeError, RecursionError):
        return ""
    return message[:300] if isinstance(message, str) else ""


def flagged_message(verdict: Verdict) -> str:
    return FLAGGED_MESSAGE + (f" Categories: {', '.join(verdict.categories)}." if verdict.categories else "")


def flagged_body(verdict: Verdict, request_id: str) -> bytes:
    """Helicone's answer to a flagged prompt ({"success": false, "error": {"code", "message", "details"}}) with the
    gateway's error type and the flagged categories."""
    return json.dumps(
        {
            "success": False,
            "error": {
                "code": FLAGGED_CODE,
                "message": flagged_message(verdict),
                "type": "helicone_moderation_flagged",
                "categories": list(verdict.categories),
                "details": f"Logged as request {request_id} (Helicone-Id): GET /v1/request/{request_id}",
            },
        }
    ).encode()

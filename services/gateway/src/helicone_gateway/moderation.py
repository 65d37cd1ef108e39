"""Helicone-Moderations-Enabled: the latest message of an OpenAI chat completion, when it is the user's, is sent to
OpenAI's moderation endpoint (next to the chat endpoint, with the caller's own key) before the request is; flagged,
the request is answered with Helicone's 400 and never sent. As in Helicone (worker/src/lib/managers/ModerationManager.ts).

The pure part lives here (what is asked, how the answer is read, the flagged answer's body); the call is the
gateway's (app.py), through its upstream pool. Only requests sending the header ever reach this module."""

from __future__ import annotations

import json
from typing import Any

from .prompt_check import (
    CHAT_PATH,
    PromptCheck,
    PromptCheckError,
    Verdict,
    check_chat_completion,
    latest_user_content,
)
from .prompt_check import flagged_body as _flagged_body
from .prompt_check import flagged_message as _flagged_message

MODERATIONS_HEADER = "Helicone-Moderations-Enabled"
MODERATION = PromptCheck(
    header=MODERATIONS_HEADER,
    service="the moderation endpoint",
    verbs=("moderates", "moderate", "moderated"),
    parts=frozenset({"text", "image_url"}),
    takes="OpenAI's moderation endpoint takes text and image_url parts",
    unchecked="unmoderated",
    error_kind="helicone_moderation_error",
    flagged_kind="helicone_moderation_flagged",
    timeout_setting="moderation_timeout",
)
# Helicone's answer to a flagged prompt: its code and message, as its docs show them
FLAGGED_CODE = "PROMPT_FLAGGED_FOR_MODERATION"
FLAGGED_MESSAGE = "The given prompt was flagged by the OpenAI Moderation endpoint."
FLAGGED_STATUS = 400
MODERATIONS_PATH = "/moderations"
# The caller's headers the moderation call leaves out: its own body's (it sends JSON, read uncompressed) and the chat
# request's idempotency key (the moderation call is another request)
NOT_SENT = frozenset({"content-type", "content-encoding", "accept", "accept-encoding", "idempotency-key"})
# Moderation endpoint answers relayed with their status (the caller's key, quota or input); any other is a 502
RELAYED = frozenset({400, 401, 403, 429})


def moderation_path(provider: str, method: str, path: str) -> str:
    """The moderation endpoint's path next to the chat completions `path` (/v1/chat/completions -> /v1/moderations);
    PromptCheckError (400) for a request Helicone's moderation does not apply to: not OpenAI, or not a chat completion."""
    if provider != "openai":
        raise MODERATION.refused(
            f"{MODERATIONS_HEADER} works with OpenAI only (it uses OpenAI's moderation endpoint); "
            f"this request goes to {provider!r}. {MODERATION.remove}"
        )
    check_chat_completion(MODERATION, method, path)
    return path[: -len(CHAT_PATH)] + MODERATIONS_PATH


def moderation_input(body: bytes) -> Any:
    """What the moderation endpoint is asked about: the latest user message's content (prompt_check.latest_user_content),
    or None when there is nothing to moderate."""
    return latest_user_content(MODERATION, body)


def request_headers(forwarded: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The moderation call's headers: the caller's as the provider gets them (its key, organization, project), minus
    NOT_SENT, as JSON."""
    return [(n, v) for n, v in forwarded if n not in NOT_SENT] + [
        ("content-type", "application/json"),
        ("accept", "application/json"),
    ]


def read_verdict(status: int, body: bytes, retry_after: str | None = None) -> Verdict:
    """The moderation endpoint's answer read; PromptCheckError when it gave none (the request is not sent)."""
    if status != 200:
        relayed = status if status in RELAYED else 502
        detail = _error_message(body)
        message = f"{MODERATIONS_HEADER}: the moderation endpoint answered {status}" + (f" ({detail})" if detail else "")
        headers = ((b"retry-after", retry_after.encode()),) if status == 429 and retry_after else ()
        raise PromptCheckError(
            relayed,
            message + "; the request was not sent",
            MODERATION.error_kind,
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
        raise PromptCheckError(
            502,
            f"{MODERATIONS_HEADER}: the moderation endpoint's answer holds no verdict "
            '({"results": [{"flagged": ...}]}); the request was not sent',
            MODERATION.error_kind,
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
    return _flagged_message(FLAGGED_MESSAGE, verdict)


def flagged_body(verdict: Verdict, request_id: str) -> bytes:
    """Helicone's answer to a flagged prompt (prompt_check.flagged_body)."""
    return _flagged_body(MODERATION, FLAGGED_CODE, FLAGGED_MESSAGE, verdict, request_id)

"""What the gateway's checks of a prompt before it is sent share: Helicone-Moderations-Enabled (moderation.py) and
Helicone-LLM-Security-Enabled (llm_security.py) each ask a service about a chat completion's latest user message,
refuse (400) a request they cannot check rather than send it unchecked, fail closed when the service gives no verdict,
and answer a blocked prompt in Helicone's shape ({"success": false, "error": {"code", "message", "details"}}).

Pure (what is asked, the errors, the blocked answer); the calls are the gateway's (app.py). Only requests sending one
of the headers ever reach this module."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

CHAT_PATH = "/chat/completions"
MAX_ANSWER_BYTES = 1024 * 1024  # a verdict is a few hundred bytes
HEADER_ERROR = "helicone_header_error"


class PromptCheckError(Exception):
    """A checked request the gateway answers itself: one that cannot be checked (400), or a check that failed (fail
    closed: the request is never sent unchecked)."""

    def __init__(
        self,
        status: int,
        message: str,
        kind: str,
        logged: str = "",
        headers: tuple[tuple[bytes, bytes], ...] = (),
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.headers = status, message, kind, headers
        self.logged = logged or message  # the log's error: never the service's own message (it may quote a key)


@dataclass(frozen=True)
class PromptCheck:
    """One check's facts, as its errors, its metric and its settings name them."""

    header: str  # the request header asking for it
    service: str  # what is asked, as its errors name it ("the moderation endpoint")
    verbs: tuple[str, str, str]  # ("moderates", "moderate", "moderated")
    parts: frozenset[str]  # the chat content part types the service takes
    takes: str  # the same, as an error says it ("OpenAI's moderation endpoint takes text and image_url parts")
    unchecked: str  # a request sent without the check ("unmoderated")
    error_kind: str  # error type of a check that gave no verdict (502, 504)
    flagged_kind: str  # error type of a blocked prompt
    timeout_setting: str  # the GatewaySettings field bounding one call, connection included

    @property
    def remove(self) -> str:
        return f"Remove the header (or send '{self.header}: false') to send the request {self.unchecked}"

    def refused(self, message: str) -> PromptCheckError:
        """The 400 of a request this check does not apply to (never sent unchecked)."""
        return PromptCheckError(400, message, HEADER_ERROR)


@dataclass(frozen=True)
class Verdict:
    flagged: bool
    categories: tuple[str, ...]  # the flagged categories, sorted


def check_chat_completion(check: PromptCheck, method: str, path: str) -> None:
    """PromptCheckError (400) unless the request is a chat completion (POST .../chat/completions)."""
    if method != "POST" or not path.endswith(CHAT_PATH):
        raise check.refused(
            f"{check.header} {check.verbs[0]} chat completions (POST .../chat/completions: the "
            f"latest user message); {method} {path[:200]} has none. {check.remove}"
        )


def latest_user_content(check: PromptCheck, body: bytes) -> Any:
    """What the service is asked about: the latest message's content (a string, or its content parts as the service
    takes them), or None when there is nothing to check: the latest message is not the user's, or is empty (as in
    Helicone: a tool result or an assistant turn goes as sent). PromptCheckError (400) when the body has no messages."""
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        doc = None
    messages = doc.get("messages") if isinstance(doc, dict) else None
    if not isinstance(messages, list) or not messages or not isinstance(messages[-1], dict):
        raise check.refused(
            f"{check.header}: the request body is not a chat completion with messages "
            f'(a JSON object with "messages": [...]), so there is no user message to {check.verbs[1]}'
        )
    latest = messages[-1]
    content = latest.get("content")
    if latest.get("role") != "user" or not content:
        return None
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return [_part(check, p) for p in content]
    raise check.refused(f"{check.header}: the latest user message's content must be a string or a list of content parts")


def _part(check: PromptCheck, part: Any) -> dict[str, Any]:
    """A chat content part as the service takes it (text, or an image by URL where it takes images); any other part
    cannot be checked, so the request is refused rather than sent with it unchecked."""
    kind = part.get("type") if isinstance(part, dict) else None
    if kind in check.parts:
        if kind == "text" and isinstance(part.get("text"), str):
            return {"type": "text", "text": part["text"]}
        if kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            if isinstance(url, str):
                return {"type": "image_url", "image_url": {"url": url}}
    raise check.refused(
        f"{check.header}: a content part of type {str(kind)[:40]!r} cannot be {check.verbs[2]} ({check.takes}). {check.remove}"
    )


def flagged_message(message: str, verdict: Verdict) -> str:
    return message + (f" Categories: {', '.join(verdict.categories)}." if verdict.categories else "")


def flagged_body(check: PromptCheck, code: str, message: str, verdict: Verdict, request_id: str) -> bytes:
    """Helicone's answer to a blocked prompt ({"success": false, "error": {"code", "message", "details"}}) with the
    gateway's error type and the flagged categories."""
    return json.dumps(
        {
            "success": False,
            "error": {
                "code": code,
                "message": flagged_message(message, verdict),
                "type": check.flagged_kind,
                "categories": list(verdict.categories),
                "details": f"Logged as request {request_id} (Helicone-Id): GET /v1/request/{request_id}",
            },
        }
    ).encode()

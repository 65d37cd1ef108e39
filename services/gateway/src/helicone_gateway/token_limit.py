"""Helicone-Token-Limit-Exception-Handler: a chat request the provider refuses for its length is cut to fit and sent
again (`truncate`, `middle-out`), or sent again to the next model its body lists (`fallback`), as Helicone's
(worker/src/lib/util/tokenLimitException.ts) does, but only on the provider's word.

Helicone estimates the tokens before sending (4 characters a token) and cuts when the estimate is over the window, so a
request that fits can be cut (English runs nearer 4.5 characters a token, code and CJK text elsewhere), and its
`truncate` also collapses whitespace and punctuation in every message. Here the request is sent as it is; only a
refusal for its length (OpenAI's context_length_exceeded, Anthropic's "prompt is too long" / "exceed context limit")
gets it cut. The cut is sized by the tokens that refusal counted (an upper bound of one token per UTF-8 byte when it
counts none) against the limit it states (the cost registry's context_window when it states none), less the completion
tokens the body asks for; a cut that is refused again is re-sized from the two counts (at most MAX_CUTS cuts).

The pure part lives here (the header, the body's shape, reading a refusal, cutting); the sending is the gateway's
(app.py). Only requests sending the header ever reach this module."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from helicone_core.jsontext import json_object
from helicone_core.log_headers import HeaderError

TOKEN_LIMIT_HEADER = "Helicone-Token-Limit-Exception-Handler"
TRUNCATE, MIDDLE_OUT, FALLBACK = "truncate", "middle-out", "fallback"
HANDLERS = (TRUNCATE, MIDDLE_OUT, FALLBACK)
# The logged property naming what the handler did to a request its provider refused for its length: the strategy,
# and for fallback the model it went to ("fallback:gpt-4o"); absent when the request went as sent
APPLIED_PROPERTY = "helicone-token-limit-exception-handler"
MAX_CUTS = 3  # cut bodies sent after a refusal (each refusal is immediate, and unbilled)
MAX_CANDIDATES = 5  # models a fallback body may list
MAX_REFUSAL_BYTES = 64 * 1024  # a refusal is a few hundred bytes: a larger 400 is relayed without being read whole
MARGIN = 0.95  # a cut aims this far into the budget: a count re-sized from another body's is not exact
MIDDLE_MARK = " … "  # where middle-out took a text's middle out
CHAT, MESSAGES = "chat", "messages"  # the body shapes: OpenAI chat completions, Anthropic messages
REMOVE = "Remove the header to send the request as it is"


class TokenLimitError(Exception):
    """A request the handler cannot apply to: a 400 naming the header, before anything is sent."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def parse_handler(value: str) -> str:
    """The header's strategy (any case); HeaderError naming the accepted values otherwise."""
    handler = value.strip().lower()
    if handler not in HANDLERS:
        raise HeaderError(f"{TOKEN_LIMIT_HEADER} must be one of {', '.join(HANDLERS)}; got {value[:60]!r}")
    return handler


def body_shape(method: str, path: str, usage: str) -> str:
    """CHAT or MESSAGES for a request the handler applies to; TokenLimitError for any other."""
    path = path.split("?", 1)[0].rstrip("/")
    if method == "POST" and path.endswith("/chat/completions"):
        return CHAT
    if method == "POST" and usage == "anthropic" and path.endswith("/v1/messages"):
        return MESSAGES
    raise TokenLimitError(f"{TOKEN_LIMIT_HEADER} applies to chat completions (POST .../chat/completions) and Anthropic "
                          f"messages (POST /v1/messages); {method} {path[:200]} is neither. {REMOVE}")


def _dump(doc: dict[str, Any]) -> bytes:
    try:
        return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()
    except UnicodeEncodeError:  # an escaped lone surrogate (valid JSON, not UTF-8): written escaped, as it came
        return json.dumps(doc, separators=(",", ":")).encode()


def _chat_doc(body: bytes, where: str) -> dict[str, Any]:
    doc = json_object(body)
    if doc is None or not isinstance(doc.get("messages"), list):
        raise TokenLimitError(f"{where}: the request body is not a chat request with messages "
                              '(a JSON object with "messages": [...])')
    return doc


def _candidates(model: Any) -> list[str]:
    """The models a fallback body lists, each once (next_body finds the one refused by its name)."""
    return list(dict.fromkeys(m.strip() for m in model.split(",") if m.strip())) if isinstance(model, str) else []


def reserved_tokens(doc: dict[str, Any]) -> int:
    """The completion tokens the body asks for, which the provider counts against the window with the prompt."""
    for key in ("max_completion_tokens", "max_tokens"):
        value = doc.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return 0


def _texts(doc: dict[str, Any], shape: str) -> list[tuple[Any, Any]]:
    """Where the body's text is, in order, as (container, key) pairs: message contents and their text parts (OpenAI),
    the system prompt, text blocks and tool results' text (Anthropic). Anything else (images, tool calls and their
    arguments, thinking blocks) is never cut."""
    slots: list[tuple[Any, Any]] = []

    def content(holder: Any, key: Any, result_blocks: bool) -> None:
        value = holder[key]
        if isinstance(value, str):
            slots.append((holder, key))
        elif isinstance(value, list):
            for block in value:
                if not isinstance(block, dict):
                    continue
                kind = block.get("type")
                if kind == "text" and isinstance(block.get("text"), str):
                    slots.append((block, "text"))
                elif result_blocks and kind == "tool_result" and "content" in block:
                    content(block, "content", False)

    if shape == MESSAGES and "system" in doc:
        content(doc, "system", False)
    for message in doc["messages"]:
        if isinstance(message, dict) and "content" in message:
            content(message, "content", shape == MESSAGES)
    return slots


def _cap(lengths: list[int], budget: int) -> int:
    """The largest length every text may keep so that together they keep at most `budget` characters: the longest
    texts are cut first, and a text shorter than the cap is kept whole."""
    used, n = 0, len(lengths)
    for i, length in enumerate(sorted(lengths)):
        if used + length * (n - i) > budget:
            return (budget - used) // (n - i)
        used += length
    return max(lengths, default=0)


def _cut(text: str, keep: int, handler: str) -> str:
    if keep >= len(text):
        return text
    if handler == MIDDLE_OUT and keep > len(MIDDLE_MARK) + 1:
        room = keep - len(MIDDLE_MARK)
        head = (room + 1) // 2
        return text[:head] + MIDDLE_MARK + text[len(text) - (room - head):]
    return text[:keep]


class Refusal:
    """A provider's refusal of a request for its length: the input tokens it counted and the limit it states, where
    its message says them, and whether that limit is the input's alone (GPT-5's "configured limit": the completion
    tokens asked for are not in it)."""

    __slots__ = ("input_only", "limit", "tokens")

    def __init__(self, tokens: int | None, limit: int | None, input_only: bool = False) -> None:
        self.tokens, self.limit, self.input_only = tokens, limit, input_only


_OPENAI_TOKENS = re.compile(r"resulted in (\d+) tokens|\((\d+) in the messages")
_OPENAI_LIMIT = re.compile(r"maximum context length is (\d+) tokens")
_OPENAI_INPUT_LIMIT = re.compile(r"exceed the configured limit of (\d+) tokens")
_ANTHROPIC_TOO_LONG = re.compile(r"prompt is too long: (\d+) tokens > (\d+) maximum")
_ANTHROPIC_WITH_COMPLETION = re.compile(r"exceed context limit: (\d+) \+ (\d+) > (\d+)")


def _number(match: re.Match | None) -> int | None:
    if match is None:
        return None
    return int(next(g for g in match.groups() if g is not None))


def read_refusal(shape: str, status: int, body: bytes) -> Refusal | None:
    """The refusal a provider's answer is, or None when it is another answer (relayed as it came)."""
    if status != 400:
        return None
    doc = json_object(body)
    error = doc.get("error") if doc is not None else None
    if not isinstance(error, dict):
        return None
    message = error.get("message") if isinstance(error.get("message"), str) else ""
    if shape == CHAT:
        input_limit = _OPENAI_INPUT_LIMIT.search(message)
        if (error.get("code") != "context_length_exceeded" and "maximum context length" not in message.lower()
                and input_limit is None):
            return None
        if input_limit is not None:
            return Refusal(_number(_OPENAI_TOKENS.search(message)), int(input_limit.group(1)), input_only=True)
        return Refusal(_number(_OPENAI_TOKENS.search(message)), _number(_OPENAI_LIMIT.search(message)))
    if error.get("type") != "invalid_request_error":
        return None
    too_long = _ANTHROPIC_TOO_LONG.search(message)
    if too_long:
        return Refusal(int(too_long.group(1)), int(too_long.group(2)))
    with_completion = _ANTHROPIC_WITH_COMPLETION.search(message)
    if with_completion:
        return Refusal(int(with_completion.group(1)), int(with_completion.group(3)))
    return None


class Fitting:
    """One target's handling: the body it is sent first, and the body it is sent next after each refusal, until one is
    answered or there is nothing more to try. `applied` says what was done (the APPLIED_PROPERTY value), "" while the
    body goes as sent."""

    __slots__ = ("_points", "applied", "candidates", "first", "handler", "original", "reserved", "sent", "sent_at",
                 "shape", "tries", "window")

    def __init__(self, handler: str, shape: str, body: bytes, model_override: str,
                 window_of: Callable[[str], int | None], where: str = TOKEN_LIMIT_HEADER) -> None:
        """TokenLimitError (a 400 naming `where`) for a body the handler cannot apply to."""
        doc = _chat_doc(body, where)
        self.handler, self.shape, self.original = handler, shape, body
        self.reserved = reserved_tokens(doc)
        self.applied = ""
        self.tries = 0
        self._points: list[tuple[int, int]] = []  # (characters of text, tokens the provider counted) of refused bodies
        self.candidates: list[str] = []
        self.window: int | None = None
        self.first = body
        self.sent = body  # the body last sent (the sender's): first, then each one next_body gave
        self.sent_at = 0.0  # when it was sent (time.perf_counter(), the sender's)
        if handler == FALLBACK:
            self.candidates = _candidates(doc.get("model"))
            if not 2 <= len(self.candidates) <= MAX_CANDIDATES:
                raise TokenLimitError(f"{where}: fallback takes the models to try in the body's \"model\", first the "
                                      f"one to use, then up to {MAX_CANDIDATES - 1} to fall back to, comma-separated: "
                                      f'"model": "gpt-4o, gpt-4.1"; got {str(doc.get("model"))[:120]!r}')
            doc["model"] = self.candidates[0]  # the provider takes one model: the first, until it refuses
            self.first = self.sent = _dump(doc)
            return
        model = model_override or (doc.get("model") if isinstance(doc.get("model"), str) else "")
        if not model:
            raise TokenLimitError(f"{where}: {handler} needs the model, to know its context window: the body's "
                                  f'"model", or Helicone-Model-Override')
        self.window = window_of(model)
        if self.window is None:
            raise TokenLimitError(f"{where}: no context window is known for model {model[:120]!r}, so a request too long "
                                  "for it could not be cut to fit; the gateway's operator can add its context_window "
                                  f"to the cost registry (HELICONE_COST_REGISTRY_FILE). {REMOVE}")
        if not _texts(doc, shape):
            raise TokenLimitError(f"{where}: the request has no text to cut (message contents, text parts). {REMOVE}")

    def next_body(self, sent: bytes, refusal: Refusal) -> bytes | None:
        """The body to send after `sent` was refused; None when there is nothing more to try."""
        if self.handler == FALLBACK:
            tried = self.candidates.index(json.loads(sent)["model"])
            if tried + 1 >= len(self.candidates):
                return None
            model = self.candidates[tried + 1]
            doc = json.loads(self.first)
            doc["model"] = model
            self.applied = f"{FALLBACK}:{model}"
            return _dump(doc)
        if self.tries >= MAX_CUTS:
            return None
        doc = json.loads(sent)
        chars = sum(len(holder[key]) for holder, key in _texts(doc, self.shape))
        tokens = refusal.tokens if refusal.tokens is not None else len(sent)  # at most a token per byte
        self._points.append((chars, tokens))
        limit = refusal.limit or self.window or 0
        budget = (limit - (0 if refusal.input_only else self.reserved)) * MARGIN
        target = self._target_chars(budget)
        original = json.loads(self.original)
        slots = _texts(original, self.shape)
        lengths = [len(holder[key]) for holder, key in slots]
        if target is None or target >= chars or target < len(slots):
            return None
        cap = _cap(lengths, target)
        if cap < 1:
            return None
        for holder, key in slots:
            holder[key] = _cut(holder[key], cap, self.handler)
        self.tries += 1
        self.applied = self.handler
        return _dump(original)

    def _target_chars(self, budget: float) -> int | None:
        """How many characters of text fit `budget` tokens, by the refused bodies' counts: their tokens taken as
        proportional to their text from one count, as a line through the last two (what the cut text weighed) once
        there are two."""
        if budget <= 0:
            return None
        chars, tokens = self._points[-1]
        if len(self._points) == 1:
            return int(budget * chars / tokens) if tokens > 0 else None
        before_chars, before_tokens = self._points[-2]
        if before_chars <= chars or before_tokens <= tokens:
            return None
        per_char = (before_tokens - tokens) / (before_chars - chars)
        return int(chars - (tokens - budget) / per_char)

"""A strict stand-in for Anthropic's Messages API (POST /v1/messages, JSON and SSE): it refuses a request the way
Anthropic does (tests.support.fake_upstream's /v1/messages takes anything), so a translation that builds an invalid
request fails here as it would there.

Checked as Anthropic checks them: x-api-key (401) and anthropic-version (400) headers; no top-level, message or block
field Anthropic does not take ("Extra inputs are not permitted": an OpenAI field leaking through); model and max_tokens
required; roles user and assistant only, alternating; no empty content nor empty text block; image sources (base64 of
jpeg/png/gif/webp, or a URL); each assistant turn's tool_use ids answered by tool_result blocks at the start of the
next user turn, every tool_result answering one; tool_use/tool_result blocks only with tools defined; tool names and
input_schema objects; tool_choice (its tool defined); temperature 0..1; stop sequences not white space alone;
metadata.user_id only (no e-mail address); thinking's budget (>= 1024, < max_tokens) and what it forbids (a forced
tool, a temperature other than 1, a last assistant turn calling a tool without its thinking block first).

Answers: REPLY (cut at the first stop sequence, or at max_tokens words: stop_reason stop_sequence / max_tokens); with
tools, a call of the forced tool or the first one (input from `x-fake-tool-input`, JSON; `x-fake-parallel: N` calls
unless parallel use is disabled) unless the last user turn holds tool results; with thinking, a thinking block first.
Usage: input = words of the system and messages' texts, output = words answered; `x-fake-usage` (JSON) merged into it.
`x-fake-status: N` answers that error status (529 overloaded, 429 rate limited, ...), `x-fake-stream-error: 1` an
error event after the first text delta, `x-fake-hold: 1` holds a stream after its first text delta until
app.state.hold is set. Every request is recorded in app.state.received (path, headers, body)."""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import re
import uuid

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

REPLY = "Hello from the strict fake Claude"
THINKING = "Let me think about this."
TOOL_PREFACE = "Let me check."
BAD_KEY = "sk-ant-bad"
TOP_LEVEL = {"model", "messages", "max_tokens", "system", "metadata", "stop_sequences", "stream", "temperature", "top_p",
             "top_k", "tools", "tool_choice", "thinking", "service_tier", "container", "mcp_servers"}
IMAGE_TYPES = {"image/jpeg", "image/png", "image/gif", "image/webp"}
TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,128}$")
BLOCK_FIELDS = {
    "text": {"type", "text", "cache_control", "citations"},
    "image": {"type", "source", "cache_control"},
    "document": {"type", "source", "cache_control", "title", "context", "citations"},
    "tool_use": {"type", "id", "name", "input", "cache_control"},
    "tool_result": {"type", "tool_use_id", "content", "is_error", "cache_control"},
    "thinking": {"type", "thinking", "signature"},
    "redacted_thinking": {"type", "data"},
}
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error", 404: "not_found_error",
               413: "request_too_large", 429: "rate_limit_error", 500: "api_error", 529: "overloaded_error"}


class Invalid(Exception):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message, self.status = message, status


def error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"type": "error", "error": {"type": ERROR_TYPES.get(status, "api_error"), "message": message},
                         "request_id": "req_fake_" + uuid.uuid4().hex[:8]}, status_code=status, headers=headers)


def _extra(where: str, got: dict, allowed: set[str]) -> None:
    for key in got:
        if key not in allowed:
            raise Invalid(f"{where}.{key}: Extra inputs are not permitted")


def _text_words(text) -> int:
    return len(str(text).split())


def _block(block, where: str, role: str) -> None:
    if not isinstance(block, dict) or block.get("type") not in BLOCK_FIELDS:
        raise Invalid(f"{where}.type: Input tag {block.get('type') if isinstance(block, dict) else block!r} "
                      f"found using 'type' does not match any of the expected tags")
    kind = block["type"]
    _extra(where, block, BLOCK_FIELDS[kind])
    if kind == "text":
        if not isinstance(block.get("text"), str):
            raise Invalid(f"{where}.text: Field required")
        if not block["text"]:
            raise Invalid(f"{where}: text content blocks must be non-empty")
    elif kind in ("image", "document"):
        source = block.get("source")
        if not isinstance(source, dict):
            raise Invalid(f"{where}.source: Field required")
        if source.get("type") == "base64":
            _extra(f"{where}.source", source, {"type", "media_type", "data"})
            allowed = IMAGE_TYPES if kind == "image" else {"application/pdf"}
            if source.get("media_type") not in allowed:
                raise Invalid(f"{where}.source.media_type: Input should be {' or '.join(sorted(allowed))}")
            try:
                base64.b64decode(source.get("data") or "", validate=True)
            except (binascii.Error, ValueError):
                raise Invalid(f"{where}.source.data: invalid base64 data") from None
        elif source.get("type") == "url":
            _extra(f"{where}.source", source, {"type", "url"})
            if not str(source.get("url", "")).startswith(("http://", "https://")):
                raise Invalid(f"{where}.source.url: invalid URL")
        else:
            raise Invalid(f"{where}.source.type: unknown source type")
    elif kind == "tool_use":
        if role != "assistant":
            raise Invalid(f"{where}: tool_use blocks are only allowed in assistant messages")
        if not isinstance(block.get("id"), str) or not isinstance(block.get("name"), str) or not isinstance(block.get("input"), dict):
            raise Invalid(f"{where}: tool_use needs an id, a name and an input object")
    elif kind == "tool_result":
        if role != "user":
            raise Invalid(f"{where}: tool_result blocks are only allowed in user messages")
        content = block.get("content")
        if isinstance(content, list):
            for k, inner in enumerate(content):
                if not isinstance(inner, dict) or inner.get("type") not in ("text", "image"):
                    raise Invalid(f"{where}.content.{k}: tool_result content is text or image blocks")
                _block(inner, f"{where}.content.{k}", role)
        elif content is not None and not isinstance(content, str):
            raise Invalid(f"{where}.content: Input should be a valid string or list")


def validate(headers, body) -> None:
    """Raises Invalid as Anthropic would refuse the request."""
    key = headers.get("x-api-key")
    if not key:
        raise Invalid("x-api-key header is required", 401)
    if key == BAD_KEY:
        raise Invalid("invalid x-api-key", 401)
    if not headers.get("anthropic-version"):
        raise Invalid("anthropic-version: header is required")
    if not isinstance(body, dict):
        raise Invalid("body: Input should be a valid dictionary")
    _extra("body", body, TOP_LEVEL)
    if not isinstance(body.get("model"), str):
        raise Invalid("model: Field required")
    max_tokens = body.get("max_tokens")
    if max_tokens is None:
        raise Invalid("max_tokens: Field required")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise Invalid("max_tokens: Input should be greater than or equal to 1")
    system = body.get("system")
    if system is not None:
        if isinstance(system, list):
            for i, block in enumerate(system):
                if not isinstance(block, dict) or block.get("type") != "text":
                    raise Invalid(f"system.{i}: system blocks are text blocks")
                _block(block, f"system.{i}", "system")
        elif not isinstance(system, str):
            raise Invalid("system: Input should be a valid string or list")
    temperature = body.get("temperature")
    if temperature is not None and not (isinstance(temperature, (int, float)) and 0 <= temperature <= 1):
        raise Invalid("temperature: Input should be less than or equal to 1")
    stops = body.get("stop_sequences")
    if stops is not None:
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise Invalid("stop_sequences: Input should be a valid list of strings")
        if any(not s.strip() for s in stops):
            raise Invalid("stop_sequences: each stop sequence must contain non-whitespace")
    metadata = body.get("metadata")
    if metadata is not None:
        _extra("metadata", metadata, {"user_id"})
        if len(str(metadata.get("user_id", ""))) > 256:
            raise Invalid("metadata.user_id: String should have at most 256 characters")
        if re.search(r"[^@\s]+@[^@\s]+\.[a-z]{2,}", str(metadata.get("user_id", "")), re.IGNORECASE):
            raise Invalid("metadata.user_id: user_id appears to contain an email address. Please send a uuid or hash value")
    tools = body.get("tools") or []
    names = set()
    for i, tool in enumerate(tools):
        _extra(f"tools.{i}", tool, {"name", "description", "input_schema", "cache_control", "type"})
        if not TOOL_NAME.match(str(tool.get("name", ""))):
            raise Invalid(f"tools.{i}.name: String should match pattern '^[a-zA-Z0-9_-]{{1,128}}$'")
        schema = tool.get("input_schema")
        if not isinstance(schema, dict) or schema.get("type") != "object":
            raise Invalid(f"tools.{i}.input_schema.type: Input should be 'object'")
        names.add(tool["name"])
    choice = body.get("tool_choice")
    if choice is not None:
        kinds = {"auto": {"type", "disable_parallel_tool_use"}, "any": {"type", "disable_parallel_tool_use"},
                 "tool": {"type", "name", "disable_parallel_tool_use"}, "none": {"type"}}
        if not isinstance(choice, dict) or choice.get("type") not in kinds:
            raise Invalid("tool_choice.type: Input tag does not match any of the expected tags: 'auto', 'any', 'tool', 'none'")
        _extra("tool_choice", choice, kinds[choice["type"]])
        if choice["type"] == "tool" and choice.get("name") not in names:
            raise Invalid(f"tool_choice.name: tool {choice.get('name')!r} is not among the tools")
    thinking = body.get("thinking")
    if thinking is not None:
        if thinking.get("type") == "enabled":
            _extra("thinking", thinking, {"type", "budget_tokens"})
            budget = thinking.get("budget_tokens")
            if not isinstance(budget, int) or budget < 1024:
                raise Invalid("thinking.enabled.budget_tokens: Input should be greater than or equal to 1024")
            if max_tokens <= budget:
                raise Invalid("`max_tokens` must be greater than `thinking.budget_tokens`")
            if choice is not None and choice.get("type") in ("any", "tool"):
                raise Invalid("Thinking may not be enabled when tool_choice forces tool use.")
            if temperature is not None and temperature != 1:
                raise Invalid("`temperature` may only be set to 1 when thinking is enabled.")
            turns = [m for m in body.get("messages") or [] if isinstance(m, dict) and m.get("role") == "assistant"]
            content = turns[-1].get("content") if turns else None
            if (isinstance(content, list) and any(isinstance(b, dict) and b.get("type") == "tool_use" for b in content)
                    and (not isinstance(content[0], dict) or content[0].get("type") not in ("thinking", "redacted_thinking"))):
                raise Invalid("messages.1.content.0.type: Expected `thinking` or `redacted_thinking`, but found "
                              f"`{content[0].get('type') if isinstance(content[0], dict) else content[0]}`. When "
                              "`thinking` is enabled, a final `assistant` message must start with a thinking block.")
        elif thinking.get("type") != "disabled":
            raise Invalid("thinking.type: Input tag does not match any of the expected tags: 'enabled', 'disabled'")
    _validate_messages(body.get("messages"), bool(tools))


def _validate_messages(messages, tools: bool) -> None:
    if not isinstance(messages, list) or not messages:
        raise Invalid("messages: Field required")
    pending: set[str] = set()  # the previous assistant turn's tool_use ids
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise Invalid(f"messages.{i}: Input should be a valid dictionary")
        _extra(f"messages.{i}", m, {"role", "content"})
        role = m.get("role")
        if role not in ("user", "assistant"):
            raise Invalid(f"messages.{i}.role: Input should be 'user' or 'assistant'" + (
                " (the Messages API takes a top-level `system` parameter, not \"system\" as an input message role)"
                if role == "system" else ""))
        if i and messages[i - 1].get("role") == role:
            raise Invalid(f"messages: roles must alternate between \"user\" and \"assistant\", but found multiple "
                          f"\"{role}\" roles in a row")
        content = m.get("content")
        last = i == len(messages) - 1
        if content in ("", []) and not (last and role == "assistant"):
            raise Invalid(f"messages.{i}: all messages must have non-empty content except for the optional final "
                          "assistant message")
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
        if not isinstance(blocks, list):
            raise Invalid(f"messages.{i}.content: Input should be a valid string or list")
        if isinstance(content, str) and last and role == "assistant" and content != content.rstrip():
            raise Invalid("final assistant content cannot end with trailing whitespace")
        for j, block in enumerate(blocks if isinstance(content, list) else []):
            _block(block, f"messages.{i}.content.{j}", role)
            if block["type"] in ("tool_use", "tool_result") and not tools:
                raise Invalid("Requests which include `tool_use` or `tool_result` blocks must define tools.")
        results = [b.get("tool_use_id") for b in blocks if isinstance(b, dict) and b.get("type") == "tool_result"]
        if role == "user":
            if pending:
                leading = []
                for b in blocks:
                    if b.get("type") != "tool_result":
                        break
                    leading.append(b.get("tool_use_id"))
                missing = pending - set(leading)
                if missing:
                    raise Invalid(f"messages.{i}: Did not find {len(pending)} `tool_result` block(s) at the beginning "
                                  "of this message. Messages following `tool_use` blocks must begin with a matching "
                                  f"number of `tool_result` blocks. (missing: {', '.join(sorted(missing))})")
            for j, tid in enumerate(results):
                if tid not in pending:
                    raise Invalid(f"messages.{i}.content.{j}: unexpected `tool_use_id` found in `tool_result` blocks: "
                                  f"{tid}. Each `tool_result` block must have a corresponding `tool_use` block in the "
                                  "previous message.")
            pending = set()
        else:
            pending = {b.get("id") for b in blocks if isinstance(b, dict) and b.get("type") == "tool_use"}
            if pending and not last and messages[i + 1].get("role") != "user":
                raise Invalid(f"messages.{i}: `tool_use` ids were found without `tool_result` blocks immediately after")
    if pending:
        raise Invalid(f"messages.{len(messages) - 1}: `tool_use` ids were found without `tool_result` blocks "
                      f"immediately after: {', '.join(sorted(pending))}. Each `tool_use` block must have a "
                      "corresponding `tool_result` block in the next message.")


def _input_words(body: dict) -> int:
    total = 0
    system = body.get("system")
    if isinstance(system, str):
        total += _text_words(system)
    elif isinstance(system, list):
        total += sum(_text_words(b.get("text", "")) for b in system)
    for m in body["messages"]:
        content = m["content"]
        if isinstance(content, str):
            total += _text_words(content)
            continue
        for b in content:
            if b["type"] == "text":
                total += _text_words(b["text"])
            elif b["type"] == "tool_result" and isinstance(b.get("content"), str):
                total += _text_words(b["content"])
    return total


def _answer(request: Request, body: dict) -> tuple[list[dict], str, str | None]:
    """(content blocks, stop_reason, stop_sequence) of the answer."""
    blocks: list[dict] = []
    if (body.get("thinking") or {}).get("type") == "enabled":
        blocks.append({"type": "thinking", "thinking": THINKING, "signature": "sig_" + uuid.uuid4().hex[:8]})
    tools = body.get("tools") or []
    choice = body.get("tool_choice") or {"type": "auto"}
    last = body["messages"][-1]
    answered = last["role"] == "user" and isinstance(last["content"], list) and any(
        b["type"] == "tool_result" for b in last["content"])
    if tools and choice["type"] != "none" and not (answered and choice["type"] == "auto"):
        name = choice["name"] if choice["type"] == "tool" else tools[0]["name"]
        tool_input = json.loads(request.headers.get("x-fake-tool-input", '{"city": "Paris"}'))
        calls = 1 if choice.get("disable_parallel_tool_use") else int(request.headers.get("x-fake-parallel", "1"))
        if choice["type"] == "auto":
            blocks.append({"type": "text", "text": TOOL_PREFACE})
        for _ in range(calls):
            blocks.append({"type": "tool_use", "id": "toolu_" + uuid.uuid4().hex[:12], "name": name, "input": tool_input})
        return blocks, "tool_use", None
    words = REPLY.split(" ")
    text, stop_reason, stop_sequence = REPLY, "end_turn", None
    for seq in body.get("stop_sequences") or []:
        at = REPLY.find(seq)
        if at >= 0 and (stop_sequence is None or at < len(text)):
            text, stop_reason, stop_sequence = REPLY[:at], "stop_sequence", seq
    if len(text.split()) > body["max_tokens"]:
        text, stop_reason, stop_sequence = " ".join(words[:body["max_tokens"]]), "max_tokens", None
    blocks.append({"type": "text", "text": text})
    return blocks, stop_reason, stop_sequence


def _output_words(blocks: list[dict]) -> int:
    return sum(_text_words(b.get("text", b.get("thinking", ""))) if b["type"] != "tool_use" else 10 for b in blocks)


def create_app() -> FastAPI:
    app = FastAPI()
    app.state.received = []
    app.state.hold = asyncio.Event()

    @app.post("/v1/messages")
    async def messages(request: Request):
        raw = await request.body()
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        app.state.received.append({"path": request.url.path, "headers": dict(request.headers), "body": body})
        try:
            validate(request.headers, body)
        except Invalid as exc:
            return error(exc.status, exc.message)
        status = int(request.headers.get("x-fake-status", "0") or 0)
        if status:
            return error(status, {529: "Overloaded", 429: "Number of request tokens has exceeded your rate limit"}.get(
                status, "fake failure"), {"retry-after": "7"} if status == 429 else None)
        if body["model"] == "claude-unknown":
            return error(404, f"model: {body['model']}")
        blocks, stop_reason, stop_sequence = _answer(request, body)
        mid = "msg_" + uuid.uuid4().hex[:16]
        usage = {"input_tokens": _input_words(body), "output_tokens": _output_words(blocks),
                 **json.loads(request.headers.get("x-fake-usage", "{}"))}
        if not body.get("stream"):
            return {"id": mid, "type": "message", "role": "assistant", "model": body["model"], "content": blocks,
                    "stop_reason": stop_reason, "stop_sequence": stop_sequence, "usage": usage}
        return StreamingResponse(_events(app, request, body, mid, blocks, stop_reason, stop_sequence, usage),
                                 media_type="text/event-stream")

    return app


async def _events(app, request: Request, body: dict, mid: str, blocks: list[dict], stop_reason: str,
                  stop_sequence: str | None, usage: dict):
    def ev(kind: str, data: dict) -> bytes:
        return f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}\n\n".encode()

    start_usage = {**usage, "output_tokens": 1}
    yield ev("message_start", {"message": {"id": mid, "type": "message", "role": "assistant", "model": body["model"],
                                           "content": [], "stop_reason": None, "stop_sequence": None, "usage": start_usage}})
    yield ev("ping", {})
    first_text = True
    for index, block in enumerate(blocks):
        if block["type"] == "text":
            yield ev("content_block_start", {"index": index, "content_block": {"type": "text", "text": ""}})
            words = block["text"].split(" ")
            for k, word in enumerate(words):
                yield ev("content_block_delta", {"index": index, "delta": {"type": "text_delta",
                                                                           "text": word if k == 0 else " " + word}})
                if first_text:
                    first_text = False
                    if request.headers.get("x-fake-stream-error") == "1":
                        yield ev("error", {"error": {"type": "overloaded_error", "message": "Overloaded"}})
                        return
                    if request.headers.get("x-fake-hold") == "1":
                        await app.state.hold.wait()
        elif block["type"] == "thinking":
            yield ev("content_block_start", {"index": index, "content_block": {"type": "thinking", "thinking": ""}})
            yield ev("content_block_delta", {"index": index, "delta": {"type": "thinking_delta", "thinking": block["thinking"]}})
            yield ev("content_block_delta", {"index": index, "delta": {"type": "signature_delta", "signature": block["signature"]}})
        else:  # tool_use: its input's JSON in pieces, the first empty (as Anthropic sends it)
            yield ev("content_block_start", {"index": index, "content_block": {"type": "tool_use", "id": block["id"],
                                                                               "name": block["name"], "input": {}}})
            text = json.dumps(block["input"])
            pieces = [""] + ([text[:len(text) // 2], text[len(text) // 2:]] if block["input"] else [])
            for piece in pieces:
                yield ev("content_block_delta", {"index": index, "delta": {"type": "input_json_delta", "partial_json": piece}})
        yield ev("content_block_stop", {"index": index})
    yield ev("message_delta", {"delta": {"stop_reason": stop_reason, "stop_sequence": stop_sequence},
                               "usage": {"output_tokens": usage["output_tokens"]}})
    yield ev("message_stop", {})

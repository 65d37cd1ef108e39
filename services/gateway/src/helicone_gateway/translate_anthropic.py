"""OpenAI Chat Completions in, Anthropic's Messages API out: the gateway's /ai route.

A caller using the OpenAI SDK with base_url `<gateway>/ai` and model `anthropic/<Claude model>` (Helicone's AI Gateway's
unified path and model form; LiteLLM's model form) has its request translated to POST /v1/messages and Anthropic's
answer translated back: a JSON answer once read, a stream event by event as it arrives. What is mapped, ignored (as
Anthropic's own OpenAI SDK compatibility layer ignores it) or refused is listed in the README ("OpenAI SDK to Claude").
Only requests under OPENAI_CHAT_PREFIX come here; no other request pays for any of it."""

from __future__ import annotations

import json
import re
import time
import zlib
from dataclasses import dataclass

from helicone_core.cost import TokenCounts
from helicone_core.jsontext import json_object
from helicone_core.usage import AnthropicStreamUsage, anthropic_usage

from .llm_security import LLM_SECURITY_HEADER
from .moderation import MODERATIONS_HEADER
from .resilience import FALLBACKS
from .token_limit import TOKEN_LIMIT_HEADER

OPENAI_CHAT_PREFIX = "/ai/"  # Helicone's AI Gateway's unified API: base_url <gateway>/ai
CHAT_PATHS = ("/chat/completions", "/v1/chat/completions")  # after the prefix: base_url .../ai or .../ai/v1
MESSAGES_PATH = "/v1/messages"
PROVIDER = "anthropic"  # the one provider translated to; the model's `anthropic/` prefix
ANTHROPIC_VERSION = "2023-06-01"  # sent unless the caller sends its own anthropic-version
# Anthropic requires max_tokens; OpenAI's is optional. LiteLLM's default for Anthropic (DEFAULT_ANTHROPIC_CHAT_MAX_TOKENS)
DEFAULT_MAX_TOKENS = 4096
# reasoning_effort as extended thinking budgets (LiteLLM's DEFAULT_REASONING_EFFORT_*_THINKING_BUDGET); "minimal" and
# "none" ask for no thinking (Anthropic's smallest budget is 1024)
THINKING_BUDGETS = {"low": 1024, "medium": 2048, "high": 4096}
NO_THINKING = ("none", "minimal")
# response_format json_schema / json_object: a tool Claude is made to call, its input the answer (LiteLLM's name)
JSON_TOOL = "json_tool_call"
IMAGE_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
# the caller's OpenAI headers Anthropic has no use for (its OpenAI account), never sent to it
OPENAI_ONLY_HEADERS = frozenset({"openai-organization", "openai-project", "openai-beta"})
# an answer to translate larger than this is not held (a JSON answer is read whole; a stream line at a time)
MAX_ANSWER_BYTES = 32 * 1024 * 1024
FINISH_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "pause_turn": "stop", "max_tokens": "length",
                  "model_context_window_exceeded": "length", "tool_use": "tool_calls", "refusal": "content_filter"}
# Anthropic asks for an opaque user id and refuses an e-mail address (400): one, or a phone number, is not sent (as
# LiteLLM does); a number alone (a database id) is
_PERSONAL = re.compile(r"^[a-zA-Z0-9._%+-]+@[a-zA-Z0-9.-]+\.[a-zA-Z]{2,}$|^\+\d[\d\s()-]{6,}$|^\(?\d{3}\)?[\s-]\d{3}[\s-]\d{4}$")
MAX_USER_ID = 256  # Anthropic's metadata.user_id limit


class TranslationError(Exception):
    """A request the translation cannot make into a valid Messages request: a 400 naming the OpenAI field (`param`)."""

    def __init__(self, message: str, param: str = "", status: int = 400) -> None:
        super().__init__(message)
        self.message, self.param, self.status = message, param, status

    def body(self) -> bytes:
        return openai_error(self.message, "invalid_request_error", self.param or None)


def openai_error(message: str, kind: str, param: str | None = None) -> bytes:
    """OpenAI's error shape, which its SDKs read (message, type, param, code)."""
    return _dumps({"error": {"message": message, "type": kind, "param": param, "code": None}})


def upstream_path(path: str) -> str:
    """The Anthropic path of a path after OPENAI_CHAT_PREFIX (starting with /): /v1/messages for chat completions;
    any other keeps the prefix (never an Anthropic path: check_request refuses it)."""
    return MESSAGES_PATH if path in CHAT_PATHS else OPENAI_CHAT_PREFIX[:-1] + path


def check_request(method: str, path: str, headers: tuple[tuple[str, bool], ...]) -> TranslationError | None:
    """Why a request under OPENAI_CHAT_PREFIX cannot be translated before its body is read: another path or method,
    or a Helicone feature that cannot apply to it (`headers`: (header, sent)); None when it can."""
    if path != MESSAGES_PATH:
        return TranslationError(f"{path[:200]} is not translated: only POST "
                                f"{OPENAI_CHAT_PREFIX}chat/completions (OpenAI's Chat Completions, base_url "
                                f"<gateway>{OPENAI_CHAT_PREFIX.rstrip('/')}) is; call other Anthropic APIs at /anthropic/...",
                                status=404)
    if method != "POST":
        return TranslationError(f"{method} is not allowed: chat completions are created with POST", status=405)
    for header, sent in headers:
        if sent:
            return TranslationError(f"{header} does not apply to OpenAI requests translated to Anthropic "
                                    f"({OPENAI_CHAT_PREFIX}...); send the request without it, or call Anthropic's API "
                                    "at /anthropic/v1/messages")
    return None


def refused_headers(fallbacks: bool, token_limit: bool, moderations: bool, llm_security: bool) -> tuple[tuple[str, bool], ...]:
    """The Helicone features a translated request cannot have, as check_request takes them: fallbacks (a target of
    another provider cannot take the translated body), Helicone-Token-Limit-Exception-Handler (it cuts the body it was
    given), the prompt checks (they read chat completions at their own paths; moderation needs an OpenAI key)."""
    return ((FALLBACKS, fallbacks), (TOKEN_LIMIT_HEADER, token_limit), (MODERATIONS_HEADER, moderations),
            (LLM_SECURITY_HEADER, llm_security))


def _dumps(doc) -> bytes:
    try:
        return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()
    except UnicodeEncodeError:  # a lone surrogate the caller sent escaped: written escaped, as it came
        return json.dumps(doc, separators=(",", ":")).encode()


# ---- request ------------------------------------------------------------------------------------------------


@dataclass
class ChatRequest:
    """What translating the answer needs from the request."""

    stream: bool = False
    include_usage: bool = False  # stream_options.include_usage (or Helicone-Stream-Usage): a last chunk with the usage
    json_mode: bool = False  # response_format became JSON_TOOL: its input is the answer's content
    # the caller's body: the cache's key (Helicone-Cache-Ignore-Keys names the caller's fields, `user` say)
    source: bytes = b""

    def upstream_headers(self, forwarded: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """The headers Anthropic gets, from those the gateway forwards: the OpenAI SDK's `Authorization: Bearer <key>`
        as x-api-key (unless the caller sent one: then both go as sent), anthropic-version unless sent, anthropic-beta
        as sent, no OpenAI account headers, and an answer asked for unencoded (it is translated)."""
        out: list[tuple[str, str]] = []
        bearer = ""
        has_key = has_version = False
        for name, value in forwarded:
            if name in OPENAI_ONLY_HEADERS or name == "accept-encoding":
                continue
            if name == "authorization" and value[:7].lower() == "bearer ":
                bearer = value
                continue
            has_key = has_key or name == "x-api-key"
            has_version = has_version or name == "anthropic-version"
            out.append((name, value))
        if bearer:
            out.append(("authorization", bearer) if has_key else ("x-api-key", bearer[7:].strip()))
        if not has_version:
            out.append(("anthropic-version", ANTHROPIC_VERSION))
        out.append(("accept-encoding", "identity"))
        return out

    def answer(self, status: int, content_type: str, encoding: str) -> Answer:
        """The translation of Anthropic's answer with this status and these headers."""
        if 200 <= status < 300 and "text/event-stream" in content_type:
            return StreamAnswer(self, encoding)
        return JsonAnswer(self, status, encoding)


def translate_request(body: bytes, stream_usage: bool = False) -> tuple[bytes, ChatRequest, str]:
    """(the Messages request, what its answer's translation needs, the caller's `user`) of an OpenAI chat completion
    request body; TranslationError naming the field when it cannot be one. stream_usage: Helicone-Stream-Usage."""
    doc = json_object(body)
    if doc is None:
        raise TranslationError("the request body must be a JSON object: an OpenAI chat completion request")
    model = _model(doc.get("model"))
    n = doc.get("n")
    if n is not None and n != 1:
        raise TranslationError(f"n: Claude gives one choice per request; send n=1 or leave it out (got {n!r})", "n")
    for legacy in ("functions", "function_call"):
        if doc.get(legacy) is not None:
            raise TranslationError(f"{legacy} (deprecated by OpenAI) is not translated: send tools and tool_choice", legacy)
    system, messages = _messages(doc.get("messages"))
    out: dict = {"model": model, "messages": messages}
    if system:
        out["system"] = system
    chat = ChatRequest(stream=doc.get("stream") is True, source=body)
    thinking = doc.get("thinking")  # Anthropic's own, as its compatibility layer takes it (extra_body)
    effort = doc.get("reasoning_effort")
    if thinking is None and effort is not None and effort not in NO_THINKING:
        if not isinstance(effort, str) or effort not in THINKING_BUDGETS:
            raise TranslationError(f"reasoning_effort: {effort!r} is not one of {', '.join(THINKING_BUDGETS)}, "
                                   f"{', '.join(NO_THINKING)}", "reasoning_effort")
        # Anthropic wants a tool-using assistant turn back with its signed thinking, which OpenAI's messages cannot
        # carry: the answer to tool results goes on without thinking rather than fail
        if not _tool_turn(messages):
            thinking = {"type": "enabled", "budget_tokens": THINKING_BUDGETS[effort]}
    out["max_tokens"] = _max_tokens(doc, thinking)
    if (temperature := doc.get("temperature")) is not None:
        # Anthropic takes 0 to 1; its compatibility layer caps OpenAI's larger values (up to 2) at 1
        capped = isinstance(temperature, (int, float)) and not isinstance(temperature, bool)
        out["temperature"] = min(temperature, 1) if capped else temperature
    for name in ("top_p", "top_k"):
        if doc.get(name) is not None:
            out[name] = doc[name]
    stops = _stop(doc.get("stop"))
    if stops:
        out["stop_sequences"] = stops
    if chat.stream:
        out["stream"] = True
        options = doc.get("stream_options")
        chat.include_usage = stream_usage or (isinstance(options, dict) and options.get("include_usage") is True)
    tools = _tools(doc.get("tools"))
    if tools:
        out["tools"] = tools
    choice = _tool_choice(doc.get("tool_choice"), doc.get("parallel_tool_calls"), bool(tools))
    if choice is not None:
        out["tool_choice"] = choice
    if _json_tool(doc.get("response_format"), out, thinking):
        chat.json_mode = True
    if thinking is not None:
        out["thinking"] = thinking
    user = doc.get("user") if isinstance(doc.get("user"), str) else ""
    user_id = doc.get("safety_identifier") if isinstance(doc.get("safety_identifier"), str) else user
    if user_id and len(user_id) <= MAX_USER_ID and not _PERSONAL.match(user_id):
        out["metadata"] = {"user_id": user_id}
    try:
        return _dumps(out), chat, user
    except RecursionError:  # a tool call's arguments (a string the caller sends) nested deeper than JSON is written
        raise TranslationError("the request's JSON is nested too deeply to be sent to Anthropic (a tool call's "
                               "arguments?)") from None


def _model(value) -> str:
    """The Claude model of `anthropic/<model>` (or `<model>/anthropic`)."""
    if isinstance(value, str):
        head, sep, rest = value.partition("/")
        if sep and head == PROVIDER and rest:
            return rest
        head, sep, tail = value.rpartition("/")
        if sep and tail == PROVIDER and head:
            return head
    raise TranslationError(f"model {str(value)[:100]!r}: under {OPENAI_CHAT_PREFIX} the model names its provider, "
                           f"'{PROVIDER}/<Claude model>' (e.g. '{PROVIDER}/claude-sonnet-4-5') or '<Claude model>/{PROVIDER}'; "
                           f"requests are translated to {PROVIDER} only", "model")


def _tool_turn(messages: list[dict]) -> bool:
    """Whether the conversation's last assistant turn called a tool."""
    for m in reversed(messages):
        if m["role"] == "assistant":
            return isinstance(m["content"], list) and any(b["type"] == "tool_use" for b in m["content"])
    return False


def _max_tokens(doc: dict, thinking) -> int:
    for name in ("max_completion_tokens", "max_tokens"):
        value = doc.get(name)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise TranslationError(f"{name} must be a whole number of at least 1 (got {value!r})", name)
            return value
    budget = thinking.get("budget_tokens") if isinstance(thinking, dict) else None
    # a thinking budget is part of max_tokens: the default answer's room comes on top of it
    return DEFAULT_MAX_TOKENS + (budget if isinstance(budget, int) and not isinstance(budget, bool) else 0)


def _stop(stop) -> list[str]:
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise TranslationError("stop must be a string or a list of strings", "stop")
    # Anthropic refuses a stop sequence of white space alone; its compatibility layer leaves them out
    return [s for s in stops if s.strip()]


def _messages(messages) -> tuple[str | list, list[dict]]:
    """(system, messages): system and developer messages hoisted into `system` (joined by a newline, as Anthropic's
    compatibility layer does; text blocks when one asks for cache_control), tool results as user turns' tool_result
    blocks, and consecutive turns of one role merged (Anthropic's roles alternate; a tool call's results must all be
    in the next user turn, before anything else)."""
    if not isinstance(messages, list) or not messages:
        raise TranslationError("messages must be a non-empty list of chat messages", "messages")
    system: list[dict] = []
    turns: list[tuple[str, list[dict]]] = []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise TranslationError(f"{where} must be an object with a role and content", where)
        role = m.get("role")
        if role in ("system", "developer"):
            blocks = _parts(m.get("content"), where, ("text",))
        elif role == "user":
            blocks = _parts(m.get("content"), where, ("text", "image_url", "input_audio", "file", "image", "document"))
        elif role == "assistant":
            blocks = _assistant(m, where)
        elif role == "tool":
            role, blocks = "user", [_tool_result(m, where)]
        elif role == "function":
            raise TranslationError(f"{where}: role 'function' (deprecated by OpenAI) is not translated: send tool "
                                   "messages with a tool_call_id", f"{where}.role")
        else:
            raise TranslationError(f"{where}.role: {role!r} is not one of system, developer, user, assistant, tool",
                                   f"{where}.role")
        if blocks and isinstance(m.get("cache_control"), dict):  # LiteLLM's message-level cache breakpoint
            blocks[-1] = {**blocks[-1], "cache_control": m["cache_control"]}
        if role in ("system", "developer"):
            system += blocks
        elif blocks:
            if turns and turns[-1][0] == role:
                turns[-1][1].extend(blocks)
            else:
                turns.append((role, blocks))
    if not turns:
        raise TranslationError("messages holds no user or assistant message with content for Claude to answer", "messages")
    if turns[-1][0] == "assistant":  # a prefill: Anthropic refuses one ending in white space
        blocks = turns[-1][1]
        if blocks[-1]["type"] == "text":
            text = blocks[-1]["text"].rstrip()
            if text:
                blocks[-1] = {**blocks[-1], "text": text}
            else:
                blocks.pop()
                if not blocks:
                    turns.pop()
    out = []
    for role, blocks in turns:
        if role == "user" and len(blocks) > 1 and any(b["type"] == "tool_result" for b in blocks):
            blocks.sort(key=lambda b: b["type"] != "tool_result")  # tool results first, in their order
        if len(blocks) == 1 and blocks[0]["type"] == "text" and len(blocks[0]) == 2:
            out.append({"role": role, "content": blocks[0]["text"]})
        else:
            out.append({"role": role, "content": blocks})
    if any("cache_control" in b for b in system):
        return system, out
    return "\n".join(b["text"] for b in system), out


def _parts(content, where: str, kinds: tuple[str, ...]) -> list[dict]:
    """Content (a string or content parts) as Anthropic's blocks; empty texts left out (Anthropic refuses them)."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if not isinstance(content, list):
        raise TranslationError(f"{where}.content must be a string or a list of content parts", f"{where}.content")
    blocks = []
    for j, part in enumerate(content):
        at = f"{where}.content[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in kinds:
            raise TranslationError(f"{at}.type: {kind!r} is not a content part translated here ({', '.join(kinds)})",
                                   f"{at}.type")
        block = _part(part, kind, at)
        if block is None:
            continue
        if isinstance(part.get("cache_control"), dict):
            block["cache_control"] = part["cache_control"]
        blocks.append(block)
    return blocks


def _part(part: dict, kind: str, at: str) -> dict | None:
    if kind == "text":
        text = part.get("text")
        if not isinstance(text, str):
            raise TranslationError(f"{at}.text must be a string", f"{at}.text")
        return {"type": "text", "text": text} if text else None
    if kind == "image_url":
        image = part.get("image_url")
        url = image.get("url") if isinstance(image, dict) else image  # `detail` is ignored, as Anthropic's layer does
        if not isinstance(url, str):
            raise TranslationError(f"{at}.image_url.url must be a data: URL or an http(s) URL", f"{at}.image_url.url")
        return {"type": "image", "source": _image_source(url, at)}
    if kind == "file":
        file = part.get("file") if isinstance(part.get("file"), dict) else {}
        data = file.get("file_data")
        if isinstance(data, str) and data.startswith("data:application/pdf;base64,"):
            return {"type": "document", "source": {"type": "base64", "media_type": "application/pdf",
                                                   "data": data[len("data:application/pdf;base64,"):]}}
        return None  # a file by id, or not a PDF: ignored, as Anthropic's compatibility layer ignores file parts
    if kind == "input_audio":
        return None  # Claude takes no audio: ignored, as Anthropic's compatibility layer does
    return dict(part)  # Anthropic's own image or document block, sent as it is


def _image_source(url: str, at: str) -> dict:
    if url[:5].lower() == "data:":
        head, sep, data = url.partition(",")
        media, _, params = head[5:].partition(";")
        media = media.strip().lower()
        media = "image/jpeg" if media == "image/jpg" else media
        if not sep or "base64" not in params.lower():
            raise TranslationError(f"{at}.image_url.url: a data: URL must be base64 (data:image/png;base64,...)",
                                   f"{at}.image_url.url")
        if media not in IMAGE_TYPES:
            raise TranslationError(f"{at}.image_url.url: {media!r} is not an image type Claude reads "
                                   f"({', '.join(IMAGE_TYPES)})", f"{at}.image_url.url")
        return {"type": "base64", "media_type": media, "data": data}
    if url[:8].lower() == "https://" or url[:7].lower() == "http://":
        return {"type": "url", "url": url}
    raise TranslationError(f"{at}.image_url.url must be a data: URL or an http(s) URL (got {url[:40]!r})",
                           f"{at}.image_url.url")


def _assistant(m: dict, where: str) -> list[dict]:
    if m.get("function_call") is not None:
        raise TranslationError(f"{where}.function_call (deprecated by OpenAI) is not translated: send tool_calls",
                               f"{where}.function_call")
    content = m.get("content")
    if isinstance(content, list):  # a refusal part is ignored, as Anthropic's compatibility layer does
        content = [p for p in content if not (isinstance(p, dict) and p.get("type") == "refusal")]
    blocks = _parts(content, where, ("text",))
    calls = m.get("tool_calls")
    if calls is None:
        return blocks
    if not isinstance(calls, list):
        raise TranslationError(f"{where}.tool_calls must be a list", f"{where}.tool_calls")
    for j, call in enumerate(calls):
        at = f"{where}.tool_calls[{j}]"
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(call.get("id"), str) or not call["id"] or not isinstance(fn.get("name"), str):
            raise TranslationError(f"{at} must have an id and a function with a name and arguments", at)
        args = fn.get("arguments")
        if isinstance(args, str):
            try:
                args = json.loads(args) if args.strip() else {}
            except (ValueError, RecursionError):  # nested deeper than the parser reads: no ValueError
                raise TranslationError(f"{at}.function.arguments is not JSON", f"{at}.function.arguments") from None
        elif args is None:
            args = {}
        if not isinstance(args, dict):
            raise TranslationError(f"{at}.function.arguments must be a JSON object", f"{at}.function.arguments")
        blocks.append({"type": "tool_use", "id": call["id"], "name": fn["name"], "input": args})
    return blocks


def _tool_result(m: dict, where: str) -> dict:
    call_id = m.get("tool_call_id")
    if not isinstance(call_id, str) or not call_id:
        raise TranslationError(f"{where}.tool_call_id is required: the id of the tool call this answers",
                               f"{where}.tool_call_id")
    block: dict = {"type": "tool_result", "tool_use_id": call_id}
    content = m.get("content")
    if isinstance(content, str):
        if content:
            block["content"] = content
    elif content is not None:
        parts = _parts(content, where, ("text", "image_url"))
        if parts:
            block["content"] = parts
    return block


def _tools(tools) -> list[dict]:
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise TranslationError("tools must be a list of function tools", "tools")
    out = []
    for i, tool in enumerate(tools):
        at = f"tools[{i}]"
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(fn, dict) or tool.get("type", "function") != "function" or not isinstance(fn.get("name"), str):
            raise TranslationError(f"{at}: only function tools are translated: " + '{"type": "function", "function": '
                                   '{"name", "description", "parameters"}}', at)
        schema = fn.get("parameters") if isinstance(fn.get("parameters"), dict) else {}
        # Anthropic's input_schema is an object schema; `strict` is ignored, as its compatibility layer does
        entry: dict = {"name": fn["name"], "input_schema": schema if "type" in schema else {"type": "object", **schema}}
        if isinstance(fn.get("description"), str) and fn["description"]:
            entry["description"] = fn["description"]
        if isinstance(tool.get("cache_control"), dict):
            entry["cache_control"] = tool["cache_control"]
        out.append(entry)
    return out


def _tool_choice(choice, parallel, tools: bool) -> dict | None:
    if choice is None:
        out = None
    elif choice == "auto":
        out = {"type": "auto"}
    elif choice == "none":
        out = {"type": "none"}
    elif choice == "required":
        out = {"type": "any"}
    elif (isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("function"), dict)
          and isinstance(choice["function"].get("name"), str)):
        out = {"type": "tool", "name": choice["function"]["name"]}
    else:
        raise TranslationError("tool_choice must be 'auto', 'none', 'required' or {\"type\": \"function\", "
                               "\"function\": {\"name\": ...}}", "tool_choice")
    if parallel is False and tools and (out is None or out["type"] != "none"):
        out = {**(out or {"type": "auto"}), "disable_parallel_tool_use": True}
    return out


def _json_tool(response_format, out: dict, thinking) -> bool:
    """response_format json_schema or json_object as a tool Claude must call (JSON_TOOL), whose input becomes the
    answer's content; whether it was. Not with tools of the caller's (they could never be called) nor thinking
    (Anthropic refuses a forced tool then): a 400 rather than an answer in no particular format."""
    if response_format is None:
        return False
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind == "text":
        return False
    if kind not in ("json_schema", "json_object"):
        raise TranslationError("response_format must be {\"type\": \"text\"}, {\"type\": \"json_object\"} or "
                               "{\"type\": \"json_schema\", \"json_schema\": {\"name\", \"schema\"}}", "response_format")
    if "tools" in out or (isinstance(thinking, dict) and thinking.get("type") == "enabled"):
        raise TranslationError("response_format json_schema/json_object is translated as a tool Claude must call, "
                               "which cannot be combined with tools or reasoning_effort/thinking: send one of them",
                               "response_format")
    spec = response_format.get("json_schema") if kind == "json_schema" else {}
    schema = spec.get("schema") if isinstance(spec, dict) else None
    if kind == "json_schema" and not isinstance(schema, dict):
        raise TranslationError("response_format.json_schema.schema must be a JSON schema object",
                               "response_format.json_schema.schema")
    tool: dict = {"name": JSON_TOOL, "input_schema": schema if kind == "json_schema" else {"type": "object"}}
    tool["description"] = (spec.get("description") if isinstance(spec.get("description"), str) and spec["description"]
                           else "Give the answer as this tool's input: a JSON object")
    out["tools"] = [tool]
    out["tool_choice"] = {"type": "tool", "name": JSON_TOOL}
    return True


# ---- answer -------------------------------------------------------------------------------------------------


def translated_headers(headers: list[tuple[bytes, bytes]], status: int) -> list[tuple[bytes, bytes]]:
    """Anthropic's answer headers for the translated body: its length and encoding are not the translation's (an error
    is answered as JSON whatever its type was)."""
    out = [(n, v) for n, v in headers if n not in (b"content-length", b"content-encoding")]
    if status >= 300:
        out = [(n, v) for n, v in out if n != b"content-type"] + [(b"content-type", b"application/json")]
    return out


def openai_usage(tokens: TokenCounts) -> dict:
    """Anthropic's counts as OpenAI's usage: prompt_tokens is every input token (cache reads and writes too, as OpenAI
    counts cached tokens within it), prompt_tokens_details.cached_tokens the cache reads; Anthropic's own cache counts
    alongside, as LiteLLM reports them."""
    return {"prompt_tokens": tokens.prompt_tokens, "completion_tokens": tokens.completion_tokens,
            "total_tokens": tokens.prompt_tokens + tokens.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": tokens.cache_read_tokens},
            "cache_creation_input_tokens": tokens.cache_write_tokens, "cache_read_input_tokens": tokens.cache_read_tokens}


def finish_reason(stop_reason, json_mode: bool) -> str:
    if json_mode and stop_reason == "tool_use":  # the JSON tool's call is the answer
        return "stop"
    return FINISH_REASONS.get(stop_reason, "stop") if isinstance(stop_reason, str) else "stop"


class Answer:
    """Anthropic's answer as the caller gets it: `feed` each chunk as it arrives (what to send now), then `end`."""

    def __init__(self, chat: ChatRequest, encoding: str) -> None:
        self.chat = chat
        self.created = int(time.time())
        encoding = encoding.lower().strip()
        # asked for unencoded; a server that encodes all the same (gzip or zlib): decoded here
        self.decoder = zlib.decompressobj(32 + zlib.MAX_WBITS) if encoding and encoding != "identity" else None
        self.failed = ""  # why the answer could not be translated

    def _decode(self, chunk: bytes) -> bytes:
        if self.decoder is None or self.failed:
            return chunk
        try:
            return self.decoder.decompress(chunk)
        except zlib.error:
            self.failed = "Anthropic's answer is encoded in a way the gateway cannot read"
            return b""

    def _flush(self) -> bytes:
        """What the decoder still holds once the answer ended."""
        if self.decoder is None or self.failed:
            return b""
        try:
            return self.decoder.flush()
        except zlib.error:
            self.failed = "Anthropic's answer is encoded in a way the gateway cannot read"
            return b""

    def feed(self, chunk: bytes) -> bytes:
        raise NotImplementedError

    def end(self) -> bytes:
        raise NotImplementedError


class JsonAnswer(Answer):
    """A JSON answer, read whole: a message as a chat.completion, an error in OpenAI's error shape."""

    def __init__(self, chat: ChatRequest, status: int, encoding: str) -> None:
        super().__init__(chat, encoding)
        self.status = status
        self.parts: list[bytes] = []
        self.size = 0

    def feed(self, chunk: bytes) -> bytes:
        chunk = self._decode(chunk)
        self.size += len(chunk)
        if self.size > MAX_ANSWER_BYTES:
            self.failed = self.failed or f"Anthropic's answer is larger than {MAX_ANSWER_BYTES} bytes"
        if not self.failed:
            self.parts.append(chunk)
        return b""

    def end(self) -> bytes:
        self.parts.append(self._flush())
        if self.failed:
            return openai_error(self.failed, "api_error")
        body = b"".join(self.parts)
        doc = json_object(body)
        if not 200 <= self.status < 300:
            error = doc.get("error") if doc is not None else None
            if isinstance(error, dict) and isinstance(error.get("message"), str):
                kind = error.get("type") if isinstance(error.get("type"), str) else "api_error"
                return openai_error(error["message"], kind)
            text = body.decode("utf-8", errors="replace").strip()[:1000]
            return openai_error(text or f"Anthropic answered {self.status}", "api_error")
        if doc is None or not isinstance(doc.get("content"), list):
            return openai_error("Anthropic's answer is not a message the gateway can translate", "api_error")
        return _dumps(self.completion(doc))

    def completion(self, msg: dict) -> dict:
        text, reasoning, calls = [], [], []
        for block in msg["content"]:
            kind = block.get("type") if isinstance(block, dict) else None
            if kind == "text" and isinstance(block.get("text"), str):
                text.append(block["text"])
            elif kind == "tool_use":
                arguments = _dumps(block.get("input") if block.get("input") is not None else {}).decode()
                if self.chat.json_mode and block.get("name") == JSON_TOOL:
                    text.append(arguments)
                else:
                    calls.append({"id": block.get("id"), "type": "function",
                                  "function": {"name": block.get("name"), "arguments": arguments}})
            elif kind == "thinking" and isinstance(block.get("thinking"), str):
                reasoning.append(block["thinking"])
        content = "".join(text)
        message: dict = {"role": "assistant", "content": content if content or not calls else None, "refusal": None}
        if calls:
            message["tool_calls"] = calls
        if reasoning:
            message["reasoning_content"] = "".join(reasoning)  # as LiteLLM and DeepSeek name it
        usage = msg.get("usage")
        out = {"id": msg.get("id"), "object": "chat.completion", "created": self.created, "model": msg.get("model"),
               "choices": [{"index": 0, "message": message, "logprobs": None,
                            "finish_reason": finish_reason(msg.get("stop_reason"), self.chat.json_mode)}]}
        if isinstance(usage, dict):
            out["usage"] = openai_usage(anthropic_usage(usage))
        return out


class StreamAnswer(Answer):
    """Anthropic's event stream as chat.completion.chunk events, each event translated as it arrives (only a line cut
    between two reads waits for its end): text and thinking deltas, tool calls (their arguments' JSON as it comes), the
    finish reason; with include_usage a last chunk with the usage, then `data: [DONE]`; an error event as OpenAI's."""

    def __init__(self, chat: ChatRequest, encoding: str) -> None:
        super().__init__(chat, encoding)
        self.rest = bytearray()  # a line not ended yet: appended to, never copied whole per chunk (a long line is linear)
        self.id = self.model = ""
        self.usage = AnthropicStreamUsage()
        self.tools: dict[int, list] = {}  # content block index -> [tool call index, arguments sent]
        self.json_blocks: set[int] = set()  # the JSON tool's blocks: their input is the content
        self.stopped = False

    def feed(self, chunk: bytes) -> bytes:
        data = self._decode(chunk)
        cut = data.rfind(b"\n")
        if cut < 0:
            self.rest += data
            if len(self.rest) > MAX_ANSWER_BYTES:
                self.failed, self.rest = self.failed or f"a line of Anthropic's stream is over {MAX_ANSWER_BYTES} bytes", bytearray()
            return self._failure()
        lines = bytes(self.rest) + data[:cut]
        self.rest = bytearray(data[cut + 1:])
        return self._lines(lines)

    def end(self) -> bytes:
        rest = bytes(self.rest) + self._flush()
        tail = self._lines(rest) if rest and not self.failed else b""
        return tail + self._failure()

    def _failure(self) -> bytes:
        if not self.failed or self.stopped:
            return b""
        self.stopped = True
        return b"data: " + openai_error(self.failed, "api_error") + b"\n\n"

    def _lines(self, text: bytes) -> bytes:
        out: list[bytes] = []
        for line in text.split(b"\n"):
            if line[:5] != b"data:" or self.stopped:
                continue
            ev = json_object(line[5:])
            if ev is not None:
                self._event(ev, out)
        return b"".join(out)

    def _chunk(self, delta: dict, finish: str | None = None) -> bytes:
        return b"data: " + _dumps({"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                                   "model": self.model, "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                                                     "finish_reason": finish}]}) + b"\n\n"

    def _event(self, ev: dict, out: list[bytes]) -> None:
        kind = ev.get("type")
        index = ev.get("index") if isinstance(ev.get("index"), int) else None
        if kind == "content_block_delta":
            delta = ev.get("delta") if isinstance(ev.get("delta"), dict) else {}
            dkind = delta.get("type")
            if dkind == "text_delta" and isinstance(delta.get("text"), str) and delta["text"]:
                out.append(self._chunk({"content": delta["text"]}))
            elif dkind == "input_json_delta" and isinstance(delta.get("partial_json"), str) and delta["partial_json"]:
                if index in self.json_blocks:
                    out.append(self._chunk({"content": delta["partial_json"]}))
                elif index in self.tools:
                    call = self.tools[index]
                    call[1] = True
                    out.append(self._chunk({"tool_calls": [{"index": call[0], "function": {"arguments": delta["partial_json"]}}]}))
            elif dkind == "thinking_delta" and isinstance(delta.get("thinking"), str) and delta["thinking"]:
                out.append(self._chunk({"reasoning_content": delta["thinking"]}))
        elif kind == "content_block_start":
            block = ev.get("content_block") if isinstance(ev.get("content_block"), dict) else {}
            if block.get("type") == "text" and isinstance(block.get("text"), str) and block["text"]:
                out.append(self._chunk({"content": block["text"]}))
            elif block.get("type") == "tool_use":
                if self.chat.json_mode and block.get("name") == JSON_TOOL:
                    self.json_blocks.add(index)
                else:
                    self.tools[index] = [len(self.tools), False]
                    out.append(self._chunk({"tool_calls": [{"index": self.tools[index][0], "id": block.get("id"),
                                                            "type": "function",
                                                            "function": {"name": block.get("name"), "arguments": ""}}]}))
        elif kind == "content_block_stop":
            call = self.tools.get(index)
            if call is not None and not call[1]:  # called with no input: "{}", never arguments that are no JSON
                call[1] = True
                out.append(self._chunk({"tool_calls": [{"index": call[0], "function": {"arguments": "{}"}}]}))
        elif kind == "message_start":
            msg = ev.get("message") if isinstance(ev.get("message"), dict) else {}
            self.id = msg.get("id") if isinstance(msg.get("id"), str) else ""
            self.model = msg.get("model") if isinstance(msg.get("model"), str) else ""
            self.usage.feed(ev)
            out.append(self._chunk({"role": "assistant", "content": ""}))
        elif kind == "message_delta":
            self.usage.feed(ev)
            delta = ev.get("delta") if isinstance(ev.get("delta"), dict) else {}
            out.append(self._chunk({}, finish_reason(delta.get("stop_reason"), self.chat.json_mode)))
        elif kind == "message_stop":
            if self.chat.include_usage:
                out.append(b"data: " + _dumps({"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                                               "model": self.model, "choices": [],
                                               "usage": openai_usage(self.usage.tokens())}) + b"\n\n")
            out.append(b"data: [DONE]\n\n")
            self.stopped = True
        elif kind == "ping":
            out.append(b": ping\n\n")  # a comment: keeps the connection visibly alive, SDKs skip it
        elif kind == "error":
            error = ev.get("error") if isinstance(ev.get("error"), dict) else {}
            message = error.get("message") if isinstance(error.get("message"), str) else "Anthropic's stream failed"
            kind = error.get("type") if isinstance(error.get("type"), str) else "api_error"
            out.append(b"data: " + openai_error(message, kind) + b"\n\n")
            self.stopped = True

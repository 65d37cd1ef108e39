"""Reads model and token usage from provider responses (JSON and SSE streams) in each usage format of
the provider table (openai, anthropic, gemini): one reading for the gateway's traffic and the api's async logs."""

from __future__ import annotations

import json
import math
import re
import zlib
from dataclasses import dataclass

from .cost import TokenCounts
from .events import Usage
from .jsontext import json_object


@dataclass
class Parsed:
    model: str = ""
    tokens: TokenCounts = TokenCounts()
    known: bool = False

    def logged_usage(self) -> Usage:
        """The usage as RequestLogged carries it (the gateway's and the async logs' events alike)."""
        t = self.tokens
        return Usage(prompt_tokens=t.prompt_tokens, completion_tokens=t.completion_tokens,
                     total_tokens=t.prompt_tokens + t.completion_tokens, cache_read_tokens=t.cache_read_tokens,
                     cache_write_tokens=t.cache_write_tokens, known=self.known)


def _wbits(content_encoding: str) -> tuple[int, ...]:
    enc = (content_encoding or "").lower().strip()
    if enc == "gzip":
        return (16 + zlib.MAX_WBITS,)
    if enc == "deflate":
        return (zlib.MAX_WBITS, -zlib.MAX_WBITS)  # zlib-wrapped, or raw deflate as some servers send
    return ()


# Decoding a body for the log stops after this many bytes of output: gzip expands up to about 1,000
# times, so an answer of a few hundred KiB could otherwise take gigabytes (and seconds of the event loop).
MAX_DECODED_BYTES = 32 * 1024 * 1024
_PIECE = 64 * 1024


def _inflate(decoder, data: bytes, budget: int):
    """The output of feeding `data` to `decoder`, in pieces of at most 64 KiB, until `budget` bytes
    came out (the rest of `data` is dropped); raises zlib.error on bytes that do not decode."""
    while data and budget > 0:
        out = decoder.decompress(data, min(_PIECE, budget))
        if not out:
            return
        budget -= len(out)
        data = decoder.unconsumed_tail
        yield out


def decode_body(data: bytes, content_encoding: str) -> bytes:
    """Undoes Content-Encoding for logging, up to MAX_DECODED_BYTES. A truncated capture decodes as
    far as it goes; bytes that cannot be decoded at all are kept as they are."""
    for bits in _wbits(content_encoding):
        try:
            return b"".join(_inflate(zlib.decompressobj(bits), data, MAX_DECODED_BYTES))
        except zlib.error:
            continue
    return data


class TailDecoder:
    """Decodes a gzip or deflate body from where its logged start ends: it reads the start once
    (its output dropped), then decodes each chunk past it into pieces of at most 64 KiB. Once
    MAX_DECODED_BYTES came out in all, or on bytes that do not decode, it has failed and decodes
    nothing more."""

    def __init__(self, head: bytes, content_encoding: str) -> None:
        self.decoder = None
        self.left = MAX_DECODED_BYTES
        for bits in _wbits(content_encoding):
            decoder = zlib.decompressobj(bits)
            try:
                left = self.left
                for out in _inflate(decoder, head, left):
                    left -= len(out)
            except zlib.error:
                continue
            self.decoder, self.left = decoder, left
            break

    @property
    def failed(self) -> bool:
        return self.decoder is None or self.left <= 0

    def decode(self, data: bytes):
        """Yields the decoded pieces of `data`; none once failed (see `failed` after the last)."""
        if self.failed:
            return
        try:
            for out in _inflate(self.decoder, data, self.left):
                self.left -= len(out)
                yield out
        except zlib.error:
            self.decoder = None


_NOTHING = object()


def _data(line: str):
    """The JSON payload of an SSE `data:` line; _NOTHING for other lines, `[DONE]` and what is not JSON."""
    if not line.startswith("data:"):
        return _NOTHING
    payload = line[5:].strip()
    if not payload or payload == "[DONE]":
        return _NOTHING
    try:
        return json.loads(payload)
    except ValueError:
        return _NOTHING


# Token counts past this are no real usage (and would overflow the event's int64 fields once summed): counted as 0.
MAX_TOKENS = 2**53


def _int(v) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not 0 <= v <= MAX_TOKENS:
        return 0
    return int(v)


def _dict(v) -> dict:
    return v if isinstance(v, dict) else {}


def openai_usage(usage: dict) -> TokenCounts:
    prompt = _int(usage.get("prompt_tokens", usage.get("input_tokens")))
    completion = _int(usage.get("completion_tokens", usage.get("output_tokens")))
    # Chat Completions' details; the Realtime API's and audio transcriptions' are input_/output_token_details
    prompt_details = _dict(usage.get("prompt_tokens_details")) or _dict(usage.get("input_token_details"))
    completion_details = _dict(usage.get("completion_tokens_details")) or _dict(usage.get("output_token_details"))
    cached = (_int(prompt_details.get("cached_tokens"))
              or _int(_dict(usage.get("input_tokens_details")).get("cached_tokens"))
              or _int(usage.get("prompt_cache_hit_tokens")))  # DeepSeek's name for it
    # OpenAI counts reasoning inside completion_tokens; xAI apart from it (its total is prompt + completion + reasoning)
    reasoning = _int(completion_details.get("reasoning_tokens"))
    if reasoning and _int(usage.get("total_tokens")) == prompt + completion + reasoning:
        completion += reasoning
    # audio tokens (audio, realtime and transcribe models) cost several times the text rate
    return TokenCounts(prompt_tokens=prompt, completion_tokens=completion, cache_read_tokens=cached,
                       audio_prompt_tokens=_int(prompt_details.get("audio_tokens")),
                       audio_cache_read_tokens=_int(_dict(prompt_details.get("cached_tokens_details")).get("audio_tokens")),
                       audio_completion_tokens=_int(completion_details.get("audio_tokens")))


def anthropic_usage(usage: dict, output_tokens: int | None = None) -> TokenCounts:
    inp = _int(usage.get("input_tokens"))
    write = _int(usage.get("cache_creation_input_tokens"))
    read = _int(usage.get("cache_read_input_tokens"))
    out = _int(usage.get("output_tokens")) if output_tokens is None else output_tokens
    # cache_creation splits the writes by TTL: an hour's cost more (Anthropic: 2x input, 5 minutes' 1.25x)
    one_hour = min(_int(_dict(usage.get("cache_creation")).get("ephemeral_1h_input_tokens")), write)
    return TokenCounts(prompt_tokens=inp + write + read, completion_tokens=out, cache_read_tokens=read, cache_write_tokens=write,
                       cache_write_1h_tokens=one_hour)


def gemini_usage(meta: dict) -> TokenCounts:
    """Gemini's usageMetadata: thinking tokens are billed as output, tool-use prompt tokens as input;
    cachedContentTokenCount is part of promptTokenCount."""
    prompt = _int(meta.get("promptTokenCount")) + _int(meta.get("toolUsePromptTokenCount"))
    completion = _int(meta.get("candidatesTokenCount")) + _int(meta.get("thoughtsTokenCount"))
    # audio parts (promptTokensDetails' AUDIO modality) cost more than text on the Flash models
    return TokenCounts(prompt_tokens=prompt, completion_tokens=completion,
                       cache_read_tokens=_int(meta.get("cachedContentTokenCount")),
                       audio_prompt_tokens=_modality_tokens(meta.get("promptTokensDetails"), "AUDIO"),
                       audio_cache_read_tokens=_modality_tokens(meta.get("cacheTokensDetails"), "AUDIO"),
                       audio_completion_tokens=_modality_tokens(meta.get("candidatesTokensDetails"), "AUDIO"))


def _modality_tokens(details, modality: str) -> int:
    """Gemini's token counts by modality: a list of {"modality": "TEXT" | "AUDIO" | ..., "tokenCount": N}."""
    if not isinstance(details, list):
        return 0
    return min(sum(_int(d.get("tokenCount")) for d in details if isinstance(d, dict) and d.get("modality") == modality),
               MAX_TOKENS)


def parse_response(usage_format: str, body: bytes, content_type: str, tail: bytes = b"") -> Parsed:
    """Model and usage of an answer read the way `usage_format` (openai, anthropic, gemini) says.
    tail: the answer's last bytes when `body` is only its start (a capture cut at the logged body's
    limit): a stream is read as the start and the tail, a JSON answer's usage is taken from the tail.
    JSON nested too deep to read gives an unknown usage, not an error (the event is still logged)."""
    try:
        return _parse_response(usage_format, body, content_type, tail)
    except RecursionError:
        return Parsed()


def _parse_response(usage_format: str, body: bytes, content_type: str, tail: bytes) -> Parsed:
    if "text/event-stream" in (content_type or ""):
        # a line break between the cut start and the tail: their broken lines never join into one
        text = _sse_text((body + b"\n" + tail if tail else body).decode("utf-8", errors="replace"))
        if usage_format == "anthropic":
            return _parse_anthropic_sse(text)
        if usage_format == "gemini":
            return _parse_gemini_sse(text)
        out = _parse_openai_sse(text)
        if not out.known and tail:
            _responses_completed_cut(out, text.rstrip())
        return out
    text = body.decode("utf-8", errors="replace")
    try:
        doc = json.loads(text)
    except ValueError:
        return _parse_json_tail(usage_format, text, tail.decode("utf-8", errors="replace")) if tail else Parsed()
    if usage_format == "gemini":
        # generateContent answers one object; streamGenerateContent without alt=sse a JSON array of them
        return _parse_gemini(doc if isinstance(doc, list) else [doc])
    if not isinstance(doc, dict):
        return Parsed()
    model = doc.get("model") if isinstance(doc.get("model"), str) else ""
    usage = doc.get("usage")
    if not isinstance(usage, dict):
        return Parsed(model=model)
    if usage_format == "anthropic":
        return Parsed(model=model, tokens=anthropic_usage(usage), known=True)
    return Parsed(model=model, tokens=openai_usage(usage), known=True)


_MEMBER_COLON = re.compile(r"\s*:\s*")
_MEMBER_SPACE = re.compile(r"\s*")


# _last_member looks at this many `"key":` from the end at most: the answer's own is the last or next
# to last, and a tail stuffed with the key cannot make the read cost more than this many tries
LAST_MEMBER_TRIES = 16


def _last_member(text: str, key: str, opening: str, depth: int = 1):
    """The value of the member `key` of the outermost object (depth 1; depth 2: of an object that is
    a member of the outermost one, as a Responses API event's `response`), read from the document's
    last bytes only (the start is cut off): the last `"key":` whose value (starting with `opening`:
    `{` an object, `"` a string) is followed, up to the end, by nothing but the rest of `depth`
    objects, each more members and a closing brace (then, for a JSON array of objects as Gemini
    streams without SSE, the array's bracket). A member of an object nested deeper is followed by
    more closing brackets, so it is never taken. None when there is no such member."""
    quoted, end = f'"{key}"', len(text)
    decoder = json.JSONDecoder()
    for _ in range(LAST_MEMBER_TRIES):
        pos = text.rfind(quoted, 0, end)
        if pos < 0:
            break
        end = pos
        colon = _MEMBER_COLON.match(text, pos + len(quoted))
        if colon is None or not text.startswith(opening, colon.end()):
            continue
        try:
            value, after = decoder.raw_decode(text, colon.end())
            if _closes(decoder, text, after, depth):
                return value
        except ValueError:
            continue
    return None


def _closes(decoder: json.JSONDecoder, text: str, i: int, depth: int) -> bool:
    """text[i:] is the rest of `depth` nested objects and nothing else: for each, more members and its
    closing brace; then an array's closing bracket at most, and white space. Raises ValueError on
    members that do not parse."""
    for _ in range(depth):
        i = _MEMBER_SPACE.match(text, i).end()
        while text.startswith(",", i):
            _, _, i = _member(decoder, text, i + 1)
            i = _MEMBER_SPACE.match(text, i).end()
        if not text.startswith("}", i):
            return False
        i += 1
    i = _MEMBER_SPACE.match(text, i).end()
    if text.startswith("]", i):
        i = _MEMBER_SPACE.match(text, i + 1).end()
    return i == len(text)


def _member(decoder: json.JSONDecoder, text: str, i: int) -> tuple[str, object, int]:
    """(name, value, the index after it) of the object member `"name": value` at text[i:] (white
    space first allowed); raises ValueError when there is none."""
    name, i = decoder.raw_decode(text, _MEMBER_SPACE.match(text, i).end())
    colon = _MEMBER_COLON.match(text, i)
    if not isinstance(name, str) or colon is None:
        raise ValueError("not an object member")
    value, i = decoder.raw_decode(text, colon.end())
    return name, value, i


def _first_member(text: str, key: str):
    """The value of the outermost object's member `key` among those that come whole before the
    document is cut off (None if it is not one of them)."""
    decoder = json.JSONDecoder()
    i = text.find("{")
    if i < 0 or text[:i].strip():
        return None
    i += 1
    while True:
        try:
            name, value, i = _member(decoder, text, i)
        except ValueError:
            return None
        if name == key:
            return value
        i = _MEMBER_SPACE.match(text, i).end()
        if not text.startswith(",", i):
            return None
        i += 1


def _parse_json_tail(usage_format: str, head: str, tail: str) -> Parsed:
    """A JSON answer longer than the logged body (a large embeddings batch, say): its usage is a member
    of the outermost object near its end, read from the tail; its model comes at the end (embeddings,
    Gemini) or at the start (chat completions, Messages), read from the tail or the logged start."""
    if usage_format == "gemini":
        key, model_key, counts = "usageMetadata", "modelVersion", gemini_usage
    else:
        key, model_key = "usage", "model"
        counts = anthropic_usage if usage_format == "anthropic" else openai_usage
    usage = _last_member(tail, key, "{")
    model = _last_member(tail, model_key, '"')
    if not isinstance(model, str):
        model = _first_member(head, model_key)
    out = Parsed(model=model if isinstance(model, str) else "")
    if isinstance(usage, dict):
        out.tokens, out.known = counts(usage), True
    return out


def _parse_gemini(chunks) -> Parsed:
    """Every chunk of a stream carries the usage so far: the last one counts."""
    out = Parsed()
    for chunk in chunks:
        if not isinstance(chunk, dict):
            continue
        if isinstance(chunk.get("modelVersion"), str) and chunk["modelVersion"]:
            out.model = chunk["modelVersion"]
        meta = chunk.get("usageMetadata")
        if isinstance(meta, dict):
            out.tokens = gemini_usage(meta)
            out.known = True
    return out


# A stream's usage and model are in its last events (OpenAI's usage chunk, Gemini's last chunk) or in a
# few named ones (Anthropic's message_start and message_delta), so the SSE readers below find the lines
# holding a key they still miss (str.find, no split into lines; _parse_response makes the line ends LF
# once, with _sse_text) and parse only those: a line lacking the quoted key cannot carry it (providers
# write keys plainly, not as \u escapes). Parsing every chunk cost about 3.5 ms of the event loop's
# time for a 1,000-chunk answer (1 ms for 300).


def _sse_text(text: str) -> str:
    """SSE lines end with CR, LF or CRLF: made LF only, so that a line's bounds are two finds away."""
    return text.replace("\r\n", "\n").replace("\r", "\n") if "\r" in text else text


def _line_at(text: str, pos: int) -> tuple[int, int]:
    """(start, end) of the line of an LF-only text holding text[pos]."""
    end = text.find("\n", pos)
    return text.rfind("\n", 0, pos) + 1, len(text) if end < 0 else end


def _lines_holding(text: str, keys: tuple[str, ...]):
    """The lines of an LF-only text that hold one of `keys`, first to last (each key's text is
    searched for once through the text)."""
    found = {key: text.find(key) for key in keys}
    while True:
        pos = min((p for p in found.values() if p >= 0), default=-1)
        if pos < 0:
            return
        start, end = _line_at(text, pos)
        yield text[start:end]
        for key, p in found.items():
            if 0 <= p < end:
                found[key] = text.find(key, end)


def _last_lines_holding(text: str, wanted: set[str]):
    """The lines of an LF-only text that hold one of the keys in `wanted`, last to first; the caller
    removes a key from `wanted` once it has what the key stands for, and the search ends with the last one."""
    found = {key: text.rfind(key) for key in wanted}
    while wanted:
        pos = max((found[key] for key in wanted), default=-1)
        if pos < 0:
            return
        start, end = _line_at(text, pos)
        yield text[start:end]
        for key, p in found.items():
            if p >= start:
                found[key] = text.rfind(key, 0, start)


def _last_chunks(text: str, wanted: set[str]):
    """The JSON objects of an LF-only SSE stream's `data:` lines that hold a key in `wanted`, last first
    (the caller removes a key from `wanted` once it has what it stands for, as in _last_lines_holding)."""
    for line in _last_lines_holding(text, wanted):
        chunk = _data(line)
        if isinstance(chunk, dict):
            yield chunk


def _parse_openai_sse(text: str) -> Parsed:
    """The model of the last chunk naming one and the usage of the last chunk carrying it (Chat
    Completions chunks, Groq's in `x_groq`; Responses API events, whose `response` object carries both), read from the end."""
    out = Parsed()
    wanted = {'"model"', '"usage"'}
    for chunk in _last_chunks(text, wanted):
        resp = chunk.get("response") if isinstance(chunk.get("response"), dict) else None
        if '"model"' in wanted:
            if resp is not None and isinstance(resp.get("model"), str):
                out.model = resp["model"]
                wanted.discard('"model"')
            elif isinstance(chunk.get("model"), str) and chunk["model"]:
                out.model = chunk["model"]
                wanted.discard('"model"')
        if '"usage"' in wanted:
            # Groq's last chunk carries it under x_groq when the request did not ask for include_usage
            usage = chunk.get("usage") or (resp or {}).get("usage") or _dict(chunk.get("x_groq")).get("usage")
            if isinstance(usage, dict):
                out.tokens, out.known = openai_usage(usage), True
                wanted.discard('"usage"')
    return out


def _responses_completed_cut(out: Parsed, text: str) -> None:
    """A Responses API stream's last event, response.completed, repeats the whole answer, so in a long
    one the tail may start inside it: its `response` object's usage and model are read from the end of
    that cut last line."""
    line = text[text.rfind("\n") + 1:]
    if line.startswith("data:"):  # a whole line: read already
        return
    usage = _last_member(line, "usage", "{", depth=2)
    if isinstance(usage, dict):
        out.tokens, out.known = openai_usage(usage), True
        model = _last_member(line, "model", '"', depth=2)
        if isinstance(model, str) and model:
            out.model = model


def _parse_anthropic_sse(text: str) -> Parsed:
    """Input counts and the model from message_start, the output count (and newer APIs' final input
    and cache counts) from the last message_delta: only those events are parsed."""
    out = Parsed()
    start_usage: dict = {}
    output_tokens: int | None = None
    for line in _lines_holding(text, ('"usage"', '"message_start"')):
        ev = _data(line)
        if not isinstance(ev, dict):
            continue
        kind = ev.get("type")
        if kind == "message_start" and isinstance(ev.get("message"), dict):
            msg = ev["message"]
            if isinstance(msg.get("model"), str) and msg["model"]:
                out.model = msg["model"]
            if isinstance(msg.get("usage"), dict):
                start_usage = dict(msg["usage"])
                out.known = True
        elif kind == "message_delta" and isinstance(ev.get("usage"), dict):
            usage = ev["usage"]
            output_tokens = _int(usage.get("output_tokens"))
            # newer APIs report final input/cache counts on message_delta too
            for k in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens", "cache_creation"):
                if usage.get(k) is not None:
                    start_usage[k] = usage[k]
            out.known = True
    if out.known:
        out.tokens = anthropic_usage(start_usage, output_tokens)
    return out


def _parse_gemini_sse(text: str) -> Parsed:
    """Gemini with ?alt=sse: the last chunk's modelVersion and usageMetadata, read from the end."""
    out = Parsed()
    wanted = {'"modelVersion"', '"usageMetadata"'}
    for chunk in _last_chunks(text, wanted):
        if '"modelVersion"' in wanted and isinstance(chunk.get("modelVersion"), str) and chunk["modelVersion"]:
            out.model = chunk["modelVersion"]
            wanted.discard('"modelVersion"')
        if '"usageMetadata"' in wanted and isinstance(chunk.get("usageMetadata"), dict):
            out.tokens, out.known = gemini_usage(chunk["usageMetadata"]), True
            wanted.discard('"usageMetadata"')
    return out


# How an answer in each usage format shows it came whole (read only for answers about to be cached): the
# markers a stream ends with, each an unescaped JSON key or an SSE line's start, so text inside a JSON string
# (its quotes and line breaks escaped) never matches. OpenAI's format: Chat Completions (and Completions) end
# with `data: [DONE]` after a chunk whose choice finished; the Responses API with response.completed (or
# response.incomplete, its finish_reason "length"). Anthropic: message_stop. Gemini: a candidate's finishReason.
_DONE_LINE = re.compile(rb"[\r\n]data:[ \t]*\[DONE\][ \t]*(?:\r|\n|\Z)")
_FINISH_REASON = re.compile(rb'"finish_reason"\s*:\s*"')
_RESPONSES_END = re.compile(rb'"type"\s*:\s*"response\.(?:completed|incomplete)"')
_MESSAGE_STOP = re.compile(rb'"type"\s*:\s*"message_stop"')
_FINISH_REASON_GEMINI = re.compile(rb'"finishReason"\s*:\s*"')


def answer_whole(usage_format: str, body: bytes, content_type: str) -> bool:
    """Whether a 2xx answer (decoded) is whole rather than cut short inside HTTP framing that ended cleanly:
    an event stream carries its format's end (above), a JSON answer parses; any other body cannot tell,
    and is taken as whole."""
    ctype = (content_type or "").lower()
    if "text/event-stream" in ctype:
        if usage_format == "anthropic":
            return _MESSAGE_STOP.search(body) is not None
        if usage_format == "gemini":
            return _FINISH_REASON_GEMINI.search(body) is not None
        text = b"\n" + body
        return ((_DONE_LINE.search(text) is not None and _FINISH_REASON.search(body) is not None)
                or _RESPONSES_END.search(body) is not None)
    media = ctype.split(";", 1)[0].strip()
    if media == "application/json" or media.endswith("+json"):
        try:
            json.loads(body)
        except (ValueError, RecursionError):  # (UnicodeDecodeError is a ValueError)
            return False
    return True


def request_fields(body: bytes) -> tuple[str, bool, str]:
    """(model, stream, user) from a JSON request body, read in one parse; `user` is OpenAI's end-user
    parameter ("" when absent or not a string). ("", False, "") for a body that is not JSON or nests past the
    recursion limit (the request is logged all the same)."""
    doc = json_object(body)
    if doc is None:
        return "", False, ""
    model = doc.get("model") if isinstance(doc.get("model"), str) else ""
    user = doc.get("user") if isinstance(doc.get("user"), str) else ""
    return model, doc.get("stream") is True, user


# OpenAI's audio uploads (and the APIs copying them): a multipart/form-data request whose `model` is a form field,
# answered without a model
FORM_MODEL_PATHS = ("/audio/transcriptions", "/audio/translations")
_BOUNDARY = re.compile(r';\s*boundary=(?:"([^"]+)"|([^\s;]+))', re.IGNORECASE)
_MODEL_PART = re.compile(rb'^content-disposition:[ \t]*form-data[ \t]*;(?:[^\r\n]*;)?[ \t]*name="?model"?[ \t]*(?:;|\r?$)',
                         re.IGNORECASE | re.MULTILINE)
FORM_MODEL_MAX_BYTES = 256  # a model name; a longer `model` field is no model


def form_model(body: bytes, content_type: str) -> str:
    """The `model` field of a multipart/form-data request body; "" when it has none (or is no such body).
    Only the parts' headers are searched: the audio file between them is skipped, not copied."""
    if not (content_type or "").lower().startswith("multipart/form-data"):
        return ""
    m = _BOUNDARY.search(content_type)
    if not m:
        return ""
    delimiter = b"--" + (m.group(1) or m.group(2)).encode("latin-1")
    at = body.find(delimiter)
    while at >= 0:
        start = at + len(delimiter)
        end_of_head = body.find(b"\r\n\r\n", start)
        if end_of_head < 0:
            return ""
        following = body.find(delimiter, end_of_head)
        if following < 0:
            return ""
        if _MODEL_PART.search(body, start, end_of_head + 2):
            value = body[end_of_head + 4:following]
            if value.endswith(b"\r\n"):
                value = value[:-2]
            return value.decode("utf-8", errors="replace").strip() if len(value) <= FORM_MODEL_MAX_BYTES else ""
        at = following
    return ""


def with_stream_usage(body: bytes) -> bytes:
    """Helicone-Stream-Usage: an OpenAI-format streaming request (`"stream": true`) that does not
    already ask for usage gets `stream_options.include_usage = true`, so the stream's last chunk
    carries the usage the log needs. Anything else (not JSON, not a stream, usage already asked
    for, a stream_options that is not an object) is returned as it came, byte for byte."""
    doc = json_object(body)
    if doc is None or doc.get("stream") is not True:
        return body
    options = doc.get("stream_options")
    if options is None:
        options = doc["stream_options"] = {}
    elif not isinstance(options, dict) or options.get("include_usage") is True:
        return body
    options["include_usage"] = True
    try:
        return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()
    except UnicodeEncodeError:  # an escaped lone surrogate (valid JSON, not UTF-8): written escaped, as it came
        return json.dumps(doc, separators=(",", ":")).encode()
    except RecursionError:
        return body

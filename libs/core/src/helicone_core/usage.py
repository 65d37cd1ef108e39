"""Reads model and token usage from provider responses (JSON and SSE streams) in each usage format of
the provider table (openai, anthropic, gemini): one reading for the gateway's traffic and the api's async logs."""

from __future__ import annotations

import json
import math
import zlib
from dataclasses import dataclass

from .cost import TokenCounts
from .events import Usage


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


def decode_body(data: bytes, content_encoding: str) -> bytes:
    """Undoes Content-Encoding for logging. A truncated capture decodes as far as it goes; bytes
    that cannot be decoded at all are kept as they are."""
    enc = (content_encoding or "").lower().strip()
    if enc == "gzip":
        wbits = [16 + zlib.MAX_WBITS]
    elif enc == "deflate":
        wbits = [zlib.MAX_WBITS, -zlib.MAX_WBITS]  # zlib-wrapped, or raw deflate as some servers send
    else:
        return data
    for bits in wbits:
        try:
            return zlib.decompressobj(bits).decompress(data)
        except zlib.error:
            continue
    return data


def sse_data(text: str):
    """Yields the JSON payload of each `data:` line of an SSE stream."""
    for line in text.splitlines():
        if not line.startswith("data:"):
            continue
        payload = line[5:].strip()
        if not payload or payload == "[DONE]":
            continue
        try:
            yield json.loads(payload)
        except ValueError:
            continue


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
    cached = (_int(_dict(usage.get("prompt_tokens_details")).get("cached_tokens"))
              or _int(_dict(usage.get("input_tokens_details")).get("cached_tokens"))
              or _int(usage.get("prompt_cache_hit_tokens")))  # DeepSeek's name for it
    return TokenCounts(prompt_tokens=prompt, completion_tokens=completion, cache_read_tokens=cached)


def anthropic_usage(usage: dict, output_tokens: int | None = None) -> TokenCounts:
    inp = _int(usage.get("input_tokens"))
    write = _int(usage.get("cache_creation_input_tokens"))
    read = _int(usage.get("cache_read_input_tokens"))
    out = _int(usage.get("output_tokens")) if output_tokens is None else output_tokens
    return TokenCounts(prompt_tokens=inp + write + read, completion_tokens=out, cache_read_tokens=read, cache_write_tokens=write)


def gemini_usage(meta: dict) -> TokenCounts:
    """Gemini's usageMetadata: thinking tokens are billed as output, tool-use prompt tokens as input;
    cachedContentTokenCount is part of promptTokenCount."""
    prompt = _int(meta.get("promptTokenCount")) + _int(meta.get("toolUsePromptTokenCount"))
    completion = _int(meta.get("candidatesTokenCount")) + _int(meta.get("thoughtsTokenCount"))
    return TokenCounts(prompt_tokens=prompt, completion_tokens=completion,
                       cache_read_tokens=_int(meta.get("cachedContentTokenCount")))


def parse_response(usage_format: str, body: bytes, content_type: str) -> Parsed:
    """Model and usage of an answer read the way `usage_format` (openai, anthropic, gemini) says."""
    text = body.decode("utf-8", errors="replace")
    if "text/event-stream" in (content_type or ""):
        if usage_format == "anthropic":
            return _parse_anthropic_sse(text)
        if usage_format == "gemini":
            return _parse_gemini(sse_data(text))
        return _parse_openai_sse(text)
    try:
        doc = json.loads(text)
    except ValueError:
        return Parsed()
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


def _parse_openai_sse(text: str) -> Parsed:
    out = Parsed()
    for chunk in sse_data(text):
        if not isinstance(chunk, dict):
            continue
        if isinstance(chunk.get("model"), str) and chunk["model"]:
            out.model = chunk["model"]
        # Responses API streams wrap the final response object
        resp = chunk.get("response") if isinstance(chunk.get("response"), dict) else None
        usage = chunk.get("usage") or (resp or {}).get("usage")
        if resp and isinstance(resp.get("model"), str):
            out.model = resp["model"]
        if isinstance(usage, dict):
            out.tokens = openai_usage(usage)
            out.known = True
    return out


def _parse_anthropic_sse(text: str) -> Parsed:
    out = Parsed()
    start_usage: dict = {}
    output_tokens: int | None = None
    for ev in sse_data(text):
        if not isinstance(ev, dict):
            continue
        kind = ev.get("type")
        if kind == "message_start" and isinstance(ev.get("message"), dict):
            msg = ev["message"]
            out.model = msg.get("model") or out.model
            if isinstance(msg.get("usage"), dict):
                start_usage = dict(msg["usage"])
                out.known = True
        elif kind == "message_delta" and isinstance(ev.get("usage"), dict):
            usage = ev["usage"]
            output_tokens = _int(usage.get("output_tokens"))
            # newer APIs report final input/cache counts on message_delta too
            for k in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"):
                if usage.get(k) is not None:
                    start_usage[k] = usage[k]
            out.known = True
    if out.known:
        out.tokens = anthropic_usage(start_usage, output_tokens)
    return out


def request_model(body: bytes) -> tuple[str, bool]:
    """(model, stream) from a JSON request body."""
    try:
        doc = json.loads(body)
    except ValueError:
        return "", False
    if not isinstance(doc, dict):
        return "", False
    model = doc.get("model") if isinstance(doc.get("model"), str) else ""
    return model, doc.get("stream") is True


def with_stream_usage(body: bytes) -> bytes:
    """Helicone-Stream-Usage: an OpenAI-format streaming request (`"stream": true`) that does not
    already ask for usage gets `stream_options.include_usage = true`, so the stream's last chunk
    carries the usage the log needs. Anything else (not JSON, not a stream, usage already asked
    for, a stream_options that is not an object) is returned as it came, byte for byte."""
    try:
        doc = json.loads(body)
    except ValueError:
        return body
    if not isinstance(doc, dict) or doc.get("stream") is not True:
        return body
    options = doc.get("stream_options")
    if options is None:
        options = doc["stream_options"] = {}
    elif not isinstance(options, dict) or options.get("include_usage") is True:
        return body
    options["include_usage"] = True
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()

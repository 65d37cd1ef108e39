"""Reads model and token usage from provider responses (JSON, SSE streams and AWS event streams) in each usage
format of the provider table (openai, anthropic, gemini, bedrock): one reading for the gateway's traffic and the
api's async logs."""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import struct
import zlib
from dataclasses import dataclass

from .cost import CostRegistry, TokenCounts
from .events import Usage
from .jsontext import json_object

# AWS's binary event stream (Bedrock's ConverseStream and InvokeModelWithResponseStream): logged as a stream, as SSE
EVENT_STREAM = "application/vnd.amazon.eventstream"


def is_stream(content_type: str) -> bool:
    """Whether an answer of this Content-Type is a stream: SSE, or AWS's event stream."""
    return "text/event-stream" in content_type or EVENT_STREAM in content_type


@dataclass
class Parsed:
    model: str = ""
    tokens: TokenCounts = TokenCounts()
    known: bool = False
    # False: the provider bills this answer by something else than its tokens (Vertex AI's embeddings :predict, by
    # the characters of most models): its usage is logged, its cost is unknown rather than priced per token
    priced: bool = True
    # True: no usage was read, but what the answer was billed for is known (tts-1's characters and dall-e's images from
    # the request, billed_by_request; whisper-1's seconds from an older verbose_json's duration): priced by that, its
    # usage still logged as unknown
    billed: bool = False

    def cost(self, costs: CostRegistry, provider: str, model: str) -> float | None:
        """USD, or None: no usage read nor billed units counted, an answer not billed by its tokens (`priced`), or a
        model without a price."""
        return costs.cost(provider, model, self.tokens) if (self.known or self.billed) and self.priced else None

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


def _seconds(v) -> float | None:
    """A length of audio in seconds, as an answer gives it; None for anything else."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not 0 <= v <= MAX_TOKENS:
        return None
    return float(v)


def openai_usage(usage: dict) -> TokenCounts:
    prompt = _int(usage.get("prompt_tokens", usage.get("input_tokens")))
    completion = _int(usage.get("completion_tokens", usage.get("output_tokens")))
    # Chat Completions' details; the Realtime API's and audio transcriptions' are input_/output_token_details
    prompt_details = _dict(usage.get("prompt_tokens_details")) or _dict(usage.get("input_token_details"))
    completion_details = _dict(usage.get("completion_tokens_details")) or _dict(usage.get("output_token_details"))
    cached = (_int(prompt_details.get("cached_tokens"))
              or _int(_dict(usage.get("input_tokens_details")).get("cached_tokens"))
              or _int(usage.get("prompt_cache_hit_tokens")))  # DeepSeek's name for it
    # prompt tokens written to the cache (Chat Completions' prompt_tokens_details, the Responses API's
    # input_tokens_details): not among cached_tokens; GPT-5.6 and later bill them above the input rate
    written = (_int(prompt_details.get("cache_write_tokens"))
               or _int(_dict(usage.get("input_tokens_details")).get("cache_write_tokens")))
    # OpenAI counts reasoning inside completion_tokens; xAI apart from it (its total is prompt + completion + reasoning)
    reasoning = _int(completion_details.get("reasoning_tokens"))
    if reasoning and _int(usage.get("total_tokens")) == prompt + completion + reasoning:
        completion += reasoning
    # the Images API's (GPT image models): input_tokens_details splits text and image tokens, and its output tokens
    # are the image's (output_tokens_details splits them where the model writes text too); image tokens cost more
    images_in = _dict(usage.get("input_tokens_details"))
    image_in = image_out = image_cached = split = 0
    if "image_tokens" in images_in or "text_tokens" in images_in:
        image_in = _int(images_in.get("image_tokens"))
        images_out = _dict(usage.get("output_tokens_details"))
        image_out = _int(images_out.get("image_tokens")) if "image_tokens" in images_out else completion
    # the Realtime API's input_token_details counts image tokens apart, cached ones too (cached_tokens_details tells each
    # cached token's kind); Chat Completions' prompt_tokens_details.image_tokens stay text: gpt-4o bills them as such
    elif realtime := _dict(usage.get("input_token_details")):
        kinds = _dict(realtime.get("cached_tokens_details"))
        image_in, image_cached = _int(realtime.get("image_tokens")), _int(kinds.get("image_tokens"))
        split = sum(_int(kinds.get(kind)) for kind in ("text_tokens", "audio_tokens", "image_tokens"))
    # audio tokens (audio, realtime and transcribe models) cost several times the text rate; whisper-1 reports the
    # audio's length instead ({"type": "duration", "seconds": N}), what it is billed by
    seconds = _seconds(usage.get("seconds")) if usage.get("type") == "duration" else None
    return TokenCounts(prompt_tokens=prompt, completion_tokens=completion, cache_read_tokens=cached,
                       cache_write_tokens=written, audio_prompt_tokens=_int(prompt_details.get("audio_tokens")),
                       audio_cache_read_tokens=_int(_dict(prompt_details.get("cached_tokens_details")).get("audio_tokens")),
                       audio_completion_tokens=_int(completion_details.get("audio_tokens")),
                       image_prompt_tokens=image_in, image_cache_read_tokens=image_cached, cache_read_split_tokens=split,
                       image_completion_tokens=image_out, audio_seconds=seconds or 0.0)


def anthropic_usage(usage: dict, output_tokens: int | None = None) -> TokenCounts:
    inp = _int(usage.get("input_tokens"))
    write = _int(usage.get("cache_creation_input_tokens"))
    read = _int(usage.get("cache_read_input_tokens"))
    out = _int(usage.get("output_tokens")) if output_tokens is None else output_tokens
    # cache_creation splits the writes by TTL: an hour's cost more (Anthropic: 2x input, 5 minutes' 1.25x)
    one_hour = min(_int(_dict(usage.get("cache_creation")).get("ephemeral_1h_input_tokens")), write)
    return TokenCounts(prompt_tokens=inp + write + read, completion_tokens=out, cache_read_tokens=read, cache_write_tokens=write,
                       cache_write_1h_tokens=one_hour,
                       web_search_requests=_int(_dict(usage.get("server_tool_use")).get("web_search_requests")))


# Anthropic's usage names a service tier and an inference geography whose prices differ from the standard ones the
# registry holds: Priority Tier by contract (unpublished), Batch at 50 %, US-only inference ("us") at 1.1x on newer
# models (platform.claude.com/docs/en/about-claude/pricing). Those answers' cost is unknown, never the standard price.
_STANDARD_TIERS = frozenset({"standard"})
_STANDARD_GEOS = frozenset({"global", "not_available"})


def anthropic_priced(usage: dict) -> bool:
    """Whether an Anthropic usage is billed at the registry's (standard tier, global inference) prices."""
    tier, geo = usage.get("service_tier"), usage.get("inference_geo")
    return (not isinstance(tier, str) or not tier or tier in _STANDARD_TIERS) and (
        not isinstance(geo, str) or not geo or geo in _STANDARD_GEOS)


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


# Answers whose usage is not their request's: a retrieval (GET, HEAD) repeats the usage of the call that ran the model
# (a stored response or chat completion, a background response polled), and a batch object (created, retrieved,
# cancelled) carries its whole batch's, billed at the batch API's prices, which the registry does not hold. Their usage
# is not read (usage_is_its_own): an unknown cost, never one counted again at each poll.
RETRIEVAL_METHODS = frozenset({"GET", "HEAD"})
BATCH_PATH = "/batches"  # OpenAI's /v1/batches (Azure's /openai/batches), Anthropic's /v1/messages/batches


def usage_is_its_own(method: str, path: str) -> bool:
    """Whether the usage an answer carries is its request's own (see RETRIEVAL_METHODS)."""
    return method not in RETRIEVAL_METHODS and BATCH_PATH not in path


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
    if usage_format == "bedrock":
        return _parse_bedrock(body, content_type or "", tail)
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
        # a verbose_json transcription or translation from before the API added its usage: the audio's length
        seconds = _seconds(doc.get("duration")) if usage_format == "openai" and isinstance(doc.get("text"), str) else None
        if seconds is not None:
            return Parsed(model=model, tokens=TokenCounts(audio_seconds=seconds), billed=True)
        return Parsed(model=model)
    if usage_format == "anthropic":
        return Parsed(model=model, tokens=anthropic_usage(usage), known=True, priced=anthropic_priced(usage))
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
        out.priced = anthropic_priced(usage) if usage_format == "anthropic" else True
    return out


def _parse_gemini(chunks) -> Parsed:
    """Every chunk of a stream carries the usage so far: the last one counts. Vertex AI's embeddings :predict answers
    predictions instead, each with its input's token count."""
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
        elif isinstance(chunk.get("predictions"), list):
            _predicted_tokens(out, chunk["predictions"])
    return out


def _predicted_tokens(out: Parsed, predictions: list) -> None:
    """Vertex AI's embeddings :predict: each prediction's embeddings.statistics.token_count, summed as prompt tokens.
    Vertex bills its text-embedding and multilingual models by the input's characters (metadata.billableCharacterCount),
    not by tokens: the usage is known, the cost is not priced from token prices (Parsed.priced)."""
    counts = [_dict(_dict(_dict(p).get("embeddings")).get("statistics")).get("token_count") for p in predictions]
    if counts and all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in counts):
        out.tokens = TokenCounts(prompt_tokens=min(sum(_int(c) for c in counts), MAX_TOKENS))
        out.known, out.priced = True, False


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


class AnthropicStreamUsage:
    """Anthropic's stream events read for usage (its Messages SSE; Claude's InvokeModel stream on Bedrock): the model
    and input counts of message_start, the output count (and newer APIs' final input and cache counts) of the last
    message_delta."""

    __slots__ = ("delta", "final", "model", "output", "start", "started")

    def __init__(self) -> None:
        self.model = ""
        self.start: dict = {}
        self.final: dict = {}
        self.output: int | None = None
        self.started = self.delta = False

    def feed(self, ev: dict) -> None:
        kind = ev.get("type")
        if kind == "message_start" and isinstance(ev.get("message"), dict):
            msg = ev["message"]
            if isinstance(msg.get("model"), str) and msg["model"]:
                self.model = msg["model"]
            if isinstance(msg.get("usage"), dict):
                self.start, self.final = dict(msg["usage"]), {}
                self.started = True
        elif kind == "message_delta" and isinstance(ev.get("usage"), dict):
            usage = ev["usage"]
            self.output = _int(usage.get("output_tokens"))
            # newer APIs report final input/cache counts (and server tool use) on message_delta too
            for k in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens", "cache_creation",
                      "server_tool_use"):
                if usage.get(k) is not None:
                    self.final[k] = usage[k]
            self.delta = True

    def tokens(self) -> TokenCounts:
        return anthropic_usage({**self.start, **self.final}, self.output)

    def priced(self) -> bool:
        return anthropic_priced(self.start)


def _parse_anthropic_sse(text: str) -> Parsed:
    """Input counts and the model from message_start, the output count (and newer APIs' final input
    and cache counts) from the last message_delta: only those events are parsed."""
    events = AnthropicStreamUsage()
    for line in _lines_holding(text, ('"usage"', '"message_start"')):
        ev = _data(line)
        if isinstance(ev, dict):
            events.feed(ev)
    out = Parsed(model=events.model, known=events.started or events.delta)
    if out.known:
        out.tokens, out.priced = events.tokens(), events.priced()
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


# ---- Bedrock ------------------------------------------------------------------------------------------
# Converse answers {"usage": {"inputTokens", "outputTokens", "cacheReadInputTokens", "cacheWriteInputTokens"}}, its
# input count without the cache's (totalTokens is the four's sum); InvokeModel answers the model's own body
# (Claude's: Anthropic's Messages usage). Their streams are AWS event streams: binary frames, each [total length,
# headers length, prelude CRC32] (big-endian uint32s), headers, payload, message CRC32. ConverseStream's usage is in
# its last event, `metadata`; InvokeModelWithResponseStream's `chunk` events carry the model's own stream events
# as base64 JSON in {"bytes": ...}, the last with Bedrock's amazon-bedrock-invocationMetrics. No model is read
# from an answer: the path's model id (an inference profile, us.anthropic.claude-...) is what Bedrock bills.


def bedrock_usage(usage: dict) -> TokenCounts | None:
    """A Bedrock usage object: Converse's (inputTokens ...; its invocation metrics' inputTokenCount ... alike), or
    the model's own in an InvokeModel body (Anthropic's input_tokens ..., OpenAI's prompt_tokens ...); None for
    any other."""
    if "inputTokens" in usage or "outputTokens" in usage or "inputTokenCount" in usage:
        inp = _int(usage.get("inputTokens", usage.get("inputTokenCount")))
        read = _int(usage.get("cacheReadInputTokens", usage.get("cacheReadInputTokenCount")))
        write = _int(usage.get("cacheWriteInputTokens", usage.get("cacheWriteInputTokenCount")))
        return TokenCounts(prompt_tokens=inp + read + write, completion_tokens=_int(usage.get("outputTokens",
                           usage.get("outputTokenCount"))), cache_read_tokens=read, cache_write_tokens=write)
    if "input_tokens" in usage or "output_tokens" in usage:
        return anthropic_usage(usage)
    if "prompt_tokens" in usage or "completion_tokens" in usage:
        return openai_usage(usage)
    return None


def _invoke_body_usage(doc: dict) -> TokenCounts | None:
    """An InvokeModel body's usage: a `usage` object, or Meta Llama's prompt_token_count / generation_token_count,
    or Amazon Titan's inputTextTokenCount (its embeddings too)."""
    if isinstance(doc.get("usage"), dict):
        return bedrock_usage(doc["usage"])
    if "prompt_token_count" in doc or "generation_token_count" in doc:
        return TokenCounts(prompt_tokens=_int(doc.get("prompt_token_count")),
                           completion_tokens=_int(doc.get("generation_token_count")))
    if "inputTextTokenCount" in doc:
        results = doc.get("results") if isinstance(doc.get("results"), list) else []
        return TokenCounts(prompt_tokens=_int(doc.get("inputTextTokenCount")),
                           completion_tokens=min(sum(_int(_dict(r).get("tokenCount")) for r in results), MAX_TOKENS))
    return None


def _parse_bedrock(body: bytes, content_type: str, tail: bytes) -> Parsed:
    if EVENT_STREAM in content_type:
        return _parse_event_stream(body, tail)
    try:
        doc = json.loads(body)
    except ValueError:  # (UnicodeDecodeError too) a body cut at the logged limit: its usage is in the tail
        usage = _last_member(tail.decode("utf-8", errors="replace"), "usage", "{") if tail else None
        doc = {"usage": usage}
    tokens = _invoke_body_usage(doc) if isinstance(doc, dict) else None
    return Parsed(tokens=tokens, known=True) if tokens is not None else Parsed()


_UINT32 = struct.Struct(">I")  # the prelude's lengths and CRCs, the message CRC
# Event stream header value types with a fixed size (byte, short, int, long, timestamp, uuid); 0 and 1 (true,
# false) have none, 6 and 7 (bytes, string) a 2-byte length first
_HEADER_SIZES = {2: 1, 3: 2, 4: 4, 5: 8, 8: 8, 9: 16}
# the first header of a frame that a cut capture's tail may start inside of: its name's length byte, then the name
_FIRST_HEADERS = (b"\x0b:event-type", b"\x0d:message-type", b"\x0d:content-type", b"\x0f:exception-type")
# frames read from the end (the last events carry the usage) and from the start (Claude's message_start)
LAST_FRAMES = 8
FIRST_FRAMES = 4
# occurrences of a header name tried as a frame's first header before giving up (a tail is cut inside one frame only)
RESYNC_TRIES = 16


def event_frames(data: bytes, i: int = 0) -> list[int]:
    """The offsets of the whole frames of an AWS event stream in data[i:], each found from the one before by its
    length alone (a frame decoded is checked by its CRC, event_frame); stops before a frame cut off."""
    out = []
    n = len(data)
    while i + 16 <= n:
        total = _UINT32.unpack_from(data, i)[0]
        if total < 16 or i + total > n:
            break
        out.append(i)
        i += total
    return out


def _first_frame(data: bytes) -> int:
    """The offset of the first whole frame in `data`, which may start inside one (a capture's tail), or -1: a
    frame's first header is one of Bedrock's, 12 bytes in, and its prelude's CRC holds."""
    found = -1
    for name in _FIRST_HEADERS:
        pos = data.find(name, 12)
        for _ in range(RESYNC_TRIES):
            if pos < 0 or 0 <= found < pos - 12:
                break
            start = pos - 12
            if zlib.crc32(data[start:start + 8]) == _UINT32.unpack_from(data, start + 8)[0]:
                found = start
                break
            pos = data.find(name, pos + 1)
    return found


def event_frame(data: bytes, i: int) -> tuple[dict[str, str], bytes] | None:
    """The string headers and the payload of the frame at data[i] (one event_frames found); None when its
    message CRC does not hold or its headers do not parse."""
    end = i + _UINT32.unpack_from(data, i)[0] - 4
    if zlib.crc32(data[i:end]) != _UINT32.unpack_from(data, end)[0]:
        return None
    j, headers_end = i + 12, i + 12 + _UINT32.unpack_from(data, i + 4)[0]
    if headers_end > end:
        return None
    headers: dict[str, str] = {}
    try:
        while j < headers_end:
            name_end = j + 1 + data[j]
            name = data[j + 1:name_end].decode("utf-8", errors="replace")
            kind, j = data[name_end], name_end + 1
            if kind in (0, 1):
                continue
            if kind in _HEADER_SIZES:
                j += _HEADER_SIZES[kind]
            elif kind in (6, 7):
                size = int.from_bytes(data[j:j + 2], "big")
                if kind == 7:
                    headers[name] = data[j + 2:j + 2 + size].decode("utf-8", errors="replace")
                j += 2 + size
            else:
                return None
    except IndexError:
        return None
    return (headers, data[headers_end:end]) if j == headers_end else None


def _event(data: bytes, i: int) -> tuple[str, bytes]:
    """(:event-type, payload) of an event frame; ("", b"") for an exception or a frame that does not read."""
    frame = event_frame(data, i)
    if frame is None or frame[0].get(":message-type", "event") != "event":
        return "", b""
    return frame[0].get(":event-type", ""), frame[1]


def _chunk_event(payload: bytes) -> dict | None:
    """The model's own stream event an InvokeModelWithResponseStream `chunk` carries: {"bytes": base64 JSON}."""
    try:
        doc = json.loads(payload)
        ev = json.loads(base64.b64decode(doc["bytes"], validate=True)) if isinstance(doc, dict) else None
    except (ValueError, KeyError, TypeError, binascii.Error):
        return None
    return ev if isinstance(ev, dict) else None


def _parse_event_stream(body: bytes, tail: bytes) -> Parsed:
    """A Bedrock event stream's usage: ConverseStream's metadata event; for InvokeModelWithResponseStream, Claude's
    own message_start and message_delta (cache counts included), else the invocation metrics Bedrock adds to the
    last chunk. Only the first and last few frames are decoded. `tail`: the end of a stream longer than the logged
    body, read from its first whole frame."""
    frames = [(body, i) for i in event_frames(body)]
    if tail:
        start = _first_frame(tail)
        if start >= 0:
            frames += [(tail, i) for i in event_frames(tail, start)]
    metrics: dict | None = None
    delta: dict | None = None  # Claude's last message_delta
    for data, i in frames[:-LAST_FRAMES - 1:-1]:
        kind, payload = _event(data, i)
        if kind == "metadata":
            doc = json_object(payload)
            tokens = bedrock_usage(doc["usage"]) if doc is not None and isinstance(doc.get("usage"), dict) else None
            return Parsed(tokens=tokens, known=True) if tokens is not None else Parsed()
        ev = _chunk_event(payload) if kind == "chunk" else None
        if ev is None:
            continue
        if metrics is None and isinstance(ev.get("amazon-bedrock-invocationMetrics"), dict):
            metrics = ev["amazon-bedrock-invocationMetrics"]
        if delta is None and ev.get("type") == "message_delta":
            delta = ev
        if metrics is not None and delta is not None:
            break
    claude = AnthropicStreamUsage()
    for data, i in frames[:FIRST_FRAMES]:
        kind, payload = _event(data, i)
        ev = _chunk_event(payload) if kind == "chunk" else None
        if ev is not None and ev.get("type") == "message_start":
            claude.feed(ev)
            break
    if delta is not None:
        claude.feed(delta)
    if claude.started:
        if not claude.delta and metrics is not None:  # the output count from Bedrock's metrics
            claude.output = _int(metrics.get("outputTokenCount"))
        return Parsed(tokens=claude.tokens(), known=True)
    tokens = bedrock_usage(metrics) if metrics is not None else None
    return Parsed(tokens=tokens, known=True) if tokens is not None else Parsed()


def _event_stream_whole(body: bytes) -> bool:
    """Whether a Bedrock event stream came whole: its frames run to its very end, the last is no exception and
    ends the answer (ConverseStream's metadata, or the chunk carrying Bedrock's invocation metrics)."""
    frames = event_frames(body)
    if not frames or frames[-1] + _UINT32.unpack_from(body, frames[-1])[0] != len(body):
        return False
    kind, payload = _event(body, frames[-1])
    if kind == "metadata":
        return True
    ev = _chunk_event(payload) if kind == "chunk" else None
    return ev is not None and "amazon-bedrock-invocationMetrics" in ev


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
    if EVENT_STREAM in ctype:
        return _event_stream_whole(body) if usage_format == "bedrock" else True
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


def unicode_text(value: str) -> str:
    """`value` as UTF-8 can carry it (a log event's string fields must): a lone surrogate, which JSON may escape
    ("\\ud800") but is no Unicode text, becomes '?' (as the async log writes it)."""
    if value.isascii():
        return value
    try:
        value.encode()
    except UnicodeEncodeError:
        return value.encode(errors="replace").decode()
    return value


def request_fields(body: bytes) -> tuple[str, bool, str]:
    """(model, stream, user) from a JSON request body, read in one parse; `user` is OpenAI's end-user
    parameter ("" when absent or not a string). ("", False, "") for a body that is not JSON or nests past the
    recursion limit (the request is logged all the same). Model and user are Unicode text (unicode_text)."""
    doc = json_object(body)
    if doc is None:
        return "", False, ""
    model = unicode_text(doc["model"]) if isinstance(doc.get("model"), str) else ""
    user = unicode_text(doc["user"]) if isinstance(doc.get("user"), str) else ""
    return model, doc.get("stream") is True, user


# OpenAI's uploads (audio transcriptions and translations, image edits and variations, and the APIs copying them) are
# multipart/form-data requests whose `model` is a form field, answered without a model
FORM_DATA = "multipart/form-data"
_BOUNDARY = re.compile(r';\s*boundary=(?:"([^"]+)"|([^\s;]+))', re.IGNORECASE)
_PART_NAME = re.compile(rb'^content-disposition:[ \t]*form-data[ \t]*;(?:[^\r\n]*;)?[ \t]*name="?([^";\r\n]*)"?[ \t]*(?:;|\r?$)',
                        re.IGNORECASE | re.MULTILINE)
FORM_MODEL_MAX_BYTES = 256  # a model name (or another field read: n, size, quality); a longer one is none of them


def form_fields(body: bytes, content_type: str, names: frozenset[bytes]) -> tuple[dict[str, str], bool]:
    """The fields `names` of a multipart/form-data request body ("" for one longer than FORM_MODEL_MAX_BYTES), and
    whether the body is whole (its closing delimiter is there: a streamed upload's logged start is not, a field
    after the cut is missing). Only the parts' headers are searched: a file between them is skipped, not copied."""
    if not (content_type or "").lower().startswith(FORM_DATA):
        return {}, False
    m = _BOUNDARY.search(content_type)
    if not m:
        return {}, False
    delimiter = b"--" + (m.group(1) or m.group(2)).encode("latin-1")
    found: dict[str, str] = {}
    at = body.find(delimiter)
    while at >= 0:
        start = at + len(delimiter)
        if body.startswith(b"--", start):
            return found, True
        end_of_head = body.find(b"\r\n\r\n", start)
        if end_of_head < 0:
            return found, False
        following = body.find(delimiter, end_of_head)
        if following < 0:
            return found, False
        part = _PART_NAME.search(body, start, end_of_head + 2)
        field = part.group(1).strip(b" \t") if part else b""  # an unquoted name=model may have blanks after it
        if field in names:
            name = field.decode("latin-1")
            value = body[end_of_head + 4:following]
            if value.endswith(b"\r\n"):
                value = value[:-2]
            if name not in found:
                found[name] = value.decode("utf-8", errors="replace").strip() if len(value) <= FORM_MODEL_MAX_BYTES else ""
        at = following
    return found, False


_MODEL_FIELD = frozenset({b"model"})


def form_model(body: bytes, content_type: str) -> str:
    """The `model` field of a multipart/form-data request body; "" when it has none (or is no such body)."""
    return form_fields(body, content_type, _MODEL_FIELD)[0].get("model", "")


# Answers that carry no usage, billed by what their request asked for: OpenAI's speech (tts-1, per character of its
# `input`) and images (dall-e, per image by `n`, `size` and `quality`)
SPEECH_PATH = "/audio/speech"
IMAGE_PATHS = ("/images/generations", "/images/edits", "/images/variations")
# The Images API's value of a field a request leaves out, for the models it bills per image (dall-e-2, dall-e-3): one
# image, 1024x1024, standard quality (its API reference before the GPT image models: "Defaults to 1024x1024",
# "Defaults to standard"; help.openai.com/en/articles/8555480-dall-e-3-api: quality "defaults to standard"). A value
# the registry has no price for ("auto", a GPT image size) gives no cost.
IMAGE_REQUEST_DEFAULTS = {"n": 1, "size": "1024x1024", "quality": "standard"}
_IMAGE_FIELDS = frozenset(name.encode() for name in IMAGE_REQUEST_DEFAULTS)
MAX_IMAGES = 10  # n: the most images one request may ask for
_FORM_COUNT = re.compile(r"[0-9]{1,2}")  # n as a form field


def billed_by_request(parsed: Parsed, path: str, body: bytes, content_type: str, answered: bool) -> Parsed:
    """`parsed` with what its request was billed for, where the answer reports no usage: a speech's characters (its
    JSON `input`), an image request's images (its JSON or form fields). `answered`: the provider answered it in full
    and with success (2xx, no error); otherwise, on another path, or when the body does not tell (not JSON, a field of
    another form, a form cut before it), `parsed` as it came. Only these paths' bodies are read."""
    if parsed.known or parsed.billed or not parsed.priced or not answered:
        return parsed
    end = path.rstrip("/")
    if end.endswith(SPEECH_PATH):
        doc = json_object(body)
        text = doc.get("input") if doc is not None else None
        if isinstance(text, str) and text:
            return Parsed(model=parsed.model, tokens=TokenCounts(characters=len(text)), billed=True)
    elif end.endswith(IMAGE_PATHS):
        images = _requested_images(body, content_type)
        if images is not None:
            return Parsed(model=parsed.model, tokens=TokenCounts(images=(images,)), billed=True)
    return parsed


def _requested_images(body: bytes, content_type: str) -> tuple[str, str, int] | None:
    """(quality, size, n) an image request asked for, each missing field the API's default; None when the body does
    not tell (not JSON nor a form, a field of another form, a form cut before its n or size; cut before its quality:
    quality "", see TokenCounts.images)."""
    if (content_type or "").lower().startswith(FORM_DATA):
        fields, whole = form_fields(body, content_type, _IMAGE_FIELDS)
        n = fields.get("n")
        asked: dict = {**fields, "n": int(n) if n is not None and _FORM_COUNT.fullmatch(n) else n}
    else:
        doc = json_object(body)
        if doc is None:
            return None
        asked, whole = doc, True
    values = {}
    for name, default in IMAGE_REQUEST_DEFAULTS.items():
        value = asked.get(name)
        if value is None and not whole:  # it may come after the cut: a quality not told, priced only where it cannot matter
            if name != "quality":
                return None
            value = ""
        values[name] = default if value is None else value
    n, size, quality = values["n"], values["size"], values["quality"]
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_IMAGES:
        return None
    if not isinstance(size, str) or not isinstance(quality, str):
        return None
    return quality, size, n


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

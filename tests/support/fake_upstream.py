"""A local stand-in for the OpenAI, Anthropic and Gemini APIs (JSON and SSE streaming).

OpenAI's chat completions answer under any prefix (`/openai/v1/...` as Groq, `/api/v1/...` as
OpenRouter, Azure's `/openai/deployments/<d>/...`), Gemini's `models/<m>:generateContent` and
`:streamGenerateContent` (SSE with `?alt=sse`, else a JSON array) under `/v1beta` or `/v1`.
Token counts are deterministic: prompt tokens = words in the request's message contents (Gemini:
its parts' text), completion tokens = words in the reply. Every request's headers are recorded at
GET /_received so tests can check what the gateway forwarded. Chat and Messages streams answer
`x-fake-words: N` with a reply of N words (a long stream) and `x-fake-stream-error: 1` with an error event after
the first word (a 200 stream the provider gave up on: OpenAI's `data: {"error": ...}`, Anthropic's
`event: error` overloaded_error), and chat streams `x-fake-gzip: 1` gzip-encoded;
Anthropic's `/v1/messages/count_tokens`, Message Batches (create, results as JSONL), Files (upload, download) and
`/v1/models`; `x-fake-usage` / `x-fake-delta-usage` (JSON) add fields to a Messages answer's usage / a stream's message_delta usage;
Anthropic on Vertex AI (`publishers/anthropic/models/<m>:rawPredict`, `:streamRawPredict`) as `/v1/messages`;
`/v1/embeddings` answers vectors of `x-fake-dims` numbers; `/v1/audio/transcriptions` a transcription of a
multipart upload (its usage as whisper-1 or gpt-4o-transcribe report it; `response_format` text: plain text, no usage);
`/v1/files` and `/v1/uploads/<id>/parts`
take an upload (recorded by size and SHA-256), `/v1/files/<id>/content` answers `x-fake-bytes` binary bytes,
`/v1/audio/speech` streams binary audio/mpeg (or, with "stream_format": "sse", its events and usage), `/v1/responses` answers JSON or its event stream
(`/v1/responses/<id>` a stored one), `/v1/batches` a batch (retrieved or cancelled: completed, with its usage), `/v1/images/generations`
and `/v1/images/edits` (multipart) a base64 image per image asked for (`n`), gpt-image's with its usage.
`/v1/moderations` flags an input whose text holds a FLAGGED_WORDS word (401 without an Authorization header, as
OpenAI).
Chat completions and Messages refuse a request too long for `x-fake-context-window` (tokens: a number, or a JSON object
of them by model) as OpenAI (400 context_length_exceeded) and Anthropic ("prompt is too long", "exceed context limit")
word their refusals, counting its prompt (words, as above) and max_tokens / max_completion_tokens;
`x-fake-refusal-counts: 0` leaves the counts out of the message. `x-fake-cache` (JSON: `cached_tokens`,
`cache_write_tokens`) adds prompt-cache counts to a chat completion's `prompt_tokens_details` and a response's
`input_tokens_details`, as OpenAI reports cache reads and writes.
Gemini's `:embedContent`, `:batchEmbedContents` and `:countTokens`, and Vertex AI's Gemini paths
(`projects/<p>/locations/<l>/publishers/google/models/<m>:generateContent`, `:streamGenerateContent`, `:embedContent`,
`:predict` for embeddings, `:countTokens`) with Vertex's usage fields (cachedContentTokenCount for a `cachedContent`,
thoughtsTokenCount for a thinkingConfig, toolUsePromptTokenCount for a googleSearch tool). AWS Bedrock's runtime
(`/model/<id>/converse`, `/converse-stream`, `/invoke`, `/invoke-with-response-stream`; Claude's bodies for invoke), its
streams AWS event streams, and a SigV4-signed request checked as AWS checks it (tests.support.bedrock's keys): a 403
when a signed header, the path, query or body changed on the way.

Run: python -m tests.support.fake_upstream --port 9999
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import re
import struct
import time
import uuid
import zlib

from fastapi import FastAPI, Request
from fastapi.middleware.gzip import GZipMiddleware
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.middleware.gzip import DEFAULT_EXCLUDED_CONTENT_TYPES
from starlette.requests import ClientDisconnect

from tests.support import bedrock as aws

REPLY = "Hello from the fake upstream model"


# the fake moderation endpoint's lexicon: a word in an input's text flags it in that category
FLAGGED_WORDS = {"violent": "violence", "hateful": "hate"}
MODERATION_CATEGORIES = ("harassment", "hate", "self-harm", "sexual", "violence")


def _moderation_result(text: str) -> dict:
    hits = {FLAGGED_WORDS[w] for w in re.findall(r"[a-z-]+", text.lower()) if w in FLAGGED_WORDS}
    return {"flagged": bool(hits), "categories": {c: c in hits for c in MODERATION_CATEGORIES},
            "category_scores": {c: 0.97 if c in hits else 0.0004 for c in MODERATION_CATEGORIES}}


# bytes of audio/speech's answer per character of its input
SPEECH_BYTES_PER_CHAR = 600
# audio tokens of a streamed (stream_format "sse") speech answer per word of its input
SPEECH_TOKENS_PER_WORD = 10
# the usage a completed batch object carries: its requests' together
BATCH_USAGE = {"input_tokens": 100_000, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 50_000,
               "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 150_000}
# output tokens of a gpt-image answer (one image), and input tokens of each image an edit uploads
IMAGE_TOKENS = 1056
IMAGE_INPUT_TOKENS = 323
# the length of a whisper transcription's audio, as its usage reports it
WHISPER_SECONDS = 3


def binary_bytes(size: int, start: int = 0) -> bytes:
    """`size` bytes of a binary body (a file, audio): every byte value, so never UTF-8; the same at the same offset."""
    return bytes((start + i) % 251 for i in range(size))


def _words(messages) -> int:
    total = 0
    for m in messages or []:
        content = m.get("content", "")
        if isinstance(content, list):
            content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
        total += len(str(content).split())
    return total


# audio as OpenAI's audio models count it: each input_audio part of the prompt is this many prompt tokens, and
# an answer asked for with "modalities": [..., "audio"] has this many audio completion tokens per word besides its text
AUDIO_PART_TOKENS = 100
AUDIO_TOKENS_PER_WORD = 8


def _audio_parts(messages) -> int:
    return sum(1 for m in messages or [] if isinstance(m.get("content"), list)
               for p in m["content"] if isinstance(p, dict) and p.get("type") == "input_audio")


def _length_refusal(request: Request, body: dict, prompt: int, anthropic: bool) -> JSONResponse | None:
    """The provider's refusal of a request too long for the context window x-fake-context-window gives its model."""
    window = request.headers.get("x-fake-context-window")
    if window is None:
        return None
    if window.startswith("{"):
        window = json.loads(window).get(str(body.get("model")))
        if window is None:
            return None
    window = int(window)
    completion = body.get("max_completion_tokens") or body.get("max_tokens") or 0
    if prompt + completion <= window:
        return None
    counts = request.headers.get("x-fake-refusal-counts") != "0"
    if anthropic:
        if not counts:
            message = "prompt is too long"
        elif prompt > window:
            message = f"prompt is too long: {prompt} tokens > {window} maximum"
        else:
            message = (f"input length and `max_tokens` exceed context limit: {prompt} + {completion} > {window}, "
                       "decrease input length or `max_tokens` and try again")
        return JSONResponse({"type": "error", "error": {"type": "invalid_request_error", "message": message},
                             "request_id": "req_fake"}, status_code=400)
    if not counts:
        message = "Please reduce the length of the messages or completion."
    elif completion:
        message = (f"This model's maximum context length is {window} tokens. However, you requested {prompt + completion} "
                   f"tokens ({prompt} in the messages, {completion} in the completion). Please reduce the length of the "
                   "messages or completion.")
    else:
        message = (f"This model's maximum context length is {window} tokens. However, your messages resulted in {prompt} "
                   "tokens. Please reduce the length of the messages.")
    return JSONResponse({"error": {"message": message, "type": "invalid_request_error", "param": "messages",
                                   "code": "context_length_exceeded"}}, status_code=400)


def _reply(request: Request) -> list[str]:
    """The reply's words: REPLY's, or `x-fake-words` of them (REPLY's words over and over)."""
    words = REPLY.split(" ")
    n = int(request.headers.get("x-fake-words", "0") or 0)
    return [words[i % len(words)] for i in range(n)] if n > 0 else words


def _gzip(stream):
    """A stream gzip-encoded as it goes: each event is flushed, so it arrives as soon as it is made."""
    encoder = zlib.compressobj(wbits=16 + zlib.MAX_WBITS)

    async def encoded():
        async for piece in stream:
            yield encoder.compress(piece) + encoder.flush(zlib.Z_SYNC_FLUSH)
        yield encoder.flush()

    return encoded()


def create_app(chunk_delay: float = 0.0) -> FastAPI:
    app = FastAPI()
    # AWS never compresses its event streams
    app.add_middleware(GZipMiddleware, minimum_size=200, exclude_content_types=(*DEFAULT_EXCLUDED_CONTENT_TYPES, aws.EVENT_STREAM))
    app.state.received = []
    app.state.upload_progress = 0  # bytes of the upload in progress received so far
    # statuses the next chat requests get instead of an answer, in order: 503 or (429, {"retry-after": "1"})
    app.state.fail_next = []
    # answers the next moderation requests get instead of a verdict, in order: a status (500) or "hang" (never answers)
    app.state.moderation_fail_next = []

    @app.get("/_received")
    async def received() -> list:
        return app.state.received

    @app.delete("/_received")
    async def clear() -> dict:
        app.state.received.clear()
        return {}

    def record(request: Request, body: dict) -> None:
        app.state.received.append({"path": request.url.path, "query": request.url.query, "headers": dict(request.headers),
                                   "header_lines": [(n.decode("latin-1"), v.decode("latin-1")) for n, v in request.headers.raw],
                                   "body": body})

    @app.post("/v1/chat/completions")
    @app.post("/chat/completions")
    @app.post("/{prefix:path}/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        record(request, body)
        if body.get("model") == "hang":  # accepts the request and never answers
            await asyncio.sleep(3600)
        if app.state.fail_next:
            status, headers = app.state.fail_next.pop(0), {}
            if isinstance(status, tuple):
                status, headers = status
            return JSONResponse({"error": {"message": f"planned failure {status}", "type": "server_error"}},
                                status_code=status, headers=headers)
        model_name = str(body.get("model", ""))
        if model_name.startswith("fail-") and model_name[5:].isdigit():  # e.g. fail-500, fail-429
            return JSONResponse({"error": {"message": "upstream exploded", "type": "server_error"}},
                                status_code=int(model_name[5:]))
        words = _reply(request) if body.get("stream") else REPLY.split(" ")
        prompt, completion = _words(body.get("messages")), len(words)
        refusal = _length_refusal(request, body, prompt, anthropic=False)
        if refusal is not None:
            return refusal
        usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
        audio_in = AUDIO_PART_TOKENS * _audio_parts(body.get("messages"))
        audio_out = AUDIO_TOKENS_PER_WORD * completion if "audio" in (body.get("modalities") or []) else 0
        if audio_in or audio_out:
            prompt, completion = prompt + audio_in, completion + audio_out
            usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
                     "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": audio_in},
                     "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": audio_out}}
        if request.headers.get("x-fake-cache"):
            usage["prompt_tokens_details"] = {**usage.get("prompt_tokens_details", {}), **json.loads(request.headers["x-fake-cache"])}
        model = body.get("model", "gpt-4o-mini")
        cid = "chatcmpl-" + uuid.uuid4().hex[:12]
        created = int(time.time())
        if not body.get("stream"):
            return {
                "id": cid, "object": "chat.completion", "created": created, "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": REPLY}, "finish_reason": "stop"}],
                "usage": usage,
            }
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        include_usage |= request.headers.get("x-fake-always-usage") == "1"  # as Mistral's streams, which refuse stream_options
        delay = float(request.headers.get("x-fake-chunk-delay", chunk_delay))
        stream_error = request.headers.get("x-fake-stream-error") == "1"

        async def events():
            for i, word in enumerate(words):
                if i == 1 and model == "break-stream":  # the connection drops after the first chunk
                    raise ConnectionResetError("fake upstream: stream broken on purpose")
                if i == 1 and stream_error:  # the provider gives up mid-stream, inside its 200
                    yield b'data: {"error": {"message": "The server is overloaded", "type": "server_error", "code": 503}}\n\n'
                    return
                chunk = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                         "choices": [{"index": 0, "delta": {"content": word if i == 0 else " " + word}, "finish_reason": None}]}
                if include_usage:
                    chunk["usage"] = None
                yield f"data: {json.dumps(chunk)}\n\n".encode()
                if delay:
                    await asyncio.sleep(delay)
            final = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                     "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
            yield f"data: {json.dumps(final)}\n\n".encode()
            if include_usage:
                yield f"data: {json.dumps({'id': cid, 'object': 'chat.completion.chunk', 'created': created, 'model': model, 'choices': [], 'usage': usage})}\n\n".encode()
            yield b"data: [DONE]\n\n"

        if request.headers.get("x-fake-gzip") == "1":
            return StreamingResponse(_gzip(events()), media_type="text/event-stream", headers={"content-encoding": "gzip"})
        return StreamingResponse(events(), media_type="text/event-stream")

    @app.post("/v1/embeddings")
    async def embeddings(request: Request):
        """OpenAI's embeddings: a vector of `x-fake-dims` (default 8) per input, floats or base64 as
        `encoding_format` asks; prompt tokens = words of the inputs. A large batch is a large answer
        whose model and usage come last."""
        body = await request.json()
        record(request, body)
        inputs = body.get("input") or []
        inputs = [inputs] if isinstance(inputs, str) else inputs
        dims = int(request.headers.get("x-fake-dims", "8"))
        vector = [round((i % 97) / 97 - 0.5, 8) for i in range(dims)]
        if body.get("encoding_format") == "base64":
            vector = base64.b64encode(struct.pack(f"<{dims}f", *vector)).decode()
        tokens = sum(len(str(text).split()) for text in inputs)
        return {"object": "list", "data": [{"object": "embedding", "index": i, "embedding": vector} for i in range(len(inputs))],
                "model": body.get("model", "text-embedding-3-small"), "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

    @app.post("/v1/moderations")
    async def moderations(request: Request):
        """OpenAI's moderation endpoint: one result per string of `input`, one for a list of text/image_url parts
        (omni-moderation's multimodal input)."""
        body = await request.json()
        record(request, body)
        if app.state.moderation_fail_next:
            planned = app.state.moderation_fail_next.pop(0)
            if planned == "hang":  # until the caller gives up on it (a test's server then stops at once)
                while not await request.is_disconnected():
                    await asyncio.sleep(0.05)
                return Response(status_code=499)
            return JSONResponse({"error": {"message": f"planned failure {planned}", "type": "server_error"}},
                                status_code=planned)
        if not request.headers.get("authorization"):
            return JSONResponse({"error": {"message": "You didn't provide an API key.", "type": "invalid_request_error"}},
                                status_code=401)
        inputs = body.get("input")
        if isinstance(inputs, str):
            texts = [inputs]
        elif isinstance(inputs, list) and inputs and all(isinstance(i, str) for i in inputs):
            texts = inputs
        else:
            texts = [" ".join(p.get("text", "") for p in inputs or [] if isinstance(p, dict))]
        return {"id": "modr-" + uuid.uuid4().hex[:12], "model": "omni-moderation-latest",
                "results": [_moderation_result(t) for t in texts]}

    @app.post("/v1/messages")
    async def messages(request: Request):
        body = await request.json()
        record(request, body)
        return _messages(request, body, body.get("model", "claude-3-5-haiku-latest"))

    @app.post("/{version}/projects/{project}/locations/{location}/publishers/anthropic/models/{model_call}")
    async def vertex_messages(model_call: str, request: Request):
        """Anthropic on Vertex AI: the model in the path (claude-sonnet-4-5@20250929), none in the body;
        :rawPredict answers as /v1/messages does, :streamRawPredict its stream. A planned failure (fail_next)
        answers as Vertex does, a Google error naming no model."""
        body = await request.json()
        record(request, body)
        if app.state.fail_next:
            status = app.state.fail_next.pop(0)
            return JSONResponse({"error": {"code": status, "message": "Quota exceeded", "status": "RESOURCE_EXHAUSTED"}},
                                status_code=status)
        model, _, call = model_call.partition(":")
        body["stream"] = call == "streamRawPredict"
        return _messages(request, body, model.replace("@", "-"))

    @app.post("/v1/messages/count_tokens")
    async def count_tokens(request: Request):
        body = await request.json()
        record(request, body)
        return {"input_tokens": _words(body.get("messages"))}

    @app.post("/v1/messages/batches")
    async def create_batch(request: Request):
        body = await request.json()
        record(request, body)
        return {"id": "msgbatch_fake", "type": "message_batch", "processing_status": "in_progress",
                "request_counts": {"processing": len(body.get("requests", [])), "succeeded": 0, "errored": 0,
                                   "canceled": 0, "expired": 0},
                "ended_at": None, "created_at": "2026-01-01T00:00:00Z", "expires_at": "2026-01-02T00:00:00Z",
                "cancel_initiated_at": None, "archived_at": None, "results_url": None}

    @app.get("/v1/messages/batches/{batch_id}/results")
    async def batch_results(batch_id: str, request: Request):
        """A batch's results as Anthropic streams them: JSONL, one Message per line, each usage at the batch tier."""
        record(request, {})
        lines = [{"custom_id": f"req-{i}", "result": {"type": "succeeded", "message": {
            "id": f"msg_{i}", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5-20250929",
            "content": [{"type": "text", "text": REPLY}], "stop_reason": "end_turn", "stop_sequence": None,
            "usage": {"input_tokens": 1000, "output_tokens": 6, "service_tier": "batch"}}}} for i in range(2)]
        return Response(b"".join(json.dumps(x).encode() + b"\n" for x in lines), media_type="application/binary")

    async def anthropic_upload(request: Request):
        """Anthropic's Files API (the `upload` route below hands it requests with an anthropic-version header): the one
        `file` part kept for anthropic_download."""
        # one `file` part (python-multipart is not installed): its headers, then its bytes up to the closing delimiter
        raw = await request.body()
        boundary = request.headers["content-type"].split("boundary=", 1)[1].strip('"').encode()
        head, _, rest = raw.partition(b"\r\n\r\n")
        data = rest[:rest.rindex(b"\r\n--" + boundary)]
        filename = re.search(rb'filename="([^"]*)"', head).group(1).decode()
        record(request, {"filename": filename, "size": len(data)})
        app.state.files = {**getattr(app.state, "files", {}), "file_fake": data}
        return {"id": "file_fake", "type": "file", "filename": filename, "mime_type": "text/plain",
                "size_bytes": len(data), "created_at": "2026-01-01T00:00:00Z", "downloadable": True}

    async def anthropic_download(file_id: str, request: Request):
        record(request, {})
        return Response(app.state.files[file_id], media_type="application/octet-stream")

    @app.get("/v1/models")
    async def list_models(request: Request):
        record(request, {})
        return {"data": [{"type": "model", "id": "claude-sonnet-4-5-20250929", "display_name": "Claude Sonnet 4.5",
                          "created_at": "2025-09-29T00:00:00Z"}], "has_more": False, "first_id": None, "last_id": None}

    def _messages(request: Request, body: dict, model: str):
        words = _reply(request) if body.get("stream") else REPLY.split(" ")
        prompt, completion = _words(body.get("messages")), len(words)
        refusal = _length_refusal(request, body, prompt, anthropic=True)
        if refusal is not None:
            return refusal
        mid = "msg_" + uuid.uuid4().hex[:12]
        stream_error = request.headers.get("x-fake-stream-error") == "1"
        # more usage fields (cache counts, server_tool_use, service_tier, ...): JSON merged into the usage (a stream's
        # message_start), and into a stream's message_delta usage (its final counts)
        extra = json.loads(request.headers.get("x-fake-usage", "{}"))
        final = json.loads(request.headers.get("x-fake-delta-usage", "{}"))
        if not body.get("stream"):
            return {
                "id": mid, "type": "message", "role": "assistant", "model": model,
                "content": [{"type": "text", "text": REPLY}], "stop_reason": "end_turn", "stop_sequence": None,
                "usage": {"input_tokens": prompt, "output_tokens": completion, **extra},
            }

        async def events():
            def ev(kind: str, data: dict) -> bytes:
                return f"event: {kind}\ndata: {json.dumps(data)}\n\n".encode()

            yield ev("message_start", {"type": "message_start", "message": {
                "id": mid, "type": "message", "role": "assistant", "model": model, "content": [],
                "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": prompt, "output_tokens": 1, **extra}}})
            yield ev("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})
            for i, word in enumerate(words):
                if i == 1 and stream_error:  # Anthropic's mid-stream error, inside its 200
                    yield ev("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
                    return
                yield ev("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                 "delta": {"type": "text_delta", "text": word if i == 0 else " " + word}})
                if chunk_delay:
                    await asyncio.sleep(chunk_delay)
            yield ev("content_block_stop", {"type": "content_block_stop", "index": 0})
            yield ev("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                                       "usage": {"output_tokens": completion, **final}})
            yield ev("message_stop", {"type": "message_stop"})

        return StreamingResponse(events(), media_type="text/event-stream")

    def vector(dims: int = 8) -> list[float]:
        return [round((i % 97) / 97 - 0.5, 8) for i in range(dims)]

    def parts_words(contents) -> int:
        contents = [contents] if isinstance(contents, dict) else contents or []
        return sum(len(str(p.get("text", "")).split()) for c in contents for p in (c.get("parts") or []))

    def gemini_answer(request: Request, body: dict, model: str, call: str, vertex: bool):
        """generateContent and its streams; on Vertex AI with the usage fields of a cache, thinking and a search tool."""
        prompt = parts_words(body.get("contents"))
        extra = {}
        if vertex:
            cached = 1000 if body.get("cachedContent") else 0  # a cached content's tokens are part of the prompt
            prompt += cached
            if cached:
                extra["cachedContentTokenCount"] = cached
                extra["cacheTokensDetails"] = [{"modality": "TEXT", "tokenCount": cached}]
            if (body.get("generationConfig") or {}).get("thinkingConfig"):
                extra["thoughtsTokenCount"] = 50
            if any("googleSearch" in t for t in body.get("tools") or []):
                extra["toolUsePromptTokenCount"] = 30
        words = REPLY.split(" ")

        def chunk(text: str, done: bool, completion: int) -> dict:
            total = prompt + completion + extra.get("thoughtsTokenCount", 0) + extra.get("toolUsePromptTokenCount", 0)
            out = {"candidates": [{"content": {"parts": [{"text": text}], "role": "model"}, "index": 0}],
                   "usageMetadata": {"promptTokenCount": prompt, "totalTokenCount": total, **extra},
                   "modelVersion": model, "responseId": "fake-" + uuid.uuid4().hex[:8]}
            if vertex:
                out["createTime"] = "2025-06-01T10:00:00.000000Z"
                out["usageMetadata"]["trafficType"] = "ON_DEMAND"
                out["usageMetadata"]["promptTokensDetails"] = [{"modality": "TEXT", "tokenCount": prompt}]
            if done:
                out["candidates"][0]["finishReason"] = "STOP"
            if completion:
                out["usageMetadata"]["candidatesTokenCount"] = completion
            return out

        if call == "generateContent":
            return chunk(REPLY, True, len(words))
        parts = [chunk(w if i == 0 else " " + w, i == len(words) - 1, i + 1) for i, w in enumerate(words)]
        if request.query_params.get("alt") == "sse":
            stream = (f"data: {json.dumps(c)}\r\n\r\n".encode() for c in parts)
            return StreamingResponse(stream, media_type="text/event-stream")
        array = ((("[" if i == 0 else ",\r\n") + json.dumps(c) + ("]" if i == len(parts) - 1 else "")).encode()
                 for i, c in enumerate(parts))
        return StreamingResponse(array, media_type="application/json")

    @app.post("/{version}/models/{model_call}")
    async def gemini(version: str, model_call: str, request: Request):
        body = await request.json()
        record(request, body)
        model, _, call = model_call.partition(":")
        if call in ("generateContent", "streamGenerateContent"):
            return gemini_answer(request, body, model, call, vertex=False)
        # the Gemini API's embeddings and token counts carry no usageMetadata
        if call == "embedContent":
            return {"embedding": {"values": vector()}}
        if call == "batchEmbedContents":
            return {"embeddings": [{"values": vector()} for _ in body.get("requests", [])]}
        if call == "countTokens":
            tokens = parts_words(body.get("contents"))
            return {"totalTokens": tokens, "promptTokensDetails": [{"modality": "TEXT", "tokenCount": tokens}]}
        return JSONResponse({"error": {"code": 404, "message": f"unknown method {call}", "status": "NOT_FOUND"}}, 404)

    @app.post("/{version}/projects/{project}/locations/{location}/publishers/google/models/{model_call}")
    async def vertex_gemini(version: str, project: str, location: str, model_call: str, request: Request):
        """Vertex AI's Gemini paths, answered as Vertex does (cloud.google.com/vertex-ai/generative-ai/docs/reference/rest)."""
        body = await request.json()
        record(request, body)
        model, _, call = model_call.partition(":")
        if call in ("generateContent", "streamGenerateContent"):
            return gemini_answer(request, body, model, call, vertex=True)
        if call == "embedContent":  # gemini-embedding-001: usageMetadata after the vector
            tokens = parts_words(body.get("content"))
            return {"embedding": {"values": vector()}, "usageMetadata": {"promptTokenCount": tokens, "totalTokenCount": tokens},
                    "truncated": False}
        if call == "predict":  # text-embedding-005 & co: a token count per instance, characters billed
            texts = [str(i.get("content", "")) for i in body.get("instances", [])]
            return {"predictions": [{"embeddings": {"statistics": {"truncated": False, "token_count": len(t.split())},
                                                    "values": vector()}} for t in texts],
                    "metadata": {"billableCharacterCount": sum(len(t.replace(" ", "")) for t in texts)}}
        if call == "countTokens":
            tokens = parts_words(body.get("contents"))
            return {"totalTokens": tokens, "totalBillableCharacters": tokens * 5,
                    "promptTokensDetails": [{"modality": "TEXT", "tokenCount": tokens}]}
        return JSONResponse({"error": {"code": 404, "message": f"unknown method {call}", "status": "NOT_FOUND"}}, 404)

    @app.post("/model/{model_id}/{operation}")
    async def bedrock(model_id: str, operation: str, request: Request):
        """Bedrock's runtime (docs.aws.amazon.com/bedrock/latest/APIReference): Converse and ConverseStream for any
        model; InvokeModel and InvokeModelWithResponseStream with Claude's Messages bodies. A cachePoint after the
        system prompt (Converse) or a cache_control on it (Claude) caches its words: `x-fake-cache: read` reads
        them, else they are written. Streams answer `x-fake-words: N` with N words; the bytes streamed are recorded."""
        raw = await request.body()
        headers = {k.lower(): v for k, v in request.headers.items()}
        raw_path = request.scope.get("raw_path", b"").decode("latin-1")
        path_qs = raw_path + ("?" + request.url.query if request.url.query else "")
        app.state.received.append({"path": raw_path, "query": request.url.query, "headers": headers, "body": raw})
        if headers.get("authorization", "").startswith("AWS4-") and not aws.signature_holds(
                request.method, headers.get("host", ""), path_qs, headers, raw):
            return JSONResponse({"message": "The request signature we calculated does not match the signature you provided. "
                                            "Check your AWS Secret Access Key and signing method."}, status_code=403,
                                headers={"x-amzn-errortype": "InvalidSignatureException:http://internal.amazon.com/coral/"})
        body = json.loads(raw)
        words = _reply(request) if operation.endswith("-stream") else REPLY.split(" ")
        read = headers.get("x-fake-cache") == "read"
        if operation in ("converse", "converse-stream"):
            system = body.get("system") or []
            cached = sum(len(str(b.get("text", "")).split()) for b in system) if any("cachePoint" in b for b in system) else 0
            prompt = sum(len(str(b.get("text", "")).split()) for m in body.get("messages", []) for b in m.get("content", []))
            usage = {"inputTokens": prompt, "outputTokens": len(words), "totalTokens": prompt + cached + len(words),
                     "cacheReadInputTokens": cached if read else 0, "cacheWriteInputTokens": 0 if read else cached}
            if operation == "converse":
                return {"output": {"message": {"role": "assistant", "content": [{"text": REPLY}]}}, "stopReason": "end_turn",
                        "usage": usage, "metrics": {"latencyMs": 312}}
            frames = [aws.event("messageStart", {"role": "assistant"})]
            frames += [aws.event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": w if i == 0 else " " + w}})
                       for i, w in enumerate(words)]
            frames += [aws.event("contentBlockStop", {"contentBlockIndex": 0}), aws.event("messageStop", {"stopReason": "end_turn"}),
                       aws.event("metadata", {"usage": usage, "metrics": {"latencyMs": 312}})]
            app.state.received[-1]["answer"] = b"".join(frames)
            return StreamingResponse(iter(frames), media_type=aws.EVENT_STREAM)
        # InvokeModel: Claude's Messages API (anthropic_version bedrock-2023-05-31); its answer names the model
        # without the inference profile
        system = body.get("system") or []
        system = [{"type": "text", "text": system}] if isinstance(system, str) else system
        cached = sum(len(b.get("text", "").split()) for b in system) if any("cache_control" in b for b in system) else 0
        prompt = _words(body.get("messages"))
        usage = {"input_tokens": prompt, "cache_creation_input_tokens": 0 if read else cached,
                 "cache_read_input_tokens": cached if read else 0, "output_tokens": len(words)}
        model = re.sub(r"^(?:[a-z]+\.)?anthropic\.|-v[0-9]+(?::[0-9]+)?$", "", model_id)
        mid = "msg_bdrk_" + uuid.uuid4().hex[:12]
        if operation == "invoke":
            return {"id": mid, "type": "message", "role": "assistant", "model": model,
                    "content": [{"type": "text", "text": REPLY}], "stop_reason": "end_turn", "stop_sequence": None,
                    "usage": usage}
        start = {"type": "message_start", "message": {"id": mid, "type": "message", "role": "assistant", "model": model,
                                                      "content": [], "stop_reason": None, "stop_sequence": None,
                                                      "usage": {**usage, "output_tokens": 1}}}
        frames = [aws.chunk(start), aws.chunk({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})]
        frames += [aws.chunk({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": w if i == 0 else " " + w}})
                   for i, w in enumerate(words)]
        frames += [aws.chunk({"type": "content_block_stop", "index": 0}),
                   aws.chunk({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                              "usage": {"output_tokens": len(words)}}),
                   aws.chunk({"type": "message_stop", "amazon-bedrock-invocationMetrics": {
                       "inputTokenCount": prompt, "outputTokenCount": len(words), "invocationLatency": 900, "firstByteLatency": 300,
                       "cacheReadInputTokenCount": usage["cache_read_input_tokens"],
                       "cacheWriteInputTokenCount": usage["cache_creation_input_tokens"]}})]
        app.state.received[-1]["answer"] = b"".join(frames)
        return StreamingResponse(iter(frames), media_type=aws.EVENT_STREAM)

    @app.post("/v1/audio/transcriptions")
    @app.post("/{prefix:path}/audio/transcriptions")
    async def transcriptions(request: Request):
        # multipart/form-data: the model is a form field, the answer names none; whisper-1 reports the audio's
        # duration, the gpt-4o transcribe models tokens (AUDIO_PART_TOKENS for the file, the reply's words out)
        raw = await request.body()
        m = re.search(rb'name="model"\r\n\r\n([^\r]*)\r\n', raw)
        model = m.group(1).decode() if m else ""
        record(request, {"model": model, "bytes": len(raw)})
        if re.search(rb'name="response_format"\r\n\r\ntext\r\n', raw):
            return Response(REPLY, media_type="text/plain")
        if model.startswith("whisper"):
            return {"text": REPLY, "usage": {"type": "duration", "seconds": WHISPER_SECONDS}}
        completion = len(REPLY.split(" "))
        return {"text": REPLY, "usage": {"type": "tokens", "input_tokens": AUDIO_PART_TOKENS, "output_tokens": completion,
                                         "total_tokens": AUDIO_PART_TOKENS + completion,
                                         "input_token_details": {"text_tokens": 0, "audio_tokens": AUDIO_PART_TOKENS}}}

    @app.post("/v1/files")
    @app.post("/v1/uploads/{upload_id}/parts")
    async def upload(request: Request):
        """A multipart upload (a file, an upload's part): recorded by its size and SHA-256, the bytes as they came (or,
        cut short, as {"bytes", "cut": True}); `upload_progress` counts its bytes as they arrive. `x-fake-reject: <status>`
        answers that status at once, the body unread (as a provider refusing an upload too large). Anthropic's SDK
        (an anthropic-version header) gets anthropic_upload."""
        if request.headers.get("anthropic-version") and request.url.path == "/v1/files":
            return await anthropic_upload(request)
        if request.headers.get("x-fake-reject"):
            record(request, {"rejected": True})
            status = int(request.headers["x-fake-reject"])
            return JSONResponse({"error": {"message": "upload refused", "type": "invalid_request_error"}}, status_code=status)
        size, digest = 0, hashlib.sha256()
        app.state.upload_progress = 0
        try:
            async for piece in request.stream():
                size += len(piece)
                digest.update(piece)
                app.state.upload_progress = size
        except ClientDisconnect:
            record(request, {"bytes": size, "cut": True})
            raise
        record(request, {"bytes": size, "sha256": digest.hexdigest()})
        if request.url.path.endswith("/parts"):
            return {"id": "part_" + uuid.uuid4().hex[:12], "object": "upload.part", "created_at": int(time.time()),
                    "upload_id": request.path_params["upload_id"]}
        return {"id": "file-" + uuid.uuid4().hex[:12], "object": "file", "bytes": size, "created_at": int(time.time()),
                "filename": "upload.jsonl", "purpose": "batch", "status": "processed"}

    @app.get("/v1/files/{file_id}/content")
    async def file_content(file_id: str, request: Request):
        """The file's bytes, `x-fake-bytes` of them (default 4096), binary (not UTF-8), streamed in 64 KiB pieces; for
        Anthropic's SDK (an anthropic-version header) the file it uploaded (anthropic_download)."""
        if request.headers.get("anthropic-version"):
            return await anthropic_download(file_id, request)
        size = int(request.headers.get("x-fake-bytes", "4096"))

        async def pieces():
            for at in range(0, size, 65536):
                yield binary_bytes(min(65536, size - at), at)

        return StreamingResponse(pieces(), media_type="application/octet-stream", headers={"content-length": str(size)})

    @app.post("/v1/audio/speech")
    async def speech(request: Request):
        """Text to speech: audio/mpeg bytes (binary, not UTF-8), SPEECH_BYTES_PER_CHAR per character of the input,
        streamed in pieces as they are made."""
        body = await request.json()
        record(request, body)
        size = SPEECH_BYTES_PER_CHAR * len(body.get("input", ""))
        if body.get("stream_format") == "sse":  # gpt-4o-mini-tts: base64 audio deltas, then the usage in tokens
            words = len(str(body.get("input", "")).split())
            usage = {"input_tokens": words, "output_tokens": SPEECH_TOKENS_PER_WORD * words,
                     "total_tokens": (1 + SPEECH_TOKENS_PER_WORD) * words}

            def events():
                for at in range(0, size, 4096):
                    audio = base64.b64encode(binary_bytes(min(4096, size - at), at)).decode()
                    yield f"data: {json.dumps({'type': 'speech.audio.delta', 'audio': audio})}\n\n".encode()
                yield f"data: {json.dumps({'type': 'speech.audio.done', 'usage': usage})}\n\n".encode()

            return StreamingResponse(events(), media_type="text/event-stream")

        async def pieces():
            for at in range(0, size, 4096):
                yield binary_bytes(min(4096, size - at), at)
                await asyncio.sleep(0)

        return StreamingResponse(pieces(), media_type="audio/mpeg")

    @app.post("/v1/responses")
    async def responses(request: Request):
        """The Responses API: JSON, or with "stream": true its events, response.completed last with the usage
        (input tokens = words of `input`, output tokens = the reply's words)."""
        body = await request.json()
        record(request, body)
        words = REPLY.split(" ")
        prompt = len(str(body.get("input", "")).split())
        usage = {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": len(words),
                 "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": prompt + len(words)}
        usage["input_tokens_details"].update(json.loads(request.headers.get("x-fake-cache", "{}")))
        rid = "resp_" + uuid.uuid4().hex[:12]
        model = body.get("model", "gpt-4o-mini")
        message = {"id": "msg_" + uuid.uuid4().hex[:8], "type": "message", "status": "completed", "role": "assistant",
                   "content": [{"type": "output_text", "text": REPLY, "annotations": []}]}
        done = {"id": rid, "object": "response", "created_at": int(time.time()), "status": "completed", "model": model,
                "output": [message], "usage": usage}
        if not body.get("stream"):
            return done
        started = {**done, "status": "in_progress", "output": [], "usage": None}

        async def events():
            seq = 0

            def ev(kind: str, data: dict) -> bytes:
                nonlocal seq
                seq += 1
                return f"event: {kind}\ndata: {json.dumps({'type': kind, 'sequence_number': seq, **data})}\n\n".encode()

            yield ev("response.created", {"response": started})
            for i, word in enumerate(words):
                yield ev("response.output_text.delta", {"item_id": message["id"], "output_index": 0, "content_index": 0,
                                                        "delta": word if i == 0 else " " + word})
            yield ev("response.completed", {"response": done})

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.post("/v1/images/generations")
    @app.post("/v1/images/edits")
    async def images(request: Request):
        """Base64 PNGs, `n` of them; gpt-image's answer has its token usage (the prompt's words and IMAGE_INPUT_TOKENS
        per uploaded image in, IMAGE_TOKENS per image out), dall-e models' none. An edit is multipart/form-data, its
        model, prompt and n form fields."""
        raw = await request.body()
        images_in = 0
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            fields = dict(re.findall(rb'name="(model|prompt|n)"\r\n\r\n([^\r]*)\r\n', raw))
            body = {"model": fields.get(b"model", b"").decode(), "prompt": fields.get(b"prompt", b"").decode(),
                    "n": int(fields.get(b"n", b"1")), "bytes": len(raw)}
            images_in = len(re.findall(rb'name="image(?:\[\])?"; filename=', raw))
        else:
            body = json.loads(raw)
        record(request, body)
        n = body.get("n") or 1
        answer = {"created": int(time.time()), "data": [{"b64_json": base64.b64encode(binary_bytes(1024)).decode()}] * n}
        if body.get("model", "").startswith("gpt-image"):
            prompt = len(str(body.get("prompt", "")).split())
            image_in = IMAGE_INPUT_TOKENS * images_in
            answer["usage"] = {"input_tokens": prompt + image_in, "output_tokens": IMAGE_TOKENS * n,
                               "total_tokens": prompt + image_in + IMAGE_TOKENS * n,
                               "input_tokens_details": {"text_tokens": prompt, "image_tokens": image_in}}
        return answer

    @app.get("/v1/responses/{response_id}")
    async def stored_response(response_id: str, request: Request):
        """A stored response, retrieved (as a background response is polled): the usage of the call that made it."""
        record(request, {})
        return {"id": response_id, "object": "response", "created_at": int(time.time()), "status": "completed",
                "model": "gpt-4o-mini", "output": [], "usage": {"input_tokens": 1000, "output_tokens": 500, "total_tokens": 1500}}

    @app.post("/v1/batches")
    @app.get("/v1/batches/{batch_id}")
    @app.post("/v1/batches/{batch_id}/cancel")
    async def batch(request: Request, batch_id: str = ""):
        """A batch: created in progress, retrieved (or cancelled) completed, with its model and the whole batch's usage
        (BATCH_USAGE, billed at the batch API's prices)."""
        record(request, await request.json() if request.method == "POST" and not batch_id else {})
        done = bool(batch_id)
        return {"id": batch_id or "batch_" + uuid.uuid4().hex[:12], "object": "batch", "endpoint": "/v1/chat/completions",
                "input_file_id": "file-abc", "completion_window": "24h", "status": "completed" if done else "validating",
                "created_at": int(time.time()), "model": "gpt-4o-mini" if done else None,
                "request_counts": {"total": 10, "completed": 10 if done else 0, "failed": 0},
                "usage": BATCH_USAGE if done else None}

    @app.api_route("/{path:path}", methods=["GET", "POST"])
    async def other(path: str, request: Request):
        raw = request.scope.get("raw_path", b"").decode("latin-1")
        return Response(json.dumps({"path": raw, "query": request.url.query}), media_type="application/json")

    return app


def main() -> None:
    import uvicorn

    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9999)
    p.add_argument("--chunk-delay", type=float, default=0.0)
    a = p.parse_args()
    uvicorn.run(create_app(a.chunk_delay), host=a.host, port=a.port, log_level="warning")


if __name__ == "__main__":
    main()

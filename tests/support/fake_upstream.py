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
Anthropic on Vertex AI (`publishers/anthropic/models/<m>:rawPredict`, `:streamRawPredict`) as `/v1/messages`;
`/v1/embeddings` answers vectors of `x-fake-dims` numbers; `/v1/audio/transcriptions` a transcription of a
multipart upload (its usage as whisper-1 or gpt-4o-transcribe report it).

Run: python -m tests.support.fake_upstream --port 9999
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import re
import struct
import time
import uuid
import zlib

from fastapi import FastAPI, Request
from fastapi.middleware.gzip import GZipMiddleware
from fastapi.responses import JSONResponse, Response, StreamingResponse

REPLY = "Hello from the fake upstream model"


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
    app.add_middleware(GZipMiddleware, minimum_size=200)
    app.state.received = []
    # statuses the next chat requests get instead of an answer, in order: 503 or (429, {"retry-after": "1"})
    app.state.fail_next = []

    @app.get("/_received")
    async def received() -> list:
        return app.state.received

    @app.delete("/_received")
    async def clear() -> dict:
        app.state.received.clear()
        return {}

    def record(request: Request, body: dict) -> None:
        app.state.received.append({"path": request.url.path, "query": request.url.query, "headers": dict(request.headers),
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
        usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
        audio_in = AUDIO_PART_TOKENS * _audio_parts(body.get("messages"))
        audio_out = AUDIO_TOKENS_PER_WORD * completion if "audio" in (body.get("modalities") or []) else 0
        if audio_in or audio_out:
            prompt, completion = prompt + audio_in, completion + audio_out
            usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
                     "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": audio_in},
                     "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": audio_out}}
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

    def _messages(request: Request, body: dict, model: str):
        words = _reply(request) if body.get("stream") else REPLY.split(" ")
        prompt, completion = _words(body.get("messages")), len(words)
        mid = "msg_" + uuid.uuid4().hex[:12]
        stream_error = request.headers.get("x-fake-stream-error") == "1"
        if not body.get("stream"):
            return {
                "id": mid, "type": "message", "role": "assistant", "model": model,
                "content": [{"type": "text", "text": REPLY}], "stop_reason": "end_turn", "stop_sequence": None,
                "usage": {"input_tokens": prompt, "output_tokens": completion},
            }

        async def events():
            def ev(kind: str, data: dict) -> bytes:
                return f"event: {kind}\ndata: {json.dumps(data)}\n\n".encode()

            yield ev("message_start", {"type": "message_start", "message": {
                "id": mid, "type": "message", "role": "assistant", "model": model, "content": [],
                "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": prompt, "output_tokens": 1}}})
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
                                       "usage": {"output_tokens": completion}})
            yield ev("message_stop", {"type": "message_stop"})

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.post("/{version}/models/{model_call}")
    async def gemini(version: str, model_call: str, request: Request):
        body = await request.json()
        record(request, body)
        model, _, call = model_call.partition(":")
        if call not in ("generateContent", "streamGenerateContent"):
            return JSONResponse({"error": {"code": 404, "message": f"unknown method {call}", "status": "NOT_FOUND"}}, 404)
        prompt = sum(len(str(p.get("text", "")).split()) for c in body.get("contents", []) for p in c.get("parts", []))
        words = REPLY.split(" ")

        def chunk(text: str, done: bool, completion: int) -> dict:
            out = {"candidates": [{"content": {"parts": [{"text": text}], "role": "model"}, "index": 0}],
                   "usageMetadata": {"promptTokenCount": prompt, "totalTokenCount": prompt + completion},
                   "modelVersion": model, "responseId": "fake-" + uuid.uuid4().hex[:8]}
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

    @app.post("/v1/audio/transcriptions")
    @app.post("/{prefix:path}/audio/transcriptions")
    async def transcriptions(request: Request):
        # multipart/form-data: the model is a form field, the answer names none; whisper-1 reports the audio's
        # duration, the gpt-4o transcribe models tokens (AUDIO_PART_TOKENS for the file, the reply's words out)
        raw = await request.body()
        m = re.search(rb'name="model"\r\n\r\n([^\r]*)\r\n', raw)
        model = m.group(1).decode() if m else ""
        record(request, {"model": model, "bytes": len(raw)})
        if model.startswith("whisper"):
            return {"text": REPLY, "usage": {"type": "duration", "seconds": 3}}
        completion = len(REPLY.split(" "))
        return {"text": REPLY, "usage": {"type": "tokens", "input_tokens": AUDIO_PART_TOKENS, "output_tokens": completion,
                                         "total_tokens": AUDIO_PART_TOKENS + completion,
                                         "input_token_details": {"text_tokens": 0, "audio_tokens": AUDIO_PART_TOKENS}}}

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

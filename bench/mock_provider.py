"""A neutral OpenAI-compatible provider for `bench/rivals.py`: every gateway under test and the
direct baseline call this same server.

POST .../chat/completions answers after a fixed delay with a small JSON completion, or (with
"stream": true) an SSE stream of a few chunks a short pause apart, then a usage chunk and [DONE].
It keeps no per-request state, so its cost stays flat over a long run (unlike the test fake
upstream, which records every request).

    python bench/mock_provider.py --port 9911 [--latency-ms 1] [--chunk-ms 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

from aiohttp import web

REPLY_WORDS = ["Hello", " from", " the", " mock", " provider"]
USAGE = {"prompt_tokens": 6, "completion_tokens": len(REPLY_WORDS), "total_tokens": 6 + len(REPLY_WORDS)}


def completion(model: str) -> dict:
    return {
        "id": "chatcmpl-bench", "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(REPLY_WORDS)},
                     "finish_reason": "stop"}],
        "usage": USAGE,
    }


def chunk(model: str, delta: dict, finish: str | None = None, usage: dict | None = None) -> bytes:
    body = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}] if usage is None else [], "usage": usage}
    return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"


def create_app(latency: float, chunk_pause: float) -> web.Application:
    async def chat(request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
        except ValueError:
            return web.json_response({"error": {"message": "the body must be JSON", "type": "invalid_request_error"}},
                                     status=400)
        model = str(body.get("model", "gpt-4o-mini"))
        await asyncio.sleep(latency)
        if not body.get("stream"):
            return web.json_response(completion(model))
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        await resp.write(chunk(model, {"role": "assistant", "content": ""}))
        for word in REPLY_WORDS:
            await asyncio.sleep(chunk_pause)
            await resp.write(chunk(model, {"content": word}))
        await resp.write(chunk(model, {}, "stop"))
        await resp.write(chunk(model, {}, usage=USAGE))
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def models(_: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "gpt-4o-mini", "object": "model"}]})

    app = web.Application()
    app.router.add_post("/{prefix:.*}chat/completions", chat)
    app.router.add_get("/{prefix:.*}models", models)
    return app


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--latency-ms", type=float, default=1.0, help="delay before every answer")
    p.add_argument("--chunk-ms", type=float, default=2.0, help="pause between stream chunks")
    args = p.parse_args()
    web.run_app(create_app(args.latency_ms / 1000, args.chunk_ms / 1000), host="127.0.0.1", port=args.port,
                print=None, access_log=None)


if __name__ == "__main__":
    main()

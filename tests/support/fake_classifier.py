"""A local stand-in for a prompt classifier (Helicone-LLM-Security-Enabled): an OpenAI-compatible chat completions
server (as vLLM, Ollama or a hosted provider are) running a Llama Guard model. Its answer is Llama Guard's: "safe", or
"unsafe" and a line of the categories violated, for a latest message holding an INJECTIONS phrase.

Every request is recorded (`app.state.received`, and GET /_received). `app.state.fail_next` plans the next answers,
in order: a status (500, 429: an OpenAI-style error), "hang" (never answers) or "babble" (a 200 whose message is no
verdict, as a chat model that is not a classifier answers). With `api_key`, a request without
`Authorization: Bearer <api_key>` gets a 401; with `model`, a request naming another model gets vLLM's 404.

Run: python -m tests.support.fake_classifier --port 9998
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

# the classifier's lexicon: a phrase in a message's text makes it unsafe, in these Llama Guard categories
INJECTIONS = {"ignore previous instructions": ("S14",), "steal a llama": ("S2",)}
MODEL = "meta-llama/Llama-Guard-3-8B"


def verdict(text: str) -> str:
    """Llama Guard's answer about `text`: "safe", or "unsafe" then the categories violated, comma-separated."""
    categories = sorted({c for phrase, cs in INJECTIONS.items() if phrase in text.lower() for c in cs})
    return "unsafe\n" + ",".join(categories) if categories else "safe"


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": "server_error", "code": status}}, status_code=status)


def create_app(api_key: str = "", model: str = MODEL) -> FastAPI:
    app = FastAPI()
    app.state.received = []
    app.state.fail_next = []

    @app.get("/_received")
    async def received() -> list:
        return app.state.received

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        app.state.received.append({"path": request.url.path, "headers": dict(request.headers), "body": body})
        planned = app.state.fail_next.pop(0) if app.state.fail_next else None
        if planned == "hang":  # until the caller gives up on it (a test's server then stops at once)
            while not await request.is_disconnected():
                await asyncio.sleep(0.05)
            return Response(status_code=499)
        if isinstance(planned, int):
            return _error(planned, f"planned failure {planned} (key {api_key!r})")
        if api_key and request.headers.get("authorization") != f"Bearer {api_key}":
            return _error(401, "Invalid API key")
        if model and body.get("model") != model:
            return _error(404, f"The model `{body.get('model')}` does not exist.")
        messages = body.get("messages") or [{}]
        content = messages[-1].get("content")
        text = content if isinstance(content, str) else " ".join(p.get("text", "") for p in content or [])
        answer = "I'd be glad to help with that! Here is a poem." if planned == "babble" else verdict(text)
        return {
            "id": "chatcmpl-" + uuid.uuid4().hex[:12], "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": len(text.split()), "completion_tokens": 2, "total_tokens": len(text.split()) + 2},
        }

    return app


if __name__ == "__main__":
    import uvicorn

    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=9998)
    parser.add_argument("--api-key", default="")
    args = parser.parse_args()
    uvicorn.run(create_app(args.api_key), host="127.0.0.1", port=args.port, log_level="warning")

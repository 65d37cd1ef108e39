"""Stored prompts in the gateway: a request naming a prompt (Helicone-Prompt-Id headers, or the
body form `prompt_id` / `version_id` / `environment` / `inputs`) is rendered from the prompts
service's version before it is forwarded.

Versions come over gRPC (a small pool of channels, a deadline per call, retries on UNAVAILABLE)
into a local cache with a TTL, expired early by the prompts service's change stream (WatchPrompts,
one per org with cached prompts, opened with a key of that org); rendering happens here (helicone_core.prompt_templates), so while
the prompts service is unreachable a cached version keeps serving, and an uncached one gets a 503
before anything is sent upstream. Requests that name no prompt never reach this module.

gRPC itself (prompt_rpc.py, ~8 MB of resident memory) is imported only by a gateway that has a
prompts service configured (HELICONE_PROMPTS_TARGET), when it starts."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import json
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from helicone_core import prompt_templates as templates
from helicone_core.jsontext import json_object
from helicone_core.metrics import ServiceMetrics

from .settings import GatewaySettings

log = logging.getLogger("helicone.gateway.prompts")

# The body form's fields (Helicone's newer prompt integration); removed before the body is forwarded.
BODY_FIELDS = ("prompt_id", "version_id", "environment", "inputs")
# Cheap test for the body form: only bodies containing it are parsed for a top-level "prompt_id".
BODY_MARK = b'"prompt_id"'
# Versions are int32 in the prompts proto.
MAX_VERSION = 2**31 - 1
# While the prompts service fails, a stale cached version serves and is asked for again at most this often.
STALE_RETRY_SECONDS = 5.0


@dataclass(frozen=True)
class PromptRequest:
    """Which prompt a request asks for and with which inputs."""

    prompt_id: str
    version: int = 0  # 0: the environment's, or the latest
    environment: str = ""
    inputs: dict | None = None


@dataclass(frozen=True)
class PromptUse:
    """What the log records about the prompt a request was rendered from."""

    prompt_id: str
    version: int
    environment: str
    inputs_json: str


class PromptError(Exception):
    """A prompt request the gateway answers itself (status, message, error type, extra headers)."""

    def __init__(self, status: int, message: str, kind: str = "helicone_prompt_error",
                 headers: tuple[tuple[bytes, bytes], ...] = (), omitted: str = "") -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.headers = status, message, kind, headers
        # what the log records instead under Helicone-Omit-Request when the message quotes the request's content
        self.omitted = omitted or message


def check_prompt_id(value: str, where: str) -> str:
    if not templates.PROMPT_ID.match(value):
        raise PromptError(400, f"{where} must be {templates.PROMPT_ID_FORM}")
    return value


def check_environment(value: str, where: str) -> str:
    if not templates.ENVIRONMENT.match(value):
        raise PromptError(400, f"{where} must be {templates.ENVIRONMENT_FORM}")
    return value


def check_version(value: Any, where: str) -> int:
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= MAX_VERSION:
        raise PromptError(400, f"{where} must be a positive version number (1, 2, ...)")
    return value


def body_request(doc: dict) -> PromptRequest:
    """The body form: `prompt_id`, optional `version_id` or `environment`, `inputs` (a JSON object)."""
    prompt_id = doc.get("prompt_id")
    if not isinstance(prompt_id, str):
        raise PromptError(400, "body field prompt_id must be a string")
    version = doc.get("version_id")
    environment = doc.get("environment")
    if version is not None and environment is not None:
        raise PromptError(400, "give body field version_id or environment, not both")
    inputs = doc.get("inputs", {})
    if not isinstance(inputs, dict):
        raise PromptError(400, "body field inputs must be a JSON object of variable values")
    if environment is not None and not isinstance(environment, str):
        raise PromptError(400, "body field environment must be a string")
    return PromptRequest(
        prompt_id=check_prompt_id(prompt_id, "body field prompt_id"),
        version=check_version(version, "body field version_id") if version is not None else 0,
        environment=check_environment(environment, "body field environment") if environment else "",
        inputs=inputs,
    )


def shape(provider: str, doc: dict) -> dict:
    """The rendered template in the provider's request shape: Anthropic takes system prompts as a
    top-level `system`, OpenAI as a first message with role `system`."""
    messages = doc.get("messages")
    if provider == "anthropic" and isinstance(messages, list):
        system = [m.get("content") for m in messages if isinstance(m, dict) and m.get("role") in ("system", "developer")]
        if system:
            parts = [doc["system"]] if isinstance(doc.get("system"), (str, list)) else []
            parts += system
            if all(isinstance(p, str) for p in parts):
                doc["system"] = "\n\n".join(parts)
            else:  # content parts: Anthropic's system takes a list of text blocks
                blocks: list = []
                for p in parts:
                    if isinstance(p, str):
                        blocks.append({"type": "text", "text": p})
                    elif isinstance(p, list):
                        blocks += [b for b in p if isinstance(b, dict)]
                    else:
                        blocks.append({"type": "text", "text": json.dumps(p)})
                doc["system"] = blocks
            doc["messages"] = [m for m in messages if not (isinstance(m, dict) and m.get("role") in ("system", "developer"))]
    elif provider != "anthropic" and isinstance(doc.get("system"), str):
        doc["messages"] = [{"role": "system", "content": doc.pop("system")}, *(messages if isinstance(messages, list) else [])]
    return doc


def merge(rendered: dict, caller: dict) -> dict:
    """The caller's body over the rendered prompt: its messages follow the prompt's, its other
    fields (model, max_tokens, stream, ...) replace the prompt's."""
    for key, value in caller.items():
        if key == "messages" and isinstance(value, list) and isinstance(rendered.get("messages"), list):
            rendered["messages"] = rendered["messages"] + value
        else:
            rendered[key] = value
    return rendered


class _Entry:
    __slots__ = ("fetched", "version")

    def __init__(self, version: Any, fetched: float) -> None:  # a prompts_pb2.PromptVersion
        self.version, self.fetched = version, fetched


class PromptResolver:
    def __init__(self, settings: GatewaySettings, metrics: ServiceMetrics) -> None:
        self.settings = settings
        self.ttl = settings.prompt_cache_ttl
        self._cache: OrderedDict[tuple, _Entry] = OrderedDict()
        self._inflight: dict[tuple, asyncio.Future] = {}
        self._raced: set[tuple] = set()  # in-flight fetches that a change was announced for meanwhile
        self._rpc: Any = None  # the prompt_rpc module, once a prompts service is configured
        self._channels: list = []  # grpc.aio.Channel
        self._stubs: itertools.cycle | None = None
        self._watches: dict[str, asyncio.Task] = {}  # org -> its change stream
        self._org_entries: collections.Counter[str] = collections.Counter()  # org -> its entries in _cache
        self.m_lookups = metrics.counter("helicone_gateway_prompt_lookups_total", "Prompt versions looked up", ("result",))
        self.m_invalidated = metrics.counter("helicone_gateway_prompt_cache_invalidations_total",
                                             "Cached prompt versions expired by a change from the prompts service")
        self.m_rpc = metrics.histogram("helicone_gateway_prompt_rpc_seconds", "Time of GetPrompt calls to the prompts service")

    async def start(self) -> None:
        if not self.settings.prompts_target:
            return
        from . import prompt_rpc as rpc  # only here: a gateway without a prompts service never loads gRPC

        self._rpc = rpc
        self._channels = rpc.open_channels(self.settings.prompts_target, self.settings.prompts_channels)
        self._stubs = itertools.cycle([rpc.stub(c) for c in self._channels])

    async def stop(self) -> None:
        for task in self._watches.values():
            task.cancel()
        for task in self._watches.values():
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._watches.clear()
        for channel in self._channels:
            await channel.close()

    # ---- versions ----------------------------------------------------------------------
    async def version(self, key: str, org: str, req: PromptRequest):  # -> prompts_pb2.PromptVersion
        """The version to render: from the cache while fresh, else from the prompts service (a
        stale cached copy answers while the service cannot); raises PromptError."""
        cache_key = (org, req.prompt_id, req.version, req.environment)
        entry = self._cache.get(cache_key)
        now = time.monotonic()
        if entry is not None and now - entry.fetched < self.ttl:
            self._cache.move_to_end(cache_key)
            self.m_lookups.labels("hit").inc()
            return entry.version
        pending = self._inflight.get(cache_key)
        if pending is None:  # one call per prompt at a time; concurrent requests share it
            pending = asyncio.ensure_future(self._fetch(key, org, req, cache_key, entry))
            self._inflight[cache_key] = pending
            pending.add_done_callback(lambda _f: (self._inflight.pop(cache_key, None), self._raced.discard(cache_key)))
        return await asyncio.shield(pending)

    async def _fetch(self, key: str, org: str, req: PromptRequest, cache_key: tuple, entry: _Entry | None):
        if self._stubs is None:
            raise PromptError(503, "this gateway has no prompts service configured (HELICONE_PROMPTS_TARGET)",
                              "helicone_prompt_unavailable")
        rpc = self._rpc
        started, asked = time.perf_counter(), time.monotonic()
        try:
            found = await next(self._stubs).GetPrompt(
                rpc.prompts_pb2.GetPromptRequest(prompt_id=req.prompt_id, version=req.version, environment=req.environment),
                metadata=(("authorization", f"Bearer {key}"),), timeout=self.settings.prompts_timeout)
        except rpc.grpc.aio.AioRpcError as exc:
            code = exc.code()
            if code in rpc.TRANSIENT:
                if entry is not None:
                    # asked again after STALE_RETRY_SECONDS (or a change), not by every request meanwhile
                    entry.fetched = max(entry.fetched, time.monotonic() - self.ttl + min(self.ttl, STALE_RETRY_SECONDS))
                    self.m_lookups.labels("stale").inc()
                    log.warning("prompts service %s: serving cached prompt %r", code.name, req.prompt_id)
                    return entry.version
                self.m_lookups.labels("unavailable").inc()
                raise PromptError(503, f"prompts service unavailable ({code.name}) and prompt {req.prompt_id!r} is not "
                                  "cached on this gateway; try again shortly", "helicone_prompt_unavailable",
                                  ((b"retry-after", b"5"),)) from None
            if self._cache.pop(cache_key, None) is not None:  # the prompt changed under us: forget it
                self._forget_one(org)
            status = rpc.HTTP_STATUS.get(code, 400)
            self.m_lookups.labels(code.name.lower() if status != 400 else "invalid").inc()
            raise PromptError(status, f"Helicone prompt: {exc.details()}") from None
        finally:
            self.m_rpc.observe(time.perf_counter() - started)
        self.m_lookups.labels("fetched").inc()
        watch = self._watches.get(org)
        if watch is None or watch.done():
            self._watches[org] = asyncio.get_running_loop().create_task(self._watch(org, key), name=f"prompt-watch-{org}")
        # a change announced while the answer was on its way may postdate what it read: re-check on next use
        if cache_key not in self._cache:
            self._org_entries[org] += 1
        self._cache[cache_key] = _Entry(found, -self.ttl if cache_key in self._raced else asked)
        self._cache.move_to_end(cache_key)
        while len(self._cache) > self.settings.prompt_cache_max_entries:
            (gone, *_), _ = self._cache.popitem(last=False)
            self._forget_one(gone)
        return found

    def _forget_one(self, org: str) -> None:
        """One of the org's entries left the cache."""
        self._org_entries[org] -= 1
        if not self._org_entries[org]:  # nothing of the org's is cached: its change stream has nothing to expire
            del self._org_entries[org]
            watch = self._watches.pop(org, None)
            if watch is not None:
                watch.cancel()

    # ---- invalidation --------------------------------------------------------------------
    def _expire(self, org: str, prompt_id: str, before: float) -> None:
        """Cached versions of the prompt (all of the org's when prompt_id is empty) fetched before
        `before` are re-checked on their next use; until then, and while the service is away, they still serve."""
        for cache_key, entry in self._cache.items():
            if cache_key[0] == org and (not prompt_id or cache_key[1] == prompt_id) and entry.fetched < before:
                entry.fetched = -self.ttl
                self.m_invalidated.inc()
        for cache_key in self._inflight:
            if cache_key[0] == org and (not prompt_id or cache_key[1] == prompt_id):
                self._raced.add(cache_key)

    async def _watch(self, org: str, key: str) -> None:
        """The org's change stream, reopened after a loss; ends when the key is no longer accepted
        (the next fetch for the org opens it again with the caller's key)."""
        rpc = self._rpc
        backoff = 0.2
        while True:
            opened = time.monotonic()
            try:
                call = next(self._stubs).WatchPrompts(rpc.prompts_pb2.WatchPromptsRequest(),
                                                      metadata=(("authorization", f"Bearer {key}"),))
                async for change in call:
                    # a prompt id: that prompt changed; the empty marker (first on every stream): what
                    # was fetched before the stream opened may have changed unseen
                    self._expire(org, change.prompt_id, time.monotonic() if change.prompt_id else opened)
                    backoff = 0.2
            except rpc.grpc.aio.AioRpcError as exc:
                if exc.code() in rpc.WATCH_ENDS:
                    return
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)

    # ---- requests ----------------------------------------------------------------------
    async def apply(self, key: str, org: str, provider: str, body: bytes,
                    from_headers: PromptRequest | None) -> tuple[bytes, PromptUse | None]:
        """The body to forward and what to log; (body, None) when the body names no prompt after all."""
        doc = json_object(body) if body.strip() else {}
        if doc is None:
            if from_headers is None:
                return body, None  # not a JSON object: the marker was elsewhere; forwarded untouched
            raise PromptError(400, "a request with Helicone-Prompt-Id must have a JSON object body (or none)")
        if from_headers is not None:
            req = from_headers
        elif "prompt_id" in doc:
            req = body_request(doc)
        else:
            return body, None
        caller = {k: v for k, v in doc.items() if k not in BODY_FIELDS}
        found = await self.version(key, org, req)
        inputs = req.inputs or {}
        limit = self.settings.max_request_bytes
        try:
            rendered = json.loads(templates.render(found.template_json, inputs, limit))
        except templates.RenderTooLarge as exc:
            raise PromptError(413, f"prompt {req.prompt_id!r} version {found.version}: {exc} (HELICONE_MAX_REQUEST_BYTES)",
                              "request_too_large") from None
        except templates.TemplateError as exc:
            raise PromptError(400, f"prompt {req.prompt_id!r} version {found.version}: {exc}",
                              omitted=f"prompt {req.prompt_id!r} version {found.version}: its inputs were refused "
                                      "(why quotes them: left out under Helicone-Omit-Request)") from None
        out = merge(shape(provider, rendered), caller)
        use = PromptUse(req.prompt_id, found.version, req.environment, _json_bytes(inputs).decode())
        return _json_bytes(out), use


def _json_bytes(value: Any) -> bytes:
    """UTF-8 JSON with non-ASCII characters as they are, but a lone surrogate the caller sent as an
    escape ("\\ud800", which no UTF-8 text holds) kept as escapes (it was a 500)."""
    try:
        return json.dumps(value, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        return json.dumps(value).encode()

"""Delivers each written request to its org's per-request webhooks (helicone_core.request_webhooks),
with Helicone's payload and signature.

Ingest delivers because it is the one that knows a request is stored: BatchWriter.write offers its
events once their rows are in. Delivery never slows ingest: offer() only puts work on a bounded queue
(full: the delivery is dropped and counted), one task takes it off and sends with up to `concurrency`
deliveries at a time. An org's webhooks are read from Postgres once per `ttl` seconds (cached per org,
the last answer kept while Postgres is away); no Postgres, no answer yet: nothing is sent for that org.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import orjson
from helicone_core import events
from helicone_core.metrics import ServiceMetrics
from helicone_core.request_webhooks import RequestWebhook, org_webhooks
from helicone_core.webhooks import DELIVERY_RESULTS, WebhookSender, sign_body

log = logging.getLogger("helicone.ingest")

DROPPED = "dropped"  # the queue was full: never tried
RESULTS = (*DELIVERY_RESULTS, DROPPED)
# Helicone's payload limit: a body longer than this is replaced by TOO_LARGE
MAX_BODY_BYTES = 10 * 1024
# Events held per place of the delivery queue while orgs' webhooks are first read (a new org's whole batch, up to
# thousands of events, waits for one read); past it they are dropped and counted
WAITING_PER_QUEUE_PLACE = 10
TOO_LARGE = "Body too large for webhook, please fetch the full request and response from Helicone"


def payload(ev: events.RequestLogged, include_data: bool) -> bytes:
    """Helicone's webhook payload of a request; bodies only with include_data and when the event carries them inline."""
    u = ev.usage
    out = {
        "request_id": ev.request_id, "user_id": ev.user_id or None, "model": ev.model, "provider": ev.provider,
        "metadata": {
            "status": ev.status, "cost": ev.cost_usd if ev.cost_known else None,
            "promptTokens": u.prompt_tokens if u.known else None,
            "completionTokens": u.completion_tokens if u.known else None,
            "totalTokens": u.total_tokens if u.known else None,
            "latencyMs": ev.latency_ms, "properties": dict(ev.properties),
        },
    }
    if include_data:
        inline = ev.WhichOneof("bodies") == "inline"
        out["request_body"] = _body(ev.inline.request_body) if inline else None
        out["response_body"] = _body(ev.inline.response_body) if inline else None
    return orjson.dumps(out)


def _body(raw: bytes) -> str:
    return TOO_LARGE if len(raw) > MAX_BODY_BYTES else raw.decode("utf-8", errors="replace")


class RequestWebhooks:
    def __init__(self, metrics: ServiceMetrics, sender: WebhookSender, *, queue_size: int = 10_000, ttl: float = 10.0,
                 concurrency: int = 16) -> None:
        self.sender = sender
        self.ttl = ttl
        self.concurrency = concurrency
        self.pool = None
        self._queue: asyncio.Queue[tuple[RequestWebhook, events.RequestLogged]] = asyncio.Queue(queue_size)
        self._waiting: dict[str, list[events.RequestLogged]] = {}  # org -> its events while its webhooks are read
        self._waiting_count = 0
        self._configs: dict[str, tuple[float, list[RequestWebhook]]] = {}  # org -> (read at, monotonic; its webhooks)
        self._loading: dict[str, asyncio.Task] = {}
        self._sending: set[asyncio.Task] = set()
        self._task: asyncio.Task | None = None
        self.m_deliveries = metrics.counter(
            "helicone_ingest_webhook_deliveries_total",
            "Per-request webhook deliveries, by result (dropped: the delivery queue was full)", ("result",))
        for result in RESULTS:
            self.m_deliveries.labels(result)

    def attach(self, pool) -> None:
        self.pool = pool

    def offer(self, written: list[events.RequestLogged]) -> None:
        """Queues the deliveries of events whose rows are written; never waits. An org's events wait (no queue entry,
        no task) while its webhooks are first read: an org without webhooks, the usual case, costs a dict lookup per
        event, never a queued delivery or a drop."""
        now = time.monotonic()
        for ev in written:
            cached = self._configs.get(ev.org_id)
            if cached is None:
                self._wait(ev)
                continue
            if now - cached[0] > self.ttl:
                self._refresh(ev.org_id)  # this event goes by the last answer; the next ones by the new
            for hook in cached[1]:
                if hook.selects(ev.properties):
                    self._put(hook, ev)

    def _wait(self, ev: events.RequestLogged) -> None:
        """Holds an event until its org's webhooks are read (_load hands it on); without Postgres nothing is read, and
        nothing is sent for the org. At most WAITING_PER_QUEUE_PLACE events per queue place wait (past it: dropped and
        counted)."""
        if self._refresh(ev.org_id) is None:
            return
        if self._waiting_count >= self._queue.maxsize * WAITING_PER_QUEUE_PLACE:
            self.m_deliveries.labels(DROPPED).inc()
            return
        self._waiting.setdefault(ev.org_id, []).append(ev)
        self._waiting_count += 1

    def _put(self, hook: RequestWebhook, ev: events.RequestLogged) -> None:
        try:
            self._queue.put_nowait((hook, ev))
        except asyncio.QueueFull:
            self.m_deliveries.labels(DROPPED).inc()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="ingest-webhooks")

    async def stop(self) -> None:
        tasks = [t for t in (self._task, *self._sending, *self._loading.values()) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def idle(self) -> None:
        """Returns once everything offered so far has been tried (tests, a graceful stop)."""
        while self._loading:
            await asyncio.gather(*self._loading.values(), return_exceptions=True)
        await self._queue.join()

    async def _run(self) -> None:
        slots = asyncio.Semaphore(self.concurrency)
        while True:
            hook, ev = await self._queue.get()
            await slots.acquire()
            task = asyncio.create_task(self._deliver(hook, ev), name="ingest-webhook-delivery")
            self._sending.add(task)

            def done(t: asyncio.Task) -> None:
                self._sending.discard(t)
                slots.release()
                self._queue.task_done()

            task.add_done_callback(done)

    async def _deliver(self, hook: RequestWebhook, ev: events.RequestLogged) -> None:
        try:
            delivery = await self.sender.send(hook.destination, payload(ev, hook.include_data), hook.hmac_key,
                                              signer=sign_body)
            self.m_deliveries.labels(delivery.result).inc()
            if delivery.error:
                log.info("webhook %s of org %s: %s (%s)", hook.id, hook.org_id, delivery.result, delivery.error)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - one delivery's failure must not stop the others
            log.warning("webhook delivery of request %s failed (%s: %s)", ev.request_id, exc.__class__.__name__, exc)

    def _refresh(self, org: str) -> asyncio.Task | None:
        """The read of the org's webhooks under way, started if none is; None without Postgres."""
        if self.pool is None:
            return None
        loading = self._loading.get(org)
        if loading is None:
            loading = self._loading[org] = asyncio.create_task(self._load(org), name="ingest-webhooks-read")
            loading.add_done_callback(lambda _: self._loading.pop(org, None))
        return loading

    async def _load(self, org: str) -> list[RequestWebhook]:
        """Reads the org's webhooks, then hands on the org's events that waited for them."""
        try:
            hooks = await org_webhooks(self.pool, org)
        except Exception as exc:  # noqa: BLE001 - Postgres away: the last answer stands until it is back
            log.debug("webhooks of org %s not read (%s: %s)", org, exc.__class__.__name__, exc)
            cached = self._configs.get(org)
            hooks = cached[1] if cached else []
        else:
            self._configs[org] = (time.monotonic(), hooks)
        waiting = self._waiting.pop(org, [])
        self._waiting_count -= len(waiting)
        for ev in waiting:
            for hook in hooks:
                if hook.selects(ev.properties):
                    self._put(hook, ev)
        return hooks

"""Delivers each written request to its org's per-request webhooks (helicone_core.request_webhooks),
with Helicone's payload and signature.

Ingest delivers because it is the one that knows a request is stored: BatchWriter.write offers its
events once their rows are in. Delivery never slows ingest: offer() only puts work on a bounded queue
(full: the delivery is dropped and counted), one task takes it off and sends with up to `concurrency`
deliveries at a time. Every org's webhooks are read from Postgres in one query once per `ttl` seconds
(the last answer kept while Postgres is away), starting at the first offer: the events offered before
that first answer wait for it (at most a queue's worth), then go by it. While no org has a webhook,
offering costs nothing per event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

import orjson
from helicone_core import events
from helicone_core.metrics import ServiceMetrics
from helicone_core.request_webhooks import RequestWebhook, all_webhooks
from helicone_core.webhooks import DELIVERY_RESULTS, WebhookSender, sign_body

log = logging.getLogger("helicone.ingest")

DROPPED = "dropped"  # the queue was full: never tried
RESULTS = (*DELIVERY_RESULTS, DROPPED)
# Helicone's payload limit: a body longer than this is replaced by TOO_LARGE
MAX_BODY_BYTES = 10 * 1024
# Seconds between tries of a first read that failed (Postgres not there yet): the events offered meanwhile wait
FIRST_READ_RETRY = 1.0
TOO_LARGE = "Body too large for webhook, please fetch the full request and response from Helicone"


@dataclass(frozen=True, slots=True)
class Written:
    """What a delivery needs of a written event: its org, its properties (the filters), the payload without bodies and
    the bodies as a payload carries them (text of at most MAX_BODY_BYTES, or TOO_LARGE). A queued or waiting delivery
    holds this, never the event, whose logged bodies may be hundreds of KiB each."""

    org_id: str
    properties: dict[str, str]
    fields: dict
    request_body: str | None
    response_body: str | None


def written(ev: events.RequestLogged) -> Written:
    u = ev.usage
    properties = dict(ev.properties)
    fields = {
        "request_id": ev.request_id, "user_id": ev.user_id or None, "model": ev.model, "provider": ev.provider,
        "metadata": {
            "status": ev.status, "cost": ev.cost_usd if ev.cost_known else None,
            "promptTokens": u.prompt_tokens if u.known else None,
            "completionTokens": u.completion_tokens if u.known else None,
            "totalTokens": u.total_tokens if u.known else None,
            "latencyMs": ev.latency_ms, "properties": properties,
        },
    }
    inline = ev.WhichOneof("bodies") == "inline"
    return Written(ev.org_id, properties, fields, _body(ev.inline.request_body) if inline else None,
                   _body(ev.inline.response_body) if inline else None)


def payload(w: Written, include_data: bool) -> bytes:
    """Helicone's webhook payload of a request; bodies only with include_data and when the event carried them inline."""
    if not include_data:
        return orjson.dumps(w.fields)
    return orjson.dumps({**w.fields, "request_body": w.request_body, "response_body": w.response_body})


def _body(raw: bytes) -> str:
    return TOO_LARGE if len(raw) > MAX_BODY_BYTES else raw.decode("utf-8", errors="replace")


class RequestWebhooks:
    def __init__(self, metrics: ServiceMetrics, sender: WebhookSender, *, queue_size: int = 10_000, ttl: float = 10.0,
                 concurrency: int = 16) -> None:
        self.sender = sender
        self.ttl = ttl
        self.concurrency = concurrency
        self.pool = None
        self._queue: asyncio.Queue[tuple[RequestWebhook, Written]] = asyncio.Queue(queue_size)
        self._hooks: dict[str, list[RequestWebhook]] | None = None  # org -> its webhooks; None: not read yet
        self._waiting: list[Written] = []  # offered before the first read answered
        self._read = asyncio.Event()  # set after each read, answered or failed
        self._reader: asyncio.Task | None = None
        self._sending: set[asyncio.Task] = set()
        self._task: asyncio.Task | None = None
        self.m_deliveries = metrics.counter(
            "helicone_ingest_webhook_deliveries_total",
            "Per-request webhook deliveries, by result (dropped: the delivery queue was full)", ("result",))
        for result in RESULTS:
            self.m_deliveries.labels(result)

    def attach(self, pool) -> None:
        self.pool = pool
        if self._waiting:
            self._start_reading()

    def offer(self, evs: list[events.RequestLogged]) -> None:
        """Queues the deliveries of events whose rows are written; never waits."""
        hooks = self._hooks
        if hooks is None:  # not read yet: they wait for the first answer, at most a queue's worth
            self._start_reading()
            room = max(0, self._queue.maxsize - len(self._waiting))
            self._waiting += [written(ev) for ev in evs[:room]]
            if len(evs) > room:
                self.m_deliveries.labels(DROPPED).inc(len(evs) - room)
            return
        if hooks:
            self._deliver_to(hooks, ((ev.org_id, ev.properties, ev) for ev in evs))

    def _deliver_to(self, hooks: dict[str, list[RequestWebhook]], items) -> None:
        """Queues (hook, Written) for each item (org, properties, an event or its Written) its org's hooks select."""
        for org, properties, item in items:
            slim = None
            for hook in hooks.get(org, ()):
                if hook.selects(properties):
                    slim = slim or (item if isinstance(item, Written) else written(item))
                    try:
                        self._queue.put_nowait((hook, slim))
                    except asyncio.QueueFull:
                        self.m_deliveries.labels(DROPPED).inc()

    def _start_reading(self) -> None:
        if self._reader is None and self.pool is not None:
            self._reader = asyncio.create_task(self._read_loop(), name="ingest-webhooks-read")

    async def _read_loop(self) -> None:
        while True:
            try:
                self._hooks = await all_webhooks(self.pool)
            except Exception as exc:  # noqa: BLE001 - Postgres away: the last answer stands until it is back
                log.debug("webhooks not read (%s: %s)", exc.__class__.__name__, exc)
            if self._hooks is not None and self._waiting:
                waiting, self._waiting = self._waiting, []
                self._deliver_to(self._hooks, ((w.org_id, w.properties, w) for w in waiting))
            self._read.set()
            await asyncio.sleep(self.ttl if self._hooks is not None else min(self.ttl, FIRST_READ_RETRY))

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="ingest-webhooks")

    async def stop(self) -> None:
        tasks = [t for t in (self._task, self._reader, *self._sending) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def idle(self) -> None:
        """Returns once everything offered so far has been tried (tests, a graceful stop)."""
        if self._hooks is None and self._reader is not None:
            self._read.clear()
            await self._read.wait()
        await self._queue.join()

    async def _run(self) -> None:
        slots = asyncio.Semaphore(self.concurrency)
        while True:
            hook, item = await self._queue.get()
            await slots.acquire()
            task = asyncio.create_task(self._deliver(hook, item), name="ingest-webhook-delivery")
            self._sending.add(task)

            def done(t: asyncio.Task) -> None:
                self._sending.discard(t)
                slots.release()
                self._queue.task_done()

            task.add_done_callback(done)

    async def _deliver(self, hook: RequestWebhook, item: Written) -> None:
        try:
            delivery = await self.sender.send(hook.destination, payload(item, hook.include_data), hook.hmac_key,
                                              signer=sign_body)
            self.m_deliveries.labels(delivery.result).inc()
            if delivery.error:
                log.info("webhook %s of org %s: %s (%s)", hook.id, hook.org_id, delivery.result, delivery.error)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - one delivery's failure must not stop the others
            log.warning("webhook delivery of request %s failed (%s: %s)", item.fields["request_id"], exc.__class__.__name__,
                        exc)

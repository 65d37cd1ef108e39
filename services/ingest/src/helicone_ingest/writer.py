"""Writes a batch of log events: bodies to the object store and rows to ClickHouse, then hands
the Postgres metadata to PendingMetadata (written in the background, so a Postgres outage delays
nothing here). Idempotent: a replayed event collapses into the same ReplacingMergeTree row (same
identity, same version) pointing at the same bytes, and merges into the same metadata.

Bodies go into body packs: one object per org and batch (`orgs/<org>/packs/<digest>`, see
events.body_pack_key), the events' bodies one after the other; a row points at its bodies as byte
ranges of the pack (bodies.body_ref). One object per body cost two file or S3 writes per event,
which was most of ingest's time. The pack's name is a digest of its content, so retrying or
replaying the same batch writes the same object and the same rows; a replay that batches events
differently writes a new pack and its rows point there (the same bytes), leaving the earlier pack
unreferenced. Deleting an org's bodies is still deleting the `orgs/<org>/` prefix; age-based
retention (an S3 lifecycle rule) removes a pack once all its requests are past the age, since a
pack only holds requests written in one batch.

A log's identity is (org_id, request_id). A request id reused within an org replaces the earlier
log: the newest request (highest events.event_version) wins, and its row points at its own
bodies (the version is part of the body keys), so rows and bodies never mix two requests."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from dataclasses import dataclass

from helicone_core import events
from helicone_core.analytics import AnalyticsStore
from helicone_core.bodies import PACK_CONTENT_TYPE, BodyStore, body_ref
from helicone_core.cost import CostRegistry
from helicone_core.metrics import ServiceMetrics

from .metadata import PendingMetadata

log = logging.getLogger("helicone.ingest")

# The `model` label of a model the cost registry does not know (the caller chose the name).
OTHER_MODEL = "other"


@dataclass
class Rejected:
    raw: bytes
    reason: str


class BatchWriter:
    def __init__(self, analytics: AnalyticsStore, bodies: BodyStore, metadata: PendingMetadata, metrics: ServiceMetrics,
                 costs: CostRegistry | None = None) -> None:
        self.analytics = analytics
        self.bodies = bodies
        self.metadata = metadata
        self.costs = costs or CostRegistry.default()
        self.m_events = metrics.counter("helicone_ingest_events_total", "Events consumed", ("result",))
        self.m_batches = metrics.histogram(
            "helicone_ingest_batch_seconds", "Time to write one batch", buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
        )
        self.m_batch_size = metrics.histogram(
            "helicone_ingest_batch_size", "Events per batch", buckets=(1, 5, 10, 50, 100, 250, 500, 1000, 2000, 5000)
        )
        self.m_write_errors = metrics.counter("helicone_ingest_write_errors_total", "Failed batch writes (retried)", ("stage",))
        self.m_lag = metrics.histogram(
            "helicone_ingest_end_to_end_seconds", "Response completed -> row written",
            buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
        )
        # Usage of the events written (counted once a batch is written, so a retried batch counts
        # once; an event replayed in a later batch is written, and counted, again). Labels are
        # bounded: provider from events.PROVIDERS else "custom", model the cost registry's name else "other".
        self.m_tokens = metrics.counter(
            "helicone_ingest_tokens_total",
            "Tokens of the events written; kind: prompt (every prompt token), completion, cache_read and "
            "cache_write (both parts of prompt)",
            ("provider", "model", "kind"),
        )
        self.m_cost = metrics.counter(
            "helicone_ingest_cost_usd_total", "Cost in USD of the events written (events with a known cost)", ("provider", "model")
        )

    def decode(self, raws: list[bytes]) -> tuple[list[events.RequestLogged], list[Rejected]]:
        good: dict[tuple[str, str], events.RequestLogged] = {}
        bad: list[Rejected] = []
        for raw in raws:
            try:
                ev = events.decode(raw)
            except events.EventError as exc:
                bad.append(Rejected(raw, str(exc)))
                continue
            except Exception as exc:  # noqa: BLE001 - anything else about one event must not stop the batch
                bad.append(Rejected(raw, f"{exc.__class__.__name__}: {exc}"))
                continue
            identity = (ev.org_id, ev.request_id)
            kept = good.get(identity)
            # one row per identity, the newest request (as ReplacingMergeTree would keep; a tie: the later copy)
            if kept is None or events.event_version(ev) >= events.event_version(kept):
                good[identity] = ev
        self.m_events.labels("ok").inc(len(good))
        self.m_events.labels("duplicate_in_batch").inc(len(raws) - len(bad) - len(good))
        self.m_events.labels("rejected").inc(len(bad))
        return list(good.values()), bad

    async def write(self, batch: list[events.RequestLogged]) -> None:
        """Raises on failure; the caller retries the same batch."""
        if not batch:
            return
        started = time.perf_counter()
        try:
            rows = await self._store_bodies(batch)
        except Exception:
            self.m_write_errors.labels("bodies").inc()
            raise
        try:
            await self.analytics.insert("request_log", list(rows))
        except Exception:
            self.m_write_errors.labels("analytics").inc()
            raise
        self.metadata.add(batch)
        now = time.time()
        for ev in batch:
            if ev.HasField("response_created_at"):
                at = ev.response_created_at
                self.m_lag.observe(max(now - at.seconds - at.nanos / 1e9, 0))
            self._count_usage(ev)
        self.m_batches.observe(time.perf_counter() - started)
        self.m_batch_size.observe(len(batch))

    def usage_labels(self, ev: events.RequestLogged) -> tuple[str, str]:
        """(provider, model) labels of an event: never a string the caller chose."""
        provider = ev.provider if ev.provider in events.PROVIDERS else events.CUSTOM_PROVIDER
        return provider, self.costs.canonical_model(ev.provider, ev.model) or OTHER_MODEL

    def _count_usage(self, ev: events.RequestLogged) -> None:
        if not (ev.usage.known or ev.cost_known):
            return
        provider, model = self.usage_labels(ev)
        u = ev.usage
        for kind, tokens in (("prompt", u.prompt_tokens), ("completion", u.completion_tokens),
                             ("cache_read", u.cache_read_tokens), ("cache_write", u.cache_write_tokens)):
            if tokens > 0:
                self.m_tokens.labels(provider, model, kind).inc(tokens)
        if ev.cost_known and ev.cost_usd > 0:
            self.m_cost.labels(provider, model).inc(ev.cost_usd)

    async def _store_bodies(self, batch: list[events.RequestLogged]) -> list[dict]:
        """Writes one body pack per org of the batch; returns the batch's rows, in batch order."""
        rows: list[dict | None] = [None] * len(batch)
        by_org: dict[str, list[int]] = {}
        for i, ev in enumerate(batch):
            if ev.WhichOneof("bodies") == "location":  # bodies the producer stored itself
                loc = ev.location
                rows[i] = events.analytics_row(
                    ev, request_key=loc.request_key, response_key=loc.response_key,
                    request_bytes=loc.request_bytes, response_bytes=loc.response_bytes,
                    request_content_type="", response_content_type="", truncated=False,
                )
            else:
                by_org.setdefault(ev.org_id, []).append(i)
        puts = []
        for org_id, members in by_org.items():
            # a deterministic order, so the same events make the same pack whatever order they came in
            members.sort(key=lambda i: (batch[i].request_id, events.event_version(batch[i])))
            parts, spans, offset = [], [], 0
            for i in members:
                inline = batch[i].inline
                for body in (inline.request_body, inline.response_body):
                    parts.append(body)
                    spans.append((offset, len(body)))
                    offset += len(body)
            digest = hashlib.sha256()
            for n, i in enumerate(members):  # identities, versions and lengths too: the same bytes split otherwise
                digest.update(f"{batch[i].request_id}/{events.event_version(batch[i])}/{spans[2 * n][1]}/"
                              f"{spans[2 * n + 1][1]};".encode())
            pack = b"".join(parts)
            digest.update(pack)
            key = events.body_pack_key(org_id, digest.hexdigest()[:32])
            puts.append(self.bodies.put(key, pack, PACK_CONTENT_TYPE))
            for n, i in enumerate(members):
                ev, inline = batch[i], batch[i].inline
                (req_off, req_len), (resp_off, resp_len) = spans[2 * n], spans[2 * n + 1]
                rows[i] = events.analytics_row(
                    ev, request_key=body_ref(key, req_off, req_len), response_key=body_ref(key, resp_off, resp_len),
                    request_bytes=req_len, response_bytes=resp_len,
                    request_content_type=inline.request_content_type, response_content_type=inline.response_content_type,
                    truncated=inline.request_truncated or inline.response_truncated,
                )
        await asyncio.gather(*puts)
        return rows

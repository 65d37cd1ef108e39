"""Writes a batch of log events: bodies to the object store and rows to ClickHouse, then hands
the Postgres metadata to PendingMetadata (written in the background, so a Postgres outage delays
nothing here). Idempotent: a replayed event collapses into the same ReplacingMergeTree row (same
identity, same version) pointing at the same bytes, and merges into the same metadata.

Bodies go into body packs: one object per org and batch, or per org and step of PREPARE_STEP
events when ingest prepares a batch in steps (`orgs/<org>/packs/<digest>`, see
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
import operator
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from helicone_core import events
from helicone_core.analytics import AnalyticsStore, rows_refused
from helicone_core.bodies import PACK_CONTENT_TYPE, BodyStore, body_refs
from helicone_core.cost import CostRegistry
from helicone_core.metrics import ServiceMetrics

from .dlq import Origin
from .metadata import PendingMetadata

if TYPE_CHECKING:
    from .batches import Turn
    from .request_webhooks import RequestWebhooks

log = logging.getLogger("helicone.ingest")

# The `model` label of a model the cost registry does not know (the caller chose the name).
OTHER_MODEL = "other"
# events prepared (prepare_in_steps), or accounted for once written (write), between two turns of the
# event loop: about 15 ms of work
PREPARE_STEP = 1000
# the `kind` label of the token counter, in the order an event's tokens are counted
TOKEN_KINDS = ("prompt", "completion", "cache_read", "cache_write")
# the fields _count_usage and _pack_bodies read, one call each (a protobuf field read is most of their cost)
_USAGE_EVENT_FIELDS = operator.attrgetter("usage", "cost_known", "provider", "model", "cost_usd")
_TOKEN_FIELDS = operator.attrgetter("known", "prompt_tokens", "completion_tokens", "cache_read_tokens", "cache_write_tokens")
_INLINE_FIELDS = operator.attrgetter(
    "request_body", "response_body", "request_content_type", "response_content_type", "request_truncated", "response_truncated"
)


@dataclass
class Rejected:
    raw: bytes | None
    reason: str
    key: bytes | None = None  # the Kafka record's key
    error_class: str = ""  # the class of what refused it (the dead letter's dlq.ERROR_CLASS_HEADER)
    origin: Origin | None = None  # where its record came from (None: not known, e.g. a test's own bytes)


@dataclass
class PreparedBatch:
    """A decoded batch made ready to write (BatchWriter.prepare): its body packs and its rows."""

    events: list[events.RequestLogged]
    packs: list[tuple[str, bytes]]  # (key, content), one per org
    rows: list[list]  # request_log rows as values in events.ANALYTICS_COLUMNS order, in batch order

    def __len__(self) -> int:
        return len(self.events)


class BatchWriter:
    def __init__(self, analytics: AnalyticsStore, bodies: BodyStore, metadata: PendingMetadata, metrics: ServiceMetrics,
                 costs: CostRegistry | None = None, retention_days: int = 0, webhooks: RequestWebhooks | None = None) -> None:
        self.analytics = analytics
        self.retention_days = retention_days  # settings.retention_days; 0: keep every request
        self.bodies = bodies
        self.metadata = metadata
        self.webhooks = webhooks  # per-request webhooks, offered each written event
        self.costs = costs or CostRegistry.default()
        self.m_events = metrics.counter("helicone_ingest_events_total", "Events consumed", ("result",))
        self.m_batches = metrics.histogram(
            "helicone_ingest_batch_seconds", "Time to write one batch", buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
        )
        self.m_batch_size = metrics.histogram(
            "helicone_ingest_batch_size", "Events per batch", buckets=(1, 5, 10, 50, 100, 250, 500, 1000, 2000, 5000, 10000)
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

    def decode(self, raws: list[bytes | None], keys: list[bytes | None] | None = None, origins: Sequence[Origin] | None = None,
               ) -> tuple[list[events.RequestLogged], list[Rejected]]:
        good: dict[tuple[str, str], events.RequestLogged] = {}
        bad: list[Rejected] = []
        for n, (raw, ev) in enumerate(zip(raws, events.decode_many(raws), strict=True)):
            if isinstance(ev, Exception):
                bad.append(Rejected(raw, str(ev) if isinstance(ev, events.EventError) else f"{ev.__class__.__name__}: {ev}",
                                    keys[n] if keys is not None else None, ev.__class__.__name__,
                                    origins[n] if origins is not None else None))
                continue
            rid = events.request_uuid(ev.request_id)
            if rid != ev.request_id:  # "{...}", "urn:uuid:...", upper case: the UUID column reads one form only
                ev.request_id = rid
            identity = (ev.org_id, rid)
            kept = good.get(identity)
            # one row per identity, the newest request (as ReplacingMergeTree would keep; a tie: the later copy)
            if kept is None or events.event_version(ev) >= events.event_version(kept):
                good[identity] = ev
        unique = len(good)
        retained = self._within_retention(good.values())
        self.m_events.labels("ok").inc(len(retained))
        self.m_events.labels("duplicate_in_batch").inc(len(raws) - len(bad) - unique)
        self.m_events.labels("expired").inc(unique - len(retained))
        self.m_events.labels("rejected").inc(len(bad))
        return retained, bad

    def _within_retention(self, evs) -> list[events.RequestLogged]:
        """The events whose request is within retention_days. One older (an async-log backfill, a backlog in
        Kafka) is not written: ClickHouse's TTL would drop its row at the next merge, while its bodies, which
        expire by when they were stored, would stay for the whole retention after it."""
        if not self.retention_days:
            return list(evs)
        cutoff = time.time() - self.retention_days * 86400
        return [ev for ev in evs if ev.request_created_at.seconds + ev.request_created_at.nanos / 1e9 > cutoff]

    def prepare(self, batch: list[events.RequestLogged]) -> PreparedBatch:
        """The CPU part of writing a batch: its body packs and rows, nothing stored yet (ingest
        prepares a batch while the one before is being written)."""
        packs, rows = self._pack_bodies(batch)
        return PreparedBatch(batch, packs, rows)

    async def prepare_in_steps(self, batch: list[events.RequestLogged]) -> PreparedBatch:
        """prepare() one PREPARE_STEP of events at a time, letting the event loop run in between: a
        batch prepared in one go held the loop for a tenth of a second or more, and the writes in
        progress (the batch before it inserting its rows) waited for it. Each step makes its own
        body packs (one per org), so packs hold up to PREPARE_STEP events."""
        packs: list[tuple[str, bytes]] = []
        rows: list[list] = []
        for start in range(0, len(batch), PREPARE_STEP):
            if start:
                await asyncio.sleep(0)
            step = self.prepare(batch[start:start + PREPARE_STEP])
            packs += step.packs
            rows += step.rows
        return PreparedBatch(batch, packs, rows)

    async def write(self, batch: list[events.RequestLogged] | PreparedBatch, turn: Turn | None = None) -> list[Rejected]:
        """Writes a batch (decode's events or prepare's answer); raises on failure, and the caller
        retries the same batch. With a `turn` the rows are inserted in it (after the bodies are
        stored), and it ends once they are. Returns the events whose rows ClickHouse refused (see
        _insert_rows), for the caller to dead-letter; the rest are written."""
        if not batch:
            if turn is not None:  # nothing to insert: the turn passes on in its place in the order
                await turn.wait()
                turn.end()
            return []
        started = time.perf_counter()
        prepared = batch if isinstance(batch, PreparedBatch) else self.prepare(batch)
        try:
            await asyncio.gather(*(self.bodies.put(key, pack, PACK_CONTENT_TYPE) for key, pack in prepared.packs))
        except Exception:
            self.m_write_errors.labels("bodies").inc()
            raise
        if turn is not None:
            await turn.wait()
        try:
            refused = await self._insert_rows(prepared.rows)
        except Exception:
            self.m_write_errors.labels("analytics").inc()
            raise
        if turn is not None:
            turn.end()
        written = prepared.events
        rejected = []
        if refused:
            gone = set(refused)
            written = [ev for i, ev in enumerate(written) if i not in gone]
            for i, exc in refused.items():
                ev = prepared.events[i]
                rejected.append(Rejected(events.encode(ev), f"ClickHouse refused its row: {exc}", events.message_key(ev),
                                         exc.__class__.__name__))
        now = time.time()
        observe = self.m_lag.observe
        # the written events' metadata, lag and usage, a step at a time: the next batch's insert,
        # whose turn has come, starts first and goes on alongside. The rows are in: a failure here must
        # not make the caller write the batch again (out of its turn, its usage counted twice)
        for start in range(0, len(written), PREPARE_STEP):
            await asyncio.sleep(0)
            step = written[start:start + PREPARE_STEP]
            try:
                self.metadata.add(step)
                if self.webhooks is not None:
                    self.webhooks.offer(step)  # queued only: delivery never holds the writes
                for ev in step:
                    if ev.HasField("response_created_at"):
                        at = ev.response_created_at
                        observe(max(now - at.seconds - at.nanos / 1e9, 0))
                self._count_usage(step)
            except Exception as exc:  # noqa: BLE001 - derived data (the rows carry it); never a rewrite
                self.m_write_errors.labels("accounting").inc()
                log.warning("ingest accounting of %d written events failed (%s: %s); their rows are written",
                            len(step), exc.__class__.__name__, exc)
        self.m_batches.observe(time.perf_counter() - started)
        self.m_batch_size.observe(len(written))
        return rejected

    async def _insert_rows(self, rows: list[list]) -> dict[int, Exception]:
        """Inserts request_log rows. An insert refused for a value of its rows (analytics.rows_refused) would be refused
        on every retry, holding its partition for good: its rows are then inserted in halves, down to the single rows
        refused, and the rest go in. Returns {index of a refused row: ClickHouse's error}; any other failure raises (the
        caller retries the batch: rows already in are replaced by the same rows)."""
        try:
            await self.analytics.insert_values("request_log", events.ANALYTICS_COLUMNS, rows)
            return {}
        except Exception as exc:
            if not rows_refused(exc):
                raise
            log.warning("ClickHouse refused a batch of %d rows (%s); inserting it in parts to find the rows at fault",
                        len(rows), exc)
            refused: dict[int, Exception] = {}
            await self._insert_parts(rows, list(range(len(rows))), exc, refused)
            return refused

    async def _insert_parts(self, rows: list[list], part: list[int], exc: Exception, refused: dict[int, Exception]) -> None:
        """The rows `part` indexes, whose insert as a whole ClickHouse refused with `exc`: each half inserted alone."""
        if len(part) == 1:
            refused[part[0]] = exc
            return
        half = len(part) // 2
        for piece in (part[:half], part[half:]):
            try:
                await self.analytics.insert_values("request_log", events.ANALYTICS_COLUMNS, [rows[i] for i in piece])
            except Exception as piece_exc:
                if not rows_refused(piece_exc):
                    raise
                await self._insert_parts(rows, piece, piece_exc, refused)

    def usage_labels(self, ev: events.RequestLogged) -> tuple[str, str]:
        """(provider, model) labels of an event: never a string the caller chose."""
        provider = ev.provider if ev.provider in events.PROVIDERS else events.CUSTOM_PROVIDER
        return provider, self.costs.canonical_model(ev.provider, ev.model) or OTHER_MODEL

    def _count_usage(self, batch: list[events.RequestLogged]) -> None:
        """Adds the batch's tokens and cost to the usage counters: summed per label set first,
        then one increment each."""
        tokens: dict[tuple[str, str, str], int] = {}
        cost: dict[tuple[str, str], float] = {}
        # (provider, model) as sent -> their labels and the token keys of each kind
        labels: dict[tuple[str, str], tuple[tuple[str, str], tuple[tuple[str, str, str], ...]]] = {}
        for ev in batch:
            u, cost_known, provider, model, cost_usd = _USAGE_EVENT_FIELDS(ev)
            known, prompt, completion, cache_read, cache_write = _TOKEN_FIELDS(u)
            if not (known or cost_known):
                continue
            sent = (provider, model)
            entry = labels.get(sent)
            if entry is None:
                pm = self.usage_labels(ev)
                entry = labels[sent] = (pm, tuple((*pm, kind) for kind in TOKEN_KINDS))
            pm, (prompt_key, completion_key, cache_read_key, cache_write_key) = entry
            if prompt > 0:
                tokens[prompt_key] = tokens.get(prompt_key, 0) + prompt
            if completion > 0:
                tokens[completion_key] = tokens.get(completion_key, 0) + completion
            if cache_read > 0:
                tokens[cache_read_key] = tokens.get(cache_read_key, 0) + cache_read
            if cache_write > 0:
                tokens[cache_write_key] = tokens.get(cache_write_key, 0) + cache_write
            if cost_known and cost_usd > 0:
                cost[pm] = cost.get(pm, 0.0) + cost_usd
        for (provider, model, kind), n in tokens.items():
            self.m_tokens.labels(provider, model, kind).inc(n)
        for (provider, model), usd in cost.items():
            self.m_cost.labels(provider, model).inc(usd)

    def _pack_bodies(self, batch: list[events.RequestLogged]) -> tuple[list[tuple[str, bytes]], list[list]]:
        """One body pack per org of the batch, as (key, content), and the batch's rows (values in
        events.ANALYTICS_COLUMNS order), in batch order."""
        rows: list[list | None] = [None] * len(batch)
        by_org: dict[str, list[tuple[str, int, int]]] = {}  # org -> (request id, version, index) of its inline events
        values = events.analytics_values
        version = events.event_version
        for i, ev in enumerate(batch):
            if ev.WhichOneof("bodies") == "location":  # bodies the producer stored itself
                loc = ev.location
                # sizes as the producer sent them, never negative: a UInt64 column refuses "-1", and a row it
                # refuses fails its whole batch's insert on every retry
                req_bytes, resp_bytes = loc.request_bytes, loc.response_bytes
                rows[i] = values(ev, loc.request_key, loc.response_key, req_bytes if req_bytes > 0 else 0,
                                 resp_bytes if resp_bytes > 0 else 0, "", "", False)
            else:
                org_id = ev.org_id
                members = by_org.get(org_id)
                if members is None:
                    members = by_org[org_id] = []
                members.append((ev.request_id, version(ev), i))
        packs = []
        for org_id, members in by_org.items():
            # a deterministic order, so the same events make the same pack whatever order they came in
            members.sort(key=_identity)
            parts, inlines, names = [], [], []
            for request_id, ev_version, i in members:
                request, response, request_type, response_type, request_cut, response_cut = _INLINE_FIELDS(batch[i].inline)
                parts.append(request)
                parts.append(response)
                req_len, resp_len = len(request), len(response)
                inlines.append((i, req_len, resp_len, request_type, response_type, request_cut or response_cut))
                # identities, versions and lengths go into the digest too: the same bytes split otherwise
                names.append(f"{request_id}/{ev_version}/{req_len}/{resp_len};")
            pack = b"".join(parts)
            digest = hashlib.sha256("".join(names).encode())
            digest.update(pack)
            key = events.body_pack_key(org_id, digest.hexdigest()[:32])
            packs.append((key, pack))
            spans, offset = [], 0
            for _, req_len, resp_len, *_ in inlines:
                spans.append((offset, req_len))
                spans.append((offset + req_len, resp_len))
                offset += req_len + resp_len
            refs = body_refs(key, spans)
            for n, (i, req_len, resp_len, request_type, response_type, truncated) in enumerate(inlines):
                rows[i] = values(batch[i], refs[2 * n], refs[2 * n + 1], req_len, resp_len, request_type, response_type,
                                 truncated)
        return packs, rows


def _identity(member: tuple[str, int, int]) -> tuple[str, int]:
    return member[0], member[1]

"""The request log's dead-letter topic: what ingest writes on each dead letter (its headers), and the
operator's two commands on it, `python -m helicone_ingest.dlq list|replay` (settings from HELICONE_*,
as ingest's; `helicone-stack dlq` runs the same code against the stack of a data dir).

list: each dead letter (partition, offset, time, replays, error class, reason, request id), read only.
replay: once the cause is fixed, sends each dead letter's record (key and value as they came) back to the
request-log topic with x-helicone-replays counting its replays, commits its own consumer group as it goes
(a second run goes on where the first stopped) and skips a record replayed max-replays times already.
Ingest deduplicates by org and request id: replaying an event already written writes nothing twice."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from helicone_core.cancellation import wait_for

if TYPE_CHECKING:
    from aiokafka import AIOKafkaConsumer, TopicPartition

# the headers of a dead letter (the record's key and value are the original record's, unchanged)
ERROR_HEADER = "x-helicone-error"  # why, in words (at most 500 bytes)
ERROR_CLASS_HEADER = "x-helicone-error-class"  # why, as a class name: EventError, DecodeError, a ClickHouse error...
TOPIC_HEADER = "x-helicone-original-topic"
PARTITION_HEADER = "x-helicone-original-partition"
OFFSET_HEADER = "x-helicone-original-offset"
DEAD_LETTERED_AT_HEADER = "x-helicone-dead-lettered-at"  # ISO 8601, UTC
# on a replayed record (and on its dead letter, if it fails again): how many times it was replayed
REPLAYS_HEADER = "x-helicone-replays"

DEFAULT_MAX_REPLAYS = 3
REPLAY_GROUP_SUFFIX = "-dlq-replay"  # the replay's consumer group: ingest's own, with this suffix
ERROR_MAX_BYTES = 500


@dataclass(frozen=True)
class Origin:
    """Where a record ingest consumed came from, and how often it was replayed (its REPLAYS_HEADER)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None = None
    replays: int = 0


def replays_of(headers) -> int:
    """The REPLAYS_HEADER of a record's headers ((name, value) pairs); 0 without one or with one not a count."""
    for name, value in headers or ():
        if name == REPLAYS_HEADER:
            try:
                return max(int(value), 0)
            except (TypeError, ValueError):
                return 0
    return 0


def dead_letter_headers(reason: str, error_class: str, origin: Origin | None, now: dt.datetime | None = None) -> dict[str, bytes]:
    """The headers ingest gives a dead letter."""
    at = (now or dt.datetime.now(dt.timezone.utc)).isoformat(timespec="milliseconds")
    headers = {ERROR_HEADER: reason.encode()[:ERROR_MAX_BYTES], ERROR_CLASS_HEADER: error_class.encode(),
               DEAD_LETTERED_AT_HEADER: at.encode()}
    if origin is not None:
        headers |= {TOPIC_HEADER: origin.topic.encode(), PARTITION_HEADER: str(origin.partition).encode(),
                    OFFSET_HEADER: str(origin.offset).encode()}
        if origin.replays:
            headers[REPLAYS_HEADER] = str(origin.replays).encode()
    return headers


@dataclass
class DeadLetter:
    """One record of the dead-letter topic, as `list` shows it."""

    partition: int
    offset: int
    time: str
    replays: int
    error_class: str
    reason: str
    request_id: str
    origin: str

    @classmethod
    def of(cls, record) -> DeadLetter:
        h = {name: value.decode("utf-8", "replace") for name, value in record.headers or ()}
        at = h.get(DEAD_LETTERED_AT_HEADER) or dt.datetime.fromtimestamp(record.timestamp / 1000, dt.timezone.utc).isoformat(
            timespec="milliseconds")
        origin = f"{h[TOPIC_HEADER]}/{h.get(PARTITION_HEADER, '?')}@{h.get(OFFSET_HEADER, '?')}" if TOPIC_HEADER in h else ""
        return cls(record.partition, record.offset, at, replays_of(record.headers), h.get(ERROR_CLASS_HEADER, ""),
                   h.get(ERROR_HEADER, ""), _request_id(record.key, record.value), origin)


def _request_id(key: bytes | None, value: bytes | None) -> str:
    """The event's request id if its value decodes, else the one of its key ("<org>/<request id>"), else ""."""
    if value:
        from helicone_core import events

        try:
            return events.decode(value).request_id
        except Exception:  # noqa: BLE001 - not an event (why it is here): the key may still tell
            pass
    if key:
        return key.decode("utf-8", "replace").rpartition("/")[2]
    return ""


class DeadLetterTopic:
    """The dead-letter topic of `settings` (IngestSettings, or any with the Kafka settings), read up to its
    end at the start of a command; every client built with client_security(settings)."""

    def __init__(self, settings, *, timeout: float = 30.0) -> None:
        from helicone_core.kafka import client_security

        self.settings = settings
        self.security = client_security(settings)
        self.timeout = timeout

    async def _consumer(self, group: str | None) -> AIOKafkaConsumer:
        from aiokafka import AIOKafkaConsumer
        from helicone_core.kafka import MAX_RECORD_BYTES

        consumer = AIOKafkaConsumer(bootstrap_servers=self.settings.kafka_bootstrap, group_id=group, enable_auto_commit=False,
                                    auto_offset_reset="earliest", request_timeout_ms=int(self.timeout * 1000),
                                    fetch_max_bytes=64 * 1024 * 1024, max_partition_fetch_bytes=2 * MAX_RECORD_BYTES + 1024 * 1024,
                                    **self.security)
        await wait_for(consumer.start(), self.timeout)
        return consumer

    async def _partitions(self, consumer: AIOKafkaConsumer) -> list[TopicPartition]:
        from aiokafka import TopicPartition

        topic = self.settings.kafka_dlq_topic
        parts = consumer.partitions_for_topic(topic)
        if not parts:
            await wait_for(consumer._client.force_metadata_update(), self.timeout)
            parts = consumer.partitions_for_topic(topic)
        if not parts:
            raise LookupError(f"dead-letter topic {topic!r} not found (kafka_dlq_topic, HELICONE_KAFKA_DLQ_TOPIC)")
        return [TopicPartition(topic, p) for p in sorted(parts)]

    async def _records(self, consumer: AIOKafkaConsumer, starts: Mapping[TopicPartition, int]):
        """The records from `starts` up to each partition's end as it is now, a fetch at a time (lists per partition)."""
        tps = list(starts)
        ends = await wait_for(consumer.end_offsets(tps), self.timeout)
        consumer.assign(tps)
        left = {}
        for tp in tps:
            if starts[tp] < ends[tp]:
                consumer.seek(tp, starts[tp])
                left[tp] = ends[tp]
        while left:
            fetched = await consumer.getmany(*left, timeout_ms=int(self.timeout * 1000))
            if not fetched:
                raise TimeoutError(f"no answer from the broker for {', '.join(f'{tp.topic}/{tp.partition}' for tp in left)} "
                                   f"in {self.timeout:.0f}s")
            for tp, records in fetched.items():
                records = [r for r in records if r.offset < left.get(tp, -1)]
                if records:
                    yield tp, records
                if tp in left and (await consumer.position(tp)) >= left[tp]:
                    del left[tp]

    async def _starts(self, consumer: AIOKafkaConsumer, tps: list[TopicPartition], from_offset: int | None,
                      committed: bool) -> dict[TopicPartition, int]:
        firsts = await wait_for(consumer.beginning_offsets(tps), self.timeout)
        starts = {}
        for tp in tps:
            at = from_offset
            if at is None and committed:
                at = await wait_for(consumer.committed(tp), self.timeout)
            starts[tp] = max(at or 0, firsts[tp])
        return starts

    async def list(self, from_offset: int | None = None, limit: int | None = None) -> list[DeadLetter]:
        """The dead letters from `from_offset` (in every partition; None: the start), at most `limit`."""
        consumer = await self._consumer(None)
        try:
            tps = await self._partitions(consumer)
            found: list[DeadLetter] = []
            async for _, records in self._records(consumer, await self._starts(consumer, tps, from_offset, False)):
                found += [DeadLetter.of(r) for r in records]
                if limit is not None and len(found) >= limit:
                    break
            return found[:limit] if limit is not None else found
        finally:
            await consumer.stop()

    async def replay(self, *, from_offset: int | None = None, max_replays: int = DEFAULT_MAX_REPLAYS,
                     group: str | None = None) -> dict[str, Any]:
        """Sends the dead letters back to the request-log topic, from the replay group's committed offsets
        (or `from_offset` in every partition), and commits the group after each fetch's records are sent.
        A record replayed `max_replays` times already is skipped (counted, its offset committed)."""
        from aiokafka import AIOKafkaProducer
        from aiokafka.structs import OffsetAndMetadata
        from helicone_core.kafka import MAX_RECORD_BYTES

        s = self.settings
        group = group or s.consumer_group + REPLAY_GROUP_SUFFIX
        consumer = await self._consumer(group)
        producer = AIOKafkaProducer(bootstrap_servers=s.kafka_bootstrap, max_request_size=2 * MAX_RECORD_BYTES,
                                    request_timeout_ms=int(self.timeout * 1000), **self.security)
        replayed = skipped = 0
        try:
            await wait_for(producer.start(), self.timeout)
            tps = await self._partitions(consumer)
            async for tp, records in self._records(consumer, await self._starts(consumer, tps, from_offset, True)):
                sent = []
                for r in records:
                    replays = replays_of(r.headers)
                    if replays >= max_replays:
                        skipped += 1
                        continue
                    sent.append(await producer.send(s.kafka_topic, r.value, key=r.key,  # the record as it came
                                                    headers=[(REPLAYS_HEADER, str(replays + 1).encode())]))
                for fut in sent:
                    await wait_for(fut, self.timeout)
                replayed += len(sent)
                await wait_for(consumer.commit({tp: OffsetAndMetadata(records[-1].offset + 1, "")}), self.timeout)
        finally:
            await producer.stop()
            await consumer.stop()
        return {"replayed": replayed, "skipped": skipped, "group": group, "topic": s.kafka_topic}


def add_commands(parser: argparse.ArgumentParser) -> None:
    """The list/replay subcommands (shared with `helicone-stack dlq`)."""
    sub = parser.add_subparsers(dest="dlq_command", required=True)
    listing = sub.add_parser("list", help="the dead letters: partition, offset, time, replays, error class, reason, request id")
    listing.add_argument("--from-offset", type=_offset, metavar="N", help="start at this offset in every partition (default: the start)")
    listing.add_argument("--limit", type=_positive, metavar="N", help="at most this many")
    listing.add_argument("--json", action="store_true", help="one JSON object a line")
    replay = sub.add_parser("replay", help="send the dead letters back to the request-log topic (after fixing their cause)")
    start = replay.add_mutually_exclusive_group()
    start.add_argument("--from-offset", type=_offset, metavar="N",
                       help="start at this offset in every partition (default: where the last replay stopped)")
    start.add_argument("--all", action="store_true", help="start at the start of the topic")
    replay.add_argument("--max-replays", type=_positive, default=DEFAULT_MAX_REPLAYS, metavar="N",
                        help=f"skip a record already replayed N times (default {DEFAULT_MAX_REPLAYS})")
    replay.add_argument("--group", metavar="NAME", help=f"the replay's consumer group (default: ingest's + {REPLAY_GROUP_SUFFIX})")


async def run(args: argparse.Namespace, settings, out: Callable[[str], None] = print) -> int:
    topic = DeadLetterTopic(settings)
    if args.dlq_command == "list":
        letters = await topic.list(args.from_offset, args.limit)
        for d in letters:
            if args.json:
                out(json.dumps(d.__dict__))
            else:
                out(f"{d.partition}/{d.offset}  {d.time}  replays={d.replays}  {d.error_class or '-'}  "
                    f"request_id={d.request_id or '-'}  {d.reason}")
        if not args.json:
            out(f"{len(letters)} dead letter(s) in {settings.kafka_dlq_topic}")
        return 0
    done = await topic.replay(from_offset=0 if args.all else args.from_offset, max_replays=args.max_replays, group=args.group)
    out(f"replayed {done['replayed']} dead letter(s) to {done['topic']}; skipped {done['skipped']} replayed "
        f"{args.max_replays} times already; group {done['group']} committed")
    return 0


def _offset(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        n = -1
    if n < 0:
        raise argparse.ArgumentTypeError(f"expected an offset (a whole number, 0 or more), got {value!r}")
    return n


def _positive(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of 1 or more, got {value!r}")
    return n


def main(argv: list[str] | None = None) -> int:
    from helicone_core.settings import describe_settings_error
    from pydantic import ValidationError

    from .settings import IngestSettings

    parser = argparse.ArgumentParser(prog="python -m helicone_ingest.dlq", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_commands(parser)
    args = parser.parse_args(argv)
    try:
        settings = IngestSettings()
    except ValidationError as exc:
        print(f"error: invalid setting: {describe_settings_error(exc)}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(run(args, settings))
    except Exception as exc:  # noqa: BLE001 - a clear message for the operator
        print(f"error: {exc.__class__.__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

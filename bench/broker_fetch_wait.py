"""How long a record waits in the broker for a consumer's fetch, by the fetch's wait (fetch.max.wait.ms).

Kafka answers a fetch as soon as records arrive. The embedded broker (Tansu) looks for records when
the fetch arrives, then after half the time left, again and again until the wait is up
(tansu-broker/src/broker/fetch.rs): a record that arrives meanwhile waits for its next look, up to about
half the wait. That is why ingest fetches with a short wait while records keep coming
(HELICONE_FETCH_WAIT, see services/ingest/src/helicone_ingest/batches.py).

A producer sends one record at a time, at random moments 50-400 ms apart, and waits for the broker's
acknowledgement; a consumer in the same process notes when each record reaches it. Printed per wait:
the time from the acknowledgement to the record's arrival (min, median, p90, max).

    .venv/bin/python bench/broker_fetch_wait.py [--records 60] [--waits 100,500,1500] [--bootstrap HOST:PORT]

Without --bootstrap it starts the embedded broker on loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.net import free_port  # noqa: E402


async def delays(bootstrap: str, wait_ms: int, records: int) -> list[float]:
    """Milliseconds from each record's produce acknowledgement to its arrival at a consumer whose fetches wait `wait_ms`."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from helicone_core.kafka import ensure_topics

    topic = f"bench.fetch-wait.{wait_ms}.{uuid.uuid4().hex[:6]}"
    await ensure_topics(bootstrap, [topic], 1, 1, security={"security_protocol": "PLAINTEXT"})
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0, acks=1)
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, fetch_max_wait_ms=wait_ms,
                                auto_offset_reset="earliest", group_id=None)
    await producer.start()
    await consumer.start()
    acked: dict[bytes, float] = {}
    arrived: dict[bytes, float] = {}
    try:
        async def consume() -> None:
            while len(arrived) < records:
                for recs in (await consumer.getmany(timeout_ms=5000)).values():
                    now = time.perf_counter()
                    for rec in recs:
                        arrived[rec.value] = now

        reader = asyncio.create_task(consume())
        await asyncio.sleep(1.0)  # the consumer's first fetch is under way
        rng = random.Random(wait_ms)
        for i in range(records):
            await asyncio.sleep(rng.uniform(0.05, 0.4))
            value = str(i).encode()
            await producer.send_and_wait(topic, value)
            acked[value] = time.perf_counter()
        await asyncio.wait_for(reader, 30)
    finally:
        await consumer.stop()
        await producer.stop()
    # a record may arrive before its acknowledgement does: 0 then
    return sorted(max(arrived[v] - acked[v], 0.0) * 1000 for v in acked)


async def run(bootstrap: str, waits: list[int], records: int) -> None:
    for wait_ms in waits:
        d = await delays(bootstrap, wait_ms, records)
        print(f"fetch wait {wait_ms:5d} ms: {records} records reached the consumer after their produce acknowledgement: "
              f"min {d[0]:.0f}, median {statistics.median(d):.0f}, p90 {d[int(0.9 * (len(d) - 1))]:.0f}, max {d[-1]:.0f} ms",
              flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--records", type=int, default=60, help="records per wait")
    p.add_argument("--waits", default="100,500,1500", help="comma-separated fetch waits in ms")
    p.add_argument("--bootstrap", help="a running broker (default: start the embedded one on loopback)")
    args = p.parse_args()
    waits = [int(w) for w in args.waits.split(",") if w]
    if args.bootstrap:
        asyncio.run(run(args.bootstrap, waits, args.records))
        return
    from helicone_runner.embedded import EmbeddedKafka

    with tempfile.TemporaryDirectory(prefix="fetch-wait-") as tmp:
        kafka = EmbeddedKafka("127.0.0.1", free_port(), Path(tmp) / "kafka.log")
        kafka.start()
        try:
            print(f"embedded broker at {kafka.bootstrap}", flush=True)
            asyncio.run(run(kafka.bootstrap, waits, args.records))
        finally:
            kafka.stop()


if __name__ == "__main__":
    main()

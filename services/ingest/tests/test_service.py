"""IngestService.process: retries until the write succeeds; poison events go to the dead-letter topic."""

import asyncio
import datetime as dt
import uuid

from helicone_core import events
from helicone_core.bodies import LocalBodyStore
from helicone_ingest.app import IngestService
from helicone_ingest.settings import IngestSettings
from helicone_ingest.writer import BatchWriter


class FlakyAnalytics:
    def __init__(self, failures: int):
        self.failures = failures
        self.rows = []

    async def insert(self, table, rows):
        if self.failures:
            self.failures -= 1
            raise ConnectionError("clickhouse down")
        self.rows.extend(rows)


class FakeDlq:
    def __init__(self):
        self.sent = []

    async def send(self, value, headers):
        self.sent.append((value, headers))
        fut = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut


async def test_process_retries_until_written_and_dead_letters_poison(tmp_path):
    svc = IngestService(IngestSettings(data_dir=tmp_path, body_store="local", analytics_backend="chdb",
                                       retry_max_backoff=0.05, _env_file=None))
    analytics = FlakyAnalytics(failures=3)
    bodies = LocalBodyStore(tmp_path / "bodies")
    await bodies.start()
    svc.writer = BatchWriter(analytics, bodies, pool=None, metrics=svc.metrics)
    ev = events.RequestLogged(schema_version=1, request_id=str(uuid.uuid4()), org_id=str(uuid.uuid4()))
    events.set_time(ev.request_created_at, dt.datetime.now(dt.timezone.utc))
    dlq = FakeDlq()

    await asyncio.wait_for(svc.process([b"\x00junk", events.encode(ev)], dlq), 10)

    assert analytics.failures == 0
    assert [r["request_id"] for r in analytics.rows] == [ev.request_id]
    [(value, headers)] = dlq.sent
    assert value == b"\x00junk"
    assert headers["x-helicone-error"].startswith((b"not a RequestLogged", b"unsupported schema_version"))

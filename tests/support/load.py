"""Steady load through the official OpenAI SDK, for fault tests and `make chaos`: every request
carries its own Helicone-Request-Id, so what was sent, what was answered and what was logged can be
compared id by id."""

from __future__ import annotations

import statistics
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx
import openai


@dataclass
class Outcome:
    request_id: str
    sent_at: float  # monotonic
    latency: float
    status: int  # 0 when no HTTP answer arrived


@dataclass
class LoadResult:
    run_id: str = ""  # the Helicone-Property-Fault-Run value every request carried
    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def sent(self) -> list[str]:
        return [o.request_id for o in self.outcomes]

    @property
    def ok(self) -> list[str]:
        return [o.request_id for o in self.outcomes if 200 <= o.status < 300]

    def failures(self) -> list[Outcome]:
        return [o for o in self.outcomes if not 200 <= o.status < 300]

    def p99(self, start: float = 0.0, end: float = float("inf")) -> float:
        window = sorted(o.latency for o in self.outcomes if start <= o.sent_at < end)
        if not window:
            return 0.0
        return window[min(len(window) - 1, int(len(window) * 0.99))]

    def median(self) -> float:
        return statistics.median(o.latency for o in self.outcomes) if self.outcomes else 0.0


class SteadyLoad:
    """Sends `rate` chat completions a second from a pool of threads until stop()."""

    def __init__(self, gateway: str, key: str, run_id: str, *, rate: float = 40.0, workers: int = 8,
                 timeout: float = 15.0, extra_headers: dict[str, str] | None = None,
                 request_ids: Iterator[str] | None = None, prompt: str = "steady load") -> None:
        """request_ids: the Helicone-Request-Id of each request in turn (default: a new UUID each);
        the load stops sending when it runs out."""
        self.rate = rate
        self._ids = request_ids
        self.prompt = prompt
        self.run_id = run_id
        self.client = openai.OpenAI(
            base_url=f"{gateway}/v1", api_key="sk-fault-provider-key", max_retries=0, timeout=timeout,
            default_headers={"Helicone-Auth": f"Bearer {key}", "Helicone-Property-Fault-Run": run_id, **(extra_headers or {})},
        )
        self.result = LoadResult(run_id)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="load")
        self._ticker = threading.Thread(target=self._tick, name="load-ticker", daemon=True)

    def __enter__(self) -> SteadyLoad:
        self._ticker.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> LoadResult:
        self._stop.set()
        if self._ticker.is_alive():
            self._ticker.join()
        self._pool.shutdown(wait=True)
        return self.result

    def _tick(self) -> None:
        interval, due = 1.0 / self.rate, time.monotonic()
        while not self._stop.is_set():
            self._pool.submit(self._one)
            due += interval
            self._stop.wait(max(0.0, due - time.monotonic()))

    def _one(self) -> None:
        with self._lock:
            rid = next(self._ids, None) if self._ids is not None else str(uuid.uuid4())
        if rid is None:
            return
        t0 = time.monotonic()
        status = 0
        try:
            raw = self.client.chat.completions.with_raw_response.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": self.prompt}],
                extra_headers={"Helicone-Request-Id": rid})
            status = raw.http_response.status_code
        except openai.APIStatusError as exc:
            status = exc.status_code
        except openai.APIError:
            status = 0
        with self._lock:
            self.result.outcomes.append(Outcome(rid, t0, time.monotonic() - t0, status))


def logged_ids(api: str, key: str, run_id: str) -> list[str]:
    """Every logged request of a run, as the api returns them (duplicates would show twice)."""
    out: list[str] = []
    with httpx.Client(base_url=api, headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
        while True:
            r = client.post("/v1/request/query", json={
                "filter": {"properties": {"fault-run": run_id}}, "limit": 1000, "offset": len(out), "sort": "created_at_asc"})
            r.raise_for_status()
            page = [d["request_id"] for d in r.json()["data"]]
            out += page
            if len(page) < 1000:
                return out


def wait_logged(api: str, key: str, run_id: str, expected: set[str], timeout: float = 90.0) -> list[str]:
    """Polls until every expected id is logged (or the time is up); returns what the api shows."""
    deadline = time.monotonic() + timeout
    while True:
        ids = logged_ids(api, key, run_id)
        if expected <= set(ids) or time.monotonic() > deadline:
            return ids
        time.sleep(0.5)

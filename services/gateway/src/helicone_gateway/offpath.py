"""Store writes made after the answer, off the request's task (the cache's saves, the rate limiter's
charges): started without waiting, each bounded by the store's timeout, a failure counted and logged
(never raised: the answer has gone), all awaited on shutdown."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from helicone_core.cancellation import wait_for

log = logging.getLogger("helicone.gateway")


class OffPathWrites:
    def __init__(self, timeout: float, failed: Callable[[], None], what: str) -> None:
        self.timeout, self.failed, self.what = timeout, failed, what
        self._tasks: set[asyncio.Task] = set()

    def start(self, write: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(self._bounded(write))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _bounded(self, write: Coroutine[Any, Any, Any]) -> None:
        try:
            await wait_for(write, self.timeout)
        except Exception as exc:
            self.failed()
            log.warning("%s skipped: %s", self.what, exc.__class__.__name__)

    async def flush(self) -> None:
        """Waits for the writes in flight (shutdown, tests)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

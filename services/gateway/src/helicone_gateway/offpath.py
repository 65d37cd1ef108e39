"""Store writes made after the answer, off the request's task (the cache's saves, the rate limiter's
charges): started without waiting, kept referenced until done, awaited all at once on shutdown."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any


class OffPathWrites:
    def __init__(self) -> None:
        self._tasks: set[asyncio.Task] = set()

    def start(self, write: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(write)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def flush(self) -> None:
        """Waits for the writes in flight (shutdown, tests)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

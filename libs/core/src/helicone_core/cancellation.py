"""Cancellation that is never lost, so that stopping a service always ends.

Python 3.11's asyncio.wait_for loses a cancellation that arrives as the awaited call finishes: it
returns that call's result, or raises its error, instead of CancelledError (gh-86296, fixed in 3.12,
whose wait_for is `asyncio.timeout` around the await). A retry loop that catches the error then goes
on as if never cancelled, and the stop() that cancelled it and awaits it waits forever: an ingest
test hung for ten minutes on exactly that (its Postgres reconnect loop, Postgres refusing).

- `wait_for` is 3.12's: the code in this repository uses it, never asyncio.wait_for (ruff's TID251
  says so where it is used).
- Some libraries we call still use asyncio.wait_for inside (mode does; asyncpg and aiokafka ship
  fixed copies). So every loop that retries after a broad `except Exception` calls
  `raise_if_cancelling(exc)` first: a cancellation that was asked for and lost on the way ends the
  loop all the same.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


async def wait_for(aw: Awaitable[T], timeout: float | None) -> T:
    """asyncio.wait_for as Python 3.12 has it: TimeoutError after `timeout` seconds (None: no limit),
    and a cancellation always raises CancelledError. The awaitable runs in the calling task. With a
    timeout of 0 or less nothing runs: a finished future's result, else TimeoutError."""
    if timeout is not None and timeout <= 0:
        fut = asyncio.ensure_future(aw)
        if not fut.done():
            fut.cancel()  # before its first step: the work never starts
            await asyncio.wait({fut})
        try:
            return fut.result()
        except asyncio.CancelledError as exc:
            raise TimeoutError from exc
    async with asyncio.timeout(timeout):
        return await aw


def raise_if_cancelling(exc: BaseException | None = None) -> None:
    """Raises CancelledError if someone asked the current task to stop: call it where a retry loop
    catches a failure, before it sleeps and tries again."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError() from exc

"""Cancellation is never lost, so a service's stop() always ends: Python 3.11's asyncio.wait_for drops
a cancellation that arrives as the awaited call fails (it raises the call's error instead), and a retry
loop catching that error then never stops (an ingest test hung for ten minutes on it)."""

from __future__ import annotations

import asyncio
import sys

import pytest
from helicone_core.cancellation import raise_if_cancelling, wait_for


async def cancelled_as_the_call_fails(waiting) -> str:
    """A stop() cancels an attempt in the loop iteration in which the attempt's call fails: the
    attempt's answer ("cancelled", or "retried" when the failure came out instead)."""
    gate = asyncio.Event()

    async def refused() -> None:
        await gate.wait()
        raise OSError("connection refused")

    async def attempt() -> str:
        try:
            await waiting(refused(), 5)
        except OSError:
            return "retried"
        return "answered"

    task = asyncio.create_task(attempt())
    await asyncio.sleep(0.01)  # waiting for the gate
    gate.set()  # the call fails in the next iteration ...
    task.cancel()  # ... and is cancelled in the same one
    try:
        return await task
    except asyncio.CancelledError:
        return "cancelled"


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="3.12's asyncio.wait_for keeps the cancellation")
async def test_asyncio_wait_for_of_3_11_turns_that_cancellation_into_the_calls_error():
    assert await cancelled_as_the_call_fails(asyncio.wait_for) == "retried"  # the hazard itself


async def test_wait_for_keeps_it():
    assert await cancelled_as_the_call_fails(wait_for) == "cancelled"


async def test_wait_for_answers_times_out_and_waits_without_limit():
    async def answer(delay: float) -> int:
        await asyncio.sleep(delay)
        return 42

    assert await wait_for(answer(0), 1) == 42
    assert await wait_for(answer(0.05), None) == 42
    ended = asyncio.Event()

    async def slow() -> None:
        try:
            await asyncio.sleep(10)
        finally:
            ended.set()

    with pytest.raises(TimeoutError):
        await wait_for(slow(), 0.05)
    assert ended.is_set()  # the call was stopped, not left running
    fut = asyncio.get_running_loop().create_future()
    with pytest.raises(TimeoutError):
        await wait_for(fut, 0.01)
    assert fut.cancelled()  # as asyncio.wait_for does with a future


async def test_a_timeout_of_zero_runs_nothing():
    started = []

    async def work() -> int:
        started.append(True)
        return 1

    for limit in (0, -1):
        with pytest.raises(TimeoutError):
            await wait_for(work(), limit)
    assert not started  # as asyncio.wait_for: the call never began (a Postgres connect, an upsert)
    fut = asyncio.get_running_loop().create_future()
    fut.set_result(7)
    assert await wait_for(fut, 0) == 7


async def test_a_retry_loop_ends_when_a_library_loses_the_cancellation_of_its_call():
    """A library call that turns the cancellation into its own error (mode still uses asyncio.wait_for
    inside): the loop's except branch still ends it."""
    attempts = 0

    async def library_call() -> None:
        nonlocal attempts
        attempts += 1
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            raise ConnectionError("refused") from None

    async def reconnect_loop() -> None:
        while True:
            try:
                await library_call()
            except Exception as exc:  # noqa: BLE001
                raise_if_cancelling(exc)
                await asyncio.sleep(0.01)

    task = asyncio.create_task(reconnect_loop())
    await asyncio.sleep(0.05)
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=2)
    assert done and task.cancelled() and attempts == 1


async def test_without_a_cancellation_the_loop_goes_on():
    try:
        raise ConnectionError("refused")
    except ConnectionError as exc:
        raise_if_cancelling(exc)  # nothing asked this task to stop

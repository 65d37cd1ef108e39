"""Kafka helpers shared by producers and consumers."""

from __future__ import annotations

import asyncio
import contextlib

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError


async def ensure_topics(bootstrap: str, topics: list[str], partitions: int, replication_factor: int, timeout: float = 10.0) -> None:
    """Creates the topics that do not exist yet."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout * 1000))
    await asyncio.wait_for(admin.start(), timeout)
    try:
        existing = set(await admin.list_topics())
        missing = [t for t in topics if t not in existing]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics([NewTopic(t, partitions, replication_factor) for t in missing])
    finally:
        await admin.close()


async def ping_broker(bootstrap: str, timeout: float) -> bool:
    """True if a broker of `bootstrap` answers a metadata request within `timeout` seconds."""
    from aiokafka.client import AIOKafkaClient

    client = AIOKafkaClient(bootstrap_servers=bootstrap, request_timeout_ms=max(1, int(timeout * 1000)))
    try:
        await asyncio.wait_for(client.bootstrap(), timeout)
        return True
    except Exception:  # noqa: BLE001 - readiness probe: any failure means "not reachable"
        return False
    finally:
        with contextlib.suppress(Exception):
            await client.close()

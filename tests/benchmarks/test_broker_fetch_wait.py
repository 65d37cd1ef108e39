"""bench/broker_fetch_wait.py against the session's embedded broker."""

from bench import broker_fetch_wait


async def test_every_record_is_timed_once_from_its_acknowledgement_to_its_arrival(kafka_bootstrap):
    d = await broker_fetch_wait.delays(kafka_bootstrap, 100, records=6)
    assert len(d) == 6 and d == sorted(d)
    assert all(ms >= 0 for ms in d)
    # a 100 ms wait: the broker looks again by the end of it (a loaded machine adds to that, not 10 s)
    assert d[-1] < 10_000, d

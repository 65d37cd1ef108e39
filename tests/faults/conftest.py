"""Fault tests: the real stack under steady load from the official SDK while a fault is injected;
each asserts sent = answered 2xx = logged exactly once (see tests/support/load.py)."""

from __future__ import annotations

import collections

import pytest

from tests.support.load import LoadResult


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/faults/" in str(item.fspath):
            item.add_marker(pytest.mark.faults)


def assert_exactly_once(result: LoadResult, logged: list[str]) -> None:
    failures = result.failures()
    assert not failures, f"{len(failures)} of {len(result.sent)} requests failed, e.g. {failures[:3]}"
    counts = collections.Counter(logged)
    missing = set(result.sent) - set(counts)
    duplicated = [rid for rid, n in counts.items() if n > 1]
    unexpected = set(counts) - set(result.sent)
    assert not missing and not duplicated and not unexpected, (
        f"sent {len(result.sent)}, logged {len(counts)}: {len(missing)} lost, {len(duplicated)} duplicated, "
        f"{len(unexpected)} unexpected")

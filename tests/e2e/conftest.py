"""Starts the real embedded stack once per test session (see tests/support/stack.py)."""

from __future__ import annotations

import pytest

from tests.support.stack import Stack, running_stack


@pytest.fixture(scope="session")
def stack(tmp_path_factory) -> Stack:
    # deployed as one region of several: every answer and every log names it
    with running_stack(tmp_path_factory.mktemp("e2e"), s3=True, region="eu-west-1") as s:
        yield s

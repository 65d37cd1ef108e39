"""The collector settings every service process applies at start (gc_tuning.tune_gc)."""

import gc

import pytest
from helicone_core.gc_tuning import DEFAULT_YOUNG_THRESHOLD, tune_gc
from helicone_core.settings import CommonSettings
from pydantic import ValidationError


@pytest.fixture
def restore_gc():
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


def test_tune_gc_freezes_what_the_process_holds_and_sets_the_young_threshold(restore_gc):
    gc.set_threshold(700, 10, 10)
    held = [[] for _ in range(1000)]  # container objects alive now: frozen, never traversed again
    tune_gc(12_345)
    assert gc.get_threshold() == (12_345, 10, 10)
    assert gc.get_freeze_count() >= len(held)
    collected = {id(o) for o in gc.get_objects()}  # every generation a collection traverses
    assert not any(id(x) in collected for x in held)


def test_tune_gc_zero_keeps_pythons_thresholds(restore_gc):
    gc.set_threshold(700, 10, 10)
    tune_gc(0)
    assert gc.get_threshold() == (700, 10, 10)


def test_the_setting_defaults_to_the_tuned_threshold_and_refuses_a_negative(monkeypatch):
    monkeypatch.delenv("HELICONE_GC_YOUNG_THRESHOLD", raising=False)
    assert CommonSettings(_env_file=None).gc_young_threshold == DEFAULT_YOUNG_THRESHOLD
    monkeypatch.setenv("HELICONE_GC_YOUNG_THRESHOLD", "1000")
    assert CommonSettings(_env_file=None).gc_young_threshold == 1000
    monkeypatch.setenv("HELICONE_GC_YOUNG_THRESHOLD", "-1")
    with pytest.raises(ValidationError, match="gc_young_threshold"):
        CommonSettings(_env_file=None)

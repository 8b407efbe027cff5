"""Process setup: the allocator cap and the garbage collector's pace."""

from __future__ import annotations

import gc

import pytest

from operators import lifecycle


def test_malloc_arenas_are_capped_unless_the_environment_chose(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    assert lifecycle.limit_malloc_arenas() is True  # glibc accepted M_ARENA_MAX
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert lifecycle.limit_malloc_arenas() is False


def test_gc_thresholds_are_raised():
    before = gc.get_threshold()
    try:
        lifecycle.tune_gc()
        assert gc.get_threshold() == lifecycle.GC_THRESHOLDS
    finally:
        gc.set_threshold(*before)

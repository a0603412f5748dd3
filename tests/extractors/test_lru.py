"""Tests for the bounded LRU memo the extractors and the redactor keep."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nextstate.extractors.lru import LruCache


def test_least_recently_used_entry_is_evicted_first() -> None:
    """A hit refreshes an entry, so the untouched one is evicted when the bound is reached."""
    cache: LruCache[int] = LruCache(max_entries=2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1
    cache.put("c", 3)
    assert "b" not in cache and cache.get("a") == 1 and cache.get("c") == 3


def test_size_bound_evicts_and_oversized_entries_are_not_stored() -> None:
    """Entries are evicted to keep the total size within max_size; a too-big one is skipped."""
    cache: LruCache[str] = LruCache(max_entries=100, max_size=10)
    cache.put("a", "x", size=6)
    cache.put("b", "y", size=6)
    assert "a" not in cache and cache.size == 6
    cache.put("huge", "z", size=11)
    assert "huge" not in cache and len(cache) == 1


def test_get_returns_default_for_missing_and_keeps_stored_none() -> None:
    """A stored None is told apart from a miss through the default argument."""
    cache: LruCache[None] = LruCache()
    missing = object()
    cache.put("k", None)
    assert cache.get("k", missing) is None
    assert cache.get("other", missing) is missing


def test_bad_bounds_are_rejected() -> None:
    """Non-positive bounds raise instead of building a cache that keeps nothing."""
    with pytest.raises(ValueError):
        LruCache(max_entries=0)


@given(st.lists(st.tuples(st.integers(0, 30), st.integers(1, 9)), max_size=200),
       st.integers(1, 8), st.integers(1, 40))
def test_bounds_hold_after_any_sequence(puts: list[tuple[int, int]], entries: int,
                                        size: int) -> None:
    """Whatever is put, the entry count and total size never exceed their bounds."""
    cache: LruCache[int] = LruCache(max_entries=entries, max_size=size)
    for key, weight in puts:
        cache.put(key, key, size=weight)
        assert len(cache) <= entries and cache.size <= size
        if weight <= size:
            assert cache.get(key) == key  # the newest entry always survives its own put


def test_refresh_orders_keys_as_hits_would_and_stops_at_a_missing_key() -> None:
    """refresh leaves the cache as a get on each key would; a missing key ends it with False."""
    refreshed: LruCache[int] = LruCache(max_entries=3)
    looked_up: LruCache[int] = LruCache(max_entries=3)
    for cache in (refreshed, looked_up):
        cache.put("a", 1)
        cache.put("b", 2)
        cache.put("c", 3)
    assert refreshed.refresh(["b", "a"])
    looked_up.get("b")
    looked_up.get("a")
    assert list(refreshed.entries) == list(looked_up.entries) == ["c", "b", "a"]
    assert not refreshed.refresh(["c", "zzz", "b"])
    assert list(refreshed.entries) == ["b", "a", "c"]  # "c" refreshed, "b" never reached

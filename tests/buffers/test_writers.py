"""Eviction and per-source quotas."""

from __future__ import annotations

import numpy as np

from nextstate.buffers.memory_storage import MemoryStorage
from nextstate.buffers.writers import EvictingWriter

from .conftest import make_tuple


def put(store, writer, items, priorities=None):
    """Place and write a batch the way ReplayBuffer does."""
    writer.begin(store, len(items))
    for i, item in enumerate(items):
        slot = writer.place(store, item.source, len(items) - i)
        priority = 1.0 if priorities is None else priorities[i]
        store.write(slot, item, priority=priority, version=-1)


def ids(store):
    """Interaction indices stored, oldest first."""
    return [int(t.interaction_id.split("#")[1]) for t in store.iter_tuples()]


def test_fifo_evicts_the_oldest():
    """A full FIFO buffer drops its oldest tuples first, across batches."""
    store, writer = MemoryStorage(5), EvictingWriter("fifo")
    put(store, writer, [make_tuple(i) for i in range(4)])
    put(store, writer, [make_tuple(i) for i in range(4, 9)])
    assert ids(store) == [4, 5, 6, 7, 8]


def test_batch_larger_than_capacity_keeps_its_newest():
    """A single batch bigger than capacity ends with its last tuples stored."""
    store, writer = MemoryStorage(3), EvictingWriter("fifo")
    put(store, writer, [make_tuple(i) for i in range(10)])
    assert ids(store) == [7, 8, 9]


def test_lowest_priority_evicts_the_least_useful():
    """lowest_priority eviction removes the smallest priorities, oldest among ties."""
    store, writer = MemoryStorage(4), EvictingWriter("lowest_priority")
    put(store, writer, [make_tuple(i) for i in range(4)], [5.0, 0.1, 3.0, 0.1])
    put(store, writer, [make_tuple(4), make_tuple(5)], [1.0, 1.0])
    assert ids(store) == [0, 2, 4, 5]
    store.set_priorities(np.flatnonzero(store.seq == 0), np.array([0.0]))
    put(store, writer, [make_tuple(6)], [1.0])
    assert ids(store) == [2, 4, 5, 6]


def test_a_chatty_source_cannot_crowd_out_the_rest():
    """A source at its quota evicts its own tuples; others keep their share."""
    store = MemoryStorage(10)
    writer = EvictingWriter("fifo", {"tool": 0.3})
    put(store, writer, [make_tuple(i, source="user") for i in range(5)])
    put(store, writer, [make_tuple(i, source="tool") for i in range(100, 200)])
    sources = [t.source for t in store.iter_tuples()]
    assert sources.count("tool") == 3 and sources.count("user") == 5
    assert ids(store)[-3:] == [197, 198, 199]
    put(store, writer, [make_tuple(i, source="user") for i in range(5, 20)])
    sources = [t.source for t in store.iter_tuples()]
    assert sources.count("tool") <= 3 and len(store) == 10


def test_state_dict_round_trip():
    """A writer rebuilt from its state_dict has the same configuration."""
    writer = EvictingWriter("lowest_priority", {"gui": 0.2})
    other = EvictingWriter()
    other.load_state_dict(writer.state_dict())
    assert other.state_dict() == writer.state_dict()

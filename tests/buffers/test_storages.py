"""Memory and SQLite storages: slots, dedup keys, durability and reopen."""

from __future__ import annotations

import numpy as np
import pytest

from nextstate.buffers.memory_storage import MemoryStorage
from nextstate.buffers.sqlite_storage import SQLiteStorage
from nextstate.buffers.storage import FREE, session_key
from nextstate.buffers.versions import parse_policy_version

from .conftest import make_tuple


@pytest.fixture(params=["memory", "sqlite"])
def make_storage(request, tmp_path):
    """A factory of empty storages of either kind (SQLite ones in a temp dir)."""
    opened = []

    def make(capacity, dedup_horizon=None, name="b"):
        if request.param == "memory":
            store = MemoryStorage(capacity, dedup_horizon)
        else:
            store = SQLiteStorage(tmp_path / f"{name}.sqlite3", capacity, dedup_horizon)
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


def fill(store, items):
    """Write items into free slots; returns their slots."""
    slots = []
    for item in items:
        slot = store.free_slot()
        store.write(slot, item, priority=1.0,
                    version=parse_policy_version(item.policy_version))
        slots.append(slot)
    return slots


def test_write_get_evict_round_trip(make_storage):
    """Tuples come back equal from their slots; an evicted slot is free and reused."""
    store = make_storage(3)
    items = [make_tuple(i) for i in range(3)]
    slots = fill(store, items)
    assert store.get(np.array(slots[::-1])) == items[::-1]
    assert store.free_slot() is None
    store.evict(slots[1])
    assert len(store) == 2 and store.seq[slots[1]] == FREE
    assert store.free_slot() == slots[1]
    with pytest.raises(IndexError):
        store.get(np.array([slots[1]]))


def test_evicted_keys_stay_deduplicated_within_the_horizon(make_storage):
    """An evicted key is still known until dedup_horizon newer inserts pass it."""
    store = make_storage(2, dedup_horizon=3)
    items = [make_tuple(i) for i in range(6)]
    slots = fill(store, items[:2])
    store.evict(slots[0])
    assert items[0].key in store
    for item in items[2:5]:
        store.evict(int(np.flatnonzero(store.seq != FREE)[0]))
        fill(store, [item])
    store.flush()
    assert items[0].key not in store          # 4 inserts since it: past the horizon
    assert store.known_keys([i.key for i in items]) == {i.key for i in items[2:5]}


def test_iter_tuples_is_oldest_first(make_storage):
    """iter_tuples yields by insertion order, whatever the slots."""
    store = make_storage(3)
    items = [make_tuple(i) for i in range(5)]
    fill(store, items[:3])
    store.evict(0)
    store.evict(1)
    fill(store, items[3:])
    assert list(store.iter_tuples()) == [items[2], items[3], items[4]]


def test_state_dict_round_trip(make_storage):
    """A storage restored from state_dict has the same layout, priorities and tuples."""
    store = make_storage(4)
    fill(store, [make_tuple(i) for i in range(4)])
    store.evict(2)
    store.set_priorities(np.array([0, 1]), np.array([0.25, 4.0]))
    state = store.state_dict()
    other = make_storage(4, name="b") if isinstance(store, MemoryStorage) else store
    other.load_state_dict(state)
    again = other.state_dict()
    np.testing.assert_array_equal(again["seq"], state["seq"])
    np.testing.assert_array_equal(again["priority"], state["priority"])
    assert list(other.iter_tuples()) == list(store.iter_tuples())


def test_session_keys_are_written_and_restored(make_storage, tmp_path):
    """Each slot holds its tuple's session key from the write on; a state_dict round trip
    and a reopen of the file restore the keys of the occupied slots."""
    store = make_storage(16)
    items = [make_tuple(i) for i in range(10)]
    slots = fill(store, items)
    expected = [session_key(t.session_id) for t in items]
    assert store.session[slots].tolist() == expected
    assert len(set(expected)) == 7 and session_key("session-3") == session_key("session-3")
    store.evict(slots[4])
    live = store.occupied_slots()
    keys = store.session[live]
    other = make_storage(16, name="b") if isinstance(store, MemoryStorage) else store
    other.load_state_dict(store.state_dict())
    np.testing.assert_array_equal(other.occupied_slots(), live)
    np.testing.assert_array_equal(other.session[live], keys)
    if isinstance(store, SQLiteStorage):
        store.close()
        reopened = SQLiteStorage(store.path, 16)
        live = reopened.occupied_slots()
        by_seq = dict(zip(reopened.seq[live].tolist(), reopened.session[live].tolist(),
                          strict=True))
        assert by_seq == {seq: key for seq, key in enumerate(expected) if seq != 4}
        reopened.close()


def test_sqlite_reopen_restores_tuples_priorities_and_dedup(tmp_path):
    """Flushed tuples, priority updates and dedup keys survive closing and reopening."""
    path = tmp_path / "b.sqlite3"
    store = SQLiteStorage(path, 10)
    items = [make_tuple(i, version=f"v{i}") for i in range(5)]
    fill(store, items)
    store.set_priorities(np.array([1]), np.array([7.5]))
    store.evict(0)
    store.flush()
    fill(store, [make_tuple(99)])   # never flushed: lost with the process
    store._conn.close()             # simulate a crash: no flush on the way out
    store._conn = None
    reopened = SQLiteStorage(path, 10)
    assert list(reopened.iter_tuples()) == items[1:]
    assert items[0].key in reopened and make_tuple(99).key not in reopened
    slot = int(np.flatnonzero(reopened.seq == 1)[0])
    assert reopened.priority[slot] == 7.5
    assert sorted(reopened.version[reopened.seq != FREE].tolist()) == [1, 2, 3, 4]
    assert reopened.next_seq == 5
    reopened.close()


def test_sqlite_reopen_with_smaller_capacity_keeps_the_newest(tmp_path):
    """Reopening with less capacity evicts the oldest stored tuples."""
    path = tmp_path / "b.sqlite3"
    store = SQLiteStorage(path, 10)
    items = [make_tuple(i) for i in range(6)]
    fill(store, items)
    store.close()
    smaller = SQLiteStorage(path, 4, dedup_horizon=10)
    assert list(smaller.iter_tuples()) == items[2:]
    assert len(smaller) == 4 and items[0].key in smaller
    smaller.close()


def test_sqlite_batch_larger_than_capacity_keeps_evicted_keys(tmp_path):
    """Tuples evicted within the batch that added them (queued, never inserted with a payload)
    are still deduplicated, before and after a reopen; the newest are stored."""
    from nextstate.buffers import ReplayBuffer

    path = tmp_path / "b.sqlite3"
    items = [make_tuple(i) for i in range(10)]
    rb = ReplayBuffer(SQLiteStorage(path, 4, dedup_horizon=10))
    assert rb.extend(items) == 10
    assert [t.interaction_id for t in rb.iter_tuples()] == [t.interaction_id for t in items[6:]]
    assert rb.extend(items) == 0
    rb.close()
    reopened = ReplayBuffer(SQLiteStorage(path, 4, dedup_horizon=10))
    assert list(reopened.iter_tuples()) == items[6:]
    assert reopened.extend(items) == 0 and all(t.key in reopened for t in items)
    reopened.close()


def test_sqlite_new_file_uses_large_pages(tmp_path):
    """A new buffer file gets PAGE_SIZE pages; an existing file keeps its own page size."""
    import sqlite3
    from contextlib import closing

    from nextstate.buffers.sqlite_storage import PAGE_SIZE

    def page_size(path):
        with closing(sqlite3.connect(path)) as conn:
            return conn.execute("PRAGMA page_size").fetchone()[0]

    path = tmp_path / "b.sqlite3"
    SQLiteStorage(path, 4).close()
    assert page_size(path) == PAGE_SIZE
    old = tmp_path / "old.sqlite3"
    with closing(sqlite3.connect(old)) as conn:
        conn.execute("PRAGMA page_size=4096")
        # A buffer of the first schema (a database of other tables is refused: not a buffer).
        conn.execute("CREATE TABLE tuples (seq INTEGER PRIMARY KEY, key TEXT NOT NULL UNIQUE, "
                     "source TEXT NOT NULL, version INTEGER NOT NULL, priority REAL NOT NULL, "
                     "payload BLOB)")
    store = SQLiteStorage(old, 4)
    fill(store, [make_tuple(1)])
    store.close()
    assert page_size(old) == 4096
    reopened = SQLiteStorage(old, 4)
    assert list(reopened.iter_tuples()) == [make_tuple(1)]
    reopened.close()

"""ReplayBuffer and BufferSet: dedup, routing, flush/reopen and checkpoints."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nextstate.buffers import BufferSet, BufferSpec, ReplayBuffer
from nextstate.buffers.memory_storage import MemoryStorage

from .conftest import make_tuple

SPECS = [
    BufferSpec("evaluative", kinds=("evaluative",), capacity=50, sampler="prioritized",
               eviction="lowest_priority", source_quotas={"tool": 0.5}, seed=1),
    BufferSpec("directive", kinds=("directive",), capacity=50, seed=2),
    BufferSpec("all", capacity=20, max_staleness=5, dedup_horizon=100, seed=3),
]


def mixed(n, start=0):
    """n tuples cycling through kinds and sources, with versions."""
    kinds, sources = ["evaluative", "directive", "preference"], ["tool", "user", "terminal"]
    return [make_tuple(i, kind=kinds[i % 3], source=sources[(i // 3) % 3],
                       reward=math.sin(i), version=f"v{i // 10}")
            for i in range(start, start + n)]


def test_duplicates_never_enter_twice():
    """Re-delivered tuples, within a batch or across batches, are stored once."""
    rb = ReplayBuffer(MemoryStorage(100))
    items = mixed(10)
    assert rb.extend(items + items[:4]) == 10
    assert rb.extend(items) == 0
    assert not rb.add(items[3])
    assert len(rb) == 10 and all(t.key in rb for t in items)


def test_routing_by_kind():
    """Each tuple goes to every buffer whose kinds include it."""
    bufs = BufferSet.open(None, SPECS)
    assert bufs.extend(mixed(30)) == 10 + 10 + 30   # "all" stores 30, then holds 20
    assert {t.kind for t in bufs.buffers["evaluative"].iter_tuples()} == {"evaluative"}
    assert len(bufs.buffers["directive"]) == 10 and len(bufs.buffers["all"]) == 20


def test_reopen_gives_back_flushed_tuples_and_keeps_deduplicating(tmp_path):
    """After flush and reopen, every flushed tuple is back and re-deliveries are refused."""
    with BufferSet.open(tmp_path, SPECS) as bufs:
        bufs.extend(mixed(30))
        bufs.flush()
        before = {name: list(rb.iter_tuples()) for name, rb in bufs.buffers.items()}
    with BufferSet.open(tmp_path, SPECS) as bufs:
        assert {name: list(rb.iter_tuples()) for name, rb in bufs.buffers.items()} == before
        assert bufs.extend(mixed(30)) == 0
        batch = bufs.buffers["evaluative"].sample(16, current_version=2)
        assert len(batch) == 16 and all(t.kind == "evaluative" for t in batch.tuples)


def test_priority_updates_survive_reopen(tmp_path):
    """Trainer priority updates are flushed and rebuilt into the sum tree on open."""
    spec = [BufferSpec("e", kinds=("evaluative",), sampler="prioritized", alpha=1.0,
                       priority_eps=1e-9, capacity=8, seed=0)]
    with BufferSet.open(tmp_path, spec) as bufs:
        rb = bufs.buffers["e"]
        rb.extend([make_tuple(i, reward=1.0) for i in range(4)])
        slots = np.arange(4)
        rb.update_priorities(slots, [0.0, 0.0, 5.0, 0.0])
    with BufferSet.open(tmp_path, spec) as bufs:
        batch = bufs.buffers["e"].sample(64)
        assert {t.interaction_id for t in batch.tuples} == {make_tuple(2).interaction_id}


def test_update_priorities_rejects_bad_input():
    """Negative, NaN or misaligned priorities raise instead of corrupting the tree."""
    rb = ReplayBuffer(MemoryStorage(8))
    rb.extend(mixed(3))
    for indices, priorities in [([0], [-1.0]), ([0], [np.nan]), ([0, 1], [1.0]), ([9], [1.0])]:
        with pytest.raises(ValueError):
            rb.update_priorities(indices, priorities)


def test_sampling_an_empty_buffer_raises():
    """An empty buffer cannot be sampled."""
    with pytest.raises(ValueError, match="empty"):
        ReplayBuffer(MemoryStorage(8)).sample(4)


def test_state_dict_round_trip_in_memory():
    """A buffer set restored from state_dict samples the same batch as the original."""
    bufs = BufferSet.open(None, SPECS)
    bufs.extend(mixed(60))
    rb = bufs.buffers["evaluative"]
    rb.update_priorities(np.arange(5), np.linspace(0, 2, 5))
    state = bufs.state_dict()
    other = BufferSet.open(None, SPECS)
    other.load_state_dict(state)
    for name in bufs.buffers:
        a = bufs.buffers[name].sample(8, current_version=6)
        b = other.buffers[name].sample(8, current_version=6)
        assert a.tuples == b.tuples
        np.testing.assert_array_equal(a.indices, b.indices)
        np.testing.assert_allclose(a.weights, b.weights)


def test_state_dict_restores_layout_over_the_sqlite_file(tmp_path):
    """Loading a checkpoint over a reopened durable buffer restores slots and priorities."""
    spec = [BufferSpec("e", sampler="prioritized", capacity=10, seed=0)]
    with BufferSet.open(tmp_path, spec) as bufs:
        rb = bufs.buffers["e"]
        rb.extend(mixed(15))              # wraps: slots no longer in seq order
        rb.update_priorities(np.arange(10), np.arange(10.0))
        state = bufs.state_dict()
        expected = rb.sample(32).indices
    with BufferSet.open(tmp_path, spec) as bufs:
        bufs.load_state_dict(state)
        rb = bufs.buffers["e"]
        np.testing.assert_array_equal(rb.storage.seq, state["e"]["storage"]["seq"])
        np.testing.assert_array_equal(rb.storage.priority, np.arange(10.0))
        np.testing.assert_array_equal(rb.sample(32).indices, expected)


def test_dedup_key_is_interaction_extractor_and_kind(tmp_path):
    """Only (interaction_id, extractor, kind) makes a duplicate, in memory and on SQLite."""
    first = make_tuple(1)
    twin = make_tuple(1, reward=0.5, source="user")  # same key, other content
    other_extractor = make_tuple(1, extractor="other")
    other_kind = make_tuple(1, kind="directive")
    for rb in (ReplayBuffer(MemoryStorage(10)),
               ReplayBuffer.from_spec(BufferSpec("b", capacity=10), tmp_path)):
        assert rb.extend([first, twin, other_extractor, other_kind]) == 3
        assert rb.extend([twin]) == 0
        assert list(rb.iter_tuples()) == [first, other_extractor, other_kind]
        rb.close()


def test_sqlite_key_column_is_the_encoded_key_however_written(tmp_path):
    """Tuples written after a dedup look-up (which encodes their keys once) and tuples written
    straight to the storage store the same key text."""
    import sqlite3

    from nextstate.buffers.sqlite_storage import encode_key

    rb = ReplayBuffer.from_spec(BufferSpec("b", capacity=10), tmp_path)
    batch = [make_tuple(i) for i in range(3)]
    rb.extend(batch)
    direct = make_tuple(3)
    rb.storage.write(rb.storage.free_slot(), direct, priority=1.0, version=-1)
    rb.close()
    with sqlite3.connect(tmp_path / "b.sqlite3") as db:
        keys = [row[0] for row in db.execute("SELECT key FROM tuples ORDER BY seq")]
    assert keys == [encode_key(t.key) for t in [*batch, direct]]


def test_a_buffer_of_several_kinds_stores_them_in_arrival_order():
    """Tuples of different kinds routed to one buffer keep the order they came in, and a
    buffer of one kind gets exactly its kind."""
    bufs = BufferSet.open(None, [BufferSpec("evaluative", kinds=("evaluative",)),
                                 BufferSpec("mixed", kinds=("directive", "evaluative")),
                                 BufferSpec("preference", kinds=("preference",))])
    items = mixed(12)
    assert bufs.extend(iter(items)) == 4 + 8 + 4
    assert list(bufs.buffers["mixed"].iter_tuples()) == [
        t for t in items if t.kind in ("directive", "evaluative")]
    assert list(bufs.buffers["evaluative"].iter_tuples()) == [
        t for t in items if t.kind == "evaluative"]
    assert list(bufs.buffers["preference"].iter_tuples()) == [
        t for t in items if t.kind == "preference"]
    assert bufs.extend([]) == 0

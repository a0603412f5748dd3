"""Hypothesis: buffer invariants under random streams of adds, samples and updates."""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nextstate.buffers import BufferSpec, MemoryStorage, ReplayBuffer
from nextstate.buffers.sqlite_storage import SQLiteStorage
from nextstate.buffers.storage import FREE
from nextstate.extractors.types import Message, ScoredTuple

from .conftest import make_tuple

SOURCES = ["tool", "user", "terminal"]

tuples = st.builds(
    lambda i, source, reward, version: make_tuple(
        i, source=source, reward=reward, version=None if version < 0 else f"v{version}"),
    st.integers(0, 60), st.sampled_from(SOURCES),
    st.floats(-1, 1, allow_nan=False), st.integers(-1, 12),
)
operations = st.lists(
    st.one_of(
        st.tuples(st.just("extend"), st.lists(tuples, max_size=12)),
        st.tuples(st.just("sample"), st.integers(1, 16), st.integers(0, 14)),
        st.tuples(st.just("update"), st.integers(1, 8), st.integers(0, 2**31)),
    ),
    max_size=25,
)
specs = st.builds(
    BufferSpec,
    name=st.just("b"),
    capacity=st.integers(1, 12),
    eviction=st.sampled_from(["fifo", "lowest_priority"]),
    source_quotas=st.one_of(st.none(), st.just({"tool": 0.5}), st.just({"user": 0.25})),
    sampler=st.sampled_from(["uniform", "prioritized"]),
    session_group=st.sampled_from([1, 1, 3]),
    max_staleness=st.one_of(st.none(), st.integers(0, 4)),
    staleness_decay=st.sampled_from([1.0, 0.5]),
    dedup_horizon=st.just(1000),
    seed=st.just(0),
)


def check_invariants(rb, spec, added_keys):
    """Capacity, uniqueness, quota and priority invariants of one buffer."""
    store = rb.storage
    stored = list(rb.iter_tuples())
    assert len(stored) == len(rb) <= spec.capacity
    keys = [t.key for t in stored]
    assert len(keys) == len(set(keys))
    assert set(keys) <= added_keys
    assert (store.priority >= 0).all()
    assert (store.priority[store.seq == FREE] == 0).all()
    for source, fraction in (spec.source_quotas or {}).items():
        cap = max(1, int(fraction * spec.capacity))
        assert sum(t.source == source for t in stored) <= cap
    if spec.sampler == "prioritized":
        leaves = rb.sampler.tree.leaves
        assert (leaves >= 0).all() and (leaves[store.seq == FREE] == 0).all()


def run(rb, spec, ops):
    """Apply the operations, checking invariants after each; returns every key added."""
    added: set = set()
    rng = np.random.default_rng(0)
    for op in ops:
        if op[0] == "extend":
            new = {t.key for t in op[1]} - added
            before = len(rb)
            stored = rb.extend(op[1])
            assert stored == len(new)
            assert len(rb) == min(spec.capacity, len(rb)) and len(rb) >= min(before, 1)
            added |= new
        elif op[0] == "sample" and len(rb):
            try:
                batch = rb.sample(op[1], current_version=op[2], rng=rng)
            except ValueError as error:       # everything too stale
                assert "stale" in str(error) and spec.max_staleness is not None
                continue
            assert len(batch.tuples) == op[1] == batch.indices.size == batch.weights.size
            assert ((batch.indices >= 0) & (batch.indices < spec.capacity)).all()
            assert (rb.storage.seq[batch.indices] != FREE).all()
            assert [t.key for t in batch.tuples] == [
                t.key for t in rb.storage.get(batch.indices)]
            assert (batch.weights > 0).all() and (batch.weights <= 1.0).all()
        elif op[0] == "update" and len(rb):
            local = np.random.default_rng(op[2])
            slots = rb.storage.occupied_slots()
            chosen = local.choice(slots, size=op[1])
            rb.update_priorities(chosen, local.random(op[1]) * 3)
        check_invariants(rb, spec, added)
    return added


def same_state(a, b):
    """Deep equality of state dicts holding numpy arrays."""
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same_state(a[k], b[k]) for k in a)
    if isinstance(a, np.ndarray | list | tuple) and not isinstance(a, str):
        return np.array_equal(np.asarray(a, dtype=object), np.asarray(b, dtype=object))
    return a == b


@settings(max_examples=120, deadline=None)
@given(spec=specs, ops=operations)
def test_in_memory_invariants_and_state_round_trip(spec, ops):
    """Never above capacity or quota, no duplicate key, valid indices, state round-trips."""
    rb = ReplayBuffer.from_spec(spec, None)
    run(rb, spec, ops)
    state = rb.state_dict()
    other = ReplayBuffer.from_spec(spec, None)
    other.load_state_dict(state)
    assert same_state(other.state_dict(), state)
    assert list(other.iter_tuples()) == list(rb.iter_tuples())


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=specs, ops=operations)
def test_durable_invariants_and_reopen(spec, ops):
    """The same invariants on SQLite; a reopened buffer holds exactly what was flushed."""
    with tempfile.TemporaryDirectory() as tmp:
        rb = ReplayBuffer.from_spec(spec, Path(tmp))
        added = run(rb, spec, ops)
        rb.flush()
        stored = list(rb.iter_tuples())
        priorities = {t.key: p for t, p in zip(
            rb.storage.get(rb.storage.occupied_slots()),
            rb.storage.priority[rb.storage.occupied_slots()], strict=True)}
        rb.close()
        reopened = ReplayBuffer.from_spec(spec, Path(tmp))
        assert list(reopened.iter_tuples()) == stored
        slots = reopened.storage.occupied_slots()
        assert {t.key: p for t, p in zip(reopened.storage.get(slots),
                                         reopened.storage.priority[slots],
                                         strict=True)} == priorities
        assert reopened.extend(make_tuple(int(k[0].split("#")[1])) for k in added) == 0
        check_invariants(reopened, spec, added)
        reopened.close()


def contexted_tuple(i: int, session: int, branch: int, length: int, fresh: bool) -> ScoredTuple:
    """A tuple of one of three sessions whose context is a prefix of one of its histories.

    Histories of a session share their first two messages and differ from the third on
    (branches); ``fresh`` builds equal messages as new objects instead of reusing them.
    """
    make = Message if fresh else _message
    context = tuple(make("user" if k % 2 else "assistant",
                         f"s{session} b{branch if k >= 2 else 0} m{k}") for k in range(length))
    return ScoredTuple(f"s{session}#{i}", f"s{session}", "tool_result", "evaluative", "tool",
                       context, Message("assistant", f"action {i}"), reward=(i % 5) / 5)


@functools.cache
def _message(role: str, content: str) -> Message:
    return Message(role, content)  # type: ignore[arg-type]


contexted = st.builds(contexted_tuple, st.integers(0, 40), st.integers(0, 2),
                      st.integers(0, 2), st.integers(0, 8), st.booleans())
context_ops = st.lists(
    st.one_of(
        st.tuples(st.just("extend"), st.lists(contexted, max_size=8)),
        st.tuples(st.just("flush")),
        st.tuples(st.just("check")),
        st.tuples(st.just("reopen")),
    ),
    max_size=20,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(capacity=st.integers(1, 8), cache=st.integers(1, 3), ops=context_ops)
def test_durable_contexts_equal_memory_and_stay_bounded(capacity, cache, ops):
    """Sessions growing, branching and going back, through a tiny history cache and
    reopens: SQLite holds exactly what memory holds, and no message outlives its tuples."""
    with tempfile.TemporaryDirectory() as tmp:
        def open_durable():
            return ReplayBuffer(SQLiteStorage(Path(tmp) / "b.sqlite3", capacity, 1000,
                                              context_cache_sessions=cache))

        durable, memory = open_durable(), ReplayBuffer(MemoryStorage(capacity, 1000))
        for op in ops:
            if op[0] == "extend":
                assert durable.extend(op[1]) == memory.extend(op[1])
            elif op[0] == "flush":
                durable.flush()
            elif op[0] == "check":
                assert list(durable.iter_tuples()) == list(memory.iter_tuples())
            else:
                durable.close()
                durable = open_durable()
        assert list(durable.iter_tuples()) == list(memory.iter_tuples())
        slots = durable.storage.occupied_slots()
        assert durable.storage.get(slots) == memory.storage.get(
            np.array([int(np.flatnonzero(memory.storage.seq == seq)[0])
                      for seq in durable.storage.seq[slots].tolist()]))
        durable.flush()
        db = durable.storage._db
        assert db.execute(
            "SELECT count(*) FROM chains WHERE chain NOT IN (SELECT chain FROM tuples"
            " WHERE payload IS NOT NULL AND chain IS NOT NULL)").fetchone() == (0,)
        assert db.execute("SELECT count(*) FROM segments WHERE chain NOT IN"
                          " (SELECT chain FROM chains)").fetchone() == (0,)
        durable.close()

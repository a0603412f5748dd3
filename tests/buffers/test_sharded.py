"""ShardedBuffer: the shards of one buffer (one per ``--workers`` worker) sampled as one."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from nextstate.buffers import BufferSpec, ReplayBuffer, ShardedBuffer
from nextstate.extractors.types import Message, ScoredTuple


def shard(name: str, n: int, sampler: str = "uniform", version: str | None = None,
          priority: float | None = None, **spec) -> ReplayBuffer:
    buffer = ReplayBuffer.from_spec(
        BufferSpec("evaluative", sampler=sampler, seed=0, max_staleness=2, **spec), None)
    buffer.extend([ScoredTuple(f"{name}#{i}", name, "x", "evaluative", "tool", (),
                               Message("assistant", f"{name} {i}"), reward=1.0,
                               policy_version=version) for i in range(n)])
    if priority is not None:
        buffer.update_priorities(np.arange(n), np.full(n, priority))
    return buffer


def test_draws_follow_the_shards_sizes():
    """A shard of 300 tuples gives about three times the draws of one of 100."""
    both = ShardedBuffer([shard("a", 100), shard("b", 300)], seed=1)
    drawn = Counter(t.session_id for _ in range(200) for t in both.sample(32).tuples)
    assert sum(drawn.values()) == 200 * 32
    assert drawn["b"] / drawn["a"] == pytest.approx(3.0, rel=0.1)


def test_uniform_draws_follow_the_sampleable_tuples_not_the_stored_ones():
    """Shard "a" stores 100 tuples but only 10 are fresh enough: it draws as often as "b"."""
    a = shard("a", 90, version="v1")
    a.extend([ScoredTuple(f"a#fresh{i}", "a", "x", "evaluative", "tool", (),
                          Message("assistant", f"fresh {i}"), reward=1.0, policy_version="v9")
              for i in range(10)])
    both = ShardedBuffer([a, shard("b", 10, version="v9")], seed=2)
    drawn = Counter(t.session_id for _ in range(200) for t in both.sample(32, 9).tuples)
    assert drawn["a"] / drawn["b"] == pytest.approx(1.0, rel=0.1)


def test_prioritized_draws_follow_the_shards_priority_mass():
    """Equal sizes, priorities 9 vs 1 with alpha 1: "a" is drawn about 9 times as often."""
    both = ShardedBuffer([shard("a", 20, "prioritized", priority=9.0, alpha=1.0),
                          shard("b", 20, "prioritized", priority=1.0, alpha=1.0)], seed=3)
    drawn = Counter(t.session_id for _ in range(200) for t in both.sample(32).tuples)
    expected = (9.0 + 1e-3) / (1.0 + 1e-3)
    assert drawn["a"] / drawn["b"] == pytest.approx(expected, rel=0.1)


@pytest.mark.parametrize("group", [1, 3])
def test_prioritized_weights_are_one_buffers(group):
    """The importance weights are ``(N P(i)) ** -beta`` over all shards' tuples, normalised
    by the batch's largest: as one buffer holding every shard's tuples would give them."""
    priorities = {"a": 5.0, "b": 0.5, "c": 2.0}
    sizes = {"a": 30, "b": 10, "c": 5}
    spec = {"alpha": 0.7, "beta": 0.5, "session_group": group}
    both = ShardedBuffer([shard(name, sizes[name], "prioritized", priority=priorities[name],
                                **spec) for name in "abc"], seed=4)
    masses = {name: (p + 1e-3) ** 0.7 for name, p in priorities.items()}
    total = sum(masses[name] * sizes[name] for name in "abc")
    for _ in range(20):
        batch = both.sample(16)
        # A session's tuples share one priority, so a group's window mean is that mass.
        raw = np.array([(45 * masses[t.session_id] / total) ** -0.5 for t in batch.tuples])
        np.testing.assert_allclose(batch.weights, raw / raw.max(), rtol=1e-9)


def test_shards_must_sample_alike():
    with pytest.raises(ValueError, match="sample alike"):
        ShardedBuffer([shard("a", 2), shard("b", 2, "prioritized")])


def test_priorities_go_back_to_the_shard_each_tuple_came_from():
    shards = [shard("a", 4, "prioritized"), shard("b", 4, "prioritized")]
    both = ShardedBuffer(shards, seed=0)
    batch = both.sample(16)
    both.update_priorities(batch.indices, np.full(16, 7.0))
    for buffer, name in zip(shards, "ab", strict=True):
        slots = {int(i) // 2 for i, t in zip(batch.indices, batch.tuples, strict=True)
                 if t.session_id == name}
        assert slots, name
        priorities = buffer.storage.priority
        assert all(priorities[slot] == 7.0 for slot in slots)
        assert all(priorities[slot] != 7.0 for slot in set(range(4)) - slots)


def test_a_shard_with_nothing_sampleable_hands_its_draws_to_the_others():
    """Shard "a" holds only tuples too stale to sample: every draw comes from "b"."""
    both = ShardedBuffer([shard("a", 100, version="v1"), shard("b", 10, version="v9")],
                         seed=0)
    batch = both.sample(8, current_version=9)
    assert len(batch.tuples) == 8 and {t.session_id for t in batch.tuples} == {"b"}
    with pytest.raises(ValueError, match="no shard"):
        ShardedBuffer([shard("a", 5, version="v1")]).sample(4, current_version=9)
    with pytest.raises(ValueError, match="no shard"):
        ShardedBuffer([shard("a", 0), shard("b", 0)]).sample(4)

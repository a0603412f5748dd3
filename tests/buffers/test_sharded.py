"""ShardedBuffer: the shards of one buffer (one per ``--workers`` worker) sampled as one."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from nextstate.buffers import BufferSpec, ReplayBuffer, ShardedBuffer
from nextstate.extractors.types import Message, ScoredTuple


def shard(name: str, n: int, sampler: str = "uniform", version: str | None = None
          ) -> ReplayBuffer:
    buffer = ReplayBuffer.from_spec(
        BufferSpec("evaluative", sampler=sampler, seed=0, max_staleness=2), None)
    buffer.extend([ScoredTuple(f"{name}#{i}", name, "x", "evaluative", "tool", (),
                               Message("assistant", f"{name} {i}"), reward=1.0,
                               policy_version=version) for i in range(n)])
    return buffer


def test_draws_follow_the_shards_sizes():
    """A shard of 300 tuples gives about three times the draws of one of 100."""
    both = ShardedBuffer([shard("a", 100), shard("b", 300)], seed=1)
    drawn = Counter(t.session_id for _ in range(200) for t in both.sample(32).tuples)
    assert sum(drawn.values()) == 200 * 32
    assert drawn["b"] / drawn["a"] == pytest.approx(3.0, rel=0.1)


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

"""The shards of one buffer (``nextstate run --workers``: one per worker) sampled as one.

Each worker of a consumer group stores the tuples of its partitions in its own buffer, so
the deployment's ``evaluative`` buffer is N files. :class:`ShardedBuffer` lets a trainer
draw from all of them as from one: a batch's draws are split over the shards in
proportion to the tuples each holds (multinomially, so every stored tuple is about as
likely as in one buffer of them all), each shard draws its share with its own sampler, and
the indices say which shard a tuple came from, so priorities go back to it.

A session lives in one shard (records are keyed by session), so ``session_group`` draws
stay whole. Importance weights are each shard's own (for prioritized shards, normalised
within the shard's part of the batch): with shards of like content that is close to the
weights of one buffer.

Example:
    >>> from nextstate.buffers import BufferSpec, ReplayBuffer
    >>> from nextstate.extractors.types import Message, ScoredTuple
    >>> def shard(name, n):
    ...     buffer = ReplayBuffer.from_spec(BufferSpec("evaluative", seed=0), None)
    ...     buffer.extend([ScoredTuple(f"{name}#{i}", name, "x", "evaluative", "tool", (),
    ...                                Message("assistant", "a"), reward=1.0)
    ...                    for i in range(n)])
    ...     return buffer
    >>> both = ShardedBuffer([shard("a", 10), shard("b", 30)], seed=0)
    >>> batch = both.sample(8)
    >>> len(both), len(batch.tuples), sorted({t.session_id for t in batch.tuples})
    (40, 8, ['a', 'b'])
    >>> both.update_priorities(batch.indices, [1.0] * 8)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from nextstate.buffers.replay_buffer import ReplayBuffer, SampleBatch


class ShardedBuffer:
    """Several :class:`ReplayBuffer` shards sampled as one (the trainer's ``Sampleable``).

    Args:
        shards: the buffers, each holding its own tuples.
        seed: seed of the split of each batch over the shards (None: from entropy).
    """

    def __init__(self, shards: Sequence[ReplayBuffer], seed: int | None = None) -> None:
        if not shards:
            raise ValueError("a sharded buffer needs at least one shard")
        self.shards = list(shards)
        self._rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return sum(len(shard) for shard in self.shards)

    def sample(self, batch_size: int, current_version: int | None = None) -> SampleBatch:
        """Draw ``batch_size`` tuples over the shards, in proportion to their sizes; a shard
        with nothing sampleable (every tuple too stale) hands its draws to the others.

        Raises:
            ValueError: if no shard has anything sampleable.
        """
        count = len(self.shards)
        live = [i for i, shard in enumerate(self.shards) if len(shard)]
        tuples: list = []
        indices: list[np.ndarray] = []
        weights: list[np.ndarray] = []
        need = batch_size
        while need > 0 and live:
            sizes = np.array([len(self.shards[i]) for i in live], dtype=np.float64)
            for i, draws in zip(live[:], self._rng.multinomial(need, sizes / sizes.sum()),
                                strict=True):
                if not draws:
                    continue
                try:
                    batch = self.shards[i].sample(int(draws), current_version=current_version)
                except ValueError:  # nothing sampleable here: its draws go to the others
                    batch = None
                if batch is None or not len(batch.tuples):
                    live.remove(i)
                    continue
                tuples += batch.tuples
                indices.append(np.asarray(batch.indices, dtype=np.int64) * count + i)
                weights.append(np.asarray(batch.weights, dtype=np.float64))
            need = batch_size - len(tuples)
        if not tuples:
            raise ValueError("no shard has a sampleable tuple")
        return SampleBatch(tuples, np.concatenate(indices), np.concatenate(weights))

    def update_priorities(self, indices: np.ndarray, priorities: np.ndarray) -> None:
        """New priorities for sampled tuples, each sent back to its shard."""
        indices = np.asarray(indices, dtype=np.int64)
        priorities = np.asarray(priorities, dtype=np.float64)
        count = len(self.shards)
        for i, shard in enumerate(self.shards):
            mine = indices % count == i
            if mine.any():
                shard.update_priorities(indices[mine] // count, priorities[mine])

"""The shards of one buffer (``nextstate run --workers``: one per worker) sampled as one.

Each worker of a consumer group stores the tuples of its partitions in its own buffer, so
the deployment's ``evaluative`` buffer is N files. :class:`ShardedBuffer` lets a trainer
draw from all of them as from one: a batch's draws are split over the shards in
proportion to the sampling mass each holds (multinomially: uniform shards by their
sampleable tuples, prioritized ones by their summed priority masses), so every tuple is as
likely as in one buffer of them all. Each shard draws its share with its own sampler, and
the indices say which shard a tuple came from, so priorities go back to it.

A session lives in one shard (records are keyed by session), so ``session_group`` draws
stay whole. Importance weights are one buffer's: each shard's are rescaled from its own
``N_k`` and mass to the whole's, then normalised by the batch's largest.

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
        kinds = {type(shard.sampler).__name__ for shard in shards}
        if len(kinds) > 1:  # their masses (counts, priorities) would not compare
            raise ValueError(f"the shards of one buffer sample alike, not {sorted(kinds)}")
        self.shards = list(shards)
        self._rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return sum(len(shard) for shard in self.shards)

    def sample(self, batch_size: int, current_version: int | None = None) -> SampleBatch:
        """Draw ``batch_size`` tuples over the shards, in proportion to the sampling mass
        each holds; a shard with nothing sampleable (every tuple too stale) hands its draws
        to the others.

        Raises:
            ValueError: if no shard has anything sampleable.
        """
        count = len(self.shards)
        stored = sum(len(shard) for shard in self.shards)
        live = list(range(count))
        tuples: list = []
        indices: list[np.ndarray] = []
        parts: list[tuple[np.ndarray, float]] = []  # (weights, what they were divided by)
        need = batch_size
        while need > 0:
            masses = np.array([self._mass(i, current_version) for i in live])
            live = [i for i, mass in zip(live, masses.tolist(), strict=True) if mass > 0]
            if not live:
                break
            masses = masses[masses > 0]
            total = float(masses.sum())
            for i, draws in zip(live[:], self._rng.multinomial(need, masses / total),
                                strict=True):
                if not draws:
                    continue
                shard = self.shards[i]
                try:
                    batch = shard.sample(int(draws), current_version=current_version)
                except ValueError:  # nothing sampleable after all (late stale arrivals)
                    live.remove(i)
                    continue
                tuples += batch.tuples
                indices.append(np.asarray(batch.indices, dtype=np.int64) * count + i)
                parts.append((np.asarray(batch.weights, dtype=np.float64),
                              self._global_scale(shard, stored, total)))
            need = batch_size - len(tuples)
        if not tuples:
            raise ValueError("no shard has a sampleable tuple")
        # One buffer's weights: (N P(i)) ** -beta over all shards, normalised by the batch's
        # largest (before staleness, which the shards' weights already carry).
        largest = max(scale for _, scale in parts)
        weights = np.concatenate([w * (scale / largest) for w, scale in parts])
        return SampleBatch(tuples, np.concatenate(indices), weights)

    def _mass(self, i: int, current_version: int | None) -> float:
        shard = self.shards[i]
        return shard.sampler.sampling_mass(shard.storage, current_version) if len(shard) else 0.0

    @staticmethod
    def _global_scale(shard: ReplayBuffer, stored: int, total: float) -> float:
        """The factor taking the shard's last batch of normalised weights to one buffer's
        unnormalised ``(N P(i)) ** -beta``: the shard divided its ``(N_k m_i / M_k) ** -beta``
        by ``weight_scale``; with ``N`` tuples and mass ``M`` in all shards, ``P(i)`` is
        ``m_i / M``, so the factor is ``weight_scale * (N M_k / (N_k M)) ** -beta``."""
        sampler = shard.sampler
        beta = sampler.weight_exponent
        if not beta:
            return sampler.weight_scale
        ratio = stored * sampler.weight_mass / (len(shard) * total)
        return sampler.weight_scale * ratio ** -beta

    def refresh(self) -> None:
        """Read-only shards (``nextstate train`` beside running workers): each takes in
        what its worker committed since."""
        for shard in self.shards:
            shard.refresh()

    def update_priorities(self, indices: np.ndarray, priorities: np.ndarray) -> None:
        """New priorities for sampled tuples, each sent back to its shard."""
        indices = np.asarray(indices, dtype=np.int64)
        priorities = np.asarray(priorities, dtype=np.float64)
        count = len(self.shards)
        for i, shard in enumerate(self.shards):
            mine = indices % count == i
            if mine.any():
                shard.update_priorities(indices[mine] // count, priorities[mine])

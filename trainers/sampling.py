"""What the trainer needs of a replay buffer: sample a weighted batch, update priorities.

``nextstate.buffers`` implements this; :class:`ListBuffer` is a minimal in-memory one for
tests, benchmarks and demos that run without the durable buffers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from nextstate.extractors.types import ScoredTuple


class Batch(Protocol):
    """A sampled batch: the tuples, their buffer indices and importance weights."""

    tuples: Sequence[ScoredTuple]
    indices: np.ndarray
    weights: np.ndarray


@runtime_checkable
class Sampleable(Protocol):
    """A replay buffer the trainer can learn from.

    ``sample`` raises ``ValueError`` (``nextstate.buffers``) or returns an empty batch when
    nothing is sampleable; ``update_priorities`` takes the trainer's per-tuple priorities
    (|advantage|, mean |distillation advantage| or DPO loss) for the sampled indices.
    """

    def sample(self, batch_size: int, current_version: int | None = None) -> Batch: ...

    def update_priorities(self, indices: np.ndarray, priorities: np.ndarray) -> None: ...


@dataclass(frozen=True)
class ListBatch:
    """:class:`Batch` of a :class:`ListBuffer`."""

    tuples: list[ScoredTuple]
    indices: np.ndarray
    weights: np.ndarray


class ListBuffer:
    """Uniform sampling with replacement from a list (priorities are recorded, not used).

    >>> ListBuffer([]).sample(4).tuples
    []
    """

    def __init__(self, tuples: Sequence[ScoredTuple], seed: int = 0) -> None:
        self.tuples = list(tuples)
        self.priorities = np.ones(len(self.tuples))
        self._rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.tuples)

    def sample(self, batch_size: int, current_version: int | None = None) -> ListBatch:
        """``batch_size`` tuples drawn uniformly (empty batch when the buffer is empty)."""
        if not self.tuples:
            return ListBatch([], np.zeros(0, dtype=np.int64), np.zeros(0))
        idx = self._rng.integers(0, len(self.tuples), size=batch_size)
        return ListBatch([self.tuples[i] for i in idx], idx, np.ones(batch_size))

    def update_priorities(self, indices: np.ndarray, priorities: np.ndarray) -> None:
        """Record priorities (kept for inspection in tests)."""
        self.priorities[indices] = priorities

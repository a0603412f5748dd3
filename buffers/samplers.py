"""Samplers: which slots a batch takes, and with what importance weights.

``Sampler.sample(storage, batch_size, ...) -> (indices, weights)`` reads only the storage's
numpy metadata, never payloads (TorchRL's split). Both samplers are staleness-aware: given
the trainer's ``current_version``, a tuple ``s = current - version`` versions old gets its
weight multiplied by ``staleness_decay ** s`` and is dropped from sampling (kept in storage)
once ``s > max_staleness``. Tuples with an unknown version are never stale. Dropping is
sticky: versions are assumed to only grow, so a dropped tuple never becomes fresh again.
"""

from __future__ import annotations

import abc
from typing import Any

import numpy as np

from nextstate.buffers.storage import FREE, Storage
from nextstate.buffers.sumtree import SumTree

_MAX_REDRAWS = 8


class Sampler(abc.ABC):
    """Base: staleness bookkeeping shared by every sampler.

    Args:
        capacity: number of slots of the storage sampled from.
        max_staleness: drop tuples more than this many versions old (None: never).
        staleness_decay: weight multiplier per version of staleness, in (0, 1].
    """

    def __init__(self, capacity: int, max_staleness: int | None = None,
                 staleness_decay: float = 1.0) -> None:
        self.capacity = capacity
        self.max_staleness = max_staleness
        self.staleness_decay = staleness_decay
        self._dropped = np.zeros(capacity, dtype=bool)
        self._any_dropped = False  # lets the hot update path skip a mask
        self._swept_version: int | None = None

    @abc.abstractmethod
    def _draw(self, storage: Storage, n: int, rng: np.random.Generator) -> np.ndarray:
        """Draw ``n`` sampleable slots."""

    @abc.abstractmethod
    def _base_weights(self, storage: Storage, slots: np.ndarray) -> np.ndarray:
        """Importance weights before staleness."""

    @abc.abstractmethod
    def _sampleable_count(self, storage: Storage) -> float:
        """A positive number when there is anything to draw."""

    def on_write(self, storage: Storage, slots: np.ndarray) -> None:
        """New tuples were written into ``slots`` (read their priorities from storage)."""
        self._dropped[slots] = False

    def update_priorities(self, storage: Storage, slots: np.ndarray) -> None:  # noqa: B027
        """The storage's priorities of ``slots`` (all occupied) changed (optional hook)."""

    def rebuild(self, storage: Storage) -> None:  # noqa: B027 - optional hook
        """Derive every index from the storage (after open, or after load_state_dict)."""

    def sample(self, storage: Storage, batch_size: int, *, current_version: int | None,
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Draw ``batch_size`` slots (with replacement) and their importance weights.

        Raises:
            ValueError: when nothing is sampleable (empty, or everything too stale).
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if current_version is not None and self.max_staleness is not None:
            self._sweep(storage, current_version)
        if self._sampleable_count(storage) <= 0:
            raise ValueError("nothing to sample: the buffer is empty or all of it is stale")
        slots = self._draw(storage, batch_size, rng)
        if current_version is not None and self.max_staleness is not None:
            # Tuples written since the last sweep can be stale already (late arrivals).
            for _ in range(_MAX_REDRAWS):
                stale = self._too_stale(storage.version[slots], current_version)
                if not stale.any():
                    break
                self._drop(storage, np.unique(slots[stale]))
                if self._sampleable_count(storage) <= 0:
                    raise ValueError("nothing to sample: all of the buffer is stale")
                slots[stale] = self._draw(storage, int(stale.sum()), rng)
        weights = self._base_weights(storage, slots)
        if current_version is not None and self.staleness_decay < 1.0:
            versions = storage.version[slots]
            staleness = np.where(versions >= 0, np.maximum(current_version - versions, 0), 0)
            weights = weights * self.staleness_decay ** staleness
        return slots, weights

    def _too_stale(self, versions: np.ndarray, current_version: int) -> np.ndarray:
        assert self.max_staleness is not None
        return (versions >= 0) & (current_version - versions > self.max_staleness)

    def _sweep(self, storage: Storage, current_version: int) -> None:
        """Drop every stale slot at once when the version moved (one O(capacity) pass)."""
        if self._swept_version == current_version:
            return
        self._swept_version = current_version
        hw = storage.high_water
        stale = self._too_stale(storage.version[:hw], current_version)
        stale &= storage.seq[:hw] != FREE
        stale &= ~self._dropped[:hw]
        if stale.any():
            self._drop(storage, np.flatnonzero(stale))

    def _drop(self, storage: Storage, slots: np.ndarray) -> None:
        self._dropped[slots] = True
        self._any_dropped = True

    def state_dict(self) -> dict[str, Any]:
        """Configuration, dropped slots and the version of the last staleness sweep."""
        return {
            "max_staleness": self.max_staleness,
            "staleness_decay": self.staleness_decay,
            "dropped": np.flatnonzero(self._dropped),
            "swept_version": self._swept_version,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict` (call after the storage is restored)."""
        self.max_staleness = state["max_staleness"]
        self.staleness_decay = state["staleness_decay"]
        self._swept_version = state["swept_version"]
        self._dropped[:] = False
        self._dropped[np.asarray(state["dropped"], dtype=np.int64)] = True
        self._any_dropped = bool(self._dropped.any())


class UniformSampler(Sampler):
    """Every stored, non-dropped tuple equally likely; weights are 1 (times staleness).

    Draws by rejection over ``[0, high_water)``: a full buffer (the steady state) rejects
    nothing; a sparse one falls back to listing the sampleable slots.

    Example:
        >>> from nextstate.buffers.memory_storage import MemoryStorage
        >>> sampler = UniformSampler(capacity=8)
        >>> sampler.sample(MemoryStorage(8), 4, current_version=None,
        ...                rng=np.random.default_rng(0))
        Traceback (most recent call last):
        ValueError: nothing to sample: the buffer is empty or all of it is stale
    """

    def _sampleable_count(self, storage: Storage) -> float:
        return len(storage) - int(np.count_nonzero(self._dropped[: storage.high_water]))

    def _draw(self, storage: Storage, n: int, rng: np.random.Generator) -> np.ndarray:
        hw = storage.high_water
        ok = (storage.seq[:hw] != FREE) & ~self._dropped[:hw]
        slots = rng.integers(0, hw, size=n)
        good = ok[slots]
        for _ in range(_MAX_REDRAWS):
            if good.all():
                return slots
            redo = np.flatnonzero(~good)
            slots[redo] = rng.integers(0, hw, size=redo.size)
            good[redo] = ok[slots[redo]]
        choices = np.flatnonzero(ok)
        return choices[rng.integers(0, choices.size, size=n)]

    def _base_weights(self, storage: Storage, slots: np.ndarray) -> np.ndarray:
        return np.ones(slots.size, dtype=np.float64)


class PrioritizedSampler(Sampler):
    """Proportional prioritized replay (Schaul et al., 2016) over a numpy :class:`SumTree`.

    A slot's sampling mass is ``(priority + eps) ** alpha``; batches are stratified over
    the total mass. Importance weights are ``(N * P(i)) ** -beta`` normalised by the largest
    in the batch (so they only ever scale the loss down).

    Args:
        capacity: number of slots.
        alpha: priority exponent (0 = uniform).
        beta: importance-weight exponent (1 = full correction).
        eps: added to priorities so that every stored tuple can be drawn.
        max_staleness: see :class:`Sampler`.
        staleness_decay: see :class:`Sampler`.

    Example:
        >>> from nextstate.buffers.memory_storage import MemoryStorage
        >>> from nextstate.extractors.types import Message, ScoredTuple
        >>> store, sampler = MemoryStorage(4), PrioritizedSampler(4, alpha=1.0)
        >>> for i, p in enumerate([0.0, 9.0]):
        ...     t = ScoredTuple(f"s#{i}", "s", "x", "evaluative", "tool", (), Message("assistant"))
        ...     store.write(store.free_slot(), t, priority=p, version=-1)
        >>> sampler.rebuild(store)
        >>> slots, w = sampler.sample(store, 1000, current_version=None,
        ...                           rng=np.random.default_rng(0))
        >>> bool((slots == 1).mean() > 0.99), bool(w.max() == 1.0)
        (True, True)
    """

    def __init__(self, capacity: int, alpha: float = 0.6, beta: float = 0.4,
                 eps: float = 1e-3, max_staleness: int | None = None,
                 staleness_decay: float = 1.0) -> None:
        super().__init__(capacity, max_staleness, staleness_decay)
        self.alpha = alpha
        self.beta = beta
        self.eps = eps
        self._tree = SumTree(capacity)
        self._total = 0.0
        self._strata: dict[int, np.ndarray] = {}

    @property
    def tree(self) -> SumTree:
        """The sum tree of sampling masses (read it, do not write it)."""
        return self._tree

    def _masses(self, priorities: np.ndarray) -> np.ndarray:
        return (priorities + self.eps) ** self.alpha

    def on_write(self, storage: Storage, slots: np.ndarray) -> None:
        super().on_write(storage, slots)
        self._tree.set(slots, self._masses(storage.priority[slots]))

    def update_priorities(self, storage: Storage, slots: np.ndarray) -> None:
        if self._any_dropped:
            slots = slots[~self._dropped[slots]]
        self._tree.set(slots, self._masses(storage.priority[slots]))

    def rebuild(self, storage: Storage) -> None:
        sampleable = (storage.seq != FREE) & ~self._dropped
        masses = np.where(sampleable, self._masses(storage.priority), 0.0)
        self._tree.set_all(masses)

    def _drop(self, storage: Storage, slots: np.ndarray) -> None:
        super()._drop(storage, slots)
        self._tree.set(slots, 0.0)

    def _sampleable_count(self, storage: Storage) -> float:
        # Remembered for _draw and _base_weights of the same call (one sum, not three).
        self._total = self._tree.total if len(storage) else 0.0
        return self._total

    def _draw(self, storage: Storage, n: int, rng: np.random.Generator) -> np.ndarray:
        strata = self._strata.get(n)
        if strata is None:
            strata = self._strata[n] = np.arange(n, dtype=np.float64)
        targets = rng.random(n)
        targets += strata
        targets *= self._total / n
        return self._tree.find(targets)

    def _base_weights(self, storage: Storage, slots: np.ndarray) -> np.ndarray:
        # (N * m_i / total) ** -beta, normalised by the batch maximum (the smallest mass).
        masses = self._tree.masses(slots)
        weights = (masses * (len(storage) / self._total)) ** -self.beta
        weights /= weights.max()
        return weights

    def state_dict(self) -> dict[str, Any]:
        """Base state plus alpha, beta and eps (masses are rebuilt from storage)."""
        return {**super().state_dict(), "alpha": self.alpha, "beta": self.beta,
                "eps": self.eps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore hyper-parameters and dropped slots; then call :meth:`rebuild`."""
        self.alpha, self.beta, self.eps = state["alpha"], state["beta"], state["eps"]
        super().load_state_dict(state)

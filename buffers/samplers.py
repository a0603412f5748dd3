"""Samplers: which slots a batch takes, and with what importance weights.

``Sampler.sample(storage, batch_size, ...) -> (indices, weights)`` reads only the storage's
numpy metadata, never payloads (TorchRL's split). Both samplers are staleness-aware: given
the trainer's ``current_version``, a tuple ``s = current - version`` versions old gets its
weight multiplied by ``staleness_decay ** s`` and is dropped from sampling (kept in storage)
once ``s > max_staleness``. Tuples with an unknown version are never stale. Dropping is
sticky: versions are assumed to only grow, so a dropped tuple never becomes fresh again.

**Session groups** (``session_group = g > 1``): a batch is drawn as groups of up to ``g``
tuples of one session, so that the trainer forwards their shared context once
(``trainers/packing.py``). See :meth:`Sampler.sample` for how a group is made and what it
does to sampling probabilities and importance weights. ``g = 1`` is the plain draw.
"""

from __future__ import annotations

import abc
from typing import Any

import numpy as np

from nextstate.buffers.storage import FREE, Storage
from nextstate.buffers.sumtree import SumTree

_MAX_REDRAWS = 8
_MAX_GROUP_ROUNDS = 64  # rounds of anchors a grouped batch may take before thinning stops


class Sampler(abc.ABC):
    """Base: staleness bookkeeping shared by every sampler.

    Args:
        capacity: number of slots of the storage sampled from.
        max_staleness: drop tuples more than this many versions old (None: never).
        staleness_decay: weight multiplier per version of staleness, in (0, 1].
        session_group: most tuples of one session drawn together (1: independent draws).
    """

    def __init__(self, capacity: int, max_staleness: int | None = None,
                 staleness_decay: float = 1.0, session_group: int = 1) -> None:
        if session_group < 1:
            raise ValueError(f"session_group must be >= 1, got {session_group}")
        self.capacity = capacity
        self.max_staleness = max_staleness
        self.staleness_decay = staleness_decay
        self.session_group = session_group
        self._dropped = np.zeros(capacity, dtype=bool)
        self._any_dropped = False  # lets the hot update path skip a mask
        self._swept_version: int | None = None
        # What the last batch's importance weights were divided by (the largest before
        # staleness), and the sampling mass they were computed from (prioritized): a sharded
        # buffer (``sharded.py``) turns its shards' weights into one buffer's with them.
        self.weight_scale = 1.0
        self.weight_mass = 0.0

    @abc.abstractmethod
    def _draw(self, storage: Storage, n: int, rng: np.random.Generator) -> np.ndarray:
        """Draw ``n`` sampleable slots."""

    @abc.abstractmethod
    def _base_weights(self, storage: Storage, slots: np.ndarray) -> np.ndarray:
        """Importance weights before staleness."""

    @abc.abstractmethod
    def _sampleable_count(self, storage: Storage) -> float:
        """A positive number when there is anything to draw: the total sampling mass."""

    @property
    def weight_exponent(self) -> float:
        """The exponent of ``N P(i)`` in the importance weights (0: weights of 1)."""
        return 0.0

    def sampling_mass(self, storage: Storage, current_version: int | None) -> float:
        """The total mass a draw picks from (uniform: the sampleable tuples; prioritized:
        their summed priority masses), after dropping what is too stale for
        ``current_version``; 0 when nothing is sampleable."""
        if current_version is not None and self.max_staleness is not None:
            self._sweep(storage, current_version)
        return max(self._sampleable_count(storage), 0.0)

    def on_write(self, storage: Storage, slots: np.ndarray) -> None:
        """New tuples were written into ``slots`` (read their priorities from storage)."""
        self._dropped[slots] = False

    def update_priorities(self, storage: Storage, slots: np.ndarray) -> None:  # noqa: B027
        """The storage's priorities of ``slots`` (all occupied) changed (optional hook)."""

    def rebuild(self, storage: Storage) -> None:  # noqa: B027 - optional hook
        """Derive every index from the storage (after open, or after load_state_dict)."""

    def refresh(self, storage: Storage, changed: np.ndarray) -> None:
        """The storage's tuples in ``changed`` slots were replaced (a read-only storage took
        in its writer's changes): they are not dropped as stale until checked again."""
        self._dropped[changed] = False
        self._any_dropped = bool(self._dropped.any())
        self._swept_version = None
        self.rebuild(storage)

    @abc.abstractmethod
    def _group_weights(self, storage: Storage, slots: np.ndarray,
                       ahead: list[np.ndarray]) -> np.ndarray:
        """Importance weights before staleness of a grouped draw (see :meth:`sample`)."""

    def sample(self, storage: Storage, batch_size: int, *, current_version: int | None,
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Draw ``batch_size`` slots (with replacement) and their importance weights.

        With ``session_group = g > 1`` the batch is made of groups, one after the other:

        1. an *anchor* is drawn as with ``g = 1`` (uniform or by priority; stale tuples are
           dropped and redrawn as always);
        2. its session's *ring* is listed: the session's sampleable tuples (stored, not
           dropped, not too stale: a late stale arrival found here is dropped as in step 1)
           in insertion order. With ``g' = min(g, ring size)`` the anchor is kept with
           probability ``1 / g'`` (else the next anchor is tried);
        3. a kept anchor brings its ``g' - 1`` predecessors in the ring, wrapping around to
           the newest: the group is the anchor and the turns before it.

        Why predecessors: turn k's sequence (context and action) is a prefix of every later
        turn's, so a group whose newest tuple is the anchor is forwarded as the anchor's
        sequence alone: ``g'`` tuples for the tokens of one. (Only a group that wraps holds
        newer turns; it is forwarded as the ring's newest.) On 10-turn sessions with
        ``g = 4`` the carrier is 7.9 turns long on average, against 8.8 for the newest of 4
        turns picked at random in the session.

        Why keep an anchor with probability ``1 / g'``: every tuple then lies in the window
        of exactly ``g'`` anchors (itself and its ``g' - 1`` successors in the ring), so per
        anchor drawn, tuple ``i`` enters the batch with probability

            ``q_i = (1 / g') * sum of p_j over i and its g' - 1 successors``

        where ``p`` is the plain sampler's distribution; the ``q_i`` sum to 1 (a batch is,
        in expectation, as many groups as it takes). Uniform: ``q_i = 1 / N`` exactly, as
        without groups, so weights stay 1 (a session shorter than ``g`` is not drawn less
        often for making smaller groups). Prioritized: ``q_i`` is ``p`` averaged over a
        window of the session, and the weights are ``(N q_i) ** -beta`` normalised by the
        batch maximum: the same correction for the distribution actually sampled (with
        ``g = 1``, ``q = p``). The one inexactness: the batch cuts its last group short when
        it fills up, so that group's oldest turns are a little less likely than ``q``.

        ``g = 1`` takes the plain path: the same draws from ``rng``, the same result.

        Raises:
            ValueError: when nothing is sampleable (empty, or everything too stale).
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if current_version is not None and self.max_staleness is not None:
            self._sweep(storage, current_version)
        if self._sampleable_count(storage) <= 0:
            raise ValueError("nothing to sample: the buffer is empty or all of it is stale")
        self.weight_scale = 1.0
        if self.session_group > 1:
            slots, ahead = self._draw_groups(storage, batch_size, current_version, rng)
            weights = self._group_weights(storage, slots, ahead)
        else:
            slots = self._draw_fresh(storage, batch_size, current_version, rng)
            weights = self._base_weights(storage, slots)
        if current_version is not None and self.staleness_decay < 1.0:
            versions = storage.version[slots]
            staleness = np.where(versions >= 0, np.maximum(current_version - versions, 0), 0)
            weights = weights * self.staleness_decay ** staleness
        return slots, weights

    def _draw_fresh(self, storage: Storage, n: int, current_version: int | None,
                    rng: np.random.Generator) -> np.ndarray:
        """Draw ``n`` slots, none of them too stale (late stale arrivals dropped, redrawn)."""
        slots = self._draw(storage, n, rng)
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
        return slots

    def _draw_groups(self, storage: Storage, batch_size: int, current_version: int | None,
                     rng: np.random.Generator) -> tuple[np.ndarray, list[np.ndarray]]:
        """A grouped batch (see :meth:`sample`): its slots, and per group a ``[g', g']``
        array whose row r holds the window of anchors that could have brought slot r."""
        g = self.session_group
        groups: list[np.ndarray] = []
        ahead: list[np.ndarray] = []
        filled = 0
        for round_ in range(_MAX_GROUP_ROUNDS + 1):
            # A candidate anchor brings one tuple in expectation: draw as many as are missing.
            anchors = self._draw_fresh(storage, batch_size - filled, current_version, rng)
            # In random order: groups past the batch's end are left out, and a prioritized
            # draw is stratified (its k-th anchor lies in the k-th slice of the mass), so in
            # drawn order the first slots would be kept more often than the last.
            anchors = anchors[rng.permutation(anchors.size)]
            keys = storage.session[anchors]
            rings = self._rings(storage, keys, current_version)
            sizes = np.array([rings[key].size for key in keys.tolist()], dtype=np.float64)
            # After many rounds (vanishingly rare) every anchor is kept, so the loop ends.
            kept = (rng.random(anchors.size) * np.minimum(sizes, g) < 1.0
                    if round_ < _MAX_GROUP_ROUNDS else np.ones(anchors.size, dtype=bool))
            for anchor, key in zip(anchors[kept].tolist(), keys[kept].tolist(), strict=True):
                ring = rings[key]
                m = ring.size
                size = min(g, m)
                pos = int(np.searchsorted(storage.seq[ring], storage.seq[anchor]))
                offsets = np.arange(size)
                members = (pos - offsets) % m      # the anchor, then the turns before it
                groups.append(ring[members])
                ahead.append(ring[(members[:, None] + offsets[None, :]) % m])
                filled += size
                if filled >= batch_size:
                    slots = np.concatenate(groups)[:batch_size]
                    return slots, ahead
        raise AssertionError("unreachable: the last round keeps every anchor")

    def _rings(self, storage: Storage, keys: np.ndarray, current_version: int | None
               ) -> dict[int, np.ndarray]:
        """Session key -> the session's sampleable slots in insertion order, for the session
        ``keys`` (one pass over the metadata; stale tuples found are dropped)."""
        sessions = storage.session[:storage.high_water]
        keys = np.unique(keys)
        slots = _slots_of(sessions, keys)
        slots = slots[storage.seq[slots] != FREE]
        if self._any_dropped:
            slots = slots[~self._dropped[slots]]
        if current_version is not None and self.max_staleness is not None:
            stale = self._too_stale(storage.version[slots], current_version)
            if stale.any():
                self._drop(storage, slots[stale])
                slots = slots[~stale]
        slots = slots[np.lexsort((storage.seq[slots], sessions[slots]))]
        lows = np.searchsorted(sessions[slots], keys).tolist()
        highs = [*lows[1:], slots.size]
        return {key: slots[lo:hi] for key, lo, hi in zip(keys.tolist(), lows, highs, strict=True)}

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
            "session_group": self.session_group,
            "dropped": np.flatnonzero(self._dropped),
            "swept_version": self._swept_version,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict` (call after the storage is restored)."""
        self.max_staleness = state["max_staleness"]
        self.staleness_decay = state["staleness_decay"]
        self.session_group = int(state.get("session_group", self.session_group))
        self._swept_version = state["swept_version"]
        self._dropped[:] = False
        self._dropped[np.asarray(state["dropped"], dtype=np.int64)] = True
        self._any_dropped = bool(self._dropped.any())


def _slots_of(sessions: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """``np.flatnonzero(np.isin(sessions, keys))`` in one pass over ``sessions`` instead of
    one per key: a table of the keys' low 16 bits picks the candidates (one in 65,536 of the
    others passes), which are then compared exactly. It runs under the buffer lock: a
    grouped batch from 1M tuples took 14 ms with ``np.isin``, 5.7 now (``bench_scaling.py``)."""
    table = np.zeros(1 << 16, dtype=bool)
    table[keys & 0xFFFF] = True
    candidates = np.flatnonzero(table[sessions & 0xFFFF])
    return candidates[np.isin(sessions[candidates], keys)]


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

    def _group_weights(self, storage: Storage, slots: np.ndarray,
                       ahead: list[np.ndarray]) -> np.ndarray:
        # Grouped uniform draws are still uniform per tuple (see Sampler.sample).
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
        session_group: see :class:`Sampler`.

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
                 staleness_decay: float = 1.0, session_group: int = 1) -> None:
        super().__init__(capacity, max_staleness, staleness_decay, session_group)
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

    @property
    def weight_exponent(self) -> float:
        return self.beta

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
        return self._weights(storage, self._tree.masses(slots))

    def _weights(self, storage: Storage, masses: np.ndarray) -> np.ndarray:
        # (N * m_i / total) ** -beta, normalised by the batch maximum (the smallest mass).
        weights = (masses * (len(storage) / self._total)) ** -self.beta
        self.weight_scale, self.weight_mass = float(weights.max()), self._total
        weights /= self.weight_scale
        return weights

    def _group_weights(self, storage: Storage, slots: np.ndarray,
                       ahead: list[np.ndarray]) -> np.ndarray:
        # q_i * total = the mean mass over the window of anchors that could bring slot i.
        # Mates found stale were dropped while grouping: refresh the total first.
        self._sampleable_count(storage)
        masses = np.concatenate([self._tree.masses(window.ravel()).reshape(window.shape)
                                 .mean(axis=1) for window in ahead])[:slots.size]
        return self._weights(storage, masses)

    def state_dict(self) -> dict[str, Any]:
        """Base state plus alpha, beta and eps (masses are rebuilt from storage)."""
        return {**super().state_dict(), "alpha": self.alpha, "beta": self.beta,
                "eps": self.eps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore hyper-parameters and dropped slots; then call :meth:`rebuild`."""
        self.alpha, self.beta, self.eps = state["alpha"], state["beta"], state["eps"]
        super().load_state_dict(state)

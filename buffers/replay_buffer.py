"""ReplayBuffer: a Storage, a Sampler and a Writer composed, plus deduplication."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from nextstate.buffers.memory_storage import MemoryStorage
from nextstate.buffers.priorities import RewardBaselinePriority
from nextstate.buffers.samplers import PrioritizedSampler, Sampler, UniformSampler
from nextstate.buffers.spec import BufferSpec
from nextstate.buffers.sqlite_storage import SnapshotBehind, SQLiteStorage
from nextstate.buffers.storage import Key, Storage
from nextstate.buffers.versions import UNKNOWN_VERSION, parse_policy_version
from nextstate.buffers.writers import EvictingWriter, Writer
from nextstate.extractors.types import ScoredTuple

# Draws of a read-only buffer whose writer evicted drawn tuples: refresh and draw again.
_SNAPSHOT_TRIES = 3


@dataclasses.dataclass(frozen=True, slots=True)
class SampleBatch:
    """One sampled batch.

    Attributes:
        tuples: the sampled tuples (with replacement: a tuple can appear twice).
        indices: their slots, to pass back to :meth:`ReplayBuffer.update_priorities`.
            A slot is reused once its tuple is evicted: an update for a slot written
            over since the sample applies to the new tuple (as in cpprb and TorchRL).
        weights: importance weights (prioritized: ``(N P(i))^-beta / max``, where P(i) is
            the grouped draw's per-tuple probability with ``session_group > 1``) times the
            staleness decay; 1.0 for uniform sampling of fresh tuples.
    """

    tuples: list[ScoredTuple]
    indices: np.ndarray
    weights: np.ndarray

    def __len__(self) -> int:
        return len(self.tuples)


class ReplayBuffer:
    """Stores scored tuples once each, evicts when full, samples batches for trainers.

    Args:
        storage: where tuples live (:class:`MemoryStorage`, :class:`SQLiteStorage`).
        sampler: how batches are drawn (default: uniform).
        writer: where new tuples go (default: FIFO eviction, no quotas).
        priority_fn: initial priority of a new tuple (default:
            :class:`RewardBaselinePriority`).
        seed: seed of the buffer's own generator, used when ``sample`` gets no ``rng``.
        name: for logs and :class:`BufferSet`.

    Example:
        >>> from nextstate.extractors.types import Message, ScoredTuple
        >>> rb = ReplayBuffer(MemoryStorage(100), seed=0)
        >>> t = ScoredTuple("s#1", "s", "tool", "evaluative", "tool", (), Message("assistant"))
        >>> rb.extend([t, t]), rb.add(t), len(rb), t.key in rb
        (1, False, 1, True)
        >>> rb.sample(2).tuples == [t, t]
        True
    """

    def __init__(
        self,
        storage: Storage,
        sampler: Sampler | None = None,
        writer: Writer | None = None,
        priority_fn: RewardBaselinePriority | None = None,
        *,
        seed: int | None = None,
        name: str = "buffer",
    ) -> None:
        self.name = name
        self.storage = storage
        self.sampler = sampler if sampler is not None else UniformSampler(storage.capacity)
        self.writer = writer if writer is not None else EvictingWriter()
        self.priority_fn = priority_fn if priority_fn is not None else RewardBaselinePriority()
        self._rng = np.random.default_rng(seed)
        self.sampler.rebuild(storage)

    @classmethod
    def from_spec(cls, spec: BufferSpec, state_dir: Path | None,
                  read_only: bool = False) -> ReplayBuffer:
        """Build the buffer a spec describes: durable in ``state_dir``, else in memory.

        ``read_only``: sample the file another process writes (the daemon's), never writing
        it; :meth:`refresh` takes in what it committed since.
        """
        storage: Storage
        if state_dir is None:
            storage = MemoryStorage(spec.capacity, spec.dedup_horizon)
        else:
            storage = SQLiteStorage(state_dir / f"{spec.name}.sqlite3", spec.capacity,
                                    spec.dedup_horizon, spec.synchronous,
                                    read_only=read_only)
        sampler: Sampler
        if spec.sampler == "prioritized":
            sampler = PrioritizedSampler(spec.capacity, spec.alpha, spec.beta,
                                         spec.priority_eps, spec.max_staleness,
                                         spec.staleness_decay, spec.session_group)
        else:
            sampler = UniformSampler(spec.capacity, spec.max_staleness, spec.staleness_decay,
                                     spec.session_group)
        writer = EvictingWriter(spec.eviction, spec.source_quotas)
        return cls(storage, sampler, writer, seed=spec.seed, name=spec.name)

    # -- writing -------------------------------------------------------------------------

    def extend(self, tuples: Iterable[ScoredTuple]) -> int:
        """Store the tuples not seen before; returns how many were new.

        A tuple is a duplicate when its :attr:`ScoredTuple.key` is stored, was stored
        within the dedup horizon, or came earlier in the same call.
        """
        items = tuples if type(tuples) is list else list(tuples)
        if not items:
            return 0
        storage = self.storage
        keys = [(t.interaction_id, t.extractor, t.kind) for t in items]  # ScoredTuple.key
        known = storage.known_keys(keys)
        fresh = items
        if known or len(set(keys)) != len(keys):  # else every tuple is new: no filtering
            fresh = []
            for key, item in zip(keys, items, strict=True):
                if key not in known:
                    known.add(key)
                    fresh.append(item)
            if not fresh:
                return 0
        count = len(fresh)
        versions = [UNKNOWN_VERSION if t.policy_version is None
                    else parse_policy_version(t.policy_version) for t in fresh]
        writer = self.writer
        writer.begin(storage, count)
        # A bound __call__: calling the instance itself goes through the slower type slot.
        place, write, priority_fn = writer.place, storage.write, self.priority_fn.__call__
        slots: list[int] = []
        for item, version, remaining in zip(fresh, versions, range(count, 0, -1), strict=True):
            slot = place(storage, item.source, remaining)
            write(slot, item, priority=priority_fn(item), version=version)
            slots.append(slot)
        self.sampler.on_write(storage, np.array(slots, dtype=np.int64))
        return len(fresh)

    def add(self, item: ScoredTuple) -> bool:
        """Store one tuple; False if it was a duplicate."""
        return self.extend([item]) == 1

    def flush(self) -> None:
        """Make every earlier add and priority update durable (no-op in memory)."""
        self.storage.flush()

    # -- sampling ------------------------------------------------------------------------

    def sample_indices(self, batch_size: int, current_version: int | None = None,
                       rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Slots and weights of a batch, without fetching the tuples."""
        return self.sampler.sample(self.storage, batch_size, current_version=current_version,
                                   rng=self._rng if rng is None else rng)

    def sample(self, batch_size: int, current_version: int | None = None,
               rng: np.random.Generator | None = None) -> SampleBatch:
        """Draw a batch (with replacement).

        Args:
            batch_size: number of tuples.
            current_version: the trainer's policy version, for staleness (None: ignore).
            rng: generator to draw with (default: the buffer's own, seeded).

        Raises:
            ValueError: if nothing is sampleable.
        """
        for attempt in range(_SNAPSHOT_TRIES):
            indices, weights = self.sample_indices(batch_size, current_version, rng)
            try:
                return SampleBatch(self.storage.get(indices), indices, weights)
            except SnapshotBehind:  # a read-only buffer whose writer evicted some of them
                if attempt == _SNAPSHOT_TRIES - 1:
                    raise
                self.refresh()
        raise AssertionError("unreachable")

    def refresh(self) -> None:
        """A read-only durable buffer: take in what its writer committed since, and forget
        what it evicted (priorities set here are kept for the tuples still stored)."""
        refresh = getattr(self.storage, "refresh", None)
        if refresh is None:
            raise ValueError(f"{self.name}: only a read-only durable buffer refreshes")
        self.sampler.refresh(self.storage, refresh())

    def update_priorities(self, indices: np.ndarray, priorities: np.ndarray) -> None:
        """Set new raw priorities (e.g. the trainer's per-sample loss) for sampled slots.

        Raises:
            ValueError: on a negative or non-finite priority, an out-of-range index or
                mismatched lengths.
        """
        indices = np.asarray(indices, dtype=np.int64).ravel()
        priorities = np.asarray(priorities, dtype=np.float64).ravel()
        if indices.shape != priorities.shape:
            raise ValueError(f"{indices.size} indices but {priorities.size} priorities")
        if not indices.size:
            return
        if indices.min() < 0 or indices.max() >= self.storage.capacity:
            raise ValueError("index out of range")
        # NaN fails both comparisons, so two reductions check finite and non-negative.
        if not (priorities.min() >= 0.0 and priorities.max() < np.inf):
            raise ValueError("priorities must be finite and >= 0")
        updated = self.storage.set_priorities(indices, priorities)
        self.sampler.update_priorities(self.storage, updated)

    # -- reading -------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.storage)

    def __contains__(self, key: Key) -> bool:
        return key in self.storage

    def iter_tuples(self) -> Iterator[ScoredTuple]:
        """Every stored tuple, oldest first (for export)."""
        return self.storage.iter_tuples()

    # -- lifecycle -----------------------------------------------------------------------

    def close(self) -> None:
        """Close the storage (a durable one flushes first)."""
        self.storage.close()

    def state_dict(self) -> dict[str, Any]:
        """Storage layout, sampler, writer, priority baseline and generator state."""
        return {
            "storage": self.storage.state_dict(),
            "sampler": self.sampler.state_dict(),
            "writer": self.writer.state_dict(),
            "priority_fn": self.priority_fn.state_dict(),
            "rng": self._rng.bit_generator.state,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`; the sampler's index is rebuilt from storage."""
        self.storage.load_state_dict(state["storage"])
        self.writer.load_state_dict(state["writer"])
        self.priority_fn.load_state_dict(state["priority_fn"])
        self.sampler.load_state_dict(state["sampler"])
        self.sampler.rebuild(self.storage)
        self._rng.bit_generator.state = state["rng"]

    def __repr__(self) -> str:
        return (f"ReplayBuffer(name={self.name!r}, len={len(self)}, "
                f"capacity={self.storage.capacity}, storage={type(self.storage).__name__}, "
                f"sampler={type(self.sampler).__name__})")

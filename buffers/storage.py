"""Storage: slot-addressed tuple payloads plus per-slot metadata in numpy.

A storage holds up to ``capacity`` tuples, each in a *slot* (``0..capacity-1``). Slots are
what samplers and writers work with: their metadata (insertion sequence, source, policy
version, priority) lives in flat numpy arrays here, so that sampling, eviction and
staleness never touch payloads; only the tuples a batch actually picks are fetched.

Subclasses keep the payloads and the deduplication keys (:class:`MemoryStorage` in
``memory_storage.py``, :class:`SQLiteStorage` in ``sqlite_storage.py``).
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from nextstate.extractors.types import SOURCES, ScoredTuple

Key = tuple[str, str, str]
FREE = -1
"""``seq`` of an empty slot."""
_SOURCE_CODES = {source: code for code, source in enumerate(SOURCES)}
OTHER_SOURCE = len(SOURCES)
"""Code of a source outside :data:`SOURCES` (never produced by a decoded tuple)."""


def source_code(source: str) -> int:
    """The small integer a source is stored as in the metadata arrays."""
    return _SOURCE_CODES.get(source, OTHER_SOURCE)


def source_name(code: int) -> str:
    """Inverse of :func:`source_code`."""
    return SOURCES[code] if code < OTHER_SOURCE else "other"


def session_key(session_id: str) -> int:
    """The int64 a session id is kept as in the slot metadata: ``hash(session_id)``.

    Salted per process (``PYTHONHASHSEED``), so it is never stored: storages derive it again
    on open or load, and samplers only compare keys for equality (which slots share a
    session), so what they draw does not depend on the salt. ``str`` caches its hash, so
    this costs a few nanoseconds per tuple; two sessions of a buffer share a key with
    probability ~``n**2 / 2**65``.

    >>> session_key("s") == session_key("s") != session_key("t")
    True
    """
    return hash(session_id)


class Storage(abc.ABC):
    """Slots, their metadata, and the bookkeeping every storage shares.

    Attributes:
        capacity: the number of slots.
        seq: per slot, the insertion sequence number of its tuple (:data:`FREE` if empty).
            Sequence numbers grow by one per stored tuple and never repeat, so they give
            FIFO order and a stable identity.
        source: per slot, :func:`source_code` of its tuple's source.
        version: per slot, the parsed policy version (-1 unknown).
        priority: per slot, the raw (non-negative) priority.
        session: per slot, :func:`session_key` of its tuple's session, for samplers that
            draw a session's tuples together (compare for equality only; left as it was
            when a slot is emptied: read it for occupied slots only).
        next_seq: the sequence number the next stored tuple gets.
    """

    def __init__(self, capacity: int, dedup_horizon: int | None = None) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.dedup_horizon = capacity if dedup_horizon is None else dedup_horizon
        self.seq = np.full(capacity, FREE, dtype=np.int64)
        self.source = np.zeros(capacity, dtype=np.int8)
        self.version = np.full(capacity, -1, dtype=np.int64)
        self.priority = np.zeros(capacity, dtype=np.float64)
        self.session = np.zeros(capacity, dtype=np.int64)
        self.source_counts = np.zeros(OTHER_SOURCE + 1, dtype=np.int64)
        # Views of the same memory for the per-tuple paths (write, evict): setting one
        # element through a memoryview costs half what numpy's __setitem__ does, and a
        # read gives a Python int, not a numpy scalar. The arrays are only ever changed in
        # place, so the views stay valid.
        self._seq_view = memoryview(self.seq)
        self._source_view = memoryview(self.source)
        self._version_view = memoryview(self.version)
        self._priority_view = memoryview(self.priority)
        self._session_view = memoryview(self.session)
        self._counts_view = memoryview(self.source_counts)
        self.next_seq = 0
        self._size = 0
        self._high_water = 0
        self._free: list[int] = []

    # -- slots -------------------------------------------------------------------------

    def __len__(self) -> int:
        return self._size

    @property
    def high_water(self) -> int:
        """Slots ``>= high_water`` have never been used: samplers draw below it."""
        return self._high_water

    def free_slot(self) -> int | None:
        """An empty slot to write into, or None when every slot is taken."""
        if self._free:
            return self._free.pop()
        if self._high_water < self.capacity:
            self._high_water += 1
            return self._high_water - 1
        return None

    def occupied_slots(self) -> np.ndarray:
        """Every slot holding a tuple (int64, ascending)."""
        return np.flatnonzero(self.seq[: self._high_water] != FREE)

    def write(self, slot: int, item: ScoredTuple, *, priority: float, version: int) -> None:
        """Store a tuple in an empty slot (taken from :meth:`free_slot`)."""
        seqs = self._seq_view
        if seqs[slot] != FREE:
            raise ValueError(f"slot {slot} is occupied: evict it first")
        seq = self.next_seq
        session = hash(item.session_id)  # session_key, in line: this runs per stored tuple
        self._put(slot, seq, item, priority, version)
        self.next_seq = seq + 1
        self._place(slot, seq, source_code(item.source), version, priority, session)

    def evict(self, slot: int) -> None:
        """Remove a slot's tuple; its key stays deduplicated within the horizon."""
        seq = self._seq_view[slot]
        if seq == FREE:
            raise ValueError(f"slot {slot} is empty")
        self._drop(slot, seq)
        self._counts_view[self._source_view[slot]] -= 1
        self._seq_view[slot] = FREE
        self._priority_view[slot] = 0.0
        self._version_view[slot] = -1
        self._size -= 1
        self._free.append(slot)

    def set_priorities(self, slots: np.ndarray, priorities: np.ndarray) -> np.ndarray:
        """Replace the raw priority of occupied slots (empty ones are ignored).

        Returns:
            the slots that were updated (the occupied ones).
        """
        slots = np.asarray(slots, dtype=np.int64)
        priorities = np.asarray(priorities, dtype=np.float64)
        live = self.seq[slots] != FREE
        if not live.all():
            slots, priorities = slots[live], priorities[live]
        self.priority[slots] = priorities
        self._priorities_changed(slots)
        return slots

    def get(self, slots: np.ndarray) -> list[ScoredTuple]:
        """The tuples in the given (occupied) slots, in order."""
        slots = np.asarray(slots, dtype=np.int64)
        seqs = self.seq[slots]
        if (seqs == FREE).any():
            raise IndexError("cannot fetch an empty slot")
        return self._fetch(slots, seqs)

    def _reset_layout(self) -> None:
        self.seq[:] = FREE
        self.source[:] = 0
        self.version[:] = -1
        self.priority[:] = 0.0
        self.session[:] = 0
        self.source_counts[:] = 0
        self._size = 0
        self._high_water = 0
        self._free = []

    def _place(self, slot: int, seq: int, code: int, version: int, priority: float,
               session: int) -> None:
        """Record metadata of a stored tuple (on write, and when rebuilding a layout)."""
        self._seq_view[slot] = seq
        self._source_view[slot] = code
        self._version_view[slot] = version
        self._priority_view[slot] = priority
        self._session_view[slot] = session
        self._counts_view[code] += 1
        self._size += 1

    def _finish_layout(self) -> None:
        used = np.flatnonzero(self.seq != FREE)
        self._high_water = int(used[-1]) + 1 if used.size else 0
        self._free = np.flatnonzero(self.seq[: self._high_water] == FREE).tolist()[::-1]

    def _layout_state(self) -> dict[str, Any]:
        hw = self._high_water
        return {
            "capacity": self.capacity,
            "dedup_horizon": self.dedup_horizon,
            "next_seq": self.next_seq,
            "seq": self.seq[:hw].copy(),
            "priority": self.priority[:hw].copy(),
        }

    # -- what each storage provides ----------------------------------------------------

    @abc.abstractmethod
    def __contains__(self, key: object) -> bool:
        """Whether a key is deduplicated: stored, or evicted within the horizon."""

    @abc.abstractmethod
    def known_keys(self, keys: Iterable[Key]) -> set[Key]:
        """The subset of ``keys`` that :meth:`__contains__` would accept (one batched look-up)."""

    @abc.abstractmethod
    def iter_tuples(self) -> Iterator[ScoredTuple]:
        """Every stored tuple, oldest first."""

    @abc.abstractmethod
    def flush(self) -> None:
        """Make every earlier write durable (a no-op in memory)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release files; the storage is unusable afterwards."""

    @abc.abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """A checkpoint of the storage (payloads only where they are not on disk)."""

    @abc.abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`."""

    @abc.abstractmethod
    def _put(self, slot: int, seq: int, item: ScoredTuple, priority: float,
             version: int) -> None: ...

    @abc.abstractmethod
    def _drop(self, slot: int, seq: int) -> None: ...

    @abc.abstractmethod
    def _fetch(self, slots: np.ndarray, seqs: np.ndarray) -> list[ScoredTuple]: ...

    def _priorities_changed(self, slots: np.ndarray) -> None:  # noqa: B027 - optional hook
        """Hook: durable storages note which priorities to persist on flush."""

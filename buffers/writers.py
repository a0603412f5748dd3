"""Writers: where a new tuple goes, and which stored tuple makes room for it.

Eviction reads only the storage's numpy metadata. Victims come from *victim streams*:
the next ``k`` candidates of a group (all slots, or one source's) in eviction order,
found with one ``argpartition``; a stream entry is skipped if its slot changed since
(``seq`` differs). FIFO streams stay valid across calls (new tuples are always younger)
and are prefetched; lowest-priority streams are recomputed per :meth:`Writer.begin`
because priorities move. New tuples are always admitted, even with a lower priority
than everything stored: fresh on-policy data is worth more than a ranking says.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np

from nextstate.buffers.storage import FREE, Storage, source_code

_PREFETCH = 4096


class Writer(abc.ABC):
    """Base: picks a slot for each new tuple, evicting when needed."""

    def begin(self, storage: Storage, count: int) -> None:  # noqa: B027 - optional hook
        """A batch of ``count`` new tuples is about to be placed."""

    @abc.abstractmethod
    def place(self, storage: Storage, source: str, remaining: int) -> int:
        """An empty slot for a new tuple from ``source`` (evicting one if needed).

        Args:
            storage: the storage written to.
            source: the new tuple's source.
            remaining: tuples left in this batch, this one included (a prefetch hint).
        """

    @abc.abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """The writer's configuration (it has no other state worth keeping)."""

    @abc.abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`."""


class EvictingWriter(Writer):
    """Bounded writer: FIFO or lowest-priority-first eviction, with per-source quotas.

    A source with a quota (a fraction of capacity) that already holds its share evicts
    one of its own tuples; otherwise, when the storage is full, the victim is the oldest
    (or lowest-priority) tuple overall. Capped sources can never hold more than their
    share, so the rest is always left to the others.

    Args:
        eviction: ``fifo`` or ``lowest_priority``.
        source_quotas: ``{source: fraction of capacity}``; unnamed sources are uncapped.

    Example:
        >>> from nextstate.buffers.memory_storage import MemoryStorage
        >>> from nextstate.extractors.types import Message, ScoredTuple
        >>> store = MemoryStorage(4)
        >>> writer = EvictingWriter("fifo", {"tool": 0.5})
        >>> for i in range(6):
        ...     t = ScoredTuple(f"s#{i}", "s", "x", "evaluative", "tool", (), Message("assistant"))
        ...     writer.begin(store, 1)
        ...     store.write(writer.place(store, t.source, 1), t, priority=1.0, version=-1)
        >>> len(store), [t.interaction_id for t in store.iter_tuples()]
        (2, ['s#4', 's#5'])
    """

    def __init__(self, eviction: Literal["fifo", "lowest_priority"] = "fifo",
                 source_quotas: Mapping[str, float] | None = None) -> None:
        if eviction not in ("fifo", "lowest_priority"):
            raise ValueError(f"unknown eviction {eviction!r}")
        self.eviction = eviction
        self.source_quotas = dict(source_quotas or {})
        self._quota_by_code = {source_code(s): f for s, f in self.source_quotas.items()}
        # group (None = all, else source code) -> (slots, seqs, next position)
        self._streams: dict[int | None, list[Any]] = {}

    def begin(self, storage: Storage, count: int) -> None:
        if self.eviction == "lowest_priority":
            self._streams.clear()

    def place(self, storage: Storage, source: str, remaining: int) -> int:
        if self._quota_by_code:  # no quotas (the default): no source to look up
            code = source_code(source)
            fraction = self._quota_by_code.get(code)
            if fraction is not None:
                cap = max(1, int(fraction * storage.capacity))
                if storage.source_counts[code] >= cap:
                    storage.evict(self._victim(storage, code, remaining))
        slot = storage.free_slot()
        if slot is None:
            storage.evict(self._victim(storage, None, remaining))
            slot = storage.free_slot()
            assert slot is not None
        return slot

    def _victim(self, storage: Storage, group: int | None, remaining: int) -> int:
        for attempt in range(2):
            stream = self._streams.get(group)
            if stream is not None:
                slots, seqs, position = stream
                while position < len(slots):
                    slot, seq = slots[position], seqs[position]
                    position += 1
                    if storage.seq[slot] == seq:
                        stream[2] = position
                        return slot
            if attempt == 0:
                self._streams[group] = self._new_stream(storage, group, remaining)
        raise RuntimeError(f"no tuple to evict for group {group}")  # counts say otherwise

    def _new_stream(self, storage: Storage, group: int | None, remaining: int) -> list[Any]:
        hw = storage.high_water
        live = storage.seq[:hw] != FREE
        if group is not None:
            live &= storage.source[:hw] == group
        candidates = np.flatnonzero(live)
        want = remaining if self.eviction == "lowest_priority" else max(remaining, _PREFETCH)
        k = min(want, candidates.size)
        if self.eviction == "fifo":
            keys = storage.seq[candidates]
            if k < candidates.size:
                candidates = candidates[np.argpartition(keys, k - 1)[:k]]
            order = np.argsort(storage.seq[candidates])
        else:
            keys = storage.priority[candidates]
            if k < candidates.size:
                candidates = candidates[np.argpartition(keys, k - 1)[:k]]
            # Ties in priority go oldest first.
            order = np.lexsort((storage.seq[candidates], storage.priority[candidates]))
        chosen = candidates[order]
        return [chosen.tolist(), storage.seq[chosen].tolist(), 0]

    def state_dict(self) -> dict[str, Any]:
        return {"eviction": self.eviction, "source_quotas": dict(self.source_quotas)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.__init__(state["eviction"], state["source_quotas"])  # type: ignore[misc]

    def describe(self) -> str:
        """A one-line summary for logs."""
        quotas = ", ".join(f"{s}<={f:.0%}" for s, f in self.source_quotas.items())
        return f"{self.eviction}" + (f" ({quotas})" if quotas else "")


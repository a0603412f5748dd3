"""In-memory storage: tuples kept as the Python objects they arrived as (tests, dry runs)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Iterator
from typing import Any

import msgspec
import numpy as np

from nextstate.buffers.storage import FREE, Key, Storage, session_key, source_code
from nextstate.buffers.versions import parse_policy_version
from nextstate.extractors.types import ScoredTuple

_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder(ScoredTuple)


class MemoryStorage(Storage):
    """Slots of :class:`ScoredTuple` references: sampling fetches objects, never copies.

    Deduplication remembers the keys of stored tuples plus those of the last
    ``dedup_horizon`` inserts (an insertion-ordered dict), so memory stays bounded.

    Example:
        >>> from nextstate.extractors.types import Message, ScoredTuple
        >>> store = MemoryStorage(capacity=2)
        >>> t = ScoredTuple("s#1", "s", "tool", "evaluative", "tool", (), Message("assistant"))
        >>> store.write(store.free_slot(), t, priority=1.0, version=-1)
        >>> t.key in store, len(store)
        (True, 1)
    """

    def __init__(self, capacity: int, dedup_horizon: int | None = None) -> None:
        super().__init__(capacity, dedup_horizon)
        self._items: list[ScoredTuple | None] = [None] * capacity
        self._live: dict[Key, int] = {}
        # key -> seq, in insertion (= seq) order. An OrderedDict: dropping the oldest of a
        # plain dict makes the next look at its front walk over the deleted entries, which
        # cost 27 us per stored tuple at capacity 100k, 232 us at 1M, once the buffer is full.
        self._recent: OrderedDict[Key, int] = OrderedDict()

    def __contains__(self, key: object) -> bool:
        return key in self._live or key in self._recent

    def known_keys(self, keys: Iterable[Key]) -> set[Key]:
        return {key for key in keys if key in self._live or key in self._recent}

    def _put(self, slot: int, seq: int, item: ScoredTuple, priority: float,
             version: int) -> None:
        self._items[slot] = item
        self._live[item.key] = slot
        if self.dedup_horizon:
            self._recent[item.key] = seq
            if len(self._recent) > self.dedup_horizon:
                self._recent.popitem(last=False)

    def _drop(self, slot: int, seq: int) -> None:
        item = self._items[slot]
        assert item is not None
        del self._live[item.key]
        self._items[slot] = None

    def _fetch(self, slots: np.ndarray, seqs: np.ndarray) -> list[ScoredTuple]:
        items = self._items
        return [items[slot] for slot in slots.tolist()]  # type: ignore[misc]

    def iter_tuples(self) -> Iterator[ScoredTuple]:
        slots = self.occupied_slots()
        for slot in slots[np.argsort(self.seq[slots])].tolist():
            item = self._items[slot]
            assert item is not None
            yield item

    def flush(self) -> None:
        """Nothing to make durable in memory."""

    def close(self) -> None:
        """Drop every reference."""
        self._items = [None] * self.capacity
        self._live.clear()
        self._recent.clear()

    def state_dict(self) -> dict[str, Any]:
        """Layout, priorities, the msgpack payload of every stored tuple and recent keys.

        Source, version and session key are derived from the payloads on load, not stored.
        """
        state = self._layout_state()
        state["payloads"] = [
            _ENCODER.encode(self._items[slot]) for slot in self.occupied_slots().tolist()
        ]
        state["recent"] = [[*key, seq] for key, seq in self._recent.items()]
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Replace the whole content with a :meth:`state_dict` of the same capacity."""
        if state["capacity"] != self.capacity:
            raise ValueError(f"capacity {state['capacity']} != {self.capacity}")
        self.dedup_horizon = int(state["dedup_horizon"])
        self._reset_layout()
        self._items = [None] * self.capacity
        self._live = {}
        seqs = np.asarray(state["seq"], dtype=np.int64)
        priorities = np.asarray(state["priority"], dtype=np.float64)
        payloads = iter(state["payloads"])
        for slot in np.flatnonzero(seqs != FREE).tolist():
            item = _DECODER.decode(next(payloads))
            self._items[slot] = item
            self._live[item.key] = slot
            self._place(slot, int(seqs[slot]), source_code(item.source),
                        parse_policy_version(item.policy_version), float(priorities[slot]),
                        session_key(item.session_id))
        self._finish_layout()
        self._recent = OrderedDict(((a, b, c), int(seq)) for a, b, c, seq in state["recent"])
        self.next_seq = int(state["next_seq"])

"""A small least-recently-used map, bounded by entry count and by a caller-given size.

The extractor stage runs inside a long-lived daemon, so every memo it keeps (redacted
messages, parsed test summaries, redacted contexts) must stay bounded however many sessions
pass through: an unbounded dict is a slow memory leak. ``LruCache`` evicts the least recently
used entries once either ``max_entries`` or ``max_size`` (the sum of each entry's ``size``,
e.g. its characters) is exceeded. It is an ``OrderedDict`` (C-implemented ``move_to_end``
and ``popitem(last=False)``, both O(1); popping the front of a plain ``dict`` makes the next
``next(iter(d))`` walk over the deleted slots). Hot loops may read ``entries`` directly and
``refresh`` many keys in one call; only ``put`` and ``clear`` add or remove entries.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Iterable
from typing import Generic, TypeVar

V = TypeVar("V")
_MISSING = object()


class LruCache(Generic[V]):
    """Least-recently-used map with an entry bound and a size bound.

    Args:
        max_entries: the most entries kept.
        max_size: the most total ``size`` kept (what ``size`` counts is up to the caller).

    Example:
        >>> cache = LruCache(max_entries=2)
        >>> cache.put("a", 1); cache.put("b", 2); cache.get("a")
        1
        >>> cache.put("c", 3)  # evicts "b", the least recently used
        >>> cache.get("b") is None, len(cache)
        (True, 2)
    """

    __slots__ = ("_size", "entries", "max_entries", "max_size")

    def __init__(self, max_entries: int = 4096, max_size: int = 1 << 62) -> None:
        if max_entries < 1 or max_size < 1:
            raise ValueError("max_entries and max_size must be positive")
        self.max_entries = max_entries
        self.max_size = max_size
        # key -> (value, size). Public for hot loops that cannot afford a method call per
        # look-up: they may read it and ``move_to_end`` a key they hit (what ``get`` does),
        # but only ``put`` and ``clear`` add or remove entries (they keep ``size``).
        self.entries: OrderedDict[Hashable, tuple[V, int]] = OrderedDict()
        self._size = 0

    def get(self, key: Hashable, default: object = None) -> V | None:
        """The value for ``key`` (now the most recently used), or ``default``."""
        entries = self.entries
        entry = entries.get(key, _MISSING)
        if entry is _MISSING:
            return default  # type: ignore[return-value]
        entries.move_to_end(key)
        return entry[0]  # type: ignore[index]

    def put(self, key: Hashable, value: V, size: int = 1) -> None:
        """Store ``value`` under ``key``, evicting the least recently used over the bounds.

        An entry larger than ``max_size`` on its own is not stored.
        """
        old = self.entries.pop(key, None)
        if old is not None:
            self._size -= old[1]
        if size > self.max_size:
            return
        self.entries[key] = (value, size)
        self._size += size
        data = self.entries
        while len(data) > self.max_entries or self._size > self.max_size:
            self._size -= data.popitem(last=False)[1][1]

    def refresh(self, keys: Iterable[Hashable]) -> bool:
        """Make each key the most recently used, in order, as a hit on each would.

        Returns:
            False at the first key not held (those before it are refreshed), else True.
        """
        move = self.entries.move_to_end
        try:
            for key in keys:
                move(key)
        except KeyError:
            return False
        return True

    def clear(self) -> None:
        """Drop every entry."""
        self.entries.clear()
        self._size = 0

    @property
    def size(self) -> int:
        """The total ``size`` of the entries kept."""
        return self._size

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, key: Hashable) -> bool:
        return key in self.entries

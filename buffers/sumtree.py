"""A vectorised k-ary sum tree over numpy arrays: the index of prioritized sampling.

Why k-ary and not binary: every tree level costs a handful of numpy calls whatever the
batch size, so the cost of a batched descent is dominated by the number of levels. A fan-out
of 16 turns the 20 levels of a binary tree over 1M leaves into 5, and each level's work
(a ``(batch, 16)`` gather, a row-wise cumsum and a compare) is still small. Updates recompute
the touched parents exactly from their children (no running deltas), so sums never drift.
"""

from __future__ import annotations

import numpy as np

FANOUT = 16
_FLAT = 4096


class SumTree:
    """Leaf masses with prefix-sum search, all batched.

    Args:
        capacity: the number of leaves (slots).
        fanout: children per node; 16 keeps both descent and update cheap in numpy.

    Example:
        >>> tree = SumTree(4)
        >>> tree.set(np.array([0, 2]), np.array([1.0, 3.0]))
        >>> float(tree.total)
        4.0
        >>> tree.find(np.array([0.5, 1.5])).tolist()
        [0, 2]
    """

    __slots__ = ("_flat_level", "_levels", "_ones", "_starts_cache", "_strict_upper", "capacity",
                 "fanout")

    def __init__(self, capacity: int, fanout: int = FANOUT) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.fanout = fanout
        self._strict_upper = np.triu(np.ones((fanout, fanout)), 1)
        self._ones = np.ones(fanout)
        self._starts_cache: dict[int, np.ndarray] = {}
        self._levels: list[np.ndarray] = []
        n = capacity
        while True:
            padded = -(-n // fanout) * fanout
            self._levels.append(np.zeros(padded, dtype=np.float64))
            n = padded // fanout
            if n == 1:
                break
        self._flat_level = min(
            i for i, level in enumerate(self._levels)
            if level.size <= _FLAT or i == len(self._levels) - 1
        )

    @property
    def total(self) -> float:
        """The sum of all leaf masses."""
        return float(self._levels[-1].sum())

    @property
    def leaves(self) -> np.ndarray:
        """A read-only view of the leaf masses (``capacity`` long)."""
        view = self._levels[0][: self.capacity]
        view.flags.writeable = False
        return view

    def set(self, indices: np.ndarray, masses: np.ndarray | float) -> None:
        """Set the mass of some leaves and recompute their ancestors.

        Args:
            indices: leaf indices (duplicates allowed: the last value wins).
            masses: non-negative masses, one per index or a scalar.
        """
        indices = np.asarray(indices, dtype=np.int64)
        if indices.size == 0:
            return
        self._levels[0][indices] = masses
        self._propagate(indices)

    def set_all(self, masses: np.ndarray) -> None:
        """Replace every leaf mass at once (used when rebuilding from storage)."""
        self._levels[0][: self.capacity] = masses
        self._levels[0][self.capacity :] = 0.0
        for lower, upper in zip(self._levels, self._levels[1:], strict=False):
            n = lower.size // self.fanout
            upper[:n] = lower.reshape(-1, self.fanout) @ self._ones

    def _propagate(self, indices: np.ndarray) -> None:
        f = self.fanout
        nodes = indices
        for lower, upper in zip(self._levels, self._levels[1:], strict=False):
            nodes = nodes // f
            # Row sums as a BLAS gemv: several times faster than .sum(axis=1) on short rows.
            if nodes.size * f >= lower.size:
                # Touching most of the level: one contiguous pass beats a gather.
                upper[: lower.size // f] = lower.reshape(-1, f) @ self._ones
            else:
                # Duplicate parents are harmless: each gets the same exact sum.
                upper[nodes] = lower.reshape(-1, f)[nodes] @ self._ones

    def _row_starts(self, n: int) -> np.ndarray:
        starts = self._starts_cache.get(n)
        if starts is None:
            starts = self._starts_cache[n] = np.arange(n, dtype=np.int64) * self.fanout
        return starts

    def masses(self, slots: np.ndarray) -> np.ndarray:
        """The leaf masses of some slots."""
        return self._levels[0][slots]

    def find(self, targets: np.ndarray) -> np.ndarray:
        """The leaf holding each prefix-sum target.

        Args:
            targets: values in ``[0, total)``; values outside are clamped into it.

        Returns:
            int64 leaf indices, each with positive mass when ``total > 0``.
        """
        f = self.fanout
        base = self._row_starts(np.size(targets))
        # The top levels are small: one cumsum + searchsorted over the first level of at
        # most _FLAT nodes replaces several (batch, fanout) steps.
        top = self._flat_level
        level = self._levels[top]
        cumulative = np.cumsum(level)
        t = np.clip(targets, 0.0, np.nextafter(cumulative[-1], 0.0))
        node = np.searchsorted(cumulative, t, side="right")
        t -= cumulative.take(node, mode="clip") - level.take(node, mode="clip")
        for level in reversed(self._levels[:top]):
            # mode="clip": round-off can steer a target past the last real node into padding.
            # Exclusive prefix sums of each node's children, as one small matmul: much
            # cheaper than a row-wise cumsum over a (batch, fanout) array in numpy.
            prefix = level.reshape(-1, f).take(node, axis=0, mode="clip") @ self._strict_upper
            # child = how many prefixes are <= t, minus one; counted by a BLAS gemv over
            # the comparison written as floats (a bool row-sum is several times slower).
            below = np.less_equal(prefix, t[:, None], out=np.empty_like(prefix),
                                  casting="unsafe")
            child = (below @ self._ones).astype(np.int64)
            child -= 1
            t -= prefix.take(base + child)
            node *= f
            node += child
        np.minimum(node, self.capacity - 1, out=node)
        # A target at the very edge (float round-off between a parent and its children's
        # sum) can land on a zero-mass leaf; redo those few exactly.
        bad = self._levels[0][node] <= 0.0
        if bad.any():
            cumulative = np.cumsum(self._levels[0][: self.capacity])
            if cumulative[-1] > 0.0:
                exact = np.searchsorted(cumulative, np.maximum(targets, 0.0)[bad], side="right")
                node[bad] = np.minimum(exact, np.flatnonzero(self._levels[0])[-1])
        return node

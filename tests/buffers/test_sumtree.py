"""The numpy k-ary sum tree."""

from __future__ import annotations

import numpy as np
import pytest

from nextstate.buffers.sumtree import SumTree


@pytest.mark.parametrize("capacity", [1, 2, 15, 16, 17, 255, 4097])
@pytest.mark.parametrize("fanout", [2, 16])
def test_find_matches_a_prefix_sum_search(capacity, fanout):
    """Each target lands on the leaf a searchsorted over the cumulative masses picks."""
    rng = np.random.default_rng(capacity)
    masses = rng.random(capacity)
    masses[rng.random(capacity) < 0.3] = 0.0
    masses[0] = 0.5
    tree = SumTree(capacity, fanout)
    tree.set(np.arange(capacity), masses)
    cumulative = np.cumsum(masses)
    targets = rng.random(2000) * cumulative[-1]
    np.testing.assert_array_equal(tree.find(targets),
                                  np.searchsorted(cumulative, targets, side="right"))
    assert tree.total == pytest.approx(cumulative[-1])


def test_updates_keep_the_total_exact():
    """Repeated scattered updates leave the root equal to the sum of the leaves."""
    rng = np.random.default_rng(0)
    tree = SumTree(10_000)
    for _ in range(200):
        tree.set(rng.integers(0, 10_000, 64), rng.random(64))
    assert tree.total == pytest.approx(tree.leaves.sum(), rel=1e-12)


def test_edge_targets_never_pick_an_empty_leaf():
    """Targets at or past the total still land on a leaf with positive mass."""
    tree = SumTree(100)
    tree.set(np.array([3, 50]), np.array([1.0, 2.0]))
    picked = tree.find(np.array([0.0, 2.999999999, 3.0, 3.5, -1.0]))
    assert set(picked.tolist()) <= {3, 50}


def test_set_all_replaces_every_leaf():
    """set_all rebuilds the whole tree from an array of masses."""
    tree = SumTree(40)
    tree.set(np.arange(40), 1.0)
    tree.set_all(np.zeros(40))
    tree.set(np.array([7]), 2.0)
    assert tree.total == 2.0
    assert tree.find(np.array([1.0])).tolist() == [7]

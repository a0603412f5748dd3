"""Uniform and prioritized sampling, importance weights and staleness."""

from __future__ import annotations

import numpy as np
import pytest

from nextstate.buffers.memory_storage import MemoryStorage
from nextstate.buffers.samplers import PrioritizedSampler, UniformSampler
from nextstate.buffers.versions import parse_policy_version

from .conftest import make_tuple


def stored(capacity, priorities, versions=None):
    """A memory storage holding one tuple per priority."""
    store = MemoryStorage(capacity)
    for i, priority in enumerate(priorities):
        label = None if versions is None else versions[i]
        store.write(store.free_slot(), make_tuple(i, version=label), priority=priority,
                    version=parse_policy_version(label))
    return store


def test_prioritized_frequencies_follow_priority_to_the_alpha():
    """Slots are drawn in proportion to (priority + eps) ** alpha."""
    priorities = np.array([1.0, 2.0, 4.0, 8.0])
    store = stored(8, priorities)
    sampler = PrioritizedSampler(8, alpha=0.5, eps=1e-9)
    sampler.rebuild(store)
    slots, _ = sampler.sample(store, 40_000, current_version=None,
                              rng=np.random.default_rng(0))
    expected = priorities**0.5 / (priorities**0.5).sum()
    observed = np.bincount(slots, minlength=4)[:4] / slots.size
    np.testing.assert_allclose(observed, expected, atol=0.01)


def test_importance_weights_are_normalised_and_correct():
    """Weights are (N P(i))^-beta divided by the batch maximum."""
    store = stored(4, [1.0, 3.0])
    sampler = PrioritizedSampler(4, alpha=1.0, beta=0.5, eps=1e-12)
    sampler.rebuild(store)
    slots, weights = sampler.sample(store, 64, current_version=None,
                                    rng=np.random.default_rng(1))
    raw = (2 * np.array([0.25, 0.75])[slots]) ** -0.5
    np.testing.assert_allclose(weights, raw / raw.max())
    assert weights.max() == 1.0


def test_priority_updates_change_what_is_drawn():
    """After an update, a slot's sampling mass follows its new priority."""
    store = stored(4, [1.0, 1.0])
    sampler = PrioritizedSampler(4, alpha=1.0, eps=1e-12)
    sampler.rebuild(store)
    store.set_priorities(np.array([0]), np.array([0.0]))
    sampler.update_priorities(store, np.array([0]))
    slots, _ = sampler.sample(store, 256, current_version=None, rng=np.random.default_rng(2))
    assert set(slots.tolist()) == {1}


@pytest.mark.parametrize("sampler_cls", [UniformSampler, PrioritizedSampler])
def test_too_stale_tuples_are_never_drawn(sampler_cls):
    """Tuples older than max_staleness versions are dropped (for good); unknown ones kept."""
    store = stored(8, [1.0] * 4, versions=["v1", "v5", None, "policy-9"])
    sampler = sampler_cls(8, max_staleness=3)
    sampler.rebuild(store)
    slots, _ = sampler.sample(store, 500, current_version=9, rng=np.random.default_rng(3))
    assert set(slots.tolist()) == {2, 3}
    slots, _ = sampler.sample(store, 500, current_version=None, rng=np.random.default_rng(3))
    assert set(slots.tolist()) == {2, 3}


@pytest.mark.parametrize("sampler_cls", [UniformSampler, PrioritizedSampler])
def test_late_stale_arrivals_are_dropped_at_sample_time(sampler_cls):
    """A stale tuple written after the last sweep is still never returned."""
    store = stored(8, [1.0, 1.0], versions=["v10", "v10"])
    sampler = sampler_cls(8, max_staleness=2)
    sampler.rebuild(store)
    sampler.sample(store, 4, current_version=10, rng=np.random.default_rng(4))
    slot = store.free_slot()
    store.write(slot, make_tuple(50, version="v1"), priority=100.0, version=1)
    sampler.on_write(store, np.array([slot]))
    slots, _ = sampler.sample(store, 500, current_version=10, rng=np.random.default_rng(4))
    assert slot not in set(slots.tolist())


def test_staleness_decay_scales_weights():
    """Weights are multiplied by decay ** (current - version)."""
    store = stored(4, [1.0, 1.0], versions=["v8", None])
    sampler = UniformSampler(4, staleness_decay=0.5)
    slots, weights = sampler.sample(store, 200, current_version=10,
                                    rng=np.random.default_rng(5))
    np.testing.assert_allclose(weights, np.where(slots == 0, 0.25, 1.0))


def test_everything_stale_raises():
    """Sampling a buffer whose every tuple is too stale is an error, not an endless loop."""
    store = stored(4, [1.0], versions=["v1"])
    sampler = PrioritizedSampler(4, max_staleness=0)
    sampler.rebuild(store)
    with pytest.raises(ValueError, match="stale"):
        sampler.sample(store, 4, current_version=5, rng=np.random.default_rng(6))


def test_uniform_sampling_skips_holes():
    """Uniform draws only occupied slots even when most slots are empty."""
    store = stored(64, [1.0] * 40)
    for slot in range(1, 40):
        store.evict(slot)
    slots, _ = UniformSampler(64).sample(store, 300, current_version=None,
                                         rng=np.random.default_rng(7))
    assert set(slots.tolist()) == {0}


def test_state_dict_round_trip():
    """A prioritized sampler restored from state_dict has the same state and masses."""
    store = stored(8, [1.0, 2.0, 3.0], versions=["v1", "v9", "v9"])
    sampler = PrioritizedSampler(8, alpha=0.7, beta=0.9, max_staleness=2)
    sampler.rebuild(store)
    sampler.sample(store, 8, current_version=9, rng=np.random.default_rng(8))
    other = PrioritizedSampler(8)
    other.load_state_dict(sampler.state_dict())
    other.rebuild(store)
    state, again = sampler.state_dict(), other.state_dict()
    np.testing.assert_array_equal(state.pop("dropped"), again.pop("dropped"))
    assert state == again
    np.testing.assert_allclose(other.tree.leaves, sampler.tree.leaves)

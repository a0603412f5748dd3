"""Session-grouped sampling: groups of one session, per-tuple probabilities and weights."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nextstate.buffers import BufferSpec, ReplayBuffer
from nextstate.buffers.memory_storage import MemoryStorage
from nextstate.buffers.samplers import PrioritizedSampler, UniformSampler
from nextstate.buffers.storage import FREE
from nextstate.extractors.types import Message, ScoredTuple


def turn(session: int, k: int, *, version: str | None = None, reward: float = 0.0
         ) -> ScoredTuple:
    """Turn ``k`` of session ``s<session>``."""
    return ScoredTuple(f"s{session}#{k}", f"s{session}", "tool", "evaluative", "tool",
                       (Message("user", f"s{session} turn {k}"),),
                       Message("assistant", f"answer {k}"), reward=reward,
                       policy_version=version)


def interleaved(sizes: list[int], **kwargs) -> list[ScoredTuple]:
    """Sessions of the given sizes running at once: every session's turn k, then k + 1."""
    return [turn(s, k, **kwargs) for k in range(max(sizes))
            for s, m in enumerate(sizes) if k < m]


def rings(storage) -> dict[int, np.ndarray]:
    """Session key -> its stored slots in insertion order (what a group is made from)."""
    slots = storage.occupied_slots()
    slots = slots[np.argsort(storage.seq[slots])]
    out: dict[int, list[int]] = {}
    for slot in slots.tolist():
        out.setdefault(int(storage.session[slot]), []).append(slot)
    return {key: np.array(ring) for key, ring in out.items()}


@pytest.fixture(params=["memory", "sqlite"])
def open_buffer(request, tmp_path):
    """Opens a buffer of a spec in memory, or durable in a temp dir (reopened once, so the
    session keys it samples by are the ones read back from the file)."""
    opened = []

    def make(spec: BufferSpec, items: list[ScoredTuple]) -> ReplayBuffer:
        if request.param == "memory":
            buffer = ReplayBuffer.from_spec(spec, None)
            buffer.extend(items)
        else:
            first = ReplayBuffer.from_spec(spec, tmp_path)
            first.extend(items)
            first.close()
            buffer = ReplayBuffer.from_spec(spec, tmp_path)
            assert len(buffer) == len(items)
        opened.append(buffer)
        return buffer

    yield make
    for buffer in opened:
        buffer.close()


# Recorded from both samplers at 358eac4 (before session groups) with golden scenario().
GOLDEN = {
    "uniform": [
        ([19, 2, 13, 5, 7, 19, 2], ["0x1p+0", "0x1p-1", "0x1p-2", "0x1p-2", "0x1p+0",
                                     "0x1p+0", "0x1p-1"]),
        ([10, 14, 11, 10, 3, 2, 10], ["0x1p-2", "0x1p-2", "0x1p-1", "0x1p-2", "0x1p-1",
                                       "0x1p-2", "0x1p-2"]),
        ([10, 15, 14, 18, 7, 18, 22], ["0x1p-2", "0x1p-1", "0x1p-2", "0x1p-2", "0x1p-2",
                                        "0x1p-2", "0x1p-2"]),
    ],
    "prioritized": [
        ([1, 3, 11, 13, 14, 19, 22],
         ["0x1.8b732916dc5e6p-3", "0x1.c1daf96690dd5p-1", "0x1.8f2fa40ad2b34p-1", "0x1p-2",
          "0x1.88a30f9eef731p-2", "0x1.a28206b497571p-1", "0x1.8f2fa40ad2b34p-2"]),
        ([2, 11, 11, 15, 19, 22, 23],
         ["0x1p-2", "0x1.9b38bd62b0c29p-2", "0x1.9b38bd62b0c29p-2", "0x1p-1",
          "0x1.4a23473cc3169p-2", "0x1.3c0375572ad2cp-3", "0x1.a73500e933549p-2"]),
        ([7, 11, 14, 15, 19, 22, 23],
         ["0x1p-2", "0x1.eae1b0f1fbd52p-2", "0x1.9fc0565f40d6fp-3", "0x1.bd6f54be16af9p-2",
          "0x1.9fc0565f40d6fp-2", "0x1.8a17308aa1160p-3", "0x1.793aee000afb2p-2"]),
    ],
}


@pytest.mark.parametrize("sampler", ["uniform", "prioritized"])
def test_a_group_of_one_draws_bit_for_bit_what_the_sampler_drew_before_groups(sampler):
    """With session_group=1 (the default) slots equal those recorded before session groups
    existed (same seed, staleness, late arrivals, updates), and weights to the last bit but
    for numpy's own rounding: its vectorised ``power`` takes another path on a CPU with AVX-512
    (an AMD EPYC here, 2026-11-26), which gives one of them 1 ulp higher than recorded; with
    ``NPY_DISABLE_CPU_FEATURES="X86_V4 AVX512_ICL"`` they match to the last bit."""
    rb = ReplayBuffer.from_spec(BufferSpec("b", capacity=24, sampler=sampler, max_staleness=2,
                                           staleness_decay=0.5, seed=3), None)

    def numbered(i: int) -> ScoredTuple:
        return ScoredTuple(f"s{i % 5}#{i}", f"s{i % 5}", "tool", "evaluative", "tool",
                           (Message("user", f"q{i}"),), Message("assistant", f"a{i}"),
                           reward=((i * 7) % 11) / 5 - 1, policy_version=f"v{i % 4}")

    rb.extend([numbered(i) for i in range(30)])
    drawn = []
    for version in (3, 4, 4):
        slots, weights = rb.sample_indices(7, current_version=version)
        drawn.append((slots.tolist(), [float(w).hex() for w in weights]))
        rb.update_priorities(slots, np.arange(7) * 0.25)
        rb.extend([numbered(30 + version)])
    assert [slots for slots, _ in drawn] == [slots for slots, _ in GOLDEN[sampler]]
    for (_, weights), (_, golden) in zip(drawn, GOLDEN[sampler], strict=True):
        for weight, recorded in zip(weights, golden, strict=True):
            weight, recorded = float.fromhex(weight), float.fromhex(recorded)
            assert abs(weight - recorded) <= 2 * math.ulp(recorded), (weight, recorded)


def test_groups_hold_one_session_the_anchor_then_the_turns_before_it(open_buffer):
    """Every group is one session's anchor followed by its predecessors in insertion order,
    wrapping round to the session's newest turn."""
    rb = open_buffer(BufferSpec("b", capacity=64, session_group=4, seed=1),
                     interleaved([4, 6, 9, 12]))
    by_session = rings(rb.storage)
    for _ in range(50):
        batch = rb.sample(16)
        for group in batch.indices.reshape(-1, 4):
            keys = rb.storage.session[group]
            assert (keys == keys[0]).all()
            ring = by_session[int(keys[0])]
            pos = int(np.flatnonzero(ring == group[0])[0])
            assert group.tolist() == ring[(pos - np.arange(4)) % ring.size].tolist()
        sessions = [t.session_id for t in batch.tuples]
        assert all(len(set(sessions[i:i + 4])) == 1 for i in range(0, 16, 4))


def test_uniform_groups_keep_every_tuple_equally_likely(open_buffer):
    """Grouped uniform sampling still draws every stored tuple with probability 1/N, sessions
    shorter than the group included (weights stay 1): every tuple can be drawn."""
    items = interleaved([1, 2, 3, 5, 8, 13])
    rb = open_buffer(BufferSpec("b", capacity=64, session_group=4, seed=2), items)
    counts = np.zeros(64)
    rng = np.random.default_rng(0)
    for _ in range(4000):
        slots, weights = rb.sample_indices(16, rng=rng)
        np.add.at(counts, slots, 1)
        assert (weights == 1.0).all()
    frequency = counts[rb.storage.occupied_slots()] / counts.sum()
    np.testing.assert_allclose(frequency * len(items), 1.0, atol=0.12)


def test_prioritized_groups_draw_the_window_mean_and_weigh_by_it():
    """A tuple is drawn with probability q_i = mean of p over itself and its g'-1 successors
    in its session (p: the plain prioritized distribution); weights are (N q_i)^-beta over
    their batch maximum."""
    g, beta = 3, 0.7
    items = interleaved([2, 4, 7])
    store = MemoryStorage(16)
    priorities = np.linspace(0.5, 6.0, len(items))
    for item, priority in zip(items, priorities, strict=True):
        store.write(store.free_slot(), item, priority=float(priority), version=-1)
    sampler = PrioritizedSampler(16, alpha=1.0, beta=beta, eps=1e-9, session_group=g)
    sampler.rebuild(store)
    p = np.zeros(16)
    masses = priorities + 1e-9                 # (priority + eps) ** alpha, alpha = 1
    p[:len(items)] = masses / masses.sum()
    q = np.zeros(16)
    for ring in rings(store).values():
        size = min(g, ring.size)
        for pos, slot in enumerate(ring.tolist()):
            q[slot] = p[ring[(pos + np.arange(size)) % ring.size]].mean()
    assert q.sum() == pytest.approx(1.0)
    counts = np.zeros(16)
    rng = np.random.default_rng(3)
    for _ in range(3000):
        slots, weights = sampler.sample(store, 24, current_version=None, rng=rng)
        np.add.at(counts, slots, 1)
        raw = (len(items) * q[slots]) ** -beta
        np.testing.assert_allclose(weights, raw / raw.max(), rtol=1e-12)
    np.testing.assert_allclose(counts / counts.sum(), q, atol=0.004)


@pytest.mark.parametrize("sampler", ["uniform", "prioritized"])
def test_stale_and_dropped_tuples_never_join_a_group(open_buffer, sampler):
    """Mates are sampleable only: tuples dropped as stale never come back in a group, and a
    stale late arrival met as a mate is dropped instead of drawn."""
    items = [turn(s, k, version=f"v{0 if k % 3 == 0 else 5}") for k in range(8)
             for s in range(4)]
    rb = open_buffer(BufferSpec("b", capacity=64, sampler=sampler, session_group=4,
                                max_staleness=2, seed=4), items)
    stale = {t.key for t in items if t.policy_version == "v0"}
    for _ in range(40):
        batch = rb.sample(12, current_version=5)
        assert not {t.key for t in batch.tuples} & stale
    late = turn(0, 8, version="v1")           # stale on arrival, after the sweep at v5
    rb.extend([late])
    slot = int(np.flatnonzero(rb.storage.seq == rb.storage.seq.max())[0])
    for _ in range(40):
        batch = rb.sample(12, current_version=5)
        assert late.key not in {t.key for t in batch.tuples}
        assert not {t.key for t in batch.tuples} & stale
    assert rb.sampler._dropped[slot]           # session s0 was drawn: its late tuple dropped
    assert rb.storage.seq[slot] != FREE        # dropped from sampling, kept in storage


def test_sessions_of_one_tuple_with_a_group_still_fill_the_batch():
    """When no session has two tuples, groups are single tuples and the batch is full."""
    rb = ReplayBuffer.from_spec(BufferSpec("b", capacity=8, session_group=8, seed=5), None)
    rb.extend(interleaved([1] * 5))
    batch = rb.sample(20)
    assert len(batch) == 20 and set(batch.indices.tolist()) <= set(range(5))


def test_spec_wires_session_group_and_rejects_zero():
    """BufferSpec.session_group reaches both samplers; 0 is refused; the sampler's state
    carries it, and a state from before groups keeps the configured value."""
    for kind in ("uniform", "prioritized"):
        rb = ReplayBuffer.from_spec(BufferSpec("b", sampler=kind, session_group=4), None)
        assert rb.sampler.session_group == 4
        state = rb.sampler.state_dict()
        assert state["session_group"] == 4
        del state["session_group"]
        rb.sampler.load_state_dict(state)
        assert rb.sampler.session_group == 4
    assert ReplayBuffer.from_spec(BufferSpec("b"), None).sampler.session_group == 1
    with pytest.raises(ValueError, match="session_group"):
        BufferSpec("b", session_group=0)
    with pytest.raises(ValueError, match="session_group"):
        UniformSampler(4, session_group=0)


def test_sessions_slots_are_found_as_isin_finds_them():
    """The one-pass lookup of the drawn sessions' slots returns what ``np.isin`` does, with
    keys of either sign and non-members sharing a key's low 16 bits (its candidate table)."""
    from nextstate.buffers.samplers import _slots_of

    rng = np.random.default_rng(0)
    keys = rng.integers(-(2**63), 2**63 - 1, size=40, dtype=np.int64)
    # Non-members with a key's low 16 bits: the table lets them through, the compare not.
    lookalikes = (rng.integers(-(2**47), 2**47, size=200, dtype=np.int64) << 16) | (
        keys[rng.integers(0, keys.size, size=200)] & 0xFFFF)
    others = rng.integers(-(2**63), 2**63 - 1, size=5_000, dtype=np.int64)
    sessions = rng.permutation(np.concatenate([np.repeat(keys, 3), lookalikes, others]))
    for wanted in (keys[:1], keys[:8], keys, keys[:0]):
        found = _slots_of(sessions, np.unique(wanted))
        assert np.array_equal(found, np.flatnonzero(np.isin(sessions, wanted)))
        assert found.size == 3 * wanted.size

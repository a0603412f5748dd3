"""The trainer learns (not just runs): PG, OPD, DPO, token-level credit, staleness, resume."""

from __future__ import annotations

import itertools
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from nextstate.extractors.types import Message
from nextstate.trainers.chat import hinted_context
from nextstate.trainers.checkpoint import latest_checkpoint, load_policy, read_manifest
from nextstate.trainers.config import TrainerConfig
from nextstate.trainers.sampling import ListBuffer
from nextstate.trainers.trainer import Trainer

from .conftest import BAD, CONTEXT, GOOD, make_tuple, session_turns


def _config(**overrides) -> TrainerConfig:
    return TrainerConfig(**({"batch_size": 8, "micro_batch_size": 4, "lr": 3e-3,
                             "publish_every": 0} | overrides))


def _trainer(policy, tuples, tmp_path, **overrides) -> Trainer:
    return Trainer(_config(**overrides), policy, {"main": ListBuffer(tuples, seed=1)},
                   tmp_path / "ckpt")


def test_empty_buffers_skip_the_step(tiny_policy, tmp_path) -> None:
    """With nothing sampleable, step returns {} and the step count does not move."""
    trainer = _trainer(tiny_policy(), [], tmp_path)
    assert trainer.step() == {}
    assert trainer.global_step == 0


def test_pg_raises_rewarded_and_lowers_punished_actions(tiny_policy, tmp_path) -> None:
    """Log-prob of a +1 action rises and of a -1 action falls after a few steps."""
    policy = tiny_policy()
    tuples = [make_tuple(action=GOOD, reward=1.0), make_tuple(action=BAD, reward=-1.0)]
    good0 = policy.action_logprobs(CONTEXT, GOOD).sum()
    bad0 = policy.action_logprobs(CONTEXT, BAD).sum()
    trainer = _trainer(policy, tuples, tmp_path, opd_weight=0.0, dpo_weight=0.0)
    for _ in range(8):
        metrics = trainer.step()
    assert "losses/pg" in metrics and metrics["charts/step"] == 8.0
    assert policy.action_logprobs(CONTEXT, GOOD).sum() > good0 + 1.0
    assert policy.action_logprobs(CONTEXT, BAD).sum() < bad0 - 1.0


def test_tool_args_credit_gives_prose_tokens_no_gradient(tiny_policy, tmp_path) -> None:
    """A tool-result reward's gradient reaches only the tool-argument tokens of the action."""
    policy = tiny_policy()
    captured: list[torch.Tensor] = []
    packed = policy.packed_logprobs

    def keep_grads(encoded, share_prefixes=True):
        logps, packing = packed(encoded, share_prefixes)
        if torch.is_grad_enabled():
            for lp in logps:
                lp.retain_grad()
            captured.extend(logps)
        return logps, packing

    policy.packed_logprobs = keep_grads
    t = make_tuple(action=GOOD, reward=-1.0, source="tool", credit="tool_args")
    trainer = _trainer(policy, [t], tmp_path, batch_size=1, micro_batch_size=1)
    trainer.baseline.update("tool", [0.0])
    trainer.step()
    mask = torch.tensor(policy.encode(CONTEXT, GOOD).tool_arg_mask)
    grad = captured[0].grad
    assert mask.any() and (~mask).any()
    assert torch.all(grad[~mask] == 0)
    assert torch.all(grad[mask] != 0)


def _kl_teacher_student(policy, context, hint, action, template) -> float:
    """Mean over the action's positions of KL(p(. | context + hint) || p(. | context))."""
    def dists(ctx):
        enc = policy.encode(ctx, action)
        with torch.no_grad():
            logits = policy.logits(torch.tensor([enc.ids], device=policy.device))[0]
        return torch.log_softmax(logits[enc.action_start - 1:-1], -1)

    teacher = dists(hinted_context(context, hint, template))
    student = dists(context)
    return float((teacher.exp() * (teacher - student)).sum(-1).mean())


def test_opd_shrinks_kl_between_hinted_teacher_and_student(tiny_policy, tmp_path) -> None:
    """Distillation steps on directive tuples shrink KL(teacher || student) on their actions."""
    policy = tiny_policy()
    hint = "call the weather tool for Paris"
    template = TrainerConfig().hint_template
    # Make the hint matter first: fit the action under the hinted context only.
    optimizer = torch.optim.Adam(policy.trainable_parameters(), lr=3e-3)
    for _ in range(30):
        optimizer.zero_grad()
        (-policy.action_logprobs(hinted_context(CONTEXT, hint, template), GOOD,
                                 grad=True).sum()).backward()
        optimizer.step()
    before = _kl_teacher_student(policy, CONTEXT, hint, GOOD, template)
    trainer = _trainer(policy, [make_tuple("directive", action=GOOD, hint=hint)], tmp_path,
                       pg_weight=0.0, dpo_weight=0.0)
    for _ in range(10):
        metrics = trainer.step()
    after = _kl_teacher_student(policy, CONTEXT, hint, GOOD, template)
    assert "losses/opd" in metrics
    assert before > 0.1 and after < 0.5 * before


def test_dpo_raises_the_chosen_minus_rejected_margin(tiny_policy, tmp_path) -> None:
    """DPO steps on a correction pair widen log p(chosen) - log p(rejected)."""
    policy = tiny_policy()
    pair = make_tuple("preference", action=BAD, chosen=GOOD, rejected=BAD)

    def margin() -> float:
        return float(policy.action_logprobs(CONTEXT, GOOD).sum()
                     - policy.action_logprobs(CONTEXT, BAD).sum())

    before = margin()
    trainer = _trainer(policy, [pair], tmp_path, pg_weight=0.0, opd_weight=0.0)
    for _ in range(6):
        metrics = trainer.step()
    assert metrics["charts/dpo_margin_mean"] > 0
    assert margin() > before + 5.0


def test_stale_tuples_are_dropped_and_reported(tiny_policy, tmp_path) -> None:
    """Tuples older than max_staleness versions are dropped; staleness stats are reported."""
    fresh = make_tuple(reward=1.0, policy_version="5")
    stale = make_tuple(action=BAD, reward=-1.0, policy_version="1", index=2)
    trainer = _trainer(tiny_policy(), [fresh, stale], tmp_path, max_staleness=2,
                       batch_size=16)
    trainer.policy_version = 6
    metrics = trainer.step()
    assert metrics["charts/stale_dropped"] > 0
    assert metrics["charts/staleness_max"] == 5.0
    assert metrics["charts/tuples"] == 16 - metrics["charts/stale_dropped"]
    assert trainer.tuples_seen["user"] == metrics["charts/tuples"]


def test_buffer_mix_splits_the_batch_and_skips_empty_buffers(tiny_policy, tmp_path) -> None:
    """A 3:1 mix draws 6 and 2 of 8; an empty buffer's share goes to the others."""
    a = ListBuffer([make_tuple(reward=1.0, source="tool")])
    b = ListBuffer([make_tuple(reward=-1.0, source="user", index=2)])
    trainer = Trainer(_config(buffer_mix={"a": 3.0, "b": 1.0, "c": 1.0}), tiny_policy(),
                      {"a": a, "b": b, "c": ListBuffer([])}, tmp_path)
    metrics = trainer.step()
    assert metrics["charts/tuples_tool"] == 6 and metrics["charts/tuples_user"] == 2
    assert a.priorities[0] != 1.0  # the trainer fed priorities back


def test_publish_is_versioned_atomic_and_announced(tiny_policy, tmp_path) -> None:
    """Every publish_every steps a complete version appears, with manifest and announcement."""
    announced: list[dict] = []
    trainer = Trainer(_config(publish_every=2, keep_checkpoints=2), tiny_policy(),
                      {"main": ListBuffer([make_tuple(reward=1.0)])}, tmp_path / "ckpt",
                      announce=announced.append)
    for _ in range(6):
        trainer.step()
    assert trainer.policy_version == 3
    latest = latest_checkpoint(tmp_path / "ckpt")
    assert latest is not None and latest.name == "v000003"
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["v000002", "v000003"]
    manifest = read_manifest(latest)
    assert manifest["version"] == 3 and manifest["step"] == 6
    assert manifest["tuples_seen"] == {"user": 48} and "losses/pg" in manifest["losses"]
    assert [a["version"] for a in announced] == [1, 2, 3]
    assert json.loads((latest / "manifest.json").read_text())["version"] == 3
    assert trainer.maybe_publish() is None
    published = load_policy(latest).to(trainer.policy.device)
    torch.testing.assert_close(published.action_logprobs(CONTEXT, GOOD),
                               trainer.policy.action_logprobs(CONTEXT, GOOD), rtol=0, atol=0)


def test_publish_removes_what_dead_trainers_half_wrote(tiny_policy, tmp_path) -> None:
    """A trainer killed mid-publish leaves a temp dir (a whole policy); the next publish
    removes it, but not one whose writer is still alive."""
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True, check=True)
    dead, alive = int(child.stdout), os.getppid()
    ckpt = tmp_path / "ckpt"
    for pid in (dead, alive):
        (ckpt / f".tmp-v000004-{pid}" / "policy").mkdir(parents=True)
        (ckpt / f".tmp-v000004-{pid}" / "policy" / "weights").write_bytes(b"x" * 1000)
    trainer = Trainer(_config(publish_every=1), tiny_policy(),
                      {"main": ListBuffer([make_tuple(reward=1.0)])}, ckpt)
    trainer.step()
    assert sorted(p.name for p in ckpt.iterdir()) == [f".tmp-v000004-{alive}", "v000001"]


def test_resume_continues_step_optimizer_and_training_exactly(tiny_policy, tmp_path) -> None:
    """A restarted trainer resumes step, version and optimizer, and its next step is identical."""
    tuples = [make_tuple(reward=1.0), make_tuple(action=BAD, reward=-0.5, index=2)]
    config = _config(publish_every=3)
    first = Trainer(config, tiny_policy(seed=0), {"main": ListBuffer(tuples)}, tmp_path)
    for _ in range(3):
        first.step()
    resumed = Trainer.resume(config, tiny_policy(seed=99), {"main": ListBuffer(tuples)},
                             tmp_path)
    assert (resumed.global_step, resumed.policy_version) == (3, 1)
    exp_avg = [s["exp_avg"] for s in first.optimizer.state.values()]
    exp_avg2 = [s["exp_avg"] for s in resumed.optimizer.state.values()]
    for x, y in zip(exp_avg, exp_avg2, strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=0)
    assert resumed.baseline.state_dict() == first.baseline.state_dict()
    # Same next batch on both: the weights after one more step must match.
    first.buffers = {"main": ListBuffer(tuples, seed=7)}
    resumed.buffers = {"main": ListBuffer(tuples, seed=7)}
    first.step()
    resumed.step()
    assert resumed.global_step == 4
    for p, q in zip(first.policy.parameters(), resumed.policy.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_state_dict_round_trip_includes_policy_weights(tiny_policy, tmp_path) -> None:
    """trainer.state_dict() carries the weights; load_state_dict restores them in place."""
    trainer = _trainer(tiny_policy(), [make_tuple(reward=1.0)], tmp_path)
    trainer.step()
    state = trainer.state_dict()
    other = _trainer(tiny_policy(seed=5), [make_tuple(reward=1.0)], tmp_path)
    other.load_state_dict(state)
    assert other.global_step == 1
    torch.testing.assert_close(other.policy.action_logprobs(CONTEXT, GOOD),
                               trainer.policy.action_logprobs(CONTEXT, GOOD))


def test_behaviour_logprobs_are_used_when_aligned(tiny_policy, tmp_path) -> None:
    """Logged behaviour log-probs of the right length enter the ratio; others are ignored."""
    policy = tiny_policy()
    n = policy.encode(CONTEXT, GOOD).action_len
    aligned = make_tuple(reward=1.0, behaviour_logprobs=tuple([-3.0] * n))
    misaligned = make_tuple(reward=1.0, behaviour_logprobs=(-1.0,), index=2)
    trainer = _trainer(policy, [misaligned], tmp_path, batch_size=2)
    assert trainer.step()["charts/behaviour_logprobs_used"] == 0
    trainer2 = _trainer(tiny_policy(), [aligned], tmp_path, batch_size=2)
    assert trainer2.step()["charts/behaviour_logprobs_used"] == 2


def test_a_far_logged_logprob_does_not_wreck_the_policy(tiny_policy, tmp_path) -> None:
    """One punished action logged with OpenAI's -9999.0 floor made every weight NaN in one
    step; now its log-probs are not used (below ``min_logged_logprob``) and training goes on
    as if it had none."""
    policy = tiny_policy()
    n = policy.encode(CONTEXT, BAD).action_len
    floored = make_tuple(action=BAD, reward=-1.0, behaviour_logprobs=tuple([-9999.0] * n))
    trainer = _trainer(policy, [floored, make_tuple(action=GOOD, reward=1.0, index=2)],
                       tmp_path, opd_weight=0.0, dpo_weight=0.0)
    good0 = policy.action_logprobs(CONTEXT, GOOD).sum()
    for _ in range(4):
        metrics = trainer.step()
        assert metrics["charts/behaviour_logprobs_used"] == 0
    assert math.isfinite(metrics["losses/pg"]) and metrics["charts/skipped_steps"] == 0
    assert all(torch.isfinite(p).all() for p in policy.parameters())
    assert policy.action_logprobs(CONTEXT, GOOD).sum() > good0


def test_an_action_longer_than_the_model_trains(tiny_policy, tmp_path) -> None:
    """A 3,300-character answer to the byte-level policy (max_length 2048) raised an
    IndexError: the daemon's training stopped for good at the first such tuple."""
    long = Message(role="assistant", content="def f():\n    return 1\n" * 150)
    trainer = _trainer(tiny_policy(), [make_tuple(action=long, reward=1.0)], tmp_path,
                       batch_size=2, micro_batch_size=2)
    assert math.isfinite(trainer.step()["losses/pg"])


def test_a_step_with_a_nan_gradient_is_not_taken(tiny_policy, tmp_path) -> None:
    """Whatever made a gradient NaN, the weights keep their values and the step is counted."""
    policy = tiny_policy()
    trainer = _trainer(policy, [make_tuple(reward=1.0)], tmp_path)
    before = [p.detach().clone() for p in policy.parameters()]
    for p in policy.trainable_parameters():
        p.grad = torch.full_like(p, float("nan"))
    assert math.isnan(trainer._optimizer_step())
    assert trainer.skipped_steps == 1
    for p, q in zip(policy.parameters(), before, strict=True):
        torch.testing.assert_close(p.detach(), q, rtol=0, atol=0)
    assert trainer.step()["charts/skipped_steps"] == 1  # the next step is taken


def test_trains_from_a_real_buffer_set(tiny_policy, tmp_path) -> None:
    """The trainer samples a prioritized nextstate.buffers buffer and updates its priorities."""
    from nextstate.buffers import BufferSet, BufferSpec

    specs = [BufferSpec("evaluative", kinds=("evaluative",), sampler="prioritized", seed=0)]
    policy = tiny_policy()
    good0 = policy.action_logprobs(CONTEXT, GOOD).sum()
    with BufferSet.open(None, specs) as buffers:
        buffers.extend([make_tuple(reward=1.0, policy_version="0"),
                        make_tuple(action=BAD, reward=-1.0, index=2, policy_version="0")])
        trainer = Trainer(_config(), policy, buffers.buffers, tmp_path)
        for _ in range(5):
            metrics = trainer.step()
    assert metrics["charts/tuples"] == 8
    assert policy.action_logprobs(CONTEXT, GOOD).sum() > good0


def test_session_groups_forward_each_shared_context_once(tiny_policy, tmp_path) -> None:
    """From a buffer of many interleaved sessions, session_group=4 draws batches whose tuples
    share their context in fours: far fewer forward tokens per tuple than session_group=1."""
    from nextstate.buffers import BufferSpec, ReplayBuffer

    sessions = [session_turns(s, 6) for s in range(30)]
    stream = [sessions[s][k] for k in range(6) for s in range(30)]
    per_tuple = {}
    for group in (1, 4):
        buffer = ReplayBuffer.from_spec(BufferSpec("main", capacity=256, session_group=group,
                                                   seed=0), None)
        buffer.extend(stream)
        trainer = Trainer(_config(micro_batch_size=8), tiny_policy(), {"main": buffer},
                          tmp_path / f"g{group}")
        steps = [trainer.step() for _ in range(3)]
        assert all(m["charts/tuples"] == 8 for m in steps)
        per_tuple[group] = sum(m["charts/forward_tokens"] for m in steps) / 24
        if group == 4:   # two groups of 4 per micro-batch: each forwarded as one sequence
            assert all(m["charts/prefix_share_ratio"] >= 2.0 for m in steps)
    assert per_tuple[4] * 2 < per_tuple[1]


@pytest.mark.parametrize("runs", [[1] * 9, [3, 3, 3], [2, 5, 1, 4, 4], [11, 2], [4, 4, 7, 1]])
def test_micro_batches_cut_between_sessions(runs) -> None:
    """A step's items (sorted by session) are cut between sessions: at most ``size`` per
    micro-batch, in order, and a session is split only when it alone holds more than that."""
    from nextstate.trainers.trainer import _Item, session_micro_batches

    items = [_Item("main", i, 1.0, None, make_tuple(session=f"s{s}", index=i))
             for s, n in enumerate(runs) for i in range(n)]
    size = 4
    batches = session_micro_batches(items, size)
    assert [it for b in batches for it in b] == items
    assert all(0 < len(b) <= size for b in batches)
    for s, n in enumerate(runs):
        holding = [b for b in batches if any(it.tuple.session_id == f"s{s}" for it in b)]
        assert len(holding) == -(-n // size)  # one micro-batch, or as few as its size allows
    # Only a micro-batch that the next session would overflow is cut short.
    for b, after in itertools.pairwise(batches):
        first = after[0].tuple.session_id
        if b[-1].tuple.session_id != first:
            assert len(b) + sum(1 for it in items if it.tuple.session_id == first) > size


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_schedule_warms_up_then_decays(tiny_policy, tmp_path, schedule) -> None:
    """The learning rate ramps up over warm-up steps and decays to 0 at total_steps."""
    trainer = _trainer(tiny_policy(), [make_tuple(reward=1.0)], tmp_path, batch_size=1,
                       schedule=schedule, warmup_steps=2, total_steps=4, lr=1.0)
    lrs = [trainer.step()["charts/lr"] for _ in range(4)]
    assert lrs[0] == pytest.approx(1.0) and lrs[-1] == pytest.approx(0.0)
    assert lrs[1] > lrs[2] > lrs[3]
    assert np.isfinite(lrs).all()


def test_unhinted_directive_and_incomplete_preference_are_ignored(tiny_policy, tmp_path) -> None:
    """Tuples missing their hint or pair contribute no loss (and do not crash the step)."""
    trainer = _trainer(tiny_policy(), [make_tuple("directive"), make_tuple("preference")],
                       tmp_path)
    metrics = trainer.step()
    assert "losses/opd" not in metrics and "losses/dpo" not in metrics
    assert metrics["charts/tuples"] == 8

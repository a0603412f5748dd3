"""Loss math against hand-computed values on 2-token toy cases."""

from __future__ import annotations

import math

import pytest
import torch

from nextstate.trainers.objectives import RunningBaseline, dpo_loss, kl_penalty, opd_loss, pg_loss


def _logp(*probs: float) -> torch.Tensor:
    return torch.tensor([[math.log(p) for p in probs]], requires_grad=True)


def test_pg_loss_and_gradient_match_hand_computation() -> None:
    """Ratios 1 and 0.5 with A=1 give loss -(1 + 0.5)/2 and per-token grads -ratio/2."""
    logp = _logp(0.5, 0.25)
    old = torch.tensor([[math.log(0.5), math.log(0.5)]])
    loss = pg_loss(logp, old, torch.tensor([1.0]), torch.ones(1, 2), clip_eps=0.2)
    assert loss.item() == pytest.approx(-0.75)
    loss.sum().backward()
    assert logp.grad.tolist()[0] == pytest.approx([-0.5, -0.25])


def test_pg_clipped_token_gets_no_gradient() -> None:
    """A ratio of 2 with a positive advantage is clipped to 1.2 and stops pushing."""
    logp = _logp(0.5, 0.5)
    old = torch.tensor([[math.log(0.5), math.log(0.25)]])
    loss = pg_loss(logp, old, torch.tensor([1.0]), torch.ones(1, 2), clip_eps=0.2)
    assert loss.item() == pytest.approx(-(1.0 + 1.2) / 2)
    loss.sum().backward()
    assert logp.grad.tolist()[0] == pytest.approx([-0.5, 0.0])


@pytest.mark.parametrize("logged", [-9999.0, -30.0, -4.0])
def test_pg_negative_advantage_is_dual_clipped_when_asked(logged) -> None:
    """With ``dual_clip = 3`` and A = -1 the surrogate stops at 3A: no gradient."""
    logp = _logp(0.5, 0.5)
    old = torch.tensor([[math.log(0.5), logged]])
    loss = pg_loss(logp, old, torch.tensor([-1.0]), torch.ones(1, 2), clip_eps=0.2,
                   dual_clip=3.0)
    assert loss.item() == pytest.approx((1.0 + 3.0) / 2)  # ratio 1, then the dual clip
    loss.sum().backward()
    assert logp.grad.tolist()[0] == pytest.approx([0.5, 0.0])


def test_pg_ratio_of_a_far_logged_logprob_is_bounded_and_finite() -> None:
    """OpenAI logs -9999.0 for tokens it would not sample: ``r = e^9998`` made the loss and
    every gradient NaN. The log-ratio stops at 20 (no gradient beyond)."""
    logp = _logp(0.5, 0.5)
    old = torch.tensor([[math.log(0.5), -9999.0]])
    loss = pg_loss(logp, old, torch.tensor([-1.0]), torch.ones(1, 2), clip_eps=0.2)
    loss.sum().backward()
    assert loss.item() == pytest.approx((1.0 + math.exp(20.0)) / 2)
    assert logp.grad.tolist()[0] == pytest.approx([0.5, 0.0])


def test_opd_with_a_far_logged_logprob_stays_finite() -> None:
    logp = _logp(0.5, 0.5)
    old = torch.tensor([[math.log(0.5), -9999.0]])
    loss, _ = opd_loss(logp, torch.log(torch.tensor([[0.9, 0.9]])), old, torch.ones(1, 2))
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(logp.grad).all()


def test_pg_mask_limits_credit_to_selected_tokens() -> None:
    """With a mask on the second token only, the first token gets exactly zero gradient."""
    logp = _logp(0.5, 0.25)
    loss = pg_loss(logp, logp.detach(), torch.tensor([-1.0]), torch.tensor([[0.0, 1.0]]))
    assert loss.item() == pytest.approx(1.0)
    loss.sum().backward()
    assert logp.grad.tolist()[0] == pytest.approx([0.0, 1.0])


def test_opd_advantage_is_clipped_teacher_minus_student() -> None:
    """Teacher [0.5, 1.0] vs student [0.5, 0.25]: advantages [0, log 4 -> clip 1]."""
    logp = _logp(0.5, 0.25)
    teacher = torch.tensor([[math.log(0.5), 0.0]])
    loss, adv = opd_loss(logp, teacher, logp.detach(), torch.ones(1, 2), adv_clip=1.0)
    assert adv.tolist()[0] == pytest.approx([0.0, 1.0])
    assert loss.item() == pytest.approx(-0.5)
    loss.sum().backward()
    assert logp.grad.tolist()[0] == pytest.approx([0.0, -0.5])
    _, unclipped = opd_loss(logp, teacher, logp.detach(), torch.ones(1, 2), adv_clip=5.0)
    assert unclipped[0, 1].item() == pytest.approx(math.log(4))


def test_dpo_loss_matches_formula() -> None:
    """c=-1, r=-2, refs=-1.5, beta=0.5: margin 1, loss log(1 + e^-0.5)."""
    chosen = torch.tensor([-1.0], requires_grad=True)
    loss, margin = dpo_loss(chosen, torch.tensor([-2.0]), torch.tensor([-1.5]),
                            torch.tensor([-1.5]), beta=0.5)
    assert margin.item() == pytest.approx(1.0)
    assert loss.item() == pytest.approx(math.log1p(math.exp(-0.5)))
    loss.sum().backward()
    assert chosen.grad.item() == pytest.approx(-0.5 * (1 - 1 / (1 + math.exp(-0.5))))


def test_kl_penalty_k3_estimator() -> None:
    """logp [0.5, 0.25] vs ref [0.25, 0.25]: k3 = [0.5 + log 2 - 1, 0], mean over 2."""
    logp = _logp(0.5, 0.25)
    ref = torch.tensor([[math.log(0.25), math.log(0.25)]])
    kl = kl_penalty(logp, ref, torch.ones(1, 2))
    assert kl.item() == pytest.approx((0.5 + math.log(2) - 1) / 2)


def test_running_baseline_mean_then_ema_and_state_round_trip() -> None:
    """Exact mean for the first 1/momentum rewards, EMA after; state survives a round trip."""
    b = RunningBaseline(momentum=0.25)
    b.update("tool", [1.0, 0.0, 1.0, 0.0])
    assert b.value("tool") == pytest.approx(0.5)
    b.update("tool", [1.0])
    assert b.value("tool") == pytest.approx(0.5 + 0.25 * 0.5)
    assert b.value("user") == 0.0
    c = RunningBaseline()
    c.load_state_dict(b.state_dict())
    assert c.value("tool") == b.value("tool") and c.counts == b.counts

"""Hindsight on-policy distillation from directive hints (OpenClaw-RL style).

The teacher is the same policy with the hint added to the context; on the action the agent
actually took, each token's advantage is ``log p_teacher(t | context + hint) -
log p_old(t | context)``, clipped, and trained with the same clipped surrogate as the policy
gradient. Its gradient is that of the reverse KL(student || teacher) on the sampled tokens:
tokens the hinted teacher likes more than the student get pushed up, the others down.
"""

from __future__ import annotations

import torch

from nextstate.trainers.objectives.pg import clipped_surrogate


def opd_loss(logp: torch.Tensor, teacher_logp: torch.Tensor, old_logp: torch.Tensor,
             mask: torch.Tensor, adv_clip: float = 5.0, clip_eps: float = 0.2,
             dual_clip: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sequence distillation loss and the per-token advantages used.

    Args:
        logp: ``[B, T]`` student log-probs (with grad).
        teacher_logp: ``[B, T]`` teacher log-probs (no grad).
        old_logp: ``[B, T]`` behaviour log-probs (no grad; current detached when unlogged).
        mask: ``[B, T]`` valid tokens.
        adv_clip: per-token advantages are clipped to ``[-adv_clip, adv_clip]``.
        clip_eps: PPO clip range.
        dual_clip: the bound on negative advantages' ratios (see :func:`clipped_surrogate`).
    """
    advantage = (teacher_logp.detach() - old_logp.detach()).clamp(-adv_clip, adv_clip) * mask
    return clipped_surrogate(logp, old_logp, advantage, mask, clip_eps, dual_clip), advantage

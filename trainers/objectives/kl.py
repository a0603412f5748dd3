"""KL penalty to a frozen reference policy on the action's tokens.

Uses the non-negative, unbiased ``k3`` estimator of KL(policy || reference) from samples of
the policy: ``exp(ref - logp) - (ref - logp) - 1`` per token, averaged over each action.
"""

from __future__ import annotations

import torch


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-sequence mean k3 KL estimate ``[B]`` (gradient flows through ``logp``)."""
    delta = ref_logp.detach() - logp
    k3 = torch.exp(delta) - delta - 1.0
    return (k3 * mask).sum(1) / mask.sum(1).clamp_min(1.0)

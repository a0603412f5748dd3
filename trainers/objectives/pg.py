"""Evaluative policy gradient: reward minus a per-source baseline, PPO-clipped, token-level.

``loss_i = -mean_{t in mask_i} min(r_t A_i, clip(r_t, 1-eps, 1+eps) A_i)`` with
``r_t = exp(logp_t - old_t)``. ``old`` is the behaviour log-prob the agent logged when the
tuple carried one (an off-policy correction), else the current log-prob detached (ratio 1,
plain REINFORCE gradient). ``mask`` selects the tokens the reward is about: all action tokens,
or only the tool-call arguments for tool-result rewards (ToolPO-style credit), so the prose
around a call gets no gradient from the tool's verdict.
"""

from __future__ import annotations

import torch

MAX_LOG_RATIO = 20.0
"""``log r`` is clamped to +-this before ``exp``, so that ``r`` is never infinite (an infinite
ratio made the gradient, then every weight, NaN)."""


def clipped_surrogate(logp: torch.Tensor, old_logp: torch.Tensor, advantage: torch.Tensor,
                      mask: torch.Tensor, clip_eps: float, dual_clip: float | None = None
                      ) -> torch.Tensor:
    """Per-sequence clipped surrogate loss, averaged over each sequence's masked tokens.

    Args:
        logp: ``[B, T]`` current log-probs (with grad).
        old_logp: ``[B, T]`` behaviour log-probs (no grad).
        advantage: ``[B]`` (one per sequence) or ``[B, T]`` (per token).
        mask: ``[B, T]`` 1.0 on tokens that get credit (and are not padding).
        clip_eps: PPO clip range.
        dual_clip: if set, with a negative advantage the token's surrogate is at least
            ``dual_clip * A`` (dual-clip PPO, Ye et al. 2020): PPO's ``min`` keeps ``r * A``
            however large ``r`` is. Off by default: in the demo, where the policy moves fast
            between the logged log-probs and the update, ``dual_clip = 3`` cut seed 1's late
            success from 0.70 to 0.42.

    Returns:
        ``[B]`` losses; a sequence with an empty mask has loss 0.
    """
    if advantage.dim() == 1:
        advantage = advantage.unsqueeze(1)
    ratio = torch.exp((logp - old_logp).clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO))
    surrogate = torch.minimum(ratio * advantage,
                              ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps) * advantage)
    if dual_clip is not None:
        surrogate = torch.where(advantage < 0, torch.maximum(surrogate, dual_clip * advantage),
                                surrogate)
    return -(surrogate * mask).sum(1) / mask.sum(1).clamp_min(1.0)


def pg_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantage: torch.Tensor,
            mask: torch.Tensor, clip_eps: float = 0.2, dual_clip: float | None = None
            ) -> torch.Tensor:
    """The evaluative objective: :func:`clipped_surrogate` with one advantage per action."""
    return clipped_surrogate(logp, old_logp, advantage, mask, clip_eps, dual_clip)


class RunningBaseline:
    """A running mean of rewards per source, subtracted from rewards to get advantages.

    The first ``1/momentum`` rewards of a source are averaged exactly; after that it is an
    exponential moving average, so the baseline follows a drifting reward level.

    >>> b = RunningBaseline(momentum=0.5)
    >>> b.update("tool", [1.0, 0.0]); b.value("tool")
    0.5
    """

    __slots__ = ("counts", "means", "momentum")

    def __init__(self, momentum: float = 0.01) -> None:
        self.momentum = momentum
        self.means: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def value(self, source: str) -> float:
        """Current baseline of ``source`` (0 before any reward)."""
        return self.means.get(source, 0.0)

    def update(self, source: str, rewards: list[float]) -> None:
        """Fold rewards of ``source`` into its mean."""
        for reward in rewards:
            n = self.counts.get(source, 0) + 1
            self.counts[source] = n
            rate = max(1.0 / n, self.momentum)
            mean = self.means.get(source, 0.0)
            self.means[source] = mean + rate * (reward - mean)

    def state_dict(self) -> dict[str, dict[str, float] | dict[str, int]]:
        """Means and counts per source."""
        return {"means": dict(self.means), "counts": dict(self.counts)}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`."""
        self.means = {k: float(v) for k, v in state["means"].items()}
        self.counts = {k: int(v) for k, v in state["counts"].items()}

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


def clipped_surrogate(logp: torch.Tensor, old_logp: torch.Tensor, advantage: torch.Tensor,
                      mask: torch.Tensor, clip_eps: float) -> torch.Tensor:
    """Per-sequence clipped surrogate loss, averaged over each sequence's masked tokens.

    Args:
        logp: ``[B, T]`` current log-probs (with grad).
        old_logp: ``[B, T]`` behaviour log-probs (no grad).
        advantage: ``[B]`` (one per sequence) or ``[B, T]`` (per token).
        mask: ``[B, T]`` 1.0 on tokens that get credit (and are not padding).
        clip_eps: PPO clip range.

    Returns:
        ``[B]`` losses; a sequence with an empty mask has loss 0.
    """
    if advantage.dim() == 1:
        advantage = advantage.unsqueeze(1)
    ratio = torch.exp(logp - old_logp)
    surrogate = torch.minimum(ratio * advantage,
                              ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps) * advantage)
    return -(surrogate * mask).sum(1) / mask.sum(1).clamp_min(1.0)


def pg_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantage: torch.Tensor,
            mask: torch.Tensor, clip_eps: float = 0.2) -> torch.Tensor:
    """The evaluative objective: :func:`clipped_surrogate` with one advantage per action."""
    return clipped_surrogate(logp, old_logp, advantage, mask, clip_eps)


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

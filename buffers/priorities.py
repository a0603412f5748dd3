"""Initial priorities of new tuples, before any trainer has seen them."""

from __future__ import annotations

from typing import Any

from nextstate.extractors.types import ScoredTuple


class RewardBaselinePriority:
    """``|reward - baseline| * confidence`` for evaluative tuples, ``confidence`` otherwise.

    A reward far from what the buffer usually sees is surprising, hence worth replaying
    first (a cheap stand-in for the TD error before the trainer reports a loss). The
    baseline is the running mean of evaluative rewards: an exact mean for the first
    ``1 / momentum`` tuples, then an exponential moving average, so it follows drift.
    Directive and preference tuples carry no reward: the extractor's confidence is all
    there is to rank them.

    Example:
        >>> from nextstate.extractors.types import Message, ScoredTuple
        >>> prio = RewardBaselinePriority()
        >>> t = ScoredTuple("s#1", "s", "x", "evaluative", "tool", (), Message("assistant"),
        ...                 reward=-1.0, confidence=0.5)
        >>> prio(t), prio.baseline
        (0.5, -1.0)
    """

    __slots__ = ("baseline", "count", "momentum")

    def __init__(self, momentum: float = 0.01) -> None:
        self.momentum = momentum
        self.baseline = 0.0
        self.count = 0

    def __call__(self, item: ScoredTuple) -> float:
        # Conditional expressions, not max(): the builtin costs more than the rest of the
        # call. Each is max() spelled out: the first argument unless the second is greater
        # (so a NaN confidence gives 0.0, as max(0.0, nan) does).
        confidence = item.confidence
        if not confidence > 0.0:
            confidence = 0.0
        if item.kind != "evaluative":
            return confidence
        reward, baseline = item.reward, self.baseline
        priority = abs(reward - baseline) * confidence
        self.count = count = self.count + 1
        rate = 1.0 / count
        if not rate > self.momentum:
            rate = self.momentum
        self.baseline = baseline + rate * (reward - baseline)
        return priority

    def state_dict(self) -> dict[str, Any]:
        """The running baseline."""
        return {"baseline": self.baseline, "count": self.count, "momentum": self.momentum}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`."""
        self.baseline = float(state["baseline"])
        self.count = int(state["count"])
        self.momentum = float(state["momentum"])

"""RewardBaselinePriority: initial priorities and the running baseline."""

from __future__ import annotations

import math

from nextstate.buffers.priorities import RewardBaselinePriority

from .conftest import make_tuple


def reference(items, momentum=0.01):
    """The definition, written with max() (the class spells max() out for speed)."""
    baseline, count, out = 0.0, 0, []
    for item in items:
        if item.kind != "evaluative":
            out.append(max(0.0, item.confidence))
            continue
        out.append(abs(item.reward - baseline) * max(0.0, item.confidence))
        count += 1
        baseline += max(momentum, 1.0 / count) * (item.reward - baseline)
    return out, baseline, count


def test_priorities_and_baseline_match_the_definition():
    """Same priorities and baseline as max(), NaN and negative confidences included."""
    confidences = [1.0, 0.5, -0.3, math.nan, 0.0, -0.0, 0.9, math.inf]
    items = [make_tuple(i, kind="evaluative" if i % 4 else "directive",
                        reward=math.sin(i), confidence=confidences[i % len(confidences)])
             for i in range(300)]
    prio = RewardBaselinePriority()
    got = [prio(item) for item in items]
    want, baseline, count = reference(items)
    assert [repr(p) for p in got] == [repr(p) for p in want]
    assert (prio.baseline, prio.count) == (baseline, count)

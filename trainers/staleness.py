"""Staleness: how many policy versions ago a tuple's action was produced, and what to do.

Online tuples come from whichever policy version the agent ran. Much older ones describe a
policy the trainer has moved away from (their ratios explode, their advantages mislead), so
beyond ``max_staleness`` versions they are dropped or down-weighted. Tuples without a
version (agents that don't log one) count as fresh and are reported as ``unknown``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from nextstate.buffers.versions import UNKNOWN_VERSION, parse_policy_version


def staleness_of(tuple_version: str | None, current_version: int) -> int | None:
    """``current - version`` by the label's trailing integer (``"7"``, ``"v7"``), else None.

    Parsed like the buffers do (:func:`nextstate.buffers.parse_policy_version`) so the
    trainer and the sampler agree on what is stale.
    """
    version = parse_policy_version(tuple_version)
    if version == UNKNOWN_VERSION:
        return None
    return max(0, current_version - version)


def staleness_weights(staleness: Sequence[int | None], max_staleness: int, mode: str,
                      decay: float) -> np.ndarray:
    """Per-tuple weight: 1 when fresh enough, 0 (drop) or ``decay ** excess`` beyond."""
    weights = np.ones(len(staleness))
    for i, s in enumerate(staleness):
        if s is not None and s > max_staleness:
            weights[i] = 0.0 if mode == "drop" else decay ** (s - max_staleness)
    return weights


def staleness_stats(staleness: Sequence[int | None], weights: np.ndarray) -> dict[str, float]:
    """The staleness distribution of a batch, as ``charts/staleness_*`` metrics."""
    known = np.array([s for s in staleness if s is not None], dtype=float)
    stats = {"charts/staleness_unknown": float(len(staleness) - len(known)),
             "charts/stale_dropped": float(np.sum(weights == 0.0))}
    if len(known):
        stats |= {"charts/staleness_mean": float(known.mean()),
                  "charts/staleness_p50": float(np.percentile(known, 50)),
                  "charts/staleness_p90": float(np.percentile(known, 90)),
                  "charts/staleness_max": float(known.max())}
    return stats

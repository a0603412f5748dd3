"""Policy versions: the trailing integer of ``ScoredTuple.policy_version``.

Agents log versions as free text (``"7"``, ``"v7"``, ``"policy-7"``); staleness needs an
order, so the trailing integer is what counts. A missing or unparseable version is
:data:`UNKNOWN_VERSION`: the sampler treats such tuples as current (never stale), because
dropping data for lack of a label would silently starve buffers fed by agents that do not
log versions.
"""

from __future__ import annotations

import functools
import re

UNKNOWN_VERSION = -1
_TRAILING_INT = re.compile(r"(\d+)\s*$")


@functools.lru_cache(maxsize=4096)
def parse_policy_version(version: str | None) -> int:
    """The trailing integer of a version label, or :data:`UNKNOWN_VERSION`.

    Example:
        >>> parse_policy_version("policy-7"), parse_policy_version(None)
        (7, -1)
    """
    if version is None:
        return UNKNOWN_VERSION
    match = _TRAILING_INT.search(version)
    return int(match.group(1)) if match else UNKNOWN_VERSION

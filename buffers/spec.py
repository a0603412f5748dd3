"""The per-deployment configuration of one named replay buffer."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Literal

from nextstate.extractors.types import KINDS, SOURCES, Kind

Eviction = Literal["fifo", "lowest_priority"]
SamplerName = Literal["uniform", "prioritized"]


@dataclasses.dataclass(frozen=True)
class BufferSpec:
    """What one named buffer stores, how it evicts and how it samples."""

    name: str
    """Buffer name; also the file name of its durable storage (``<name>.sqlite3``)."""
    kinds: tuple[Kind, ...] = KINDS
    """Tuple kinds routed into this buffer by :class:`BufferSet`."""
    capacity: int = 100_000
    """Most tuples held at once; adds past it evict."""
    eviction: Eviction = "fifo"
    """Which tuple makes room: the oldest (``fifo``) or the lowest-priority one."""
    source_quotas: Mapping[str, float] | None = None
    """Per-source cap as a fraction of capacity (``{"tool": 0.5}``). A source at its cap
    evicts its own tuples, so one chatty source cannot crowd out the rest; sources not
    named are uncapped."""
    sampler: SamplerName = "uniform"
    """``uniform`` or ``prioritized`` (sum tree, importance weights)."""
    alpha: float = 0.6
    """Prioritized: how strongly priority shapes sampling (0 = uniform)."""
    beta: float = 0.4
    """Prioritized: importance-weight exponent (1 = full correction)."""
    priority_eps: float = 1e-3
    """Added to every priority so that no stored tuple has zero chance of being sampled."""
    session_group: int = 1
    """Draw batches as groups of up to this many tuples of one session: an anchor drawn by
    ``sampler`` and the session's turns before it, so the trainer forwards their shared
    context once (``trainers/packing.py``). Per-tuple sampling stays uniform, or
    prioritized with importance weights for the grouped draw (``samplers.Sampler.sample``).
    1: every tuple drawn on its own. Best a divisor of the trainer's ``micro_batch_size``."""
    max_staleness: int | None = None
    """Tuples whose action is more than this many policy versions older than the
    ``current_version`` passed to ``sample`` are dropped from sampling (kept in storage).
    None: never dropped. Tuples with an unknown version are never stale."""
    staleness_decay: float = 1.0
    """Each sampled tuple's weight is multiplied by ``staleness_decay ** staleness``
    (1.0: staleness does not weigh)."""
    dedup_horizon: int | None = None
    """Keys of evicted tuples are still deduplicated while they are among the last
    ``dedup_horizon`` inserts (None: ``capacity``); keys of stored tuples always are."""
    synchronous: Literal["FULL", "NORMAL"] = "FULL"
    """Durable storage: SQLite ``synchronous``. FULL fsyncs on flush (survives power loss);
    NORMAL survives a killed process but may lose the last flushes on power loss."""
    seed: int | None = None
    """Seed of the buffer's own sampling generator (None: from entropy)."""

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name or self.name.startswith("."):
            raise ValueError(f"bad buffer name {self.name!r}")
        if self.capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {self.capacity}")
        if self.eviction not in ("fifo", "lowest_priority"):
            raise ValueError(f"unknown eviction {self.eviction!r}")
        if self.sampler not in ("uniform", "prioritized"):
            raise ValueError(f"unknown sampler {self.sampler!r}")
        unknown_kinds = set(self.kinds) - set(KINDS)
        if unknown_kinds:
            raise ValueError(f"unknown kinds {sorted(unknown_kinds)}")
        for source, fraction in (self.source_quotas or {}).items():
            if source not in SOURCES:
                raise ValueError(f"unknown source {source!r} in source_quotas")
            if not 0.0 < fraction <= 1.0:
                raise ValueError(f"quota of {source!r} must be in (0, 1], got {fraction}")
        if self.alpha < 0 or self.beta < 0 or self.priority_eps <= 0:
            raise ValueError("alpha and beta must be >= 0 and priority_eps > 0")
        if self.session_group < 1:
            raise ValueError(f"session_group must be >= 1, got {self.session_group}")
        if self.max_staleness is not None and self.max_staleness < 0:
            raise ValueError("max_staleness must be >= 0")
        if not 0.0 < self.staleness_decay <= 1.0:
            raise ValueError("staleness_decay must be in (0, 1]")
        if self.dedup_horizon is not None and self.dedup_horizon < 0:
            raise ValueError("dedup_horizon must be >= 0")

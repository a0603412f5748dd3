"""The trainer's configuration: one dataclass, a docstring under every field (CleanRL style)."""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal


@dataclass
class TrainerConfig:
    """Everything a :class:`~nextstate.trainers.trainer.Trainer` run is configured by."""

    # --- objectives -------------------------------------------------------------------
    pg_weight: float = 1.0
    """Weight of the evaluative policy-gradient loss (``losses/pg``)."""
    opd_weight: float = 1.0
    """Weight of the hindsight distillation loss on directive hints (``losses/opd``)."""
    dpo_weight: float = 1.0
    """Weight of the DPO loss on preference pairs (``losses/dpo``)."""
    kl_weight: float = 0.0
    """Weight of the KL(policy || reference) penalty on evaluative actions; 0 disables the
    reference forward entirely."""
    clip_eps: float = 0.2
    """PPO ratio clip range (ratios against logged behaviour log-probs)."""
    baseline_momentum: float = 0.01
    """Per-source running-mean baseline: exact mean over the first 1/momentum rewards, an
    exponential moving average after."""
    opd_adv_clip: float = 5.0
    """Per-token distillation advantages are clipped to +-this (nats)."""
    hint_template: str = "[Hint: {hint}]"
    """How a directive hint is shown to the teacher (appended to the context as a user turn)."""
    dpo_beta: float = 0.1
    """DPO inverse temperature."""
    tool_args_credit: bool = True
    """Put the advantage of ``credit="tool_args"`` tuples only on the tool-call argument
    tokens; False spreads it over the whole action."""

    # --- data -------------------------------------------------------------------------
    buffer_mix: dict[str, float] = field(default_factory=dict)
    """Sampling ratio per buffer name; empty means equal shares. Shares of empty buffers go
    to the others."""
    batch_size: int = 32
    """Tuples per optimizer step (summed over buffers)."""
    micro_batch_size: int = 8
    """Most tuples per forward/backward; gradients accumulate over the micro-batches of a
    step. Micro-batches are cut between sessions (one is cut short rather than split a
    session, unless the session alone holds more), so a session's shared prefix is forwarded
    once. A batch drawn independently from a large buffer rarely holds two tuples of one
    session: a buffer's ``session_group`` (``BufferSpec``, ``[[buffers]]``) draws them in
    groups."""
    share_prefixes: bool = True
    """Forward a prefix shared by several sequences once (see ``packing.py``)."""
    max_staleness: int = 8
    """Tuples produced by a policy more than this many versions old are dropped (or
    down-weighted, see ``staleness_mode``)."""
    staleness_mode: Literal["drop", "downweight"] = "drop"
    """``drop`` stale tuples, or ``downweight`` them by ``staleness_decay ** excess``."""
    staleness_decay: float = 0.5
    """Per-version weight factor beyond ``max_staleness`` in ``downweight`` mode."""

    # --- optimisation -----------------------------------------------------------------
    lr: float = 1e-4
    """AdamW peak learning rate."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    grad_clip: float = 1.0
    """Max global gradient norm (0 disables clipping)."""
    schedule: Literal["constant", "linear", "cosine"] = "constant"
    """Learning-rate decay after warm-up, over ``total_steps``."""
    warmup_steps: int = 0
    """Linear warm-up steps."""
    total_steps: int = 10_000
    """Horizon of the ``linear``/``cosine`` decay (online training may run past it at the
    final rate)."""

    # --- publishing -------------------------------------------------------------------
    publish_every: int = 100
    """Publish a versioned checkpoint every this many optimizer steps (0: only on demand)."""
    keep_checkpoints: int = 5
    """Published versions kept on disk (older ones are deleted; 0 keeps all)."""

    # --- runtime ----------------------------------------------------------------------
    device: str = "cpu"
    """Torch device of the policy and batches (``cuda``, ``cuda:1``, ``cpu``...)."""
    seed: int = 0
    """Seeds torch, numpy and random at construction."""
    torch_threads: int | None = None
    """Set torch's intra-op threads at construction (None leaves the process setting). Small
    models on few cores run much faster with 1: idle OpenMP threads spin on busy cores."""

    @classmethod
    def from_mapping(cls, data: dict[str, Any]) -> TrainerConfig:
        """Build from a dict, rejecting unknown keys (typos should fail loudly)."""
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown trainer config keys: {sorted(unknown)}")
        values = dict(data)
        if "betas" in values:
            values["betas"] = tuple(values["betas"])
        return cls(**values)

    @classmethod
    def from_file(cls, path: Path) -> tuple[TrainerConfig, dict[str, Any]]:
        """Read a TOML or JSON file: its ``[trainer]`` table (or top level) is the config.

        Returns:
            The config and the whole file's data (for other tables such as ``[policy]``).
        """
        text = Path(path).read_text()
        data = json.loads(text) if str(path).endswith(".json") else tomllib.loads(text)
        return cls.from_mapping(data.get("trainer", {k: v for k, v in data.items()
                                                     if not isinstance(v, dict)})), data

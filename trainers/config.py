"""The trainer's configuration: one dataclass, a docstring under every field (CleanRL style)."""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

# Bounds checked by from_mapping (a config file): ``staleness_mode = "dorp"`` used to
# down-weight without a word, ``lr = -1e-4`` to train away from the rewards.
Positive = Annotated[float, msgspec.Meta(gt=0)]
NonNegative = Annotated[float, msgspec.Meta(ge=0)]
Fraction = Annotated[float, msgspec.Meta(gt=0, le=1)]
AtLeastOne = Annotated[int, msgspec.Meta(ge=1)]
NonNegativeInt = Annotated[int, msgspec.Meta(ge=0)]
Beta = Annotated[float, msgspec.Meta(ge=0, lt=1)]


@dataclass
class TrainerConfig:
    """Everything a :class:`~nextstate.trainers.trainer.Trainer` run is configured by."""

    # --- objectives -------------------------------------------------------------------
    pg_weight: NonNegative = 1.0
    """Weight of the evaluative policy-gradient loss (``losses/pg``)."""
    opd_weight: NonNegative = 1.0
    """Weight of the hindsight distillation loss on directive hints (``losses/opd``)."""
    dpo_weight: NonNegative = 1.0
    """Weight of the DPO loss on preference pairs (``losses/dpo``)."""
    kl_weight: NonNegative = 0.0
    """Weight of the KL(policy || reference) penalty on evaluative actions; 0 disables the
    reference forward entirely."""
    clip_eps: Positive = 0.2
    """PPO ratio clip range (ratios against logged behaviour log-probs)."""
    dual_clip: Annotated[float, msgspec.Meta(gt=1)] | None = None
    """Dual-clip PPO (e.g. 3): with a negative advantage, a token's surrogate is at least
    ``dual_clip * A``. Off by default (it slowed the demo's learning); for log-probs logged by
    another model than the one trained."""
    min_logged_logprob: float = -100.0
    """Logged behaviour log-probs of an action with a token below this are not used (the
    current ones stand in, ratio 1): OpenAI logs -9999.0 for tokens it would not sample, and
    one such action made every weight NaN after one step."""
    baseline_momentum: Fraction = 0.01
    """Per-source running-mean baseline: exact mean over the first 1/momentum rewards, an
    exponential moving average after."""
    opd_adv_clip: Positive = 5.0
    """Per-token distillation advantages are clipped to +-this (nats)."""
    hint_template: str = "[Hint: {hint}]"
    """How a directive hint is shown to the teacher (appended to the context as a user turn)."""
    dpo_beta: Positive = 0.1
    """DPO inverse temperature."""
    tool_args_credit: bool = True
    """Put the advantage of ``credit="tool_args"`` tuples only on the tool-call argument
    tokens; False spreads it over the whole action."""

    # --- data -------------------------------------------------------------------------
    buffer_mix: dict[str, NonNegative] = field(default_factory=dict)
    """Sampling ratio per buffer name; empty means equal shares. Shares of empty buffers go
    to the others."""
    batch_size: AtLeastOne = 32
    """Tuples per optimizer step (summed over buffers)."""
    micro_batch_size: AtLeastOne = 8
    """Most tuples per forward/backward; gradients accumulate over the micro-batches of a
    step. Micro-batches are cut between sessions (one is cut short rather than split a
    session, unless the session alone holds more), so a session's shared prefix is forwarded
    once. A batch drawn independently from a large buffer rarely holds two tuples of one
    session: a buffer's ``session_group`` (``BufferSpec``, ``[[buffers]]``) draws them in
    groups."""
    share_prefixes: bool = True
    """Forward a prefix shared by several sequences once (see ``packing.py``)."""
    max_staleness: NonNegativeInt = 8
    """Tuples produced by a policy more than this many versions old are dropped (or
    down-weighted, see ``staleness_mode``)."""
    staleness_mode: Literal["drop", "downweight"] = "drop"
    """``drop`` stale tuples, or ``downweight`` them by ``staleness_decay ** excess``."""
    staleness_decay: Fraction = 0.5
    """Per-version weight factor beyond ``max_staleness`` in ``downweight`` mode."""

    # --- optimisation -----------------------------------------------------------------
    lr: Positive = 1e-4
    """AdamW peak learning rate."""
    weight_decay: NonNegative = 0.0
    """AdamW weight decay."""
    betas: tuple[Beta, Beta] = (0.9, 0.999)
    """AdamW betas."""
    grad_clip: NonNegative = 1.0
    """Max global gradient norm (0 disables clipping)."""
    schedule: Literal["constant", "linear", "cosine"] = "constant"
    """Learning-rate decay after warm-up, over ``total_steps``."""
    warmup_steps: NonNegativeInt = 0
    """Linear warm-up steps."""
    total_steps: AtLeastOne = 10_000
    """Horizon of the ``linear``/``cosine`` decay (online training may run past it at the
    final rate)."""

    # --- publishing -------------------------------------------------------------------
    publish_every: NonNegativeInt = 100
    """Publish a versioned checkpoint every this many optimizer steps (0: only on demand)."""
    keep_checkpoints: NonNegativeInt = 5
    """Published versions kept on disk (older ones are deleted; 0 keeps all)."""

    # --- runtime ----------------------------------------------------------------------
    device: str = "cpu"
    """Torch device of the policy and batches (``cuda``, ``cuda:1``, ``cpu``...)."""
    seed: int = 0
    """Seeds torch, numpy and random at construction."""
    torch_threads: AtLeastOne | None = None
    """Set torch's intra-op threads at construction (None leaves the process setting). Small
    models on few cores run much faster with 1: idle OpenMP threads spin on busy cores."""

    @classmethod
    def from_mapping(cls, data: dict[str, Any]) -> TrainerConfig:
        """Build from a dict, rejecting unknown keys, wrong types, choices and values out of
        bounds with a message naming the key (typos should fail loudly)."""
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown trainer config keys: {sorted(unknown)}")
        try:
            return msgspec.convert(data, cls)
        except msgspec.ValidationError as exc:
            raise ValueError(f"bad trainer config: {exc}") from None

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

"""``nextstate train``: run the trainer standalone against a state directory's durable buffers.

The policy comes from the config file's ``[policy]`` table: ``kind = "tiny"`` (with
:class:`~nextstate.trainers.tiny.TinyConfig` fields and ``seed``) or ``kind = "hf"`` with
``path`` and an optional ``[policy.lora]`` table of ``peft.LoraConfig`` arguments. Buffers
are the file's ``[[buffers]]`` (``BufferSpec`` fields; the daemon's defaults otherwise),
opened from ``<state-dir>/buffers`` (the state dir of ``nextstate run --workers N``: from
every worker's shard, each buffer's shards sampled as one by
:class:`~nextstate.buffers.ShardedBuffer`); versions are published to
``<state-dir>/checkpoints`` and training resumes from the latest one.

The buffers are the daemon's, and it may be writing them: they are opened read-only
(``SQLiteStorage(read_only=True)``), taken in again every ``--refresh-s`` seconds, and the
trainer's priority updates stay in its memory.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from nextstate.trainers.config import TrainerConfig
from nextstate.trainers.policy import CausalLMPolicy
from nextstate.trainers.trainer import Trainer


def build_policy(spec: Mapping[str, Any], device: str = "cpu") -> CausalLMPolicy:
    """A fresh policy from a ``[policy]`` table (weights are then resumed by the trainer)."""
    spec = dict(spec)
    kind = spec.pop("kind", "tiny")
    if kind == "tiny":
        from nextstate.trainers.tiny import TinyConfig, TinyPolicy

        seed = int(spec.pop("seed", 0))
        return TinyPolicy(TinyConfig(**spec), seed=seed, device=device)
    if kind == "hf":
        from nextstate.trainers.hf import HFPolicy

        return HFPolicy.from_pretrained(spec["path"], lora=spec.get("lora"), device=device)
    raise ValueError(f"unknown policy kind {kind!r}")


def train_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``nextstate train --state-dir DIR [--config FILE] [--steps N]``.

    Returns:
        0 after training (also when the buffers ran dry), 2 on a missing state directory,
        5 when another trainer (or a daemon training) holds its checkpoint dir, 6
        (``EXIT_STATE_CORRUPT``) when a buffer or the latest published version does not
        read back (the message names the file; nothing is changed in it).
    """
    import msgspec

    from nextstate.buffers import BufferSet, BufferSpec, ShardedBuffer
    from nextstate.buffers.statefile import EXIT_STATE_CORRUPT, CorruptStateFile

    parser = argparse.ArgumentParser(prog="nextstate train", description=__doc__)
    parser.add_argument("--state-dir", required=True,
                        help="the daemon's state directory (of --workers: every shard)")
    parser.add_argument("--config", help="TOML/JSON with [trainer], [policy], [[buffers]]")
    parser.add_argument("--steps", type=int, default=1000, help="optimizer steps to run")
    parser.add_argument("--log-every", type=int, default=10, help="print metrics every N steps")
    parser.add_argument("--refresh-s", type=float, default=10.0,
                        help="take in the tuples the daemon stored since, every this many s")
    args = parser.parse_args(argv)

    state_dir = Path(args.state_dir)
    from nextstate.daemon.workers import shard_dirs

    # A state dir of `nextstate run --workers N`: its workers' shards, sampled as one.
    shards = shard_dirs(state_dir)
    for shard in shards:
        if not (shard / "buffers").is_dir():
            print(f"nextstate train: no buffers in {shard}", file=sys.stderr)
            return 2
    config, data = (TrainerConfig.from_file(Path(args.config)) if args.config
                    else (TrainerConfig(), {}))
    buffer_specs = data.get("buffers")
    if buffer_specs is None:
        from nextstate.daemon.config import DaemonConfig

        buffer_specs = DaemonConfig().buffers
    specs = [msgspec.convert(spec, BufferSpec) for spec in buffer_specs]
    from nextstate.daemon.statelock import TRAINER_LOCK_FILE, StateDirLock, StateLockError

    # One trainer per checkpoint dir: two published versions of one number, or each resumed
    # from the other's (the daemon's --train worker holds the same lock).
    trainer_lock = StateDirLock(state_dir / "checkpoints", TRAINER_LOCK_FILE, "nextstate trainer")
    try:
        trainer_lock.acquire()
    except StateLockError as exc:
        print(f"nextstate train: {exc}", file=sys.stderr)
        return 5
    policy = build_policy(data.get("policy", {"kind": "tiny"}), device=config.device)
    try:
        with trainer_lock, contextlib.ExitStack() as stack:
            # Read-only: the daemon (or its workers) may be running and writing them.
            sets = [stack.enter_context(BufferSet.open(shard / "buffers", specs, read_only=True))
                    for shard in shards]
            buffers = sets[0].buffers if len(sets) == 1 else {
                spec.name: ShardedBuffer([s.buffers[spec.name] for s in sets], seed=spec.seed)
                for spec in specs}
            trainer = Trainer.resume(config, policy, buffers, state_dir / "checkpoints")
            summary = _train(trainer, args.steps, args.log_every, args.refresh_s)
    except CorruptStateFile as exc:
        print(f"nextstate train: {exc}", file=sys.stderr)
        return EXIT_STATE_CORRUPT
    except FileNotFoundError as exc:  # a buffer the daemon has not made (another config)
        print(f"nextstate train: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0


def _train(trainer: Trainer, steps: int, log_every: int, refresh_s: float) -> dict[str, Any]:
    """Step ``trainer`` ``steps`` times (fewer if the buffers run dry), then publish; the
    summary line's fields. Every ``refresh_s`` the buffers take in what the daemon stored."""
    start = trainer.global_step
    refreshed = time.monotonic()
    for _ in range(steps):
        if time.monotonic() - refreshed >= refresh_s:
            for buffer in trainer.buffers.values():
                buffer.refresh()  # type: ignore[attr-defined]
            refreshed = time.monotonic()
        metrics = trainer.step()
        if not metrics:
            print("nextstate train: no sampleable tuples; stopping", file=sys.stderr)
            break
        if trainer.global_step % log_every == 0:
            print(json.dumps({k: round(v, 5) for k, v in metrics.items()}))
    published = trainer.maybe_publish(force=True)
    return {"steps": trainer.global_step - start, "step": trainer.global_step,
            "policy_version": trainer.policy_version,
            "published": str(published) if published else None}


if __name__ == "__main__":
    raise SystemExit(train_main())

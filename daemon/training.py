"""Online training inside the daemon: a background worker that learns while records stream in.

The pipeline thread adds tuples to the buffers; this worker samples them, steps the trainer
and publishes versioned checkpoints under ``<state_dir>/checkpoints`` (the same place
``nextstate train`` uses, so either can resume the other). The buffers are shared between the
two threads through one lock, held only for the buffer calls themselves — never during a
forward or backward pass — so consumption does not wait on training.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import structlog

from nextstate.buffers import SampleBatch
from nextstate.daemon.config import DaemonConfig
from nextstate.daemon.yieldstats import YieldCollector
from nextstate.trainers.cli import build_policy
from nextstate.trainers.config import TrainerConfig
from nextstate.trainers.trainer import Trainer

log = structlog.get_logger("nextstate.training")


class LockedBuffer:
    """A buffer's trainer-facing side (``sample``/``update_priorities``) under a shared lock."""

    def __init__(self, buffer: Any, lock: threading.Lock) -> None:
        self.buffer = buffer
        self.lock = lock

    def sample(self, batch_size: int, current_version: int | None = None) -> SampleBatch:
        with self.lock:
            return self.buffer.sample(batch_size, current_version=current_version)

    def update_priorities(self, indices: np.ndarray, priorities: np.ndarray) -> None:
        with self.lock:
            self.buffer.update_priorities(indices, priorities)


class TrainingWorker(threading.Thread):
    """Steps a :class:`Trainer` from the daemon's buffers until ``stop`` is set.

    Args:
        config: the daemon configuration (its ``trainer`` and ``policy`` tables).
        buffers: the pipeline's buffers by name.
        lock: the lock the pipeline holds while it adds to or flushes the buffers.
        stop: set to stop after the current step; a final version is published.
        collector: where the trainer's metrics are exposed (``nextstate_trainer_*``).
        announce: told about every published version (e.g. a Kafka producer's send).
        idle_s: how long to wait when the buffers have nothing sampleable yet.
    """

    def __init__(self, config: DaemonConfig, buffers: dict[str, Any], lock: threading.Lock,
                 stop: threading.Event, collector: YieldCollector | None = None,
                 announce: Callable[[dict[str, Any]], None] | None = None,
                 idle_s: float = 1.0, produced: Callable[[], float] | None = None) -> None:
        super().__init__(name="nextstate-trainer", daemon=True)
        self.trainer_config = TrainerConfig.from_mapping(config.trainer)
        policy = build_policy(config.policy, device=self.trainer_config.device)
        locked = {name: LockedBuffer(buffer, lock) for name, buffer in buffers.items()}
        self.trainer = Trainer.resume(self.trainer_config, policy, locked,
                                      config.state_path / "checkpoints", announce)
        self.stop = stop
        self.collector = collector
        self.max_lag = config.train_max_lag
        self.produced = produced  # tuples stored so far (the pipeline's counter)
        self._produced_at_start = produced() if produced is not None else 0.0
        self.idle_s = idle_s
        self.steps = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        version = self.trainer.policy_version
        try:
            while not self.stop.is_set():
                metrics = self.trainer.step()
                if not metrics:
                    self.stop.wait(self.idle_s)  # nothing sampleable yet: let tuples arrive
                    continue
                self.steps += 1
                if self.trainer.policy_version != version:  # step() publishes on schedule
                    version = self.trainer.policy_version
                    log.info("policy_published", version=version, step=self.trainer.global_step)
                self._expose(metrics)
            self.trainer.maybe_publish(force=True)
        except BaseException as exc:  # surfaced by the daemon; training must not die silently
            self.error = exc
            log.error("trainer_failed", error=repr(exc)[:500])

    def lag(self) -> float:
        """Stored tuples not yet matched by trainer samples (steps x batch size)."""
        if self.produced is None:
            return 0.0
        trained = self.steps * self.trainer_config.batch_size
        return max(0.0, self.produced() - self._produced_at_start - trained)

    def behind(self) -> str | None:
        """A backpressure signal for the pipeline: why to pause, or None."""
        if self.max_lag <= 0 or self.error is not None:
            return None
        lag = self.lag()
        return f"trainer behind by {int(lag)} tuples" if lag > self.max_lag else None

    def _expose(self, metrics: dict[str, float]) -> None:
        if self.collector is None:
            return
        self.collector.set_gauge("trainer_policy_version", "Latest published policy version.",
                                 float(self.trainer.policy_version))
        self.collector.set_gauge("trainer_steps", "Optimizer steps taken.",
                                 float(self.trainer.global_step))
        for key, value in metrics.items():
            name = "trainer_" + key.replace("/", "_")
            self.collector.set_gauge(name, f"Trainer metric {key}.", float(value))

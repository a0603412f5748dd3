"""One simulated deployment: the agent acts, records flow through the real daemon pipeline,
the real trainer learns from its buffers and publishes versions the agent hot-loads.

Records go through a JSON-lines file (the file source): the agent appends OpenAI call-log
records and feedback / session_end events; the daemon side reads the new complete lines
and feeds them to :class:`~nextstate.daemon.pipeline.Pipeline` with their line offsets.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nextstate.daemon.config import DaemonConfig, load_config
from nextstate.daemon.demo.agent import SYSTEM_PROMPT, PolicyAgent, candidates
from nextstate.daemon.demo.env import TOOL_SCHEMAS, make_task, run_tool
from nextstate.daemon.demo.transport import FileTransport, Transport
from nextstate.daemon.pipeline import Pipeline
from nextstate.extractors.types import Message
from nextstate.trainers.checkpoint import POLICY_DIR, latest_checkpoint
from nextstate.trainers.config import TrainerConfig
from nextstate.trainers.sampling import ListBatch
from nextstate.trainers.tiny import TinyConfig, TinyPolicy
from nextstate.trainers.trainer import Trainer

MODEL = "nextstate-tiny"


@dataclass
class DemoSettings:
    """Knobs of one simulated deployment."""

    interactions: int = 600
    """Agent actions to run (the last session is finished past it)."""
    seed: int = 0
    """Seeds the tasks, the user, the agent's sampling and the initial policy."""
    train: bool = True
    """False: the control run (same seed, the policy stays frozen)."""
    max_actions: int = 4
    """Actions per session at most."""
    max_corrections: int = 2
    """The user gives up after this many wrong answers."""
    temperature: float = 0.5
    """Divides the policy's log-probs at the tokens where candidates part (see
    :class:`~nextstate.daemon.demo.agent.PolicyAgent`); 1 samples the policy itself, 0.5
    (measured: late success +0.08 on seed 0) follows what it learned a little more closely."""
    steps_per_interaction: float = 1.0
    """Trainer steps run per new interaction the pipeline closed."""
    trainer: dict[str, Any] = field(default_factory=lambda: {
        # Warm-up: the first step's per-source baselines are still 0, so every early reward
        # reads as a failure; a full-size first step would shove every action down at once.
        "lr": 3e-3, "warmup_steps": 30, "batch_size": 16, "micro_batch_size": 16,
        "publish_every": 4, "keep_checkpoints": 2, "max_staleness": 50,
        # A byte-level model this small cannot read a hint, so hindsight distillation only
        # adds drift; the hints are still extracted and buffered (see the signal plot).
        "opd_weight": 0.0})
    """TrainerConfig fields for the run."""
    policy: TinyConfig = field(default_factory=lambda: TinyConfig(d_model=64, n_layers=2,
                                                                  n_heads=4, max_length=384))
    """Shape of the tiny policy (short contexts: the request, the call, the result)."""
    torch_threads: int = 1
    """Torch intra-op threads: a tiny model on a laptop runs fastest on one."""
    timeseries_interval_s: float = 1.0
    """How often the daemon appends its counters to the time series."""


@dataclass
class RunResult:
    """What one run produced."""

    sessions: list[tuple[int, bool]] = field(default_factory=list)
    """(interactions so far when the session ended, success) per session."""
    versions: list[tuple[int, int]] = field(default_factory=list)
    """(interactions so far, policy version the agent runs) after each session."""
    interactions: int = 0
    wall_s: float = 0.0
    state_dir: Path | None = None

    def success_rate(self, start_fraction: float = 0.0) -> float:
        """Share of successful sessions among those ending after ``start_fraction`` of the
        interactions."""
        start = start_fraction * self.interactions
        done = [ok for at, ok in self.sessions if at > start]
        return sum(done) / len(done) if done else 0.0


class _SkipEmpty:
    """A replay buffer as the trainer samples it: an empty batch while it holds nothing (the
    buffers raise on an empty sample; the trainer moves an empty buffer's share on)."""

    def __init__(self, buffer: Any) -> None:
        self.buffer = buffer

    def sample(self, batch_size: int, current_version: int | None = None) -> Any:
        if len(self.buffer) == 0:
            return ListBatch([], np.zeros(0, dtype=np.int64), np.zeros(0))
        return self.buffer.sample(batch_size, current_version=current_version)

    def update_priorities(self, indices: np.ndarray, priorities: np.ndarray) -> None:
        self.buffer.update_priorities(indices, priorities)


def _wire_message(message: Message) -> dict[str, Any]:
    out: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.tool_calls:
        out["tool_calls"] = [{"id": c.id, "type": "function",
                              "function": {"name": c.name, "arguments": c.arguments}}
                             for c in message.tool_calls]
    if message.tool_call_id:
        out["tool_call_id"] = message.tool_call_id
    return out


class Deployment:
    """The agent, the daemon pipeline and (unless frozen) the trainer, wired in one process."""

    def __init__(self, settings: DemoSettings, workdir: Path,
                 transport: Transport | None = None) -> None:
        self.settings = settings
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.transport = transport or FileTransport(self.workdir / "records.jsonl")
        # Seeded buffers: the trainer's samples, and with them the whole run, repeat for a
        # seed (unseeded, two runs of one seed differed by up to 0.45 in late success).
        buffers = [{**spec, "seed": settings.seed} for spec in DaemonConfig().buffers]
        config = load_config(None, source=self.transport.source,
                             state_dir=str(self.workdir / "state"),
                             timeseries_interval_s=settings.timeseries_interval_s,
                             metrics_port=-1, buffers=buffers)
        self.pipeline = Pipeline(config)
        torch.set_num_threads(settings.torch_threads)
        self.agent = PolicyAgent(TinyPolicy(settings.policy, seed=settings.seed),
                                 temperature=settings.temperature, seed=settings.seed)
        self.trainer: Trainer | None = None
        if settings.train:
            trainer_config = TrainerConfig.from_mapping({**settings.trainer,
                                                         "seed": settings.seed})
            self.trainer = Trainer(trainer_config, TinyPolicy(settings.policy, seed=settings.seed),
                                   {name: _SkipEmpty(b) for name, b in
                                    self.pipeline.buffers.buffers.items()},
                                   self.workdir / "checkpoints")
        self._owed_steps = 0.0

    def publish(self, record: dict[str, Any]) -> None:
        """Publish one record of the call log (to Kafka, or to the JSON-lines file)."""
        self.transport.publish(record)

    def consume(self) -> int:
        """The daemon side: process new records; returns the interactions closed."""
        before = self.pipeline.stats.total("interactions")
        for offset, value in self.transport.new_records():
            self.pipeline.process(value, None, self.transport.topic, 0, offset)
        self.pipeline.tick()
        return int(self.pipeline.stats.total("interactions") - before)

    def learn(self, new_interactions: int) -> None:
        """Trainer steps owed for the new interactions; hot-load a newly published version."""
        if self.trainer is None:
            return
        self._owed_steps += new_interactions * self.settings.steps_per_interaction
        while self._owed_steps >= 1:
            self._owed_steps -= 1
            self.trainer.step()
        if self.trainer.policy_version > self.agent.version:
            path = latest_checkpoint(self.trainer.checkpoint_dir)
            if path is not None:
                self.agent.policy.load_weights(path / POLICY_DIR)
                self.agent.version = int(path.name.lstrip("v"))

    def session(self, index: int) -> tuple[int, bool]:
        """Run one session; returns (actions taken, success)."""
        s = self.settings
        task_rng = random.Random(s.seed * 1_000_003 + index)  # the same tasks in every run
        task = make_task(task_rng)
        fill_rng = random.Random(s.seed * 7_919 + index)
        session_id = f"demo-{s.seed}-{index}"
        messages = [Message(role="system", content=SYSTEM_PROMPT),
                    Message(role="user", content=task.request)]
        corrections, cached, actions = 0, 0, 0
        success = False
        ended = False
        for step in range(s.max_actions):
            options = candidates(messages, fill_rng, f"call_{index}_{step}")
            choice, logps = self.agent.choose(messages, options)
            action = options[choice]
            prompt_tokens = len(self.agent.policy.prompt_ids(messages))
            self.publish({
                "session_id": session_id, "ts": time.time(), "model": MODEL,
                "policy_version": self.agent.version,
                "request": {"model": MODEL, "messages": [_wire_message(m) for m in messages],
                            "tools": TOOL_SCHEMAS},
                "response": {"choices": [{"message": _wire_message(action), "logprobs": {
                    "content": [{"logprob": lp} for lp in logps]}}]},
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": len(logps),
                          "prompt_tokens_details": {"cached_tokens": cached}}})
            cached = prompt_tokens  # the next request repeats this prefix: a cache hit
            actions += 1
            messages.append(action)
            if action.tool_calls:
                call = action.tool_calls[0]
                messages.append(Message(role="tool", tool_call_id=call.id,
                                        content=run_tool(task, call.name, call.arguments)))
                continue
            if task.done(action.content):
                self.publish({"type": "feedback", "session_id": session_id, "value": 1,
                              "text": "Thanks, that's right!"})
                success = ended = True
                break
            corrections += 1
            reply = task.correction(action.content, task_rng)
            # The user marks a wrong answer down (the chat UI's thumbs-down) and says why.
            self.publish({"type": "feedback", "session_id": session_id, "value": -1,
                          "text": reply})
            if corrections >= s.max_corrections or step == s.max_actions - 1:
                ended = True
                break
            messages.append(Message(role="user", content=reply))
        del ended  # a session out of actions ends unsuccessfully, like one the user gave up
        self.publish({"type": "session_end", "session_id": session_id,
                      "outcome": 1 if success else -1})
        return actions, success

    def run(self, progress: Callable[[int, RunResult], None] | None = None) -> RunResult:
        """Sessions until ``interactions`` actions were taken."""
        started = time.perf_counter()
        result = RunResult(state_dir=self.pipeline.state_dir)
        index = 0
        while result.interactions < self.settings.interactions:
            actions, success = self.session(index)
            index += 1
            result.interactions += actions
            result.sessions.append((result.interactions, success))
            self.learn(self.consume())
            result.versions.append((result.interactions, self.agent.version))
            if progress is not None:
                progress(result.interactions, result)
        self.pipeline.finish()
        self.pipeline.close()
        result.wall_s = time.perf_counter() - started
        return result

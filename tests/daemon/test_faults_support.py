"""Fault-test helpers (no tests here): the daemon as a subprocess, its config, a reference run."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from nextstate.daemon.config import load_config
from nextstate.daemon.pipeline import Pipeline
from tests.daemon.test_pipeline import stored
from tests.kafka_broker import daemon_http, metric_total

ROOT = Path(__file__).resolve().parents[2]


def make_stream():
    """``benchmarks/make_stream.py`` (not a package) as a module."""
    spec = importlib.util.spec_from_file_location("make_stream",
                                                  ROOT / "benchmarks" / "make_stream.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def stream_records(sessions: int, turns: int, seed: int = 0, delta: float = 0.0
                   ) -> list[tuple[bytes, bytes]]:
    """(key, value) pairs of a realistic call-log stream, key = session id (``delta``: the
    share of sessions from clients that send only the new messages)."""
    return [(r["session_id"].encode(), json.dumps(r).encode())
            for r in make_stream().stream(sessions, turns, seed, delta=delta)]


EXTRACTORS = ["feedback", "user", "tool", "terminal", "gui"]


def daemon_toml(source: str, state_dir: Path, commit_interval_s: float = 0.5,
                commit_every_records: int = 200) -> str:
    """The top of a test daemon's TOML config: a free metrics port, JSON logs, frequent
    checkpoints."""
    return f"""
source = "{source}"
state_dir = "{state_dir}"
extractors = {json.dumps(EXTRACTORS)}
metrics_port = 0
log_format = "json"
progress = "off"
commit_interval_s = {commit_interval_s}
commit_every_records = {commit_every_records}
"""


def write_config(path: Path, state_dir: Path, bootstrap: str, topic: str, group: str,
                 extra: str = "", kafka_extra: str = "", commit_interval_s: float = 0.5,
                 commit_every_records: int = 200) -> Path:
    """A daemon TOML config for tests: short group timeouts, frequent checkpoints."""
    path.write_text(daemon_toml("kafka", state_dir, commit_interval_s, commit_every_records)
                    + f"""{extra}
[kafka]
bootstrap_servers = ["{bootstrap}"]
topic = "{topic}"
group_id = "{group}"
session_timeout_ms = 2000
heartbeat_interval_ms = 300
max_poll_interval_ms = 3000
poll_timeout_ms = 200
max_poll_records = 100
{kafka_extra}
""")
    return path


class DaemonProcess:
    """``python -m nextstate.daemon.cli run --config FILE`` as a child process; its stdout and
    stderr are appended to ``log``."""

    def __init__(self, config: Path, state_dir: Path, log: Path,
                 env: dict[str, str] | None = None) -> None:
        self.config = config
        self.state_dir = state_dir
        self.log = log
        self.env = {**os.environ, **(env or {})}
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> DaemonProcess:
        (self.state_dir / "http.json").unlink(missing_ok=True)  # a killed run leaves it
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "nextstate.daemon.cli", "run", "--config",
                 str(self.config)], stdout=out, stderr=subprocess.STDOUT, env=self.env,
                cwd=ROOT)
        return self

    def kill(self) -> None:
        """SIGKILL: no handler runs, nothing is flushed."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)

    def stop(self, timeout_s: float = 60.0) -> int:
        """SIGTERM, then wait for the exit code."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout_s)

    def exited(self) -> int | None:
        assert self.process is not None
        return self.process.poll()

    def http(self, path: str) -> tuple[int, bytes]:
        return daemon_http(self.state_dir, path)

    def metric(self, name: str) -> float:
        _, body = self.http("/metrics")
        return metric_total(body, name)


def processed_offsets(state_dir: Path) -> dict[int, int]:
    """Per partition, the next offset the last durable checkpoint says was processed."""
    try:
        state = json.loads((state_dir / "checkpoint.json").read_text())
    except (OSError, ValueError):
        return {}
    return {p: o for _, p, o in state["processed"]}


def checkpoint_counter(state_dir: Path, name: str) -> float:
    state = json.loads((state_dir / "checkpoint.json").read_text())
    return sum(value for n, _, value in state["stats"]["counters"] if n == name)


def reference_run(records: list[tuple[bytes, bytes]]) -> tuple[list[tuple[str, str, str]], float]:
    """Tuple keys and interaction count of an in-process run with no faults (no end of input:
    like the daemon, the last pending action of each session stays pending)."""
    with tempfile.TemporaryDirectory() as state:
        config = load_config(None, state_dir=state, extractors=EXTRACTORS)
        pipeline = Pipeline(config)
        for offset, (key, value) in enumerate(records):
            pipeline.process(value, key, "reference", 0, offset)
        pipeline.close()  # (scores what waits: the counters as a checkpoint holds them)
        interactions = pipeline.stats.total("interactions")
        keys = [t.key for t in stored(Path(state))]
    return keys, interactions

"""Crash safety of a file run: SIGKILL ``nextstate run --source file:...`` again and again;
each restart resumes where the last checkpoint left off, and the state dir ends as one
uninterrupted run leaves it."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

from tests.daemon.test_faults_support import (
    DaemonProcess,
    checkpoint_counter,
    daemon_toml,
    stream_records,
)
from tests.daemon.test_pipeline import stored
from tests.kafka_broker import wait_for


def _config(tmp_path: Path, name: str, source: Path) -> tuple[Path, Path]:
    state = tmp_path / name
    config = tmp_path / f"{name}.toml"
    config.write_text(daemon_toml(f"file:{source}", state, commit_every_records=150))
    return config, state


def test_file_run_killed_8_times_ends_as_one_run(tmp_path):
    """6,274 records (sessions interleaved, their times out of order by up to 1,636 s), 8
    SIGKILLs each after a random share of what is left is counted live: the same tuples as
    a run with no kills, none twice, every record and interaction counted once."""
    source = tmp_path / "stream.jsonl"
    records = stream_records(sessions=300, turns=10, seed=3)
    source.write_bytes(b"".join(value + b"\n" for _, value in records))
    clean_config, clean_state = _config(tmp_path, "clean", source)
    clean = DaemonProcess(clean_config, clean_state, tmp_path / "clean.log").start()
    assert clean.process is not None and clean.process.wait(120) == 0

    config, state = _config(tmp_path, "killed", source)
    daemon = DaemonProcess(config, state, tmp_path / "killed.log")
    rng = random.Random(3)
    kills = 0
    while kills < 8:
        counted = checkpoint_counter(state, "records") if (state / "checkpoint.json").exists() \
            else 0.0
        target = counted + rng.uniform(0.05, 0.3) * (len(records) - counted)
        daemon.start()
        reached = wait_for(lambda t=target: daemon.exited() is not None
                           or daemon.metric("nextstate_records_total") >= t, 60, 0.005)
        assert reached, "the run neither reached its kill point nor ended"
        if daemon.exited() is not None:
            break  # it got to the end first
        daemon.kill()
        kills += 1
    assert kills == 8
    daemon.start()
    assert daemon.process is not None and daemon.process.wait(120) == 0

    expected = [t.key for t in stored(clean_state)]
    keys = [t.key for t in stored(state)]
    assert len(expected) > 2_000
    assert sorted(keys) == sorted(expected)
    assert max(Counter(keys).values()) == 1
    for counter in ("records", "interactions", "tuples"):
        assert checkpoint_counter(state, counter) == checkpoint_counter(clean_state, counter)
    assert checkpoint_counter(state, "records") == len(records)

"""One daemon per state dir (``daemon/statelock.py``): a second ``nextstate run`` on a dir a
daemon holds exits ``EXIT_STATE_DIR_LOCKED`` naming the dir and the holder's pid, touching
nothing; the running one works on; a SIGKILLed daemon leaves no stale lock; the read-only
commands (stats, export, report, train) still open the dir while a daemon runs.

Before the lock, two daemons on one dir collided in the buffers: whichever wrote second died
with ``sqlite3.IntegrityError`` (the running one as often as the newcomer), and the newcomer's
``http.json`` replaced the running one's address."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nextstate.daemon import statelock
from nextstate.daemon.cli import EXIT_STATE_DIR_LOCKED
from nextstate.daemon.cli import main as cli_main
from nextstate.daemon.statelock import (
    LOCK_FILE,
    StateDirLock,
    StateDirLocked,
    StateLockError,
    read_holder,
)
from tests.daemon.test_faults_support import (
    ROOT,
    DaemonProcess,
    checkpoint_counter,
    daemon_toml,
    reference_run,
    stream_records,
)
from tests.daemon.test_pipeline import stored
from tests.kafka_broker import wait_for

SAMPLE = ROOT / "daemon" / "sample_interactions.jsonl"


def _files(state: Path) -> dict[str, str]:
    """Every file under ``state`` (but the lock file) -> a digest of its bytes."""
    return {str(p.relative_to(state)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(state.rglob("*")) if p.is_file() and p.name != LOCK_FILE}


def _follow_config(tmp_path: Path, source: Path, state: Path) -> Path:
    config = tmp_path / "follow.toml"
    config.write_text(daemon_toml(f"file:{source}", state) + "follow = true\n")
    return config


def _followed_stream(tmp_path: Path, sessions: int, seed: int
                     ) -> tuple[list[tuple[bytes, bytes]], Path, Path]:
    """A stream file of ``sessions`` 6-turn sessions and a config following it."""
    records = stream_records(sessions=sessions, turns=6, seed=seed)
    source = tmp_path / "stream.jsonl"
    source.write_bytes(b"".join(value + b"\n" for _, value in records))
    state = tmp_path / "state"
    return records, state, _follow_config(tmp_path, source, state)


def _run_cli(config: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """``nextstate run --config FILE`` to its end (the timeout: it must not follow on)."""
    return subprocess.run([sys.executable, "-m", "nextstate.daemon.cli", "run", "--config",
                           str(config), *extra], capture_output=True, text=True, timeout=60,
                          cwd=ROOT)


def _nextstate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nextstate.daemon.cli", *args],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)


# -- the lock itself, in process -------------------------------------------------------------

def test_the_lock_is_exclusive_per_open_and_released_on_exit(tmp_path):
    """flock belongs to the open file description: a second lock in the same process is
    refused like another process's would be; the holder's pid and host are in the file while
    held; release (or the with block's end) frees it, and the file stays."""
    state = tmp_path / "a" / "state"  # made with its parents
    with StateDirLock(state) as lock:
        assert lock.held
        holder = read_holder(state)
        assert holder["pid"] == os.getpid() and holder["host"] and holder["started"]
        with pytest.raises(StateDirLocked) as refused:
            StateDirLock(state).acquire()
        assert refused.value.holder["pid"] == os.getpid()
        assert str(state) in str(refused.value) and f"pid {os.getpid()}" in str(refused.value)
        assert lock.acquire() is lock  # acquiring what it holds is a no-op
    assert not lock.held
    assert (state / LOCK_FILE).exists() and read_holder(state) == {}  # emptied, not removed
    lock.release()  # idempotent
    with StateDirLock(state):
        pass


def test_no_fcntl_is_a_clear_error(tmp_path, monkeypatch, capsys):
    """Where there is no fcntl (Windows), locking fails saying so, and ``run`` exits 2
    before making anything."""
    monkeypatch.setattr(statelock, "fcntl", None)
    with pytest.raises(StateLockError, match="fcntl"):
        StateDirLock(tmp_path / "s").acquire()
    state = tmp_path / "state"
    assert cli_main(["run", "--source", f"file:{SAMPLE}", "--state-dir", str(state),
                     "--metrics-port", "-1", "--log-format", "json", "--progress", "off"]) == 2
    assert "fcntl" in capsys.readouterr().err
    assert not (state / "buffers").exists()


def test_run_on_a_held_dir_exits_at_once_and_touches_nothing(tmp_path, capsys):
    """A run over a finished state dir whose lock another holder has: EXIT_STATE_DIR_LOCKED,
    the dir and the holder's pid in the error, every file of the store byte for byte as it
    was; once the lock is free the same command runs."""
    state = tmp_path / "state"
    argv = ["run", "--source", f"file:{SAMPLE}", "--state-dir", str(state),
            "--metrics-port", "0", "--log-format", "json", "--progress", "off"]
    assert cli_main(argv) == 0
    before = _files(state)
    assert "checkpoint.json" in before and any(k.startswith("buffers") for k in before)
    capsys.readouterr()
    with StateDirLock(state):
        assert cli_main(argv) == EXIT_STATE_DIR_LOCKED
        err = capsys.readouterr().err
        line = json.loads(next(x for x in err.splitlines() if "state_dir_locked" in x))
        assert line["state_dir"] == str(state) and line["pid"] == os.getpid()
        assert f"{str(state)!r} is in use by another nextstate daemon (pid {os.getpid()}" \
            in line["error"]
        assert _files(state) == before  # no http.json, no checkpoint, no buffer touched
    assert cli_main(argv) == 0


# -- daemons as subprocesses -----------------------------------------------------------------

def test_second_daemon_exits_and_the_first_works_on(tmp_path):
    """A daemon following a file; a second ``nextstate run`` on its state dir exits
    EXIT_STATE_DIR_LOCKED naming the dir and the first one's pid, leaving the first one's
    ``http.json``; stats, export, report and train open the dir meanwhile; lines appended
    afterwards are all processed by the first, which ends with the tuples of one clean run."""
    records = stream_records(sessions=80, turns=8, seed=5)
    half = len(records) // 2
    source = tmp_path / "stream.jsonl"
    source.write_bytes(b"".join(value + b"\n" for _, value in records[:half]))
    state = tmp_path / "state"
    config = _follow_config(tmp_path, source, state)
    first = DaemonProcess(config, state, tmp_path / "first.log").start()
    assert first.process is not None
    try:
        assert wait_for(lambda: first.metric("nextstate_records_total") >= half, 60, 0.05)
        address = (state / "http.json").read_text()

        second = _run_cli(config)
        assert second.returncode == EXIT_STATE_DIR_LOCKED, second.stderr[-2000:]
        assert "state_dir_locked" in second.stderr
        assert f"{str(state)!r} is in use" in second.stderr
        assert f"pid {first.process.pid}" in second.stderr
        assert "Traceback" not in second.stderr
        assert (state / "http.json").read_text() == address
        assert first.exited() is None

        # The readers still work while it runs.
        assert wait_for(lambda: (state / "checkpoint.json").exists(), 30, 0.05)
        stats = _nextstate("stats", "--state-dir", str(state))
        assert stats.returncode == 0 and "interactions:" in stats.stdout, stats.stderr
        out = tmp_path / "export.jsonl"
        export = _nextstate("export", "--state-dir", str(state), "--out", str(out))
        assert export.returncode == 0 and out.stat().st_size > 0, export.stderr
        assert cli_main(["report", "--state-dir", str(state), "--out",
                         str(tmp_path / "report")]) == 0
        assert (tmp_path / "report" / "report.html").exists()
        trainer = tmp_path / "trainer.toml"  # a small policy: the point is opening the dir
        trainer.write_text("[trainer]\nbatch_size = 2\nmicro_batch_size = 2\n[policy]\n"
                           'kind = "tiny"\nd_model = 16\nn_layers = 1\nn_heads = 2\n'
                           "max_length = 256\n")
        assert cli_main(["train", "--state-dir", str(state), "--config", str(trainer),
                         "--steps", "2", "--log-every", "100"]) == 0
        assert (state / "checkpoints" / "v000001").is_dir()
        assert first.exited() is None

        with source.open("ab") as out_file:
            out_file.write(b"".join(value + b"\n" for _, value in records[half:]))
        assert wait_for(lambda: first.metric("nextstate_records_total") >= len(records),
                        60, 0.05)
        assert first.stop() == 0
    finally:
        if first.exited() is None:
            first.kill()
    expected, _ = reference_run(records)
    keys = sorted(t.key for t in stored(state))
    assert len(keys) > 100 and keys == sorted(expected)  # each tuple once, none lost
    assert checkpoint_counter(state, "records") == len(records)
    assert read_holder(state) == {}  # a clean stop empties the holder record
    assert b"Traceback" not in (tmp_path / "first.log").read_bytes()


def test_two_daemons_started_together_exactly_one_runs(tmp_path):
    """Two following daemons started at the same moment: one exits EXIT_STATE_DIR_LOCKED
    naming the other's pid, the other processes the whole file."""
    records, state, config = _followed_stream(tmp_path, sessions=20, seed=2)
    a = DaemonProcess(config, state, tmp_path / "a.log").start()
    b = DaemonProcess(config, state, tmp_path / "b.log").start()
    daemons = [a, b]
    try:
        assert wait_for(lambda: any(d.exited() is not None for d in daemons), 60, 0.05)
        loser = next(d for d in daemons if d.exited() is not None)
        winner = b if loser is a else a
        assert loser.exited() == EXIT_STATE_DIR_LOCKED
        assert winner.process is not None and winner.exited() is None
        assert f"pid {winner.process.pid}" in loser.log.read_text()
        assert wait_for(lambda: winner.metric("nextstate_records_total") >= len(records),
                        60, 0.05)
        assert winner.stop() == 0
    finally:
        for d in daemons:
            if d.exited() is None:
                d.kill()
    assert checkpoint_counter(state, "records") == len(records)


def test_sigkill_leaves_no_stale_lock(tmp_path):
    """SIGKILL a daemon holding the lock: its pid stays in the file, but the kernel dropped
    the lock with the process, so a new daemon starts at once on the same dir, resumes, and
    holds the lock itself."""
    records, state, config = _followed_stream(tmp_path, sessions=40, seed=9)
    daemon = DaemonProcess(config, state, tmp_path / "daemon.log").start()
    try:
        assert daemon.process is not None
        killed_pid = daemon.process.pid
        assert wait_for(lambda: daemon.metric("nextstate_records_total") >= len(records) // 3,
                        60, 0.01)
        daemon.kill()
        assert read_holder(state)["pid"] == killed_pid  # stale words, no lock behind them

        daemon.start()
        assert daemon.process is not None
        assert wait_for(lambda: daemon.metric("nextstate_records_total") >= len(records),
                        60, 0.05)
        with pytest.raises(StateDirLocked) as refused:
            StateDirLock(state).acquire()
        assert refused.value.holder["pid"] == daemon.process.pid
        assert daemon.stop() == 0
    finally:
        if daemon.process is not None and daemon.exited() is None:
            daemon.kill()
    assert checkpoint_counter(state, "records") == len(records)
    with StateDirLock(state):  # free after the clean stop too
        pass


def test_one_trainer_per_checkpoint_dir(tmp_path, capsys):
    """``nextstate train`` beside ``nextstate run --train`` on one state dir: both published
    versions into ``checkpoints/``. The daemon's trainer and ``nextstate train`` now hold one
    lock there: whichever comes second exits 5 naming the holder; a daemon without --train
    does not take it."""
    from nextstate.daemon.statelock import TRAINER_LOCK_FILE
    from nextstate.trainers.cli import train_main

    state = tmp_path / "state"
    assert cli_main(["run", "--source", f"file:{SAMPLE}", "--state-dir", str(state),
                     "--metrics-port", "-1", "--log-format", "json"]) == 0
    with StateDirLock(state / "checkpoints", TRAINER_LOCK_FILE, "nextstate trainer"):
        assert train_main(["--state-dir", str(state), "--steps", "1"]) == 5
        assert f"in use by another nextstate trainer (pid {os.getpid()}" in \
            capsys.readouterr().err
        assert cli_main(["run", "--source", f"file:{SAMPLE}", "--state-dir", str(state),
                         "--metrics-port", "-1", "--log-format", "json", "--train"]) == \
            EXIT_STATE_DIR_LOCKED
        assert cli_main(["run", "--source", f"file:{SAMPLE}", "--state-dir", str(state),
                         "--metrics-port", "-1", "--log-format", "json"]) == 0
    assert not list((state / "checkpoints").glob("v*"))  # no version published meanwhile

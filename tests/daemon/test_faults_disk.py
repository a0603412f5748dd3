"""A full disk: the daemon stops consuming with a clear error and a non-zero exit, the store
reopens intact, and once there is room a restart finishes with nothing lost or doubled."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from nextstate.daemon.cli import EXIT_STORAGE_FULL
from tests.daemon.test_faults_support import ROOT, make_stream
from tests.daemon.test_pipeline import stored


def run_cli(source: Path, state: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nextstate.daemon.cli", "run", "--source", f"file:{source}",
         "--state-dir", str(state), "--metrics-port", "-1", "--log-format", "json",
         "--progress", "off"], capture_output=True, text=True, cwd=ROOT, timeout=300)


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs (root only); the test is skipped where mounting is not permitted."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip()}")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def test_full_disk_stops_with_a_clear_error_and_an_intact_store(small_disk, tmp_path):
    """Filling a 2 MiB disk exits with EXIT_STORAGE_FULL and a storage_full log line (no
    traceback); every SQLite file passes integrity_check; with room, a rerun completes and
    holds exactly the tuples of an unconstrained run."""
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in make_stream().stream(150, 10)))
    state = small_disk / "state"
    full = run_cli(source, state)
    assert full.returncode == EXIT_STORAGE_FULL, full.stderr[-2000:]
    errors = [json.loads(x) for x in full.stderr.splitlines() if '"storage_full"' in x]
    assert errors and ("disk is full" in errors[0]["error"] or "No space" in errors[0]["error"])
    assert "Traceback" not in full.stderr
    for db in sorted(state.rglob("*.sqlite*")):
        if db.suffix in (".sqlite", ".sqlite3"):
            with sqlite3.connect(db) as conn:
                assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",), db
    partial = [t.key for t in stored(state)]  # the store reopens and reads
    # Room again: the same state dir finishes the file.
    subprocess.run(["mount", "-o", "remount,size=256m", str(small_disk)], check=True)
    assert run_cli(source, state).returncode == 0
    reference = tmp_path / "reference"
    assert run_cli(source, reference).returncode == 0
    keys = [t.key for t in stored(state)]
    expected = [t.key for t in stored(reference)]
    assert set(partial) <= set(keys)
    assert set(keys) == set(expected) and max(Counter(keys).values()) == 1

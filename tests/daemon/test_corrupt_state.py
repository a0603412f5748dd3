"""A state file that does not read back (a disk fault, a manual edit, another program): the
command that loads it exits ``EXIT_STATE_CORRUPT`` with one line naming the file, what is
wrong and what to do, and leaves the file byte for byte as it was.

Before, each of these raised its own traceback (exit 1), and a checkpoint whose partitions
were not numbers ran on, its counters silently replaced by the new run's."""

from __future__ import annotations

import json
import random
import shutil
import sqlite3
import threading
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import pytest

from nextstate.buffers.statefile import EXIT_STATE_CORRUPT, CorruptStateFile
from nextstate.daemon.cli import main as cli_main
from nextstate.daemon.config import load_config
from nextstate.daemon.pipeline import Pipeline
from nextstate.daemon.service import Health, Progress
from nextstate.daemon.sources import TOPIC_IDS, KafkaRunner
from tests.daemon.test_faults_support import ROOT

SAMPLE = ROOT / "daemon" / "sample_interactions.jsonl"
Corruption = Callable[[Path], None]


def _bytes(make: Callable[[bytes], bytes]) -> Corruption:
    def corrupt(path: Path) -> None:
        path.write_bytes(make(path.read_bytes()))
    return corrupt


TRUNCATED = _bytes(lambda data: data[: len(data) // 2])
RANDOM = _bytes(lambda _: random.Random(0).randbytes(4096))
EMPTY = _bytes(lambda _: b"")


def _json(text: str) -> Corruption:
    return _bytes(lambda _: text.encode())


JSON_CORRUPTIONS = {"truncated": TRUNCATED, "random bytes": RANDOM, "empty": EMPTY,
                    "a list": _json("[]")}
CHECKPOINT_CORRUPTIONS = {
    **JSON_CORRUPTIONS,
    "processed a string": _json('{"processed": "x"}'),
    "event_time a number": _json('{"event_time": 5}'),
    "a partition that is no number": _json('{"processed": [["t", "x", 1]]}'),
    "a counter that is no number": _json('{"stats": {"counters": [["records", [], "x"]]}}'),
}
OFFSETS_CORRUPTIONS = {
    **JSON_CORRUPTIONS,
    "a line that is no number": _json(json.dumps({f"file:{SAMPLE}": "x"})),
    "a negative line": _json(json.dumps({f"file:{SAMPLE}": -5})),
}


def _another_programs_database(path: Path) -> None:
    """A valid SQLite file of another schema (no -wal left beside it)."""
    path.unlink()
    for leftover in (Path(f"{path}-wal"), Path(f"{path}-shm")):
        leftover.unlink(missing_ok=True)
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE tuples (x)")
        conn.execute("CREATE TABLE series (y)")
        conn.commit()


def _samples_that_are_no_numbers(path: Path) -> None:
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("UPDATE samples SET value = 'x'")
        conn.commit()


def _payloads_that_do_not_decode(path: Path) -> None:
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("UPDATE tuples SET payload = x'00ff00ff'")
        conn.commit()


SQLITE_CORRUPTIONS = {"truncated": TRUNCATED, "random bytes": RANDOM,
                      "another program's database": _another_programs_database}


def _run_argv(state: Path) -> list[str]:
    return ["run", "--source", f"file:{SAMPLE}", "--state-dir", str(state), "--metrics-port",
            "-1", "--log-format", "json"]


@pytest.fixture(scope="module")
def finished_state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A state dir after a whole run over the sample: every file a run keeps is there."""
    state = tmp_path_factory.mktemp("finished") / "state"
    assert cli_main(_run_argv(state)) == 0
    return state


@pytest.fixture
def state(finished_state: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "state"
    shutil.copytree(finished_state, copy)
    return copy


def _refused(argv: list[str], path: Path, capfd: pytest.CaptureFixture[str]) -> str:
    """Run the command: it must exit EXIT_STATE_CORRUPT, name ``path`` and leave it as it
    was; returns what it printed."""
    before = path.read_bytes()
    assert cli_main(argv) == EXIT_STATE_CORRUPT
    out = capfd.readouterr()
    printed = out.out + out.err
    assert str(path) in printed and "Traceback" not in printed
    assert path.read_bytes() == before
    return printed


def _refused_run(state: Path, path: Path, capfd: pytest.CaptureFixture[str]) -> dict[str, str]:
    """``nextstate run`` on ``state``: refused, one ``state_file_corrupt`` log line."""
    printed = _refused(_run_argv(state), path, capfd)
    (event,) = [json.loads(line) for line in printed.splitlines()
                if '"state_file_corrupt"' in line]
    assert event["file"] == str(path) and event["error"] and "move it aside" in event["action"]
    return event


def _refused_line(argv: list[str], command: str, path: Path,
                  capfd: pytest.CaptureFixture[str]) -> str:
    """A read-only command: refused with one line on stderr, ``nextstate CMD: FILE: ...``."""
    printed = _refused(argv, path, capfd)
    (line,) = printed.strip().splitlines()
    assert line.startswith(f"nextstate {command}: {path}: ") and "move it aside" in line
    return line


@pytest.mark.parametrize("corrupt", CHECKPOINT_CORRUPTIONS.values(), ids=CHECKPOINT_CORRUPTIONS)
def test_a_corrupt_checkpoint_stops_run_and_stats(state, corrupt, capfd):
    """checkpoint.json truncated, not JSON, empty or of the wrong shape or value types: run
    and stats exit 6 naming it (a traceback before; a partition that is no number ran on,
    its counters replaced)."""
    path = state / "checkpoint.json"
    corrupt(path)
    _refused_run(state, path, capfd)
    _refused_line(["stats", "--state-dir", str(state)], "stats", path, capfd)


@pytest.mark.parametrize("corrupt", OFFSETS_CORRUPTIONS.values(), ids=OFFSETS_CORRUPTIONS)
def test_corrupt_file_offsets_stop_run(state, corrupt, capfd):
    """file_offsets.json that does not read: run exits 6 naming it (a traceback before; a
    negative line ran, read as line 0)."""
    path = state / "file_offsets.json"
    corrupt(path)
    _refused_run(state, path, capfd)


@pytest.mark.parametrize("corrupt", [*SQLITE_CORRUPTIONS.values(), _samples_that_are_no_numbers],
                         ids=[*SQLITE_CORRUPTIONS, "samples that are no numbers"])
def test_a_corrupt_time_series_stops_run_and_report(state, corrupt, capfd, tmp_path):
    """timeseries.sqlite damaged, not SQLite, another program's or with values that are no
    numbers: run and report exit 6 naming it (a traceback before; report said exit 2 without
    the file for a value; run had added its tables to another program's database)."""
    path = state / "timeseries.sqlite"
    corrupt(path)
    _refused_run(state, path, capfd)
    _refused_line(["report", "--state-dir", str(state), "--out", str(tmp_path / "report")],
                  "report", path, capfd)


@pytest.mark.parametrize("corrupt", SQLITE_CORRUPTIONS.values(), ids=SQLITE_CORRUPTIONS)
def test_a_corrupt_buffer_stops_run_and_export(state, corrupt, capfd, tmp_path):
    """A buffer file damaged, not SQLite or another program's: run and export exit 6 naming
    it and saying what moving it aside loses (a traceback before, after adding our tables to
    another program's database)."""
    path = state / "buffers" / "evaluative.sqlite3"
    corrupt(path)
    event = _refused_run(state, path, capfd)
    assert "lost to training and export" in event["action"]
    _refused_line(["export", "--state-dir", str(state), "--out", str(tmp_path / "t.jsonl")],
                  "export", path, capfd)


def _damage_the_key_index(path: Path) -> None:
    """Random bytes over the root page of the buffer's key index: the file opens, and the
    damage is first read by a dedup look-up mid-run."""
    with closing(sqlite3.connect(path)) as conn:
        (page,) = conn.execute("SELECT rootpage FROM sqlite_master WHERE type = 'index' "
                               "AND tbl_name = 'tuples'").fetchone()
        (size,) = conn.execute("PRAGMA page_size").fetchone()
    data = bytearray(path.read_bytes())
    data[(page - 1) * size:page * size] = random.Random(0).randbytes(size)
    path.write_bytes(bytes(data))


def test_a_buffer_page_found_damaged_mid_run_stops_it_naming_the_file(state, capfd):
    """A damaged page that opening the buffer does not read, found by the run's first dedup
    look-up: exit 6 naming the file, and no checkpoint past the last durable one (a
    traceback naming no file before, exit 1)."""
    path = state / "buffers" / "evaluative.sqlite3"
    _damage_the_key_index(path)
    for name in ("checkpoint.json", "file_offsets.json"):  # the sample is read again
        (state / name).unlink()
    _refused_run(state, path, capfd)
    assert not (state / "checkpoint.json").exists()


def test_a_stored_tuple_that_does_not_decode_stops_export(state, capfd, tmp_path):
    """A buffer row whose payload does not decode: export exits 6 naming the file and the
    row's seq, and how to evict just that row (a msgspec traceback before)."""
    path = state / "buffers" / "evaluative.sqlite3"
    _payloads_that_do_not_decode(path)
    line = _refused(["export", "--state-dir", str(state), "--out", str(tmp_path / "t.jsonl")],
                    path, capfd)
    assert "seq 0 does not decode" in line and "UPDATE tuples SET payload = NULL" in line


@pytest.mark.parametrize("corrupt", JSON_CORRUPTIONS.values(), ids=JSON_CORRUPTIONS)
def test_corrupt_kafka_topic_ids_stop_the_kafka_source(tmp_path, corrupt):
    """kafka_topic_ids.json that does not read: the Kafka source refuses to start, naming it,
    before it builds a consumer (a JSONDecodeError or, for a list, an AttributeError later)."""
    config = load_config(None, source="kafka", state_dir=str(tmp_path / "state"))
    pipeline = Pipeline(config)
    try:
        path = tmp_path / "state" / TOPIC_IDS
        path.write_text('{"agent-interactions": "AAAAAAAAAAAAAAAAAAAAAA"}')
        corrupt(path)
        before = path.read_bytes()
        with pytest.raises(CorruptStateFile) as refused:
            KafkaRunner(pipeline, config, threading.Event(), Health(),
                        Progress(pipeline.stats, False), consumer=object())  # type: ignore[arg-type]
        assert refused.value.path == path and "move it aside" in str(refused.value)
        assert path.read_bytes() == before
    finally:
        pipeline.close(durable=False)

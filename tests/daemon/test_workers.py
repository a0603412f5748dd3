"""``nextstate run --workers N`` against Tansu: one command, N daemons in one consumer group.

The supervisor is a real ``nextstate run`` process; its workers are its children. What is
asserted: the workers split the partitions and together store exactly the tuples one
in-process daemon makes of the same records, each shard holding a key once; SIGTERM stops
them all gracefully (exit 0); a SIGKILLed worker is started again and nothing is lost; a
worker that exits for a cause a restart would not mend (its shard locked) stops the
supervisor with its exit code; a SIGKILLed supervisor takes its workers with it.
"""

from __future__ import annotations

import json
import os
import signal
import uuid
import zlib
from pathlib import Path

import pytest

from nextstate.daemon.cli import main as cli_main
from nextstate.daemon.config import load_config
from nextstate.daemon.statelock import StateDirLock
from nextstate.daemon.workers import WORKER_DIR, shard_dirs, worker_config
from tests.daemon.test_faults_support import (
    DaemonProcess,
    processed_offsets,
    reference_run,
    stream_records,
    write_config,
)
from tests.daemon.test_pipeline import stored
from tests.kafka_broker import wait_for

pytestmark = pytest.mark.kafka

PARTITIONS = 4
WORKERS = 2


class Supervised:
    """A ``nextstate run --workers 2`` process and what its log says of its workers."""

    def __init__(self, broker, tmp_path: Path, name: str = "run") -> None:
        run = uuid.uuid4().hex[:8]
        self.broker = broker
        self.topic, self.group = f"workers-{run}", f"workers-{run}"
        broker.create_topic(self.topic, PARTITIONS)
        broker.create_topic(f"{self.topic}.dlq", 1)
        self.state = tmp_path / f"{name}-state"
        config = write_config(tmp_path / f"{name}.toml", self.state, broker.bootstrap,
                              self.topic, self.group, extra=f"workers = {WORKERS}")
        self.daemon = DaemonProcess(config, self.state, tmp_path / f"{name}.log")

    def events(self, event: str) -> list[dict]:
        rows = (json.loads(row) for row in self.daemon.log.read_text().splitlines()
                if row.startswith("{"))
        return [row for row in rows if row.get("event") == event]

    def pids(self) -> dict[int, int]:
        """Each worker's latest pid."""
        return {row["worker"]: row["pid"] for row in self.events("worker_started")}

    def assigned(self) -> dict[int, set[str]]:
        """Each worker's latest assignment (worker log lines carry their index)."""
        latest: dict[int, set[str]] = {}
        for row in self.events("partitions_assigned"):
            latest[row["worker"]] = set(row["partitions"])
        return latest

    def split(self) -> bool:
        """Every worker holds partitions, and together all of them, once."""
        assigned = self.assigned()
        return len(assigned) == WORKERS and all(assigned.values()) and sorted(
            p for parts in assigned.values() for p in parts) == sorted(
            f"{self.topic}/{p}" for p in range(PARTITIONS))

    def processed_all(self, ends: dict[int, int]) -> bool:
        """The workers' durable checkpoints together cover every partition to its end."""
        done: dict[int, int] = {}
        for index in range(WORKERS):
            for partition, offset in processed_offsets(self.shard(index)).items():
                done[partition] = max(done.get(partition, 0), offset)
        return all(done.get(p, 0) >= end for p, end in ends.items())

    def shard(self, index: int) -> Path:
        return self.state / WORKER_DIR.format(index)

    def produce(self, records: list[tuple[bytes, bytes]]) -> dict[int, int]:
        """Produce ``records``, each session to one partition (the same in every call); how
        many went to each partition."""
        partition_of = {key: zlib.crc32(key) % PARTITIONS for key, _ in records}
        self.broker.produce(self.topic, records, partition_of)
        counts: dict[int, int] = {}
        for key, _ in records:
            counts[partition_of[key]] = counts.get(partition_of[key], 0) + 1
        return counts


def alive(pid: int) -> bool:
    """Running (a zombie nobody reaped yet counts as gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


def test_workers_split_the_topic_and_store_what_one_daemon_would(broker, tmp_path, capsys):
    records = stream_records(40, 4)
    reference, _ = reference_run(records)
    run = Supervised(broker, tmp_path)
    run.daemon.start()
    try:
        assert wait_for(run.split, 60), run.daemon.log.read_text()[-3000:]
        ends = run.produce(records)
        assert wait_for(lambda: run.processed_all(ends), 60)
        pids = run.pids()
        assert sorted(pids) == [0, 1]
        # Trained beside the running workers: it reads their shards, never writes them.
        train = tmp_path / "train.toml"
        train.write_text('[trainer]\nbatch_size = 4\npublish_every = 0\ntorch_threads = 1\n'
                         '[policy]\nkind = "tiny"\nd_model = 32\nn_layers = 1\nn_heads = 2\n')
        assert cli_main(["train", "--state-dir", str(run.state), "--config", str(train),
                         "--steps", "2"]) == 0
        assert (run.state / "checkpoints" / "v000001").is_dir()
    finally:
        code = run.daemon.stop()
    assert code == 0
    assert not any(alive(pid) for pid in pids.values())
    assert {row["worker"]: row["exit_code"] for row in run.events("worker_stopped")} == \
        {0: 0, 1: 0}
    # Each worker ran a whole daemon in its own shard, and logged as itself.
    assert {row["worker"] for row in run.events("starting")} == {0, 1}
    shards = [[t.key for t in stored(run.shard(index))] for index in range(WORKERS)]
    assert all(shard for shard in shards)
    assert all(len(shard) == len(set(shard)) for shard in shards)
    assert sorted(shards[0] + shards[1]) == sorted(reference)
    # stats and export given the parent dir read the shards as one deployment.
    assert shard_dirs(run.state) == [run.shard(0), run.shard(1)]
    capsys.readouterr()
    assert cli_main(["stats", "--state-dir", str(run.state)]) == 0
    assert "2 state dirs:" in capsys.readouterr().out
    out = tmp_path / "tuples.jsonl"
    assert cli_main(["export", "--state-dir", str(run.state), "--out", str(out)]) == 0
    assert len(out.read_text().splitlines()) == len(reference)


def test_a_killed_worker_is_started_again_and_nothing_is_lost(broker, tmp_path):
    records = stream_records(40, 4, seed=1)
    half = len(records) // 2
    reference, _ = reference_run(records)
    run = Supervised(broker, tmp_path)
    run.daemon.start()
    try:
        assert wait_for(run.split, 60)
        ends = run.produce(records[:half])
        assert wait_for(lambda: run.processed_all(ends), 60)
        victim = run.pids()[0]
        os.kill(victim, signal.SIGKILL)
        # Started again (after its 1 s backoff), and the group split between both again.
        assert wait_for(lambda: run.pids()[0] != victim, 30)
        died = run.events("worker_died")
        assert [(row["worker"], row["pid"], row["how"]) for row in died] == \
            [(0, victim, "signal SIGKILL")]
        assert wait_for(lambda: run.split() and alive(run.pids()[0]), 60)
        more = run.produce(records[half:])
        ends = {p: ends.get(p, 0) + more.get(p, 0) for p in range(PARTITIONS)}
        assert wait_for(lambda: run.processed_all(ends), 60)
    finally:
        code = run.daemon.stop()
    assert code == 0
    shards = [[t.key for t in stored(run.shard(index))] for index in range(WORKERS)]
    assert all(len(shard) == len(set(shard)) for shard in shards)
    assert set(shards[0]) | set(shards[1]) == set(reference)


def test_a_worker_stopped_on_its_own_is_started_again(broker, tmp_path):
    """A SIGTERM to one worker (not to the supervisor) stops it gracefully, exit 0: the
    deployment lost a worker nobody asked to stop, so it is started again."""
    run = Supervised(broker, tmp_path)
    run.daemon.start()
    try:
        assert wait_for(run.split, 60)
        stopped = run.pids()[1]
        os.kill(stopped, signal.SIGTERM)
        assert wait_for(lambda: run.pids()[1] != stopped, 30)
        assert [(row["worker"], row["how"]) for row in run.events("worker_died")] == \
            [(1, "exit code 0")]
        assert wait_for(lambda: run.split() and alive(run.pids()[1]), 60)
    finally:
        assert run.daemon.stop() == 0


def test_a_worker_that_cannot_start_stops_the_supervisor_with_its_code(broker, tmp_path):
    """Worker 1's shard is locked (as by a daemon running there): it exits 5, and the
    supervisor stops worker 0 and exits 5 too, instead of restarting it for ever."""
    run = Supervised(broker, tmp_path)
    with StateDirLock(run.shard(1)):
        run.daemon.start()
        assert run.daemon.process.wait(60) == 5
    assert [row["exit_code"] for row in run.events("worker_exited")] == [5]
    assert [row["worker"] for row in run.events("state_dir_locked")] == [1]
    assert not any(alive(pid) for pid in run.pids().values())


def test_one_supervisor_per_state_dir(broker, tmp_path):
    run = Supervised(broker, tmp_path)
    with StateDirLock(run.state):
        run.daemon.start()
        assert run.daemon.process.wait(60) == 5
    assert run.events("state_dir_locked")
    assert not run.events("worker_started")


def test_a_killed_supervisor_takes_its_workers_with_it(broker, tmp_path):
    run = Supervised(broker, tmp_path)
    run.daemon.start()
    try:
        assert wait_for(run.split, 60)
        pids = run.pids()
    finally:
        run.daemon.kill()
    # Each worker got SIGTERM from the kernel (PR_SET_PDEATHSIG) and stopped gracefully.
    assert wait_for(lambda: not any(alive(pid) for pid in pids.values()), 60)
    stopped = [row for row in run.events("stopped") if "worker" in row]
    assert sorted(row["worker"] for row in stopped) == [0, 1]


@pytest.mark.parametrize(("flags", "message"), [
    (["--source", "file:x.jsonl"], 'workers = 2 needs source = "kafka"'),
    (["--train"], "workers = 2 with train"),
])
def test_workers_need_kafka_and_no_trainer(tmp_path, capsys, flags, message):
    capsys.readouterr()
    assert cli_main(["run", "--workers", "2", "--state-dir", str(tmp_path / "st"),
                     *flags]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "st").exists()


def test_each_log_line_is_one_write():
    """Workers share the supervisor's stderr, which is unbuffered when redirected: a line
    written in two pieces (print: the line, then its newline) let another worker's line in
    between (seen here: two JSON objects on one line, then an empty one)."""
    import io

    import structlog

    from nextstate.daemon.service import configure_logging

    class Writes(io.StringIO):
        def __init__(self) -> None:
            super().__init__()
            self.calls: list[str] = []

        def write(self, text: str) -> int:
            self.calls.append(text)
            return super().write(text)

    stream = Writes()
    try:
        configure_logging("json", stream)
        structlog.get_logger("t").info("one", worker=1, text="x" * 5000)
        structlog.get_logger("t").info("two", worker=0)
    finally:
        configure_logging()  # on stderr again, as every run leaves it
    assert len(stream.calls) == 2
    assert all(call.endswith("\n") and call.count("\n") == 1 for call in stream.calls)
    assert [json.loads(call)["event"] for call in stream.calls] == ["one", "two"]


def test_auto_workers_are_the_usable_cores(tmp_path):
    """``workers = "auto"`` reads as the cores this process may run on, where workers can
    split the input (a Kafka source, no trainer); else as 1."""
    cores = len(os.sched_getaffinity(0))
    path = tmp_path / "nextstate.toml"
    path.write_text('source = "kafka"\nworkers = "auto"\n')
    assert load_config(path).workers == cores
    assert load_config(path, source="file:x.jsonl").workers == 1
    assert load_config(path, train=True).workers == 1
    with pytest.raises(ValueError, match="workers"):
        load_config(None, workers="all")


def test_workers_flag_takes_a_count_or_auto(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli_main(["run", "--workers", "lots", "--state-dir", str(tmp_path / "st")])
    assert exit_.value.code == 2
    assert "not a count nor auto: 'lots'" in capsys.readouterr().err
    # auto on a file source is one daemon: it runs the file (no workers, no shards)
    records = tmp_path / "in.jsonl"
    records.write_text("")
    assert cli_main(["run", "--workers", "auto", "--source", f"file:{records}",
                     "--state-dir", str(tmp_path / "st"), "--metrics-port", "-1",
                     "--progress", "off"]) == 0
    assert (tmp_path / "st" / "checkpoint.json").exists()
    assert not list((tmp_path / "st").glob(WORKER_DIR.format("*")))


@pytest.mark.parametrize(("port", "ports"), [(9464, [9464, 9465, 9466]), (0, [0, 0, 0]),
                                             (-1, [-1, -1, -1])])
def test_each_worker_has_its_shard_and_port(tmp_path, port, ports):
    config = load_config(None, state_dir=str(tmp_path / "st"), workers=3, metrics_port=port,
                         progress="on")
    workers = [worker_config(config, index) for index in range(3)]
    assert [w.metrics_port for w in workers] == ports
    assert [w.state_path for w in workers] == [tmp_path / "st" / f"worker-{k}" for k in range(3)]
    assert {(w.workers, w.progress, w.source) for w in workers} == {(1, "off", "kafka")}

"""Daemon load benchmarks against a real Kafka-protocol broker (Tansu on loopback), and memory.

    python benchmarks/bench_daemon_kafka.py throughput [--sessions 500] [--profile | --stages]
    python benchmarks/bench_daemon_kafka.py throughput --daemons 2 [--sessions 2000]
    python benchmarks/bench_daemon_kafka.py throughput --workers 2 [--sessions 2000]
    python benchmarks/bench_daemon_kafka.py latency [--rate 2000] [--seconds 20]
    python benchmarks/bench_daemon_kafka.py rss [--capacity 2000] [--factor 10]

- ``throughput``: the daemon's Kafka runner (consumer group, pipeline, durable SQLite buffers,
  checkpoints and commits) vs a bare kafka-python loop that only ``json.loads`` each record, over
  the same topic on the same broker (the fastest of 3 bare runs); records/s from first to last
  record, and the ratio; also each side's process CPU per record (the ratio of those is
  steadier on a shared machine).
  ``--profile`` prints a pyinstrument profile of the daemon's consume thread; ``--stages``
  prints the consume thread's CPU per record in each stage of the loop; the broker's
  CPU per record is printed too (it shares the machine's cores).
  ``--daemons N``: N daemon processes in one consumer group (each its own buffer shard, as
  in the README's scale-out) over a topic of ``--partitions`` (6), vs the bare loop; their
  records/s once the group is stable (the first daemon holds every partition until the
  others join).
  ``--workers N``: the command itself, ``nextstate run --workers N`` (N daemons in one group
  under one supervisor, a subprocess) over the same topic as the bare loop; its rate is
  the records it read from the moment every worker had its partitions to the moment its
  workers' ``/metrics`` count every record, watched from outside.
  ``--workers 1`` runs one daemon the same way.
- ``latency``: records produced at a fixed rate (interactions/s: each exchange closes one) by
  a producer in its own process; p50/p99 from a record's produce to the checkpoint that made
  its tuples durable.
- ``rss``: a file stream producing ``factor`` x the buffer capacity in tuples; the process RSS
  sampled along the way (flat = the last sample within 10% of the first after warm-up).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

import psutil  # noqa: E402
from kafka import KafkaConsumer, KafkaProducer  # noqa: E402
from kafka.structs import TopicPartition  # noqa: E402
from make_stream import stream  # noqa: E402

from nextstate.daemon.config import load_config  # noqa: E402
from nextstate.daemon.pipeline import Pipeline  # noqa: E402
from nextstate.daemon.service import Health, Progress  # noqa: E402
from nextstate.daemon.sources import KafkaRunner  # noqa: E402
from nextstate.daemon.workers import shard_dirs  # noqa: E402
from nextstate.extractors._compiled import hot_path  # noqa: E402
from tests.kafka_broker import daemon_http, metric_total, tansu_broker  # noqa: E402

PARTITIONS = 3
EXTRACTORS = ["feedback", "user", "tool", "terminal", "gui"]


def daemon_config(state: str, bootstrap: str, topic: str, group: str | None = None, **extra):
    return load_config(None, source="kafka", state_dir=state, extractors=EXTRACTORS,
                       progress="off", **extra,
                       **{"kafka.bootstrap_servers": [bootstrap], "kafka.topic": topic,
                          "kafka.group_id": group or f"bench-{uuid.uuid4().hex[:6]}",
                          "kafka.session_timeout_ms": 6000, "kafka.heartbeat_interval_ms": 1000,
                          "kafka.max_poll_interval_ms": 6000, "kafka.poll_timeout_ms": 100})


class Timed:
    """Wraps ``Pipeline.process`` / ``checkpoint`` to time records and durability."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.first = self.last = 0.0
        self.count = 0
        self.cpu = 0.0  # process CPU seconds from the first record to the last
        self.pending: list[tuple[int, int]] = []     # (partition, offset) since last checkpoint
        self.durable_at: dict[tuple[int, int], float] = {}
        process, checkpoint = pipeline.process, pipeline.checkpoint

        def timed_process(value, key, topic, partition, offset):
            process(value, key, topic, partition, offset)
            self.last = time.perf_counter()
            self.first = self.first or self.last
            self.count += 1
            self.pending.append((partition, offset))

        def timed_checkpoint():
            safe = checkpoint()
            now = time.time()
            for position in self.pending:
                self.durable_at[position] = now
            self.pending = []
            return safe

        pipeline.process = timed_process  # type: ignore[method-assign]
        pipeline.checkpoint = timed_checkpoint  # type: ignore[method-assign]


class Stages:
    """The consume thread's CPU in each stage of the loop (``throughput --stages``), each
    stage's own: a stage called within another (the pipeline scores a full run of closed
    interactions while it processes a record) is taken out of the outer one. Counted from
    the first record to the end of the run (its last checkpoint and commit); calls from
    other threads (the rebalance listener runs on kafka-python's) are not counted."""

    def __init__(self) -> None:
        self.cpu: dict[str, float] = {}
        self.thread: int | None = None  # the consume thread, once its first record came
        self._nested: list[float] = []
        self.thread_cpu = self.process_cpu = 0.0  # at the first record, then the spans

    def first_record(self) -> None:
        self.thread = threading.get_ident()
        self.thread_cpu, self.process_cpu = time.thread_time(), time.process_time()

    def end(self) -> None:
        self.thread_cpu = time.thread_time() - self.thread_cpu
        self.process_cpu = time.process_time() - self.process_cpu

    def wrap(self, owner: Any, name: str, label: str) -> None:
        inner = getattr(owner, name)
        self.cpu[label] = 0.0

        def timed(*args: Any, **kwargs: Any) -> Any:
            if threading.get_ident() != self.thread:
                return inner(*args, **kwargs)
            self._nested.append(0.0)
            start = time.thread_time()
            try:
                return inner(*args, **kwargs)
            finally:
                spent = time.thread_time() - start
                self.cpu[label] += spent - self._nested.pop()
                if self._nested:
                    self._nested[-1] += spent

        setattr(owner, name, timed)

    def instrument(self, runner: KafkaRunner) -> None:
        pipeline = runner.pipeline
        self.wrap(runner.consumer, "poll", "kafka-python: fetch, parse records")
        self.wrap(pipeline, "process", "decode + join")
        process = pipeline.process

        def first(*args: Any) -> None:
            self.first_record()
            pipeline.process = process  # type: ignore[method-assign]
            process(*args)

        pipeline.process = first  # type: ignore[method-assign]
        self.wrap(pipeline, "score_pending", "extractors, redaction, yield counters")
        self.wrap(pipeline.buffers, "extend", "durable store: dedup, encode, SQLite")
        self.wrap(runner, "commit", "checkpoint (fsync) + offset commit")

    def report(self, records: int) -> None:
        print(f"consume thread CPU per record, by stage ({records:,} records):")
        for label, cpu in self.cpu.items():
            print(f"  {label:<40} {cpu / records * 1e6:6.1f} us")
        rest = self.thread_cpu - sum(self.cpu.values())
        print(f"  {'the rest of the loop':<40} {rest / records * 1e6:6.1f} us")
        print(f"  {'consume thread, in all':<40} {self.thread_cpu / records * 1e6:6.1f} us")
        print(f"  {'other threads (kafka-python IO, ...)':<40} "
              f"{(self.process_cpu - self.thread_cpu) / records * 1e6:6.1f} us")


def run_daemon_until(config, total: int, timeout_s: float = 600, profiler=None,
                     stages: Stages | None = None) -> tuple[Pipeline, Timed]:
    """Run the Kafka runner in a thread until ``total`` records are processed.

    ``profiler``: a pyinstrument ``Profiler`` to run around the runner, in its own thread
    (pyinstrument samples the thread that started it). ``stages``: time the loop's stages.
    """
    pipeline = Pipeline(config)
    timed = Timed(pipeline)
    stop = threading.Event()
    runner = KafkaRunner(pipeline, config, stop, Health(), Progress(pipeline.stats, False))
    if stages is not None:
        stages.instrument(runner)

    def run() -> None:
        if stages is not None:
            runner.run()
            stages.end()
            return
        if profiler is None:
            runner.run()
            return
        with profiler:
            runner.run()

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not timed.count and time.monotonic() < deadline:
        time.sleep(0.002)
    cpu_start = time.process_time()
    while timed.count < total and time.monotonic() < deadline:
        time.sleep(0.002)
    timed.cpu = time.process_time() - cpu_start
    stop.set()
    thread.join()
    runner.close()
    pipeline.close()
    return pipeline, timed


def produce(bootstrap: str, topic: str, records: list[dict]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    for record in records:
        producer.send(topic, key=record["session_id"].encode(), value=json.dumps(record).encode())
    producer.flush()
    producer.close()


def bare_consume(bootstrap: str, topic: str, total: int, partitions: int = PARTITIONS
                 ) -> tuple[float, float]:
    """Records/s and CPU us/record of a plain consumer that only parses each value.

    kafka-python's defaults (``max_poll_records`` 500 is the default, spelled out), no
    consumer group, no commits: the floor any consumer of this topic pays.
    """
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                             max_poll_records=500)
    consumer.assign([TopicPartition(topic, p) for p in range(partitions)])
    consumer.seek_to_beginning()
    count, first, cpu_first = 0, 0.0, 0.0
    while count < total:
        for records in consumer.poll(timeout_ms=500).values():
            for record in records:
                json.loads(record.value)
                if not first:
                    first, cpu_first = time.perf_counter(), time.process_time()
                count += 1
    elapsed = time.perf_counter() - first
    cpu = time.process_time() - cpu_first
    consumer.close()
    return count / elapsed, cpu / count * 1e6


def bare_floor(bootstrap: str, topic: str, total: int, partitions: int = PARTITIONS,
               runs: int = 3) -> tuple[float, float]:
    """The fastest of ``runs`` :func:`bare_consume` runs (and its CPU per record): the first
    read of a topic just produced is at times 30% slower at the same CPU per record (23-24k
    vs 31-34k records/s, 2026-11-27), which made the ratio swing with it."""
    return max(bare_consume(bootstrap, topic, total, partitions) for _ in range(runs))


def _cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def group_worker(state: str, bootstrap: str, topic: str, group: str, stop: Any, high: Any,
                 conn: Any) -> None:
    """One daemon of a consumer group, in its own process (``throughput --daemons``): runs
    until ``stop`` is set, keeping ``high[partition]`` at the highest offset processed + 1
    by any daemon, then sends back each processed record's (time, partition, offset) and
    the process's CPU seconds."""
    config = daemon_config(state, bootstrap, topic, group)
    pipeline = Pipeline(config)
    seen: list[tuple[float, int, int]] = []
    process = pipeline.process
    cpu_first = [0.0]

    def timed_process(value, key, topic, partition, offset):
        if not seen:
            cpu_first[0] = time.process_time()  # from the first record: imports not counted
        process(value, key, topic, partition, offset)
        seen.append((time.perf_counter(), partition, offset))  # CLOCK_MONOTONIC: one clock
        if offset >= high[partition]:
            high[partition] = offset + 1

    pipeline.process = timed_process  # type: ignore[method-assign]
    runner = KafkaRunner(pipeline, config, stop, Health(), Progress(pipeline.stats, False))
    runner.run()
    runner.close()
    pipeline.close()
    conn.send((seen, time.process_time() - cpu_first[0]))


def group_throughput(bootstrap: str, topic: str, daemons: int, partitions: int
                     ) -> tuple[float, float, int, list[int]]:
    """``daemons`` daemon processes in one consumer group over the topic (its records
    produced before they start); returns records/s once the group was stable,
    the CPU us per record of all of them together from their first record, the records
    processed twice (a rebalance hands a partition over from its last commit) and each
    daemon's share of the records.

    The first daemon to join takes every partition until the others join; the steady
    rate starts at the last moment a daemon began a partition it had not read before.
    """
    group = f"bench-{uuid.uuid4().hex[:6]}"
    context = multiprocessing.get_context("spawn")
    stop = context.Event()
    # Processed, not committed: the commits stay behind the sessions whose last action is
    # still pending (until they idle out), by design.
    high = context.Array("q", partitions, lock=False)
    pipes, workers = [], []
    with tempfile.TemporaryDirectory() as root:
        for n in range(daemons):
            parent, child = context.Pipe()
            worker = context.Process(target=group_worker, args=(
                f"{root}/daemon-{n}", bootstrap, topic, group, stop, high, child))
            worker.start()
            pipes.append(parent)
            workers.append(worker)
        probe = KafkaConsumer(bootstrap_servers=bootstrap)
        ends = probe.end_offsets([TopicPartition(topic, p) for p in range(partitions)])
        probe.close()
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and any(
                high[tp.partition] < end for tp, end in ends.items()):
            time.sleep(0.05)  # watching the daemons' progress, not a sync
        stop.set()
        results = [pipe.recv() for pipe in pipes]
        for worker in workers:
            worker.join()
    seen = [row for rows, _ in results for row in rows]
    cpu = sum(cpu for _, cpu in results)
    started: dict[tuple[int, int], float] = {}
    for n, (rows, _) in enumerate(results):
        for t, partition, _ in rows:
            started.setdefault((n, partition), t)
    stable = max(started.values())
    steady = [t for t, _, _ in seen if t >= stable]
    rate = (len(steady) - 1) / (max(steady) - stable) if len(steady) > 1 else 0.0
    twice = len(seen) - len({(p, o) for _, p, o in seen})
    return rate, cpu / len(seen) * 1e6, twice, [len(rows) for rows, _ in results]


def throughput(args: argparse.Namespace) -> None:
    if args.workers:
        throughput_workers(args)
        return
    if args.daemons > 1:
        throughput_group(args)
        return
    records = stream(args.sessions, 10)
    size = sum(len(json.dumps(r)) for r in records) / len(records)
    with tansu_broker() as broker, tempfile.TemporaryDirectory() as state:
        topic = f"bench-{uuid.uuid4().hex[:6]}"
        broker.create_topic(topic, PARTITIONS)
        broker.create_topic(f"{topic}.dlq", 1)
        produce(broker.bootstrap, topic, records)
        tansu = psutil.Process(broker.process.pid)
        tansu_start = _cpu(tansu)
        bare, bare_cpu = bare_floor(broker.bootstrap, topic, len(records))
        tansu_bare = (_cpu(tansu) - tansu_start) / (3 * len(records)) * 1e6  # 3 reads
        profiler = None
        if args.profile:
            from pyinstrument import Profiler

            profiler = Profiler(interval=0.0005)
        stages = Stages() if args.stages else None
        pipeline, timed = run_daemon_until(daemon_config(state, broker.bootstrap, topic),
                                           len(records), profiler=profiler, stages=stages)
        tansu_daemon = (_cpu(tansu) - tansu_start) / len(records) * 1e6 - 3 * tansu_bare
        daemon = (timed.count - 1) / (timed.last - timed.first)
    interactions = pipeline.stats.total("interactions")
    print(f"{len(records):,} records ({size / 1e3:.1f} KB each), {interactions:,.0f} interactions")
    daemon_cpu = timed.cpu / timed.count * 1e6
    print(f"bare kafka-python + json.loads (fastest of 3): {bare:>10,.0f} records/s "
          f"({bare_cpu:,.0f} us CPU/record)")
    print(f"nextstate daemon (durable):     {daemon:>10,.0f} records/s "
          f"({daemon_cpu:,.0f} us CPU/record; "
          f"{daemon * interactions / len(records):,.0f} interactions/s)")
    print(f"broker (Tansu) CPU while serving them: {tansu_bare:,.0f} us/record to the bare "
          f"loop, {tansu_daemon:,.0f} us/record to the daemon (same machine, same cores)")
    print(f"CPU ratio bare/daemon: {bare_cpu / daemon_cpu:.2f} (the same ratio, less noisy "
          f"on a shared machine)")
    print(f"ratio daemon/bare: {daemon / bare:.2f}  (target >= 0.8)")
    if profiler is not None:
        print(profiler.output_text(unicode=False, color=False, show_all=False))
    if stages is not None:
        stages.report(timed.count)


def throughput_group(args: argparse.Namespace) -> None:
    """``throughput --daemons N``: the bare loop vs N daemon processes in one group."""
    records = stream(args.sessions, 10)
    partitions = args.partitions
    with tansu_broker() as broker:
        topic = f"bench-{uuid.uuid4().hex[:6]}"
        broker.create_topic(topic, partitions)
        broker.create_topic(f"{topic}.dlq", 1)
        produce(broker.bootstrap, topic, records)
        bare, bare_cpu = bare_floor(broker.bootstrap, topic, len(records), partitions)
        rate, cpu, twice, shares = group_throughput(broker.bootstrap, topic, args.daemons,
                                                    partitions)
    print(f"{len(records):,} records over {partitions} partitions; "
          f"{os.cpu_count()} cores (Tansu on the same machine)")
    print(f"bare kafka-python + json.loads, 1 process, fastest of 3: {bare:>10,.0f} records/s "
          f"({bare_cpu:,.0f} us CPU/record)")
    print(f"nextstate, {args.daemons} daemons in one group:   {rate:>10,.0f} records/s once "
          f"the group was stable ({cpu:,.0f} us CPU/record, all daemons, from their first "
          f"record); "
          f"records per daemon {shares}, {twice} processed twice after a rebalance")
    print(f"ratio daemons/bare: {rate / bare:.2f}  (target >= 0.8)")


def throughput_workers(args: argparse.Namespace) -> None:
    """``throughput --workers N``: the bare loop vs ``nextstate run --workers N``."""
    records = stream(args.sessions, 10)
    partitions = args.partitions
    with tansu_broker() as broker, tempfile.TemporaryDirectory() as root:
        topic = f"bench-{uuid.uuid4().hex[:6]}"
        broker.create_topic(topic, partitions)
        broker.create_topic(f"{topic}.dlq", 1)
        produce(broker.bootstrap, topic, records)
        bare, bare_cpu = bare_floor(broker.bootstrap, topic, len(records), partitions)
        for attempt in range(1, ATTEMPTS + 1):
            run = Path(root) / f"attempt-{attempt}"
            run.mkdir()
            read, seconds, cpu, before, assigned, code = run_workers_once(
                run, broker.bootstrap, topic, args.workers, len(records))
            if before <= len(records) / 10 or attempt == ATTEMPTS:
                break
            print(f"attempt {attempt}: a worker's partitions came after the others had read "
                  f"{before:,.0f} records (the group forming, not reading); again, in a fresh "
                  f"group")
    rate = read / seconds
    print(f"{len(records):,} records over {partitions} partitions; {os.cpu_count()} cores "
          f"(Tansu on the same machine)")
    print(f"bare kafka-python + json.loads, 1 process, fastest of 3: {bare:>10,.0f} records/s "
          f"({bare_cpu:,.0f} us CPU/record)")
    print(f"nextstate run --workers {args.workers}:          {rate:>10,.0f} records/s once every "
          f"worker had its partitions ({before:,.0f} records read before; attempt {attempt}), "
          f"to its last record "
          f"({cpu / read * 1e6:,.0f} us CPU/record, all its processes); {assigned} partition "
          f"assignments logged" + (" (a rebalance: its replays were counted too)"
                                   if assigned > args.workers else "")
          + f"; exit code {code}")
    print(f"ratio daemon/bare: {rate / bare:.2f}  (target >= 0.8)")


ATTEMPTS = 3  # throughput --workers: runs whose group formed late are done again


def run_workers_once(root: Path, bootstrap: str, topic: str, workers: int, total: int
                     ) -> tuple[float, float, float, float, int, int]:
    """One ``nextstate run --workers`` over the topic in a fresh group and state dir:
    :func:`watch_workers`'s figures, the assignments logged and the exit code."""
    state = root / "state"
    config = root / "nextstate.toml"
    config.write_text(workers_toml(state, bootstrap, topic, workers))
    log = root / "daemon.log"
    with open(log, "wb") as out:
        daemon = subprocess.Popen([sys.executable, "-m", "nextstate.daemon.cli", "run",
                                   "--config", str(config)], stdout=out,
                                  stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        read, seconds, cpu, before = watch_workers(daemon, state, log, workers, total)
    finally:
        daemon.send_signal(signal.SIGTERM)
        code = daemon.wait(120)
    return read, seconds, cpu, before, log.read_text().count('"partitions_assigned"'), code


def workers_toml(state: Path, bootstrap: str, topic: str, workers: int) -> str:
    """The ``throughput --workers`` daemon's config: :func:`daemon_config`'s settings. In
    about a quarter of the runs one worker's assignment came about a second after the others'
    (the broker's: bare kafka-python and librdkafka consumers joining a Tansu 0.6.0 group see
    it too, whatever the heartbeat), and they read their whole share meanwhile, so the rate
    of the rest was one worker's: a run whose workers read over a tenth of the records
    before the last one had its partitions is done again (:data:`ATTEMPTS`)."""
    return f"""
source = "kafka"
state_dir = "{state}"
workers = {workers}
extractors = {json.dumps(EXTRACTORS)}
metrics_port = 0
log_format = "json"
progress = "off"

[kafka]
bootstrap_servers = ["{bootstrap}"]
topic = "{topic}"
group_id = "bench-{uuid.uuid4().hex[:6]}"
session_timeout_ms = 6000
heartbeat_interval_ms = 1000
max_poll_interval_ms = 6000
poll_timeout_ms = 100
"""


def watch_workers(daemon: subprocess.Popen, state: Path, log: Path, workers: int, total: int
                  ) -> tuple[float, float, float, float]:
    """Watch a ``nextstate run`` from outside while it reads ``total`` records that wait in
    its topic. From the moment every worker has its partitions (a follower's assignment can
    come a heartbeat after the leader's, which has read on meanwhile) to the moment its
    workers' ``/metrics`` sum to ``total`` records (sampled every 50 ms: a sample costs each
    worker about 0.3 ms): the records read and the seconds in between, the CPU seconds of
    its processes in between, and the records read before that moment."""
    process = psutil.Process(daemon.pid)

    def cpu() -> float:
        busy = 0.0
        for each in [process, *process.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                busy += _cpu(each)
        return busy

    def counted() -> float:
        records = 0.0
        for shard in shard_dirs(state):
            records += metric_total(daemon_http(shard, "/metrics")[1], "nextstate_records_total")
        return records

    def all_assigned() -> bool:
        rows = [json.loads(row) for row in log.read_text().splitlines()
                if '"partitions_assigned"' in row]
        return len({row.get("worker") for row in rows}) >= workers

    deadline = time.monotonic() + 600
    start = cpu_start = before = 0.0
    size = -1
    while time.monotonic() < deadline and daemon.poll() is None:
        if not start:
            if log.stat().st_size != size:
                size = log.stat().st_size
                if all_assigned():
                    start, before, cpu_start = time.perf_counter(), counted(), cpu()
            time.sleep(0.002)  # sampling the daemon's progress from outside, not a sync
        elif counted() >= total:
            return total - before, time.perf_counter() - start, cpu() - cpu_start, before
        else:
            time.sleep(0.05)
    raise RuntimeError(f"the daemon did not count {total} records (exit code {daemon.poll()})")


def latency_records(sessions: int, total: int) -> list[dict]:
    """The exchanges the latency run produces (each closes one interaction)."""
    return [r for r in stream(sessions, 10) if "request" in r][:total]


def produce_paced(bootstrap: str, topic: str, sessions: int, total: int, rate: int,
                  conn: Any) -> None:
    """Produce ``total`` exchanges at ``rate``/s; send back (sent time by (partition,
    offset), the rate achieved) through ``conn``."""
    records = latency_records(sessions, total)
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks=1, linger_ms=0)
    sent_at: dict[tuple[int, int], float] = {}
    lock = threading.Lock()
    start = time.time()
    for n, record in enumerate(records):
        due = start + n / rate
        while (wait := due - time.time()) > 0:  # pacing the producer, not a sync
            time.sleep(min(0.001, wait))
        sent = time.time()

        def stamp(meta, sent=sent) -> None:
            with lock:
                sent_at[(meta.partition, meta.offset)] = sent

        producer.send(topic, key=record["session_id"].encode(),
                      value=json.dumps(record).encode()).add_callback(stamp)
    producer.flush()
    produced_rate = len(records) / (time.time() - start)
    producer.close()
    with lock:
        conn.send((dict(sent_at), produced_rate))


def latency(args: argparse.Namespace) -> None:
    total = len(latency_records(args.sessions, int(args.rate * args.seconds)))
    with tansu_broker() as broker, tempfile.TemporaryDirectory() as state:
        topic = f"lat-{uuid.uuid4().hex[:6]}"
        broker.create_topic(topic, PARTITIONS)
        broker.create_topic(f"{topic}.dlq", 1)
        config = daemon_config(state, broker.bootstrap, topic, commit_interval_s=0.2,
                               commit_every_records=1_000_000)
        holder: dict[str, Timed] = {}
        ready = threading.Event()

        def run() -> None:
            pipeline = Pipeline(config)
            holder["timed"] = Timed(pipeline)
            stop = threading.Event()
            holder["stop"] = stop  # type: ignore[assignment]
            runner = KafkaRunner(pipeline, config, stop, Health(), Progress(pipeline.stats,
                                                                            False))
            holder["runner"] = runner  # type: ignore[assignment]
            ready.set()
            runner.run()
            runner.close()
            pipeline.close()

        thread = threading.Thread(target=run)
        thread.start()
        ready.wait()
        runner = holder["runner"]
        while not runner.consumer.assignment():  # the group is formed before the clock starts
            time.sleep(0.05)
        # The producer runs in its own process, as the agents it stands for do: in this one
        # it would share the daemon's GIL, and its sends would count as the daemon's delay.
        parent, child = multiprocessing.get_context("spawn").Pipe()
        producer = multiprocessing.get_context("spawn").Process(
            target=produce_paced, args=(broker.bootstrap, topic, args.sessions, total,
                                        args.rate, child))
        producer.start()
        sent_at, produced_rate = parent.recv()
        producer.join()
        timed = holder["timed"]
        deadline = time.monotonic() + 300
        while len(timed.durable_at) < total and time.monotonic() < deadline:
            time.sleep(0.1)
        holder["stop"].set()  # type: ignore[attr-defined]
        thread.join()
    lat = sorted(timed.durable_at[p] - sent_at[p] for p in sent_at if p in timed.durable_at)
    q = statistics.quantiles(lat, n=100)
    print(f"{total:,} exchanges produced at {produced_rate:,.0f}/s "
          f"(target rate {args.rate:,}/s), {len(lat):,} made durable")
    print(f"produce -> durable tuple: p50 {q[49] * 1000:,.0f} ms, p99 {q[98] * 1000:,.0f} ms, "
          f"max {lat[-1] * 1000:,.0f} ms")


def rss(args: argparse.Namespace) -> None:
    tuples_per_record = 1.2  # measured: tuples per call-log record with the rule extractors
    sessions = int(args.capacity * args.factor / tuples_per_record / 20) + 1
    records = [json.dumps(r).encode() for r in stream(sessions, 10)]
    process = psutil.Process()
    with tempfile.TemporaryDirectory() as state:
        buffers = [{"name": kind, "kinds": [kind], "capacity": args.capacity}
                   for kind in ("evaluative", "directive", "preference")]
        pipeline = Pipeline(load_config(None, state_dir=state, extractors=EXTRACTORS,
                                        buffers=buffers))
        samples = []
        every = max(1, len(records) // 20)
        for offset, value in enumerate(records):
            pipeline.process(value, None, "rss", 0, offset)
            if offset % 1000 == 999:
                pipeline.checkpoint()
            if offset % every == every - 1:
                samples.append(process.memory_info().rss / 2**20)
        pipeline.write_pending()  # (scores what waits: every tuple counted)
        tuples = pipeline.stats.total("tuples")
        stored = sum(len(b) for b in pipeline.buffers.buffers.values())
        pipeline.close()
    warm = samples[len(samples) // 4]
    print(f"{len(records):,} records, {tuples:,.0f} tuples into buffers of capacity "
          f"{args.capacity:,} each ({tuples / args.capacity:.1f}x), {stored:,} stored at the end")
    print("RSS MiB: " + " ".join(f"{s:.0f}" for s in samples))
    print(f"after warm-up {warm:.0f} MiB -> end {samples[-1]:.0f} MiB: "
          f"{(samples[-1] / warm - 1) * 100:+.1f}% (target within 10%)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("throughput")
    p.add_argument("--sessions", type=int, default=500)
    p.add_argument("--stages", action="store_true",
                   help="print the consume thread's CPU per record in each stage of the loop")
    p.add_argument("--profile", action="store_true",
                   help="print a pyinstrument profile of the daemon's consume thread")
    p.add_argument("--daemons", type=int, default=1,
                   help="daemon processes in one consumer group (each its own buffer shard)")
    p.add_argument("--partitions", type=int, default=6,
                   help="partitions of the topic with --daemons > 1 or --workers")
    p.add_argument("--workers", type=int, default=0,
                   help="run the command `nextstate run --workers N` instead (N >= 1)")
    p = sub.add_parser("latency")
    p.add_argument("--rate", type=int, default=2000)
    p.add_argument("--seconds", type=float, default=20)
    p.add_argument("--sessions", type=int, default=2500)
    p = sub.add_parser("rss")
    p.add_argument("--capacity", type=int, default=2000)
    p.add_argument("--factor", type=float, default=10)
    args = parser.parse_args()
    print(f"hot path: {hot_path()}")
    {"throughput": throughput, "latency": latency, "rss": rss}[args.command](args)


if __name__ == "__main__":
    main()

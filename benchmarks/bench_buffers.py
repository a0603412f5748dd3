"""Replay-buffer throughput against cpprb, durable flush latency and memory under streaming.

Run: ``python benchmarks/bench_buffers.py`` (about a minute). Every ratio is measured in
this one run on this machine: ``ours / cpprb`` for throughput (>= 1.0 means at least as
fast), with the same capacity (1M), batch size (256) and priorities.

* **index**: the priority/index operations alone: setting 100k priorities (sum tree +
  slot metadata), and 1000 rounds of ``sample(256)`` + ``update_priorities``. This is
  what cpprb's PrioritizedReplayBuffer does with numeric rows.
* **whole tuples**: the same through ``ReplayBuffer`` with ScoredTuples (dedup, eviction
  bookkeeping, msgpack + SQLite for the durable storage, payload fetch on sample).
* **durable**: adds/s with a flush (an fsync'd commit) every N tuples; p99 flush latency.
* **memory**: RSS after streaming 10x capacity tuples vs RSS at capacity, each storage
  measured in a fresh subprocess.

``python benchmarks/bench_buffers.py --call-log [--sessions 400] [--repeat 5]`` instead
measures the durable store on realistic data: the tuples the daemon's pipeline makes from
``bench_daemon.py``'s call logs. It prints bytes of buffer file per stored tuple and CPU
microseconds per stored tuple (process time, best of ``--repeat``) of the whole pipeline and of
the storage alone (the pipeline's write batches replayed into fresh buffers).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import msgspec
import numpy as np
from cpprb import PrioritizedReplayBuffer

from nextstate.buffers import (
    BufferSpec,
    MemoryStorage,
    PrioritizedSampler,
    ReplayBuffer,
)
from nextstate.extractors.types import Message, ScoredTuple

CAPACITY = 1_000_000
N_ADD = 100_000
N_DURABLE = 30_000  # whole tuples per durable run (three runs: flush every 100/1k/10k)
BATCH = 256
ROUNDS = 1000
ALPHA, BETA = 0.6, 0.4


def make_tuple(i: int) -> ScoredTuple:
    """A realistic-ish tuple: a few context messages (~1 KB) and 32 behaviour log-probs."""
    return ScoredTuple(
        interaction_id=f"session-{i % 997}#{i}", session_id=f"session-{i % 997}",
        extractor="tool_result", kind="evaluative", source=("tool", "user", "terminal")[i % 3],
        context=(Message("system", "You are a helpful agent. " * 4),
                 Message("user", f"please fix bug {i} in the parser " * 6),
                 Message("tool", f"Traceback line {i}\n" * 10)),
        action=Message("assistant", f"Calling the edit tool on file {i}. " * 3),
        next_state_excerpt="ok", reward=((i % 21) - 10) / 10, confidence=0.9,
        policy_version=f"v{i // 1000}", behaviour_logprobs=tuple([-0.25] * 32),
    )


def best_of(repeats: int, fn) -> float:
    """Fastest of a few runs (seconds): the least noisy estimate on a shared machine."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def interleaved(repeats: int, ours, peer) -> tuple[float, float]:
    """Best-of times of two functions run alternately, so both see the same machine load."""
    ours_times, peer_times = [], []
    for _ in range(repeats):
        peer_times.append(best_of(1, peer))
        ours_times.append(best_of(1, ours))
    return min(ours_times), min(peer_times)


def index_and_peer_figures(priorities: np.ndarray, updates: np.ndarray,
                           tuples: list[ScoredTuple]) -> tuple[dict, dict]:
    """Index-level ops, ours vs cpprb, plus our whole-tuple figures in memory."""
    obs = np.arange(N_ADD, dtype=np.float32)[:, None]

    def peer_add():
        rb = PrioritizedReplayBuffer(CAPACITY, {"obs": {"shape": 1}}, alpha=ALPHA)
        rb.add(obs=obs, priorities=priorities)
        return rb

    peer_rb = peer_add()

    def peer_rounds():
        for r in range(ROUNDS):
            batch = peer_rb.sample(BATCH, beta=BETA)
            peer_rb.update_priorities(batch["indexes"], updates[r])

    storage = MemoryStorage(CAPACITY)
    sampler = PrioritizedSampler(CAPACITY, ALPHA, BETA)
    slots = np.arange(N_ADD)

    def add():
        # What a batched add does to the index: slot metadata, priorities, sum-tree leaves.
        storage.seq[slots] = slots
        storage.priority[slots] = priorities
        sampler.on_write(storage, slots)

    rb = ReplayBuffer(MemoryStorage(CAPACITY), PrioritizedSampler(CAPACITY, ALPHA, BETA),
                      seed=0)
    start = time.perf_counter()
    rb.extend(tuples)
    whole_add = time.perf_counter() - start
    rb.update_priorities(slots, priorities)
    rng = np.random.default_rng(0)

    def rounds():
        for r in range(ROUNDS):
            indices, _ = rb.sample_indices(BATCH, rng=rng)
            rb.update_priorities(indices, updates[r])

    def whole_rounds():
        for r in range(ROUNDS):
            batch = rb.sample(BATCH, rng=rng)
            rb.update_priorities(batch.indices, updates[r])

    ours_add, peer_add_s = interleaved(5, add, peer_add)
    ours_rounds, peer_rounds_s = interleaved(5, rounds, peer_rounds)
    ours = {"add": ours_add, "rounds": ours_rounds, "whole_add": whole_add,
            "whole_rounds": best_of(3, whole_rounds)}
    return ours, {"add": peer_add_s, "rounds": peer_rounds_s}


def durable_figures(tuples: list[ScoredTuple], updates: np.ndarray) -> dict[str, float]:
    """Ours on SQLite (synchronous=FULL): adds with flush every N, then sample rounds."""
    figures: dict[str, float] = {}
    for every in (100, 1000, 10_000):
        with tempfile.TemporaryDirectory() as tmp:
            spec = BufferSpec("bench", capacity=CAPACITY, sampler="prioritized", seed=0,
                              dedup_horizon=CAPACITY)
            rb = ReplayBuffer.from_spec(spec, Path(tmp))
            flushes = []
            start = time.perf_counter()
            for i in range(0, len(tuples), every):
                rb.extend(tuples[i : i + every])
                flush_start = time.perf_counter()
                rb.flush()
                flushes.append(time.perf_counter() - flush_start)
            figures[f"add_every_{every}"] = time.perf_counter() - start
            figures[f"p99_flush_{every}"] = float(np.percentile(flushes, 99))
            figures[f"p50_flush_{every}"] = float(np.percentile(flushes, 50))
            if every == 1000:
                rng = np.random.default_rng(0)

                def rounds(rb=rb, rng=rng):
                    for r in range(ROUNDS):
                        batch = rb.sample(BATCH, rng=rng)
                        rb.update_priorities(batch.indices, updates[r])
                    rb.flush()

                figures["rounds"] = best_of(2, rounds)
            rb.close()
    return figures


MEMORY_PROBE = """
import sys, tempfile
from pathlib import Path
sys.path.insert(0, {bench_dir!r})
from bench_buffers import make_tuple
from nextstate.buffers import BufferSpec, ReplayBuffer

def rss_mib():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024

capacity = {capacity}
with tempfile.TemporaryDirectory() as tmp:
    spec = BufferSpec("mem", capacity=capacity, sampler="prioritized", seed=0)
    rb = ReplayBuffer.from_spec(spec, Path(tmp) if {durable} else None)
    chunk = 1000
    for i in range(0, capacity, chunk):
        rb.extend(make_tuple(j) for j in range(i, i + chunk))
        rb.flush()
        rb.sample(256)
    at_capacity = rss_mib()
    for i in range(capacity, 10 * capacity, chunk):
        rb.extend(make_tuple(j) for j in range(i, i + chunk))
        rb.flush()
        rb.sample(256)
    print(at_capacity, rss_mib(), len(rb))
    rb.close()
"""


def memory_figures(durable: bool, capacity: int) -> tuple[float, float]:
    """RSS (MiB) at capacity and after 10x capacity, in a fresh interpreter."""
    code = MEMORY_PROBE.format(bench_dir=str(Path(__file__).parent), capacity=capacity,
                               durable=durable)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert int(out[2]) == capacity
    return float(out[0]), float(out[1])


CALL_LOG_FLUSH_EVERY = 8
"""Storage-alone replay: flush after this many write batches (the daemon checkpoints
every few seconds, each a few ticks' worth of batches)."""


def call_log_figures(sessions: int, turns: int, repeat: int) -> None:
    """Bytes and CPU per stored tuple of the durable buffers fed by the call-log pipeline."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_daemon import EXTRACTORS, call_logs, feed

    from nextstate.buffers import BufferSet
    from nextstate.daemon.config import load_config
    from nextstate.daemon.pipeline import Pipeline

    values = call_logs(sessions, turns)

    def pipeline_run(spy: list[list[ScoredTuple]] | None) -> tuple[float, int, int]:
        # As bench_daemon.full_pipeline, in CPU time; returns (seconds, stored, file bytes).
        with tempfile.TemporaryDirectory() as state:
            pipeline = Pipeline(load_config(None, state_dir=state, extractors=EXTRACTORS))
            if spy is not None:
                extend = pipeline.buffers.extend

                def recording(tuples):
                    spy.append(list(tuples))
                    return extend(spy[-1])

                pipeline.buffers.extend = recording  # type: ignore[method-assign]
            start = time.process_time()
            feed(pipeline, values)
            seconds = time.process_time() - start
            stored = sum(len(rb) for rb in pipeline.buffers.buffers.values())
            pipeline.close()
            size = sum(f.stat().st_size for f in Path(state).rglob("*.sqlite3*"))
        return seconds, stored, size

    batches: list[list[ScoredTuple]] = []
    _, stored, size = pipeline_run(batches)
    pipeline_cpu = min(pipeline_run(None)[0] for _ in range(repeat))
    specs = [msgspec.convert(spec, BufferSpec)
             for spec in load_config(None, extractors=EXTRACTORS).buffers]

    def storage_run() -> tuple[float, int]:
        with tempfile.TemporaryDirectory() as state:
            start = time.process_time()
            bufs = BufferSet.open(Path(state), specs)
            for i, batch in enumerate(batches):
                bufs.extend(batch)
                if i % CALL_LOG_FLUSH_EVERY == CALL_LOG_FLUSH_EVERY - 1:
                    bufs.flush()
            bufs.close()
            seconds = time.process_time() - start
            return seconds, sum(f.stat().st_size for f in Path(state).rglob("*.sqlite3*"))

    storage_cpu, storage_size = min(storage_run() for _ in range(repeat))
    context = sum(len(t.context) for batch in batches for t in batch)
    print(f"call_log: {len(values):,} records, {sum(map(len, batches)):,} tuples written in "
          f"{len(batches)} batches ({context / max(1, sum(map(len, batches))):.1f} context "
          f"messages per tuple), {stored:,} stored")
    print(f"  buffer files after the pipeline:   {size / stored:>9,.0f} bytes/stored tuple "
          f"({size / 1e6:.2f} MB)")
    print(f"  buffer files, storage replay:      {storage_size / stored:>9,.0f} bytes/stored tuple")
    print(f"  full pipeline CPU:                 {pipeline_cpu / stored * 1e6:>9,.1f} us/stored "
          f"tuple (best of {repeat})")
    print(f"  storage alone CPU (flush every {CALL_LOG_FLUSH_EVERY} batches): "
          f"{storage_cpu / stored * 1e6:>6,.1f} us/stored tuple (best of {repeat})")


def main() -> None:
    """Run everything and print one table of figures and ratios."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--call-log", action="store_true",
                        help="only the durable store on the call-log pipeline's tuples")
    parser.add_argument("--sessions", type=int, default=400)
    parser.add_argument("--turns", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    if args.call_log:
        call_log_figures(args.sessions, args.turns, args.repeat)
        return
    started = time.perf_counter()
    rng = np.random.default_rng(0)
    priorities = rng.random(N_ADD) + 0.01
    updates = rng.random((ROUNDS, BATCH)) + 0.01
    tuples = [make_tuple(i) for i in range(N_ADD)]

    ours, peer = index_and_peer_figures(priorities, updates, tuples)
    durable = durable_figures(tuples[:N_DURABLE], updates)

    def line(label: str, ours_s: float, peer_s: float, count: int) -> None:
        print(f"  {label:<46} {count / ours_s:>12,.0f}/s  cpprb {count / peer_s:>12,.0f}/s"
              f"  ratio {peer_s / ours_s:6.2f}x")

    print(f"capacity {CAPACITY:,}, batch {BATCH}, {N_ADD:,} adds, {ROUNDS} rounds "
          "(ratio = ours/cpprb throughput; >= 1.0 is as fast or faster)")
    print(f"load average (1 min): {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs "
          "(index figures: best of 5, ours and cpprb run alternately)")
    print("index / priority operations:")
    line("add 100k priorities (sum tree + slot metadata)", ours["add"], peer["add"], N_ADD)
    line("sample(256) + update_priorities, rounds", ours["rounds"], peer["rounds"], ROUNDS)
    print("whole tuples:")
    line("add, memory storage (dedup, eviction, priority)", ours["whole_add"], peer["add"],
         N_ADD)
    line("sample+fetch+update, memory storage, rounds", ours["whole_rounds"], peer["rounds"],
         ROUNDS)
    line("add, durable SQLite, flush every 1000", durable["add_every_1000"] * N_ADD / N_DURABLE,
         peer["add"], N_ADD)
    line("sample+fetch+update, durable SQLite, rounds", durable["rounds"], peer["rounds"],
         ROUNDS)
    print("durable adds (SQLite WAL, synchronous=FULL):")
    for every in (100, 1000, 10_000):
        print(f"  flush every {every:>6}: {N_DURABLE / durable[f'add_every_{every}']:>9,.0f} adds/s"
              f"   flush p50 {durable[f'p50_flush_{every}'] * 1e3:6.2f} ms"
              f"   p99 {durable[f'p99_flush_{every}'] * 1e3:6.2f} ms")
    print("memory (RSS after streaming 10x capacity vs at capacity):")
    for durable_storage, capacity in ((True, 20_000), (False, 20_000)):
        at_capacity, after = memory_figures(durable_storage, capacity)
        kind = "durable SQLite" if durable_storage else "memory"
        print(f"  {kind:<15} capacity {capacity:,}: {at_capacity:7.1f} MiB -> {after:7.1f} MiB"
              f"  ({(after / at_capacity - 1) * 100:+.1f}%, target within 10%)")
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()

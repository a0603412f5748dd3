"""Daemon hot path from a file on one core: decode + join + rule extractors, then the pipeline.

    python benchmarks/bench_daemon.py [--sessions 400] [--turns 10] [--repeat 3] [--profile]
    python benchmarks/bench_daemon.py --profile-pipeline {call_log,transcript}
    python benchmarks/bench_daemon.py --stages [--repeat 5]
    python benchmarks/bench_daemon.py --vs-python   # compiled hot path vs the same as Python

Two input shapes from ``benchmarks/make_stream.py``'s realistic sessions:

- ``call_log``: OpenAI chat-completions exchanges, each request repeating the whole history
  (what an API proxy logs; the record grows with the conversation);
- ``transcript``: one whole conversation per record.

For each it prints records/s, interactions/s and MB/s of (1) decode + join + the default rule
extractors (no redaction, no storage: the target is >= 100k interactions/s) and (2) the whole
``Pipeline.process`` (redaction and durable SQLite buffers included), with the mean record size.
(1) is the fastest of ``--repeat`` runs, in CPU time of this process.
``--stages`` splits (1) into decode, join and rules, in CPU us per interaction.
``--profile`` prints a pyinstrument profile of (1) on the call logs; ``--profile-pipeline
SHAPE`` one of (2) on that shape. The modules ``setup.py`` compiles are one frame each to a
profiler: run it with ``NEXTSTATE_PURE_PYTHON=1`` to see their functions.

The first line says how the hot path ran (``hot path: compiled (N modules)``, or as Python).
``--vs-python`` runs (1) again in a subprocess with ``NEXTSTATE_PURE_PYTHON=1`` (the same
source as Python) and prints the ratio.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from make_stream import stream

from nextstate.daemon import ingest
from nextstate.daemon.config import load_config
from nextstate.daemon.join import SessionJoiner
from nextstate.daemon.pipeline import SCORE_BATCH, Pipeline
from nextstate.extractors._compiled import hot_path
from nextstate.extractors.registry import Dispatch, build_extractors

EXTRACTORS = ["feedback", "user", "tool", "terminal", "gui"]


def call_logs(sessions: int, turns: int) -> list[bytes]:
    return [json.dumps(r).encode() for r in stream(sessions, turns)]


def transcripts(sessions: int, turns: int) -> list[bytes]:
    """The last exchange of each session as one transcript (its history plus the response)."""
    last: dict[str, dict] = {}
    for record in stream(sessions, turns):
        if "request" in record:
            last[record["session_id"]] = record
    out = []
    for sid, record in last.items():
        messages = [*record["request"]["messages"], record["response"]["choices"][0]["message"]]
        out.append(json.dumps({"session_id": sid, "messages": messages, "reward": 1.0}).encode())
    return out


def core_loop(values: list[bytes], score_batch: int = SCORE_BATCH, rules: bool = True
              ) -> tuple[float, int]:
    """decode + join + rule extractors; returns (CPU seconds of this process, interactions).

    The rules run over the closed interactions in runs of ``score_batch``, as
    ``Pipeline.score_pending`` runs them (``rules=False``: decode + join alone). CPU time,
    not wall time: "on one core" must not depend on what else the machine runs.
    """
    joiner = SessionJoiner()
    dispatch = Dispatch(build_extractors(EXTRACTORS))  # as Pipeline.score_pending runs them

    def score(closed: list) -> int:
        for interaction in closed if rules else ():
            for _, extractor in dispatch(interaction):
                extractor(interaction)
        return len(closed)

    interactions, closed = 0, []
    start = time.process_time()
    for offset, value in enumerate(values):
        for record, shape in ingest.decode_records(value, None, joiner):
            closed += joiner.feed(record, shape, 0.0, ("bench", 0, offset), len(value))
        if len(closed) >= score_batch:
            interactions += score(closed)
            closed = []
    interactions += score(closed + joiner.close_all())
    return time.process_time() - start, interactions


def best_core_loop(values: list[bytes], repeat: int, score_batch: int = SCORE_BATCH
                   ) -> tuple[float, int]:
    """The fastest of ``repeat`` runs of :func:`core_loop` (a shared machine only adds time)."""
    return min(core_loop(values, score_batch) for _ in range(max(1, repeat)))


class _Replayed:
    """What the join held of a session before each record (``KnownRequests``), replayed,
    so that decoding alone cuts the same bytes out as it does beside the join."""

    def __init__(self) -> None:
        self.held: bytes | None = None

    def known_request(self, session_id: str) -> bytes | None:
        return self.held


def stage_costs(values: list[bytes], repeat: int) -> tuple[float, float, float]:
    """CPU us per interaction of decoding, joining and the rules, each the fastest of
    ``repeat`` runs: decode alone (with the known bytes the join held, replayed), decode +
    join, and the whole core loop; the join and the rules are the differences."""
    joiner, held = SessionJoiner(), []
    for offset, value in enumerate(values):  # what the join held before each record
        records = ingest.decode_records(value, None, joiner)
        sid = records[0][0].session_id if records else None
        held.append(joiner.known_request(sid) if isinstance(sid, str) else None)
        for record, shape in records:
            joiner.feed(record, shape, 0.0, ("bench", 0, offset), len(value))

    def decode_only() -> float:
        known = _Replayed()
        start = time.process_time()
        for value, known.held in zip(values, held, strict=True):
            ingest.decode_records(value, None, known)
        return time.process_time() - start

    runs = range(max(1, repeat))
    decode = min(decode_only() for _ in runs)
    joined, interactions = min(core_loop(values, rules=False) for _ in runs)
    whole = best_core_loop(values, repeat)[0]
    return tuple(t / interactions * 1e6 for t in (decode, joined - decode, whole - joined))


def feed(pipeline: Pipeline, values: list[bytes]) -> None:
    """Every record through ``Pipeline.process``, a ``tick`` every 500 records (as the Kafka
    source does after each poll: it writes the waiting tuples), the end of input and the
    final checkpoint."""
    for offset, value in enumerate(values):
        pipeline.process(value, None, "bench", 0, offset)
        if offset % 500 == 499:
            pipeline.tick()
    pipeline.finish()
    pipeline.checkpoint()


def full_pipeline(values: list[bytes]) -> tuple[float, int]:
    """:func:`feed` through a pipeline with redaction and SQLite buffers (wall time: the
    fsyncs of the durable store are part of the cost)."""
    with tempfile.TemporaryDirectory() as state:
        pipeline = Pipeline(load_config(None, state_dir=state, extractors=EXTRACTORS))
        start = time.perf_counter()
        feed(pipeline, values)
        elapsed = time.perf_counter() - start
        interactions = int(pipeline.stats.total("interactions"))
        pipeline.close()
    return elapsed, interactions


def profile_pipeline(args: argparse.Namespace) -> None:
    """A pyinstrument profile of ``full_pipeline`` (after a warm-up run on a few records)."""
    from pyinstrument import Profiler

    make = call_logs if args.profile_pipeline == "call_log" else transcripts
    values = make(args.sessions, args.turns)
    full_pipeline(values[:100])
    with Profiler(interval=0.0005) as profiler:
        full_pipeline(values)
    print(profiler.output_text(unicode=False, color=False, show_all=False))


def report(shape: str, stage: str, values: list[bytes], seconds: float, interactions: int
           ) -> None:
    size = sum(map(len, values))
    print(f"{shape:<11}{stage:<22}{len(values) / seconds:>12,.0f}{interactions / seconds:>16,.0f}"
          f"{size / seconds / 1e6:>9,.1f}{size / len(values) / 1e3:>11,.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=400)
    parser.add_argument("--turns", type=int, default=10)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs of decode+join+rules per shape; the fastest is reported")
    parser.add_argument("--profile-pipeline", choices=["call_log", "transcript"],
                        help="print a pyinstrument profile of the full pipeline on SHAPE")
    parser.add_argument("--score-batch", type=int, default=SCORE_BATCH,
                        help="run length of the rules in decode+join+rules (the pipeline's "
                             "SCORE_BATCH by default)")
    parser.add_argument("--stages", action="store_true",
                        help="print the CPU us per interaction of decode, join and rules")
    parser.add_argument("--vs-python", action="store_true",
                        help="also run decode+join+rules as Python (NEXTSTATE_PURE_PYTHON=1) "
                             "in a subprocess and print compiled/Python")
    parser.add_argument("--core-json", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not args.core_json:
        print(f"hot path: {hot_path()}")
    if args.profile_pipeline:
        profile_pipeline(args)
        return
    shapes = {"call_log": call_logs(args.sessions, args.turns),
              "transcript": transcripts(args.sessions, args.turns)}
    if args.core_json:  # (--vs-python's subprocess) interactions/s of the core loop per shape
        rates = {}
        for shape, values in shapes.items():
            core_loop(values[:200])
            seconds, interactions = best_core_loop(values, args.repeat, args.score_batch)
            rates[shape] = interactions / seconds
        print(json.dumps({"hot_path": hot_path(), "rates": rates}))
        return
    if args.profile:
        from pyinstrument import Profiler

        with Profiler() as profiler:
            core_loop(shapes["call_log"])
        print(profiler.output_text(unicode=False, color=False, show_all=False))
        return
    if args.stages:
        for shape, values in shapes.items():
            core_loop(values[:200])
            decode, join, rules = stage_costs(values, args.repeat)
            print(f"{shape:<11} us per interaction: decode {decode:.2f}, join {join:.2f}, "
                  f"rules {rules:.2f} (the join and the rules: differences of whole loops)")
        return
    print(f"{'shape':<11}{'stage':<22}{'records/s':>12}{'interactions/s':>16}{'MB/s':>9}"
          f"{'KB/record':>11}")
    for shape, values in shapes.items():
        core_loop(values[:200])  # warm caches and lazy imports
        report(shape, "decode+join+rules", values,
               *best_core_loop(values, args.repeat, max(1, args.score_batch)))
        report(shape, "full pipeline", values, *full_pipeline(values))
    print("target: >= 100,000 interactions/s for decode+join+rules on one core")
    if args.vs_python:
        vs_python(args, shapes)


def vs_python(args: argparse.Namespace, shapes: dict[str, list[bytes]]) -> None:
    """decode+join+rules here, then as Python in a subprocess, then here again (the best of
    the two runs here: this machine's speed drifts), and compiled/Python per shape."""
    import os
    import subprocess

    here = {shape: best_core_loop(values, args.repeat, args.score_batch)
            for shape, values in shapes.items()}
    command = [sys.executable, __file__, "--core-json", "--sessions", str(args.sessions),
               "--turns", str(args.turns), "--repeat", str(args.repeat),
               "--score-batch", str(args.score_batch)]
    result = json.loads(subprocess.run(
        command, env={**os.environ, "NEXTSTATE_PURE_PYTHON": "1"}, check=True,
        capture_output=True, text=True).stdout)
    print(f"as Python: {result['hot_path']}")
    for shape, values in shapes.items():
        again = best_core_loop(values, args.repeat, args.score_batch)
        seconds, interactions = min(here[shape], again)
        compiled, python = interactions / seconds, result["rates"][shape]
        print(f"{shape:<11}decode+join+rules  compiled {compiled:>10,.0f}  Python "
              f"{python:>10,.0f} interactions/s  compiled/Python {compiled / python:.2f}x")


if __name__ == "__main__":
    main()

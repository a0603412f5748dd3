"""Hostile record shapes through ``Pipeline.process``: time and peak memory of one record.

    python benchmarks/bench_hostile_records.py transcript [--n 32000] [--limit N]
    python benchmarks/bench_hostile_records.py tool_calls [--n 8000]

- ``transcript``: one transcript of ``n`` short messages, user and assistant in turns. Each
  action's context is every message before it, so the contexts hold about ``n * n / 4``
  messages together; ``join.max_record_context`` (``--limit``, default the config's) makes a
  transcript beyond it a ``too_large`` dead letter before any is built.
- ``tool_calls``: an exchange whose action calls ``run_shell`` ``n`` times, then the next
  request holding the ``n`` results (the second record is the one timed: it closes the
  action, which the tool and terminal extractors score call by call).

Prints the record's size, the seconds ``process`` took, whether it was dead-lettered, and
this process's peak RSS.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time

from nextstate.daemon.config import load_config
from nextstate.daemon.pipeline import Pipeline


def transcript(n: int) -> list[dict]:
    return [{"session_id": "long", "messages": [
        {"role": role, "content": f"{role[0]}{i}"}
        for i in range(n // 2) for role in ("user", "assistant")]}]


def tool_calls(n: int) -> list[dict]:
    ask = {"role": "user", "content": "run the checks"}
    action = {"role": "assistant", "content": None, "tool_calls": [
        {"id": f"c{i}", "type": "function",
         "function": {"name": "run_shell", "arguments": '{"cmd": "make check"}'}}
        for i in range(n)]}
    results = [{"role": "tool", "tool_call_id": f"c{i}", "content": "Error: exit code 2"}
               for i in range(n)]
    done = {"choices": [{"message": {"role": "assistant", "content": "Done."}}]}
    return [{"session_id": "calls", "request": {"messages": [ask]},
             "response": {"choices": [{"message": action}]}},
            {"session_id": "calls", "request": {"messages": [ask, action, *results]},
             "response": done}]


SHAPES = {"transcript": transcript, "tool_calls": tool_calls}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("shape", choices=sorted(SHAPES))
    parser.add_argument("--n", type=int, default=32_000)
    parser.add_argument("--limit", type=int, default=None, help="join.max_record_context")
    args = parser.parse_args()
    values = [json.dumps(r).encode() for r in SHAPES[args.shape](args.n)]
    overrides = {} if args.limit is None else {"join.max_record_context": args.limit}
    with tempfile.TemporaryDirectory() as state:
        pipeline = Pipeline(load_config(None, state_dir=state, **overrides))
        for offset, value in enumerate(values[:-1]):
            pipeline.process(value, None, "bench", 0, offset)
        start = time.perf_counter()
        pipeline.process(values[-1], None, "bench", 0, len(values) - 1)
        seconds = time.perf_counter() - start
        rejected = pipeline.dead_letters.count
        pipeline.close()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{args.shape} n={args.n}, {len(values[-1]) / 1e6:.2f} MB: process {seconds:.2f} s, "
          f"{'dead-lettered' if rejected else 'scored'}, peak RSS {peak_mb:.0f} MB")


if __name__ == "__main__":
    main()

"""One transcript of many short turns through ``Pipeline.process``: time and peak memory.

    python benchmarks/bench_long_transcript.py [--messages 32000] [--limit N]

Each action's context is every message before it, so the contexts of a transcript of ``n``
messages hold about ``n * n / 4`` messages together; ``join.max_record_context`` (``--limit``,
default the config's) turns a transcript beyond it into a ``too_large`` dead letter before
any is built. Prints the record's size, the seconds ``process`` took, whether it was
dead-lettered, and this process's peak RSS.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time

from nextstate.daemon.config import load_config
from nextstate.daemon.pipeline import Pipeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=32_000)
    parser.add_argument("--limit", type=int, default=None, help="join.max_record_context")
    args = parser.parse_args()
    messages = [{"role": role, "content": f"{role[0]}{i}"}
                for i in range(args.messages // 2) for role in ("user", "assistant")]
    value = json.dumps({"session_id": "long", "messages": messages}).encode()
    overrides = {} if args.limit is None else {"join.max_record_context": args.limit}
    with tempfile.TemporaryDirectory() as state:
        pipeline = Pipeline(load_config(None, state_dir=state, **overrides))
        start = time.perf_counter()
        pipeline.process(value, None, "bench", 0, 0)
        seconds = time.perf_counter() - start
        rejected = pipeline.dead_letters.count
        pipeline.close()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{args.messages} messages, {len(value) / 1e6:.2f} MB: process {seconds:.2f} s, "
          f"{'dead-lettered' if rejected else 'scored'}, peak RSS {peak_mb:.0f} MB")


if __name__ == "__main__":
    main()

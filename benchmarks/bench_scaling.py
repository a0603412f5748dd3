"""Per-item cost as state grows: it should stay flat, not grow with what is held.

    python benchmarks/bench_scaling.py

1. **The join with many sessions taking turns**: call logs of ``S`` sessions, one exchange
   of each in turn, three rounds; ``close_idle`` after every record, as a file run in event
   time does. CPU us per record at S = 1,000 and S = 100,000, and their ratio.
2. **Writes into a full in-memory buffer** (FIFO eviction and the dedup horizon at work):
   CPU us per stored tuple while overwriting a buffer of capacity 10,000 and of 1,000,000.

3. **Grouped draws** (``session_group = 4``) from a full in-memory buffer of 1M tuples: ms
   per batch of 32, beside a plain draw. Listing the drawn sessions' turns is a pass over
   the buffer's session keys (reported: it grows with the buffer, under the buffer lock).

1 and 2 once grew with the size: a plain ``dict`` whose oldest entries are deleted makes every
later look at its front walk over the deleted entries (the join's recency order, the memory
store's dedup horizon). Both are ``OrderedDict`` s now.
"""

from __future__ import annotations

import json
import time

from nextstate.buffers import BufferSpec, ReplayBuffer
from nextstate.daemon import ingest
from nextstate.daemon.join import SessionJoiner
from nextstate.extractors.types import Message, ScoredTuple


def join_us_per_record(sessions: int, rounds: int = 3) -> float:
    """CPU us per record of decode + join + close_idle, ``sessions`` sessions in turn."""
    records = []
    for turn in range(rounds):
        history: list[dict] = [{"role": "system", "content": "sys"}]
        for k in range(turn):
            history += [{"role": "user", "content": f"q{k}"},
                        {"role": "assistant", "content": f"a{k}"}]
        history.append({"role": "user", "content": f"q{turn}"})
        response = {"choices": [{"message": {"role": "assistant", "content": f"a{turn}"}}]}
        records += [json.dumps({"session_id": f"s{s}", "request": {"messages": history},
                                "response": response}).encode() for s in range(sessions)]
    joiner = SessionJoiner()
    start = time.process_time()
    for offset, value in enumerate(records):
        now = offset * 1e-6  # nothing goes idle: each close_idle only looks at the head
        for record, shape in ingest.decode_records(value, None, joiner):
            joiner.feed(record, shape, now, ("bench", 0, offset), len(value))
        joiner.close_idle(now)
    return (time.process_time() - start) / len(records) * 1e6


_ACTION = Message(role="assistant", content="ok")


def _turns(lo: int, n: int) -> list[ScoredTuple]:
    """Tuples ``lo`` .. ``lo + n - 1``, ten turns per session."""
    return [ScoredTuple(f"s{i // 10}#{i}", f"s{i // 10}", "bench", "evaluative", "user", (),
                        _ACTION, reward=1.0) for i in range(lo, lo + n)]


def _filled(spec: BufferSpec, tuples: list[ScoredTuple]) -> ReplayBuffer:
    """An in-memory buffer holding ``tuples``, written in batches of 512 as the daemon does."""
    buffer = ReplayBuffer.from_spec(spec, None)
    for lo in range(0, len(tuples), 512):
        buffer.extend(tuples[lo:lo + 512])
    return buffer


def overwrite_us_per_tuple(capacity: int) -> float:
    """CPU us per tuple written into a full in-memory buffer (each write evicts one)."""
    buffer = _filled(BufferSpec("bench", capacity=capacity, seed=0), _turns(0, capacity))
    measured = min(capacity, 100_000)
    batches = [_turns(capacity + lo, 512) for lo in range(0, measured, 512)]
    start = time.process_time()
    for tuples in batches:
        buffer.extend(tuples)
    return (time.process_time() - start) / (len(batches) * 512) * 1e6


def grouped_draw_ms(capacity: int = 1_000_000, batches: int = 20) -> tuple[float, float]:
    """Wall ms per batch of 32 drawn with ``session_group`` 4 and 1 (10-turn sessions)."""
    tuples = _turns(0, capacity)
    out = []
    for group in (4, 1):
        buffer = _filled(BufferSpec("bench", capacity=capacity, session_group=group, seed=0),
                         tuples)
        buffer.sample(32)
        start = time.perf_counter()
        for _ in range(batches):
            buffer.sample(32)
        out.append((time.perf_counter() - start) / batches * 1e3)
    return out[0], out[1]


def main() -> None:
    join_us_per_record(1_000)  # warm-up: first-use costs (caches, lazy imports) counted once
    small, large = join_us_per_record(1_000), join_us_per_record(100_000)
    print(f"join + close_idle, sessions taking turns: {small:.1f} us/record at 1k sessions, "
          f"{large:.1f} at 100k: {large / small:.2f}x")
    small, large = overwrite_us_per_tuple(10_000), overwrite_us_per_tuple(1_000_000)
    print(f"writes into a full memory buffer: {small:.1f} us/tuple at capacity 10k, "
          f"{large:.1f} at 1M: {large / small:.2f}x")
    print("target: flat, <= 2x (a larger buffer only adds cache misses)")
    grouped, plain = grouped_draw_ms()
    print(f"grouped draws (session_group 4) from 1M tuples: {grouped:.2f} ms per batch of 32, "
          f"plain draws {plain:.2f} ms (reported)")


if __name__ == "__main__":
    main()

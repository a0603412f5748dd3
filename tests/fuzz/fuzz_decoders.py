"""libFuzzer (atheris) harness over the decoders and the join: hostile bytes in, no crash out.

One fuzz input is a stream: its newline-separated pieces are records of one partition, fed in
order, with and without a Kafka key, through :func:`ingest.decode_records` (which dispatches to
``wire``, ``otel`` and ``anthropic``) and a :class:`SessionJoiner` with small bounds; idle
sessions are closed as the clock advances and everything is closed at the end. Invariants, any
breach of which is a crash for libFuzzer:

- only :class:`BadRecord` escapes (and ``RecursionError`` from the decode, which the pipeline
  turns into a ``decode`` dead letter), and a rejected record carries a known reason and a
  detail;
- the join's state stays within its bounds after every record: sessions, pending bytes, and
  feedback held per pending action;
- a record the join rejects leaves it as it was (sessions, their order and pending actions).

Run it (the seed corpus is written into an empty corpus folder first)::

    python tests/fuzz/fuzz_decoders.py -max_total_time=300 -timeout=10 /tmp/fuzz-corpus

``tests/daemon/test_fuzz.py::test_atheris_harness_runs_clean`` runs it for a few thousand
inputs in a subprocess (atheris takes over the process).
"""

from __future__ import annotations

import json
import os
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # the tests' record builders (tests.records)
# atheris instruments Python bytecode, so the modules setup.py compiles are fuzzed as their
# source (the same code: tests/test_compiled.py compares the two).
os.environ.setdefault("NEXTSTATE_PURE_PYTHON", "1")

import atheris  # noqa: E402  (installed with the test extras)
import structlog  # noqa: E402

# Warnings the decoders and the join log (e.g. evictions) are silenced: quiet, at a million inputs.
structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(50))

with atheris.instrument_imports(include=["nextstate"]):
    from nextstate.daemon import ingest, otel
    from nextstate.daemon.join import SessionJoiner
    from nextstate.daemon.wire import BadRecord, as_bad_record

REASONS = frozenset({"decode", "schema", "no_session", "unknown_type", "unknown_shape",
                     "unknown_role", "unmatched_feedback"})
"""Every reason a decoder or the join may give (``too_large`` is the pipeline's own)."""

MAX_SESSIONS = 4
MAX_PENDING_BYTES = 20_000
MAX_FEEDBACK = 3
MAX_PIECES = 24


def check_stream(data: bytes) -> None:
    """Feed one fuzz input through the decoders and a bounded joiner, asserting invariants."""
    joiner = SessionJoiner(idle_timeout_s=5.0, max_sessions=MAX_SESSIONS,
                           max_pending_bytes=MAX_PENDING_BYTES,
                           max_feedback_per_action=MAX_FEEDBACK)
    for n, piece in enumerate(data.split(b"\n")[:MAX_PIECES]):
        now = float(n)
        try:
            decoded = ingest.decode_records(piece, b"key" if n % 2 else None)
            batch = isinstance(decoded, otel.SpanBatch)
            for i, (record, shape) in enumerate(decoded):
                before = join_state(joiner)
                try:
                    joiner.feed(record, shape, now, ("fuzz", 0, n), len(piece) // len(decoded))
                except (BadRecord, RecursionError) as error:
                    assert join_state(joiner) == before, "a rejected record changed the join"
                    if not batch:
                        raise
                    # As the pipeline does: the span alone, for the dead letters.
                    rejected = decoded.reject(i, as_bad_record(error))
                    assert rejected.reason in REASONS and rejected.value, rejected
                check_bounds(joiner)
        except BadRecord as exc:
            assert exc.reason in REASONS, f"unknown reason {exc.reason!r}"
            assert isinstance(exc.detail, str), exc.detail
        except RecursionError:
            pass  # msgspec's depth guard: the pipeline dead-letters it as "decode"
        check_bounds(joiner)  # a rejected record leaves the state within bounds too
        if n % 3 == 2:
            joiner.close_idle(now)
            check_bounds(joiner)
    for interaction in joiner.close_all():
        assert interaction.session_id is not None
    assert not joiner.sessions and joiner.pending_count == 0


def join_state(joiner: SessionJoiner) -> tuple[object, ...]:
    """What a rejected record must leave as it was: the sessions (in recency order, each
    with its pending action and what it saw last) and the bounds' counters."""
    return (joiner.pending_bytes, joiner.evicted, joiner.duplicates,
            [(sid, s.pending and s.pending.interaction_id, s.last_seen, s.history_len)
             for sid, s in joiner.sessions.items()])


def check_bounds(joiner: SessionJoiner) -> None:
    assert len(joiner.sessions) <= MAX_SESSIONS, len(joiner.sessions)
    assert joiner.pending_bytes <= MAX_PENDING_BYTES, joiner.pending_bytes
    for session in joiner.sessions.values():
        if session.pending is not None:
            assert len(session.pending.feedback) <= MAX_FEEDBACK


def test_one_input(data: bytes) -> None:
    check_stream(data)


def seeds() -> list[bytes]:
    """Real inputs of every shape: sample sessions as streams, feedback and session ends, a
    transcript, Anthropic exchanges, and OTLP batches in JSON and protobuf."""
    from tests.records import assistant, exchange, line, tool, user

    out: list[bytes] = []
    by_session: dict[str, list[bytes]] = defaultdict(list)
    for raw in (ROOT / "daemon" / "sample_interactions.jsonl").read_bytes().splitlines():
        try:
            session = str(json.loads(raw).get("session_id"))
        except (ValueError, AttributeError):  # the sample's deliberately broken lines
            out.append(raw)
            continue
        by_session[session].append(raw)
    for lines in list(by_session.values())[:40]:
        out.append(b"\n".join(lines[:8]))
    call = assistant(calls=[("c1", "bash", {"cmd": "ls"})])
    out.append(b"\n".join([
        line(exchange("s", [user("list files")], call)),
        line(exchange("s", [user("list files"), call, tool("c1", "Error: denied")],
                      assistant("It failed."))),
        line({"type": "feedback", "session_id": "s", "value": -1}),
        line({"type": "feedback", "session_id": "s", "value": "thumbs_up"}),
        line({"type": "session_end", "session_id": "s", "outcome": 1.0}),
    ]))
    out.append(line({"session_id": "t", "messages": [user("hi"), assistant("hello"),
                                                     user("no, wrong")], "reward": 0.0}))
    try:  # the other decoders' real inputs, built as their tests build them
        from tests.daemon.test_anthropic import session as anthropic_session
        from tests.daemon.test_otel import agent_run, collector_json, protobuf, rotel_json

        out.append(b"\n".join(line(r) for r in anthropic_session("a", "Error: nope", True)))
        spans = agent_run("conv-1", "permission denied")
        out += [collector_json(spans), rotel_json(spans), protobuf(spans)]
    except ImportError:  # the OTel SDK is a test extra
        pass
    return out


def main() -> None:
    corpus = [a for a in sys.argv[1:] if not a.startswith("-")]
    if corpus and Path(corpus[0]).is_dir() and not any(Path(corpus[0]).iterdir()):
        for n, seed in enumerate(seeds()):
            (Path(corpus[0]) / f"seed-{n:03d}").write_bytes(seed)
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()

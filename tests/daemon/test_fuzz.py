"""Hostile input: fuzzed records never crash the pipeline, rejects land in the DLQ with a reason,
and the join's pending state stays within its bounds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nextstate.daemon import ingest, wire
from nextstate.daemon.config import load_config
from nextstate.daemon.join import SessionJoiner
from nextstate.daemon.pipeline import Pipeline
from nextstate.daemon.wire import BadRecord
from tests.records import assistant, exchange, line, tool, user

FUZZ = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])

ROLES = st.sampled_from(["system", "developer", "user", "assistant", "tool", "function",
                         "wizard", "", "USER"])
TEXT = st.text(max_size=40)
JSON_LEAF = st.none() | st.booleans() | st.integers() | st.floats() | TEXT
JSON_VALUE = st.recursive(JSON_LEAF, lambda inner: st.lists(inner, max_size=4)
                          | st.dictionaries(TEXT, inner, max_size=4), max_leaves=20)


@st.composite
def messages(draw) -> list[dict]:
    out = []
    for _ in range(draw(st.integers(0, 6))):
        message: dict = {"role": draw(ROLES)}
        if draw(st.booleans()):
            message["content"] = draw(TEXT | st.lists(
                st.fixed_dictionaries({"type": TEXT}, optional={"text": TEXT}), max_size=3)
                | JSON_VALUE)
        if draw(st.booleans()):
            message["tool_calls"] = [
                {"id": draw(st.sampled_from(["c1", "c2", "", "zz"])), "type": "function",
                 "function": {"name": draw(TEXT), "arguments": draw(TEXT | JSON_VALUE)}}
                for _ in range(draw(st.integers(0, 2)))]
        if draw(st.booleans()):
            message["tool_call_id"] = draw(st.sampled_from(["c1", "c2", "unknown", ""]))
        out.append(message)
    return out


@st.composite
def records(draw) -> dict:
    """Records of every accepted shape, with wrong types and unknown values mixed in."""
    session = draw(st.sampled_from(["a", "b", "c", "", None]))
    kind = draw(st.sampled_from(["exchange", "transcript", "feedback", "end", "junk"]))
    record: dict = {} if session is None else {"session_id": session}
    if kind == "exchange":
        response = draw(st.sampled_from(["choices", "inline", "empty", "wrong"]))
        reply = {"role": draw(ROLES), "content": draw(TEXT)}
        record["request"] = {"messages": draw(messages())}
        record["response"] = {"choices": [{"message": reply}]} if response == "choices" else (
            reply if response == "inline" else {"choices": []} if response == "empty"
            else draw(JSON_VALUE))
        if draw(st.booleans()):
            record["ts"] = draw(st.floats() | TEXT | st.integers())
    elif kind == "transcript":
        record["messages"] = draw(messages())
        if draw(st.booleans()):
            record["reward"] = draw(st.floats() | TEXT)
    elif kind == "feedback":
        record.update(type="feedback", value=draw(JSON_VALUE))
    elif kind == "end":
        record.update(type="session_end", outcome=draw(JSON_VALUE))
    else:
        record.update(draw(st.dictionaries(TEXT, JSON_VALUE, max_size=5)))
    return record


def _json_or_bytes(value: object) -> bytes:
    try:
        return json.dumps(value, allow_nan=True).encode()
    except (TypeError, ValueError):
        return b"{}"


def fuzz_config(tmp_path: Path, **join):
    return load_config(None, state_dir=str(tmp_path / "state"), join=join or None)


@pytest.fixture
def pipeline(tmp_path):
    pipe = Pipeline(fuzz_config(tmp_path, max_sessions=8, max_pending_bytes=64_000,
                                max_record_bytes=200_000))
    yield pipe
    pipe.close()


def dead_letters(tmp_path: Path) -> list[dict]:
    path = tmp_path / "state" / "dlq.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


@FUZZ
@given(st.binary(max_size=300))
def test_decode_random_bytes_only_raises_bad_record(data):
    """Random bytes either decode to a record or raise BadRecord, never anything else."""
    try:
        wire.classify(wire.decode(data))
    except BadRecord as exc:
        assert exc.reason in {"decode", "schema", "no_session", "unknown_type", "unknown_shape"}


@FUZZ
@given(st.lists(records(), max_size=30), st.data())
def test_fuzzed_streams_never_crash_and_every_reject_is_dead_lettered(pipeline, tmp_path,
                                                                      stream, data):
    """Random records (wrong types, unknown roles, unknown call ids, duplicates, out of order,
    truncations) are processed or dead-lettered with a reason; the process call never raises."""
    before = len(dead_letters(tmp_path))
    rejected_before = pipeline.stats.total("dead_letters")
    offset0 = pipeline.seen.get(("fuzz", 0), 0)
    values = [_json_or_bytes(r) for r in stream]
    # Duplicated, reordered and truncated copies of the same records.
    values += data.draw(st.lists(st.sampled_from(values), max_size=5)) if values else []
    values += [v[:data.draw(st.integers(0, len(v)))] for v in values[:3]]
    for n, value in enumerate(values):
        pipeline.process(value, b"k" if n % 2 else None, "fuzz", 0, offset0 + n)
        assert pipeline.joiner.pending_bytes <= pipeline.joiner.max_pending_bytes
        assert len(pipeline.joiner.sessions) <= pipeline.joiner.max_sessions
    pipeline.tick()
    pipeline.checkpoint()
    letters = dead_letters(tmp_path)[before:]
    assert len(letters) == pipeline.stats.total("dead_letters") - rejected_before
    assert all(entry["reason"] and entry["error"] for entry in letters)


def test_huge_strings_and_deep_nesting_are_dead_lettered(pipeline, tmp_path):
    """A > 10 MB record is rejected as too_large before decoding; 50k-deep nesting is a decode
    error; both reach the DLQ and the next good record still works."""
    huge = line(exchange("h", [user("x" * 11_000_000)], assistant("ok")))
    deep = b'{"session_id": "d", "metadata": {"a": ' + b"[" * 50_000 + b"]" * 50_000 + b"}}"
    pipeline.process(huge, None, "t", 0, 0)
    pipeline.process(deep, None, "t", 0, 1)
    pipeline.process(line(exchange("g", [user("hi")], assistant("hello"))), None, "t", 0, 2)
    pipeline.checkpoint()
    reasons = [entry["reason"] for entry in dead_letters(tmp_path)]
    assert reasons[0] == "too_large" and reasons[1] in {"decode", "schema"}
    assert len(reasons) == 2 and pipeline.stats.total("records") == 1


def test_huge_record_under_the_limit_is_processed(tmp_path):
    """A 12 MB tool result is accepted when join.max_record_bytes allows it."""
    pipe = Pipeline(fuzz_config(tmp_path, max_record_bytes=64 << 20))
    call = assistant(calls=[("c1", "bash", {"cmd": "cat big"})])
    history = [user("cat it")]
    pipe.process(line(exchange("s", history, call)), None, "t", 0, 0)
    history += [call, tool("c1", "y" * 12_000_000)]
    pipe.process(line(exchange("s", history, assistant("done"))), None, "t", 0, 1)
    pipe.close()
    assert pipe.stats.total("interactions") == 1 and pipe.stats.total("dead_letters") == 0


def test_sessions_that_never_end_are_bounded_and_evictions_counted(tmp_path):
    """10k sessions that never end keep at most max_sessions pending; the evictions show up in
    the join_evictions counter."""
    pipe = Pipeline(fuzz_config(tmp_path, max_sessions=100))
    for n in range(10_000):
        pipe.process(line(exchange(f"s{n}", [user("hi")], assistant("hello"))), None, "t", 0, n)
    assert len(pipe.joiner.sessions) == 100
    assert pipe.stats.total("join_evictions", reason="max_sessions") == 9_900
    pipe.close()


def test_pending_bytes_bound_evicts_the_oldest_sessions():
    """Over max_pending_bytes the least recently seen sessions go first, each counted."""
    joiner = SessionJoiner(max_pending_bytes=10_000)
    for n in range(20):
        record = wire.decode(line(exchange(f"s{n}", [user("hi")], assistant("hello"))))
        joiner.feed(record, "openai_exchange", float(n), ("t", 0, n), size=1_000)
    assert joiner.pending_bytes == 10_000
    assert list(joiner.sessions) == [f"s{n}" for n in range(10, 20)]
    assert joiner.evictions == {"max_pending_bytes": 10}
    assert joiner.low_watermarks() == {("t", 0): 10}  # evicted joins no longer hold offsets


def test_a_delta_clients_held_context_counts_toward_max_pending_bytes():
    """A client that sends only the new messages: its session's context holds every earlier
    record's messages, which its latest record does not. They were not counted: one endless
    session grew its context without bound (40k messages, 30 MB, counted as 2.3 KB)."""
    joiner = SessionJoiner(max_pending_bytes=64_000)
    values, longest = [], 0
    for n in range(2_000):
        said = [user(f"step {n} " + "x" * 100)] if n == 0 else [tool(f"c{n - 1}", "y" * 100)]
        values.append(line(exchange("flood", said, assistant(calls=[(f"c{n}", "f", {})]))))
    for n, value in enumerate(values):
        for record, shape in ingest.decode_records(value, None, joiner):
            joiner.feed(record, shape, 0.0, ("t", 0, n), len(value))
        assert joiner.pending_bytes <= joiner.max_pending_bytes
        session = joiner.sessions.get("flood")
        if session is not None:
            longest = max(longest, len(session.pending.context))
            # at least the bytes of the records its context was read from
            assert session.size >= sum(map(len, values[n + 1 - len(session.pending.context)
                                                  // 2:n + 1]))
    assert joiner.evictions["max_pending_bytes"] >= 2_000 * 150 // 64_000
    assert longest < 2 * 64_000 // 150  # messages held: within what the bound counts


def test_feedback_flood_on_one_action_is_bounded():
    """A million-feedback flood keeps only the newest max_feedback_per_action on the action."""
    joiner = SessionJoiner(max_feedback_per_action=4)
    joiner.feed(wire.decode(line(exchange("s", [user("hi")], assistant("hello")))),
                "openai_exchange", 0.0)
    for n in range(50):
        joiner.feed(wire.decode(json.dumps({"type": "feedback", "session_id": "s",
                                            "value": n % 2}).encode()), "feedback", 1.0)
    (interaction,) = joiner.close_all()
    assert [f.value for f in interaction.feedback] == [0.0, 1.0, 0.0, 1.0]
    assert joiner.evictions == {"feedback": 46}


def _otlp(span: dict) -> bytes:
    return json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [span]}]}]}).encode()


TOOL_SPAN = {"traceId": "ab" * 16, "spanId": "cd" * 8, "startTimeUnixNano": "1760000000000000000",
             "attributes": [{"key": "gen_ai.operation.name",
                             "value": {"stringValue": "execute_tool"}}]}


@pytest.mark.parametrize(("value", "reason"), [
    # Invalid UTF-8 in a string: msgspec raises UnicodeDecodeError, not DecodeError; in an
    # OpenAI exchange's messages it surfaced only in the join's lazy decode (found by atheris).
    (b'{"session_id": "s", "request": {"messages": [{"role": "user", "content": "\xff"}]},'
     b' "response": {"choices": [{"message": {"role": "assistant", "content": "ok"}}]}}',
     "decode"),
    (b'{"session_id": "\xff", "type": "feedback", "value": 1}', "decode"),
    (b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"name": "\xff"}]}]}]}', "decode"),
    # OTLP int64 fields as strings that are no numbers (found by atheris).
    (_otlp({**TOOL_SPAN, "startTimeUnixNano": "17x"}), "schema"),
    (_otlp({**TOOL_SPAN, "attributes": [*TOOL_SPAN["attributes"],
                                        {"key": "n", "value": {"intValue": "x8"}}]}), "schema"),
], ids=["utf8_in_lazy_messages", "utf8_in_record", "utf8_in_otlp", "otlp_start_time",
        "otlp_int_attribute"])
def test_fuzz_findings_are_dead_lettered(pipeline, tmp_path, value, reason):
    """Inputs the atheris harness crashed the decoders with are dead-lettered with a reason,
    and the next good record is still processed."""
    pipeline.process(value, None, "t", 0, 0)
    pipeline.process(line(exchange("g", [user("hi")], assistant("hello"))), None, "t", 0, 1)
    pipeline.checkpoint()
    assert [entry["reason"] for entry in dead_letters(tmp_path)] == [reason]
    assert pipeline.stats.total("records") == 1


HARNESS = Path(__file__).resolve().parents[1] / "fuzz" / "fuzz_decoders.py"


def test_atheris_harness_runs_clean(tmp_path):
    """The libFuzzer harness (tests/fuzz/fuzz_decoders.py: decoders and join, invariants
    asserted) runs 20k coverage-guided inputs from its seed corpus without a crash. In a
    subprocess: atheris takes over the process."""
    pytest.importorskip("atheris")
    corpus, artifacts = tmp_path / "corpus", tmp_path / "artifacts"
    corpus.mkdir()
    artifacts.mkdir()
    run = subprocess.run([sys.executable, str(HARNESS), "-runs=20000", "-seed=1", "-timeout=10",
                          "-max_len=16384", f"-artifact_prefix={artifacts}/", str(corpus)],
                         capture_output=True, text=True, timeout=240, cwd=tmp_path)
    report = run.stderr[-4000:]
    assert run.returncode == 0, report
    assert "Done 20000 runs" in run.stderr, report
    assert len(list(corpus.iterdir())) > 20  # the seeds were written (and grew)
    assert list(artifacts.iterdir()) == []


def test_unawaited_tool_results_make_no_sessions():
    """OTel tool results that no pending action waits for (content capture off) each close an
    interaction of their own and hold no session, so a flood of them cannot grow the join past
    max_sessions (found by atheris)."""
    joiner = SessionJoiner(max_sessions=4)
    for n in range(100):
        result = wire.WireRecord(session_id=f"trace{n}", messages=[wire.WireMessage(
            role="tool", content="ok", tool_call_id=f"c{n}", name="bash")])
        (interaction,) = joiner.feed(result, "otel_tool", float(n))
        assert interaction.next_state[0].content == "ok"
        assert len(joiner.sessions) == 0


@pytest.mark.parametrize("shape", ["openai_exchange", "transcript", "otel_tool"])
def test_a_record_with_a_bad_time_leaves_the_join_as_it_was(shape):
    """A record rejected for its time (``ts`` not a time) made its session first: with the
    wall clock (Kafka) a stream of them, one session each, grew the join past max_sessions
    (found by atheris), and an existing session was moved to the front as if it had been
    heard from. Now nothing changes: no session, the held ones in their order, their pending
    actions kept."""
    joiner = SessionJoiner(max_sessions=4)
    call = assistant(calls=[("c1", "bash", {"cmd": "ls"})])
    held = [exchange(f"held{n}", [user("list files")], call) for n in range(2)]
    for n, record in enumerate(held):
        joiner.feed(wire.decode(line(record)), "openai_exchange", float(n))
    def state() -> list:
        return [(sid, s.pending and s.pending.interaction_id, s.last_seen)
                for sid, s in joiner.sessions.items()]

    before = state()

    def bad(session_id: str) -> wire.WireRecord:
        if shape == "openai_exchange":
            record = exchange(session_id, [user("list files"), call, tool("c1", "a b")],
                              assistant("Two files."))
        elif shape == "transcript":
            record = {"session_id": session_id, "messages": [user("hi"), assistant("Hello.")]}
        else:
            record = {"session_id": session_id, "messages": [tool("c1", "a b", "bash")]}
        return wire.decode(line({**record, "ts": "not a time"}))

    for n in range(100):
        with pytest.raises(BadRecord, match="ts is not ISO-8601"):
            joiner.feed(bad(f"new{n}"), shape, 10.0 + n)
    with pytest.raises(BadRecord, match="ts is not ISO-8601"):
        joiner.feed(bad("held0"), shape, 200.0)
    assert state() == before

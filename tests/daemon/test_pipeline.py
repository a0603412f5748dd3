"""Tests for the pipeline and the file source: records in, durable tuples and offsets out."""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
import structlog.testing
from hypothesis import example, given, settings
from hypothesis import strategies as st

from nextstate.buffers import BufferSet, BufferSpec
from nextstate.daemon.cli import main as cli_main
from nextstate.daemon.config import DaemonConfig, load_config
from nextstate.daemon.pipeline import Pipeline
from nextstate.daemon.service import Health, Progress
from nextstate.daemon.sources import run_file
from tests.records import assistant, conversation_exchanges, exchange, line, tool, user


def weather_session(sid: str, result: str) -> list[dict]:
    """A session whose tool call gets ``result``, then a user reply."""
    call = assistant(calls=[(f"{sid}-c", "get_weather", {"city": "Paris"})])
    records = conversation_exchanges(sid, [
        (call, [tool(f"{sid}-c", result)]),
        (assistant("Done."), [user("thanks!")]),
        (assistant("Anything else?"), []),
    ])
    for record in records:
        record["request"]["messages"].insert(1, user("weather in Paris?"))
    return records


def delta_session(sid: str, result: str) -> list[dict]:
    """:func:`weather_session` from a client that sends only the new messages: each request
    after the first holds what followed the previous response."""
    records = weather_session(sid, result)
    for before, record in zip(records[::-1][1:], records[::-1], strict=False):
        messages = record["request"]["messages"]
        record["request"]["messages"] = messages[len(before["request"]["messages"]) + 1:]
    return records


def config_for(tmp_path: Path, **overrides) -> DaemonConfig:
    return load_config(None, **{"state_dir": str(tmp_path / "state"), "extractors": ["tool"],
                                **overrides})


def stored(state_dir: Path) -> list:
    specs = [msgspec.convert(s, BufferSpec) for s in DaemonConfig().buffers]
    buffers = BufferSet.open(state_dir / "buffers", specs)
    try:
        return [t for b in buffers.buffers.values() for t in b.iter_tuples()]
    finally:
        buffers.close()


def run(config: DaemonConfig, path: Path) -> Pipeline:
    pipeline = Pipeline(config)
    run_file(pipeline, str(path), threading.Event(), Health(), Progress(pipeline.stats, False))
    pipeline.close()
    return pipeline


def write_lines(path: Path, records: list[dict], extra: list[bytes] = ()) -> None:
    path.write_bytes(b"\n".join([line(r) for r in records] + list(extra)) + b"\n")


def test_file_run_produces_tool_tuples_and_dead_letters(tmp_path):
    """Tool results become tuples; a poison record goes to the DLQ and later records still count."""
    good = weather_session("ok", '{"temp_c": 18}')
    bad = weather_session("bad", "Error: missing required argument 'day'")
    source = tmp_path / "in.jsonl"
    write_lines(source, good[:2], [b'{"session_id": "x", "request": '])
    with source.open("ab") as fh:
        fh.write(b"\n".join(line(r) for r in good[2:] + bad) + b"\n")
    pipeline = run(config_for(tmp_path), source)
    tuples = stored(tmp_path / "state")
    rewards = {(t.session_id, t.kind): t.reward for t in tuples}
    assert rewards[("ok", "evaluative")] > 0
    assert rewards[("bad", "evaluative")] < 0
    assert "day" in next(t.hint for t in tuples if t.kind == "directive")
    (dead,) = [json.loads(x) for x in (tmp_path / "state" / "dlq.jsonl").read_text().splitlines()]
    assert dead["reason"] == "decode" and dead["offset"] == 2
    assert dead["value"].startswith('{"session_id": "x"')
    assert pipeline.stats.total("interactions") == 6  # 3 actions x 2 sessions, all closed
    assert pipeline.stats.total("dead_letters") == 1


def test_rerun_of_a_finished_file_processes_nothing_twice(tmp_path):
    """A second run over the same file and state dir adds no record, interaction or tuple."""
    source = tmp_path / "in.jsonl"
    write_lines(source, weather_session("a", "Error: HTTP 500"))
    first = run(config_for(tmp_path), source)
    after_first = stored(tmp_path / "state")
    second = run(config_for(tmp_path), source)
    assert second.stats.total("records") == first.stats.total("records") == 3
    assert second.stats.total("interactions") == 3
    assert after_first and stored(tmp_path / "state") == after_first


def test_a_file_saved_with_a_byte_order_mark_and_crlf_reads_as_without(tmp_path):
    """A JSON-lines file saved as "UTF-8 with BOM" with Windows line ends (what Windows
    PowerShell's ``Out-File -Encoding utf8`` writes): its first record was a ``decode`` dead
    letter ("invalid character (byte 0)"); now every line reads as in the plain file."""
    records = weather_session("a", "Error: HTTP 500") + weather_session("b", '{"ok": 1}')
    plain, windows = tmp_path / "plain.jsonl", tmp_path / "windows.jsonl"
    write_lines(plain, records)
    windows.write_bytes(b"\xef\xbb\xbf" + plain.read_bytes().replace(b"\n", b"\r\n"))
    first = run(config_for(tmp_path / "p"), plain)
    second = run(config_for(tmp_path / "w"), windows)
    assert second.stats.total("dead_letters") == 0
    assert second.stats.total("interactions") == first.stats.total("interactions") == 6
    assert sorted(t.key for t in stored(tmp_path / "w" / "state")) == \
        sorted(t.key for t in stored(tmp_path / "p" / "state"))


def test_resume_after_partial_run_replays_pending_joins(tmp_path):
    """A run cut mid-file resumes from the oldest pending record without re-emitting tuples."""
    records = weather_session("a", "Error: HTTP 500")
    source = tmp_path / "in.jsonl"
    write_lines(source, records[:1])
    # First run: only the tool-call exchange; stop before the end so nothing is closed.
    pipeline = Pipeline(config_for(tmp_path))
    stop = threading.Event()
    for offset, raw in enumerate(source.read_bytes().splitlines()):
        pipeline.process(raw, None, f"file:{source.resolve()}", 0, offset)
    committable = pipeline.checkpoint()
    assert committable == {(f"file:{source.resolve()}", 0): 0}  # the pending action's record
    from nextstate.daemon.sources import _save_file_offsets

    _save_file_offsets(pipeline, committable, f"file:{source.resolve()}", None)
    pipeline.close()
    assert stored(tmp_path / "state") == []
    # The agent goes on; the file grows; a new run resumes.
    write_lines(source, records)
    resumed = Pipeline(config_for(tmp_path))
    run_file(resumed, str(source), stop, Health(), Progress(resumed.stats, False))
    resumed.close()
    (scored,) = stored(tmp_path / "state")
    assert scored.interaction_id == "a#2" and scored.reward < 0
    assert resumed.stats.total("records") == 3  # the first record was replayed, not recounted


def test_records_read_again_from_before_the_checkpoint_are_not_scored_twice(tmp_path):
    """A restart that reads from further back than the last checkpoint (its commit did not
    happen, a group offset reset): the re-read records rebuilt the last action of a session
    already closed as idle, and it was closed, scored and counted again (and judged again,
    with a judge). An action still pending at the checkpoint is scored once, after it."""
    clock = [1000.0]
    config = config_for(tmp_path, source="kafka", event_time="wall")
    values = [line(r) for sid in ("a", "b") for r in weather_session(sid, "Error: HTTP 500")]

    def feed(pipeline: Pipeline, offsets: range) -> None:
        for offset in offsets:
            pipeline.process(values[offset], None, "t", 0, offset)

    first = Pipeline(config, clock=lambda: clock[0])
    feed(first, range(3))  # session a, its last action pending
    clock[0] += 400.0
    first.tick()  # ... closed as idle, scored
    feed(first, range(3, 6))  # session b, its last action pending at the checkpoint
    assert first.checkpoint() == {("t", 0): 5}  # (a commit of offset 5 that never lands)
    first.close()
    assert first.stats.total("interactions") == 2 + 3

    again = Pipeline(config, clock=lambda: clock[0])
    feed(again, range(6))  # from the last offset committed: 0
    clock[0] += 400.0
    again.tick()
    again.close()
    assert again.stats.total("records") == 6
    assert again.stats.total("interactions") == 6  # b's last action once; a's not again (7)
    assert {t.interaction_id for t in stored(tmp_path / "state")} == {"a#2", "b#2"}
    assert not again._closed_before  # nothing left behind


def test_a_tool_span_after_a_fast_re_read_meets_the_join_as_in_a_run_never_cut(tmp_path):
    """An action closed as idle before the checkpoint, read again fast after a restart (no
    time for it to go idle again): an OTel execute_tool span for its call that comes next
    closed an interaction of its own in the run not cut (no action was pending), but was kept
    with the re-read action and lost unscored with it."""
    clock = [1000.0]
    config = config_for(tmp_path, source="kafka", event_time="wall")
    values = [line(r) for sid in ("a", "b") for r in weather_session(sid, "Error: HTTP 500")]
    values = [values[0], *values[3:]]  # a: its tool call only (pending), then session b
    span = json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [{
        "traceId": "a" * 32, "spanId": "1" * 16, "name": "execute_tool get_weather",
        "startTimeUnixNano": "1760000000000000000", "attributes": [
            {"key": "gen_ai.operation.name", "value": {"stringValue": "execute_tool"}},
            {"key": "gen_ai.conversation.id", "value": {"stringValue": "a"}},
            {"key": "gen_ai.tool.name", "value": {"stringValue": "get_weather"}},
            {"key": "gen_ai.tool.call.id", "value": {"stringValue": "a-c"}},
            {"key": "gen_ai.tool.call.result", "value": {"stringValue": "Error: HTTP 500"}},
        ]}]}]}]}).encode()

    first = Pipeline(config, clock=lambda: clock[0])
    first.process(values[0], None, "t", 0, 0)
    clock[0] += 400.0
    first.tick()  # a's call closes as idle (no result yet), a is forgotten
    for offset in range(1, 4):
        first.process(values[offset], None, "t", 0, offset)  # b, its last action pending
    assert first.checkpoint() == {("t", 0): 3}  # (a commit that never lands)
    first.close(durable=False)

    again = Pipeline(config, clock=lambda: clock[0])
    for offset in range(4):  # read again from 0, fast: a's call is pending again
        again.process(values[offset], None, "t", 0, offset)
    again.process(span, None, "t", 0, 4)
    again.finish()
    again.close()
    scored = {t.interaction_id: t for t in stored(tmp_path / "state")}
    assert "a#tool:a-c" in scored and scored["a#tool:a-c"].reward < 0
    assert not again._closed_before


def test_sessions_go_idle_after_a_restart_whose_last_record_read_again_is_gone(tmp_path):
    """In event time a partition read again after a restart holds its sessions open until its
    last record processed before the checkpoint comes again; deleted since (retention,
    compaction), the first new record ends the hold, or no session went idle again."""
    t0 = 1.7e9
    config = config_for(tmp_path, source="kafka", event_time="event")

    def exchange_at(sid: str, ts: float) -> bytes:
        return line({**weather_session(sid, "Error: HTTP 500")[0], "ts": ts})

    def wall() -> float:
        return t0 + 1100  # the new record is live traffic: its time moves the clock at once

    first = Pipeline(config, clock=wall)
    for offset, value in enumerate([exchange_at("a", t0), exchange_at("b", t0 + 1),
                                    exchange_at("b", t0 + 2)]):
        first.process(value, None, "t", 0, offset)
    assert first.checkpoint() == {("t", 0): 0}  # a's action pending
    first.close(durable=False)

    again = Pipeline(config, clock=wall)
    again.process(exchange_at("a", t0), None, "t", 0, 0)  # offsets 1 and 2 are gone
    again.close_idle()
    assert "a" in again.joiner.sessions  # held: the partition is being read again
    again.process(exchange_at("c", t0 + 1000), None, "t", 0, 3)
    again.tick()  # closes the idle sessions and scores them
    assert "a" not in again.joiner.sessions and again.stats.total("interactions") == 1
    again.close()


def _restart_events(kinds: list[str], waits: list[float], feedback_after: list[bool],
                    duplicate_after: list[bool] = (False,)) -> list[bytes | float]:
    """Sessions one after another (call logs ending well or badly, maybe from a client that
    sends only the new messages ("delta"; "delta_back": back after it went idle;
    "delta_full": its last request the whole history), or one transcript, maybe
    with a reward), each followed by a tick after a wait (``+400 s``: its last action closes
    as idle), then maybe the user's late feedback on the session before it (on its pending
    action, or on one closed as idle: a dead letter, as no action is known for it); before
    the wait, maybe that session's last record again (an at-least-once producer)."""
    events: list[bytes | float] = []
    last: list[bytes] = []
    for n, kind in enumerate(kinds):
        sid = f"s{n}"
        if kind in ("transcript", "rewarded"):  # (a reward closes its last action)
            events.append(_transcript(sid, 1.0 if kind == "rewarded" else None))
        else:
            result = '{"temp_c": 18}' if kind == "ok" else "Error: HTTP 500"
            session = weather_session if kind in ("ok", "error") else delta_session
            records = session(sid, result)
            if kind == "delta_full":  # then the whole history again
                records[-1] = weather_session(sid, result)[-1]
            events += [line(r) for r in records]
            if kind == "delta_back":  # idle, forgotten, then back with only the new message
                events += [400.0, line(exchange(sid, [user("back again")],
                                                assistant("welcome back")))]
        last.append(events[-1])  # type: ignore[arg-type]
        # The session before this one, still open, sent its last record again (a join that
        # closed it already cannot know an old record from a new one; nor can one that read
        # both copies again fast: the README's known limit, so no idle wait between them)
        if n and duplicate_after[n % len(duplicate_after)] and waits[(n - 1) % len(waits)] < 300 \
                and kind != "delta_back":
            events.append(last[n - 1])
        events.append(float(waits[n % len(waits)]))
        if n and feedback_after[n % len(feedback_after)]:  # on the session before this one
            events.append(line({"type": "feedback", "session_id": f"s{n - 1}", "value": 0}))
    return events


def _play(pipeline: Pipeline, events: list[bytes | float], clock: list[float],
          first_offset: int = 0, stop_offset: int | None = None, fast_until: int = 0
          ) -> None:
    """Feed the records from ``first_offset`` on (each followed by its tick) until
    ``stop_offset``; before ``fast_until`` (records read again after a restart, in less
    time than they first took) the ticks do not move the clock."""
    offset = 0
    for event in events:
        if isinstance(event, float):
            if offset > first_offset:
                clock[0] += event if offset >= fast_until else 0.0
                pipeline.tick()
            continue
        if offset == stop_offset:
            return
        if offset >= first_offset:
            clock[0] += 0.5
            pipeline.process(event, None, "t", 0, offset)
        offset += 1


@settings(max_examples=40, deadline=None)
# Late feedback on a session closed as idle before the checkpoint and read again fast (the
# action pending again): it was kept with that action and lost, not a dead letter.
@example(kinds=["ok", "ok", "ok"], waits=[1.0, 400.0], feedback_after=[True], cut=7,
         back=0, fast=True, duplicate_after=[False])
# A session whose last action a transcript's reward closed did not hold the low watermark:
# restarted from the commit, feedback for it was unmatched; forgotten as idle before the
# checkpoint and read again fast, it was found again.
@example(kinds=["rewarded", "ok"], waits=[1.0], feedback_after=[True], cut=1, back=1,
         fast=False, duplicate_after=[False])
@example(kinds=["rewarded", "ok"], waits=[400.0, 1.0], feedback_after=[True], cut=4, back=0,
         fast=True, duplicate_after=[False])
# A delta client's pending action was rebuilt from its own record alone: a shorter context
# and an earlier action's id (its interaction counted again, its tuples dropped as
# duplicates).
@example(kinds=["delta", "ok"], waits=[1.0], feedback_after=[False], cut=3, back=8,
         fast=False, duplicate_after=[True])
# A delta client back after it went idle, its record sent twice: read again fast after a
# restart, the session had not gone idle, and the second copy was taken for a new message.
@example(kinds=["delta_back", "ok"], waits=[1.0], feedback_after=[False], cut=4, back=0,
         fast=True, duplicate_after=[True])
@given(kinds=st.lists(st.sampled_from(["ok", "error", "delta", "delta_back", "delta_full",
                                      "transcript", "rewarded"]),
                     min_size=1, max_size=5),
       # (no 200 s wait: after a fast re-read the wall clock times idle sessions anew)
       waits=st.lists(st.sampled_from([1.0, 400.0]), min_size=1, max_size=5),
       feedback_after=st.lists(st.booleans(), min_size=1, max_size=5),
       duplicate_after=st.lists(st.booleans(), min_size=1, max_size=5),
       cut=st.integers(0, 30), back=st.integers(0, 30), fast=st.booleans())
def test_a_restart_from_any_earlier_offset_scores_each_action_once(kinds, waits,
                                                                   feedback_after,
                                                                   duplicate_after, cut, back,
                                                                   fast):
    """Cut a run anywhere (checkpointed), then read again from any offset at or before the
    one it would commit: every action is scored and counted once, as in a run never cut, and
    feedback that comes after the restart meets the join as it would have (it was lost when
    it came for an action closed before the checkpoint and read again)."""
    import tempfile

    events = _restart_events(kinds, waits, feedback_after, duplicate_after)
    records = sum(1 for e in events if isinstance(e, bytes))
    cut %= records + 1
    with tempfile.TemporaryDirectory() as whole_dir, tempfile.TemporaryDirectory() as cut_dir:
        clock = [1000.0]
        config = config_for(Path(whole_dir), source="kafka", event_time="wall")
        whole = Pipeline(config, clock=lambda: clock[0])
        _play(whole, events, clock)
        whole.finish()
        whole.close()

        clock = [1000.0]
        config = config_for(Path(cut_dir), source="kafka", event_time="wall")
        first = Pipeline(config, clock=lambda: clock[0])
        _play(first, events, clock, stop_offset=cut)
        commit = first.checkpoint().get(("t", 0), 0)
        first.close(durable=False)  # a crash after the checkpoint
        again = Pipeline(config, clock=lambda: clock[0])
        records_read = [e for e in events if isinstance(e, bytes)]
        start = _before_duplicates([(r, 0, n) for n, r in enumerate(records_read)],
                                   {0: back % (commit + 1)})[0]
        _play(again, events, clock, first_offset=start, fast_until=cut if fast else 0)
        again.finish()
        again.close()
        for counter in ("records", "interactions", "tuples", "dead_letters", "join_duplicates",
                        "join_evictions"):
            assert again.stats.total(counter) == whole.stats.total(counter), counter
        assert sorted(t.key for t in stored(Path(cut_dir) / "state")) == \
            sorted(t.key for t in stored(Path(whole_dir) / "state"))


def _before_duplicates(records: list[tuple[bytes, int, int]], first: dict[int, int]
                       ) -> dict[int, int]:
    """Where each partition is read again from, moved back to the first copy of a record
    sent twice whose second copy lies after it. (A known limit: with only the second copy
    read again, the join cannot tell it from a new record; its action, closed before, is
    made and counted again, though its tuples, the same keys, are not stored twice.)"""
    first = dict(first)
    moved = True
    while moved:
        moved = False
        seen: dict[tuple[int, bytes], int] = {}
        for value, partition, offset in records:
            original = seen.setdefault((partition, value), offset)
            if original < first.get(partition, 0) <= offset:
                first[partition] = original
                moved = True
    return first


def _stamped(events: list[bytes | float], partitions: int
             ) -> list[tuple[bytes, int, int] | float]:
    """``_restart_events`` in event time: each record its ``ts`` (the ticks' waits as gaps
    between records), its partition (by session) and its offset there."""
    out: list[tuple[bytes, int, int] | float] = []
    offsets, ts = [0] * partitions, 1.7e9
    sent: dict[bytes, float] = {}  # a record sent again keeps its time
    for event in events:
        if isinstance(event, float):
            ts += event
            out.append(event)
            continue
        record = json.loads(event)
        ts += 0.5
        partition = int(record["session_id"][1:]) % partitions
        out.append((line({**record, "ts": sent.setdefault(event, ts)}), partition,
                    offsets[partition]))
        offsets[partition] += 1
    return out


def _play_stamped(pipeline: Pipeline, events: list[tuple[bytes, int, int] | float],
                  first: dict[int, int], stop: int | None = None) -> None:
    """Feed each partition's records from its ``first`` offset on, in the order written
    (a tick after each session), until the ``stop``-th record."""
    read = started = 0
    for event in events:
        if isinstance(event, float):
            if started:
                pipeline.tick()
            continue
        if read == stop:
            return
        value, partition, offset = event
        if offset >= first.get(partition, 0):
            started = 1
            pipeline.process(value, None, "t", partition, offset)
        read += 1


@settings(max_examples=40, deadline=None)
# A session kept open by late feedback was closed as idle while its records were read again
# (the restored clock ran ahead of them), scored without the feedback; a time leap waiting
# for the next record to bear it out was forgotten by the checkpoint.
@example(kinds=["ok", "transcript", "ok"], waits=[400.0], feedback_after=[True], cut=5,
         back=[0, 0], partitions=1, lateness=None, duplicate_after=[False])
@example(kinds=["ok", "transcript", "ok"], waits=[400.0], feedback_after=[True], cut=8,
         back=[0, 0], partitions=1, lateness=None, duplicate_after=[False])
@example(kinds=["ok", "ok", "ok"], waits=[400.0], feedback_after=[True], cut=7,
         back=[0, 0], partitions=1, lateness=None, duplicate_after=[False])
@example(kinds=["ok", "ok", "ok", "transcript"], waits=[400.0], feedback_after=[True],
         cut=11, back=[0, 0], partitions=1, lateness=None, duplicate_after=[False])
# A record sent twice moved its session to the back of the idle order (sessions after it
# closed first, above the low watermark: scored again after a restart), or, its session
# closed early while read again, made it anew.
@example(kinds=["ok", "ok", "ok"], waits=[200.0], feedback_after=[False], cut=11,
         back=[0, 0], partitions=1, lateness=0.0, duplicate_after=[True])
# A growing transcript sent again moves its pending action up to its latest record: read
# again from below that, the action was taken for one closed before the checkpoint.
@example(kinds=["transcript", "ok", "ok"], waits=[1.0], feedback_after=[True], cut=28,
         back=[0, 0], partitions=1, lateness=None, duplicate_after=[False, True])
# A session whose last action a transcript's reward closed did not hold the low watermark.
@example(kinds=["rewarded", "ok"], waits=[1.0], feedback_after=[True], cut=1, back=[1, 0],
         partitions=1, lateness=None, duplicate_after=[False])
# Read again from a delta client's first record, a session seen after it and closed as idle
# before the checkpoint was taken for one still pending then (scored twice).
@example(kinds=["ok", "transcript", "transcript", "delta", "transcript", "transcript"],
         waits=[400.0, 1.0], feedback_after=[False, False, False, True, True],
         duplicate_after=[True], cut=14, back=[0, 0], partitions=1, lateness=None)
@given(kinds=st.lists(st.sampled_from(["ok", "error", "delta", "delta_back", "delta_full",
                                      "transcript", "rewarded"]),
                     min_size=1, max_size=6),
       waits=st.lists(st.sampled_from([1.0, 200.0, 400.0]), min_size=1, max_size=5),
       feedback_after=st.lists(st.booleans(), min_size=1, max_size=5),
       duplicate_after=st.lists(st.booleans(), min_size=1, max_size=5),
       cut=st.integers(0, 30), back=st.lists(st.integers(0, 30), min_size=2, max_size=2),
       partitions=st.sampled_from([1, 2]), lateness=st.sampled_from([None, 0.0, 10.0]))
def test_a_restart_in_event_time_from_any_earlier_offset_scores_each_action_once(
        kinds, waits, feedback_after, duplicate_after, cut, back, partitions, lateness):
    """As above, with the records' own times for a clock (replaying logs) and one or two
    partitions: the restored clock runs ahead of the records read again."""
    import tempfile

    events = _stamped(_restart_events(kinds, waits, feedback_after, duplicate_after),
                      partitions)
    cut %= sum(1 for e in events if not isinstance(e, float)) + 1
    fixed = {} if lateness is None else {"event_time_lateness_s": lateness}

    def wall() -> float:
        return 2e9  # the logs are older than the wall clock

    with tempfile.TemporaryDirectory() as whole_dir, tempfile.TemporaryDirectory() as cut_dir:
        whole = Pipeline(config_for(Path(whole_dir), source="kafka", event_time="event",
                                    **fixed), clock=wall)
        _play_stamped(whole, events, {})
        whole.finish()
        whole.close()

        config = config_for(Path(cut_dir), source="kafka", event_time="event", **fixed)
        first = Pipeline(config, clock=wall)
        _play_stamped(first, events, {}, stop=cut)
        commit = first.checkpoint()
        first.close(durable=False)  # a crash after the checkpoint
        again = Pipeline(config, clock=wall)
        _play_stamped(again, events, _before_duplicates(
            [e for e in events if not isinstance(e, float)],
            {p: back[p] % (commit.get(("t", p), 0) + 1) for p in range(partitions)}))
        again.finish()
        again.close()
        for counter in ("records", "interactions", "tuples", "dead_letters", "join_duplicates",
                        "join_evictions"):
            assert again.stats.total(counter) == whole.stats.total(counter), counter
        assert sorted((t.key, t.reward) for t in stored(Path(cut_dir) / "state")) == \
            sorted((t.key, t.reward) for t in stored(Path(whole_dir) / "state"))


def test_a_re_read_from_further_back_in_event_time_counts_no_eviction_again(tmp_path):
    """Read again from further back than the checkpoint (``file_offsets.json`` lost), in
    event time: the sessions read again wait to go idle until the partition is read again,
    past ``join.max_sessions``; the oldest, closed before the checkpoint, are evicted again
    (not emitted) but not counted again, and the action pending then is scored once."""
    events = _stamped(_restart_events(["ok"] * 6, [400.0], [False]), 1)
    config = config_for(tmp_path, source="kafka", event_time="event",
                        **{"join.max_sessions": 2})

    def wall() -> float:
        return 2e9

    first = Pipeline(config, clock=wall)
    _play_stamped(first, events, {})
    assert first.checkpoint() == {("t", 0): 17}  # the last session's last action pending
    first.close(durable=False)
    again = Pipeline(config, clock=wall)
    _play_stamped(again, events, {})  # from offset 0
    assert again.stats.total("join_evictions") == 0
    again.finish()
    again.close()
    assert again.stats.total("interactions") == 6 * 3


def _transcript(sid: str, reward: float | None = None) -> bytes:
    """A whole conversation: two actions closed at once, the last one pending (or closed by
    the ``reward``, which ends the session's join)."""
    call = assistant(calls=[(f"{sid}-c", "get_weather", {"city": "Oslo"})])
    record = {"session_id": sid, "messages": [
        user("weather in Oslo?"), call, tool(f"{sid}-c", "Error: HTTP 503"),
        assistant("It failed."), user("try again"), assistant("Trying again.")]}
    return line(record if reward is None else {**record, "reward": reward})


def test_an_action_read_again_evicted_and_sent_again_is_scored_when_it_closes(tmp_path):
    """Read again from before the checkpoint, an action closed before it is pending again
    and evicted again (``join.max_sessions``); the same transcript sent again after the
    checkpoint makes it anew, as in the run not cut (its session was evicted there too). Its
    id stayed among those closed before, so it was not scored or counted when it closed."""
    clock = [1000.0]
    config = config_for(tmp_path, source="kafka", event_time="wall",
                        **{"join.max_sessions": 2})
    values = [_transcript(sid) for sid in ("a", "b", "c", "a")]  # a's sent again
    first = Pipeline(config, clock=lambda: clock[0])
    for offset in range(3):  # c evicts a
        first.process(values[offset], None, "t", 0, offset)
    assert first.checkpoint() == {("t", 0): 1}  # b's last action (a commit that never lands)
    first.close(durable=False)

    again = Pipeline(config, clock=lambda: clock[0])
    for offset in range(4):  # from 0: a's last action pending again, evicted again by c
        again.process(values[offset], None, "t", 0, offset)
    again.finish()
    again.close()
    # 2 closed at once per transcript, then c's and a's last actions at the end of input
    assert again.stats.total("interactions") == 4 * 2 + 2
    assert not again._closed_before


def test_late_feedback_after_a_restart_finds_the_action_a_reward_closed(tmp_path):
    """A transcript's reward closes its last action, and feedback that comes later closes a
    second interaction for it (scored by the feedback extractor). With no action pending,
    the session did not hold the low watermark: restarted from the commit, its transcript
    was not read again and the feedback was an ``unmatched_feedback`` dead letter."""
    clock = [1000.0]
    config = config_for(tmp_path, source="kafka", event_time="wall")
    values = [_transcript("a", reward=1.0),
              line({"type": "feedback", "session_id": "a", "value": 1})]
    first = Pipeline(config, clock=lambda: clock[0])
    first.process(values[0], None, "t", 0, 0)
    commit = first.checkpoint()[("t", 0)]
    first.close(durable=False)
    assert commit == 0  # the session is held: its transcript is read again

    again = Pipeline(config, clock=lambda: clock[0])
    for offset in range(commit, 2):
        again.process(values[offset], None, "t", 0, offset)
    again.finish()
    again.close()
    assert again.stats.total("dead_letters") == 0
    assert again.stats.total("interactions") == 3 + 1  # the feedback's, as in a run not cut


def test_late_feedback_for_a_session_a_reward_ended_before_the_checkpoint_is_unmatched(
        tmp_path):
    """A session whose last action a reward closed, then forgotten as idle before the
    checkpoint, read again fast (no time to go idle again): late feedback for it found the
    action and closed an interaction, where the run not cut dead-lettered it (no session).
    Feedback read again that had joined that action before did the same."""
    clock = [1000.0]
    config = config_for(tmp_path, source="kafka", event_time="wall")
    values = [_transcript("a", reward=1.0),
              line({"type": "feedback", "session_id": "a", "value": 1}),
              _transcript("b"),
              line({"type": "feedback", "session_id": "a", "value": -1})]
    first = Pipeline(config, clock=lambda: clock[0])
    first.process(values[0], None, "t", 0, 0)
    first.process(values[1], None, "t", 0, 1)  # joins a's last action: one more interaction
    clock[0] += 400.0
    first.tick()  # a is forgotten
    first.process(values[2], None, "t", 0, 2)  # b's last action pending
    assert first.checkpoint() == {("t", 0): 2}  # (a commit that never lands)
    first.close(durable=False)
    assert first.stats.total("interactions") == 3 + 1 + 2

    again = Pipeline(config, clock=lambda: clock[0])
    for offset in range(4):  # from 0, fast: a is held again until its partition is read
        again.process(values[offset], None, "t", 0, offset)
    again.finish()
    again.close()
    assert again.stats.total("dead_letters") == 1  # the feedback at 3, as in a run not cut
    assert again.stats.total("interactions") == 3 + 1 + 2 + 1  # b's last at the end
    assert not again._closed_before


def test_cli_run_stats_and_export(tmp_path, capsys):
    """The nextstate command runs a file, then prints stats and exports tuples and rewards."""
    source = tmp_path / "in.jsonl"
    write_lines(source, weather_session("a", "Error: missing required argument 'day'")
                + weather_session("b", '{"temp_c": 3}'))
    state = str(tmp_path / "state")
    assert cli_main(["run", "--source", f"file:{source}", "--state-dir", state,
                     "--extractors", "tool", "--metrics-port", "-1",
                     "--log-format", "json"]) == 0
    assert cli_main(["stats", "--state-dir", state]) == 0
    out = capsys.readouterr().out
    assert "interactions: 6" in out and "tool" in out
    tuples_out, rewards_out = tmp_path / "t.jsonl", tmp_path / "r.jsonl"
    assert cli_main(["export", "--state-dir", state, "--format", "tuples",
                     "--out", str(tuples_out)]) == 0
    assert cli_main(["export", "--state-dir", state, "--format", "rewards",
                     "--out", str(rewards_out)]) == 0
    tuples = [json.loads(x) for x in tuples_out.read_text().splitlines()]
    rewards = [json.loads(x) for x in rewards_out.read_text().splitlines()]
    assert {t["kind"] for t in tuples} == {"evaluative", "directive"}
    assert sorted(r["session_id"] for r in rewards) == ["a", "b"]
    assert set(rewards[0]) == {"session_id", "interaction_id", "source", "reward",
                               "confidence"}


def test_extractor_errors_do_not_stop_the_pipeline(tmp_path):
    """An extractor that raises is logged and skipped; the other extractors still run."""
    from nextstate.extractors.registry import register

    @register("explodes_for_tests")
    def explodes(**_):
        def extractor(interaction):
            raise RuntimeError("boom")
        return extractor

    source = tmp_path / "in.jsonl"
    write_lines(source, weather_session("a", "Error: HTTP 500"))
    seen = []
    config = config_for(tmp_path, extractors=["explodes_for_tests", "tool"])
    pipeline = Pipeline(config, on_extractor_error=lambda e, i, n: seen.append(n) or True)
    run_file(pipeline, str(source), threading.Event(), Health(),
             Progress(pipeline.stats, False))
    pipeline.close()
    assert seen == ["explodes_for_tests"] * 3
    assert pipeline.stats.total("tuples", source="tool") == 1  # the tool error


def test_an_extractor_error_re_raised_mid_run_leaves_the_rest_of_the_run_to_score(tmp_path):
    """Closed interactions are scored in runs; an error the policy re-raises stops the run
    at its interaction, and the ones after it are scored next time, each once."""
    from nextstate.extractors.registry import register

    @register("explodes_once_for_tests")
    def explodes_once(**_):
        exploded = []

        def extractor(interaction):
            if interaction.session_id == "b" and not exploded:
                exploded.append(interaction.interaction_id)
                raise RuntimeError("boom")
            return []
        return extractor

    pipeline = Pipeline(config_for(tmp_path, source="kafka",
                                   extractors=["explodes_once_for_tests", "tool"]),
                        on_extractor_error=lambda e, i, n: False)
    records = [r for sid in "abc" for r in weather_session(sid, "Error: HTTP 500")]
    for offset, record in enumerate(records):
        pipeline.process(line(record), None, "t", 0, offset)
    waiting = len(pipeline._unscored)
    assert waiting >= 4 and pipeline.stats.total("interactions") == 0  # a run waits
    with pytest.raises(RuntimeError, match="boom"):
        pipeline.write_pending()
    scored = pipeline.stats.total("interactions")
    assert 0 < scored < waiting - 1  # a's were scored; b's first raised
    pipeline.write_pending()
    assert pipeline.stats.total("interactions") == waiting - 1  # the rest, once each
    assert not pipeline._unscored
    pipeline.close()


@pytest.mark.parametrize("value", [None, b""])
def test_a_record_with_no_value_is_a_dead_letter(tmp_path, value):
    """A Kafka tombstone (value None) raised a TypeError out of ``process``."""
    pipeline = Pipeline(config_for(tmp_path, source="kafka"))
    pipeline.process(value, b"s0", "t", 0, 7)
    pipeline.close()
    (dead,) = [json.loads(x) for x in (tmp_path / "state" / "dlq.jsonl").read_text().splitlines()]
    assert (dead["reason"], dead["offset"], dead["value"]) == ("empty", 7, "")
    assert pipeline.stats.total("dead_letters", reason="empty") == 1


def test_a_delta_clients_pending_action_keeps_its_id_and_context_after_a_restart(tmp_path):
    """A client that sends only the new messages: restarted from the committed offset, its
    pending action was rebuilt from that record alone, so it closed as ``s#1`` with one
    context message (the id of the session's first action, already scored: its tuples
    dropped as duplicates) instead of ``s#3`` with three. The low watermark now holds at the
    session's first record, so the restart rebuilds the whole context."""
    from tests.records import exchange

    call = assistant(calls=[("c", "get_weather", {"city": "Oslo"})])
    values = [line(exchange("s", [user("weather in Oslo?")], call)),
              line(exchange("s", [tool("c", "Error: HTTP 503")], assistant("It failed."))),
              line(exchange("s", [user("that is wrong, you did not retry")],
                            assistant("Bye.")))]

    def closed_by(pipeline: Pipeline) -> list[tuple[str, int]]:
        """The (id, context length) of each interaction the pipeline scores, in order."""
        seen: list[tuple[str, int]] = []
        score = pipeline._score

        def spy(interaction):
            seen.append((interaction.interaction_id, len(interaction.context)))
            return score(interaction)
        pipeline._score = spy  # type: ignore[method-assign]
        return seen

    uncut = Pipeline(config_for(tmp_path / "uncut", source="kafka"))
    whole = closed_by(uncut)
    for offset, value in enumerate(values):
        uncut.process(value, None, "t", 0, offset)
    uncut.finish()
    uncut.close()
    config = config_for(tmp_path / "cut", source="kafka")
    first = Pipeline(config)
    before = closed_by(first)
    for offset, value in enumerate(values[:2]):
        first.process(value, None, "t", 0, offset)
    commit = first.checkpoint()[("t", 0)]
    assert commit == 0  # s#3 is pending, built on the record at offset 0
    first.close(durable=False)  # a crash after the checkpoint
    again = Pipeline(config)
    after = closed_by(again)
    for offset in range(commit, len(values)):
        again.process(values[offset], None, "t", 0, offset)
    again.finish()
    again.close()
    assert whole == [("s#1", 1), ("s#3", 3), ("s#5", 5)]
    assert before + after == whole


def test_a_delta_client_back_after_a_restart_that_read_its_session_again(tmp_path):
    """A delta client's session forgotten as idle before the checkpoint, its records read
    again after a restart (another delta session held the commit below them), then back:
    its action is numbered after its history (``d#5``), as in the run never cut, not from 0
    (``d#1``, the id of its first action)."""
    from tests.records import exchange

    def ex(sid, said, reply):
        return line(exchange(sid, [user(said)], assistant(reply)))

    # (time, record): e holds the commit at offset 0; d goes idle at t=410
    timed = [(0.0, ex("e", "hi", "hello")), (1.0, ex("d", "hi", "hello")),
             (2.0, ex("d", "more", "ok")), (350.0, ex("e", "more", "ok")),
             (410.0, None), (1000.0, ex("d", "back again", "welcome back"))]

    def run(pipeline, clock, records, first=0):
        offset = 0
        for at, value in records:
            clock[0] = at
            if value is None:
                pipeline.tick()
                continue
            if offset >= first:
                pipeline.process(value, None, "t", 0, offset)
            offset += 1

    clock = [0.0]
    uncut = Pipeline(config_for(tmp_path / "uncut", source="kafka"), clock=lambda: clock[0])
    whole = _scored_ids(uncut)
    run(uncut, clock, timed)
    uncut.finish()
    uncut.close()
    config = config_for(tmp_path / "cut", source="kafka")
    first = Pipeline(config, clock=lambda: clock[0])
    before = _scored_ids(first)
    run(first, clock, timed[:5])
    assert first.checkpoint() == {("t", 0): 0}  # e's first record: d's are read again
    first.close(durable=False)
    again = Pipeline(config, clock=lambda: clock[0])
    after = _scored_ids(again)
    run(again, clock, timed)
    again.finish()
    again.close()
    assert "d#5" in whole and "d#1" not in whole[whole.index("d#3") + 1:]
    assert sorted(before + after) == sorted(whole)


def test_a_delta_client_back_after_a_restart_numbers_its_actions_on(tmp_path):
    """Forgotten as idle before the checkpoint, its records not read again after the
    restart (nothing held the commit below them): the checkpoint remembers how long its
    history was, so back after the restart its action is ``d#5``, as in a run never cut
    (it was ``d#1``, the id of its first action, its tuples dropped as duplicates)."""
    from tests.records import exchange

    records = [line(exchange("d", [user("hi")], assistant("hello"))),
               line(exchange("d", [user("more")], assistant("ok"))),
               line(exchange("d", [user("back again")], assistant("welcome back")))]
    clock = [0.0]
    config = config_for(tmp_path, source="kafka")
    first = Pipeline(config, clock=lambda: clock[0])
    for offset, value in enumerate(records[:2]):
        first.process(value, None, "t", 0, offset)
    clock[0] = 400.0
    first.tick()  # d goes idle, is forgotten
    assert first.checkpoint() == {("t", 0): 2}  # nothing to read again
    first.close(durable=False)
    again = Pipeline(config, clock=lambda: clock[0])
    ids = _scored_ids(again)
    again.process(records[2], None, "t", 0, 2)
    again.finish()
    again.close()
    assert ids == ["d#5"]


def _scored_ids(pipeline: Pipeline) -> list[str]:
    """The ids of the interactions the pipeline scores from now on, in order."""
    ids: list[str] = []
    score = pipeline._score
    pipeline._score = lambda i: (ids.append(i.interaction_id), score(i))[1]  # type: ignore
    return ids


def _whole_and_cut(tmp_path: Path, values: list[bytes], cut: int, start: int | None = None,
                   idle_after: int | None = None, **overrides
                   ) -> tuple[list[str], list[str], Pipeline, Pipeline]:
    """The ids scored by a run never cut, and by one checkpointed and crashed after ``cut``
    records, then read again from ``start`` (default: its commit); and both pipelines.
    ``idle_after``: 400 s pass after that record (a tick then closes idle sessions)."""
    clock = [1000.0]

    def play(pipeline: Pipeline, first: int, stop: int) -> None:
        for offset in range(first, stop):
            clock[0] += 0.5
            pipeline.process(values[offset], None, "t", 0, offset)
            if offset == idle_after:
                clock[0] += 400.0
                pipeline.tick()

    whole = Pipeline(config_for(tmp_path / "whole", source="kafka", **overrides),
                     clock=lambda: clock[0])
    whole_ids = _scored_ids(whole)
    play(whole, 0, len(values))
    whole.finish()
    whole.close()
    clock = [1000.0]
    config = config_for(tmp_path / "cut", source="kafka", **overrides)
    first = Pipeline(config, clock=lambda: clock[0])
    cut_ids = _scored_ids(first)
    play(first, 0, cut)
    commit = first.checkpoint()[("t", 0)]
    first.close(durable=False)
    again = Pipeline(config, clock=lambda: clock[0])
    after_ids = _scored_ids(again)
    play(again, commit if start is None else start, len(values))
    again.finish()
    again.close()
    return whole_ids, cut_ids + after_ids, whole, again


def test_a_delta_client_that_then_sends_whole_histories_read_again_from_between(tmp_path):
    """Read again from a commit between a delta client's records (another session held
    it), its delta record builds the session from its own messages; its next request, a
    whole history, was then taken for a delta (its system prompt is not that context's
    first message): bogus contexts and ids. A delta never starts with a system prompt."""
    s0 = delta_session("s0", "Error: HTTP 500")
    s0[2] = weather_session("s0", "Error: HTTP 500")[2]  # the whole history again
    s1 = weather_session("s1", '{"temp_c": 18}')
    values = [line(r) for r in (s0[0], s1[0], s0[1], s0[2], s1[1], s1[2])]
    whole, cut, *_ = _whole_and_cut(tmp_path, values, cut=4)
    assert sorted(cut) == sorted(whole)
    assert "s0#4" in whole  # (the whole history's action, numbered by it)


def test_a_delta_clients_copy_read_again_before_it_was_evicted_is_still_a_duplicate(
        tmp_path):
    """A delta client's first record sent twice (a duplicate: it keeps its place in the
    idle order), then the session evicted. Read again from 0, the copy was taken for a
    record after the eviction: the session was forgotten early, the copy joined as new, and
    another session evicted in its place, whose pending action was then lost."""
    a = [line(r) for r in delta_session("A", "Error: HTTP 500")]
    b = [line(r) for r in weather_session("B", '{"temp_c": 18}')]
    c = [line(r) for r in weather_session("C", '{"temp_c": 18}')]
    values = [a[0], a[1], b[0], a[0], c[0], b[1]]
    whole, cut, uncut, again = _whole_and_cut(tmp_path, values, cut=5, start=0,
                                              event_time="wall",
                                              **{"join.max_sessions": 2})
    assert sorted(cut) == sorted(whole) and "B#2" in whole
    for counter in ("interactions", "join_evictions", "join_duplicates"):
        assert again.stats.total(counter) == uncut.stats.total(counter), counter


@pytest.mark.parametrize("start", [1, 2])
def test_a_delta_session_read_again_from_its_middle_keeps_its_remembered_length(
        tmp_path, start):
    """A delta session forgotten as idle before the checkpoint (history length 7), then back
    after it; read again from the middle of the session (an offset no checkpoint commits:
    offsets lost, a group reset), its records were taken for a client back, numbered on from
    7, and forgotten again with the length 9 or 11: the action back became ``s0#10`` or
    ``s0#12``, not ``s0#8``. What the checkpoint kept of a session forgotten before it is
    left as it was (``SessionJoiner.settled``)."""
    from tests.records import exchange

    values = [line(r) for r in delta_session("s0", "Error: HTTP 500")] + [
        line(exchange("s0", [user("back again")],
                      assistant(calls=[("c9", "get_weather", {"city": "Rome"})]))),
        line(exchange("s0", [tool("c9", "Error: HTTP 500")], assistant("sorry")))]

    whole, cut, *_ = _whole_and_cut(tmp_path, values, cut=3, start=start, idle_after=2)
    assert "s0#8" in whole
    assert sorted(cut) == sorted(whole)


def test_a_dead_letter_past_the_checkpoint_is_in_the_file_once_after_a_restart(tmp_path):
    """A letter written after the last checkpoint (a close that skips the checkpoint, as
    when the store fails; or a kill once the file's buffer was written) is of a record the
    restart processes again: it was in ``dlq.jsonl`` twice, one more than the counter said.
    The checkpoint keeps the file's size; a restart cuts off what lies past it."""
    config = config_for(tmp_path, source="file:in.jsonl")
    first = Pipeline(config)
    first.process(b"{not json 0", None, "t", 0, 0)
    assert first.checkpoint() == {("t", 0): 1}
    first.process(b"{not json 1", None, "t", 0, 1)
    first.close(durable=False)  # its letter is written, the checkpoint not
    again = Pipeline(config)
    again.process(b"{not json 1", None, "t", 0, 1)  # from the commit: processed again
    again.close()
    lines = (tmp_path / "state" / "dlq.jsonl").read_text().splitlines()
    assert [json.loads(x)["offset"] for x in lines] == [0, 1]
    assert again.stats.total("dead_letters") == 2


def test_lines_longer_than_a_record_may_be_are_cut_not_held():
    """A file without newlines (a binary file given by mistake) was read whole into memory
    as one line; now a line comes cut to max_bytes + 1 bytes and its rest is read past."""
    import io

    from nextstate.daemon.sources import _lines_of

    data = b"a" * 10 + b"\n" + b"b" * 5_000_000 + b"\n" + b"c" * 11 + b"\nlast"
    lines = list(_lines_of(io.BytesIO(data), threading.Event(), False, 0.0, max_bytes=11))
    assert lines == [b"a" * 10 + b"\n", b"b" * 12, b"c" * 11 + b"\n", b"last"]


def test_an_oversized_line_is_a_dead_letter_and_the_file_reads_on(tmp_path):
    session = weather_session("s", "Error: HTTP 500")
    source = tmp_path / "in.jsonl"
    write_lines(source, session[:1], [b'{"x": "' + b"y" * 3_000_000 + b'"}'])
    with source.open("ab") as fh:
        fh.write(b"\n".join(line(r) for r in session[1:]) + b"\n")
    pipeline = run(config_for(tmp_path, source=f"file:{source}",
                              **{"join.max_record_bytes": 1 << 20}), source)
    (dead,) = [json.loads(x) for x in (tmp_path / "state" / "dlq.jsonl").read_text().splitlines()]
    assert (dead["reason"], dead["offset"], len(dead["value"])) == ("too_large", 1, (1 << 20) + 1)
    assert pipeline.stats.total("interactions") == 3
    assert [t.reward < 0 for t in stored(tmp_path / "state")] == [True]  # the HTTP 500


def test_a_transcript_too_long_to_score_is_a_dead_letter_and_the_file_reads_on(tmp_path):
    """``join.max_record_context`` reaches the join from the config (see test_join.py)."""
    def transcript(sid: str, n: int) -> dict:
        return {"session_id": sid, "messages": [
            m for i in range(n) for m in (user(f"q{i}"), assistant(f"a{i}"))]}

    source = tmp_path / "in.jsonl"
    write_lines(source, [transcript("long", 4), transcript("short", 3)])
    pipeline = run(config_for(tmp_path, source=f"file:{source}", extractors=["user"],
                              **{"join.max_record_context": 9}), source)
    (letter,) = [json.loads(x) for x in (tmp_path / "state" / "dlq.jsonl").read_text().splitlines()]
    assert letter["reason"] == "too_large" and "max_record_context=9" in letter["error"]
    assert pipeline.stats.total("records") == 1


def test_state_files_are_fsynced_before_they_replace_the_old_ones(tmp_path, monkeypatch):
    """checkpoint.json and file_offsets.json reach the disk before the rename: a power loss
    leaves the old file or the new one. file_offsets.json was renamed unsynced, so a power
    loss could leave it empty, which a run now refuses (exit 6: a corrupt state file)."""
    synced = []
    fsync = os.fsync

    def recording(fd: int) -> None:
        synced.append(os.path.basename(os.readlink(f"/proc/self/fd/{fd}")))
        fsync(fd)

    monkeypatch.setattr(os, "fsync", recording)
    source = tmp_path / "in.jsonl"
    write_lines(source, weather_session("s", "{}"))
    run(config_for(tmp_path, source=f"file:{source}"), source)
    assert {"checkpoint.json.tmp", "file_offsets.json.tmp"} <= set(synced)


def test_a_file_replaced_at_the_same_path_is_read_from_its_first_line(tmp_path):
    """A log rotated (or replaced) between runs: the next run reads the new file whole, told
    from the old one by its first line. Before, its lines up to the old file's length were
    skipped as already read: a day's log after rotation was lost without a word."""
    source = tmp_path / "agent.jsonl"
    day_one = weather_session("d1", "{}") + weather_session("d1b", "Error: HTTP 500")
    day_two = weather_session("d2", "Error: HTTP 404")
    config = config_for(tmp_path, source=f"file:{source}")
    write_lines(source, day_one)
    run(config, source)
    source.rename(tmp_path / "agent.jsonl.1")
    write_lines(source, day_two)
    with structlog.testing.capture_logs() as logs:
        second = run(config, source)
    assert second.stats.total("records") == len(day_one) + len(day_two)
    assert [e["event"] for e in logs if e["event"] == "file_replaced"] == ["file_replaced"]
    assert session_tuples(tmp_path / "state", "d2")
    again = run(config, source)  # the same file once more: nothing is read twice
    assert again.stats.total("records") == len(day_one) + len(day_two)


def test_follow_mode_processes_appended_lines_until_stopped(tmp_path):
    """--follow keeps reading lines appended to the file, checkpoints while the file has
    nothing new (its tuples durable before 256 lines come), and stops cleanly when asked."""
    from tests.kafka_broker import wait_for

    def checkpointed(counter: str) -> float:
        try:
            state = json.loads((tmp_path / "state" / "checkpoint.json").read_text())
        except (OSError, ValueError):
            return 0.0
        return sum(value for name, _, value in state["stats"]["counters"] if name == counter)

    source = tmp_path / "in.jsonl"
    records = weather_session("a", "Error: HTTP 500")
    write_lines(source, records[:1])
    pipeline = Pipeline(config_for(tmp_path, commit_interval_s=0.05))
    with following(pipeline, source):
        assert wait_for(lambda: pipeline.stats.total("records") == 1, 10)
        with source.open("ab") as fh:
            fh.write(line(records[1]) + b"\n")
        assert wait_for(lambda: pipeline.stats.total("interactions") == 1, 10)
        # A checkpoint writes the buffers first: the tuple is durable once it is counted.
        assert wait_for(lambda: checkpointed("tuples") == 1, 10)
        offsets = json.loads((tmp_path / "state" / "file_offsets.json").read_text())
        assert offsets[f"file:{source.resolve()}"] == 1  # the pending exchange's line again
    pipeline.close()


@contextlib.contextmanager
def following(pipeline: Pipeline, source: Path) -> Iterator[None]:
    """``run_file --follow`` on a thread for the block, then stopped as SIGTERM would."""
    stop = threading.Event()
    worker = threading.Thread(target=run_file, args=(pipeline, str(source), stop, Health(),
                                                     Progress(pipeline.stats, False)),
                              kwargs={"follow": True, "poll_s": 0.05})
    worker.start()
    try:
        yield
    finally:
        stop.set()
        worker.join(10)
    assert not worker.is_alive()


@pytest.mark.parametrize("rotate", ["rename", "truncate"])
def test_a_followed_log_rotated_is_read_on_from_the_new_file(tmp_path, rotate):
    """A followed log rotated as logrotate does (renamed and created anew, or copied and
    truncated in place): the new file is read from its first line, and a session spanning
    the rotation is joined across it. Before, the old file was followed for good and nothing
    written after the rotation was read."""
    from tests.kafka_broker import wait_for

    source = tmp_path / "agent.jsonl"
    records = weather_session("a", "Error: HTTP 500")
    write_lines(source, records[:1])  # the tool call, pending
    pipeline = Pipeline(config_for(tmp_path, commit_interval_s=0.05))
    # The source tells the pipeline when it has caught up with the file (nothing new): only
    # then is it rotated. Rotated while the source was still at its first line's tick, the
    # file written again was read from the middle of its first line (the limit the README
    # gives: a truncation written past before the source looks).
    caught_up, advance_quiet = threading.Event(), pipeline.advance_quiet
    pipeline.advance_quiet = lambda seconds: (caught_up.set(), advance_quiet(seconds))[1]
    with following(pipeline, source):
        assert wait_for(lambda: pipeline.stats.total("records") == 1, 10)
        assert caught_up.wait(10)
        if rotate == "rename":
            source.rename(tmp_path / "agent.jsonl.1")
        else:
            (tmp_path / "agent.jsonl.1").write_bytes(source.read_bytes())
            source.write_bytes(b"")
        # written after the rotation (in place: past where the old one was read to)
        write_lines(source, records[1:])
        assert wait_for(lambda: pipeline.stats.total("records") == len(records), 10)
        assert wait_for(lambda: pipeline.stats.total("interactions") == 2, 10)
    pipeline.close()
    # the tool call read from the old file, its error from the new one: joined across
    (scored,) = [t for t in stored(tmp_path / "state")
                 if t.interaction_id == "a#2" and t.kind == "evaluative"]
    assert scored.reward < 0
    offsets = json.loads((tmp_path / "state" / "file_offsets.json").read_text())
    assert offsets[f"file:{source.resolve()}"] <= len(records) - 1  # lines of the new file


def test_a_quiet_followed_log_still_closes_idle_sessions(tmp_path):
    """Following a log in event time, the clocks run on by the wall time the file has had
    nothing new: a session whose writer went quiet closes as idle, and the time series goes
    on. Before, both waited for the writer's next line, however long it took."""
    from nextstate.daemon.timeseries import read_series
    from tests.kafka_broker import wait_for

    source = tmp_path / "in.jsonl"
    records = timed_session("a", "Error: HTTP 500", time.time() - 60)  # a live log's times
    write_lines(source, records[:2])  # the call, its result and the answer left pending
    pipeline = Pipeline(config_for(tmp_path, source=f"file:{source}", commit_interval_s=0.05,
                                   timeseries_interval_s=0.2, **{"join.idle_timeout_s": 0.5}))
    with following(pipeline, source):
        assert wait_for(lambda: pipeline.stats.total(
            "interactions_closed", closed_by="idle_timeout") == 1, 10)
        assert pipeline.stats.total("interactions_closed", closed_by="next_state") == 1
        assert pipeline.event_lateness == 0.0  # the quiet time is not a lag
    pipeline.close()
    times = [ts for ts, _ in read_series(tmp_path / "state" / "timeseries.sqlite")]
    assert times == sorted(times) and times[-1] > records[1]["ts"] + 0.5


def test_file_replay_follows_event_time_for_series_and_idle_timeouts(tmp_path):
    """Replaying a log, the time series spans the records' own times and sessions idle (in
    event time) close before the file ends."""
    from nextstate.daemon.timeseries import read_series

    early = weather_session("early", "Error: HTTP 500")
    late = weather_session("late", '{"temp_c": 3}')
    for n, record in enumerate(early):
        record["ts"] = 1_000_000 + n
    for n, record in enumerate(late):
        record["ts"] = 1_000_000 + 3_600 + n  # an hour later: "early" is idle by then
    source = tmp_path / "in.jsonl"
    write_lines(source, early + late)
    pipeline = Pipeline(config_for(tmp_path, timeseries_interval_s=60.0,
                                   source=f"file:{source}"))
    run_file(pipeline, str(source), threading.Event(), Health(),
             Progress(pipeline.stats, False))
    pipeline.close()
    assert pipeline.stats.total("interactions_closed", closed_by="idle_timeout") == 1
    assert pipeline.stats.total("interactions_closed", closed_by="end_of_input") == 1
    times = [ts for ts, _ in read_series(tmp_path / "state" / "timeseries.sqlite")]
    assert times[0] == 1_000_000 and times[-1] == 1_000_000 + 3_600 + 2


def test_sessions_out_of_time_order_in_a_file_are_not_closed_as_idle(tmp_path):
    """A log whose sessions run an hour apart but are interleaved in the file (merged from
    two hosts): every action still meets its next state, as in the same log in time order.
    The idle clock trails the latest time by the largest lag read; fixed at 0, the early
    session is closed as idle the moment the late one is read."""
    early = weather_session("early", "Error: HTTP 500")
    late = weather_session("late", '{"temp_c": 3}')
    for n, (a, b) in enumerate(zip(early, late, strict=True)):
        a["ts"], b["ts"] = 1_000_000 + 10 * n, 1_003_600 + 10 * n
    interleaved = [r for pair in zip(late, early, strict=True) for r in pair]

    def tuples(name: str, records: list[dict], **overrides) -> tuple[set, Pipeline]:
        source = tmp_path / f"{name}.jsonl"
        write_lines(source, records)
        config = config_for(tmp_path / name, source=f"file:{source}", **overrides)
        pipeline = run(config, source)
        return {(t.interaction_id, t.reward, t.hint) for t in stored(tmp_path / name / "state")}, \
            pipeline

    in_order, _ = tuples("in_order", early + late)
    with structlog.testing.capture_logs() as logs:
        mixed, pipeline = tuples("interleaved", interleaved)
    assert [e["seconds"] for e in logs if e["event"] == "event_time_lateness"] == [3_600]
    assert mixed == in_order and len(in_order) == 2  # the tool error and the good result
    assert pipeline.stats.total("interactions_closed", closed_by="idle_timeout") == 0
    assert pipeline.event_lateness == 3_600

    fixed, pipeline = tuples("fixed", interleaved, event_time_lateness_s=0.0)
    assert pipeline.stats.total("interactions_closed", closed_by="idle_timeout") >= 1
    assert fixed != in_order


def test_a_resumed_file_run_keeps_the_lateness_it_had_learned(tmp_path):
    """The idle clock's lateness, learned from records before a restart, is in the checkpoint:
    the run over the rest of the file closes sessions as one run over the whole file does."""
    def timed(sid: str, result: str, start: float, end: bool) -> list[dict]:
        records = weather_session(sid, result)
        if end:
            records.append({"type": "session_end", "session_id": sid})
        for n, record in enumerate(records):
            record["ts"] = start + 10 * n
        return records

    def mixed(a: list[dict], b: list[dict]) -> list[dict]:
        return [r for pair in zip(a, b, strict=True) for r in pair]

    # Two sessions an hour apart, interleaved and ended: nothing pending when the run stops.
    before = mixed(timed("x", "Error: HTTP 500", 3_600, True), timed("y", "{}", 0, True))
    after = mixed(timed("z", "Error: HTTP 404", 40, False), timed("w", "{}", 3_640, False))
    whole = tmp_path / "whole.jsonl"
    write_lines(whole, before + after)
    one_run = run(config_for(tmp_path / "one", source=f"file:{whole}"), whole)

    grown = tmp_path / "grown.jsonl"
    write_lines(grown, before)
    run(config_for(tmp_path / "two", source=f"file:{grown}"), grown)
    write_lines(grown, before + after)  # the log grows; the next run reads the new lines
    resumed = run(config_for(tmp_path / "two", source=f"file:{grown}"), grown)
    assert resumed.stats.total("records") == one_run.stats.total("records") == 14
    assert resumed.stats.total("interactions_closed", closed_by="idle_timeout") == 0
    assert stored(tmp_path / "two" / "state") == stored(tmp_path / "one" / "state")


def timed_session(sid: str, result: str, start: float, step: float = 10.0) -> list[dict]:
    records = weather_session(sid, result)
    for n, record in enumerate(records):
        record["ts"] = start + step * n
    return records


def session_tuples(state: Path, sid: str) -> set:
    return {(t.interaction_id, t.reward, t.hint) for t in stored(state) if t.session_id == sid}


def test_a_record_from_the_future_moves_no_clock(tmp_path):
    """A record whose ts lies ahead of the wall clock (a host's clock set wrong) is not
    believed. Before, the event clock jumped to it: every open session went idle at once
    (its pending action closed without its next state) and the time series stopped there."""
    from nextstate.daemon.timeseries import read_series

    early = timed_session("early", "Error: HTTP 500", 1_000_000)
    stray = timed_session("stray", "{}", time.time() + 30 * 86_400)[:1]
    clean, mixed = tmp_path / "clean.jsonl", tmp_path / "mixed.jsonl"
    write_lines(clean, early)
    write_lines(mixed, early[:1] + stray + early[1:])
    run(config_for(tmp_path / "clean", source=f"file:{clean}"), clean)
    with structlog.testing.capture_logs() as logs:
        pipeline = run(config_for(tmp_path / "mixed", source=f"file:{mixed}",
                                  timeseries_interval_s=5.0), mixed)
    kept = session_tuples(tmp_path / "mixed" / "state", "early")
    assert kept == session_tuples(tmp_path / "clean" / "state", "early") and kept
    assert pipeline.stats.total("interactions_closed", closed_by="idle_timeout") == 0
    assert pipeline.stats.total("event_time_clamped", reason="future") == 1
    assert [e["reason"] for e in logs if e["event"] == "event_time_clamped"] == ["future"]
    times = [ts for ts, _ in read_series(tmp_path / "mixed" / "state" / "timeseries.sqlite")]
    assert max(times) == early[-1]["ts"] and len(times) >= 3


def test_one_record_a_month_ahead_in_a_replayed_log_moves_no_clock(tmp_path):
    """A replayed log (older than the wall clock) with one record stamped a month after the
    rest (a host's clock a month fast): its session takes its time, the clock does not
    until a second record bears it out, which none does here. Before, the clock jumped to
    it: both open sessions went idle at once, losing the next states of their pending
    actions, and every later record was read at the idle clock (clamped ``late``)."""
    from nextstate.daemon.timeseries import read_series

    x = timed_session("x", "Error: HTTP 500", 1_000_000)
    y = timed_session("y", "{}", 1_000_005)
    stray = timed_session("stray", "{}", 1_000_000 + 30 * 86_400)[:1]
    both = [r for pair in zip(x, y, strict=True) for r in pair]
    clean, mixed = tmp_path / "clean.jsonl", tmp_path / "mixed.jsonl"
    write_lines(clean, both)
    write_lines(mixed, both[:3] + stray + both[3:])
    run(config_for(tmp_path / "clean", source=f"file:{clean}",
                   timeseries_interval_s=5.0), clean)
    pipeline = run(config_for(tmp_path / "mixed", source=f"file:{mixed}",
                              timeseries_interval_s=5.0), mixed)
    for sid in ("x", "y"):
        kept = session_tuples(tmp_path / "mixed" / "state", sid)
        assert kept == session_tuples(tmp_path / "clean" / "state", sid) and kept
    assert pipeline.stats.total("interactions_closed", closed_by="idle_timeout") == 0
    assert pipeline.stats.total("event_time_clamped", reason="leap") == 1
    assert pipeline.stats.total("event_time_clamped", reason="late") == 0
    series = {name: [ts for ts, _ in read_series(tmp_path / name / "state" / "timeseries.sqlite")]
              for name in ("clean", "mixed")}
    assert series["mixed"] == series["clean"] and len(series["clean"]) >= 3


def test_a_record_from_a_clock_never_set_leaves_idle_timeouts_working(tmp_path):
    """Records stamped near 1970 (a host whose clock was never set) among ones 11 days
    later: the lateness stops at ``event_time_max_lateness_s`` (before, it grew to 11 days
    and no session went idle for the rest of the run), and they count as read at the idle
    clock, so their own session is not closed before its next record."""
    early = timed_session("early", "Error: HTTP 500", 1_000_000)
    stray = timed_session("stray", "Error: HTTP 404", 1.0)
    later = timed_session("later", "{}", 1_000_000 + 2 * 86_400)  # early is idle by then
    source, alone = tmp_path / "in.jsonl", tmp_path / "alone.jsonl"
    write_lines(source, early[:1] + stray + early[1:] + later)
    write_lines(alone, stray)
    pipeline = run(config_for(tmp_path / "mixed", source=f"file:{source}"), source)
    run(config_for(tmp_path / "alone", source=f"file:{alone}"), alone)
    assert pipeline.event_lateness == 86_400
    assert pipeline.stats.total("event_time_clamped", reason="late") == len(stray)
    assert pipeline.stats.total("interactions_closed", closed_by="idle_timeout") >= 2
    kept = session_tuples(tmp_path / "mixed" / "state", "stray")
    assert kept == session_tuples(tmp_path / "alone" / "state", "stray") and kept


def test_an_event_clock_saved_from_the_future_starts_again(tmp_path):
    """A checkpoint from a version that believed a future ts does not carry it on."""
    config = config_for(tmp_path, source="file:in.jsonl")
    pipeline = Pipeline(config)
    pipeline.event_time, pipeline.event_lateness = time.time() + 10 * 86_400, 5.0
    pipeline.close()
    with structlog.testing.capture_logs() as logs:
        again = Pipeline(config)
    assert (again.event_time, again.event_lateness) == (0.0, 0.0)
    assert [e["event"] for e in logs if e["event"] == "event_time_reset"] == ["event_time_reset"]
    again.close()


@pytest.mark.parametrize("key", ["event_time", "log_format", "progress",
                                 "kafka.auto_offset_reset"])
def test_a_mistyped_choice_is_a_config_error_naming_the_key(key):
    """A value outside a field's choices fails at load (``event_time = "evnt"`` used to run
    on wall time without a word)."""
    with pytest.raises(ValueError, match=re.escape(f"$.{key}")):
        load_config(None, **{key: "evnt"})


@pytest.mark.parametrize(("key", "value"), [
    ("join.idle_timeout_s", -5.0), ("join.idle_timeout_s", 0.0), ("join.max_sessions", 0),
    ("join.max_pending_bytes", -1), ("join.max_feedback_per_action", 0),
    ("kafka.max_poll_records", 0), ("commit_every_records", 0), ("commit_interval_s", -1.0),
    ("event_time_lateness_s", -3.0), ("timeseries_interval_s", 0.0), ("metrics_port", 70_000),
])
def test_a_value_out_of_bounds_is_a_config_error_naming_the_key(key, value):
    """``max_sessions = 0`` or ``idle_timeout_s = -5`` ran and joined nothing without a word;
    ``max_poll_records = 0`` raised a ValueError out of the first Kafka poll."""
    with pytest.raises(ValueError, match=re.escape(f"$.{key}")):
        load_config(None, **{key: value})
    load_config(None, **{key: 1})  # the bound, not the field, refused it


def test_tuples_reach_the_buffers_by_the_next_tick(tmp_path):
    """Closed interactions wait for a batch to be scored, and their tuples to be written, but
    every tick scores and writes them: a trainer sampling the buffers in the daemon sees them
    without waiting for a checkpoint."""
    pipeline = Pipeline(config_for(tmp_path, source="kafka"))
    try:
        for offset, record in enumerate(weather_session("s", '{"temp_c": 18}')):
            pipeline.process(line(record), None, "t", 0, offset)
        assert sum(len(b) for b in pipeline.buffers.buffers.values()) == 0  # a batch waits
        pipeline.tick()
        stored_now = sum(len(b) for b in pipeline.buffers.buffers.values())
        assert stored_now >= 1 and stored_now == pipeline.stats.total("tuples")
    finally:
        pipeline.close()


def test_retries_and_regenerations_change_nothing_but_their_counters(tmp_path):
    """A regenerated response superseded by the original, then the original delivered twice,
    store the same tuples as the clean session: the superseded action yields nothing, the
    duplicate is ignored, and both are counted."""
    clean = weather_session("s", '{"error": "timeout"}')
    regenerated = json.loads(json.dumps(clean[0]))
    regenerated["response"]["choices"][0]["message"] = assistant("Let me try again.")
    extractors = ["feedback", "user", "tool", "terminal", "gui"]
    runs = {}
    for name, records in (("clean", clean),
                          ("messy", [regenerated, clean[0], clean[0], *clean[1:]])):
        write_lines(tmp_path / f"{name}.jsonl", records)
        config = load_config(None, state_dir=str(tmp_path / name), extractors=extractors)
        runs[name] = (run(config, tmp_path / f"{name}.jsonl"), stored(tmp_path / name))
    (clean_run, clean_tuples), (messy_run, messy_tuples) = runs["clean"], runs["messy"]
    assert clean_tuples and sorted(msgspec.json.encode(t) for t in messy_tuples) == \
        sorted(msgspec.json.encode(t) for t in clean_tuples)
    assert messy_run.stats.total("interactions_closed", closed_by="superseded") == 1
    assert messy_run.stats.total("join_duplicates") == 1
    assert messy_run.stats.total("interactions") == clean_run.stats.total("interactions") + 1
    assert messy_run.stats.total("interactions_with_signal") == \
        clean_run.stats.total("interactions_with_signal")


def test_a_record_with_a_bad_timestamp_loses_nothing_else(tmp_path):
    """On wall time (Kafka), a record whose ``ts`` is not a time goes to the DLQ before the
    join sees it: the action it would have closed is still pending, and the next good record
    of the session closes it as the clean session does."""
    records = weather_session("s", '{"temp_c": 18}')
    clean = Pipeline(config_for(tmp_path / "clean", source="kafka", event_time="wall"))
    for offset, record in enumerate(records):
        clean.process(line(record), None, "t", 0, offset)
    clean.finish()
    expected = clean.stats.total("interactions"), clean.stats.total("tuples")
    clean.close()

    bad = {**records[1], "ts": "yesterday at noon"}
    pipeline = Pipeline(config_for(tmp_path / "bad", source="kafka", event_time="wall"))
    for reserialize in (False, True):  # byte-equal history (the join's short path) or not
        pipeline.process(line(records[0]), None, "t", 0, 0)
        value = json.dumps(bad, indent=1).encode() if reserialize else line(bad)
        pipeline.process(value, None, "t", 0, 1)
        for offset, record in enumerate(records[1:], 2):
            pipeline.process(line(record), None, "t", 0, offset)
        pipeline.finish()
        records = [{**r, "session_id": "s2"} for r in records]
        bad = {**bad, "session_id": "s2"}
    expected = tuple(2 * n for n in expected)
    assert pipeline.stats.total("dead_letters", reason="schema") == 2
    assert (pipeline.stats.total("interactions"), pipeline.stats.total("tuples")) == expected
    pipeline.close()

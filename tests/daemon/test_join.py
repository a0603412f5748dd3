"""Tests for the per-session join of actions to next states."""

import json

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nextstate.daemon import ingest, wire
from nextstate.daemon.join import SessionJoiner
from nextstate.daemon.wire import BadRecord
from nextstate.extractors.types import Feedback, Interaction, Message, Usage
from tests.records import assistant, conversation_exchanges, exchange, line, tool, user


def feed(joiner, record, now=0.0, position=None):
    decoded = wire.decode(json.dumps(record))
    return joiner.feed(decoded, wire.classify(decoded), now, position)


def test_exchange_closes_previous_action_with_tool_results():
    """The next exchange's request supplies the previous action's tool results."""
    call = assistant(calls=[("c1", "get_weather", {"city": "Paris"})])
    records = conversation_exchanges("s1", [
        (call, [tool("c1", "18C and sunny")]),
        (assistant("It is 18C in Paris."), [user("thanks!")]),
    ])
    records[0]["request"]["messages"].append(user("weather in Paris?"))
    records[1]["request"]["messages"].insert(1, user("weather in Paris?"))
    joiner = SessionJoiner()
    assert feed(joiner, records[0]) == []
    (closed,) = feed(joiner, records[1])
    assert closed.interaction_id == "s1#2"
    assert closed.action.tool_calls[0].name == "get_weather"
    assert [m.content for m in closed.next_state] == ["18C and sunny"]
    assert [m.role for m in closed.context] == ["system", "user"]
    (last,) = joiner.close_all()
    assert last.closed_by == "end_of_input" and last.next_state == ()
    assert last.interaction_id == "s1#4"


def test_delta_clients_that_send_only_new_messages():
    """A client that sends only new messages still gets its actions joined."""
    joiner = SessionJoiner()
    feed(joiner, exchange("s", [user("hi")], assistant("hello")))
    (closed,) = feed(joiner, exchange("s", [user("no, in French")], assistant("bonjour")))
    assert closed.next_state[0].content == "no, in French"
    (last,) = joiner.close_all()
    assert [m.content for m in last.context] == ["hi", "hello", "no, in French"]
    assert last.interaction_id == "s#3"


def test_redelivered_record_gives_the_same_interaction_ids():
    """Ids depend on history position only, so at-least-once delivery can be deduplicated."""
    records = conversation_exchanges("s", [(assistant("a"), [user("b")]),
                                           (assistant("c"), [])])
    ids = []
    for _ in range(2):
        joiner = SessionJoiner()
        ids.append([i.interaction_id for r in records for i in feed(joiner, r)]
                   + [i.interaction_id for i in joiner.close_all()])
    assert ids[0] == ids[1] == ["s#1", "s#3"]


def test_transcript_yields_every_action_and_waits_for_the_last():
    """A transcript closes every action but the last, whose next state may still grow."""
    messages = [user("q"), assistant(calls=[("c", "search", {"q": "x"})]), tool("c", "found"),
                assistant("answer"), user("thanks")]
    joiner = SessionJoiner()
    closed = feed(joiner, {"session_id": "t", "messages": messages})
    assert [i.interaction_id for i in closed] == ["t#1"]
    grown = [*messages, assistant("you're welcome")]
    closed = feed(joiner, {"session_id": "t", "messages": grown})
    assert [(i.interaction_id, i.next_state[0].content) for i in closed] == [("t#3", "thanks")]
    (end,) = feed(joiner, {"type": "session_end", "session_id": "t", "outcome": True})
    assert end.interaction_id == "t#5" and end.outcome == 1.0
    assert end.closed_by == "session_end"


def test_transcript_with_reward_is_complete():
    """A transcript that carries a reward closes its last action with that outcome."""
    joiner = SessionJoiner()
    closed = feed(joiner, {"session_id": "t", "reward": 0.0,
                           "messages": [user("q"), assistant("a")]})
    assert [(i.closed_by, i.outcome) for i in closed] == [("session_end", 0.0)]
    assert joiner.pending_count == 0


def turns(n: int) -> list[dict]:
    return [m for i in range(n) for m in (user(f"q{i}"), assistant(f"a{i}"))]


def test_a_transcript_whose_contexts_would_hold_too_much_is_too_large():
    """Each action's context is a copy of every message before it: a transcript of n
    messages holds about n*n/4 (a 1.3 MB one of 32k messages took 9.5 s and 2 GB, a 16 MB
    one would never finish). Beyond ``max_record_context`` the record is rejected before
    anything changes; a re-sent, grown transcript counts only its actions not closed yet."""
    joiner = SessionJoiner(max_record_context=1 + 3 + 5)  # the contexts of 3 turns' actions
    assert len(feed(joiner, {"session_id": "t", "messages": turns(3)})) == 2
    with pytest.raises(BadRecord, match="max_record_context=9") as rejected:
        feed(joiner, {"session_id": "big", "messages": turns(4)})
    assert rejected.value.reason == "too_large" and "big" not in joiner.sessions
    # t grown by two turns: its actions 5 (pending), 7 and 9 are 21 messages of context
    with pytest.raises(BadRecord, match="hold 21 messages"):
        feed(joiner, {"session_id": "t", "messages": turns(5)})
    # by one: 5 and 7, 12 messages, still too many; the pending action is intact
    with pytest.raises(BadRecord):
        feed(joiner, {"session_id": "t", "messages": turns(4)})
    roomy = SessionJoiner(max_record_context=12)
    feed(roomy, {"session_id": "t", "messages": turns(3)})
    closed = feed(roomy, {"session_id": "t", "messages": turns(4)})
    assert [i.interaction_id for i in closed] == ["t#5"]
    (last,) = joiner.close_all()
    assert last.interaction_id == "t#5" and len(last.context) == 5


def test_feedback_attaches_to_pending_or_reopens_last_closed():
    """Feedback targets the latest action, pending or already closed."""
    joiner = SessionJoiner()
    feed(joiner, exchange("s", [user("q")], assistant("a")))
    assert feed(joiner, {"type": "feedback", "session_id": "s", "value": "up"}) == []
    (closed,) = feed(joiner, exchange("s", [user("q"), assistant("a"), user("more")],
                                      assistant("b")))
    assert closed.feedback[0].value == 1.0
    joiner.close_all()
    feed(joiner, exchange("s2", [user("q")], assistant("a")))
    feed(joiner, exchange("s2", [user("q"), assistant("a"), user("r")], assistant("b")))
    (late,) = joiner.close_all()
    joiner2 = SessionJoiner()
    feed(joiner2, {"session_id": "s3", "reward": 1.0, "messages": [user("q"), assistant("a")]})
    (fb,) = feed(joiner2, {"type": "feedback", "session_id": "s3", "text": "great"})
    assert fb.closed_by == "feedback" and fb.interaction_id == "s3#1"
    assert late.interaction_id == "s2#3"


def test_feedback_for_unknown_session_is_a_bad_record():
    """Feedback nobody can attach is rejected (it goes to the DLQ), not dropped silently."""
    with pytest.raises(BadRecord, match="unmatched_feedback"):
        feed(SessionJoiner(), {"type": "feedback", "session_id": "nope", "value": 1})


def test_idle_sessions_close_in_recency_order():
    """Only sessions idle past the timeout close; recently seen ones stay pending."""
    joiner = SessionJoiner(idle_timeout_s=10)
    feed(joiner, exchange("old", [user("q")], assistant("a")), now=0)
    feed(joiner, exchange("new", [user("q")], assistant("a")), now=8)
    closed = joiner.close_idle(now=12)
    assert [(i.session_id, i.closed_by) for i in closed] == [("old", "idle_timeout")]
    assert list(joiner.sessions) == ["new"]


def test_low_watermark_is_oldest_pending_record_per_partition():
    """Commits may go only up to the oldest record a pending action still needs."""
    joiner = SessionJoiner()
    feed(joiner, exchange("a", [user("q")], assistant("x")), position=("t", 0, 5))
    feed(joiner, exchange("b", [user("q")], assistant("x")), position=("t", 0, 7))
    feed(joiner, exchange("c", [user("q")], assistant("x")), position=("t", 1, 3))
    assert joiner.low_watermarks() == {("t", 0): 5, ("t", 1): 3}
    feed(joiner, exchange("a", [user("q"), assistant("x"), user("r")], assistant("y")),
         position=("t", 0, 9))
    assert joiner.low_watermarks() == {("t", 0): 7, ("t", 1): 3}
    assert joiner.drop_partitions([("t", 0)]) == 2
    assert joiner.low_watermarks() == {("t", 1): 3}


def test_a_delta_clients_low_watermark_holds_at_the_record_its_state_was_built_from():
    """A delta client's request holds only the new messages: its pending action's context
    is rebuilt only from the session's first record on, so the watermark holds there (not
    at the pending action's own record) until a request holds the whole history again."""
    joiner = SessionJoiner()
    feed(joiner, exchange("d", [user("q")], assistant("x")), position=("t", 0, 5))
    feed(joiner, exchange("d", [user("r")], assistant("y")), position=("t", 0, 6))
    feed(joiner, exchange("d", [user("s")], assistant("z")), position=("t", 0, 8))
    pending = joiner.sessions["d"].pending
    assert (pending.interaction_id, len(pending.context)) == ("d#5", 5)  # a delta each time
    assert joiner.low_watermarks() == {("t", 0): 5}
    assert joiner.pending_at("d", ("t", 0, 8)) == "d#5"  # still made by its own record
    whole = [user("q"), assistant("x"), user("r"), assistant("y"), user("s"), assistant("z"),
             user("t")]
    feed(joiner, exchange("d", whole, assistant("w")), position=("t", 0, 9))
    assert joiner.low_watermarks() == {("t", 0): 9}  # this record holds it all


def test_a_delta_client_back_after_its_session_went_idle_numbers_its_actions_on():
    """A client that sends only the new messages, back after ``idle_timeout_s``: its session
    was forgotten, and its next record does not say how long the history was. Its action
    took the id of the session's first action (``s#1``), so the buffers dropped its tuples
    as duplicates; the joiner now keeps the history length of a forgotten delta session."""
    joiner = SessionJoiner(idle_timeout_s=300)
    closed = feed(joiner, exchange("s", [user("hi")], assistant("hello")), now=0)
    closed += feed(joiner, exchange("s", [user("and the weather?")], assistant("sunny")), now=10)
    closed += joiner.close_idle(now=400)
    closed += feed(joiner, exchange("s", [user("back again")], assistant("welcome back")),
                   now=1000)
    closed += feed(joiner, exchange("s", [user("thanks")], assistant("bye")), now=1010)
    closed += joiner.close_all()
    assert [(i.interaction_id, len(i.context)) for i in closed] == [
        ("s#1", 1), ("s#3", 3), ("s#5", 1), ("s#7", 3)]  # (the history before s#5: not held)
    assert [m.content for m in closed[2].next_state] == ["thanks"]


def test_a_full_history_client_back_after_its_session_went_idle_is_numbered_by_its_record():
    """Its request holds the whole history (the same first message): numbered by it, as
    before; and a full-history session leaves nothing behind when forgotten."""
    joiner = SessionJoiner(idle_timeout_s=300)
    feed(joiner, exchange("f", [user("hi")], assistant("hello")), now=0)
    joiner.close_idle(now=400)
    assert joiner.forgotten == {}
    joiner2 = SessionJoiner(idle_timeout_s=300)  # a delta client, then the whole history
    feed(joiner2, exchange("d", [user("hi")], assistant("hello")), now=0)
    feed(joiner2, exchange("d", [user("more")], assistant("ok")), now=10)
    joiner2.close_idle(now=400)
    whole = [user("hi"), assistant("hello"), user("more"), assistant("ok"), user("again")]
    feed(joiner2, exchange("d", whole, assistant("sure")), now=1000)
    (last,) = joiner2.close_all()
    assert (last.interaction_id, len(last.context)) == ("d#5", 5)


def test_forgotten_delta_sessions_are_bounded_by_max_sessions():
    """Evicted delta sessions are remembered too, at most ``max_sessions`` of them."""
    joiner = SessionJoiner(max_sessions=3)
    for n in range(10):
        feed(joiner, exchange(f"d{n}", [user("hi")], assistant("hello")), now=n)
        feed(joiner, exchange(f"d{n}", [user("more")], assistant("ok")), now=n)
    assert len(joiner.sessions) == 3 and joiner.evictions == {"max_sessions": 7}
    assert list(joiner.forgotten) == ["d4", "d5", "d6"]  # the 7 evicted, the latest 3 kept
    assert joiner.forgotten["d6"][0] == 4  # its history: hi, hello, more, ok


def test_a_delta_session_read_again_past_where_it_was_forgotten_is_forgotten_again():
    """Read again fast after a restart, a delta client's session does not go idle where it
    did: its next record, past the one it was forgotten after, forgets it again (numbered
    on, not joined to the held context); a record rejected there changes nothing."""
    joiner = SessionJoiner(idle_timeout_s=300)
    first = [exchange("d", [user("hi")], assistant("hello")),
             exchange("d", [user("more")], assistant("ok"))]
    for offset, record in enumerate(first):
        feed(joiner, record, now=offset, position=("t", 0, offset))
    joiner.close_idle(now=400)
    for offset, record in enumerate(first):  # read again, fast: not idle this time
        feed(joiner, record, now=400, position=("t", 0, offset))
    before = joiner.sessions["d"].pending.interaction_id
    bad = exchange("d", [{"role": "wizard", "content": "?"}], assistant("hm"))
    with pytest.raises(BadRecord):
        feed(joiner, bad, now=401, position=("t", 0, 2))
    assert joiner.sessions["d"].pending.interaction_id == before == "d#3"
    closed = feed(joiner, exchange("d", [user("back again")], assistant("welcome back")),
                  now=401, position=("t", 0, 2))
    assert closed == []  # d#3 was closed as idle before, in the run read again
    (last,) = joiner.close_all()
    assert (last.interaction_id, len(last.context)) == ("d#5", 1)


def test_a_delta_clients_record_sent_twice_is_a_duplicate():
    """A delta request holds only the new messages, never the whole context: compared with
    the context, a copy of one was joined as a new delta (a bogus next state, every later id
    shifted). The same delta, response and time again is a duplicate; the user saying the
    same thing again later, answered the same, is not."""
    records = [exchange("d", [user("hi")], assistant("hello"), ts=1.0),
               exchange("d", [user("more")], assistant("ok"), ts=2.0)]
    joiner = SessionJoiner()
    for record in [*records, records[1]]:
        feed(joiner, record)
    assert joiner.duplicates == 1 and joiner.sessions["d"].pending.interaction_id == "d#3"
    later = exchange("d", [user("more")], assistant("ok"), ts=9.0)
    (closed,) = feed(joiner, later)
    assert joiner.duplicates == 1 and joiner.sessions["d"].pending.interaction_id == "d#5"
    assert [m.content for m in closed.next_state] == ["more"]


def test_a_session_forgotten_before_the_checkpoint_and_again_after_it_changes_nothing():
    """Read again after a restart, a delta session whose action was closed before the
    checkpoint (``settled``) is forgotten again: what the checkpoint kept stays as it was
    (remembered anew, it went to the newest end and pushed out a session the run not cut
    kept: that one's next record was numbered from 0 again)."""
    joiner = SessionJoiner(max_sessions=1)
    joiner.load_state_dict({"forgotten": [("s1", 8, 123, ("t", 1, 5))]})
    feed(joiner, exchange("d0", [user("hi")], assistant("hello")), position=("t", 0, 0))
    feed(joiner, exchange("d0", [user("more")], assistant("ok")), position=("t", 0, 1))
    joiner.settled.add("d0#3")
    joiner.discard("d0")
    assert dict(joiner.forgotten) == {"s1": (8, 123, ("t", 1, 5))}


def test_forgotten_delta_sessions_round_trip_through_state_dict():
    """What the checkpoint keeps of them (JSON), read back the same, also in another process
    (the first message's hash is not Python's per-process string hash)."""
    joiner = SessionJoiner(idle_timeout_s=1)
    feed(joiner, exchange("d", [user("hi")], assistant("hello")), position=("t", 2, 7))
    feed(joiner, exchange("d", [user("more")], assistant("ok")), position=("t", 2, 8))
    joiner.close_idle(now=10)
    state = json.loads(json.dumps(joiner.state_dict()))
    again = SessionJoiner()
    again.load_state_dict(state)
    assert again.forgotten == joiner.forgotten and again.forgotten["d"][2] == ("t", 2, 8)
    code = ("from nextstate.daemon.join import _message_hash; "
            "from nextstate.extractors.types import Message; "
            "print(_message_hash(Message('user', 'hi')))")
    import os
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={**os.environ, "PYTHONHASHSEED": "random"})
    assert int(out.stdout) == joiner.forgotten["d"][1]
    assert again.drop_partitions([("t", 2)]) == 0 and not again.forgotten


def test_session_count_is_bounded():
    """Past max_sessions the least recently seen session is evicted and counted."""
    joiner = SessionJoiner(max_sessions=2)
    for name in "abc":
        feed(joiner, exchange(name, [user("q")], assistant("x")))
    assert list(joiner.sessions) == ["b", "c"] and joiner.evicted == 1


# -- lazily decoded requests (ingest.decode_records): only the new messages are decoded ---------

def _serialize(record: dict, rnd) -> bytes:
    """The record as a client may log it: other whitespace or key order than the last time."""
    style = rnd.choice(["plain", "plain", "compact", "indent", "reversed"])
    if style == "compact":
        return json.dumps(record, separators=(",", ":")).encode()
    if style == "indent":
        return json.dumps(record, indent=1).encode()
    if style == "reversed":
        def flip(value):
            if isinstance(value, dict):
                return {k: flip(v) for k, v in reversed(value.items())}
            return [flip(v) for v in value] if isinstance(value, list) else value
        return json.dumps(flip(record)).encode()
    return json.dumps(record).encode()


def _client_records(rnd) -> list[dict]:
    """Call logs of two interleaved sessions with retries, regenerations, edited and trimmed
    histories, malformed and unknown-role messages."""
    records = []
    for sid in ("a", "b"):
        history = [{"role": "system", "content": "sys"}, user(f"hi {sid}")]
        for turn in range(rnd.randint(1, 5)):
            call = assistant(calls=[(f"c{turn}", "search", {"q": turn})])
            response = call if rnd.random() < 0.5 else assistant(f"answer {turn}")
            record = exchange(sid, history, response)
            variant = rnd.random()
            if variant < 0.1:
                records.append(record)  # retried: the same record twice
            elif variant < 0.2:
                records.append(exchange(sid, history, assistant("regenerated")))
            elif variant < 0.3 and len(history) > 2:
                edited = json.loads(json.dumps(record))
                edited["request"]["messages"][1]["content"] = "edited"
                record = edited
            elif variant < 0.4 and len(history) > 2:
                record = exchange(sid, history[:1] + history[2:], response)  # trimmed
            elif variant < 0.45:
                bad = json.loads(json.dumps(record))
                bad["request"]["messages"][0]["content"] = 42
                records.append(bad)
            elif variant < 0.5:
                odd = json.loads(json.dumps(record))
                odd["request"]["messages"][-1]["role"] = "wizard"
                records.append(odd)
            records.append(record)
            history = [*history, response]
            history.append(tool(f"c{turn}", f"result {turn}") if response is call
                           else user(f"next {turn}"))
    rnd.shuffle(records)  # sessions interleave; each session's order is kept by a stable sort
    records.sort(key=lambda r: r["session_id"])
    return records


def _outputs(values: list[bytes], lazy: bool) -> list:
    joiner = SessionJoiner()
    out = []
    for offset, value in enumerate(values):
        try:
            if lazy:
                decoded = ingest.decode_records(value, None, joiner)
            else:
                record = wire.decode(value)
                decoded = [(record, wire.classify(record))]
            closed = []
            for record, shape in decoded:
                closed += joiner.feed(record, shape, 0.0, ("t", 0, offset), len(value))
            out.append(closed)
        except BadRecord as exc:
            out.append(exc.reason)
    out.append(joiner.close_all())
    return out


@settings(max_examples=80, deadline=None)
@given(st.randoms(use_true_random=False))
def test_lazy_decoding_joins_exactly_as_a_full_decode(rnd):
    """Whether a request's history is byte-equal to the last one's (decoded lazily) or not
    (re-serialized, edited, trimmed, retried, malformed), the join closes the same
    interactions and rejects the same records as with every message decoded."""
    values = [_serialize(record, rnd) for record in _client_records(rnd)]
    full = _outputs(values, lazy=False)
    assert _outputs(values, lazy=True) == full
    with pytest.MonkeyPatch.context() as patch:  # ingest cuts out every known request
        patch.setattr(ingest, "_MIN_SPLICE", 2)
        assert _outputs(values, lazy=True) == full


def test_ingest_cuts_out_the_bytes_the_joiner_holds():
    """The joiner lends ingest its sessions' request bytes: a session's later records arrive
    with those bytes never scanned, and join as fully decoded ones do."""
    history = [SYSTEM, user("x" * ingest._MIN_SPLICE)]  # long enough to be worth cutting
    values = []
    for n in range(4):
        values.append(line(exchange("s", history, assistant(f"answer {n}"))))
        history = [*history, assistant(f"answer {n}"), user(f"more {n}")]
    joiner, kinds = SessionJoiner(), []
    for value in values:
        for record, shape in ingest.decode_records(value, None, joiner):
            kinds.append(type(record.request.messages).__name__)
            joiner.feed(record, shape, 0.0)
    assert kinds == ["Raw", "SplicedArray", "SplicedArray", "SplicedArray"]
    assert _outputs(values, lazy=True) == _outputs(values, lazy=False)


def test_a_numeric_session_id_is_the_session_of_its_decimal_string():
    """``"session_id": 42`` (a database key) was a ``schema`` dead letter; now it is the
    session ``"42"``: its exchanges, feedback and end join as with the string id, and the
    known request bytes are still cut out of its later records."""
    history = [SYSTEM, user("x" * ingest._MIN_SPLICE)]
    records = []
    for n in range(3):
        records.append(exchange("42", history, assistant(f"answer {n}")))
        history = [*history, assistant(f"answer {n}"), user(f"more {n}")]
    records += [{"type": "feedback", "session_id": "42", "value": 1},
                {"type": "session_end", "session_id": "42", "outcome": 1.0}]

    def joined(session_id):
        joiner, kinds, closed = SessionJoiner(), [], []
        for record in records:
            value = line({**record, "session_id": session_id})
            for decoded, shape in ingest.decode_records(value, None, joiner):
                if shape == "openai_exchange":
                    kinds.append(type(decoded.request.messages).__name__)
                closed += joiner.feed(decoded, shape, 0.0)
        return kinds, closed

    kinds, closed = joined(42)
    assert kinds == ["Raw", "SplicedArray", "SplicedArray"]
    assert closed == joined("42")[1] and [i.session_id for i in closed] == ["42"] * 3
    assert [i.closed_by for i in closed] == ["next_state", "next_state", "session_end"]
    for not_an_id in (4.2, True, [42]):
        with pytest.raises(BadRecord, match="session_id"):
            ingest.decode_records(line({**records[0], "session_id": not_an_id}), None)


def test_a_spliced_request_joins_as_its_bytes_do():
    """The short path trusts a spliced request's decoded messages only when it was cut at
    the very bytes the session holds: with other bytes lent (equal or not) it reads the
    array's bytes, and either way the session ends up holding what a Raw request leaves."""
    history = [SYSTEM, user("x" * 64)]
    values = []
    for n in range(3):
        values.append(line(exchange("s", history, assistant(f"answer {n}"))))
        history = [*history, assistant(f"answer {n}"), user(f"more {n}")]
    results = {}
    for lend in ("same", "copy", "raw"):
        joiner, closed = SessionJoiner(), []
        for value in values:
            ((record, shape),) = ingest.decode_records(value, None)
            held = joiner.sessions["s"].known_bytes if "s" in joiner.sessions else None
            if held is not None and lend != "raw":
                array = bytes(record.request.messages)
                comma = array.index(b",", len(held))
                prefix = held if lend == "same" else bytes(bytearray(held))
                start = value.index(array)
                spliced = wire.SplicedArray(value, start, start + len(array), prefix,
                                            wire.decode_messages(b"[" + array[comma + 1:]))
                record = msgspec.structs.replace(record, request=msgspec.structs.replace(
                    record.request, messages=spliced))
            closed += joiner.feed(record, shape, 0.0)
        results[lend] = (closed, joiner.sessions["s"].known_bytes,
                         joiner.sessions["s"].known_count, joiner.pending_bytes)
    assert results["same"] == results["copy"] == results["raw"]
    assert len(results["raw"][0]) == 2


def test_a_spliced_tail_is_what_the_short_path_joins():
    """The short path joins the messages ingest decoded after the held bytes (a tail that
    disagrees with the bytes shows it), not a decode of its own."""
    history = [SYSTEM, user("x" * 64)]
    first = line(exchange("s", history, assistant("a")))
    second = line(exchange("s", [*history, assistant("a"), user("b")], assistant("c")))
    joiner = SessionJoiner()
    for record, shape in ingest.decode_records(first, None):
        joiner.feed(record, shape, 0.0)
    held = joiner.sessions["s"].known_bytes
    ((record, shape),) = ingest.decode_records(second, None)
    array = bytes(record.request.messages)
    start = second.index(array)
    tail = [wire.WireMessage("assistant", "a"), wire.WireMessage("user", "other")]
    spliced = wire.SplicedArray(second, start, start + len(array), held, tail)
    record = msgspec.structs.replace(record, request=msgspec.structs.replace(
        record.request, messages=spliced))
    (closed,) = joiner.feed(record, shape, 0.0)
    assert [m.content for m in closed.next_state] == ["other"]


def test_equal_content_in_other_bytes_is_decoded_and_joined_the_same():
    """A history re-sent with other key order and whitespace is decoded again (bytes differ)
    and gives the same interaction as the byte-equal history."""
    call = assistant(calls=[("c1", "search", {"q": "x"})])
    first = exchange("s", [user("find x")], call)
    second = exchange("s", [user("find x"), call, tool("c1", "found")], assistant("done"))
    results = []
    for dumps in (json.dumps, lambda r: json.dumps(r, indent=2, sort_keys=True)):
        joiner = SessionJoiner()
        for value in (json.dumps(first).encode(), dumps(second).encode()):
            for record, shape in ingest.decode_records(value, None):
                results.append(joiner.feed(record, shape, 0.0))
        assert joiner.sessions["s"].known_bytes is not None
        results.append(joiner.close_all())
    assert results[:3] == results[3:]
    assert [i.interaction_id for i in results[1] + results[2]] == ["s#1", "s#3"]


def test_malformed_message_in_a_repeated_history_is_still_rejected():
    """A message that is not a message is a schema error even when the rest of the history
    is byte-equal to what the session already holds."""
    history = [user("hi")]
    joiner = SessionJoiner()
    for record, shape in ingest.decode_records(line(exchange("s", history, assistant("a"))),
                                               None):
        joiner.feed(record, shape, 0.0)
    bad = exchange("s", [*history, assistant("a"), {"role": "user", "content": 42}],
                   assistant("b"))
    with pytest.raises(BadRecord) as info:
        for record, shape in ingest.decode_records(line(bad), None):
            joiner.feed(record, shape, 0.0)
    assert info.value.reason == "schema"


def test_changed_bytes_in_a_repeated_history_are_checked_again():
    """A held message replaced by a malformed one of the same length is rejected: only
    byte-equal history skips the check."""
    joiner = SessionJoiner()
    first = exchange("s", [user("hi")], assistant("a"))
    for record, shape in ingest.decode_records(line(first), None):
        joiner.feed(record, shape, 0.0)
    swapped = line(exchange("s", [user("hi"), assistant("a"), user("more")], assistant("b")))
    swapped = swapped.replace(b'"content": "hi"', b'"content": 1234', 1)
    with pytest.raises(BadRecord) as info:
        for record, shape in ingest.decode_records(swapped, None):
            joiner.feed(record, shape, 0.0)
    assert info.value.reason == "schema"


def test_closed_interaction_carries_every_field_of_its_action():
    """An exchange's interaction holds its ids, model, version, log-probs, usage, time and
    shape in the fields of those names (the join builds it positionally)."""
    record = exchange("s", [user("hi")], assistant("hello"), model="m", policy_version=3,
                      ts=1_700_000_000, usage={"prompt_tokens": 5, "completion_tokens": 2})
    record["response"]["choices"][0]["logprobs"] = {"content": [{"logprob": -0.25}]}
    joiner = SessionJoiner()
    feed(joiner, record)
    feed(joiner, {"type": "feedback", "session_id": "s", "value": "up"})
    (closed,) = feed(joiner, {"type": "session_end", "session_id": "s", "outcome": 1.0})
    assert closed == Interaction(
        interaction_id="s#1", session_id="s", context=(Message("user", "hi"),),
        action=Message("assistant", "hello"), next_state=(), closed_by="session_end",
        feedback=(Feedback(1.0),), outcome=1.0, model="m", policy_version="3",
        behaviour_logprobs=(-0.25,), usage=Usage(5, 2, 0), ts=1_700_000_000.0,
        shape="openai_exchange")


# -- retries, regenerations, edits: duplicates and branches ---------------------------------
SYSTEM = {"role": "system", "content": "sys"}
CALL = assistant(calls=[("c1", "search", {"q": "x"})])


def contents(messages) -> list:
    return [m.content or m.role for m in messages]


def test_exact_duplicate_of_the_pending_exchange_is_ignored_and_counted():
    """The same record delivered twice closes nothing, and the next one joins as usual."""
    first = exchange("s", [SYSTEM, user("hi")], CALL)
    joiner = SessionJoiner()
    assert feed(joiner, first) == []
    assert feed(joiner, first) == []
    assert joiner.duplicates == 1
    (closed,) = feed(joiner, exchange("s", [SYSTEM, user("hi"), CALL, tool("c1", "r")],
                                      assistant("done")))
    assert closed.closed_by == "next_state" and contents(closed.next_state) == ["r"]
    (last,) = joiner.close_all()
    assert contents(last.context) == ["sys", "hi", "assistant", "r"]


def test_duplicate_of_the_exchange_closed_last_is_ignored():
    """A record delivered again after the next one does not disturb the pending action."""
    first = exchange("s", [SYSTEM, user("hi")], assistant("hello"))
    joiner = SessionJoiner()
    feed(joiner, first)
    feed(joiner, exchange("s", [SYSTEM, user("hi"), assistant("hello"), user("more")],
                          assistant("sure")))
    assert feed(joiner, first) == []
    assert joiner.duplicates == 1
    (last,) = joiner.close_all()
    assert last.action.content == "sure" and last.interaction_id == "s#4"


def test_regenerated_response_supersedes_the_pending_action():
    """The same request with another response (a retry after a discarded answer) closes the
    pending action as superseded with no next state; the context is the request, not grown."""
    history = [SYSTEM, user("hi")]
    joiner = SessionJoiner()
    feed(joiner, exchange("s", history, assistant("first try")))
    (superseded,) = feed(joiner, exchange("s", history, assistant("second try")))
    assert superseded.closed_by == "superseded" and superseded.next_state == ()
    assert superseded.action.content == "first try" and superseded.interaction_id == "s#2"
    assert joiner.duplicates == 0
    # The first record delivered again after the regeneration is a duplicate; another
    # response to the same request supersedes the second try.
    assert feed(joiner, exchange("s", history, assistant("first try"))) == []
    assert joiner.duplicates == 1
    (again,) = feed(joiner, exchange("s", history, assistant("third try")))
    assert again.closed_by == "superseded" and again.action.content == "second try"
    (closed,) = feed(joiner, exchange("s", [*history, assistant("third try"), user("ok")],
                                      assistant("bye")))
    assert closed.closed_by == "next_state" and contents(closed.next_state) == ["ok"]
    assert contents(closed.context) == ["sys", "hi"]


def test_edited_earlier_turn_is_a_branch_with_the_request_as_context():
    """A history that keeps the first messages and changes a later one starts a new branch."""
    joiner = SessionJoiner()
    feed(joiner, exchange("s", [SYSTEM, user("hi")], CALL))
    feed(joiner, exchange("s", [SYSTEM, user("hi"), CALL, tool("c1", "r")],
                          assistant("found r")))
    (superseded,) = feed(joiner, exchange("s", [SYSTEM, user("hi, in French")],
                                          assistant("bonjour")))
    assert superseded.closed_by == "superseded" and superseded.next_state == ()
    assert superseded.action.content == "found r"
    (last,) = joiner.close_all()
    assert contents(last.context) == ["sys", "hi, in French"]
    assert last.interaction_id == "s#2"


@pytest.mark.parametrize(("history", "action", "request_", "branch"), [
    # No system prompt: the first user message resent alone is the same request again.
    ([user("hi")], assistant("a"), [user("hi")], True),
    # The first two messages repeated: an edit of a later turn.
    ([user("hi"), assistant("a"), user("more")], assistant("b"),
     [user("hi"), assistant("a"), user("less")], True),
    # After tool calls a delta starts with their results, never with the first message.
    ([user("hi"), assistant("a"), user("more")], CALL, [user("hi")], True),
    # A delta client's user saying their first message again, more having been said since.
    ([user("hi"), assistant("a"), user("more")], assistant("b"), [user("hi")], False),
    # A delta client's tool results, or a new user message.
    ([SYSTEM, user("hi")], CALL, [tool("c1", "r")], False),
    ([SYSTEM, user("hi")], assistant("a"), [user("thanks")], False),
])
def test_full_history_or_delta(history, action, request_, branch):
    """A request that does not echo the pending action is a branch when it starts with the
    context's first message and that message could not start a delta; else a delta."""
    joiner = SessionJoiner()
    feed(joiner, exchange("s", history, action))
    (closed,) = feed(joiner, exchange("s", request_, assistant("next")))
    (last,) = joiner.close_all()
    if branch:
        assert closed.closed_by == "superseded" and closed.next_state == ()
        assert contents(last.context) == contents(wire.normalize_messages(
            wire.decode(json.dumps({"session_id": "s", "messages": request_})).messages))
    else:
        assert closed.closed_by == "next_state"
        assert contents(closed.next_state) == contents(wire.normalize_messages(
            wire.decode(json.dumps({"session_id": "s", "messages": request_})).messages))
        assert len(last.context) == len(history) + 1 + len(request_)


def test_retries_do_not_grow_the_context():
    """A client retrying the same request over and over holds one history, not one per try."""
    history = [SYSTEM, user("hi")]
    joiner = SessionJoiner()
    for n in range(20):
        feed(joiner, exchange("s", history, assistant(f"try {n}")))
    (last,) = joiner.close_all()
    assert contents(last.context) == ["sys", "hi"]


def test_known_bytes_count_toward_the_pending_bytes():
    """The request bytes kept for lazy decoding are counted and bounded by max_pending_bytes."""
    value = line(exchange("s", [SYSTEM, user("hi " * 100)], assistant("hello")))
    joiner = SessionJoiner()
    for record, shape in ingest.decode_records(value, None):
        joiner.feed(record, shape, 0.0, ("t", 0, 0), len(value))
    known = joiner.sessions["s"].known_bytes
    assert known is not None and joiner.pending_bytes == len(value) + len(known)
    bounded = SessionJoiner(max_pending_bytes=len(value) + 10)
    for record, shape in ingest.decode_records(value, None):
        bounded.feed(record, shape, 0.0, ("t", 0, 0), len(value))
    assert bounded.sessions == {} and bounded.evictions == {"max_pending_bytes": 1}
    assert bounded.pending_bytes == 0


def test_a_call_log_rejected_for_its_timestamp_changes_nothing():
    """A record whose ts is not a time is rejected before the session changes: the pending
    action is still the one the next record closes."""
    history = [SYSTEM, user("hi")]
    grown = [*history, assistant("a"), user("more")]
    joiner = SessionJoiner()

    def fed(record: dict) -> list:
        return [i for r, s in ingest.decode_records(line(record), None)
                for i in joiner.feed(r, s, 0.0)]

    fed(exchange("s", history, assistant("a")))
    with pytest.raises(BadRecord, match="schema"):
        fed(exchange("s", grown, assistant("b"), ts="yesterday"))
    assert joiner.sessions["s"].last_closed is None
    (closed,) = fed(exchange("s", grown, assistant("b")))
    assert closed.action.content == "a" and contents(closed.next_state) == ["more"]

"""Tests for the per-session join of actions to next states."""

import json

import pytest

from nextstate.daemon import wire
from nextstate.daemon.join import SessionJoiner
from nextstate.daemon.wire import BadRecord
from tests.records import assistant, conversation_exchanges, exchange, tool, user


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


def test_session_count_is_bounded():
    """Past max_sessions the least recently seen session is evicted and counted."""
    joiner = SessionJoiner(max_sessions=2)
    for name in "abc":
        feed(joiner, exchange(name, [user("q")], assistant("x")))
    assert list(joiner.sessions) == ["b", "c"] and joiner.evicted == 1

"""Tests for decoding and normalizing wire records."""

import msgspec
import pytest

from nextstate.daemon import ingest, wire
from nextstate.daemon.join import SessionJoiner
from nextstate.daemon.wire import BadRecord


def test_exchange_with_parts_and_dict_arguments_normalizes():
    """Multi-part content is flattened and dict tool arguments become JSON text."""
    record = wire.decode(
        b'{"session_id":"s","request":{"messages":[{"role":"developer","content":'
        b'[{"type":"text","text":"be brief"},{"type":"image_url","image_url":{"url":"u"}}]}]},'
        b'"response":{"choices":[{"message":{"role":"assistant","content":null,"tool_calls":'
        b'[{"id":"c1","type":"function","function":{"name":"f","arguments":{"a":1}}}]},'
        b'"logprobs":{"content":[{"token":"x","logprob":-0.5}]}}]},'
        b'"usage":{"prompt_tokens":7,"completion_tokens":3,"prompt_tokens_details":'
        b'{"cached_tokens":4}}}')
    assert wire.classify(record) == "openai_exchange"
    (system,) = wire.normalize_messages(record.request.messages)
    assert system.role == "system" and system.content == "be brief\n[image_url]"
    action, logprobs = wire.response_message(record)
    assert action.tool_calls[0].arguments == '{"a":1}'
    assert logprobs == (-0.5,)
    assert wire.usage_of(record).cached_tokens == 4


def test_response_may_be_the_message_itself():
    """A response logged as the bare assistant message is accepted."""
    record = wire.decode(b'{"session_id":"s","request":{"messages":[]},'
                         b'"response":{"role":"assistant","content":"hi"}}')
    assert wire.response_message(record)[0].content == "hi"


@pytest.mark.parametrize(("raw", "reason"), [
    (b'{"session_id": ', "decode"),
    (b'{"session_id": 5}', "schema"),
    (b'{"request": {"messages": []}, "response": {}}', "no_session"),
    (b'{"session_id": "s", "type": "nonsense"}', "unknown_type"),
    (b'{"session_id": "s", "hello": 1}', "unknown_shape"),
    (b'[1, 2]', "schema"),
])
def test_bad_records_have_reasons(raw, reason):
    """Every malformed record raises BadRecord with a machine-readable reason."""
    with pytest.raises(BadRecord) as info:
        wire.classify(wire.decode(raw))
    assert info.value.reason == reason


def test_unknown_role_is_rejected():
    """A role outside OpenAI's set is a BadRecord, not a crash."""
    record = wire.decode(b'{"session_id":"s","messages":[{"role":"wizard","content":"x"}]}')
    with pytest.raises(BadRecord, match="unknown_role"):
        wire.normalize_messages(record.messages)


@pytest.mark.parametrize(("value", "score"), [
    (True, 1.0), (False, -1.0), ("thumbs_up", 1.0), ("down", -1.0), (0.25, 0.25), (5, 1.0),
    ("-0.5", -0.5),
])
def test_feedback_values_map_to_scores(value, score):
    """Thumbs, booleans and numbers map to a score in [-1, 1]."""
    assert wire.score_value(value) == score


def test_timestamps_in_seconds_millis_and_iso():
    """ts accepts seconds, milliseconds and ISO-8601."""
    assert wire.parse_ts(1_700_000_000) == 1_700_000_000
    assert wire.parse_ts(1_700_000_000_000) == 1_700_000_000
    assert wire.parse_ts("2023-11-14T22:13:20Z") == 1_700_000_000


@pytest.mark.parametrize("raw", [
    b'{"session_id": "s", "request": {"messages": [{"role": 1}]}, "response": {}}',
    b'{"request": {"messages": [{"role": 1}]}, "response": {}}',   # no session either
    b'{"session_id": "s", "type": "feedback", "value": 1, "request": {"messages": 3}}',
    b'{"session_id": "s", "request": {"messages": null}, "response": {}}',
])
def test_lazy_decoding_reports_what_a_full_decode_reports(raw):
    """ingest leaves exchange messages undecoded for the join, yet a record with a malformed
    message is rejected with the reason a full decode gives."""
    with pytest.raises(BadRecord) as full:
        wire.classify(wire.decode(raw))
    with pytest.raises(BadRecord) as lazy:
        for record, shape in ingest.decode_records(raw, None):
            SessionJoiner().feed(record, shape, 0.0)
    assert lazy.value.reason == full.value.reason == "schema"


def test_lazy_exchange_keeps_messages_as_bytes_until_decoded():
    """An OpenAI exchange from ingest holds its request messages as one msgspec.Raw array;
    wire.typed decodes it to what wire.decode gives."""
    raw = (b'{"session_id":"s","request":{"messages":[{"role":"user","content":"hi"}]},'
           b'"response":{"role":"assistant","content":"yo"}}')
    ((record, shape),) = ingest.decode_records(raw, None)
    assert shape == "openai_exchange" and isinstance(record.request.messages, msgspec.Raw)
    assert wire.typed(record) == wire.decode(raw)

"""Tests for decoding and normalizing wire records."""

import json

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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
    (b'{"session_id": 5.5}', "schema"),  # (an int is a session id: its decimal string)
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


@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-Infinity"])
def test_a_feedback_value_that_is_no_number_is_rejected(value):
    """``"nan"`` was clipped to -1.0, a confident thumbs-down; ``"inf"`` to +1.0."""
    with pytest.raises(BadRecord, match="not a score"):
        wire.score_value(value)


def test_timestamps_in_seconds_millis_micros_nanos_and_iso():
    """ts accepts seconds, milliseconds, microseconds, nanoseconds and ISO-8601 (a time in
    nanoseconds was read as milliseconds: the year 55,000, which every clock then believed)."""
    for scale in (1, 10**3, 10**6, 10**9):
        assert wire.parse_ts(1_700_000_000 * scale) == 1_700_000_000
        assert wire.parse_ts(100_000_000.5 * scale) == pytest.approx(100_000_000.5)  # 1973
    assert wire.parse_ts(0) == 0.0
    assert wire.parse_ts("2023-11-14T22:13:20Z") == 1_700_000_000


@pytest.mark.parametrize("ts", [-1, float("nan"), float("inf"), 1e20])
def test_a_timestamp_that_is_no_time_is_rejected(ts):
    with pytest.raises(BadRecord, match="ts is not a time"):
        wire.parse_ts(ts)


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


# -- ingest cuts the known request bytes out before decoding -----------------------------------

class Known:
    """A KnownRequests source holding one session's bytes."""

    def __init__(self, session_id: str, prefix: bytes | None) -> None:
        self.session_id, self.prefix = session_id, prefix

    def known_request(self, session_id: str) -> bytes | None:
        return self.prefix if session_id == self.session_id else None


def _messages(n: int) -> list[dict]:
    return [{"role": "user" if i % 2 == 0 else "assistant", "content": f"message {i} " * 40}
            for i in range(n)]


def _exchange_bytes(messages: list, **extra) -> bytes:
    return json.dumps({"session_id": "s", **extra, "request": {"messages": messages},
                       "response": {"role": "assistant", "content": "ok"}}).encode()


def _array_prefix(messages: list) -> bytes:
    """What the join keeps of a request: its array's bytes without the closing bracket."""
    return json.dumps(messages).encode()[:-1]


def _plain(value: bytes, key: bytes | None = None, known=None) -> object:
    """decode_records' result with the request messages as bytes (Raw or spliced alike), or
    the reason it raised."""
    try:
        out = []
        for record, shape in ingest.decode_records(value, key, known=known):
            if record.request is not None and isinstance(record.request.messages,
                                                          (bytes, msgspec.Raw,
                                                           wire.SplicedArray)):
                record = msgspec.structs.replace(record, request=msgspec.structs.replace(
                    record.request, messages=bytes(record.request.messages)))
            out.append((record, shape))
        return out
    except BadRecord as exc:
        return exc.reason


@pytest.fixture
def splice_small(monkeypatch):
    """Records of any size are spliced (the threshold is for speed only)."""
    monkeypatch.setattr(ingest, "_MIN_SPLICE", 2)


def test_known_request_bytes_are_cut_out_and_the_record_is_the_same(splice_small):
    """A request that repeats the known bytes decodes to the same record as a full scan, its
    messages the array's bytes (not a Raw: the known ones were never scanned), with the
    messages after the known ones decoded."""
    history = _messages(6)
    value = _exchange_bytes([*history, {"role": "user", "content": "new"}], ts=3,
                            metadata={"a": [1, {"b": None}]})
    known = Known("s", _array_prefix(history))
    ((record, _),) = ingest.decode_records(value, None, known=known)
    assert type(record.request.messages) is wire.SplicedArray
    assert record.request.messages.tail == [wire.WireMessage("user", "new")]
    assert _plain(value, known=known) == _plain(value)
    compact = value.replace(b'"session_id": "s"', b'"session_id":"s"', 1)  # read either way
    assert type(ingest.decode_records(compact, None, known=known)[0][0].request.messages) \
        is wire.SplicedArray
    keyed = value.replace(b'"session_id": "s", ', b"")
    assert type(ingest.decode_records(keyed, b"s", known=known)[0][0].request.messages) \
        is wire.SplicedArray
    assert _plain(keyed, b"s", known=known) == _plain(keyed, b"s")


@pytest.mark.parametrize("variant", [
    "metadata_first",       # the known bytes first appear in another field
    "nonce_in_content",     # the record holds the splice mark's string itself
    "nonce_and_metadata",   # both: the request array starts with the mark's string
    "spaced_comma",         # whitespace between the known messages and the comma
    "no_comma",             # the known bytes are the whole array
    "other_session",        # another session's bytes, which this request also starts with
    "truncated",            # the record ends right after the known bytes
    "malformed_tail",       # a bad message after the known ones
    "empty_prefix",         # "[": no value, so "[ ," would be cut to valid JSON
])
def test_a_splice_that_cannot_be_proved_gives_what_a_full_scan_gives(splice_small, variant):
    """Wherever the known bytes are found, whatever follows them, the record (or the reason
    it is rejected) is what decoding it whole gives."""
    from nextstate.daemon import ingest as ingest_module

    history = _messages(4)
    prefix = _array_prefix(history)
    new = {"role": "user", "content": "new"}
    nonce = ingest_module._NONCE.decode()
    key = None
    if variant == "metadata_first":
        # "messages" first occurs inside metadata, there followed by the known bytes and a
        # comma; the request's own array is another one.
        value = (b'{"session_id": "s", "metadata": {"messages": ' + prefix + b', 1]}, '
                 b'"request": {"messages": [{"role": "user", "content": "x"}]}, '
                 b'"response": {"role": "assistant", "content": "ok"}}')
    elif variant == "nonce_in_content":
        value = _exchange_bytes([*history, {"role": "user", "content": nonce}])
    elif variant == "nonce_and_metadata":
        value = (b'{"session_id": "s", "metadata": {"messages": ' + prefix + b', 1]}, '
                 b'"request": {"messages": ["' + nonce.encode() + b'", 1]}, '
                 b'"response": {"role": "assistant", "content": "ok"}}')
    elif variant == "spaced_comma":
        value = _exchange_bytes([*history, new]).replace(prefix + b", ", prefix + b" \n , ")
    elif variant == "no_comma":
        value = _exchange_bytes(history)
    elif variant == "other_session":
        value, key = _exchange_bytes([*history, new]).replace(b'"s"', b'"t"', 1), None
        prefix_source = Known("t", prefix)
    elif variant == "truncated":
        value = _exchange_bytes([*history, new])
        value = value[:value.index(prefix) + len(prefix)]
    elif variant == "malformed_tail":
        value = _exchange_bytes([*history, {"role": 5}])
    else:  # "[ ," is not JSON, "[" + MARK + "," would be
        value, prefix = _exchange_bytes([new]).replace(b"[{", b"[ , {", 1), b"["
    known = prefix_source if variant == "other_session" else Known("s", prefix)
    assert _plain(value, key, known=known) == _plain(value, key)
    if variant in ("spaced_comma", "other_session"):  # these are proved, and spliced
        assert type(ingest.decode_records(value, key, known=known)[0][0].request.messages) \
            is wire.SplicedArray
    if variant == "malformed_tail":
        with pytest.raises(BadRecord) as info:
            for record, shape in ingest.decode_records(value, None, known=known):
                SessionJoiner().feed(record, shape, 0.0)
        assert info.value.reason == "schema"


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_spliced_decoding_equals_a_full_scan_for_any_known_bytes(data):
    """For any record and any known bytes (an array of messages cut after any of them, in any
    serialization, this request's or another's), decode_records gives what it gives without
    them."""
    texts = st.one_of(st.text(alphabet=st.sampled_from('ab "\\[],{}:@~^|\n'), max_size=12),
                      st.just(ingest._NONCE.decode()))
    message = st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "wizard"]),
                                     "content": st.one_of(st.none(), texts, st.integers())})
    messages = data.draw(st.lists(message, min_size=1, max_size=6))
    indent = data.draw(st.sampled_from([None, 1]))
    extra = data.draw(st.sampled_from([{}, {"metadata": {"messages": messages}},
                                       {"ts": "bad"}, {"type": "feedback"}]))
    value = json.dumps({"session_id": "s", **extra, "request": {"messages": messages},
                        "response": {"role": "assistant", "content": "ok"}},
                       indent=indent).encode()
    held = data.draw(st.one_of(st.just(messages), st.lists(message, min_size=1, max_size=6)))
    cut = data.draw(st.integers(1, len(held)))
    prefix = json.dumps(held[:cut], indent=data.draw(st.sampled_from([None, 1]))).encode()
    prefix = prefix[:-1].rstrip()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ingest, "_MIN_SPLICE", 2)
        assert _plain(value, known=Known("s", prefix)) == _plain(value)


@pytest.mark.parametrize("usage", [{"prompt_tokens": -5}, {"completion_tokens": -1},
                                   {"prompt_tokens_details": {"cached_tokens": -2}},
                                   {"input_tokens": -3, "output_tokens": 1}])
def test_a_negative_token_count_is_rejected(usage):
    """A negative count made the token counters go down (a Prometheus counter reset)."""
    record = {"session_id": "s", "request": {"messages": [{"role": "user", "content": "x"}]},
              "response": {"role": "assistant", "content": "y"}, "usage": usage}
    with pytest.raises(BadRecord, match="Expected `int` >= 0"):
        ingest.decode_records(json.dumps(record).encode(), None)


def _js_stringify(text: str) -> str:
    """``text`` as JavaScript's JSON.stringify writes it: a lone surrogate as an escape
    (Python's json.dumps does the same)."""
    return json.dumps(text)


def test_a_lone_surrogate_escape_is_read_as_the_replacement_character(tmp_path):
    """A tool output cut inside an emoji by a JavaScript agent (``"\\ud83d"`` with no low half)
    is valid JSON grammar but no text: msgspec rejected the record, and in a call log every
    later request repeats it, so the session's records were dead letters from there on. Now
    the lone half reads as U+FFFD and the session joins; paired halves, escaped backslashes
    and records bad for another reason are as before."""
    from nextstate.daemon.config import load_config
    from nextstate.daemon.pipeline import Pipeline
    from tests.daemon.test_pipeline import weather_session
    from tests.records import line

    cut = "Error: HTTP 500 \U0001F600"[:-1] + "\ud83d"  # what a UTF-16 slice leaves
    records = [line(r) for r in weather_session("s", "placeholder")]
    records = [r.replace(b'"placeholder"', _js_stringify(cut).encode()) for r in records]
    assert b"\\ud83d\"" in records[1]
    with pytest.raises(msgspec.DecodeError):
        wire.LAZY_DECODER.decode(records[1])
    pipeline = Pipeline(load_config(None, state_dir=str(tmp_path / "state"),
                                    extractors=["tool"]))
    for offset, value in enumerate(records):
        pipeline.process(value, None, "t", 0, offset)
    pipeline.finish()
    pipeline.write_pending()
    assert pipeline.stats.total("dead_letters") == 0
    assert pipeline.stats.total("interactions") == 3
    (scored,) = [t for b in pipeline.buffers.buffers.values() for t in b.iter_tuples()
                 if t.kind == "evaluative"]
    assert scored.reward < 0 and "\ufffd" in scored.next_state_excerpt
    pipeline.close()

    paired = b'"a \\ud83d\\ude00 b \\\\ud800 c"'  # an emoji, then the text \ud800
    assert wire.without_lone_surrogates(paired) is None
    assert wire.without_lone_surrogates(b'"\\udc00 \\uD83D"') == b'"\\ufffd \\ufffd"'
    with pytest.raises(BadRecord, match="malformed"):  # bad for another reason as well
        ingest.decode_records(records[1][:-1] + b"\\ud800", None)


def test_a_lone_surrogate_in_an_otlp_span_is_read_as_the_replacement_character():
    """The same in OpenTelemetry spans: in a plain attribute (a tool's result) the whole
    batch did not decode; in a GenAI messages attribute (JSON text in a string) its span
    was rejected."""
    from tests.daemon.test_otel import _kv, _span

    chat = _span("chat", "a" * 32, 1)
    messages = json.dumps([{"role": "user", "parts": [{"type": "text", "content": "\ud83d"}]}])
    chat["attributes"][1] = _kv("gen_ai.input.messages", messages)
    tool = _span("tool", "b" * 32, 2)
    tool["attributes"][2] = _kv("gen_ai.tool.call.result", "cut \ud83d")
    batch = ingest.decode_records(json.dumps({"resourceSpans": [{"scopeSpans": [
        {"spans": [chat, tool]}]}]}).encode(), None)
    assert batch.rejected == []
    (exchange, _), (result, _) = batch
    assert wire.typed(exchange).request.messages[0].content == "\ufffd"
    assert result.messages[0].content == "cut \ufffd"

"""Tests for the tool-result extractor."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nextstate.extractors import tool
from nextstate.extractors.tool import ToolResultExtractor, classify_tool_result


@pytest.mark.parametrize(("text", "label"), [
    ("Error: missing required argument 'date'", "schema"),
    ("Unknown tool: get_wether", "unknown_tool"),
    ("Traceback (most recent call last):\n  File 'x'\nKeyError: 'id'", "exception"),
    ('{"error": {"message": "rate limited"}}', "error_payload"),
    ('{"status": 503, "body": ""}', "http_error"),
    ("HTTP 404 Not Found", "http_error"),
    ("Request timed out after 30 s", "timeout"),
    ("[]", "empty"),
    ("No results found.", "empty"),
    ('{"results": []}', "empty"),
    ('{"temp_c": 11, "error": null}', "success"),
    ("Top results:\n1. How to fix 'TypeError: x is undefined' in React", "success"),
])
def test_classify_tool_result(text: str, label: str) -> None:
    """Results are classified by structure (JSON) or by how their text starts."""
    assert classify_tool_result(text)[0] == label


def test_schema_error_gives_a_tool_args_hint(tool_step) -> None:
    """A schema error yields a negative reward on the tool args and a directive hint."""
    tuples = ToolResultExtractor()(tool_step("get_weather",
                                             "Error: missing required argument 'date'"))
    assert [t.kind for t in tuples] == ["evaluative", "directive"]
    assert tuples[0].reward < 0 and tuples[0].credit == "tool_args"
    assert "missing required argument 'date'" in (tuples[1].hint or "")


def test_terminal_and_gui_tools_are_skipped_by_default(tool_step) -> None:
    """The tool extractor leaves bash and browser results to their own extractors."""
    assert ToolResultExtractor()(tool_step("bash", "Error: boom")) == []
    assert ToolResultExtractor()(tool_step("browser", "Error: boom")) == []
    assert ToolResultExtractor(ignore_tools=[])(tool_step("bash", "Error: boom"))


def test_success_is_weakly_positive(tool_step) -> None:
    """A plain successful result gives a positive, low-confidence reward."""
    (scored,) = ToolResultExtractor()(tool_step("search", "Oslo: 11 C, cloudy"))
    assert scored.reward > 0 and scored.confidence < 0.8


_SAMPLES = [
    "Error: missing required argument 'day'", "ValueError: invalid value for 'time': expected "
    "HH:MM, got '5 pm'", "TimeoutError: search backend timed out after 30s",
    "Error: unknown tool 'create_events'", "1. Setting up the SDK (docs/sdk.md)\n2. Auth",
    '{"error": "HTTP 503 Service Unavailable", "retry_after": 3}', "404 Not Found",
    "Did you mean 'search_docs'?", "'date' is a required property", "Allowed values are: a, b",
    "tool weather does not exist", "3 failed, 2 passed", "partially failed", "DEADLINE EXCEEDED",
    "status code: 500", "requests.exceptions.errors.Timeout: x", "FATAL= disk", "ok",
    "Traceback (most recent call last):", "miſſing required argument", "UNKNOWN TOOL 'x'",
    "\u212aey missing", "Status: 403", "must be one of x, y", "Validation Error in field",
]


@given(st.one_of(st.sampled_from(_SAMPLES),
                 st.lists(st.sampled_from([*_SAMPLES, "", " ", "\n", "é", "x"]), max_size=4)
                 .map("".join),
                 st.text(max_size=60)))
@settings(max_examples=400, deadline=None)
def test_gated_patterns_equal_the_plain_scans(text):
    """Skipping the patterns whose needles are absent never changes the first match."""
    plain = next(((label, r, c) for label, p, r, c in tool._ERROR_PATTERNS if p.search(text)),
                 None)
    assert tool._classify_text(text) == plain
    hint = next((m for p in tool._EXPECTED_HINTS if (m := p.search(text))), None)
    gated = tool._expected_hint(text)
    assert (gated and (gated.re, gated.span())) == (hint and (hint.re, hint.span()))


def _classify_json_reference(data):
    """``tool._classify_json`` without its no-key fast path: every check on every object."""
    if data is None or data == "" or data == [] or data == {}:
        return "empty", -0.3, 0.6
    if not isinstance(data, dict):
        return ("success", 0.5, 0.7) if isinstance(data, list) else None
    for key in tool._ERROR_KEYS:
        value = data.get(key)
        if value:
            detail = value if isinstance(value, str) else msgspec.json.encode(value).decode()
            return tool._classify_text(detail[:tool._HEAD_CHARS]) or ("error_payload", -0.8,
                                                                     0.85)
    for key in ("status", "status_code", "statusCode", "code"):
        value = data.get(key)
        if isinstance(value, int) and 400 <= value < 600:
            return "http_error", -0.7, 0.85
        if key == "status" and isinstance(value, str) and value.lower() in tool._ERROR_STATUSES:
            return "error_payload", -0.8, 0.85
    if data.get("ok") is False or data.get("success") is False:
        return "error_payload", -0.8, 0.85
    present = [k for k in tool._EMPTY_KEYS if k in data]
    if present and all(not data[k] for k in present):
        return "empty", -0.3, 0.6
    return "success", 0.5, 0.7


_JSON_KEYS = st.sampled_from([*sorted(tool._READ_KEYS), "city", "temp_c", "Error", "ok "])
_JSON_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-1, 700), st.sampled_from(
    ["", "error", "FAILED", "ok", "HTTP 503", "missing required argument 'x'"]),
    st.just([]), st.just({}), st.just([1]), st.just({"message": "boom"}))


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.dictionaries(_JSON_KEYS, _JSON_VALUES, max_size=4), _JSON_VALUES))
def test_classify_json_fast_path_equals_every_check(data) -> None:
    """An object with none of the keys read is a success, as the full checks conclude."""
    assert tool._classify_json(data) == _classify_json_reference(data)


_RESULTS = [*_SAMPLES, "[]", "", "  ", "null", '{"city": "Oslo", "temp_c": 3}',
            '{"error": "HTTP 503 Service Unavailable"}', '{"results": [], "status": "ok"}',
            "Error: missing required argument 'day'. Expected one of: a, b", "x" * 40]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.lists(st.sampled_from(["get_weather", "search", "bash"]),
                                   min_size=1, max_size=3),
                          st.lists(st.sampled_from(_RESULTS), min_size=1, max_size=3)),
                min_size=1, max_size=8),
       st.integers(1, 4))
def test_memoized_readings_encode_like_fresh_ones(steps, entries) -> None:
    """Whatever results recur (through a memo small enough to evict), the tuples encode
    exactly as an unmemoized extractor's and as the plain reading of each result says."""
    from nextstate.extractors.types import Interaction, Message, ToolCall

    memo = ToolResultExtractor(memo_entries=entries)
    fresh = ToolResultExtractor(memo_chars=-1)
    for names, results in steps:
        calls = tuple(ToolCall(f"c{k}", name, "{}") for k, name in enumerate(names))
        next_state = tuple(Message("tool", text, tool_call_id=f"c{k}")
                           for k, text in enumerate(results))
        interaction = Interaction("s#1", "s", (Message("user", "go"),),
                                  Message("assistant", tool_calls=calls), next_state)
        got = memo(interaction)
        assert msgspec.msgpack.encode(got) == msgspec.msgpack.encode(fresh(interaction))
        assert len(memo._readings) <= entries
        if got and len(calls) == 1 and calls[0].name != "bash":
            label, reward, confidence = classify_tool_result(next_state[0].content)
            assert (got[0].reward, got[0].confidence) == (reward, confidence)
            assert got[0].next_state_excerpt.startswith(f"[{calls[0].name}] {label}: ")
            match = (tool._expected_hint(next_state[0].content[:4000])
                     if reward < 0 and label != "empty" else None)
            hints = [f"The call to {calls[0].name} failed: {match.group(0).strip()}."
                     ] if match else []
            assert [t.hint for t in got[1:]] == hints

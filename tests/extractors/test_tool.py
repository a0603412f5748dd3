"""Tests for the tool-result extractor."""

from __future__ import annotations

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

"""Tests for the tool-result extractor."""

from __future__ import annotations

import pytest

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

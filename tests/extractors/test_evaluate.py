"""Tests for the evaluation command and the labeled data sets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nextstate.extractors.evaluate import (
    DEFAULT_EXTRACTORS,
    auroc,
    hint_matches,
    interactions_from_messages,
    main,
    score_items,
)
from nextstate.extractors.registry import build_extractors

DATA = Path(__file__).parents[1] / "data"


def test_auroc() -> None:
    """AUROC is 1 for perfect separation, 0.5 for ties, 0 for reversed."""
    assert auroc([2, 3], [0, 1]) == 1.0
    assert auroc([1, 1], [1, 1]) == 0.5
    assert auroc([0], [1]) == 0.0


def test_hint_matches_content_words() -> None:
    """A hint matches when it carries most of the gold hint's content words."""
    assert hint_matches("I asked for Tuesday", "Tuesday")
    assert not hint_matches("use the imperial system", "metric system")
    assert not hint_matches(None, "Tuesday")


def test_interactions_from_messages_split_at_assistant_turns() -> None:
    """Each assistant message becomes an interaction with its context and next state."""
    messages = [{"role": "user", "content": "hi"},
                {"role": "assistant", "content": None, "tool_calls": [
                    {"id": "c1", "type": "function",
                     "function": {"name": "browser", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "c1", "name": "browser", "content": "{}"},
                {"role": "assistant", "content": "done"}]
    first, last = interactions_from_messages("s", messages)
    assert first.interaction_id == "s#1" and len(first.context) == 1
    assert [m.role for m in first.next_state] == ["tool"]
    assert last.closed_by == "end_of_input" and last.next_state == ()


@pytest.mark.parametrize("name", ["extractor_eval.jsonl", "extractor_heldout.jsonl"])
def test_confident_tuples_meet_the_precision_target(name: str) -> None:
    """On the labeled sets, tuples with confidence >= 0.8 have sign precision >= 0.9."""
    items = [json.loads(line) for line in (DATA / name).read_text().splitlines()]
    table = score_items(items, build_extractors(DEFAULT_EXTRACTORS))
    assert table["all"]["P@0.8"] >= 0.9
    assert {"user", "tool", "terminal", "gui", "feedback"} <= set(table)


def test_dev_set_is_large_and_mixed() -> None:
    """The dev set holds at least 300 next states from every source."""
    items = [json.loads(line) for line in (DATA / "extractor_eval.jsonl").read_text()
             .splitlines()]
    assert len(items) >= 300
    assert {i["source"] for i in items} == {"user", "tool", "terminal", "gui", "feedback"}


def test_main_prints_tables(tmp_path, capsys) -> None:
    """The command prints the sign/hint tables and the session AUROC table."""
    data = tmp_path / "eval.jsonl"
    data.write_text("\n".join((DATA / "extractor_eval.jsonl").read_text().splitlines()[:40]))
    gui_dev = tmp_path / "gui-dev"
    gui_dev.mkdir()
    obs = json.dumps({"url": "u", "title": "t", "axtree": "[1] button 'Go'", "error": ""})
    err = json.dumps({"url": "u", "title": "t", "axtree": "[1] button 'Go'",
                      "error": "TimeoutError: x"})
    sessions = []
    for sid, result in (("good", obs), ("bad", err)):
        sessions.append({"session_id": sid, "messages": [
            {"role": "user", "content": "task"},
            {"role": "assistant", "content": None, "tool_calls": [{"id": "c0", "type": "function",
             "function": {"name": "browser", "arguments": '{"action": "noop()"}'}}]},
            {"role": "tool", "tool_call_id": "c0", "name": "browser", "content": obs},
            {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function",
             "function": {"name": "browser", "arguments": '{"action": "click(\'1\')"}'}}]},
            {"role": "tool", "tool_call_id": "c1", "name": "browser",
             "content": result.replace("'Go'", "'Go', expanded=True")}]})
    (gui_dev / "transcripts.jsonl").write_text("\n".join(json.dumps(s) for s in sessions))
    (gui_dev / "outcomes.json").write_text(json.dumps({"good": 1.0, "bad": 0.0}))
    assert main(["--data", str(data), "--gui-dev", str(gui_dev)]) == 0
    out = capsys.readouterr().out
    assert "P@0.8" in out and "hint_F1" in out
    gui_row = next(line for line in out.splitlines()[::-1] if line.startswith("gui"))
    assert gui_row.split()[:3] == ["gui", "2", "1.000"]


def test_main_without_data_fails(tmp_path) -> None:
    """A missing data file is an error exit, not a crash."""
    assert main(["--data", str(tmp_path / "missing.jsonl")]) == 2

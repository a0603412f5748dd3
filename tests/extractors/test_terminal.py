"""Tests for the terminal / SWE extractor."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nextstate.extractors import terminal
from nextstate.extractors.terminal import (
    RunSummary,
    TerminalExtractor,
    parse_test_summary,
    read_terminal,
)
from nextstate.extractors.types import Message, ToolCall


@pytest.mark.parametrize(("text", "summary"), [
    ("====== 2 failed, 10 passed in 0.31s ======", RunSummary(10, 2)),
    ("============ 12 passed, 1 warning in 1.02s ============", RunSummary(12, 0)),
    ("== 1 failed, 3 passed, 2 errors in 4.1s ==", RunSummary(3, 3)),
    ("test result: FAILED. 8 passed; 2 failed; 0 ignored; 0 measured", RunSummary(8, 2)),
    ("Tests:       1 failed, 9 passed, 10 total", RunSummary(9, 1)),
    ("--- FAIL: TestAdd (0.00s)\n--- PASS: TestSub (0.00s)\nFAIL", RunSummary(1, 1)),
    ("ok  \tgithub.com/a/b\t0.01s\nok  \tgithub.com/a/c\t0.02s\n", RunSummary(2, 0)),
    ("Ran 5 tests in 0.1s\n\nFAILED (failures=2, errors=1)", RunSummary(2, 3)),
    ("  3 passing (20ms)\n  1 failing", RunSummary(3, 1)),
    ("total 12\ndrwxr-xr-x 2 root root", None),
])
def test_parse_test_summary(text: str, summary: RunSummary | None) -> None:
    """Summaries of pytest, cargo, jest, go test, unittest and mocha are parsed."""
    assert parse_test_summary(text) == summary


def test_progress_against_previous_run_is_positive() -> None:
    """Fewer failing tests than the previous run is progress."""
    reading = read_terminal("=== 1 failed, 11 passed in 1s ===", previous=RunSummary(10, 2))
    assert reading is not None and reading.label == "tests_progress" and reading.reward > 0


def test_more_failures_than_before_is_a_regression() -> None:
    """More failing tests than before is a confident negative."""
    reading = read_terminal("=== 3 failed, 9 passed in 1s ===", previous=RunSummary(11, 1))
    assert reading is not None and reading.label == "tests_regress"
    assert reading.reward < 0 and reading.confidence >= 0.8


def test_environmental_failures_give_no_signal() -> None:
    """Failures caused by the network are not blamed on the action."""
    assert read_terminal("E   requests.exceptions.ConnectionError: Max retries exceeded\n"
                         "=== 1 failed, 40 passed in 3s ===") is None
    assert read_terminal("=== 1 failed, 40 passed in 3s ===") is not None


@pytest.mark.parametrize(("output", "label", "hint_part"), [
    ("Traceback (most recent call last):\n  File \"a.py\", line 3\nNameError: name 'x' is "
     "not defined\n", "traceback", "NameError"),
    ("src/main.rs:3:5: error[E0308]: mismatched types", "compile_error", "mismatched types"),
    ("bash: pyhton: command not found\nexit code: 127", "command_failed", "command not found"),
])
def test_errors_give_hints(output: str, label: str, hint_part: str) -> None:
    """Tracebacks, compiler errors and missing commands are negative with a hint."""
    reading = read_terminal(output)
    assert reading is not None and reading.label == label and reading.reward < 0
    assert hint_part in (reading.hint or "")


def test_grep_without_match_is_not_an_error() -> None:
    """grep's exit code 1 means no match, not failure."""
    assert read_terminal('{"stdout": "", "stderr": "", "exit_code": 1}', "grep -r foo src") \
        is None
    reading = read_terminal('{"stdout": "", "stderr": "boom", "exit_code": 1}', "make")
    assert reading is not None and reading.reward < 0


def test_extractor_reads_previous_summary_from_context(tool_step) -> None:
    """The extractor finds the session's previous test run and scores progress."""
    earlier = [
        Message("assistant", "", tool_calls=(ToolCall("c0", "bash",
                                                      json.dumps({"command": "pytest"})),)),
        Message("tool", "=== 4 failed, 8 passed in 1s ===", tool_call_id="c0", name="bash"),
    ]
    interaction = tool_step("bash", "=== 12 passed in 1s ===", json.dumps({"command": "pytest"}),
                            earlier)
    (scored,) = TerminalExtractor()(interaction)
    assert scored.source == "terminal" and scored.reward == 0.9


def test_extractor_ignores_other_tools(tool_step) -> None:
    """Non-terminal tools are not scored by the terminal extractor."""
    assert TerminalExtractor()(tool_step("search", "=== 1 failed in 1s ===")) == []
    assert TerminalExtractor(tools=["search"])(tool_step("search", "=== 1 failed in 1s ==="))


def test_summary_memo_is_bounded_and_reads_like_a_fresh_parse(tool_step) -> None:
    """Earlier results are parsed once into a bounded memo, with the same progress reading."""
    extractor = TerminalExtractor(cache_entries=4)
    fresh = TerminalExtractor()
    earlier: list[Message] = []
    for k in range(12):
        call = ToolCall(f"e{k}", "bash", '{"command": "pytest"}')
        earlier += [Message("assistant", "", tool_calls=(call,)),
                    Message("tool", f"==== {12 - k} failed, {k} passed in 0.1s ====",
                            tool_call_id=call.id, name="bash")]
        step = tool_step("bash", f"==== {11 - k} failed, {k + 1} passed in 0.1s ====",
                         earlier=earlier)
        assert [t.reward for t in extractor(step)] == [t.reward for t in fresh(step)]
        assert len(extractor._facts) <= 4
    assert extractor(step)[0].reward > 0  # fewer failures than the previous run: progress


@given(st.text(alphabet=st.sampled_from(list("FAILED ●-:\ntesxk.()cnoCNrfluymaxR503")),
               max_size=80))
def test_guards_never_skip_a_match(text: str) -> None:
    """The substring guards before the failure and environment scans are necessary conditions."""
    for candidate in (text, f"FAIL: {text}", f"connection {text} refused", text.upper()):
        expected = terminal._FAILED_TEST.search(candidate)
        assert (terminal._first_failure(candidate) is not None) == (expected is not None)
        assert terminal._looks_environmental(candidate) == bool(
            terminal._ENVIRONMENTAL.search(candidate))


@given(st.lists(st.sampled_from([
    "exit code: 1", "[exit code: 0]", "Exited with status 2", "returncode=3", "return code 4",
    "exit_code: 5", "EXIT 6", "xexit 7", "exited", "re-exit 8", "$ make\n", "ok", " ", "ſ",
    "Return Code: -1", "exit(9)", "\n", "42"]), max_size=6).map("".join))
def test_exit_code_search_from_first_needle_equals_full_search(text: str) -> None:
    """Starting the exit-code regex at the first "exit"/"return" finds the same match."""
    got, expected = terminal._exit_code(text), terminal._EXIT_CODE.search(text)
    assert (got and got.span()) == (expected and expected.span())


def _reference_read(content: str, command: str = "",
                    previous: RunSummary | None = None) -> terminal.TerminalReading | None:
    """read_terminal as first written: every scan on every output, no substring gates."""
    output, code = terminal._split_output(content)
    text = terminal._window(output)
    summary = parse_test_summary(text)
    Reading = terminal.TerminalReading
    if summary is not None and summary.passed + summary.failed > 0:
        failing = terminal._first_failure(text)
        hint = f"Make the failing test pass: {failing}" if failing else None
        if summary.failed == 0:
            progressed = previous is not None and previous.failed > 0
            return Reading("tests_pass", 0.9 if progressed else 0.7,
                           0.9 if progressed else 0.85, None)
        if terminal._ENVIRONMENTAL.search(text):
            return None
        if previous is not None and previous.failed > 0:
            if summary.failed < previous.failed:
                return Reading("tests_progress", 0.6, 0.85, hint)
            if summary.failed > previous.failed:
                return Reading("tests_regress", -0.8, 0.9, hint)
            return Reading("tests_unchanged", -0.2, 0.5, hint)
        if previous is not None and summary.failed > 0:
            return Reading("tests_regress", -0.8, 0.9, hint)
        return Reading("tests_fail", -0.6, 0.75, hint)
    compiler = terminal._COMPILER.search(text)
    if compiler:
        return Reading("compile_error", -0.8, 0.9,
                       f"Fix the compiler error: {compiler.group(0).strip()[:200]}")
    traceback = terminal._TRACEBACK.search(text)
    if traceback:
        lines = [ln for ln in text[traceback.end():].splitlines()
                 if ln.strip() and not ln[0].isspace()]
        last = lines[-1].strip()[:200] if lines else None
        return Reading("traceback", -0.7, 0.85, f"Fix the error: {last}" if last else None)
    missing = terminal._NOT_FOUND.search(text)
    if missing and code != 0:
        return Reading("command_failed", -0.8, 0.9,
                       f"The command failed: {missing.group(0).strip()[:200]}", "tool_args")
    if code is not None:
        if code == 0:
            return Reading("exit_ok", 0.3, 0.6, None)
        if code == 1 and terminal._BENIGN_NONZERO.match(command):
            return None
        last = next((ln.strip() for ln in reversed(text.splitlines()) if ln.strip()
                     and not terminal._EXIT_CODE.search(ln)), "")
        return Reading("exit_nonzero", -0.5, 0.7,
                       f"The command exited with {code}: {last[:200]}" if last else None)
    return None


_OUTPUT_PARTS = [
    "$ pytest -q", "==== 2 failed, 10 passed in 0.3s ====", "=== 3 passed in 1s ===",
    "FAILED tests/test_a.py::test_x - assert 1 == 2", "Traceback (most recent call last):",
    '  File "a.py", line 3, in <module>', "NameError: name 'x' is not defined",
    "src/main.rs:3:5: error[E0308]: mismatched types", "main.go:4:2: undefined: x",
    "a.ts(3,4): error TS2304: Cannot find name 'x'", "Error: boom", "error: linker failed",
    "bash: pyhton: command not found", "ls: cannot access 'x': No such file or directory",
    "PERMISSION DENIED", "Segmentation fault (core dumped)", "[exit code: 0]",
    "[exit code: 1]", "exit status 2", "returncode=127", "ConnectionError: refused",
    "ſegmentation fault", "\u212aommand not found", "Ran 3 tests in 0.1s", "FAILED (errors=1)",
    "ok", "", "  indented", "é",
]


@settings(max_examples=600, deadline=None)
@given(st.lists(st.sampled_from(_OUTPUT_PARTS), max_size=6).map("\n".join),
       st.sampled_from(["plain", "json", "json_no_code"]),
       st.sampled_from(["", "grep -r x .", "make", "diff a b"]),
       st.sampled_from([None, RunSummary(3, 0), RunSummary(10, 2), RunSummary(1, 5)]))
def test_read_terminal_equals_the_ungated_reading(output, shape, command, previous) -> None:
    """The substring gates (compiler, traceback, not-found) and the facts split never change a
    reading: it equals the one with every scan run."""
    content = output
    if shape != "plain":
        data: dict = {"stdout": output, "stderr": ""}
        if shape == "json":
            data["exit_code"] = len(output) % 3
        content = json.dumps(data)
    assert read_terminal(content, command, previous) == _reference_read(content, command,
                                                                         previous)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(_OUTPUT_PARTS[:12] + _OUTPUT_PARTS[16:19]),
                          st.sampled_from(['{"cmd": "pytest"}', '{"cmd": "grep x"}', "ls"])),
                min_size=1, max_size=10),
       st.integers(1, 3))
def test_extractor_equals_the_ungated_reading_with_a_tiny_memo(steps, entries) -> None:
    """Through a memo small enough to evict, each step reads as the ungated reading of its
    output against the session's previous summary."""
    extractor = TerminalExtractor(cache_entries=entries)
    earlier: list[Message] = []
    previous = None
    for k, (output, arguments) in enumerate(steps):
        call = ToolCall(f"c{k}", "bash", arguments)
        interaction = _step(earlier, call, output)
        expected = _reference_read(output, terminal._command_of(arguments), previous)
        got = extractor(interaction)
        if expected is None:
            assert got == []
        else:
            assert (got[0].reward, got[0].confidence) == (expected.reward, expected.confidence)
        assert len(extractor._facts) <= entries
        earlier += [interaction.action, interaction.next_state[0]]
        previous = parse_test_summary(output) or previous


def _step(earlier: list[Message], call: ToolCall, output: str):
    from nextstate.extractors.types import Interaction

    return Interaction(f"s#{len(earlier) + 1}", "s", (Message("user", "go"), *earlier),
                       Message("assistant", tool_calls=(call,)),
                       (Message("tool", output, tool_call_id=call.id),))

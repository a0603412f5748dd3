"""Terminal / SWE results: exit codes, tracebacks, compiler errors and test-runner summaries.

A shell tool's output says more than "error or not": a test run reports how many tests pass
and fail, and comparing that with the previous run in the same session tells progress (fewer
failures: positive) from regression. Rules, from the most to the least informative reading:

1. a test summary (pytest, unittest, go test, cargo test, jest/mocha): all green is positive;
   versus the previous summary, fewer failures is progress, more is a regression, the same
   count is an unchanged (possibly unrelated) failure and weak; failures that look
   environmental (network, timeouts) are read with low confidence;
2. compiler errors, then uncaught tracebacks, then "command not found";
3. the exit code (benign non-zero codes of ``grep``/``diff``/``test`` are not errors);
4. nothing recognisable: no tuple.

Hints name the first failing test or the error line, which is what the next step should fix.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from nextstate.extractors.lru import LruCache
from nextstate.extractors.names import TERMINAL_TOOLS, json_object, tool_name
from nextstate.extractors.registry import register
from nextstate.extractors.types import (
    Interaction,
    ScoredTuple,
    answer_to,
    directive,
    evaluative,
    tool_results_for,
)
from nextstate.extractors.window import head_and_tail


class RunSummary(NamedTuple):
    """Counts from one test-runner summary (errors count as failures)."""

    passed: int
    failed: int


class TerminalReading(NamedTuple):
    """How one terminal result reads."""

    label: str
    reward: float
    confidence: float
    hint: str | None
    credit: str = "action"


# Hostile outputs: every regex here runs on a 16 KB window (_window) but must stay linear in
# it; tests/extractors/test_hostile_text.py runs each on the input that made the first
# version backtrack, and compares it with that version on generated text.
# * A summary line's indent is ``[^\S\n]*``, not ``\s*``: at the start of every line of a
#   run of blank lines ``\s*`` scanned the rest of the run (quadratic). The same lines and
#   groups are found; a match no longer takes in the blank (or "=") lines before its line,
#   which hold no count.
# * ``(?:\d+ \w+(?:, )?)+`` could split "N word" tokens in two ways each (``\w+`` takes
#   digits too): "1 123 123 ... 123" with no " in " at the end backtracked exponentially. The
#   same language, written so that each token has one reading: "N " then tokens that end in
#   a digit (a word, then the next count) or in ", N ", then the last word.
_PYTEST_LINE = re.compile(
    r"^=*[^\S\n]*+\d+ (?:(?:\w+\d|\w+, \d+) )*\w+(?:, )? in [\d.]+s\b.*$", re.M)
# ``(?<!\d)``: a count starts where its digits start (a start inside a run of digits scanned
# to its end each time; it matched nothing the run's first digit had not).
_COUNT = re.compile(r"(?<!\d)(\d+) (passed|failed|errors?|error)\b")
_UNITTEST_RAN = re.compile(r"^Ran (\d+) tests? in", re.M)
_UNITTEST_FAILED = re.compile(r"^FAILED \(([^)]*)\)", re.M)
_CARGO = re.compile(r"test result: (?:ok|FAILED)\. (\d+) passed; (\d+) failed", re.I)
# ``\s++``: giving back indent never helps (``.*`` would start on the same line or a blank
# one); ``\d total``: the capture ends after the line's last "<digit> total" either way,
# without rescanning each digit run at every one of its digits.
_JEST = re.compile(r"^Tests:\s++(.*\d total)", re.M)
_JEST_COUNT = re.compile(r"(?<!\d)(\d+) (passed|failed)")
_MOCHA = re.compile(r"^[^\S\n]*+(\d+) (passing|failing)\b", re.M)
_GO_CASE = re.compile(r"^[^\S\n]*+--- (PASS|FAIL): (\S+)", re.M)
_GO_PKG = re.compile(r"^(ok|FAIL)\s+\S+\s", re.M)
_FAILED_TEST = re.compile(
    r"^(?:FAILED (\S+(?: - .{0,120})?)|[^\S\n]*+--- FAIL: (\S+)|test (\S+) \.\.\. FAILED|"
    r"[^\S\n]*+● (.{3,120})|FAIL: (\S+ \([^)]*\)))", re.M)
_ENVIRONMENTAL = re.compile(
    r"\b(?:ConnectionError|ConnectionRefused\w*|Connection refused|NewConnectionError|"
    r"Max retries exceeded|Temporary failure in name resolution|Network is unreachable|"
    r"rate limit\w*|flaky|ECONNREFUSED|ETIMEDOUT|ReadTimeout|503 Service Unavailable)\b", re.I)
_COMPILER = re.compile(
    r"^(?:(?:\S+?:\d+(?::\d+)?:\s*)?(?:fatal )?error(?:\[E\d+\])?:\s*.+|\S+\(\d+,\d+\): error "
    r"TS\d+: .+|error TS\d+: .+|\S+\.go:\d+:\d+: .+|\S+\.java:\d+: error: .+)$", re.M)
_TRACEBACK = re.compile(r"^Traceback \(most recent call last\):", re.M)
_NOT_FOUND = re.compile(
    r"^.*(?:command not found|is not recognized as an internal or external command|"
    r"No such file or directory|Permission denied|Segmentation fault).*$", re.M | re.I)
# ``\s*+(?:[:=]\s*+)?`` is ``\s*[:=]?\s*`` without its many ways of splitting a run of
# blanks ("exit" and 10 KB of spaces: 4 s); what follows the run is no blank, so giving part
# of it back never helped.
_EXIT_CODE = re.compile(
    r"(?:\bexit(?:ed)?(?: with)?(?: code| status)?|\bexit_code|\breturncode|\breturn code)"
    r"\s*+(?:[:=]\s*+)?\[?(-?\d+)\b", re.I)
_BENIGN_NONZERO = re.compile(r"^\s*(?:grep|egrep|rg|diff|cmp|test|\[|git diff|find)\b")
_HEAD, _TAIL = 4000, 12000


def _window(text: str) -> str:
    # Summaries sit at the end of long outputs, causes near the start: scan both, bounded.
    return head_and_tail(text, _HEAD, _TAIL)


def parse_test_summary(text: str) -> RunSummary | None:
    """Pass/fail counts from the last test-runner summary in ``text``, or ``None``.

    >>> parse_test_summary("===== 2 failed, 10 passed in 0.31s =====")
    RunSummary(passed=10, failed=2)
    """
    if ("pass" not in text and "fail" not in text and "FAIL" not in text
            and "Ran " not in text and "ok " not in text):
        return None
    lines = _PYTEST_LINE.findall(text) if " in " in text else None  # "N passed in 0.3s"
    if lines:
        counts = {"passed": 0, "failed": 0}
        for number, word in _COUNT.findall(lines[-1]):
            counts["passed" if word == "passed" else "failed"] += int(number)
        return RunSummary(counts["passed"], counts["failed"])
    cargo = _CARGO.findall(text)
    if cargo:
        return RunSummary(sum(int(p) for p, _ in cargo), sum(int(f) for _, f in cargo))
    jest = _JEST.findall(text)
    if jest:
        counts = dict.fromkeys(("passed", "failed"), 0)
        for number, word in _JEST_COUNT.findall(jest[-1]):
            counts[word] += int(number)
        return RunSummary(counts["passed"], counts["failed"])
    ran = _UNITTEST_RAN.findall(text)
    if ran:
        total = int(ran[-1])
        # Up to the last ")": each "FAILED (" line with none after it scanned to the end of
        # the text (a window of such lines: quadratic), and nothing can match past it.
        failed_match = _UNITTEST_FAILED.findall(text, 0, text.rfind(")") + 1)
        failed = sum(int(n) for n in re.findall(r"(?:failures|errors)=(\d+)",
                                                failed_match[-1])) if failed_match else 0
        return RunSummary(total - failed, failed)
    mocha = _MOCHA.findall(text)
    if mocha:
        counts = {"passing": 0, "failing": 0}
        for number, word in mocha:
            counts[word] = int(number)
        return RunSummary(counts["passing"], counts["failing"])
    cases = _GO_CASE.findall(text)
    if cases:
        failed = sum(1 for status, _ in cases if status == "FAIL")
        return RunSummary(len(cases) - failed, failed)
    packages = _GO_PKG.findall(text)
    if packages:
        failed = packages.count("FAIL")
        return RunSummary(len(packages) - failed, failed)
    return None


# A necessary lower-case substring of each ``_ENVIRONMENTAL`` alternative.
_ENVIRONMENTAL_NEEDLES = ("connection", "max retries", "name resolution", "network is",
                          "rate limit", "flaky", "econnrefused", "etimedout", "readtimeout",
                          "503 service")


def _looks_environmental(text: str) -> bool:
    """``_ENVIRONMENTAL.search(text)`` as a bool; substring checks skip most scans."""
    if text.isascii():  # re.I folds a few non-ASCII letters that lower() keeps
        low = text.lower()
        if not any(needle in low for needle in _ENVIRONMENTAL_NEEDLES):
            return False
    return _ENVIRONMENTAL.search(text) is not None


def _split_output(content: str) -> tuple[str, int | None]:
    """(output text, exit code) from a plain or JSON ``{"stdout","stderr","exit_code"}`` result."""
    data = json_object(content)
    if data is not None:
        parts = [str(data.get(k) or "") for k in ("stdout", "output", "stderr", "error")]
        code = next((data[k] for k in ("exit_code", "returncode", "exitCode", "code",
                                       "status") if isinstance(data.get(k), int)), None)
        return "\n".join(p for p in parts if p), code
    match = _exit_code(content[-2000:])
    return content, int(match.group(1)) if match else None


def _exit_code(text: str) -> re.Match[str] | None:
    """``_EXIT_CODE.search(text)``, started at the first "exit" or "return" (every match
    starts with one; ``\\b`` still sees the character before the start position)."""
    if not text.isascii():  # re.I folds a few non-ASCII letters that lower() keeps
        return _EXIT_CODE.search(text)
    low = text.lower()
    starts = [i for i in (low.find("exit"), low.find("return")) if i >= 0]
    return _EXIT_CODE.search(text, min(starts)) if starts else None


def _command_of(arguments: str) -> str:
    data = json_object(arguments)
    if data is not None:
        for key in ("command", "cmd", "script", "code", "input"):
            if isinstance(data.get(key), str):
                return data[key]
    return arguments


def _first_failure(text: str) -> str | None:
    if "FAIL" not in text and "●" not in text:  # every alternative names one of them
        return None
    match = _FAILED_TEST.search(text)
    if not match:
        return None
    return next(g for g in match.groups() if g).strip()


class _Facts(NamedTuple):
    """What one terminal result says by itself, before the command and the previous summary.

    ``scored``: ``summary`` counts tests, and the reading is decided by it (``failing`` is
    the first failing test, ``environmental`` whether the failures look environmental);
    otherwise ``reading`` is the reading, unless ``exit_one`` (exit code 1) and the command
    is one whose 1 is an answer.
    """

    summary: RunSummary | None
    scored: bool
    failing: str | None
    environmental: bool
    reading: TerminalReading | None
    exit_one: bool


# Necessary lower-case substrings of ``_NOT_FOUND`` (one per alternative).
_NOT_FOUND_NEEDLES = ("command not found", "is not recognized as an internal or external",
                      "no such file or directory", "permission denied", "segmentation fault")
_TRACEBACK_HEADER = "Traceback (most recent call last):"


def _facts(content: str) -> _Facts:
    """Every rule of :func:`read_terminal` that reads only ``content``."""
    output, code = _split_output(content)
    text = _window(output)
    summary = parse_test_summary(text)
    if summary is not None and summary.passed + summary.failed > 0:
        return _Facts(summary, True, _first_failure(text),
                      summary.failed > 0 and _looks_environmental(text), None, False)
    # Every _COMPILER alternative holds "error" or ".go:" (case-sensitive: no re.I).
    compiler = _COMPILER.search(text) if "error" in text or ".go:" in text else None
    if compiler:
        return _Facts(summary, False, None, False, TerminalReading(
            "compile_error", -0.8, 0.9,
            f"Fix the compiler error: {compiler.group(0).strip()[:200]}"), False)
    traceback = _TRACEBACK.search(text) if _TRACEBACK_HEADER in text else None
    if traceback:
        # The exception is the last unindented line after the traceback header.
        lines = [ln for ln in text[traceback.end():].splitlines()
                 if ln.strip() and not ln[0].isspace()]
        last = lines[-1].strip()[:200] if lines else None
        return _Facts(summary, False, None, False, TerminalReading(
            "traceback", -0.7, 0.85, f"Fix the error: {last}" if last else None), False)
    # Only a failed command's "not found" counts, so exit code 0 skips the scan.
    missing = _not_found(text) if code != 0 else None
    if missing:
        return _Facts(summary, False, None, False, TerminalReading(
            "command_failed", -0.8, 0.9,
            f"The command failed: {missing.group(0).strip()[:200]}", "tool_args"), False)
    if code is not None:
        if code == 0:
            return _Facts(summary, False, None, False,
                          TerminalReading("exit_ok", 0.3, 0.6, None), False)
        last = next((ln.strip() for ln in reversed(text.splitlines()) if ln.strip()
                     and not _EXIT_CODE.search(ln)), "")
        return _Facts(summary, False, None, False, TerminalReading(
            "exit_nonzero", -0.5, 0.7,
            f"The command exited with {code}: {last[:200]}" if last else None), code == 1)
    return _Facts(summary, False, None, False, None, False)


def _not_found(text: str) -> re.Match[str] | None:
    """``_NOT_FOUND.search(text)``; substring checks skip most scans."""
    if text.isascii():  # re.I folds a few non-ASCII letters that lower() keeps
        low = text.lower()
        if not any(needle in low for needle in _NOT_FOUND_NEEDLES):
            return None
    return _NOT_FOUND.search(text)


def _reading(facts: _Facts, command: str, previous: RunSummary | None
             ) -> TerminalReading | None:
    """Finish a reading from its :class:`_Facts`, the command and the previous summary."""
    if not facts.scored:
        if facts.exit_one and _BENIGN_NONZERO.match(command):
            return None  # no match / files differ: an answer, not a failure
        return facts.reading
    summary = facts.summary
    assert summary is not None
    failing = facts.failing
    hint = f"Make the failing test pass: {failing}" if failing else None
    if summary.failed == 0:
        progressed = previous is not None and previous.failed > 0
        return TerminalReading("tests_pass", 0.9 if progressed else 0.7,
                               0.9 if progressed else 0.85, None)
    if facts.environmental:
        return None  # the network failed, not the action: no signal about it
    if previous is not None and previous.failed > 0:
        if summary.failed < previous.failed:
            return TerminalReading("tests_progress", 0.6, 0.85, hint)
        if summary.failed > previous.failed:
            return TerminalReading("tests_regress", -0.8, 0.9, hint)
        return TerminalReading("tests_unchanged", -0.2, 0.5, hint)
    if previous is not None and summary.failed > 0:
        return TerminalReading("tests_regress", -0.8, 0.9, hint)
    return TerminalReading("tests_fail", -0.6, 0.75, hint)


def read_terminal(content: str, command: str = "",
                  previous: RunSummary | None = None) -> TerminalReading | None:
    """Read one terminal result; ``previous`` is the session's last test summary, if any."""
    return _reading(_facts(content), command, previous)


@register("terminal")
class TerminalExtractor:
    """Scores shell/terminal tool results; compares test summaries with the previous run.

    Args:
        tools: names of the terminal tools (defaults: bash, shell, terminal, run_command, ...).
        history: how many earlier messages to search for the previous test summary.
        excerpt_chars: how much of the output to keep (its tail: summaries sit at the end).
        cache_entries: how many outputs' readings to keep (bounded in characters too).
    """

    reads = frozenset({"tool"})  # see registry.Dispatch
    __slots__ = ("_facts", "excerpt_chars", "history", "tools")

    def __init__(self, tools: tuple[str, ...] | list[str] | None = None, history: int = 40,
                 excerpt_chars: int = 400, cache_entries: int = 4096) -> None:
        self.tools = frozenset(tools) if tools is not None else TERMINAL_TOOLS
        self.history = history
        self.excerpt_chars = excerpt_chars
        # Output text -> what it says (its test summary, its reading): a result is read when
        # it answers an action, then every later step of its session looks back at it for
        # the previous summary; recurring outputs (a re-run, a repeated error) are read once.
        self._facts: LruCache[_Facts] = LruCache(cache_entries, cache_entries * 4096)

    def scores_call_to(self, name: str) -> bool:
        """Whether an action whose only tool call is to ``name`` can get a tuple (see
        registry.Dispatch): only if it is a terminal tool."""
        return name in self.tools

    def _facts_of(self, content: str) -> _Facts:
        facts = self._facts.get(content)
        if facts is None:
            facts = _facts(content)
            self._facts.put(content, facts, len(content))
        return facts

    def _summary_of(self, content: str) -> RunSummary | None:
        return self._facts_of(content).summary

    def _previous_summary(self, interaction: Interaction) -> RunSummary | None:
        context = interaction.context
        tools = self.tools
        stop = max(0, len(context) - self.history)
        for index in range(len(context) - 1, stop - 1, -1):
            message = context[index]
            if message.role == "tool" and (
                    message.name or tool_name(message, context, index)) in tools:
                summary = self._facts_of(message.content).summary
                if summary is not None:
                    return summary
        return None

    def __call__(self, interaction: Interaction) -> list[ScoredTuple]:
        calls = interaction.action.tool_calls
        if not calls:
            return []
        tools = self.tools
        if len(calls) == 1:  # the usual action: no lists to build
            call = calls[0]
            if call.name not in tools:
                return []  # most actions call no terminal tool
            answer = answer_to(call, interaction.next_state)
            if answer is None:
                return []
            previous = self._previous_summary(interaction)
            reading = _reading(self._facts_of(answer.content), _command_of(call.arguments),
                               previous)
            if reading is None:
                return []
        else:
            if tools.isdisjoint([c.name for c in calls]):
                return []
            pairs = [(c, a) for c, a in tool_results_for(interaction) if c.name in tools]
            if not pairs:
                return []
            previous = self._previous_summary(interaction)
            readings = []
            for call, answer in pairs:
                reading = _reading(self._facts_of(answer.content), _command_of(call.arguments),
                                   previous)
                if reading is not None:
                    readings.append((call, answer, reading))
            if not readings:
                return []
            call, answer, reading = min(readings, key=lambda r: r[2].reward)
        tail = answer.content[-self.excerpt_chars:]
        excerpt = f"[{call.name}] {reading.label}: {tail}"
        credit = "tool_args" if reading.credit == "tool_args" else "action"
        reward = reading.reward
        confidence = reading.confidence
        tuples = [evaluative(interaction, "terminal", "terminal", excerpt, reward, confidence,
                             credit)]
        if reading.hint and reward < 0:
            tuples.append(directive(interaction, "terminal", "terminal", excerpt, reading.hint,
                                    0.8 if confidence > 0.8 else confidence, credit))
        return tuples

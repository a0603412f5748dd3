"""Hostile text: no regex of the extractors or the redactor backtracks super-linearly.

A record of up to 16 MB (``join.max_record_bytes``) reaches them whole, and one whose text
made a regex backtrack stalled the daemon's only processing thread (the exponential pytest
summary pattern: for hours, on a 200-character line). Two kinds of tests per rewritten
pattern:

* the input that made the first version backtrack, at a size where it took far longer than
  a test run may (minutes to forever; ``timeout`` turns a regression into a failure, not a
  hang), through the public function, with the result it must give: no timing assertion;
* the rewritten pattern against the first version (kept here only, as ``_OLD_*``) on
  generated text small enough for the first version to be quick: the same matches, or, for
  the patterns only ever asked whether they match, the same answer.
"""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from nextstate.extractors import redact, terminal, tool, user
from nextstate.extractors.feedback import FeedbackExtractor
from nextstate.extractors.redact import Redactor
from nextstate.extractors.registry import build_extractors
from nextstate.extractors.terminal import RunSummary
from nextstate.extractors.types import Feedback, Interaction, Message, ScoredTuple, ToolCall

# ---------------------------------------------------------------------------------------------
# The first versions of the rewritten patterns.

_OLD_PYTEST_LINE = re.compile(r"^=*\s*(?:\d+ \w+(?:, )?)+ in [\d.]+s\b.*$", re.M)
_OLD_COUNT = re.compile(r"(\d+) (passed|failed|errors?|error)\b")
_OLD_JEST = re.compile(r"^Tests:\s+(.*\d+ total)", re.M)
_OLD_JEST_COUNT = re.compile(r"(\d+) (passed|failed)")
_OLD_MOCHA = re.compile(r"^\s*(\d+) (passing|failing)\b", re.M)
_OLD_GO_CASE = re.compile(r"^\s*--- (PASS|FAIL): (\S+)", re.M)
_OLD_FAILED_TEST = re.compile(
    r"^(?:FAILED (\S+(?: - .{0,120})?)|\s*--- FAIL: (\S+)|test (\S+) \.\.\. FAILED|"
    r"\s*● (.{3,120})|FAIL: (\S+ \([^)]*\)))", re.M)
_OLD_EXIT_CODE = re.compile(
    r"(?:\bexit(?:ed)?(?: with)?(?: code| status)?|\bexit_code|\breturncode|\breturn code)"
    r"\s*[:=]?\s*\[?(-?\d+)\b", re.I)
_OLD_REQUIRED_HINT = re.compile(
    r"missing (?:a )?(?:required )?(?:argument|parameter|field|property|key)s?:?\s*"
    r"'?\"?[\w.]+'?\"?|'?\"?[\w.]+'?\"? is a required property", re.I)
_OLD_TOOL_ERRORS = {
    "exception": re.compile(r"^\s*(Traceback \(most recent call last\)|(\w+\.)*\w*(Error|"
                            r"Exception)\b[:(]|(\w+\.)*errors?\.\w+:)", re.M),
    "error_payload": re.compile(r"^\s*[\[{]?\s*\"?(error|err|failed|failure|fatal)\"?"
                                r"(\s+\d{3})?\s*[:=!]", re.I),
    "http_error": re.compile(r"\b(HTTP(/\d(\.\d)?)?|status(?: code)?)[ /:=]*\s*[45]\d\d\b|"
                             r"^\s*[45]\d\d (Not Found|Bad Request|Unauthorized|Forbidden|"
                             r"Internal Server Error|Service Unavailable|Too Many Requests)|"
                             r"^\s*[45]\d\d\s+[A-Z][a-z]+(\s+[A-Z][a-z]+)*\s*$", re.I),
}
_OLD_EMPTY = re.compile(r"^\s*(|null|none|\[\]|\{\}|\"\"|no (results?|matches|data|records|items)"
                        r"( found| returned)?\.?|nothing found\.?|not found\.?|0 results?( found)?"
                        r"\.?)\s*$", re.I)
_OLD_POLITE_CORRECTION = re.compile(
    r"(?:^\W*(?:actually|hmm+|um+|erm|wait|sorry)\b"
    r"|\bi think (?:it|the|that|this|you)\b.{0,80}\b(?:not|should|was|is actually)\b"
    r"|\b(?:should(?:n'?t)? (?:it |that |this )?(?:be|have been|have|use|say|include))\b"
    r"|\b(?:instead of|rather than|not quite|close,? but|almost,? but|double[- ]check|"
    r"(?:looks?|seems?) (?:off|wrong|incorrect|too (?:high|low|long|short))|i meant|"
    r"supposed to|that was meant|i was (?:asking|hoping|looking) for|"
    r"(?:could|can) you (?:please )?(?:use|keep|switch|redo|fix|recheck|re-check)|"
    r"please (?:use|keep|switch|stick|don'?t|do not|fix)|you (?:should|need to) (?:use|have|"
    r"include)|instead|(?:isn'?t|wasn'?t|aren'?t) (?:it|that|this|there)|"
    r"[\w.']+,\s*not\s+[\w.']+)\b)")
_OLD_SENTENCES = re.compile(
    r"(?<=[.!?;\n])\s+|\s+(?=but\b)|\s+-\s+|,\s+(?=i (?:said|asked|meant|wanted|told)\b)", re.I)
_OLD_DIRECTIVE = re.compile(
    r"\b(?:use|using|i (?:said|asked|meant|wanted|specified|told you|need(?:ed)?)|should|"
    r"instead|rather|make (?:it|sure)|please|don'?t|do not|needs? to|has to|have to|must|"
    r"supposed to|expected|keep|switch|convert|include|exclude|add|remove|mention|in (?:metric|"
    r"celsius|fahrenheit|imperial|utc)|it'?s .{1,40}\bnot\b|not .{1,40}\b(?:but)\b|"
    r"[\w.']+,\s*not\s|instead|hoping for|wanted|"
    r"was (?:on|at|in|for)|is (?:on|at|in|for)|(?:the )?(?:deadline|date|day|total|answer|"
    r"name|number|price) (?:is|was))\b", re.I)


def _groups(pattern: re.Pattern[str], text: str) -> list:
    return [(m.span(), m.groups()) for m in pattern.finditer(text)]


def _text(pieces: list[str], max_size: int = 14) -> st.SearchStrategy[str]:
    """Texts joined from ``pieces`` (the characters and words a pattern cares about)."""
    return st.lists(st.sampled_from(pieces), max_size=max_size).map("".join)


# ---------------------------------------------------------------------------------------------
# Terminal output (the patterns read a 16 KB window of it).

def _terminal_step(output: str) -> Interaction:
    call = ToolCall("c1", "bash", '{"command": "pytest -q"}')
    return Interaction("s#1", "s", (Message("user", "Run the tests."),),
                       Message("assistant", "", tool_calls=(call,)),
                       (Message("tool", output, tool_call_id="c1", name="bash"),))


def _terminal(output: str) -> list[tuple[str, float]]:
    extractor = build_extractors(["terminal"])[0][1]
    return [(t.kind, t.reward) for t in extractor(_terminal_step(output))]


@pytest.mark.timeout(60)
def test_pytest_line_of_split_counts_is_read_at_once() -> None:
    """"1 123 123 ... 123" with no " in " after it: each token could be read as the end of one
    "N word" and the start of the next, or not, and the first pattern tried every way (2^n:
    a second at 100 characters, 25 s at 120; this line is 160)."""
    hostile = "1 " + "123 " * 40
    assert terminal.parse_test_summary("all passed in time\n" + hostile) is None
    summary = "==== 2 failed, 3 passed in 0.12s ===="
    assert terminal.parse_test_summary(f"{hostile}\n{summary}") == RunSummary(3, 2)
    assert _terminal(f"{hostile}\n{summary}")[0] == ("evaluative", -0.6)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("name", "output", "summary"), [
    # a blank-line run: the summary patterns' indent scanned the rest of it from every line
    ("blank lines", "1 passed in x" + "\n" * 16_000, None),
    ("blank lines, mocha", "x failed" + "\n" * 16_000 + "  3 passing\n  1 failing",
     RunSummary(3, 1)),
    # a count's digits scanned from every digit of a long run
    ("digit run", "1 passed in 0.1s\n1 " + "1" * 12_000 + " in 1s", RunSummary(0, 0)),
    # "Tests:" and blanks: ``\s+`` gave back one blank at a time, each rescanning the line
    ("jest blanks", "x failed\nTests:" + " " * 12_000 + "x", None),
    ("jest digits", "x failed\nTests: " + "1" * 12_000 + " 2 failed, 5 total",
     RunSummary(0, 2)),
    # unittest: a "FAILED (" with no ")" after it scanned to the end, for every such line
    ("unittest", "Ran 3 tests in 0.1s\n" + "FAILED (\n" * 1_500, RunSummary(3, 0)),
])
def test_terminal_window_shapes_are_read_at_once(name: str, output: str,
                                                 summary: RunSummary | None) -> None:
    """Each took 0.08-8 s per output before (quadratic in the 16 KB window)."""
    assert terminal.parse_test_summary(terminal._window(output)) == summary


@pytest.mark.timeout(60)
def test_exit_code_after_a_run_of_blanks_is_read_at_once() -> None:
    """"exit" and 12 KB of blanks: ``\\s*[:=]?\\s*`` split the run in every way (7 s)."""
    output = json.dumps({"stdout": "first words\nexit" + " " * 12_000 + "x", "exit_code": 2})
    assert _terminal(output) == [("evaluative", -0.5), ("directive", 0.0)]
    line = "exit" + " " * 12_000 + "x"
    assert terminal._EXIT_CODE.search(line) is None
    assert terminal._EXIT_CODE.search(line[:-1] + ": [7]").group(1) == "7"


@example("1 passed, 2 failed in 0.5s\n")
@example("==\n\n  12 passed in 1s =\n1 a2 b in 3.0s")
@given(_text(["1", "2", "12", "a", " ", ", ", " in ", "0.5s", "s", "passed", "failed",
              "error", "\n", "=", "==== ", "\t", "in"]))
def test_pytest_line_reads_what_the_first_pattern_read(text: str) -> None:
    """The same summary lines (what precedes a line's counts, "=" and blanks, may now be
    left out of its match: it holds no count) and so the same counts."""
    def bodies(pattern: re.Pattern[str]) -> list[str]:
        return [re.sub(r"^[=\s]*", "", line) for line in pattern.findall(text)]

    assert bodies(terminal._PYTEST_LINE) == bodies(_OLD_PYTEST_LINE)
    for line in _OLD_PYTEST_LINE.findall(text):
        assert terminal._COUNT.findall(line) == _OLD_COUNT.findall(line)


@given(_text(["1", "23", " ", "passed", "failed", "errors", "error", "x", "\n", " total",
              "Tests:", "Tests: ", "\t", "passing", "failing", "--- ", "PASS", "FAIL", ": ",
              "●", "FAILED ", "test ", " ... FAILED", "(", ")", "-", " - ", "name"], 16))
def test_summary_patterns_find_what_the_first_ones_found(text: str) -> None:
    """Same matches and groups; where a match starts may differ only by the blank lines the
    old indent could take in, which no caller reads."""
    assert terminal._COUNT.findall(text) == _OLD_COUNT.findall(text)
    assert terminal._JEST.findall(text) == _OLD_JEST.findall(text)
    assert terminal._JEST_COUNT.findall(text) == _OLD_JEST_COUNT.findall(text)
    assert terminal._MOCHA.findall(text) == _OLD_MOCHA.findall(text)
    assert terminal._GO_CASE.findall(text) == _OLD_GO_CASE.findall(text)
    old, new = _OLD_FAILED_TEST.search(text), terminal._FAILED_TEST.search(text)
    assert (new and new.groups()) == (old and old.groups())
    assert terminal._UNITTEST_FAILED.findall(text, 0, text.rfind(")") + 1) == \
        terminal._UNITTEST_FAILED.findall(text)


@given(_text(["exit", "exited", " with", " code", " status", "exit_code", "returncode",
              "return code", " ", "\n", "\t", ":", "=", "[", "-", "1", "42", "x", "EXIT"]))
def test_exit_code_pattern_matches_as_the_first_one(text: str) -> None:
    assert _groups(terminal._EXIT_CODE, text) == _groups(_OLD_EXIT_CODE, text)


# ---------------------------------------------------------------------------------------------
# Tool results (error patterns read the first 300 characters, hints the first 4000).

@pytest.mark.timeout(60)
def test_required_property_hint_after_a_long_name_run() -> None:
    """4 KB of "a.a.a..." before the property: each of its characters started a scan of the
    run (0.4 s; a hint reads the first 4000 characters)."""
    run = "a." * 1_900
    reading = tool.read_tool_result(f"Error: {run} 'date' is a required property")
    assert reading == ("exception", -0.8, 0.9, "'date' is a required property")
    assert tool.read_tool_result(f"Error: {run} missing").hint is None


@example("x 'abc' is a required property")
@example("ab'cd' is a required property")
@given(_text(["a", "b.c", ".", "'", '"', " is a required property", " ", "missing ",
              "required ", "argument", "s", ":", "x_y", "é"], 10))
def test_required_property_hint_matches_as_the_first_one(text: str) -> None:
    old = _OLD_REQUIRED_HINT.search(text)
    new = tool._EXPECTED_HINTS[1].search(text)
    assert (new and new.span()) == (old and old.span())


@given(_text([" ", "\n", "\t", "[", "{", '"', "error", "Err", "fatal", ":", "=", "!", "500",
              " 404", "HTTP", "/1.1", "status", " code", "/", "Traceback (most recent call "
              "last)", "ValueError", "a.", "errors.", "x", "(", "Not Found", "Bad", "null",
              "none", "no results", " found", ".", "0 results", "[]"], 10))
def test_tool_error_patterns_answer_as_the_first_ones(text: str) -> None:
    """These are only asked whether they match (and only read 300 characters): same answer."""
    for label, pattern, _, _ in tool._ERROR_PATTERNS:
        if label in _OLD_TOOL_ERRORS:
            assert bool(pattern.search(text)) == bool(_OLD_TOOL_ERRORS[label].search(text)), label
    assert bool(tool._EMPTY.match(text)) == bool(_OLD_EMPTY.match(text))


# ---------------------------------------------------------------------------------------------
# User replies and feedback texts (read whole).

def _reply(text: str) -> list[tuple[str, float, str | None]]:
    interaction = Interaction("s#1", "s", (Message("user", "Weather in Oslo?"),),
                              Message("assistant", "It is 50 F."), (Message("user", text),))
    extractor = build_extractors(["user"])[0][1]
    return [(t.kind, t.reward, t.hint) for t in extractor(interaction)]


@pytest.mark.timeout(60)
def test_x_not_y_after_a_long_dotted_run() -> None:
    """200 KB of "a.a.a...": ``\\b[\\w.']+,\\s*not`` scanned the run from each of its word
    boundaries (10 KB: 0.6 s, 100 KB: over a minute)."""
    run = "a." * 100_000
    assert user.classify_reply(f"please {run} b, not c").label == "correction"
    assert user.classify_reply(f"please {run}") is None
    hint = user.correction_hint(f"no, not {run}b, not c")
    assert hint is not None and hint.startswith("not a.a.") and len(hint) == 300
    assert user.correction_hint(f"no, not {run}") is None


@pytest.mark.timeout(60)
def test_sentence_split_over_a_long_run_of_blanks() -> None:
    """200 KB of spaces: the "but" and " - " cuts scanned the run from each blank (10 KB:
    1.2 s), in a user reply and in a feedback text alike."""
    reply = "no" + " " * 200_000 + "use Celsius"
    assert _reply(reply) == [("evaluative", -0.8, None), ("directive", 0.0, "use Celsius")]
    interaction = Interaction("s#1", "s", (), Message("assistant", "hi"),
                              feedback=(Feedback(text=reply),))
    tuples = FeedbackExtractor()(interaction)
    assert [t.hint for t in tuples] == [None, "use Celsius"]


@example("a.b, not c")
@example(".', not x")
@example("é.a, not b")
@given(_text(["a", "b.", ".", "'", ",", " ", "not", " not ", "x", "é", "_", "please use",
              "instead", "i think it ", "but", "it's ", "1"], 12))
def test_user_patterns_answer_as_the_first_ones(text: str) -> None:
    """_POLITE_CORRECTION and _DIRECTIVE are only asked whether they match: same answer;
    _SENTENCES splits where it did."""
    for candidate in (text, text.lower()):
        assert bool(user._POLITE_CORRECTION.search(candidate)) == \
            bool(_OLD_POLITE_CORRECTION.search(candidate))
        assert bool(user._DIRECTIVE.search(candidate)) == \
            bool(_OLD_DIRECTIVE.search(candidate))


@given(_text([" ", "\n", "\t", "but", " but", "But ", "-", " - ", ".", "!", ";", ",", "i said",
              "i ", "x", "butter", "\x85"], 14))
def test_sentence_split_is_the_first_one(text: str) -> None:
    assert user._SENTENCES.split(text) == _OLD_SENTENCES.split(text)


# ---------------------------------------------------------------------------------------------
# The redactor (every text field, whole).

def _redacted(text: str) -> str:
    """``text`` as the excerpt of a tuple, redacted (the context and action hold nothing)."""
    scored = ScoredTuple("s#1", "s", "user", "evaluative", "user", (Message("user", "Hi"),),
                         Message("assistant", "Hello"), text)
    return Redactor()(scored).next_state_excerpt


@pytest.mark.timeout(60)
def test_email_after_a_long_dotted_run() -> None:
    """200 KB of "a.a.a..." and an "@" elsewhere: ``_EMAIL`` scanned the run from each of its
    word boundaries for the "@" (100 KB: 18 s)."""
    run = "a." * 100_000
    assert _redacted(f"{run} mail bob@example.com") == f"{run} mail [EMAIL]"
    assert _redacted(f"{run}@!") == f"{run}@!"  # an "@" with no domain after it
    assert _redacted(f"x {run}@example.com") == "x [EMAIL]"


@pytest.mark.timeout(60)
def test_jwt_after_many_jwt_starts() -> None:
    """400 KB of "eyJ-eyJ-...": the JWT branch scanned the rest of the run from each "eyJ"
    (100 KB: 6.5 s)."""
    runs = "eyJ-" * 100_000
    jwt = "eyJhbGciOiJI.eyJzdWIiOiIx.c2lnbmF0dXJl"
    assert _redacted(f"{runs} {jwt} sk-abcdefghijklmnop1234") == f"{runs} [SECRET] [SECRET]"


_EMAIL_PIECES = ["a", "b.", "x@", "@", "example.com", ".", "-", "_", "%", "+", " ", "é", "1",
                 "co", ".uk", "@b.cc", "!", "c", "@x.y1"]
_SECRET_PIECES = ["eyJ", "abcdefgh", ".", "-", "_", " ", "sk-", "Bearer ", "xoxb-", "token=",
                  "a", "1", "\n", "eyJabcdefgh.", "ghp_", "AKIA", "é", '"', "'", "=", ":"]


@example("a@b.cc.x@c.com %@ab.cd@ef.com éa.b@x.com")
@given(_text(_EMAIL_PIECES, 16))
def test_email_scan_finds_the_matches_of_the_pattern(text: str) -> None:
    assert [m.span() for m in redact._email_matches(text)] == \
        [m.span() for m in redact._EMAIL.finditer(text)]
    assert redact._EMAIL_LINEAR.sub(lambda m: "[E]", text) == redact._EMAIL.sub("[E]", text)


@example("sk-aaaa-eyJabcdefgh.eyJabcdefgh.abcdefghij-sk-abcdefghijklmnopq")
@example("Bearer eyJabcdefgh.eyJabcdefgh.abcdefghij~~")
@example("eyJ-eyJabcdefgh.eyJabcdefgh.abcdefghij eyJabcdefgh.eyJ")
@given(_text(_SECRET_PIECES, 16))
def test_secret_scan_finds_the_matches_of_the_pattern(text: str) -> None:
    assert [m.span() for m in redact._secret_matches(text)] == \
        [m.span() for m in redact._SECRET.finditer(text)]

"""Tool results: was the tool call an error, empty, or a success?

A tool's answer is the most direct next state an agent gets: an exception, an HTTP error, an
``Error:`` payload or an unknown-tool message says the call was wrong; an empty result says it
found nothing; anything else is a (weak) success. The reward is put on the tool-call
arguments (``credit="tool_args"``): the tool judged the call, not the prose around it.

Structured (JSON) results are judged by their structure (an ``error`` key with a value, a 4xx
status, ``ok: false``), and plain-text results by how they *start*: a search result or a file
that merely mentions "Error:" somewhere inside is a successful call, not a failed one.
Terminal and GUI tools are skipped by default: their own extractors read them better.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

import msgspec

from nextstate.extractors.lru import LruCache
from nextstate.extractors.names import GUI_TOOLS, TERMINAL_TOOLS
from nextstate.extractors.registry import register
from nextstate.extractors.types import (
    Interaction,
    ScoredTuple,
    answer_to,
    directive,
    evaluative,
    tool_results_for,
)

# Severity -> (reward, confidence). Ordered from the most to the least certain reading.
_ERROR_PATTERNS: tuple[tuple[str, re.Pattern[str], float, float], ...] = (
    ("unknown_tool", re.compile(r"\b(unknown|no such|invalid|unsupported|unrecognized) "
                                r"(tool|function)\b|\btool .{1,40} (not found|does not exist)",
                                re.I), -1.0, 0.95),
    ("schema", re.compile(r"\b(missing (a )?(required )?(argument|parameter|field|property|key)|"
                          r"required (argument|parameter|property|field)|invalid (argument|"
                          r"parameter|value|input|arguments)|validation error|unexpected "
                          r"keyword|is not of type|must be (a|an|one of)|is a required "
                          r"property|additional properties are not allowed|"
                          r"failed to parse (arguments|json))\b", re.I), -0.9, 0.9),
    # (Hostile text, though these only see a result's first 300 characters: the indent of
    # "exception" stays on its line, ``\s*[\[{]?\s*`` and ``[ /:=]*\s*`` are split one way
    # only, so runs of blanks are not tried once per way of cutting them: 14 ms and 6 ms at
    # 300 characters before. Each still matches where it did: tests/extractors/
    # test_hostile_text.py.)
    ("exception", re.compile(r"^[^\S\n]*+(Traceback \(most recent call last\)|(\w+\.)*\w*("
                             r"Error|Exception)\b[:(]|(\w+\.)*errors?\.\w+:)", re.M), -0.8, 0.9),
    ("error_payload", re.compile(r"^\s*+(?:[\[{]\s*+)?\"?(error|err|failed|failure|fatal)\"?"
                                 r"(\s+\d{3})?\s*[:=!]", re.I), -0.8, 0.85),
    ("http_error", re.compile(r"\b(HTTP(/\d(\.\d)?)?|status(?: code)?)[ /:=]*+\s*+[45]\d\d\b|"
                              r"^\s*[45]\d\d (Not Found|Bad Request|Unauthorized|Forbidden|"
                              r"Internal Server Error|Service Unavailable|Too Many Requests)|"
                              r"^\s*[45]\d\d\s+[A-Z][a-z]+(\s+[A-Z][a-z]+)*\s*$",
                              re.I), -0.7, 0.85),
    ("timeout", re.compile(r"\b(timed? ?out|deadline exceeded)\b", re.I), -0.5, 0.8),
    ("partial_failure", re.compile(r"\b[1-9]\d* (failed|errors?|failures)\b|\bpartial(ly)? "
                                   r"fail", re.I), -0.5, 0.7),
)
# ``\s*+``: a result of blanks only was tried once per way of cutting them around the empty
# alternative (0.3 s at 8 KB, 1 ms at the 300 characters it reads); same answers.
_EMPTY = re.compile(r"^\s*+(|null|none|\[\]|\{\}|\"\"|no (results?|matches|data|records|items)"
                    r"( found| returned)?\.?|nothing found\.?|not found\.?|0 results?( found)?"
                    r"\.?)\s*+$", re.I)
# Tried in order: the most specific statement of what was expected wins.
_EXPECTED_HINTS: tuple[re.Pattern[str], ...] = (
    re.compile(r"did you mean[^.\n]{0,80}", re.I),
    # "<name> is a required property" starts at a quote or where a run of name characters
    # starts: from inside a run it scanned the same run again, so 4 KB of "a.a.a..." took
    # 0.4 s; a match from inside one would have been found at the run's start.
    re.compile(r"missing (?:a )?(?:required )?(?:argument|parameter|field|property|key)s?:?\s*"
               r"'?\"?[\w.]+'?\"?|(?:'\"?|\"|(?<![\w.]))[\w.]++'?\"? is a required property",
               re.I),
    re.compile(r"(?:expected|must be(?: one of)?|should be|(?:allowed|valid|available|"
               r"supported) (?:values|options|times|choices|formats)(?: are)?)[^.\n]{0,80}",
               re.I),
    re.compile(r"unknown (?:tool|function)[^.\n]{0,60}", re.I),
)
_ERROR_KEYS = ("error", "errors", "exception", "error_message", "err")
_EMPTY_KEYS = ("results", "items", "data", "hits", "rows", "records", "matches")
_TRACEBACK_END = re.compile(r"^(\w+\.)*\w*(Error|Exception)(: .*)?$")
_ERROR_STATUSES = frozenset({"error", "failed", "failure", "fail", "fatal"})
_STATUS_KEYS = ("status", "status_code", "statusCode", "code")
# Every key _classify_json reads: a JSON object with none of them is a plain success.
_READ_KEYS = frozenset((*_ERROR_KEYS, *_STATUS_KEYS, "ok", "success", *_EMPTY_KEYS))
_HEAD_CHARS = 300


# A necessary lower-case substring of some alternative of each pattern above, in order: a
# pattern whose needles are all absent from the lowered text cannot match, so it is skipped
# (ASCII text only: re.I also folds a few non-ASCII letters onto ASCII ones). The regexes
# stay the only judges of what matches; tests check gated == ungated.
_ERROR_NEEDLES: tuple[tuple[str, ...], ...] = (
    ("tool", "function"),
    ("missing", "required", "invalid", "validation error", "unexpected keyword",
     "is not of type", "must be", "additional properties", "failed to parse"),
    ("traceback", "error", "exception"),
    ("err", "fail", "fatal"),
    ("http", "status", "4", "5"),
    ("time", "deadline exceeded"),
    ("fail", "error", "partial"),
)
_HINT_NEEDLES: tuple[tuple[str, ...], ...] = (
    ("did you mean",),
    ("missing", "required property"),
    ("expected", "must be", "should be", "values", "options", "times", "choices", "formats"),
    ("unknown",),
)


def _gated(text: str, patterns: tuple[re.Pattern[str], ...],
           needles: tuple[tuple[str, ...], ...]) -> tuple[int, re.Match[str]] | None:
    """The first pattern that matches ``text``: its index and match (``None``: none does)."""
    low = text.lower() if text.isascii() else None
    for index, pattern in enumerate(patterns):
        if low is not None:
            for needle in needles[index]:
                if needle in low:
                    break
            else:
                continue
        match = pattern.search(text)
        if match:
            return index, match
    return None


_ERROR_REGEXES = tuple(pattern for _, pattern, _, _ in _ERROR_PATTERNS)


def _classify_text(head: str) -> tuple[str, float, float] | None:
    found = _gated(head, _ERROR_REGEXES, _ERROR_NEEDLES)
    if found is None:
        return None
    label, _, reward, confidence = _ERROR_PATTERNS[found[0]]
    return label, reward, confidence


def _expected_hint(text: str) -> re.Match[str] | None:
    """The first of ``_EXPECTED_HINTS`` that matches ``text``."""
    found = _gated(text, _EXPECTED_HINTS, _HINT_NEEDLES)
    return None if found is None else found[1]


def _classify_json(data: Any) -> tuple[str, float, float] | None:
    """Judge a decoded JSON result by its structure; ``None`` when it says nothing either way."""
    if type(data) is dict and data and _READ_KEYS.isdisjoint(data):
        return "success", 0.5, 0.7  # no key below is present: what the checks below conclude
    if data is None or data == "" or data == [] or data == {}:
        return "empty", -0.3, 0.6
    if not isinstance(data, dict):
        return ("success", 0.5, 0.7) if isinstance(data, list) else None
    for key in _ERROR_KEYS:
        value = data.get(key)
        if value:
            detail = value if isinstance(value, str) else msgspec.json.encode(value).decode()
            return _classify_text(detail[:_HEAD_CHARS]) or ("error_payload", -0.8, 0.85)
    for key in _STATUS_KEYS:
        value = data.get(key)
        if isinstance(value, int) and 400 <= value < 600:
            return "http_error", -0.7, 0.85
        if key == "status" and isinstance(value, str) and value.lower() in _ERROR_STATUSES:
            return "error_payload", -0.8, 0.85
    if data.get("ok") is False or data.get("success") is False:
        return "error_payload", -0.8, 0.85
    present = [k for k in _EMPTY_KEYS if k in data]
    if present and all(not data[k] for k in present):
        return "empty", -0.3, 0.6
    return "success", 0.5, 0.7


def classify_tool_result(text: str) -> tuple[str, float, float]:
    """Classify a tool result's text as ``(label, reward, confidence)``.

    Labels: one of the error kinds, ``empty`` or ``success``.

    >>> classify_tool_result("Error: missing required argument 'date'")[0]
    'schema'
    >>> classify_tool_result('{"results": [{"title": "Fixing Error: ENOENT"}], "error": null}')[0]
    'success'
    """
    stripped = text.strip()
    if stripped[:1] in ("{", "[", '"') or stripped in ("null", ""):
        try:
            reading = _classify_json(msgspec.json.decode(stripped)) if stripped else None
        except msgspec.DecodeError:
            reading = None
        if reading is not None:
            return reading
        if not stripped:
            return "empty", -0.3, 0.6
    first, _, rest = stripped.partition("\n")
    head = first[:_HEAD_CHARS]
    reading = _classify_text(head)
    if reading is None and rest and _TRACEBACK_END.match(rest.rpartition("\n")[2]):
        reading = "exception", -0.8, 0.9  # a traceback's last line names the exception
    if reading is not None:
        return reading
    if _EMPTY.match(head):
        return "empty", -0.3, 0.6
    return "success", 0.5, 0.6


class ToolReading(NamedTuple):
    """How one tool result reads: :func:`classify_tool_result` and the expected-value hint.

    ``hint`` is the stripped text of :func:`_expected_hint` for an error (``None``: none, or
    not an error, i.e. not a negative reading other than ``empty``).
    """

    label: str
    reward: float
    confidence: float
    hint: str | None


def read_tool_result(content: str) -> ToolReading:
    """Everything the tool extractor reads from one result's text."""
    label, reward, confidence = classify_tool_result(content)
    hint = None
    if reward < 0 and label != "empty":
        match = _expected_hint(content[:4000])
        if match:
            hint = match.group(0).strip()
    return ToolReading(label, reward, confidence, hint)


@register("tool")
class ToolResultExtractor:
    """Scores each answered tool call of an action; directive hints from error messages.

    Args:
        ignore_tools: tool names to skip; by default the terminal and GUI tools, which the
            ``terminal`` and ``gui`` extractors own.
        excerpt_chars: how much of the tool result to keep as the next-state excerpt.
        memo_entries: how many readings of short results to keep.
        memo_chars: results up to this long are memoized.
    """

    reads = frozenset({"tool"})  # see registry.Dispatch
    __slots__ = ("_readings", "excerpt_chars", "ignore_tools", "memo_chars")

    def __init__(self, ignore_tools: tuple[str, ...] | list[str] | None = None,
                 excerpt_chars: int = 300, memo_entries: int = 4096,
                 memo_chars: int = 1000) -> None:
        self.ignore_tools = (frozenset(ignore_tools) if ignore_tools is not None
                             else TERMINAL_TOOLS | GUI_TOOLS)
        self.excerpt_chars = excerpt_chars
        # Tool errors are templated ("Error: missing required argument 'day'", "[]",
        # "Unknown tool: x") and recur across sessions: read each short result once.
        # Bounded; long results are rarely repeated and skip it.
        self.memo_chars = memo_chars
        self._readings: LruCache[ToolReading] = LruCache(memo_entries, memo_entries * 256)

    def scores_call_to(self, name: str) -> bool:
        """Whether an action whose only tool call is to ``name`` can get a tuple (see
        registry.Dispatch): not if the tool is ignored."""
        return name not in self.ignore_tools

    def _read(self, content: str) -> ToolReading:
        if len(content) > self.memo_chars:
            return read_tool_result(content)
        reading = self._readings.get(content)
        if reading is None:
            reading = read_tool_result(content)
            self._readings.put(content, reading, len(content))
        return reading

    def __call__(self, interaction: Interaction) -> list[ScoredTuple]:
        calls = interaction.action.tool_calls
        if len(calls) == 1:  # the usual action: no pairing lists, no min
            call = calls[0]
            if call.name in self.ignore_tools:
                return []
            answer = answer_to(call, interaction.next_state)
            if answer is None:
                return []
            reading = self._read(answer.content)
        else:
            scored = [(call, answer, self._read(answer.content))
                      for call, answer in tool_results_for(interaction)
                      if call.name not in self.ignore_tools]
            if not scored:
                return []
            # One evaluative tuple per action: the worst call decides (one bad call spoils
            # the turn).
            call, answer, reading = min(scored, key=lambda s: s[2].reward)
        label = reading.label
        excerpt = f"[{call.name}] {label}: {answer.content[: self.excerpt_chars]}"
        tuples = [evaluative(interaction, "tool", "tool", excerpt, reading.reward,
                             reading.confidence, "tool_args")]
        if reading.hint is not None:
            tuples.append(directive(interaction, "tool", "tool", excerpt,
                                    f"The call to {call.name} failed: {reading.hint}.", 0.7,
                                    "tool_args"))
        return tuples

"""Tool results: was the tool call an error, empty, or a success?

A tool's answer is the most direct next state an agent gets: an exception, an HTTP error, an
``Error:`` payload or an unknown-tool message says the call was wrong; an empty result says it
found nothing; anything else is a (weak) success. The reward is put on the tool-call
arguments (``credit="tool_args"``): the tool judged the call, not the prose around it.
"""

from __future__ import annotations

import re

from nextstate.extractors.registry import register
from nextstate.extractors.types import Interaction, ScoredTuple, tool_results_for, tuple_from

# Severity -> (reward, confidence). Ordered from the most to the least certain reading.
_ERROR_PATTERNS: tuple[tuple[str, re.Pattern[str], float, float], ...] = (
    ("unknown_tool", re.compile(r"\b(unknown|no such|invalid|unsupported) (tool|function)\b",
                                re.I), -1.0, 0.95),
    ("schema", re.compile(r"\b(missing (required )?(argument|parameter|field)|"
                          r"required (argument|parameter|property)|invalid (argument|"
                          r"parameter|value)|validation error|unexpected keyword|"
                          r"is not of type|must be (a|an|one of))\b", re.I), -0.9, 0.9),
    ("exception", re.compile(r"^\s*(Traceback \(most recent call last\)|\w+(Error|Exception)"
                             r"\b[:(])", re.I | re.M), -0.8, 0.9),
    ("error_payload", re.compile(r"^\s*[\[{]?\s*\"?(error|err)\"?\s*[:=]", re.I), -0.8, 0.85),
    ("http_error", re.compile(r"\b(HTTP|status(?: code)?)[ /:=]*\s*[45]\d\d\b", re.I),
     -0.7, 0.85),
    ("timeout", re.compile(r"\b(timed? ?out|deadline exceeded)\b", re.I), -0.5, 0.8),
)
_EMPTY = re.compile(r"^\s*(|null|none|\[\]|\{\}|\"\"|no results?( found)?\.?|not found\.?)\s*$",
                    re.I)
_EXPECTED_HINT = re.compile(
    r"(missing (?:required )?(?:argument|parameter|field)s?:?\s*'?\"?[\w.]+'?\"?|"
    r"(?:expected|must be|should be|required)[^.\n]{0,80}|"
    r"unknown (?:tool|function)[^.\n]{0,60})",
    re.I,
)


def classify_tool_result(text: str) -> tuple[str, float, float]:
    """Classify a tool result's text as ``(label, reward, confidence)``.

    Labels: one of the error kinds, ``empty`` or ``success``.

    >>> classify_tool_result("Error: missing required argument 'date'")[0]
    'schema'
    """
    head = text[:4000]
    for label, pattern, reward, confidence in _ERROR_PATTERNS:
        if pattern.search(head):
            return label, reward, confidence
    if _EMPTY.match(head):
        return "empty", -0.3, 0.6
    return "success", 0.5, 0.6


@register("tool")
class ToolResultExtractor:
    """Scores each answered tool call of an action; directive hints from error messages.

    Args:
        ignore_tools: tool names to skip (e.g. GUI tools scored by the ``gui`` extractor).
        excerpt_chars: how much of the tool result to keep as the next-state excerpt.
    """

    __slots__ = ("excerpt_chars", "ignore_tools")

    def __init__(self, ignore_tools: tuple[str, ...] | list[str] = (),
                 excerpt_chars: int = 300) -> None:
        self.ignore_tools = frozenset(ignore_tools)
        self.excerpt_chars = excerpt_chars

    def __call__(self, interaction: Interaction) -> list[ScoredTuple]:
        scored = [
            (call, answer, *classify_tool_result(answer.content))
            for call, answer in tool_results_for(interaction)
            if call.name not in self.ignore_tools
        ]
        if not scored:
            return []
        # One evaluative tuple per action: the worst call decides (one bad call spoils the turn).
        call, answer, label, reward, confidence = min(scored, key=lambda s: s[3])
        excerpt = f"[{call.name}] {label}: {answer.content[: self.excerpt_chars]}"
        tuples = [tuple_from(interaction, extractor="tool", kind="evaluative", source="tool",
                             excerpt=excerpt, reward=reward, confidence=confidence,
                             credit="tool_args")]
        if reward < 0:
            match = _EXPECTED_HINT.search(answer.content[:4000])
            if match:
                hint = f"The call to {call.name} failed: {match.group(0).strip()}."
                tuples.append(tuple_from(interaction, extractor="tool", kind="directive",
                                         source="tool", excerpt=excerpt, hint=hint,
                                         confidence=0.7, credit="tool_args"))
        return tuples

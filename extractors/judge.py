"""LLM judge: a cascaded, budgeted fallback for interactions the cheap rules leave uncertain.

The rule extractors are cheap but see only what their patterns know. For an interaction on
which none of them is confident, the judge asks an LLM (any OpenAI-compatible chat endpoint)
to score the action given its next state: ``k`` samples, majority vote on the sign, and a
hint from a sample of the majority. Extractors stay pure: the HTTP call is an injected
``complete(messages, n) -> JudgeReply`` callable (``nextstate.daemon.judge_client``).

Cascade: the daemon runs the cheap extractors first, then calls
:meth:`JudgeExtractor.judge_if_uncertain` with the tuples they produced; the judge only spends
a call when no earlier evaluative tuple reaches ``threshold`` confidence. Its plain
``__call__`` judges unconditionally. Calls and tokens are budgeted per minute; the counters
(``calls``, ``prompt_tokens``, ``completion_tokens``, ``budget_refusals``, ``failures``) are
attributes the daemon's metrics read.
"""

from __future__ import annotations

import re
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import msgspec

from nextstate.extractors.registry import register
from nextstate.extractors.types import Interaction, Message, ScoredTuple, tuple_from


class JudgeReply(msgspec.Struct, frozen=True):
    """What one judge request returned: ``n`` sampled texts and the tokens they cost."""

    texts: list[str]
    prompt_tokens: int = 0
    completion_tokens: int = 0


Complete = Callable[[list[dict[str, str]], int], JudgeReply]

SYSTEM_PROMPT = (
    "You grade one action of an AI assistant or agent by what happened next (the next "
    "state: the user's reply, tool results, terminal output or page change). Answer with "
    "exactly two lines:\n"
    "SCORE: <a number from -1 (the action was clearly wrong) to 1 (clearly right); "
    "0 if the next state says nothing about it>\n"
    "HINT: <one sentence on how the action should have been different, or NONE>"
)
_SCORE = re.compile(r"SCORE:\s*([+-]?\d+(?:\.\d+)?)", re.I)
_HINT = re.compile(r"HINT:\s*(.+)", re.I)


def _render(message: Message, limit: int) -> str:
    text = message.content
    if message.tool_calls:
        text += "".join(f"\n[call {c.name}({c.arguments})]" for c in message.tool_calls)
    if len(text) > limit:
        text = text[: limit // 2] + "\n[...]\n" + text[-limit // 2:]
    return f"[{message.role}{'/' + message.name if message.name else ''}] {text}"


def judge_messages(interaction: Interaction, context_messages: int = 4,
                   chars_per_message: int = 1500) -> list[dict[str, str]]:
    """The chat request that asks the judge to grade one interaction."""
    recent = interaction.context[-context_messages:]
    body = "\n".join([
        "CONTEXT (most recent messages):",
        *(_render(m, chars_per_message) for m in recent),
        "",
        "ACTION TO GRADE:",
        _render(interaction.action, chars_per_message * 2),
        "",
        "NEXT STATE:",
        *(_render(m, chars_per_message) for m in interaction.next_state),
        *(f"[feedback] {f.value if f.value is not None else ''} {f.text or ''}"
          for f in interaction.feedback),
    ])
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": body}]


def parse_judgement(text: str) -> tuple[float, str | None] | None:
    """``(score, hint)`` from one judge answer, or ``None`` when it has no score."""
    score = _SCORE.search(text)
    if not score:
        return None
    hint = _HINT.search(text)
    hint_text = hint.group(1).strip() if hint else None
    if hint_text and hint_text.strip(". ").upper() in ("NONE", "N/A", "NA", ""):
        hint_text = None
    return max(-1.0, min(1.0, float(score.group(1)))), hint_text


def _sign(value: float) -> int:
    return (value > 0) - (value < 0)


@register("judge")
class JudgeExtractor:
    """Scores an interaction with an LLM judge: k samples, majority vote, budgeted.

    Args:
        complete: the chat-completion callable; when ``None``, an HTTP client is built from
            ``base_url``/``model``/``api_key_env`` (``nextstate.daemon.judge_client``).
        base_url: OpenAI-compatible endpoint, e.g. ``http://127.0.0.1:8000/v1``.
        model: the judge model name.
        api_key_env: name of the environment variable holding the API key (never logged).
        k: samples per judged interaction (majority vote on the sign).
        threshold: ``judge_if_uncertain`` judges only when no earlier evaluative tuple has at
            least this confidence.
        max_calls_per_minute: requests allowed in any 60 s window.
        max_tokens_per_minute: prompt+completion tokens allowed in any 60 s window.
        clock: monotonic time source (injected by tests).

    Example:
        >>> from nextstate.extractors.types import Interaction, Message
        >>> judge = JudgeExtractor(complete=lambda m, n: JudgeReply(["SCORE: -1\\nHINT: Ask."] * n,
        ...                        10, 5))
        >>> i = Interaction("s#1", "s", (), Message("assistant", "Done."),
        ...                 (Message("user", "Hm."),))
        >>> [(t.kind, t.reward) for t in judge(i)], judge.calls
        ([('evaluative', -1.0), ('directive', 0.0)], 1)
    """

    __slots__ = ("_complete", "_window", "budget_refusals", "calls", "clock",
                 "completion_tokens", "failures", "k", "max_calls_per_minute",
                 "max_tokens_per_minute", "prompt_tokens", "threshold")

    def __init__(self, complete: Complete | None = None, *, base_url: str | None = None,
                 model: str | None = None, api_key_env: str | None = None, k: int = 3,
                 threshold: float = 0.8, max_calls_per_minute: int = 60,
                 max_tokens_per_minute: int = 200_000, timeout_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if complete is None:
            if not base_url or not model:
                raise ValueError("the judge needs `complete` or both `base_url` and `model`")
            from nextstate.daemon.judge_client import OpenAIJudgeClient  # I/O at the edge

            complete = OpenAIJudgeClient(base_url, model, api_key_env=api_key_env,
                                         timeout_s=timeout_s)
        self._complete = complete
        self.k = k
        self.threshold = threshold
        self.max_calls_per_minute = max_calls_per_minute
        self.max_tokens_per_minute = max_tokens_per_minute
        self.clock = clock
        self._window: deque[tuple[float, int]] = deque()  # (time, tokens) of recent calls
        self.calls = self.prompt_tokens = self.completion_tokens = 0
        self.budget_refusals = self.failures = 0

    def _within_budget(self) -> bool:
        now = self.clock()
        while self._window and now - self._window[0][0] >= 60.0:
            self._window.popleft()
        tokens = sum(t for _, t in self._window)
        return len(self._window) < self.max_calls_per_minute and \
            tokens < self.max_tokens_per_minute

    def judge_if_uncertain(self, interaction: Interaction,
                           earlier: Sequence[ScoredTuple]) -> list[ScoredTuple]:
        """Judge only if no earlier evaluative tuple is confident (the daemon's cascade step)."""
        if any(t.kind == "evaluative" and t.confidence >= self.threshold for t in earlier):
            return []
        return self(interaction)

    def __call__(self, interaction: Interaction) -> list[ScoredTuple]:
        if not interaction.next_state and not interaction.feedback:
            return []
        if not self._within_budget():
            self.budget_refusals += 1
            return []
        try:
            reply = self._complete(judge_messages(interaction), self.k)
        except Exception:  # a judge outage must not stop extraction
            self.failures += 1
            return []
        self.calls += 1
        self.prompt_tokens += reply.prompt_tokens
        self.completion_tokens += reply.completion_tokens
        self._window.append((self.clock(), reply.prompt_tokens + reply.completion_tokens))
        votes = [v for v in (parse_judgement(t) for t in reply.texts) if v is not None]
        if not votes:
            self.failures += 1
            return []
        signs = [_sign(score) for score, _ in votes]
        winner = max((-1, 0, 1), key=lambda s: (signs.count(s), s == 0))
        majority = [(score, hint) for score, hint in votes if _sign(score) == winner]
        if winner == 0:
            return []
        reward = sum(score for score, _ in majority) / len(majority)
        agreement = len(majority) / max(self.k, len(votes))
        confidence = 0.9 * agreement
        excerpt = " | ".join(t[:200] for t in reply.texts[:3])
        tuples = [tuple_from(interaction, extractor="judge", kind="evaluative", source="judge",
                             excerpt=excerpt, reward=reward, confidence=confidence)]
        hint = next((h for _, h in majority if h), None)
        if hint and reward < 0:
            tuples.append(tuple_from(interaction, extractor="judge", kind="directive",
                                     source="judge", excerpt=excerpt, hint=hint[:300],
                                     confidence=min(confidence, 0.8)))
        return tuples

    def metrics(self) -> dict[str, int]:
        """Counters for the daemon's metrics (namespaced by the caller)."""
        return {"calls": self.calls, "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens,
                "budget_refusals": self.budget_refusals, "failures": self.failures}

    def state_dict(self) -> dict[str, Any]:
        """The counters (the rate window restarts empty: budgets are per minute)."""
        return self.metrics()

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        """Restore counters saved by :meth:`state_dict`."""
        for key in ("calls", "prompt_tokens", "completion_tokens", "budget_refusals",
                    "failures"):
            setattr(self, key, int(state.get(key, 0)))

"""Redaction: personal data and secrets never leave the extractor stage.

Every tuple passes through a :class:`Redactor` before it is stored: e-mail addresses, phone
numbers, card numbers (Luhn-checked, so order ids and timestamps survive), API keys / tokens
and any configured regexes are replaced by typed placeholders ``[EMAIL]``, ``[PHONE]``,
``[CARD]``, ``[SECRET]``, ``[REDACTED:<name>]``. It covers every text field of a tuple:
context, action, excerpt, hint, chosen/rejected and tool-call arguments.

It runs on every tuple, so it is built for the common case of nothing to redact: one combined
precompiled scan per string, and a per-message cache because the context of one session is
shared by all its tuples (each message is redacted once, not once per tuple).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import msgspec

from nextstate.extractors.types import Message, ScoredTuple, ToolCall

_BUILTIN = re.compile(
    r"(?P<SECRET>"
    r"\b(?:sk|pk|rk)-(?:proj-|live-|test-|ant-)?[A-Za-z0-9_-]{16,}"
    r"|\b(?:ghp|gho|ghu|ghs|ghr|github_pat)_[A-Za-z0-9_]{20,}"
    r"|\bAKIA[0-9A-Z]{16}\b"
    r"|\bxox[abprs]-[A-Za-z0-9-]{10,}"
    r"|\bAIza[0-9A-Za-z_-]{35}"
    r"|\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"
    r"|(?<=Bearer )[A-Za-z0-9._~+/-]{16,}=*"
    r"|(?<=[\"' ])(?:[Aa]pi[_-]?[Kk]ey|[Tt]oken|[Ss]ecret|[Pp]assword|[Pp]asswd)[\"']?\s*[:=]"
    r"\s*[\"']?[^\s\"',;]{8,}"
    r"|^(?:[Aa]pi[_-]?[Kk]ey|[Tt]oken|[Ss]ecret|[Pp]assword)\s*[:=]\s*[\"']?[^\s\"',;]{8,})"
    r"|(?P<EMAIL>\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b)"
    r"|(?P<CARD>(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-]))"
    r"|(?P<PHONE>(?<![\w+.])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{2,4}\)[\s.-]?|\d{2,4}[\s.-])\d{3,4}"
    r"[\s.-]\d{3,4}(?![\w-]|\.\d)|(?<![\w+])\+\d{7,14}\b)",
    re.M,
)
_CANDIDATE = re.compile(r"[@\d]|sk-|pk-|rk-|gh[pousr]_|github_pat|AKIA|xox|AIza|eyJ|Bearer|"
                        r"[Kk]ey|[Tt]oken|[Ss]ecret|[Pp]ass")
_KEY_PREFIX = re.compile(r"^[A-Za-z_-]+[\"']?\s*[:=]\s*[\"']?")
_CACHE_LIMIT = 8192


def luhn_valid(digits: str) -> bool:
    """Whether a digit string passes the Luhn checksum (as real card numbers do)."""
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = ord(char) - 48
        if index % 2:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


class Redactor:
    """Replaces personal data and secrets in every text field of a tuple.

    Args:
        enabled: when false, tuples pass through untouched.
        patterns: extra ``{name: regex}`` to replace with ``[REDACTED:<name>]``.

    Attributes:
        counts: redactions made so far, by placeholder type (``EMAIL``, ``PHONE``, ``CARD``,
            ``SECRET``, ``REDACTED:<name>``); a context message shared by many tuples is
            redacted, and counted, once.

    Example:
        >>> from nextstate.extractors.types import Message, ScoredTuple
        >>> t = ScoredTuple("i", "s", "user", "evaluative", "user", (),
        ...                 Message("assistant", "Mail bob@example.com"))
        >>> Redactor()(t).action.content
        'Mail [EMAIL]'
    """

    __slots__ = ("_cache", "_custom", "counts", "enabled")

    def __init__(self, enabled: bool = True, patterns: Mapping[str, str] | None = None) -> None:
        self.enabled = enabled
        self._custom = tuple((f"REDACTED:{name}", re.compile(regex))
                             for name, regex in (patterns or {}).items())
        self.counts: dict[str, int] = {}
        self._cache: dict[Message, Message] = {}

    def _replace(self, match: re.Match[str]) -> str:
        kind = match.lastgroup or "SECRET"
        text = match.group(0)
        if kind == "CARD":
            digits = text.replace(" ", "").replace("-", "")
            if not luhn_valid(digits):
                return text
        self.counts[kind] = self.counts.get(kind, 0) + 1
        if kind == "SECRET":
            key = _KEY_PREFIX.match(text)
            if key:  # keep "api_key=" so the redacted text still reads
                return f"{key.group(0)}[SECRET]"
        return f"[{kind}]"

    def redact_text(self, text: str) -> str:
        """Redact one string."""
        if not text:
            return text
        if _CANDIDATE.search(text):
            text = _BUILTIN.sub(self._replace, text)
        for placeholder, pattern in self._custom:
            text, made = pattern.subn(f"[{placeholder}]", text)
            if made:
                self.counts[placeholder] = self.counts.get(placeholder, 0) + made
        return text

    def redact_message(self, message: Message) -> Message:
        """Redact a message's content and tool-call arguments (cached per message)."""
        cached = self._cache.get(message)
        if cached is not None:
            return cached
        content = self.redact_text(message.content)
        calls = tuple(
            c if (args := self.redact_text(c.arguments)) == c.arguments
            else ToolCall(c.id, c.name, args) for c in message.tool_calls
        )
        if content == message.content and calls == message.tool_calls:
            redacted = message
        else:
            redacted = msgspec.structs.replace(message, content=content, tool_calls=calls)
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[message] = redacted
        return redacted

    def __call__(self, scored: ScoredTuple) -> ScoredTuple:
        """The tuple with every text field redacted (the same object if nothing changed)."""
        if not self.enabled:
            return scored
        context = tuple(self.redact_message(m) for m in scored.context)
        action = self.redact_message(scored.action)
        excerpt = self.redact_text(scored.next_state_excerpt)
        hint = self.redact_text(scored.hint) if scored.hint else scored.hint
        chosen = self.redact_message(scored.chosen) if scored.chosen else None
        rejected = self.redact_message(scored.rejected) if scored.rejected else None
        if (excerpt == scored.next_state_excerpt and hint == scored.hint
                and action is scored.action and chosen is scored.chosen
                and rejected is scored.rejected
                and all(a is b for a, b in zip(context, scored.context, strict=True))):
            return scored
        return msgspec.structs.replace(scored, context=context, action=action,
                                       next_state_excerpt=excerpt, hint=hint, chosen=chosen,
                                       rejected=rejected)

    def state_dict(self) -> dict[str, dict[str, int]]:
        """The redaction counts (the cache is rebuilt on demand)."""
        return {"counts": dict(self.counts)}

    def load_state_dict(self, state: Mapping[str, Mapping[str, int]]) -> None:
        """Restore counts saved by :meth:`state_dict`."""
        self.counts = dict(state.get("counts", {}))

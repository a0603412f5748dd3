"""Redaction: personal data and secrets never leave the extractor stage.

Every tuple passes through a :class:`Redactor` before it is stored: e-mail addresses, phone
numbers, card numbers (Luhn-checked, so order ids and timestamps survive), API keys / tokens
and any configured regexes are replaced by typed placeholders ``[EMAIL]``, ``[PHONE]``,
``[CARD]``, ``[SECRET]``, ``[REDACTED:<name>]``. It covers every text field of a tuple:
context, action, excerpt, hint, chosen/rejected and tool-call arguments.

It runs on every tuple, so it is built for the common case of nothing to redact: cheap
substring guards before each precompiled scan, and two bounded LRU memos, because the context
of one session is shared by all its tuples: redacted messages (each message is redacted once,
not once per tuple) and, per session, the last redacted context, which the next interaction's
longer context extends (only its new messages are looked at; the shared prefix is checked by
identity at C speed). Both memos are bounded by entries and characters, so a long-running
daemon's memory stays flat.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from operator import is_

import msgspec

from nextstate.extractors.lru import LruCache
from nextstate.extractors.types import Message, ScoredTuple, ToolCall

# One pattern per type, each behind a cheap guard (``in`` scans run at C speed), so that the
# common string (nothing to redact) costs a few substring checks, not a regex scan.
_SECRET = re.compile(
    r"\b(?:sk|pk|rk)-(?:proj-|live-|test-|ant-)?[A-Za-z0-9_-]{16,}"
    r"|\b(?:ghp|gho|ghu|ghs|ghr|github_pat)_[A-Za-z0-9_]{20,}"
    r"|\bAKIA[0-9A-Z]{16}\b"
    r"|\bxox[abprs]-[A-Za-z0-9-]{10,}"
    r"|\bAIza[0-9A-Za-z_-]{35}"
    r"|\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"
    r"|(?<=Bearer )[A-Za-z0-9._~+/-]{16,}=*"
    r"|(?<=[\"' ])(?:[Aa]pi[_-]?[Kk]ey|[Tt]oken|[Ss]ecret|[Pp]assword|[Pp]asswd)[\"']?\s*[:=]"
    r"\s*[\"']?[^\s\"',;]{8,}"
    r"|^(?:[Aa]pi[_-]?[Kk]ey|[Tt]oken|[Ss]ecret|[Pp]assword)\s*[:=]\s*[\"']?[^\s\"',;]{8,}",
    re.M)


def _may_hold_secret(text: str) -> bool:
    # An ``or`` chain of ``in`` tests (the cheapest guard CPython offers), one necessary
    # substring per alternative of ``_SECRET`` ("k-" stands for sk-/pk-/rk-): plain words
    # ("they", "broken", "high") must not send long outputs through that scan.
    return ("k-" in text or "AKIA" in text or "AIza" in text or "xox" in text
            or "eyJ" in text or "Bearer " in text or ("_" in text and "gh" in text)
            or (("=" in text or ":" in text) and ("oken" in text or "ecret" in text
                                                  or "assw" in text
                                                  or ("pi" in text and "ey" in text))))


_EMAIL = re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
_DIGIT_RUN = re.compile(r"\d[\d ().+-]{7,}\d")
# Cards before phones in one alternation: a Luhn-invalid 16-digit id is kept whole rather
# than cut into phone-shaped pieces.
_NUMBER = re.compile(
    r"(?P<CARD>(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-]))"
    r"|(?P<PHONE>(?<![\w+.])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{2,4}\)[\s.-]?|\d{2,4}[\s.-])\d{3,4}"
    r"[\s.-]\d{3,4}(?![\w-]|\.\d)|(?<![\w+])\+\d{7,14}\b)")
_KEY_PREFIX = re.compile(r"^[A-Za-z_-]+[\"']?\s*[:=]\s*[\"']?")
MESSAGE_CACHE_ENTRIES = 8192
MESSAGE_CACHE_CHARS = 16_000_000
CONTEXT_CACHE_SESSIONS = 2048
CONTEXT_CACHE_CHARS = 64_000_000
_SHORT_CONTEXT = 6
_UNCHANGED = Message("system", "\x00unchanged")  # memo value: the message needs no redaction


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

    __slots__ = ("_contexts", "_custom", "_last_text", "_messages", "counts", "enabled")

    def __init__(self, enabled: bool = True, patterns: Mapping[str, str] | None = None,
                 cache_entries: int = MESSAGE_CACHE_ENTRIES,
                 cache_chars: int = MESSAGE_CACHE_CHARS,
                 cache_sessions: int = CONTEXT_CACHE_SESSIONS,
                 cache_context_chars: int = CONTEXT_CACHE_CHARS) -> None:
        self.enabled = enabled
        self._custom = tuple((f"REDACTED:{name}", re.compile(regex))
                             for name, regex in (patterns or {}).items())
        self.counts: dict[str, int] = {}
        # The evaluative and directive tuples of one reading share their excerpt object.
        self._last_text: tuple[str, str] = ("", "")
        # Message -> redacted message (or _UNCHANGED), sized by characters (GUI trees can be
        # 100 KB each).
        self._messages: LruCache[Message] = LruCache(cache_entries, cache_chars)
        # session id -> (context, redacted context, its characters): the next context of the
        # session usually extends it. Sized by characters: it keeps closed sessions alive.
        self._contexts: LruCache[tuple[tuple[Message, ...], tuple[Message, ...], int]] = \
            LruCache(cache_sessions, cache_context_chars)

    def _sub(self, kind: str, pattern: re.Pattern[str], text: str) -> str:
        def replace(match: re.Match[str]) -> str:
            found = match.group(0)
            found_kind = match.lastgroup or kind
            if found_kind == "CARD" and not luhn_valid(found.replace(" ", "").replace("-", "")):
                return found  # order ids and timestamps fail the checksum
            self.counts[found_kind] = self.counts.get(found_kind, 0) + 1
            if found_kind == "SECRET":
                key = _KEY_PREFIX.match(found)
                if key:  # keep "api_key=" so the redacted text still reads
                    return f"{key.group(0)}[SECRET]"
            return f"[{found_kind}]"

        return pattern.sub(replace, text)

    def redact_text(self, text: str) -> str:
        """Redact one string."""
        if not text:
            return text
        last = self._last_text
        if text is last[0]:
            return last[1]
        original = text
        if _may_hold_secret(text):
            text = self._sub("SECRET", _SECRET, text)
        if "@" in text:
            text = self._sub("EMAIL", _EMAIL, text)
        if _DIGIT_RUN.search(text):
            text = self._sub("PHONE", _NUMBER, text)
        for placeholder, pattern in self._custom:
            text, made = pattern.subn(f"[{placeholder}]", text)
            if made:
                self.counts[placeholder] = self.counts.get(placeholder, 0) + made
        self._last_text = (original, text)
        return text

    def redact_message(self, message: Message) -> Message:
        """Redact a message's content and tool-call arguments (memoised per message)."""
        cached = self._messages.get(message)
        if cached is not None:
            # An equal message may be another object: hand back the caller's when unchanged.
            return message if cached is _UNCHANGED else cached  # type: ignore[return-value]
        content = self.redact_text(message.content)
        calls = tuple(
            c if (args := self.redact_text(c.arguments)) == c.arguments
            else ToolCall(c.id, c.name, args) for c in message.tool_calls
        ) if message.tool_calls else message.tool_calls
        size = len(message.content) + sum(len(c.arguments) for c in calls)
        if content == message.content and calls == message.tool_calls:
            self._messages.put(message, _UNCHANGED, size)
            return message
        redacted = msgspec.structs.replace(message, content=content, tool_calls=calls)
        self._messages.put(message, redacted, size)
        return redacted

    def redact_context(self, session_id: str,
                       context: tuple[Message, ...]) -> tuple[Message, ...]:
        """Redact a context; the same tuple object when nothing in it changed.

        Reuses the session's last redacted context when ``context`` is it or extends it
        (the join builds each context as the previous one plus the new messages).
        """
        if len(context) <= _SHORT_CONTEXT:  # a few memo hits cost less than the bookkeeping
            if not context:
                return context
            short = tuple(map(self.redact_message, context))
            return context if all(map(is_, short, context)) else short
        last = self._contexts.get(session_id)
        if last is not None and last[0] is context:
            return last[1]
        start, prefix, chars = 0, None, 0
        if last is not None:
            known = len(last[0])
            if known <= len(context) and context[:known] == last[0]:
                start, prefix, chars = known, last[1], last[2]
        tail = context[start:]
        chars += sum(len(m.content) for m in tail)
        redacted_tail = tuple(map(self.redact_message, tail))
        tail_same = all(map(is_, redacted_tail, tail))
        if prefix is None:
            redacted = context if tail_same else redacted_tail
        elif prefix is last[0] and tail_same:  # type: ignore[index]
            redacted = context  # nothing redacted so far: keep the caller's tuple
        else:
            redacted = prefix + redacted_tail
        self._contexts.put(session_id, (context, redacted, chars), chars + 1)
        return redacted

    def __call__(self, scored: ScoredTuple) -> ScoredTuple:
        """The tuple with every text field redacted (the same object if nothing changed)."""
        if not self.enabled:
            return scored
        context = self.redact_context(scored.session_id, scored.context)
        action = self.redact_message(scored.action)
        excerpt = self.redact_text(scored.next_state_excerpt)
        hint = self.redact_text(scored.hint) if scored.hint else scored.hint
        chosen = self.redact_message(scored.chosen) if scored.chosen else None
        rejected = self.redact_message(scored.rejected) if scored.rejected else None
        if (context is scored.context and excerpt == scored.next_state_excerpt
                and hint == scored.hint and action is scored.action
                and chosen is scored.chosen and rejected is scored.rejected):
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

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
identity at C speed). The tuples of one interaction share their context object, so the next
one reuses the last result outright. A third memo maps strings to their redaction and the
redactions found in them: an excerpt is usually a copy of a tool result that is scanned
again when the result reaches a context, and repeated outputs ("[]", the same error) are
common; a hit adds the counts the scan would have. Every memo is bounded by entries and
characters, so a long-running daemon's memory stays flat.

The shortcuts change nothing observable: the tuples, the counts and what the LRU memos hold
(so what they evict, and so what is counted again later) are those of redacting each tuple
on its own with plain look-ups (``tests/extractors/test_redact.py`` checks this).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping

import msgspec

from nextstate.extractors.lru import LruCache
from nextstate.extractors.types import Message, ScoredTuple, ToolCall

# One pattern per type, each behind a cheap guard (``in`` scans run at C speed), so that the
# common string (nothing to redact) costs a few substring checks, not a regex scan.
_SECRET_BEFORE_JWT = (
    r"\b(?:sk|pk|rk)-(?:proj-|live-|test-|ant-)?[A-Za-z0-9_-]{16,}"
    r"|\b(?:ghp|gho|ghu|ghs|ghr|github_pat)_[A-Za-z0-9_]{20,}"
    r"|\bAKIA[0-9A-Z]{16}\b"
    r"|\bxox[abprs]-[A-Za-z0-9-]{10,}"
    r"|\bAIza[0-9A-Za-z_-]{35}")
_JWT_PATTERN = r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"
_SECRET_AFTER_JWT = (
    r"(?<=Bearer )[A-Za-z0-9._~+/-]{16,}=*"
    r"|(?<=[\"' ])(?:[Aa]pi[_-]?[Kk]ey|[Tt]oken|[Ss]ecret|[Pp]assword|[Pp]asswd)[\"']?\s*[:=]"
    r"\s*[\"']?[^\s\"',;]{8,}"
    r"|^(?:[Aa]pi[_-]?[Kk]ey|[Tt]oken|[Ss]ecret|[Pp]assword)\s*[:=]\s*[\"']?[^\s\"',;]{8,}")
_SECRET_PATTERN = f"{_SECRET_BEFORE_JWT}|{_JWT_PATTERN}|{_SECRET_AFTER_JWT}"
# Every match starts with one of these characters, or right after "Bearer ". Asserting that
# first lets the engine leave every other position at once (the bare alternation tries each
# branch's lookbehinds and word boundaries at every character: 3-4x slower on real text); the
# matches are the same (tests/extractors/test_redact.py compares them).
_SECRET = re.compile(r"(?:(?=[AaePgprSsTtx])|(?<=Bearer ))(?:" + _SECRET_PATTERN + ")", re.M)
# Hostile text: ``_SECRET`` tries the JWT branch at every "eyJ" after a word boundary, and
# each try scans the rest of the run of JWT characters: "eyJ-eyJ-eyJ-..." is quadratic (100 KB:
# 6.5 s, 1 MB: over a minute). So a text that holds "eyJ" is scanned by _secret_matches: the
# other branches as one regex (none can start at an "e": the guard drops it) and the JWT one
# by _next_jwt, the leftmost of the two matches first (a tie is a JWT, the earlier branch),
# which are the matches of ``_SECRET`` (tests/extractors/test_hostile_text.py compares them).
_SECRET_BUT_JWT = re.compile(r"(?:(?=[AaPgprSsTtx])|(?<=Bearer ))(?:" + _SECRET_BEFORE_JWT
                             + "|" + _SECRET_AFTER_JWT + ")", re.M)
_JWT = re.compile(_JWT_PATTERN)
_JWT_RUN = re.compile(r"\beyJ[A-Za-z0-9_-]*+")  # a JWT's possible start, and the rest of its run


def _next_jwt(text: str, pos: int) -> re.Match[str] | None:
    """``_JWT.search(text, pos)``, trying one start per run of JWT characters.

    A JWT that starts later in the same run ends its first part at the same character, with
    the same text after it and a shorter first part: if the run's first start fails, so do
    the others, so the search goes on after the run.
    """
    while (start := _JWT_RUN.search(text, pos)) is not None:
        match = _JWT.match(text, start.start())
        if match is not None:
            return match
        pos = start.end()
    return None


def _secret_matches(text: str) -> Iterator[re.Match[str]]:
    """``_SECRET.finditer(text)``, in time linear in the text (see _SECRET_BUT_JWT)."""
    other = _SECRET_BUT_JWT.search(text)
    jwt = _next_jwt(text, 0)
    while other is not None or jwt is not None:
        match = jwt if other is None or (jwt is not None and jwt.start() <= other.start()) \
            else other
        yield match
        end = match.end()
        if other is not None and other.start() < end:
            other = _SECRET_BUT_JWT.search(text, end)
        if jwt is not None and jwt.start() < end:
            jwt = _next_jwt(text, end)


# ``[Aa]pi[_-]?[Kk]ey``'s necessary substrings: "pi" and "ey" alone are in most long texts
# (a 15 MB base64 blob in a tool call's arguments was scanned for secrets: 2-3 s).
_API_KEY_NEEDLES = ("pikey", "piKey", "pi_key", "pi_Key", "pi-key", "pi-Key")


def _may_hold_secret(text: str) -> bool:
    # An ``or`` chain of ``in`` tests (the cheapest guard CPython offers), one necessary
    # substring per alternative of ``_SECRET`` ("k-" stands for sk-/pk-/rk-): plain words
    # ("they", "broken", "high") must not send long outputs through that scan.
    return ("k-" in text or "AKIA" in text or "AIza" in text or "xox" in text
            or "eyJ" in text or "Bearer " in text or ("_" in text and "gh" in text)
            or (("=" in text or ":" in text) and (
                "oken" in text or "ecret" in text or "assw" in text
                or ("pi" in text and "ey" in text
                    and any(needle in text for needle in _API_KEY_NEEDLES)))))


_EMAIL_DOMAIN = r"[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b"
_EMAIL = re.compile(r"\b[A-Za-z0-9._%+-]+@" + _EMAIL_DOMAIN)
# Hostile text: ``_EMAIL`` tries every word boundary of a run like "a.a.a.a" and scans the run
# to its end each time to look for the "@" (100 KB: 18 s; one "@" anywhere passes the guard).
# _email_matches finds its matches from the other end: each "@" with a domain (_EMAIL_AT),
# then the run of local-part characters before it (C-speed string methods), whose first word
# boundary is where ``_EMAIL`` would have matched, the leftmost start that reaches this "@".
_EMAIL_LOCAL_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._%+-"
_EMAIL_AT = re.compile(r"@(?<=[A-Za-z0-9._%+-]@)" + _EMAIL_DOMAIN)
_BOUNDARY = re.compile(r"\b")


def _email_matches(text: str) -> Iterator[re.Match[str]]:
    """``_EMAIL.finditer(text)``, in time linear in the text.

    A match holds one "@": the domain after it (``_EMAIL_AT``, the same subpattern), and
    before it a local part in the run of local-part characters that ends there, starting at
    the run's first word boundary (or none: no match holds this "@"). The run holds no "@"
    and starts no earlier than the end of the last match, so each character is looked at a
    bounded number of times.
    """
    end = 0
    for at in _EMAIL_AT.finditer(text):
        position = at.start()
        low = max(end, text.rfind("@", end, position) + 1)
        run = low + len(text[low:position].rstrip(_EMAIL_LOCAL_CHARS))
        if run >= position:
            continue
        boundary = _BOUNDARY.search(text, run, position)  # endpos: \b at "@" is no start
        if boundary is None or boundary.start() >= position:
            continue
        match = _EMAIL.match(text, boundary.start())
        if match is not None:  # always, by the above
            yield match
            end = match.end()


class _LinearScan:
    """Stands in for a regex in :meth:`Redactor._sub`: ``sub`` replaces the matches that
    ``finditer`` yields (the matches of the regex it replaces), as ``re.sub`` does."""

    __slots__ = ("finditer",)

    def __init__(self, finditer: Callable[[str], Iterator[re.Match[str]]]) -> None:
        self.finditer = finditer

    def sub(self, replace: Callable[[re.Match[str]], str], text: str) -> str:
        pieces = []
        last = 0
        for match in self.finditer(text):
            pieces.append(text[last:match.start()])
            pieces.append(replace(match))
            last = match.end()
        if not pieces:
            return text  # as re.sub: the same object when nothing matched
        pieces.append(text[last:])
        return "".join(pieces)


_SECRET_LINEAR = _LinearScan(_secret_matches)
_EMAIL_LINEAR = _LinearScan(_email_matches)
_DIGIT_RUN = re.compile(r"\d[\d ().+-]{7,}\d")
# Cards before phones in one alternation: a Luhn-invalid 16-digit id is kept whole rather
# than cut into phone-shaped pieces.
_NUMBER_PATTERN = (
    r"(?P<CARD>(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-]))"
    r"|(?P<PHONE>(?<![\w+.])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{2,4}\)[\s.-]?|\d{2,4}[\s.-])\d{3,4}"
    r"[\s.-]\d{3,4}(?![\w-]|\.\d)|(?<![\w+])\+\d{7,14}\b)")
# Every match starts with a digit, "+" or "(": the same guard as _SECRET's.
_NUMBER = re.compile(r"(?=[\d+(])(?:" + _NUMBER_PATTERN + ")")
_KEY_PREFIX = re.compile(r"^[A-Za-z_-]+[\"']?\s*[:=]\s*[\"']?")
MESSAGE_CACHE_ENTRIES = 8192
MESSAGE_CACHE_CHARS = 16_000_000
CONTEXT_CACHE_SESSIONS = 2048
CONTEXT_CACHE_CHARS = 64_000_000
TEXT_CACHE_ENTRIES = 16384
TEXT_CACHE_CHARS = 8_000_000
_SHORT_CONTEXT = 6
_UNCHANGED = Message("system", "\x00unchanged")  # memo value: the message needs no redaction
_NO_CALL: tuple[str, tuple[Message, ...], tuple[Message, ...]] = ("", (_UNCHANGED,), ())


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
        cache_entries: the most messages the message memo keeps.
        cache_chars: the most characters the message memo keeps.
        cache_sessions: the most sessions whose last redacted context is kept.
        cache_context_chars: the most characters of those contexts kept.
        cache_texts: the most distinct strings whose redaction is remembered.
        cache_text_chars: the most characters of those strings kept.

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

    __slots__ = ("_contexts", "_custom", "_last_context", "_last_text", "_messages", "_texts",
                 "_texts_chars", "_texts_max_chars", "_texts_max_entries", "counts", "enabled")

    def __init__(self, enabled: bool = True, patterns: Mapping[str, str] | None = None,
                 cache_entries: int = MESSAGE_CACHE_ENTRIES,
                 cache_chars: int = MESSAGE_CACHE_CHARS,
                 cache_sessions: int = CONTEXT_CACHE_SESSIONS,
                 cache_context_chars: int = CONTEXT_CACHE_CHARS,
                 cache_texts: int = TEXT_CACHE_ENTRIES,
                 cache_text_chars: int = TEXT_CACHE_CHARS) -> None:
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
        # The last redact_context call: (session id, context, redacted context), or a
        # placeholder; the tuples of one interaction share their context object.
        self._last_context: tuple[str, tuple[Message, ...], tuple[Message, ...]] = \
            _NO_CALL
        # text -> (redacted text or None when unchanged, redactions it holds). What a scan
        # finds depends on the text alone, so a hit adds the same counts a scan would: the
        # memo saves the scans of equal strings in distinct objects (excerpts copied from tool
        # results, then the same result in the next context) and is simply emptied when full.
        self._texts: dict[str, tuple[str | None, tuple[tuple[str, int], ...]]] = {}
        self._texts_chars = 0
        self._texts_max_entries = cache_texts
        self._texts_max_chars = cache_text_chars

    def _sub(self, kind: str, pattern: re.Pattern[str] | _LinearScan, text: str,
             counts: dict[str, int]) -> str:
        def replace(match: re.Match[str]) -> str:
            found = match.group(0)
            found_kind = match.lastgroup or kind
            if found_kind == "CARD" and not luhn_valid(found.replace(" ", "").replace("-", "")):
                return found  # order ids and timestamps fail the checksum
            counts[found_kind] = counts.get(found_kind, 0) + 1
            if found_kind == "SECRET":
                key = _KEY_PREFIX.match(found)
                if key:  # keep "api_key=" so the redacted text still reads
                    return f"{key.group(0)}[SECRET]"
            return f"[{found_kind}]"

        return pattern.sub(replace, text)

    def _scan(self, text: str) -> tuple[str | None, tuple[tuple[str, int], ...]]:
        """Scan one string: its redaction (None when unchanged) and the redactions made, by
        type in the order first met; remembered in the text memo."""
        counts: dict[str, int] = {}
        redacted = text
        if _may_hold_secret(redacted):
            redacted = self._sub("SECRET", _SECRET_LINEAR if "eyJ" in redacted else _SECRET,
                                 redacted, counts)
        if "@" in redacted:
            redacted = self._sub("EMAIL", _EMAIL_LINEAR, redacted, counts)
        if _DIGIT_RUN.search(redacted):
            redacted = self._sub("PHONE", _NUMBER, redacted, counts)
        for placeholder, pattern in self._custom:
            redacted, made = pattern.subn(f"[{placeholder}]", redacted)
            if made:
                counts[placeholder] = counts.get(placeholder, 0) + made
        entry = (None if redacted == text else redacted, tuple(counts.items()))
        size = len(text)
        if (len(self._texts) >= self._texts_max_entries
                or self._texts_chars + size > self._texts_max_chars):
            self._texts.clear()  # a dropped entry only costs a rescan: no order to keep
            self._texts_chars = 0
        if size <= self._texts_max_chars:
            self._texts[text] = entry
            self._texts_chars += size
        return entry

    def redact_text(self, text: str) -> str:
        """Redact one string."""
        if not text:
            return text
        last = self._last_text
        if text is last[0]:
            return last[1]
        entry = self._texts.get(text)
        if entry is None:
            entry = self._scan(text)
        redacted, made = entry
        if made:
            counts = self.counts
            for kind, count in made:
                counts[kind] = counts.get(kind, 0) + count
        if redacted is None:
            redacted = text
        self._last_text = (text, redacted)
        return redacted

    def redact_message(self, message: Message) -> Message:
        """Redact a message's content and tool-call arguments (memoised per message)."""
        entries = self._messages.entries
        entry = entries.get(message)
        if entry is None:
            return self._redact_new_message(message)
        entries.move_to_end(message)  # what LruCache.get does, without the call
        cached = entry[0]
        # An equal message may be another object: hand back the caller's when unchanged.
        return message if cached is _UNCHANGED else cached

    def _redact_new_message(self, message: Message) -> Message:
        """Redact a message the memo does not hold, and remember it."""
        original = message.content
        content = self.redact_text(original) if original else original
        calls = message.tool_calls
        size = len(original)
        if calls:
            redacted_calls = []
            calls_changed = False
            for call in calls:
                args = call.arguments
                redacted_args = self.redact_text(args) if args else args
                if redacted_args != args:
                    call = ToolCall(call.id, call.name, redacted_args)
                    calls_changed = True
                size += len(redacted_args)
                redacted_calls.append(call)
            if calls_changed:
                calls = tuple(redacted_calls)
        if content == original and calls is message.tool_calls:
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
        last_call = self._last_context
        # The next tuple of the same interaction. The memos are left as redacting again
        # would leave them, so that they evict what they would have: a short context's
        # messages are refreshed (each lookup would hit), a long context's session entry is
        # the newest already.
        if context is last_call[1] and session_id == last_call[0] and (
                len(context) > _SHORT_CONTEXT or self._messages.refresh(context)):
            return last_call[2]
        size = len(context)
        if size <= _SHORT_CONTEXT:  # a few memo hits cost less than the bookkeeping
            if not size:
                return context
            redacted = self._redact_messages(context, 0)[0]
            self._last_context = (session_id, context, redacted)
            return redacted
        contexts = self._contexts
        entries = contexts.entries
        last = entries.get(session_id)
        start, chars, known_context, known_redacted = 0, 0, context, context
        if last is not None:
            entries.move_to_end(session_id)
            known_context, known_redacted, known_chars = last[0]
            if known_context is context:
                self._last_context = (session_id, context, known_redacted)
                return known_redacted
            known = len(known_context)
            # Equality, not the identity of the last element: a context that only shares
            # its last message object with the previous one is not an extension of it.
            if known <= size and context[:known] == known_context:
                start, chars = known, known_chars
        tail, tail_chars = self._redact_messages(context, start)
        chars += tail_chars
        if not start:
            redacted = tail
        elif known_redacted is known_context and tail is context:
            redacted = context  # nothing redacted so far: keep the caller's tuple
        else:
            redacted = known_redacted + (tail[start:] if tail is context else tail)
        contexts.put(session_id, (context, redacted, chars), chars + 1)
        # A context too big to keep is not: the shortcut above counts on the session's entry.
        self._last_context = ((session_id, context, redacted) if chars < contexts.max_size
                              else _NO_CALL)
        return redacted

    def _redact_messages(self, context: tuple[Message, ...],
                         start: int) -> tuple[tuple[Message, ...], int]:
        """``context[start:]`` redacted message by message, in order (``context`` itself when
        none of them changed), and the characters of their contents."""
        entries = self._messages.entries
        get, refresh = entries.get, entries.move_to_end
        changed: list[Message] | None = None
        chars = 0
        for index in range(start, len(context)):
            message = context[index]
            chars += len(message.content)
            entry = get(message)
            if entry is None:
                redacted = self._redact_new_message(message)
            else:
                refresh(message)
                redacted = entry[0]
                if redacted is _UNCHANGED:
                    redacted = message
            if changed is not None:
                changed.append(redacted)
            elif redacted is not message:
                changed = list(context[start:index])
                changed.append(redacted)
        return (context if changed is None else tuple(changed)), chars

    def __call__(self, scored: ScoredTuple) -> ScoredTuple:
        """The tuple with every text field redacted (the same object if nothing changed)."""
        if not self.enabled:
            return scored
        # redact_context, redact_message and redact_text inlined where they would return
        # at once (the next tuple of an interaction, a memo hit, the same excerpt object).
        context = scored.context
        last_call = self._last_context
        if context is last_call[1] and scored.session_id == last_call[0] and (
                len(context) > _SHORT_CONTEXT or self._messages.refresh(context)):
            redacted_context = last_call[2]
        else:
            redacted_context = self.redact_context(scored.session_id, context)
        action = scored.action
        messages = self._messages.entries
        entry = messages.get(action)
        if entry is None:
            redacted_action = self._redact_new_message(action)
        else:
            messages.move_to_end(action)
            redacted_action = entry[0]
            if redacted_action is _UNCHANGED:
                redacted_action = action
        excerpt = scored.next_state_excerpt
        if excerpt:
            last_text = self._last_text
            redacted_excerpt = (last_text[1] if excerpt is last_text[0]
                                else self.redact_text(excerpt))
        else:
            redacted_excerpt = excerpt
        hint = scored.hint
        redacted_hint = self.redact_text(hint) if hint else hint
        chosen, rejected = scored.chosen, scored.rejected
        if chosen is not None:
            chosen = self.redact_message(chosen)
        if rejected is not None:
            rejected = self.redact_message(rejected)
        if (redacted_context is context and redacted_action is action
                and redacted_excerpt == excerpt and redacted_hint == hint
                and chosen is scored.chosen and rejected is scored.rejected):
            return scored
        return msgspec.structs.replace(scored, context=redacted_context, action=redacted_action,
                                       next_state_excerpt=redacted_excerpt, hint=redacted_hint,
                                       chosen=chosen, rejected=rejected)

    def state_dict(self) -> dict[str, dict[str, int]]:
        """The redaction counts (the cache is rebuilt on demand)."""
        return {"counts": dict(self.counts)}

    def load_state_dict(self, state: Mapping[str, Mapping[str, int]]) -> None:
        """Restore counts saved by :meth:`state_dict`."""
        self.counts = dict(state.get("counts", {}))

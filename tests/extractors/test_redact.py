"""Tests for the redactor."""

from __future__ import annotations

import re

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from nextstate.extractors import redact
from nextstate.extractors.redact import Redactor, luhn_valid
from nextstate.extractors.types import Message, ScoredTuple, ToolCall


@pytest.mark.parametrize(("text", "expected"), [
    ("write to jane.doe@example.co.uk today", "write to [EMAIL] today"),
    ("call +1 (415) 555-0132", "call [PHONE]"),
    ("call 020 7946 0958 now", "call [PHONE] now"),
    ("card 4111 1111 1111 1111 ok", "card [CARD] ok"),
    ("key sk-proj-abcdefghijklmnop1234", "key [SECRET]"),
    ("token ghp_abcdefghijklmnopqrstuvwxyz0123456789", "token [SECRET]"),
    ("Authorization: Bearer abcdefghijklmnop1234", "Authorization: Bearer [SECRET]"),
    ('{"api_key": "s3cr3t-value-123"}', '{"api_key": "[SECRET]"}'),
    ("AKIAIOSFODNN7EXAMPLE", "[SECRET]"),
])
def test_builtin_patterns(text: str, expected: str) -> None:
    """Emails, phones, Luhn-valid cards and secrets become typed placeholders."""
    assert Redactor().redact_text(text) == expected


@pytest.mark.parametrize("text", [
    "order 4111 1111 1111 1112 shipped",  # fails Luhn
    "http://10.177.124.109:7780/admin/dashboard",
    "released 2024-05-01 at 10:30, version 3.11.7",
    "12 passed, 3 failed in 0.52s",
])
def test_lookalikes_survive(text: str) -> None:
    """Order numbers, IPs, dates and counts are not redacted."""
    assert Redactor().redact_text(text) == text


def test_luhn() -> None:
    """The Luhn check accepts a valid test card and rejects a changed digit."""
    assert luhn_valid("4111111111111111") and not luhn_valid("4111111111111112")


def test_every_text_field_is_redacted_and_counted() -> None:
    """Context, action, tool-call arguments, excerpt, hint and chosen/rejected are covered."""
    context = (Message("user", "I am bob@example.com"),)
    action = Message("assistant", "calling", tool_calls=(
        ToolCall("c1", "send", '{"to": "alice@example.com"}'),))
    scored = ScoredTuple("i", "s", "user", "directive", "user", context, action,
                         next_state_excerpt="reach me at 415-555-0132", hint="use bob@x.org",
                         chosen=Message("assistant", "card 4111111111111111"),
                         rejected=Message("assistant", "fine"))
    redactor = Redactor(patterns={"ticket": r"TICKET-\d+"})
    out = redactor(scored)
    assert out.context[0].content == "I am [EMAIL]"
    assert out.action.tool_calls[0].arguments == '{"to": "[EMAIL]"}'
    assert out.next_state_excerpt == "reach me at [PHONE]" and out.hint == "use [EMAIL]"
    assert out.chosen is not None and out.chosen.content == "card [CARD]"
    assert redactor.counts == {"EMAIL": 3, "PHONE": 1, "CARD": 1}
    assert redactor.redact_text("see TICKET-42") == "see [REDACTED:ticket]"
    assert redactor.counts["REDACTED:ticket"] == 1


def test_clean_tuple_passes_through_unchanged() -> None:
    """A tuple with nothing to redact is returned as the same object."""
    scored = ScoredTuple("i", "s", "user", "evaluative", "user", (Message("user", "hi"),),
                         Message("assistant", "hello"))
    assert Redactor()(scored) is scored


def test_disabled_redactor_is_identity() -> None:
    """enabled=False leaves even sensitive tuples untouched."""
    scored = ScoredTuple("i", "s", "user", "evaluative", "user", (),
                         Message("assistant", "bob@example.com"))
    assert Redactor(enabled=False)(scored) is scored


def test_state_dict_round_trip() -> None:
    """Counts survive state_dict / load_state_dict."""
    redactor = Redactor()
    redactor.redact_text("a@b.io")
    fresh = Redactor()
    fresh.load_state_dict(redactor.state_dict())
    assert fresh.counts == {"EMAIL": 1}


def _session_tuples(sessions: int, turns: int) -> list[ScoredTuple]:
    """Tuples of interleaved sessions whose contexts grow the way the join builds them."""
    histories: dict[str, list[Message]] = {f"s{k}": [] for k in range(sessions)}
    out = []
    for turn in range(turns):
        for sid, history in histories.items():
            text = (f"mail {sid}.{turn}@example.com" if turn % 3 == 0
                    else f"call +1 415 555 01{turn:02d}" if turn % 5 == 0 else f"step {turn}")
            history.append(Message("user", text))
            action = Message("assistant", f"ok {turn}", tool_calls=(
                ToolCall(f"c{turn}", "f", '{"token": "abcdefgh12345678"}'),) if turn % 4 == 0
                else ())
            out.append(ScoredTuple(f"{sid}#{turn}", sid, "user", "evaluative", "user",
                                   tuple(history), action, "excerpt"))
            history.append(action)
    return out


def test_incremental_context_redaction_equals_redacting_each_message() -> None:
    """Reusing a session's redacted context prefix gives what redacting every message gives."""
    tuples = _session_tuples(sessions=3, turns=12)
    memo = Redactor(cache_sessions=2, cache_entries=5)  # tiny memos: evictions mid-stream
    for scored in tuples:
        fresh = Redactor()
        expected = tuple(fresh.redact_message(m) for m in scored.context)
        assert memo(scored).context == expected


def test_context_unchanged_by_redaction_is_the_same_object() -> None:
    """A context with nothing to redact comes back as the caller's tuple, not a copy."""
    context = tuple(Message("user", f"plain words {k}") for k in range(10))
    scored = ScoredTuple("i", "s", "user", "evaluative", "user", context, Message("assistant"))
    redactor = Redactor()
    assert redactor(scored) is scored
    longer = ScoredTuple("j", "s", "user", "evaluative", "user",
                         (*context, Message("assistant", "more")), Message("assistant"))
    assert redactor(longer) is longer


def test_memos_stay_bounded_over_many_sessions() -> None:
    """Message and context memos hold at most their configured entries and characters."""
    redactor = Redactor(cache_entries=64, cache_chars=5_000, cache_sessions=8)
    for scored in _session_tuples(sessions=20, turns=10):
        redactor(scored)
    assert len(redactor._messages) <= 64 and redactor._messages.size <= 5_000
    assert len(redactor._contexts) <= 8


@given(st.text(alphabet=st.sampled_from(list("skprtAKIAxoyeJBaeghbupi_=:- 'ncwdTS0123456789")),
               max_size=60))
def test_secret_guard_never_skips_a_secret(text: str) -> None:
    """The substring guard is a necessary condition: any secret match passes it."""
    for candidate in (text, f"token={text}abcdefgh", f"Bearer {text}abcdefghijklmnopq",
                      f"ghp_{text}abcdefghijklmnopqrstuvwxyz", f' api_key: {text}xxxxxxxx'):
        if redact._SECRET.search(candidate):
            assert redact._may_hold_secret(candidate)


class _PlainRedactor(Redactor):
    """The redactor without its shortcuts: every text scanned, every message looked up with
    ``LruCache.get``/``put``, each tuple's context redacted on its own (the reference the
    shortcuts must match, memo evictions and counts included)."""

    __slots__ = ()

    def redact_text(self, text: str) -> str:
        if not text:
            return text
        if text is self._last_text[0]:
            return self._last_text[1]
        redacted = text
        if redact._may_hold_secret(redacted):
            redacted = self._sub("SECRET", redact._SECRET, redacted, self.counts)
        if "@" in redacted:
            redacted = self._sub("EMAIL", redact._EMAIL, redacted, self.counts)
        if redact._DIGIT_RUN.search(redacted):
            redacted = self._sub("PHONE", redact._NUMBER, redacted, self.counts)
        for placeholder, pattern in self._custom:
            redacted, made = pattern.subn(f"[{placeholder}]", redacted)
            if made:
                self.counts[placeholder] = self.counts.get(placeholder, 0) + made
        self._last_text = (text, redacted)
        return redacted

    def redact_message(self, message: Message) -> Message:
        cached = self._messages.get(message)
        if cached is not None:
            return message if cached is redact._UNCHANGED else cached
        content = self.redact_text(message.content)
        calls = tuple(c if (args := self.redact_text(c.arguments)) == c.arguments
                      else ToolCall(c.id, c.name, args) for c in message.tool_calls)
        size = len(message.content) + sum(len(c.arguments) for c in calls)
        if content == message.content and calls == message.tool_calls:
            self._messages.put(message, redact._UNCHANGED, size)
            return message
        redacted = Message(message.role, content, calls, message.tool_call_id, message.name)
        self._messages.put(message, redacted, size)
        return redacted

    def redact_context(self, session_id: str,
                       context: tuple[Message, ...]) -> tuple[Message, ...]:
        if len(context) <= redact._SHORT_CONTEXT:
            return tuple(map(self.redact_message, context))
        last = self._contexts.get(session_id)
        if last is not None and last[0] is context:
            return last[1]
        start, prefix, chars = 0, (), 0
        if last is not None and len(last[0]) <= len(context) \
                and context[:len(last[0])] == last[0]:
            start, prefix, chars = len(last[0]), last[1], last[2]
        chars += sum(len(m.content) for m in context[start:])
        redacted = prefix + tuple(map(self.redact_message, context[start:]))
        self._contexts.put(session_id, (context, redacted, chars), chars + 1)
        return redacted


_TEXTS = ["plain step", "mail bob@example.com", "card 4111 1111 1111 1111", "call +1 415 555 0132",
          "order 4111 1111 1111 1112", "key sk-proj-abcdefghijklmnop1234", "ok"]


@st.composite
def _tuple_streams(draw: st.DrawFn) -> list[ScoredTuple]:
    """Sessions whose contexts grow, branch (an early message replaced), shrink, repeat the
    same context object for the next tuple, or share only their last message object."""
    histories: dict[str, tuple[Message, ...]] = {}
    out: list[ScoredTuple] = []
    for _ in range(draw(st.integers(1, 40))):
        sid = draw(st.sampled_from(["a", "b", "c"]))
        history = histories.get(sid, ())
        move = draw(st.sampled_from(["grow", "grow", "grow", "branch", "shrink", "same",
                                     "swap_front"]))
        text = draw(st.sampled_from(_TEXTS))
        if move == "grow" or not history:
            history = (*history, *(Message(draw(st.sampled_from(["user", "tool"])),
                                           f"{text} {len(history) + k}")
                                   for k in range(draw(st.integers(1, 4)))))
        elif move == "branch":
            cut = draw(st.integers(0, len(history) - 1))
            history = (*history[:cut], Message("user", text), *history[cut + 1:])
        elif move == "shrink":
            history = history[:draw(st.integers(0, len(history) - 1))]
        elif move == "swap_front":  # same length and last object, another first message
            history = (Message("user", text), *history[1:])
        histories[sid] = history
        note = draw(st.sampled_from(_TEXTS))
        action = Message("assistant", draw(st.sampled_from(_TEXTS)),
                         tool_calls=(ToolCall("c", "f", f'{{"note": "{note}"}}'),))
        excerpt = draw(st.sampled_from(_TEXTS))
        for kind in draw(st.sampled_from([["evaluative"], ["evaluative", "directive"]])):
            out.append(ScoredTuple(f"{sid}#{len(out)}", sid, "tool", kind, "tool", history,
                                   action, excerpt, hint=excerpt if kind == "directive"
                                   else None))
    return out


@given(_tuple_streams(), st.integers(1, 12), st.integers(1, 4))
def test_shortcuts_match_plain_redaction_memos_and_counts_included(
        tuples: list[ScoredTuple], entries: int, sessions: int) -> None:
    """Whatever the contexts do (grow, branch, shrink, repeat, share their last message), the
    redactor gives the tuples, the counts and the memo contents plain redaction gives, with
    memos small enough to evict mid-stream."""
    sizes = {"cache_entries": entries, "cache_chars": 200, "cache_sessions": sessions,
             "cache_context_chars": 400}
    fast, plain = Redactor(**sizes), _PlainRedactor(**sizes)
    for scored in tuples:
        assert fast(scored) == plain(scored)
        assert fast.counts == plain.counts
        assert list(fast._messages.entries) == list(plain._messages.entries)
        assert list(fast._contexts.entries) == list(plain._contexts.entries)


def test_context_sharing_only_its_last_message_is_not_an_extension() -> None:
    """A context as long as the session's last one, ending with the same message object but
    starting with another message, is redacted from its own messages."""
    tail = tuple(Message("user", f"step {k}") for k in range(8))
    redactor = Redactor()
    first = redactor.redact_context("s", (Message("user", "mail bob@example.com"), *tail))
    second = redactor.redact_context("s", (Message("user", "nothing here"), *tail))
    assert first[0].content == "mail [EMAIL]" and second[0].content == "nothing here"
    assert second[1:] == tail


def test_branched_and_shrunk_contexts_are_redacted_from_their_own_messages() -> None:
    """A session whose next context replaces an early message, then drops its last ones, gets
    each context's own redaction, not the previous one's prefix."""
    history = tuple(Message("user", f"step {k}") for k in range(10))
    redactor = Redactor()
    assert redactor.redact_context("s", history) is history
    branched = (history[0], Message("user", "card 4111 1111 1111 1111"), *history[2:])
    assert redactor.redact_context("s", branched)[1].content == "card [CARD]"
    shrunk = history[:8]
    assert redactor.redact_context("s", shrunk) is shrunk
    assert redactor.counts == {"CARD": 1}


def test_same_context_object_in_another_session_is_redacted_for_that_session() -> None:
    """The next-tuple shortcut is per session: the same context object handed for another
    session is looked up in that session's memo, which then holds it."""
    context = tuple(Message("user", f"mail u{k}@example.com") for k in range(8))
    redactor = Redactor()
    first = redactor.redact_context("a", context)
    assert redactor.redact_context("b", context) == first
    assert "b" in redactor._contexts and redactor.counts == {"EMAIL": 8}


def test_equal_texts_in_distinct_objects_are_counted_each_time() -> None:
    """The text memo adds the counts a scan would: an equal string that is another object is
    counted again, the same object handed twice in a row once."""
    text = "mail bob@example.com"
    copy = "".join(["mail bob@", "example.com"])
    assert copy is not text
    redactor = Redactor()
    assert redactor.redact_text(text) == redactor.redact_text(copy) == "mail [EMAIL]"
    assert redactor.redact_text(copy) == "mail [EMAIL]"
    assert redactor.counts == {"EMAIL": 2}


def test_text_memo_is_emptied_when_full_and_stays_bounded() -> None:
    """The text memo never holds more than its bounds; what it drops is scanned again."""
    redactor = Redactor(cache_texts=4, cache_text_chars=1_000)
    for k in range(10):
        redactor.redact_text(f"write to u{k}@example.com")
        assert len(redactor._texts) <= 4 and redactor._texts_chars <= 1_000
    assert redactor.counts == {"EMAIL": 10}


def _matches(pattern: re.Pattern[str], text: str) -> list[tuple[tuple[int, int], str | None]]:
    return [(m.span(), m.lastgroup) for m in pattern.finditer(text)]


_PIECES = ["sk-", "pk-proj-", "ghp_", "github_pat_", "AKIA", "AIza", "xoxb-", "eyJ", ".eyJ",
           "Bearer ", "api_key", "Api-Key", "token", "Secret", "password", "passwd", "=", ": ",
           '"', "'", " ", "\n", "abcdefgh", "ABCDEFGHIJKLMNOP", "0123456789", "4111 1111 1111 1111",
           "+1 ", "(415) ", "555-0132", "020 7946 0958", "+44", "-", ".", "_", "/", "~", "x"]


# One string per alternative of the secret and number patterns (each first character).
_EVERY_ALTERNATIVE = [
    "x sk-proj-abcdefghijklmnop1234 pk-abcdefghijklmnop rk-live-abcdefghijklmnop",
    "ghp_abcdefghijklmnopqrstuvwxyz github_pat_abcdefghijklmnopqrstu",
    "AKIAIOSFODNN7EXAMPLE xoxb-1234567890ab AIzaabcdefghijklmnopqrstuvwxyz012345678",
    "eyJabcdefgh.eyJabcdefgh.abcdefghij", "Authorization: Bearer abcdefghijklmnop1234==",
    'x api_key=abcdefgh12 "Api-Key": "abcdefgh12" \'token: abcdefgh12',
    " Secret=abcdefgh12 password: abcdefgh12 Passwd=abcdefgh12 Token=abcdefgh12",
    "api_key: abcdefgh12\ntoken=abcdefgh12\nSecret: abcdefgh12\nPassword=abcdefgh12",
    "card 4111 1111 1111 1111, 4111-1111-1111-1112", "call +1 (415) 555-0132 or 020 7946 0958",
    "(415) 555-0132, +4412345678, 555.123.4567",
]


@example(_EVERY_ALTERNATIVE)
@given(st.lists(st.lists(st.sampled_from(_PIECES), max_size=30).map("".join), max_size=5))
def test_guarded_patterns_match_what_the_bare_patterns_match(texts: list[str]) -> None:
    """The first-character guards in front of the secret and number patterns change which
    positions are tried, never which matches are found (spans and named groups)."""
    for text in texts:
        _assert_same_matches(text)


def _assert_same_matches(text: str) -> None:
    assert _matches(redact._SECRET, text) == \
        _matches(re.compile(redact._SECRET_PATTERN, re.M), text)
    assert _matches(redact._NUMBER, text) == _matches(re.compile(redact._NUMBER_PATTERN), text)

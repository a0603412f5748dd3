"""Tests for the redactor."""

from __future__ import annotations

import pytest
from hypothesis import given
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

"""Tests for the redactor."""

from __future__ import annotations

import pytest

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

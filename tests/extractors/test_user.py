"""Tests for the user-reply extractor."""

from __future__ import annotations

import pytest

from nextstate.extractors.user import UserReplyExtractor, classify_reply, correction_hint


@pytest.mark.parametrize("reply", [
    "Thanks, that's exactly what I needed!",
    "Perfect, works now.",
    "Great job, looks good to me.",
    "no worries, thanks a lot",
])
def test_satisfied_replies_are_positive(reply: str) -> None:
    """Thanks and satisfaction read as a positive signal."""
    reading = classify_reply(reply)
    assert reading is not None and reading.reward > 0


@pytest.mark.parametrize("reply", [
    "That's wrong, I asked for Tuesday.",
    "No, use the metric system.",
    "This doesn't work at all.",
    "You forgot the attachment.",
    "Great, now nothing works.",
    "Oh wonderful, another error.",
    "Thanks for nothing.",
    "Thanks, but I wanted it in euros.",
    "Hmm, I think the deadline was Friday, not Thursday.",
])
def test_corrections_complaints_and_sarcasm_are_negative(reply: str) -> None:
    """Corrections, complaints, sarcasm and 'thanks, but' read as negative."""
    reading = classify_reply(reply)
    assert reading is not None and reading.reward < 0


def test_neutral_new_request_gives_no_signal() -> None:
    """A new request with no acknowledgement says nothing about the previous action."""
    assert classify_reply("Can you summarize this paper for me?") is None


def test_rephrased_request_is_negative() -> None:
    """Repeating the previous request means the action missed it."""
    reading = classify_reply("what is the weather in Oslo for tomorrow",
                             "What's the weather in Oslo tomorrow?")
    assert reading is not None and reading.label == "rephrase"


@pytest.mark.parametrize(("reply", "expected"), [
    ("No, use the metric system.", "use the metric system"),
    ("That's wrong, I asked for Tuesday.", "I asked for Tuesday"),
    ("Thanks, but please use euros.", "please use euros"),
])
def test_correction_hint_is_the_directive_clause(reply: str, expected: str) -> None:
    """The hint is the clause that says what was wanted, without the complaint."""
    assert correction_hint(reply) == expected


def test_extractor_emits_evaluative_and_directive_tuples(chat) -> None:
    """A correction yields an evaluative tuple and a directive tuple with the hint."""
    tuples = UserReplyExtractor()(chat("No, use the metric system."))
    assert [t.kind for t in tuples] == ["evaluative", "directive"]
    assert tuples[0].source == "user" and tuples[0].reward < 0
    assert tuples[1].hint == "use the metric system"


def test_extractor_without_reply_returns_nothing(chat) -> None:
    """No user message in the next state: no tuple."""
    assert UserReplyExtractor()(chat(None)) == []


def test_min_confidence_drops_weak_readings(chat) -> None:
    """Readings under min_confidence (an acknowledged move on) are dropped."""
    interaction = chat("Ok, now book a table for two.")
    assert UserReplyExtractor()(interaction)
    assert UserReplyExtractor(min_confidence=0.8)(interaction) == []

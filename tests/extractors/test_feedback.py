"""Tests for the explicit-feedback extractor."""

from __future__ import annotations

from nextstate.extractors.feedback import FeedbackExtractor
from nextstate.extractors.types import Feedback


def test_thumbs_map_to_reward_with_full_confidence(chat) -> None:
    """A thumbs-up is a reward of +1, confidence 1."""
    (scored,) = FeedbackExtractor()(chat(None, feedback=[Feedback(value=1.0)]))
    assert (scored.kind, scored.source, scored.reward, scored.confidence) == \
        ("evaluative", "feedback", 1.0, 1.0)


def test_values_are_averaged(chat) -> None:
    """Several events on one action give one tuple with their mean value."""
    (scored,) = FeedbackExtractor()(chat(None, feedback=[Feedback(value=1.0),
                                                         Feedback(value=0.0)]))
    assert scored.reward == 0.5


def test_negative_score_with_text_gives_a_hint(chat) -> None:
    """A text left with a thumbs-down becomes the directive hint."""
    tuples = FeedbackExtractor()(chat(None, feedback=[Feedback(value=-1.0,
                                                               text="Answer in Celsius")]))
    assert [t.kind for t in tuples] == ["evaluative", "directive"]
    assert tuples[1].hint == "Answer in Celsius"


def test_text_only_feedback_is_classified(chat) -> None:
    """Feedback text without a value is read like a user reply."""
    (scored,) = FeedbackExtractor()(chat(None, feedback=[Feedback(text="Perfect, thanks!")]))
    assert scored.reward > 0 and scored.confidence < 1.0


def test_no_feedback_no_tuple(chat) -> None:
    """Interactions without feedback events yield nothing."""
    assert FeedbackExtractor()(chat("thanks")) == []


def test_full_confidence_and_a_directive_reward_encode_as_defaults(chat) -> None:
    """A score's confidence of 1 and a directive's reward are the fields' default objects:
    left out of the encoding, as tuple_from leaves them."""
    import msgspec

    evaluative, directive = FeedbackExtractor()(chat(None, feedback=[
        Feedback(value=-1.0, text="Answer in Celsius")]))
    assert b'"confidence"' not in msgspec.json.encode(evaluative)
    assert b'"reward"' not in msgspec.json.encode(directive)

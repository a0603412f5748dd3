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

"""Explicit feedback: thumbs, scores and feedback texts map straight to tuples.

A thumbs-up/down or a score is the user grading the action themselves, so its value becomes
the reward with full confidence. A feedback text without a value is read like a user reply;
a text that corrects the action (or accompanies a negative score) becomes a directive hint.
"""

from __future__ import annotations

from nextstate.extractors.registry import register
from nextstate.extractors.types import Interaction, ScoredTuple, directive, evaluative
from nextstate.extractors.user import classify_reply, correction_hint, reply_window


@register("feedback")
class FeedbackExtractor:
    """One evaluative tuple from the feedback events of an action (their mean value).

    Args:
        excerpt_chars: how much of the feedback text to keep as the excerpt.

    Example:
        >>> from nextstate.extractors.types import Feedback, Interaction, Message
        >>> i = Interaction("s#1", "s", (), Message("assistant", "hi"),
        ...                 feedback=(Feedback(value=-1.0, text="Use Celsius."),))
        >>> [(t.kind, t.reward) for t in FeedbackExtractor()(i)]
        [('evaluative', -1.0), ('directive', 0.0)]
    """

    reads = frozenset({"feedback"})  # see registry.Dispatch
    __slots__ = ("excerpt_chars",)

    def __init__(self, excerpt_chars: int = 300) -> None:
        self.excerpt_chars = excerpt_chars

    def __call__(self, interaction: Interaction) -> list[ScoredTuple]:
        events = interaction.feedback
        if not events:
            return []
        values = [e.value for e in events if e.value is not None]
        texts = [e.text.strip() for e in events if e.text and e.text.strip()]
        text = reply_window(" ".join(texts))  # a long text reads as its window, as a reply
        excerpt = text[: self.excerpt_chars]
        reading = classify_reply(text) if text else None
        if values:
            reward, confidence = sum(values) / len(values), 1.0
            excerpt = f"score {reward:+.2f}" + (f": {excerpt}" if excerpt else "")
        elif reading is not None:
            reward, confidence = reading.reward, reading.confidence
        else:
            return []
        tuples = [evaluative(interaction, "feedback", "feedback", excerpt, reward, confidence)]
        hint = None
        if text and (reward < 0 or (reading is not None and reading.reward < 0)):
            hint = (reading.hint if reading is not None else None) or correction_hint(text)
            # A text left with a negative score is the user's own explanation: keep it whole.
            hint = hint or (text[:300] if values else None)
        if hint:
            tuples.append(directive(interaction, "feedback", "feedback", excerpt, hint,
                                    0.9 if values else 0.7))
        return tuples

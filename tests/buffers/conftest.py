"""Fixture factories for buffer tests: deterministic scored tuples."""

from __future__ import annotations

import pytest

from nextstate.extractors.types import Message, ScoredTuple


def make_tuple(i: int, *, source: str = "tool", kind: str = "evaluative",
               extractor: str = "tool_result", reward: float = 0.0, confidence: float = 1.0,
               version: str | None = None, text_len: int = 20) -> ScoredTuple:
    """A tuple whose content is a pure function of its arguments (so it can be re-made)."""
    return ScoredTuple(
        interaction_id=f"session-{i % 7}#{i}",
        session_id=f"session-{i % 7}",
        extractor=extractor,
        kind=kind,  # type: ignore[arg-type]
        source=source,  # type: ignore[arg-type]
        context=(Message("user", f"question {i} " + "x" * text_len),),
        action=Message("assistant", f"answer {i}"),
        next_state_excerpt=f"result {i}",
        reward=reward,
        confidence=confidence,
        policy_version=version,
        behaviour_logprobs=tuple(-0.1 * k for k in range(i % 5)),
    )


@pytest.fixture
def tuple_factory():
    """The :func:`make_tuple` factory."""
    return make_tuple

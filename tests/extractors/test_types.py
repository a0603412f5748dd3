"""Tests for the shared data model's helpers."""

import math

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nextstate.extractors.types import (
    Feedback,
    Interaction,
    Message,
    ScoredTuple,
    ToolCall,
    Usage,
    answer_to,
    directive,
    evaluative,
    pair_by_id_then_position,
    tool_results_for,
    tuple_from,
)


def _interaction() -> Interaction:
    return Interaction(
        "s#3", "s", (Message("user", "q"),), Message("assistant", "a"),
        (Message("user", "thanks"),), model="m", policy_version="7",
        behaviour_logprobs=(-0.5,), usage=Usage(11, 13, 5), ts=17.0, shape="openai_exchange")


def test_tuple_from_fills_every_field_by_name():
    """tuple_from builds positionally; each value lands in the field of its name."""
    interaction = _interaction()
    chosen, rejected = Message("assistant", "good"), Message("assistant", "bad")
    built = tuple_from(interaction, extractor="user", kind="preference", source="user",
                       excerpt="ex", reward=0.25, confidence=0.5, hint="h", chosen=chosen,
                       rejected=rejected, credit="tool_args", created_ts=19.0, label="lbl")
    assert built == ScoredTuple(
        interaction_id="s#3", session_id="s", extractor="user", kind="preference",
        source="user", context=interaction.context, action=interaction.action,
        next_state_excerpt="ex", reward=0.25, confidence=0.5, hint="h", chosen=chosen,
        rejected=rejected, credit="tool_args", model="m", policy_version="7",
        behaviour_logprobs=(-0.5,), prompt_tokens=11, completion_tokens=13, action_ts=17.0,
        created_ts=19.0, label="lbl")


@pytest.mark.parametrize(("reward", "confidence", "expected"), [
    (2.0, 2.0, (1.0, 1.0)), (-3.0, -1.0, (-1.0, 0.0)), (0.5, 0.25, (0.5, 0.25)),
    (math.nan, math.nan, (-1.0, 0.0)), (1, 0, (1.0, 0.0)), (-0.0, 1.0, (-0.0, 1.0)),
])
def test_tuple_from_clamps_scores(reward, confidence, expected):
    """Rewards clamp to [-1, 1] and confidences to [0, 1], NaN to the lower bound."""
    built = tuple_from(_interaction(), extractor="x", kind="evaluative", source="tool",
                       reward=reward, confidence=confidence)
    assert (built.reward, built.confidence) == expected
    assert isinstance(built.reward, float) and isinstance(built.confidence, float)


_SCORES = st.one_of(st.sampled_from([0.0, 1.0, -1.0, -0.0, 0.5, 0.8, 2.0, -3.0, math.nan]),
                    st.floats(allow_nan=True), st.integers(-2, 2))


@settings(max_examples=300, deadline=None)
@given(_SCORES, _SCORES, st.sampled_from(["action", "tool_args"]), st.sampled_from(["", "l"]),
       st.sampled_from([Usage(), Usage(11, 13, 5)]))
def test_positional_builders_encode_like_tuple_from(reward, confidence, credit, label, usage):
    """evaluative and directive build, down to the encoded bytes (omit_defaults compares
    floats by identity), what tuple_from does."""
    interaction = msgspec.structs.replace(_interaction(), usage=usage)
    encode = msgspec.msgpack.encode
    pairs = [
        (tuple_from(interaction, extractor="x", kind="evaluative", source="tool", excerpt="e",
                    reward=reward, confidence=confidence, credit=credit, label=label),
         evaluative(interaction, "x", "tool", "e", reward, confidence, credit, label)),
        (tuple_from(interaction, extractor="x", kind="directive", source="tool", excerpt="e",
                    hint="h", confidence=confidence, credit=credit, label=label),
         directive(interaction, "x", "tool", "e", "h", confidence, credit, label)),
    ]
    for expected, built in pairs:
        assert encode(built) == encode(expected)


def test_directive_leaves_the_reward_out_of_the_encoding():
    """A directive tuple's reward is the field's default object: not encoded."""
    built = directive(_interaction(), "x", "user", "e", "h", 0.7)
    assert b'"reward"' not in msgspec.json.encode(built)
    assert b'"reward"' in msgspec.json.encode(evaluative(_interaction(), "x", "user", "e",
                                                         float("0.0"), 0.7))


def test_tool_call_defaults():
    """A tool call's arguments default to empty JSON text."""
    assert ToolCall("c", "f").arguments == ""


def test_clamped_bounds_encode_like_defaults():
    """A score clamped to (or given as) its field's default is left out of the encoding, as
    msgspec's omit_defaults does for the default object itself."""
    built = tuple_from(_interaction(), extractor="x", kind="evaluative", source="tool",
                       reward=0.0, confidence=5.0)
    assert b'"confidence"' not in msgspec.json.encode(built)


def _pairs_reference(interaction: Interaction) -> list:
    """tool_results_for without its fast paths: the general rule on every action."""
    results = [m for m in interaction.next_state if m.role == "tool"]
    return pair_by_id_then_position(interaction.action.tool_calls, results)


_IDS = st.sampled_from(["a", "b", "", None])


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(["a", "b", ""]), max_size=3),
       st.lists(st.tuples(st.sampled_from(["tool", "user"]), _IDS), max_size=4))
def test_tool_results_for_pairs_as_the_general_rule(call_ids, messages):
    """The one-call fast path pairs exactly as the general id-then-position rule."""
    calls = tuple(ToolCall(cid, f"f{n}") for n, cid in enumerate(call_ids))
    next_state = tuple(Message(role, f"r{n}", tool_call_id=cid)  # type: ignore[arg-type]
                       for n, (role, cid) in enumerate(messages))
    interaction = Interaction("s#1", "s", (), Message("assistant", tool_calls=calls),
                              next_state)
    assert tool_results_for(interaction) == _pairs_reference(interaction)
    if len(calls) == 1:
        answer = answer_to(calls[0], next_state)
        paired = [(calls[0], answer)] if answer is not None else []
        assert paired == _pairs_reference(interaction)


def _pairs_as_first_written(calls, results) -> list:
    """pair_by_id_then_position as it was before it was made linear (the reference)."""
    by_id = {m.tool_call_id: m for m in results if m.tool_call_id}
    unmatched = [m for m in results
                 if not m.tool_call_id or m.tool_call_id not in {c.id for c in calls}]
    pairs = []
    for call in calls:
        answer = by_id.get(call.id)
        if answer is None and unmatched:
            answer = unmatched.pop(0)
        if answer is not None:
            pairs.append((call, answer))
    return pairs


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(["a", "b", "c", ""]), max_size=5),
       st.lists(st.sampled_from(["a", "b", "d", "", None]), max_size=6))
def test_general_pairing_pairs_as_it_did(call_ids, result_ids):
    calls = tuple(ToolCall(cid, f"f{n}") for n, cid in enumerate(call_ids))
    results = [Message("tool", f"r{n}", tool_call_id=cid) for n, cid in enumerate(result_ids)]
    assert pair_by_id_then_position(calls, results) == _pairs_as_first_written(calls, results)


def test_general_pairing_reads_each_call_id_a_bounded_number_of_times():
    """An action with thousands of tool calls (a hostile record: 8,000 took 13 s, as every
    result rebuilt the set of call ids): each id is read a constant number of times."""
    reads = 0

    class CountedCall:
        def __init__(self, call_id: str) -> None:
            self._id = call_id

        @property
        def id(self) -> str:
            nonlocal reads
            reads += 1
            return self._id

    n = 2_000
    calls = tuple(CountedCall(f"c{i}") for i in range(n))
    results = [Message("tool", "r", tool_call_id=f"c{i}" if i % 2 else "x") for i in range(n)]
    pairs = pair_by_id_then_position(calls, results)  # type: ignore[arg-type]
    assert len(pairs) == n and reads <= 3 * n


def test_data_model_is_not_tracked_by_the_garbage_collector():
    """Messages, interactions and tuples hold only immutable values: no GC tracking."""
    import gc

    interaction = _interaction()
    built = tuple_from(interaction, extractor="x", kind="evaluative", source="tool")
    for value in (interaction, interaction.action, interaction.usage, built,
                  ToolCall("c", "f"), Feedback(1.0)):
        assert not gc.is_tracked(value)

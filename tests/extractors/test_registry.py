"""Tests for the extractor registry and the dispatch of interactions by next-state kind."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nextstate.extractors.registry import (
    Dispatch,
    build_extractors,
    next_state_kinds,
    reads_mask,
)
from nextstate.extractors.types import Feedback, Interaction, Message, ToolCall

BUILT_IN = ["feedback", "user", "tool", "terminal", "gui"]

_OBS = json.dumps({"url": "u", "title": "t", "axtree": "[1] button 'Go'"})
_CALLS = {
    "bash": ToolCall("c1", "bash", json.dumps({"cmd": "pytest -q"})),
    "browser": ToolCall("c1", "browser", json.dumps({"action": "click('1')"})),
    "search": ToolCall("c1", "search", json.dumps({"q": "x"})),
}
_RESULTS = ["2 failed, 3 passed in 0.2s\n[exit code: 1]", _OBS, "Error: missing argument 'q'",
            "[]", "ok"]


@st.composite
def interactions(draw) -> Interaction:
    calls = tuple(_CALLS[n] for n in draw(st.lists(st.sampled_from(sorted(_CALLS)),
                                                   max_size=2, unique=True)))
    action = Message("assistant", draw(st.sampled_from(["", "Done."])), tool_calls=calls)
    next_state = tuple(draw(st.lists(st.one_of(
        st.builds(lambda text: Message("user", text),
                  st.sampled_from(["thanks!", "No, use Celsius.", "", "what next?"])),
        st.builds(lambda text, cid, name: Message("tool", text, tool_call_id=cid, name=name),
                  st.sampled_from(_RESULTS), st.sampled_from(["c1", "c9", None]),
                  st.sampled_from(["bash", "browser", "search", None]))), max_size=3)))
    feedback = tuple(draw(st.lists(st.builds(Feedback, st.sampled_from([None, 1.0, -1.0]),
                                             st.sampled_from([None, "Use Celsius."])),
                                   max_size=2)))
    context = (Message("user", "run it"),
               Message("tool", _OBS, tool_call_id="c0", name="browser"))
    return Interaction("s#2", "s", context, action, next_state, feedback=feedback)


@settings(max_examples=300, deadline=None)
@given(interactions())
def test_dispatch_runs_what_scores_and_skips_what_returns_nothing(interaction):
    """Running only the dispatched extractors gives the same tuples as running all of them:
    every skipped extractor would have returned nothing."""
    chain = build_extractors(BUILT_IN)
    everything = [(name, ex(interaction)) for name, ex in chain]
    dispatched = {name: ex(interaction) for name, ex in Dispatch(chain)(interaction)}
    assert everything == [(name, dispatched.get(name, [])) for name, _ in chain]


@settings(max_examples=300, deadline=None)
@given(interactions())
def test_dispatch_table_row_is_the_next_state_kinds_row(interaction):
    """Dispatch picks the entries next_state_kinds selects, less (for an action with one
    tool call) those whose scores_call_to refuses the call's tool."""
    chain = build_extractors(BUILT_IN)
    kinds = next_state_kinds(interaction)
    calls = interaction.action.tool_calls
    expected = [name for name, ex in chain if ((mask := reads_mask(ex)) is None or mask & kinds)
                and (len(calls) != 1 or not hasattr(ex, "scores_call_to")
                     or ex.scores_call_to(calls[0].name))]
    dispatch = Dispatch(chain)
    assert [name for name, _ in dispatch(interaction)] == expected
    assert [name for name, _ in dispatch(interaction)] == expected  # from its memo


def test_single_tool_call_meets_only_the_extractors_of_its_tool():
    """A shell call goes to the terminal extractor, a browser call to the GUI one, any other
    tool to the tool extractor; two calls go to all three."""
    dispatch = Dispatch(build_extractors(BUILT_IN))

    def names(*tools: str) -> list[str]:
        calls = tuple(_CALLS[t] for t in tools)
        answers = tuple(Message("tool", "ok", tool_call_id=c.id) for c in calls)
        action = Message("assistant", tool_calls=calls)
        return [n for n, _ in dispatch(Interaction("s#1", "s", (), action, answers))]

    assert names("bash") == ["terminal"]
    assert names("browser") == ["gui"]
    assert names("search") == ["tool"]
    assert names("bash", "search") == ["tool", "terminal", "gui"]


def test_next_state_kinds():
    """user, tool (answers to the action's calls) and feedback each set their bit."""
    call = ToolCall("c", "f")
    tool_reply = Message("tool", "x", tool_call_id="c")
    plain = Interaction("s#1", "s", (), Message("assistant", "hi"), (Message("user", "ok"),))
    assert next_state_kinds(plain) == 1
    calling = Interaction("s#1", "s", (), Message("assistant", tool_calls=(call,)),
                          (tool_reply, Message("user", "ok")), feedback=(Feedback(1.0),))
    assert next_state_kinds(calling) == 7
    no_calls = Interaction("s#1", "s", (), Message("assistant", "hi"), (tool_reply,))
    assert next_state_kinds(no_calls) == 0


def test_extractors_that_declare_nothing_always_run():
    """A plain function with no ``reads`` meets every interaction, in chain order."""
    def anything(interaction):
        return []

    chain = [("user", build_extractors(["user"])[0][1]), ("mine", anything)]
    empty = Interaction("s#1", "s", (), Message("assistant", "hi"))
    assert [name for name, _ in Dispatch(chain)(empty)] == ["mine"]
    assert reads_mask(anything) is None


def test_unknown_kind_in_reads_is_rejected():
    """A typo in ``reads`` fails when the chain is built, not silently at run time."""
    def typo(interaction):
        return []

    typo.reads = frozenset({"users"})  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="users"):
        Dispatch([("typo", typo)])

"""Fixture factories that build interactions the way the daemon's join does."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence

import pytest

from nextstate.extractors.types import Feedback, Interaction, Message, ToolCall

MakeChat = Callable[..., Interaction]


def _interaction(context: Sequence[Message], action: Message, next_state: Sequence[Message],
                 feedback: Sequence[Feedback] = ()) -> Interaction:
    return Interaction(interaction_id=f"s#{len(context)}", session_id="s",
                       context=tuple(context), action=action, next_state=tuple(next_state),
                       feedback=tuple(feedback))


@pytest.fixture
def chat() -> MakeChat:
    """Factory: a request, an assistant answer and the user's reply."""

    def make(reply: str | None, request: str = "What's the weather in Oslo tomorrow?",
             answer: str = "Tomorrow in Oslo: 50 F and cloudy.",
             feedback: Sequence[Feedback] = ()) -> Interaction:
        next_state = [Message("user", reply)] if reply is not None else []
        return _interaction([Message("user", request)], Message("assistant", answer),
                            next_state, feedback)

    return make


@pytest.fixture
def tool_step() -> Callable[..., Interaction]:
    """Factory: one tool call and its result, after optional earlier messages."""

    def make(name: str, result: str, arguments: str = "{}",
             earlier: Sequence[Message] = ()) -> Interaction:
        call = ToolCall(id=f"call_{len(earlier)}", name=name, arguments=arguments)
        return _interaction([Message("user", "Do the task."), *earlier],
                            Message("assistant", "", tool_calls=(call,)),
                            [Message("tool", result, tool_call_id=call.id, name=name)])

    return make


def browser_obs(tree: str, url: str = "http://shop.test/", title: str = "Shop",
                error: str = "") -> str:
    """A BrowserGym-style observation as the browser tool returns it."""
    return json.dumps({"url": url, "title": title, "axtree": tree, "error": error})


@pytest.fixture
def gui_step() -> Callable[..., Interaction]:
    """Factory: a browser action between two observations."""

    def make(action: str, before: str | None, after: str, tool: str = "browser") -> Interaction:
        earlier: list[Message] = [Message("user", "Buy the cheapest mouse.")]
        if before is not None:
            first = ToolCall("call_0", tool, json.dumps({"action": "noop()"}))
            earlier += [Message("assistant", "", tool_calls=(first,)),
                        Message("tool", before, tool_call_id="call_0", name=tool)]
        call = ToolCall("call_1", tool, json.dumps({"action": action}))
        return _interaction(earlier, Message("assistant", "", tool_calls=(call,)),
                            [Message("tool", after, tool_call_id="call_1", name=tool)])

    return make

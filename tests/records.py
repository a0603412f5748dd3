"""Builders of wire records in the accepted input shapes, shared by the tests."""

from __future__ import annotations

import json
from typing import Any


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def assistant(text: str | None = None, calls: list[tuple[str, str, dict]] | None = None
              ) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if calls:
        message["tool_calls"] = [
            {"id": cid, "type": "function",
             "function": {"name": name, "arguments": json.dumps(args)}}
            for cid, name, args in calls]
    return message


def tool(call_id: str, content: str, name: str | None = None) -> dict[str, Any]:
    message = {"role": "tool", "tool_call_id": call_id, "content": content}
    if name:
        message["name"] = name
    return message


def exchange(session_id: str, history: list[dict], response: dict, **extra: Any
             ) -> dict[str, Any]:
    """An OpenAI chat-completions call log: the request repeats the whole history."""
    return {"session_id": session_id, "request": {"messages": list(history)},
            "response": {"choices": [{"message": response}]}, **extra}


def conversation_exchanges(session_id: str, turns: list[tuple[dict, list[dict]]],
                           system: str = "You are a helpful agent.") -> list[dict[str, Any]]:
    """Call logs of a session: ``turns`` = [(assistant response, next-state messages)].

    The first request holds the system prompt and the first next-state list's messages are
    appended after each response, as a real client would send them.
    """
    history: list[dict] = [{"role": "system", "content": system}]
    records = []
    pending_next: list[dict] = []
    for response, next_messages in turns:
        history.extend(pending_next)
        records.append(exchange(session_id, history, response))
        history.append(response)
        pending_next = next_messages
    return records


def line(record: dict[str, Any]) -> bytes:
    return json.dumps(record).encode()

"""Default tool names that belong to the terminal and GUI extractors.

The ``tool`` extractor skips these by default so that a shell or browser result is scored once,
by the extractor that understands it. Each extractor takes its own ``tools`` option to override.
"""

from __future__ import annotations

from typing import Any

import msgspec

from nextstate.extractors.types import Interaction, Message

TERMINAL_TOOLS: frozenset[str] = frozenset({
    "bash", "shell", "terminal", "run_command", "execute", "execute_command", "run_shell",
    "exec", "sh", "zsh", "cmd", "powershell", "run_terminal_cmd", "execute_bash",
})
GUI_TOOLS: frozenset[str] = frozenset({
    "browser", "computer", "click", "type", "navigate", "goto", "fill", "scroll", "press",
    "hover", "select_option", "web_browser", "browser_action", "computer_use", "playwright",
    "mouse", "keyboard", "screenshot",
})


def tool_name(message: Message, context: tuple[Message, ...], start: int) -> str | None:
    """The name of the tool that produced ``message`` (a tool result at ``context[start]``).

    Uses ``message.name`` when logged; otherwise finds the assistant call with the same id,
    scanning backwards from ``start`` (the call precedes its result).
    """
    if message.name:
        return message.name
    call_id = message.tool_call_id
    if not call_id:
        return None
    for index in range(start - 1, -1, -1):
        earlier = context[index]
        if earlier.role == "assistant":
            for call in earlier.tool_calls:
                if call.id == call_id:
                    return call.name
    return None


def previous_user_request(interaction: Interaction) -> Message | None:
    """The latest user message before the action (the request the action answered)."""
    for message in reversed(interaction.context):
        if message.role == "user":
            return message
    return None


def json_object(text: str) -> dict[str, Any] | None:
    """``text`` decoded when it is a JSON object (tool results and arguments often are)."""
    stripped = text.lstrip()
    if not stripped.startswith("{"):
        return None
    try:
        data = msgspec.json.decode(stripped)
    except msgspec.DecodeError:
        return None
    return data if isinstance(data, dict) else None

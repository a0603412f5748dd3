"""ChatML rendering of contexts and actions, with the character spans of tool-call arguments.

Both policies render text the same way (``<|im_start|>role\\ncontent<|im_end|>\\n``, tool
calls as Hermes/Qwen ``<tool_call>`` JSON blocks), which is the ChatML template most open
agent models use. Rendering is *per message* and concatenative: the rendered context of turn
k+1 starts with the rendered context + action of turn k, so the token sequences of one
session are prefixes of each other and the packer can forward a shared prefix once.

The action is split off at the generation prompt (``<|im_start|>assistant\\n``): the tokens
the policy emitted are the action text, and ``tool_arg_spans`` says which characters of it
are tool-call arguments (for token-level credit, see ``objectives/pg.py``).
"""

from __future__ import annotations

import json

from nextstate.extractors.types import Message

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS: tuple[str, ...] = (IM_START, IM_END)


def render_message(message: Message) -> str:
    """Render one context message (any role) in ChatML, tool calls included."""
    text, _ = render_action(message)
    return f"{IM_START}{message.role}\n{text}"


def generation_prompt(role: str = "assistant") -> str:
    """The header the model continues from when it produces a message of ``role``."""
    return f"{IM_START}{role}\n"


def render_action(message: Message) -> tuple[str, list[tuple[int, int]]]:
    """Render a message's body (what follows the header) and its tool-argument char spans.

    Returns:
        ``(text, spans)``: the body ends with ``<|im_end|>\\n``; each span is the
        ``[start, end)`` character range of one tool call's ``arguments`` text in it.

    >>> from nextstate.extractors.types import ToolCall
    >>> text, spans = render_action(Message(role="assistant", content="ok",
    ...     tool_calls=(ToolCall(id="1", name="f", arguments='{"a": 1}'),)))
    >>> text[spans[0][0]:spans[0][1]]
    '{"a": 1}'
    """
    parts = [message.content]
    spans: list[tuple[int, int]] = []
    length = len(message.content)
    for call in message.tool_calls:
        head = ("\n" if length else "") + "<tool_call>\n" + '{"name": ' + json.dumps(
            call.name) + ', "arguments": '
        start = length + len(head)
        spans.append((start, start + len(call.arguments)))
        tail = "}\n</tool_call>"
        parts.append(head + call.arguments + tail)
        length += len(head) + len(call.arguments) + len(tail)
    parts.append(f"{IM_END}\n")
    return "".join(parts), spans


def hinted_context(context: tuple[Message, ...], hint: str, template: str) -> tuple[Message, ...]:
    """The teacher's context for hindsight distillation: the context plus the hint as a user turn.

    The hint comes last so that the teacher conditions on it right before acting, as the
    student would have if the user had said it beforehand.
    """
    return (*context, Message(role="user", content=template.format(hint=hint)))

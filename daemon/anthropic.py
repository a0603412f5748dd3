"""Anthropic Messages API exchanges, rewritten as the OpenAI-form records the join reads.

An Anthropic call log is ``{"session_id", "request": {"model", "system"?, "messages",
"tools"?}, "response": {"type": "message", "role": "assistant", "content": [blocks],
"stop_reason", "usage": {"input_tokens", "output_tokens", "cache_read_input_tokens"?}}}``.
Content blocks differ from OpenAI's messages, so :func:`to_openai` maps them onto the same
:class:`~nextstate.daemon.wire.WireRecord` an OpenAI exchange decodes to, and one join serves
both:

- the top-level ``system`` (a string or text blocks) becomes a leading ``system`` message;
- an assistant ``tool_use`` block becomes a tool call (``arguments`` = the JSON of ``input``);
- a user message's ``tool_result`` blocks become ``tool`` messages (``tool_call_id`` =
  ``tool_use_id``), in order, followed by a ``user`` message for the rest of its text;
- a ``tool_result`` with ``is_error: true`` gets its content prefixed with ``"Error: "``
  (unless it already reads as one), so the tool extractor scores it as the failure the client
  said it was;
- usage: ``prompt_tokens`` = input + cache-read + cache-creation tokens (Anthropic counts them
  apart; OpenAI's prompt count includes them), ``cached_tokens`` = cache-read tokens.
"""

from __future__ import annotations

import msgspec

from nextstate.daemon.wire import (
    WireFunction,
    WireMessage,
    WirePart,
    WirePromptDetails,
    WireRecord,
    WireRequest,
    WireResponse,
    WireToolCall,
    WireUsage,
    content_text,
)

SHAPE = "anthropic_exchange"
ERROR_PREFIX = "Error: "


def is_anthropic(record: WireRecord) -> bool:
    """Does an exchange (request + response) use Anthropic's Messages API shape?"""
    response, request = record.response, record.request
    if response is not None and (response.type == "message" or response.stop_reason is not None):
        return True
    if request is not None and request.system is not None:
        return True
    return response is not None and isinstance(response.content, list) and any(
        p.type == "tool_use" for p in response.content)


def to_openai(record: WireRecord) -> WireRecord:
    """The same exchange in OpenAI form (see the module docstring for the mapping)."""
    assert record.request is not None and record.response is not None
    request, response = record.request, record.response
    messages: list[WireMessage] = []
    if request.system:
        messages.append(WireMessage(role="system", content=content_text(request.system)))
    for message in request.messages:
        messages.extend(_messages(message))
    action = _assistant(WireMessage(role=response.role or "assistant",
                                    content=response.content))
    return msgspec.structs.replace(
        record,
        model=record.model or response.model or request.model,
        request=WireRequest(messages=messages, tools=request.tools, model=request.model),
        response=WireResponse(role=action.role, content=action.content,
                              tool_calls=action.tool_calls, model=response.model),
        usage=_usage(record.usage or response.usage))


def _messages(message: WireMessage) -> list[WireMessage]:
    if message.role == "assistant":
        return [_assistant(message)]
    if not isinstance(message.content, list):
        return [message]
    out: list[WireMessage] = []
    rest: list[WirePart] = []
    for part in message.content:
        if part.type == "tool_result":
            out.append(WireMessage(role="tool", content=_result_text(part),
                                   tool_call_id=part.tool_use_id))
        else:
            rest.append(part)
    if rest:
        out.append(WireMessage(role=message.role, content=content_text(rest)))
    return out


def _assistant(message: WireMessage) -> WireMessage:
    if not isinstance(message.content, list):
        return message
    calls = [WireToolCall(id=p.id or "", function=WireFunction(
        name=p.name or "", arguments=msgspec.json.encode(p.input or {}).decode()))
        for p in message.content if p.type == "tool_use"]
    text = [p for p in message.content if p.type not in ("tool_use", "thinking",
                                                          "redacted_thinking")]
    return WireMessage(role="assistant", content=content_text(text) if text else None,
                       tool_calls=calls or None)


def _result_text(part: WirePart) -> str:
    text = content_text(part.content)
    if part.is_error and not text.lstrip().lower().startswith("error"):
        return ERROR_PREFIX + text
    return text


def _usage(usage: WireUsage | None) -> WireUsage | None:
    if usage is None or (usage.input_tokens is None and usage.output_tokens is None):
        return usage
    cache_read = usage.cache_read_input_tokens or 0
    prompt = (usage.input_tokens or 0) + cache_read + (usage.cache_creation_input_tokens or 0)
    return WireUsage(prompt_tokens=prompt, completion_tokens=usage.output_tokens or 0,
                     prompt_tokens_details=WirePromptDetails(cached_tokens=cache_read))

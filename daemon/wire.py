"""Wire records: what one Kafka message (or file line) may be, decoded by one typed decoder.

Accepted shapes (one JSON object per record, Kafka key = session id):

1. ``openai_exchange``: an OpenAI chat-completions exchange as an API proxy logs it:
   ``{"session_id", "ts"?, "model"?, "policy_version"?, "request": {"messages", "tools"?},
   "response": {"choices": [{"message", "logprobs"?}]} | <the message itself>, "usage"?}``.
2. ``transcript``: a whole conversation: ``{"session_id", "messages", "reward"?, "metadata"?}``.
3. ``feedback``: ``{"type": "feedback", "session_id", "value"? , "text"?}`` (value: a number
   in [-1, 1], a boolean, or ``"up"``/``"down"``-style strings).
4. ``session_end``: ``{"type": "session_end", "session_id", "outcome"?}``.

The JSON shapes are not tagged uniformly, so one merged :class:`WireRecord` Struct decodes all
of them in a single typed pass (msgspec checks every type), and :func:`classify` tells which
shape it is. :func:`decode_lazy` leaves an exchange's request messages undecoded (one
``msgspec.Raw``: the bytes of the JSON array, checked as JSON but not built into objects): a
call log repeats the whole history in every request, and the join (``daemon/join.py``)
decodes only the messages it has not seen, with :func:`decode_messages`.
:func:`normalize_messages` turns OpenAI messages (string or multi-part content, ``tool_calls``
with JSON-string arguments) into the pipeline's flat :class:`Message`.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from typing import Annotated, Any, Generic, TypeVar

import msgspec

from nextstate.extractors.types import Feedback, Message, ToolCall, Usage


class BadRecord(ValueError):
    """A record that cannot be processed; ``reason`` is a short machine-readable label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def as_bad_record(error: BadRecord | RecursionError, where: str = "") -> BadRecord:
    """The dead-letter reason of a rejected record or span: ``error`` itself, or for a
    RecursionError (msgspec's guard against absurdly deep nesting: hostile input) a
    ``decode`` reject; ``where`` names the part that was nested too deeply."""
    if isinstance(error, BadRecord):
        return error
    return BadRecord("decode", f"{where}JSON nested too deeply")


class WireFunction(msgspec.Struct, frozen=True):
    name: str = ""
    arguments: str | dict[str, Any] | None = None


class WireToolCall(msgspec.Struct, frozen=True):
    id: str = ""
    type: str = "function"
    function: WireFunction = WireFunction()


class WirePart(msgspec.Struct, frozen=True):
    """An OpenAI content part, or an Anthropic content block (``tool_use``: id/name/input;
    ``tool_result``: tool_use_id/content/is_error), normalized by ``daemon/anthropic.py``."""

    type: str = "text"
    text: str | None = None
    id: str | None = None
    name: str | None = None
    input: dict[str, Any] | None = None
    tool_use_id: str | None = None
    content: str | list[WirePart] | None = None
    is_error: bool | None = None


class WireMessage(msgspec.Struct, frozen=True):
    role: str
    content: str | list[WirePart] | None = None
    tool_calls: list[WireToolCall] | None = None
    tool_call_id: str | None = None
    name: str | None = None


class WireTokenLogprob(msgspec.Struct, frozen=True):
    logprob: float


class WireLogprobs(msgspec.Struct, frozen=True):
    content: list[WireTokenLogprob] | None = None


class WireChoice(msgspec.Struct, frozen=True):
    message: WireMessage
    logprobs: WireLogprobs | None = None


class WireResponse(msgspec.Struct, frozen=True):
    """Either ``{"choices": [...]}`` or an assistant message itself (merged, untagged)."""

    choices: list[WireChoice] | None = None
    role: str | None = None
    content: str | list[WirePart] | None = None
    tool_calls: list[WireToolCall] | None = None
    model: str | None = None
    usage: WireUsage | None = None
    type: str | None = None          # Anthropic: "message"
    stop_reason: str | None = None   # Anthropic: "end_turn", "tool_use", ...


M = TypeVar("M")
"""Request messages: ``list[WireMessage]``, or ``msgspec.Raw`` (the array's bytes) when lazy, or
a :class:`SplicedArray` (ingest cut the known messages out)."""


class WireRequest(msgspec.Struct, Generic[M], frozen=True):
    messages: M = []  # type: ignore[assignment]
    tools: list[Any] | None = None
    model: str | None = None
    system: str | list[WirePart] | None = None  # Anthropic's top-level system prompt


# A token count is never negative: one would make a Prometheus counter go down (read as a
# counter reset, so rates and the report's per-token yield were wrong from there on).
Tokens = Annotated[int, msgspec.Meta(ge=0)]


class WirePromptDetails(msgspec.Struct, frozen=True):
    cached_tokens: Tokens | None = None


class WireUsage(msgspec.Struct, frozen=True):
    prompt_tokens: Tokens | None = None
    completion_tokens: Tokens | None = None
    prompt_tokens_details: WirePromptDetails | None = None
    input_tokens: Tokens | None = None                 # Anthropic names (daemon/anthropic.py)
    output_tokens: Tokens | None = None
    cache_read_input_tokens: Tokens | None = None
    cache_creation_input_tokens: Tokens | None = None


class WireRecord(msgspec.Struct, Generic[M], frozen=True):
    """Every accepted shape merged into one Struct (absent fields are ``None``).

    ``WireRecord[list[WireMessage]]`` is the fully decoded record; ``WireRecord[msgspec.Raw]``
    (:func:`decode_lazy`) keeps the request's messages as the bytes of their JSON array.
    """

    # An int (a database key) is taken as its decimal string by ingest.decode_records.
    session_id: str | int | None = None
    type: str | None = None
    ts: float | str | None = None
    model: str | None = None
    policy_version: str | int | None = None
    request: WireRequest[M] | None = None
    response: WireResponse | None = None
    usage: WireUsage | None = None
    messages: list[WireMessage] | None = None
    reward: float | None = None
    metadata: dict[str, Any] | None = None
    value: float | bool | str | None = None
    text: str | None = None
    outcome: float | bool | str | None = None


class SplicedArray(msgspec.Struct, gc=False):
    """A request's message array, cut out of a record whose leading messages were the bytes
    a joiner already held (``ingest._decode_spliced``): where the array lies in the record,
    the held bytes it starts with, and the messages after them, decoded.

    ``bytes()`` of it is the array's bytes, so whatever reads request messages as bytes
    (:func:`typed`, the join's general path) reads it as a ``msgspec.Raw``.
    """

    value: bytes                # the record
    start: int                  # the array is value[start:end]
    end: int
    known: bytes                # the held bytes it starts with (the very object lent)
    tail: list[WireMessage]     # the messages after them

    def __bytes__(self) -> bytes:
        return self.value[self.start:self.end]


LAZY_ARRAYS = (msgspec.Raw, bytes, SplicedArray)
"""Types of request messages not decoded yet (see :data:`M`)."""

# msgspec resolves the forward reference of WireResponse.usage at decoder build time.
DECODER = msgspec.json.Decoder(WireRecord[list[WireMessage]])
LAZY_DECODER = msgspec.json.Decoder(WireRecord[msgspec.Raw])
MESSAGES_DECODER = msgspec.json.Decoder(list[WireMessage])

_NO_USAGE = Usage()  # immutable, so one serves every record without usage
_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant",
          "tool": "tool", "function": "tool"}
# Bound once: compiled, ``_ROLES.get(...)`` looks the method up and binds it on every call.
_role_of = _ROLES.get
_POSITIVE = {"up", "thumbs_up", "thumbsup", "good", "positive", "like", "yes", "true", "success",
             "succeeded", "resolved", "+1"}
_NEGATIVE = {"down", "thumbs_down", "thumbsdown", "bad", "negative", "dislike", "no", "false",
             "failure", "failed", "unresolved", "-1"}


def decode(value: bytes | str) -> WireRecord[list[WireMessage]]:
    """Decode one record; raises :class:`BadRecord` with reason ``decode`` on bad JSON (or
    ``schema`` on bad types)."""
    try:
        return DECODER.decode(value)
    except msgspec.ValidationError as exc:
        raise BadRecord("schema", str(exc)) from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:  # bad UTF-8 is the latter
        raise BadRecord("decode", str(exc)) from None


# A UTF-16 surrogate escape without its other half: what JavaScript's JSON.stringify writes
# for a string cut inside an emoji, and Python's json.dumps for undecodable bytes read with
# "surrogateescape". The JSON grammar allows it; no Unicode text holds it, and msgspec
# rejects the record. An escape, not an escaped backslash (an even run of them before it).
_LONE_SURROGATE = re.compile(
    rb"(?<!\\)((?:\\\\)*)"
    rb"(?:\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F][0-9a-fA-F]{2})"  # high, no low
    rb"|(?<!\\u[dD][89abAB][0-9a-fA-F]{2})\\u[dD][c-fC-F][0-9a-fA-F]{2})")  # low, no high


def without_lone_surrogates(value: bytes) -> bytes | None:
    """``value`` with every lone surrogate escape read as U+FFFD (the replacement character),
    or ``None`` if it holds none. Called on a record that did not decode: one cut emoji in a
    tool output, repeated in every later request of a call log, cost the session's records
    from there on."""
    repaired = _LONE_SURROGATE.sub(rb"\1\\ufffd", value)
    return None if repaired == value else repaired


def decode_lazy(value: bytes | str) -> WireRecord[msgspec.Raw]:
    """:func:`decode`, but the request's messages stay one ``msgspec.Raw`` (valid JSON, their
    types not checked yet: :func:`decode_messages` or :func:`typed` checks them)."""
    try:
        return LAZY_DECODER.decode(value)
    except msgspec.ValidationError as exc:
        raise BadRecord("schema", str(exc)) from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:  # bad UTF-8 is the latter
        raise BadRecord("decode", str(exc)) from None


def decode_messages(array: msgspec.Raw | bytes) -> list[WireMessage]:
    """A JSON array of request messages, decoded; a :class:`BadRecord` with reason ``schema``
    when one is not a message, as :func:`decode` would have raised."""
    try:
        return MESSAGES_DECODER.decode(array)
    except msgspec.ValidationError as exc:
        raise BadRecord("schema", f"request.messages: {exc}") from None
    except UnicodeDecodeError as exc:  # a Raw array is valid JSON, but not checked as UTF-8
        raise BadRecord("decode", f"request.messages: {exc}") from None


def typed(record: WireRecord[Any]) -> WireRecord[list[WireMessage]]:
    """The record with its request messages decoded (as :func:`decode` returns it)."""
    request = record.request
    if request is None or type(request.messages) not in LAZY_ARRAYS:
        return record
    array = request.messages
    if type(array) is SplicedArray:
        array = bytes(array)
    return msgspec.structs.replace(record, request=msgspec.structs.replace(
        request, messages=decode_messages(array)))


def classify(record: WireRecord) -> str:
    """Which input shape a decoded record is; raises :class:`BadRecord` when none fits."""
    if not record.session_id:
        raise BadRecord("no_session", "record has no session_id")
    if record.type is not None:
        if record.type in ("feedback", "session_end"):
            return record.type
        raise BadRecord("unknown_type", f"unknown record type {record.type!r}")
    if record.request is not None and record.response is not None:
        return "openai_exchange"
    if record.messages is not None:
        return "transcript"
    raise BadRecord("unknown_shape",
                    "expected request+response, messages, or a type of feedback/session_end")


def parse_ts(ts: float | str | None) -> float:
    """Seconds since the epoch from an ISO-8601 string or a number of seconds, milliseconds,
    microseconds or nanoseconds (told apart by size: each unit's range from 1973 to 5138 does
    not overlap the next one's); 0.0 if absent. A negative or non-finite number is rejected.
    """
    if ts is None:
        return 0.0
    if isinstance(ts, str):
        try:
            parsed = dt.datetime.fromisoformat(ts.replace("Z", "+00:00"))
        except ValueError:
            raise BadRecord("schema", f"ts is not ISO-8601: {ts[:40]!r}") from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=dt.UTC)
        return parsed.timestamp()
    if ts < 1e11:  # seconds, the usual case (a NaN fails every comparison: checked below)
        if ts >= 0:
            return float(ts)
    elif ts < 1e14:
        return ts / 1e3
    elif ts < 1e17:
        return ts / 1e6
    elif ts < 1e20:  # nanoseconds (Go's UnixNano, OpenTelemetry's time fields)
        return ts / 1e9
    raise BadRecord("schema", f"ts is not a time: {ts!r}")


def score_value(value: float | bool | str | None) -> float | None:
    """A feedback value or outcome as a score in [-1, 1] (booleans and thumbs map to +-1)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return 1.0 if value else -1.0
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _POSITIVE:
            return 1.0
        if word in _NEGATIVE:
            return -1.0
        try:
            value = float(word)
        except ValueError:
            raise BadRecord("schema", f"feedback value {value[:40]!r} is not a score") from None
    if not math.isfinite(value):  # "nan" was clipped to -1.0: a confident thumbs-down
        raise BadRecord("schema", f"feedback value {value!r} is not a score")
    return min(1.0, max(-1.0, float(value)))


def feedback_of(record: WireRecord) -> Feedback:
    """The explicit feedback a ``feedback`` record carries."""
    value = score_value(record.value)
    if value is None and not record.text:
        raise BadRecord("schema", "feedback has neither value nor text")
    return Feedback(value=value, text=record.text)


def usage_of(record: WireRecord) -> Usage:
    """Token usage from the record (or from an inline response's usage)."""
    usage = record.usage or (record.response.usage if record.response else None)
    if usage is None:
        return _NO_USAGE
    details = usage.prompt_tokens_details
    return Usage(usage.prompt_tokens or 0, usage.completion_tokens or 0,
                 (details.cached_tokens or 0) if details else 0)


def content_text(content: str | list[WirePart] | None) -> str:
    """Message content as text: string as is, parts joined (non-text parts as ``[type]``)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "\n".join(p.text if p.text is not None else f"[{p.type}]" for p in content)


def _tool_calls(calls: list[WireToolCall] | None) -> tuple[ToolCall, ...]:
    if not calls:
        return ()
    out = []
    for call in calls:
        args = call.function.arguments
        if args is None:
            args = ""
        elif not isinstance(args, str):
            args = msgspec.json.encode(args).decode()
        out.append(ToolCall(call.id, call.function.name, args))
    return tuple(out)


def normalize_message(message: WireMessage) -> Message:
    """One wire message as a pipeline :class:`Message`; unknown roles are a :class:`BadRecord`."""
    role = _role_of(message.role)
    if role is None:
        raise BadRecord("unknown_role", f"unknown message role {message.role[:40]!r}")
    # content_text and _tool_calls inline for the usual string or empty content and no calls:
    # two calls fewer for every message the join decodes.
    content = message.content
    if content is None:
        content = ""
    elif type(content) is not str:
        content = content_text(content)
    calls = message.tool_calls
    # Positional (role, content, tool_calls, tool_call_id, name): several times cheaper than
    # keywords.
    return Message(role, content, _tool_calls(calls) if calls else (),  # type: ignore[arg-type]
                   message.tool_call_id, message.name)


def normalize_messages(messages: list[WireMessage]) -> list[Message]:
    """Every wire message of a list, normalized."""
    return [normalize_message(m) for m in messages]


def response_message(record: WireRecord) -> tuple[Message, tuple[float, ...] | None]:
    """The assistant message an exchange's response holds, and its token log-probs if logged."""
    message, logprobs, _ = response_action(record)
    return message, logprobs


def response_action(record: WireRecord
                    ) -> tuple[Message, tuple[float, ...] | None, WireMessage]:
    """:func:`response_message`, plus the wire message it was normalized from."""
    response = record.response
    assert response is not None
    choices = response.choices
    if choices is not None:
        if not choices:
            raise BadRecord("schema", "response.choices is empty")
        choice = choices[0]
        wire = choice.message
        logprobs = (tuple(t.logprob for t in choice.logprobs.content)
                    if choice.logprobs and choice.logprobs.content else None)
    else:
        wire = WireMessage(role=response.role or "assistant", content=response.content,
                           tool_calls=response.tool_calls)
        logprobs = None
    message = normalize_message(wire)
    if message.role != "assistant":
        raise BadRecord("schema", f"response message has role {message.role!r}, not assistant")
    return message, logprobs, wire

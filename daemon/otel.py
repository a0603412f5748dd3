"""OpenTelemetry GenAI spans (OTLP JSON or protobuf batches) as records the join reads.

An OpenTelemetry Collector (or Rotel) exporting traces to Kafka writes one record per export
batch: ``{"resourceSpans": [...]}`` (the OTel Collector, OTLP/HTTP JSON), a bare JSON list of
ResourceSpans (Rotel), or a binary ``TracesData`` (protobuf encoding). :func:`decode_batch`
turns a batch into per-span :class:`~nextstate.daemon.wire.WireRecord` s, in batch order
(a batch processor exports spans in the order they end, so a tool span follows the chat span
that asked for it):

- ``chat`` spans (and ``text_completion``/``generate_content``; ``invoke_agent`` only when
  its trace has no model-call span in the batch) with ``gen_ai.output.messages`` become
  exchanges, shape ``otel_span``: ``gen_ai.system_instructions`` + ``gen_ai.input.messages``
  -> the request, the first output message -> the response, ``gen_ai.usage.*`` -> usage
  (the deprecated ``prompt_tokens``/``completion_tokens`` names too).
- ``execute_tool`` spans become tool results, shape ``otel_tool``: a ``tool`` message with
  ``gen_ai.tool.call.id``/``gen_ai.tool.name`` and ``gen_ai.tool.call.result``; a span whose
  status is ERROR reads ``"Error: <status message or error.type>"`` so the tool extractor
  scores it as the failure the span reports. The join attaches it to the pending action.
- The session is ``gen_ai.conversation.id`` (from the span itself, else from any span of
  the same trace in the batch, e.g. a parent ``invoke_agent``), else the trace id (hex).

Spans of other operations (embeddings, HTTP, DB...) are skipped. A span that fits no record
(malformed messages or attributes, a bad start time) costs the batch only itself: the batch's
:attr:`SpanBatch.rejected` holds it as a :class:`RejectedSpan`, a one-span batch of its own
with the reason, for the dead letters; so does :meth:`SpanBatch.reject` for a span the join
rejects. For several daemons in one consumer group, the collector must key records by trace
(the OTel Collector's Kafka exporter: ``partition_traces_by_id: true``), so that one session
stays on one partition.
"""

from __future__ import annotations

import base64
from typing import Any

import msgspec

from nextstate.daemon.wire import (
    BadRecord,
    WireFunction,
    WireMessage,
    WirePromptDetails,
    WireRecord,
    WireRequest,
    WireResponse,
    WireToolCall,
    WireUsage,
    as_bad_record,
    without_lone_surrogates,
)

EXCHANGE_SHAPE = "otel_span"
TOOL_SHAPE = "otel_tool"
_MODEL_CALLS = frozenset({"chat", "text_completion", "generate_content"})
_STATUS_ERROR = (2, "STATUS_CODE_ERROR")


class AnyValue(msgspec.Struct, frozen=True):
    stringValue: str | None = None
    intValue: int | str | None = None
    doubleValue: float | str | None = None
    boolValue: bool | None = None
    arrayValue: ArrayValue | None = None


class ArrayValue(msgspec.Struct, frozen=True):
    values: list[AnyValue] = []


class KeyValue(msgspec.Struct, frozen=True):
    key: str
    value: AnyValue = AnyValue()


class Status(msgspec.Struct, frozen=True):
    code: int | str | None = None
    message: str | None = None


class Span(msgspec.Struct, frozen=True):
    traceId: str = ""
    spanId: str = ""
    name: str = ""
    startTimeUnixNano: int | str | None = None
    attributes: list[KeyValue] = []
    status: Status | None = None


class ScopeSpans(msgspec.Struct, frozen=True):
    spans: list[Span] = []


class ResourceSpans(msgspec.Struct, frozen=True):
    scopeSpans: list[ScopeSpans] = []


class TracesData(msgspec.Struct, frozen=True):
    resourceSpans: list[ResourceSpans] = []


class _Part(msgspec.Struct, frozen=True):
    """One part of a GenAI semconv message (``text``, ``tool_call``, ``tool_call_response``)."""

    type: str = "text"
    content: Any = None
    id: str | None = None
    name: str | None = None
    arguments: Any = None
    response: Any = None
    result: Any = None


class _Message(msgspec.Struct, frozen=True):
    role: str = "user"
    parts: list[_Part] = []


_ENVELOPE = msgspec.json.Decoder(TracesData)
_LIST = msgspec.json.Decoder(list[ResourceSpans])
_MESSAGES = msgspec.json.Decoder(list[_Message])
_PARTS = msgspec.json.Decoder(list[_Part])


def looks_like_otlp_json(value: bytes) -> bool:
    """Cheap shape test: a JSON list, or an object whose first key is ``resourceSpans``."""
    head = value[:64].lstrip()
    return head[:1] == b"[" or (head[:1] == b"{" and b'"resourceSpans"' in head)


def looks_like_otlp_proto(value: bytes) -> bool:
    """A binary ``TracesData`` starts with field 1 (tag byte 0x0a) and is not JSON.

    Its first length byte can be whitespace, ``[`` or ``{`` (a first ResourceSpans of 9, 10,
    13, 32, 91 or 123 bytes), so what reads as JSON after a leading newline is still taken
    for protobuf when the bytes are TracesData's framing to the last byte.
    """
    if value[:1] != b"\n":
        return False
    return value.lstrip()[:1] not in (b"{", b"[") or _framed_as_traces(value)


def _framed_as_traces(value: bytes) -> bool:
    """Whether ``value`` is a run of field-1 length-delimited entries (TracesData's
    ``resource_spans``) ending exactly at its last byte: JSON text after a newline is not."""
    at, end = 0, len(value)
    while at < end:
        if value[at] != 0x0A:
            return False
        at += 1
        length = shift = 0
        while True:  # the entry's length, a base-128 varint
            if at >= end or shift > 63:
                return False
            byte = value[at]
            at += 1
            length |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                break
        at += length
    return at == end


def _operation(attributes: dict[str, Any]) -> str | None:
    """The span's ``gen_ai.operation.name``; ``None`` unless a string (an array or map
    value names no operation we know, and is not hashable)."""
    operation = attributes.get("gen_ai.operation.name")
    return operation if type(operation) is str else None


class RejectedSpan(msgspec.Struct, frozen=True):
    """A span of an OTLP batch that fits no record, as the dead letters take it.

    Attributes:
        index: the span's place in the batch (counting every span, GenAI or not).
        reason: the :class:`BadRecord` reason.
        detail: which span (its index and id) and why.
        value: the span alone as an OTLP batch in the batch's encoding (JSON envelope, Rotel
            list or protobuf), with its resource and scope, and the batch's conversation id
            for its trace when another span carried it: fed to the daemon on its own, it is
            read (and rejected) as it was in the batch.
    """

    index: int
    reason: str
    detail: str
    value: bytes


class SpanBatch(list[tuple[WireRecord, str]]):
    """The usable GenAI spans of an OTLP batch as ``(record, shape)`` pairs, in batch order,
    and the spans that fit no record in :attr:`rejected`.

    A list like any decode's result, so its callers iterate it as they do one record's; the
    pipeline tells it from one record's (a plain list) by its type.
    """

    __slots__ = ("_attrs", "_sources", "_splitter", "rejected")

    def __init__(self, splitter: _Splitter, attrs: list[dict[str, Any] | None]) -> None:
        super().__init__()
        self.rejected: list[RejectedSpan] = []
        self._splitter, self._attrs = splitter, attrs
        self._sources: list[int] = []  # each pair's span, as its index in the batch

    def reject(self, n: int, error: BadRecord) -> RejectedSpan:
        """Pair ``n``'s span, rejected after decoding (by the join) for ``error``."""
        index = self._sources[n]
        return self._splitter.reject(index, self._attrs[index], self[n][0].session_id, error)


def decode_batch(value: bytes) -> SpanBatch:
    """Every usable GenAI span of an OTLP batch as ``(record, shape)``, in batch order; the
    GenAI spans that fit no record in the batch's :attr:`~SpanBatch.rejected`.

    Raises:
        BadRecord: the batch is not valid OTLP (``decode``/``schema``).
    """
    traces = _traces(value)
    spans = [s for rs in traces for ss in rs.scopeSpans for s in ss.spans]
    attrs: list[dict[str, Any] | None] = []
    unreadable: dict[int, BadRecord] = {}
    for i, span in enumerate(spans):
        try:
            attrs.append(_attributes(span))
        except BadRecord as exc:
            attrs.append(None)
            unreadable[i] = exc
    conversation: dict[str, str] = {}
    model_call_traces: set[str] = set()
    for span, a in zip(spans, attrs, strict=True):
        if a is None:
            continue
        if isinstance(a.get("gen_ai.conversation.id"), str):
            conversation.setdefault(span.traceId, a["gen_ai.conversation.id"])
        if _operation(a) in _MODEL_CALLS:
            model_call_traces.add(span.traceId)
    splitter = _Splitter(value, traces, spans)
    out = SpanBatch(splitter, attrs)
    for i, (span, a) in enumerate(zip(spans, attrs, strict=True)):
        if a is None:
            out.rejected.append(splitter.reject(i, None, None, unreadable[i]))
            continue
        operation = _operation(a)
        session = str(a.get("gen_ai.conversation.id") or conversation.get(span.traceId)
                      or _hex_id(span.traceId))
        try:
            if operation in _MODEL_CALLS or (operation == "invoke_agent"
                                             and span.traceId not in model_call_traces):
                record, shape = _exchange(session, span, a), EXCHANGE_SHAPE
            elif operation == "execute_tool":
                record, shape = _tool_result(session, span, a), TOOL_SHAPE
            else:
                continue
        except (BadRecord, RecursionError) as error:
            # One malformed span must not cost the batch's other spans: it goes apart.
            exc = as_bad_record(error, "GenAI messages attribute: ")
            out.rejected.append(splitter.reject(i, a, session, exc))
            continue
        if record is not None:  # None: an exchange without its messages (capture off)
            out.append((record, shape))
            out._sources.append(i)
    return out


class _Splitter:
    """Cuts spans out of one batch as batches of their own (see :class:`RejectedSpan`).

    The batch is read again for that once, when its first span is rejected, and each span's
    resource and scope are found by its index: before, every rejected span decoded the whole
    batch again and walked its scopes (4,000 bad spans took 6-8 s in a 1.8 MB JSON batch, 32 s
    in a 0.85 MB protobuf one; the 16 MB a record may hold, many minutes).
    """

    __slots__ = ("_places", "_proto", "_raw", "_shells", "_spans", "_value")

    def __init__(self, value: bytes, traces: list[ResourceSpans], spans: list[Span]) -> None:
        self._value, self._spans = value, spans
        self._proto = False  # (set with _raw: the test copies the batch)
        # span index -> (resource, scope, place in the scope)
        self._places = [(r, s, k) for r, resource in enumerate(traces)
                        for s, scope in enumerate(resource.scopeSpans)
                        for k in range(len(scope.spans))]
        self._raw: Any = None  # the batch read again (_raw_json or _raw_proto); False: unreadable
        # A protobuf batch's resources (r, -1) and scopes (r, s), each without what it holds.
        self._shells: dict[tuple[int, int], Any] = {}

    def reject(self, index: int, a: dict[str, Any] | None, session: str | None,
               error: BadRecord) -> RejectedSpan:
        """Span ``index`` (its attributes ``a``, its session), rejected for ``error``."""
        span = self._spans[index]
        # A session that came from another span of its trace: the span alone must carry it.
        inherited = a is not None and not a.get("gen_ai.conversation.id") \
            and session != _hex_id(span.traceId)
        alone = self._alone(index, session if inherited else None)
        span_id = _hex_id(span.spanId)[:32] or "no id"
        return RejectedSpan(index, error.reason, f"span {index} ({span_id}): {error.detail}",
                            alone)

    def _alone(self, index: int, conversation: str | None) -> bytes:
        if self._raw is None:
            proto = self._proto = looks_like_otlp_proto(self._value)
            try:
                self._raw = _raw_proto(self._value) if proto else _raw_json(self._value)
            except (msgspec.MsgspecError, UnicodeDecodeError, RecursionError):
                self._raw = False
        if self._raw is False:
            # Not seen (the batch's decode read these bytes): the whole batch, so nothing is
            # lost.
            return self._value
        r, s, k = self._places[index]
        if self._proto:
            return self._one_span_proto(r, s, k, conversation)
        try:
            return _one_span_json(self._raw, r, s, k, conversation)
        except (msgspec.MsgspecError, UnicodeDecodeError, RecursionError):
            return self._value

    def _one_span_proto(self, r: int, s: int, k: int, conversation: str | None) -> bytes:
        """:func:`_one_span_json` for a protobuf batch: its resource and scope as they were
        (unknown fields too), with only the span in them."""
        from opentelemetry.proto.trace.v1.trace_pb2 import TracesData as PbTracesData

        # Each resource and scope copied once without what it holds (a copy of a resource
        # copies every span in it).
        resource = self._raw.resource_spans[r]
        resource_shell = self._shells.get((r, -1))
        if resource_shell is None:
            resource_shell = self._shells[(r, -1)] = type(resource)()
            resource_shell.CopyFrom(resource)
            del resource_shell.scope_spans[:]
        scope = resource.scope_spans[s]
        scope_shell = self._shells.get((r, s))
        if scope_shell is None:
            scope_shell = self._shells[(r, s)] = type(scope)()
            scope_shell.CopyFrom(scope)
            del scope_shell.spans[:]
        out = PbTracesData()
        alone = out.resource_spans.add()
        alone.CopyFrom(resource_shell)
        alone_scope = alone.scope_spans.add()
        alone_scope.CopyFrom(scope_shell)
        span = alone_scope.spans.add()
        span.CopyFrom(scope.spans[k])
        if conversation is not None:
            span.attributes.add(key="gen_ai.conversation.id").value.string_value = conversation
        return out.SerializeToString()


class _RawScopeSpans(msgspec.Struct, omit_defaults=True):
    scope: msgspec.Raw = msgspec.Raw()
    spans: list[msgspec.Raw] = []
    schemaUrl: msgspec.Raw = msgspec.Raw()


class _RawResourceSpans(msgspec.Struct, omit_defaults=True):
    resource: msgspec.Raw = msgspec.Raw()
    scopeSpans: list[_RawScopeSpans] = []
    schemaUrl: msgspec.Raw = msgspec.Raw()


class _RawTracesData(msgspec.Struct, omit_defaults=True):
    resourceSpans: list[_RawResourceSpans] = []


_RAW_ENVELOPE = msgspec.json.Decoder(_RawTracesData)
_RAW_LIST = msgspec.json.Decoder(list[_RawResourceSpans])
_RAW_FIELDS = msgspec.json.Decoder(dict[str, msgspec.Raw])
_RAW_ARRAY = msgspec.json.Decoder(list[msgspec.Raw])


def _raw_json(value: bytes) -> tuple[bool, list[_RawResourceSpans]]:
    """A JSON batch's resources with every part left as bytes, and whether it is the list
    form (Rotel) rather than the envelope."""
    listed = value.lstrip()[:1] == b"["
    return listed, _RAW_LIST.decode(value) if listed else _RAW_ENVELOPE.decode(value).resourceSpans


def _raw_proto(value: bytes) -> Any:
    """A protobuf batch parsed again, as the generated ``TracesData`` message."""
    from opentelemetry.proto.trace.v1.trace_pb2 import TracesData as PbTracesData

    batch = PbTracesData()
    batch.ParseFromString(value)
    return batch


def _one_span_json(raw: tuple[bool, list[_RawResourceSpans]], r: int, s: int, k: int,
                   conversation: str | None) -> bytes:
    """Span ``k`` of scope ``s`` of resource ``r`` as a JSON batch of its own, its bytes (and
    its resource's and scope's) as they were, in the batch's form (envelope or list)."""
    listed, resources = raw
    resource = resources[r]
    scope = resource.scopeSpans[s]
    span = scope.spans[k]
    if conversation is not None:
        try:
            fields = _RAW_FIELDS.decode(span)
            attributes = _RAW_ARRAY.decode(fields.get("attributes", b"[]"))
        except UnicodeDecodeError:  # a field name that is no UTF-8 (the decode skipped it)
            pass  # the span as it was: alone, its session is its trace id
        else:  # after the span's own: the last of a key is the one read
            attributes.append(msgspec.Raw(msgspec.json.encode(
                {"key": "gen_ai.conversation.id", "value": {"stringValue": conversation}})))
            span = msgspec.Raw(msgspec.json.encode({**fields, "attributes": attributes}))
    alone = msgspec.structs.replace(resource, scopeSpans=[
        msgspec.structs.replace(scope, spans=[span])])
    return msgspec.json.encode([alone] if listed else _RawTracesData([alone]))


def _traces(value: bytes) -> list[ResourceSpans]:
    try:
        if looks_like_otlp_proto(value):
            return _from_proto(value)
        if value.lstrip()[:1] == b"[":
            return _LIST.decode(value)
        return _ENVELOPE.decode(value).resourceSpans
    except msgspec.ValidationError as exc:
        raise BadRecord("schema", f"OTLP: {exc}") from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:  # bad UTF-8 is the latter
        raise BadRecord("decode", f"OTLP: {exc}") from None


def _from_proto(value: bytes) -> list[ResourceSpans]:
    try:
        from google.protobuf.json_format import MessageToDict
        from google.protobuf.message import DecodeError
        from opentelemetry.proto.trace.v1.trace_pb2 import TracesData as PbTracesData
    except ImportError:  # the protobuf encoding needs the optional opentelemetry-proto
        raise BadRecord("decode", "OTLP protobuf needs the opentelemetry-proto package") from None
    message = PbTracesData()
    try:
        message.ParseFromString(value)
    except DecodeError as exc:
        raise BadRecord("decode", f"OTLP protobuf: {exc}") from None
    return msgspec.convert(MessageToDict(message), TracesData).resourceSpans


def _hex_id(value: str) -> str:
    """Ids are hex in the collector's JSON, base64 in protobuf's canonical JSON: use hex."""
    if len(value) in (16, 32):
        return value.lower()
    try:
        return base64.b64decode(value).hex()
    except ValueError:
        return value


def _value(value: AnyValue) -> Any:
    if value.stringValue is not None:
        return value.stringValue
    if value.intValue is not None:
        return int(value.intValue)
    if value.doubleValue is not None:
        return float(value.doubleValue)
    if value.boolValue is not None:
        return value.boolValue
    if value.arrayValue is not None:
        return [_value(v) for v in value.arrayValue.values]
    return None


def _attributes(span: Span) -> dict[str, Any]:
    try:
        return {kv.key: _value(kv.value) for kv in span.attributes}
    except ValueError as exc:  # an intValue/doubleValue string that is no number
        raise BadRecord("schema", f"OTLP span attribute: {exc}") from None


def _messages(raw: Any, decoder: msgspec.json.Decoder[Any]) -> Any:
    """A JSON-string (or, from some SDKs, already structured) messages attribute, decoded."""
    if raw is None:
        return None
    try:
        if isinstance(raw, str):
            try:
                return decoder.decode(raw)
            except msgspec.DecodeError:  # a cut emoji in a message, as in a record
                repaired = without_lone_surrogates(raw.encode())
                if repaired is None:
                    raise
                return decoder.decode(repaired)
        return msgspec.convert(raw, decoder.type)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise BadRecord("schema", f"GenAI messages attribute: {exc}") from None


def _json_text(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else msgspec.json.encode(value).decode()


def _wire_messages(message: _Message) -> list[WireMessage]:
    """One semconv message as wire messages (each tool response its own ``tool`` message)."""
    texts: list[str] = []
    calls: list[WireToolCall] = []
    out: list[WireMessage] = []
    for part in message.parts:
        if part.type == "text":
            texts.append(_json_text(part.content))
        elif part.type == "tool_call":
            calls.append(WireToolCall(id=part.id or "", function=WireFunction(
                name=part.name or "", arguments=_json_text(part.arguments))))
        elif part.type == "tool_call_response":
            out.append(WireMessage(role="tool", tool_call_id=part.id, content=_json_text(
                part.response if part.response is not None else part.result)))
        elif part.type != "reasoning":
            texts.append(f"[{part.type}]")
    if texts or calls or not out:
        out.insert(0, WireMessage(role=message.role, content="\n".join(texts) or None,
                                  tool_calls=calls or None))
    return out


def _exchange(session: str, span: Span, a: dict[str, Any]) -> WireRecord | None:
    outputs = _messages(a.get("gen_ai.output.messages"), _MESSAGES)
    if not outputs:
        return None  # content capture off: nothing to judge (its tool spans still count)
    messages: list[WireMessage] = []
    system = _messages(a.get("gen_ai.system_instructions"), _PARTS)
    if system:
        messages.append(WireMessage(role="system", content="\n".join(
            _json_text(p.content) for p in system if p.type == "text")))
    for message in _messages(a.get("gen_ai.input.messages"), _MESSAGES) or ():
        messages.extend(_wire_messages(message))
    (action, *_) = _wire_messages(outputs[0])
    model = _string(a, "gen_ai.response.model") or _string(a, "gen_ai.request.model")
    prompt = _tokens(a, "gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens")
    completion = _tokens(a, "gen_ai.usage.output_tokens", "gen_ai.usage.completion_tokens")
    cached = _tokens(a, "gen_ai.usage.cache_read.input_tokens")
    return WireRecord(
        session_id=session, ts=_start_seconds(span), model=model,
        request=WireRequest(messages=messages),
        response=WireResponse(role="assistant", content=action.content,
                              tool_calls=action.tool_calls),
        usage=WireUsage(prompt_tokens=prompt, completion_tokens=completion,
                        prompt_tokens_details=WirePromptDetails(cached_tokens=cached)))


def _tool_result(session: str, span: Span, a: dict[str, Any]) -> WireRecord:
    content = _json_text(a.get("gen_ai.tool.call.result"))
    status = span.status
    if status is not None and status.code in _STATUS_ERROR:
        error_type = a.get("error.type")
        reason = status.message or (error_type if isinstance(error_type, str) else None) \
            or content or "tool failed"
        content = f"Error: {reason}" if not str(reason).lower().startswith("error") else reason
    name = a.get("gen_ai.tool.name")
    return WireRecord(session_id=session, ts=_start_seconds(span), messages=[WireMessage(
        role="tool", content=content, tool_call_id=_string(a, "gen_ai.tool.call.id"),
        name=name if isinstance(name, str) else None)],
        metadata={"arguments": _json_text(a.get("gen_ai.tool.call.arguments"))})


# Attributes the join and the counters use as they are. The SDKs type them, but a span may
# carry any OTLP value: a model that was a number, or a token count that was a string,
# raised a TypeError in the yield counters, out of the poll loop, at the same offset after
# every restart. Such a span is rejected on its own, like a malformed one.
def _string(a: dict[str, Any], key: str) -> str | None:
    value = a.get(key)
    if value is None or isinstance(value, str):
        return value
    raise BadRecord("schema", f"{key} is not a string: {value!r:.60}")


def _tokens(a: dict[str, Any], *keys: str) -> int | None:
    """The first of ``keys`` present, a count of tokens (an int >= 0)."""
    for key in keys:
        value = a.get(key)
        if value is None:
            continue
        if type(value) is int and value >= 0:
            return value
        raise BadRecord("schema", f"{key} is not a token count: {value!r:.60}")
    return None


def _start_seconds(span: Span) -> float | None:
    try:
        return int(span.startTimeUnixNano) / 1e9 if span.startTimeUnixNano else None
    except ValueError:  # a string field: digits expected
        raise BadRecord("schema", f"startTimeUnixNano: {span.startTimeUnixNano!r:.60}") from None

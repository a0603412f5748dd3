"""One record's bytes -> the ``(WireRecord, shape)`` list the join is fed, for every input shape.

The pipeline calls :func:`decode_records` for each Kafka record (or file line). Most records
hold one wire record (``daemon/wire.py``); an OTLP trace batch holds many spans
(``daemon/otel.py``). The shape is detected from the first bytes, so the common case costs
one decode, which leaves an OpenAI exchange's request messages as bytes for the join:

- ``[`` or ``{"resourceSpans"``: OTLP JSON; a leading ``0x0a`` that is not JSON: OTLP protobuf;
- otherwise one JSON wire record, classified by :func:`wire.classify`, with Anthropic Messages
  API exchanges (``daemon/anthropic.py``) rewritten into the OpenAI form, shape
  ``anthropic_exchange``.
"""

from __future__ import annotations

import msgspec

from nextstate.daemon import anthropic, otel, wire
from nextstate.daemon.wire import BadRecord, WireRecord

EXCHANGE_SHAPES = frozenset({"openai_exchange", anthropic.SHAPE, otel.EXCHANGE_SHAPE})
"""Shapes the join treats as a request/response exchange."""


def decode_records(value: bytes, key: bytes | None) -> list[tuple[WireRecord, str]]:
    """Decode one record into ``(record, shape)`` pairs (empty: nothing usable in a batch).

    An OpenAI exchange keeps its request messages undecoded (``msgspec.Raw``, see
    :func:`wire.decode_lazy`): the join decodes those it has not seen. Every other shape is
    returned fully decoded.

    Args:
        value: the record's bytes.
        key: the Kafka key: the session id of a record that names none.

    Raises:
        BadRecord: the record fits no shape (its reason goes to the dead letters).
    """
    if value[:1] == b"{":  # the usual case: the same test as looks_like_otlp_json, cheaper
        otlp = b'"resourceSpans"' in value[:64]
    else:
        otlp = otel.looks_like_otlp_json(value) or otel.looks_like_otlp_proto(value)
    if otlp:
        return otel.decode_batch(value)
    record = wire.decode_lazy(value)
    if record.session_id is None and key:
        record = msgspec.structs.replace(record, session_id=key.decode("utf-8", "replace"))
    try:
        shape = wire.classify(record)
    except BadRecord:
        wire.typed(record)  # a malformed message is the reason, as a full decode reports it
        raise
    if shape != "openai_exchange":
        return [(wire.typed(record), shape)]
    if anthropic.is_anthropic(record):
        return [(anthropic.to_openai(wire.typed(record)), anthropic.SHAPE)]
    return [(record, shape)]

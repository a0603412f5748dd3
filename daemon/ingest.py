"""One record's bytes -> the ``(WireRecord, shape)`` list the join is fed, for every input shape.

The pipeline calls :func:`decode_records` for each Kafka record (or file line). Most records
hold one wire record (``daemon/wire.py``); an OTLP trace batch holds many spans
(``daemon/otel.py``). The shape is detected from the first bytes, so the common case costs
one typed decode:

- ``[`` or ``{"resourceSpans"``: OTLP JSON; a leading ``0x0a`` that is not JSON: OTLP protobuf;
- otherwise one JSON wire record, classified by :func:`wire.classify`, with Anthropic Messages
  API exchanges (``daemon/anthropic.py``) rewritten into the OpenAI form, shape
  ``anthropic_exchange``.
"""

from __future__ import annotations

import msgspec

from nextstate.daemon import anthropic, otel, wire
from nextstate.daemon.wire import WireRecord

EXCHANGE_SHAPES = frozenset({"openai_exchange", anthropic.SHAPE, otel.EXCHANGE_SHAPE})
"""Shapes the join treats as a request/response exchange."""


def decode_records(value: bytes, key: bytes | None) -> list[tuple[WireRecord, str]]:
    """Decode one record into ``(record, shape)`` pairs (empty: nothing usable in a batch).

    Args:
        value: the record's bytes.
        key: the Kafka key: the session id of a record that names none.

    Raises:
        BadRecord: the record fits no shape (its reason goes to the dead letters).
    """
    if otel.looks_like_otlp_json(value) or otel.looks_like_otlp_proto(value):
        return otel.decode_batch(value)
    record = wire.decode(value)
    if record.session_id is None and key:
        record = msgspec.structs.replace(record, session_id=key.decode("utf-8", "replace"))
    shape = wire.classify(record)
    if shape == "openai_exchange" and anthropic.is_anthropic(record):
        return [(anthropic.to_openai(record), anthropic.SHAPE)]
    return [(record, shape)]

"""One record's bytes -> the ``(WireRecord, shape)`` list the join is fed, for every input shape.

The pipeline calls :func:`decode_records` for each Kafka record (or file line). Most records
hold one wire record (``daemon/wire.py``); an OTLP trace batch holds many spans
(``daemon/otel.py``). The shape is detected from the first bytes, so the common case costs
one decode, which leaves an OpenAI exchange's request messages as bytes for the join:

- ``[`` or ``{"resourceSpans"``: OTLP JSON; a leading ``0x0a`` that is not JSON: OTLP protobuf;
- otherwise one JSON wire record, classified by :func:`wire.classify`, with Anthropic Messages
  API exchanges (``daemon/anthropic.py``) rewritten into the OpenAI form, shape
  ``anthropic_exchange``.

A call log repeats the session's whole history in every request, so most of a record's bytes
are the request array the session's previous record already held. With the bytes of that
array (a :class:`KnownRequests` source: the join keeps them), :func:`decode_records` cuts
them out before decoding, so the JSON decoder scans only the new messages, then puts the
array in the record as a :class:`wire.SplicedArray`: where its bytes lie, and the messages
after the known ones, decoded for the join (:func:`_decode_spliced` proves where they were
cut).
"""

from __future__ import annotations

import re
from typing import Protocol

import msgspec

from nextstate.daemon import anthropic, otel, wire
from nextstate.daemon.wire import BadRecord, SplicedArray, WireRecord

EXCHANGE_SHAPES = frozenset({"openai_exchange", anthropic.SHAPE, otel.EXCHANGE_SHAPE})
"""Shapes the join treats as a request/response exchange."""


class KnownRequests(Protocol):
    """Where :func:`decode_records` finds the bytes a session's next request likely repeats."""

    def known_request(self, session_id: str) -> bytes | None:
        """The session's latest request message array, without its closing bracket and the
        whitespace before it, if held: ``[`` and one or more JSON values, separated by
        commas, as a JSON decoder accepted them (else ``None``)."""


# Spliced in place of the known messages: a JSON string (no quote, backslash, bracket, comma
# or whitespace in it, so it cannot be formed across the splice) that the record must not
# hold, then the comma that followed them.
_NONCE = b"@~^|~^|~^|~^|~^|~^|~^|~^|~"
_MARK = b'["' + _NONCE + b'",'
# Below this, cutting the known bytes out saves no CPU time: the splice's own steps cost
# what the decoder's scan of the bytes would (with the messages after them decoded here, for
# the join: 85.4k instructions a benchmark record at 1 KB, 86.2k at 2 B or 2 KB, 91.7k at
# 4 KB; the best CPU time at 1 KB too). At least 2: ``[`` and a value.
_MIN_SPLICE = 1024
# The session id near the start (a guess: one search, not three finds; a wrong one only
# costs speed).
_find_session_id = re.compile(rb'"session_id"\s*:\s*(?:"([^"]{0,1024})"|(-?[0-9]{1,64}))').search
_LAZY_DECODE = wire.LAZY_DECODER.decode
_MESSAGES_DECODE = wire.MESSAGES_DECODER.decode
_force_setattr = msgspec.structs.force_setattr
# Globals, not attributes: compiled, ``m.x`` (or ``_MARK.join``) is a lookup on every record.
_RAW = msgspec.Raw
_is_anthropic = anthropic.is_anthropic
_splice = _MARK.join


def decode_records(value: bytes, key: bytes | None, known: KnownRequests | None = None
                   ) -> list[tuple[WireRecord, str]]:
    """Decode one record into ``(record, shape)`` pairs: a plain list of one, or for an OTLP
    batch an :class:`otel.SpanBatch` (its usable spans, maybe none, and in ``rejected`` the
    spans that fit no record, each ready for the dead letters on its own).

    An OpenAI exchange keeps its request messages undecoded (``msgspec.Raw``, or a
    :class:`wire.SplicedArray` when the known ones were cut out before decoding, its
    messages after them decoded; the same bytes either way, see :func:`wire.decode_lazy`):
    the join decodes those it has not seen. Every other shape is returned fully decoded.

    Args:
        value: the record's bytes.
        key: the Kafka key: the session id of a record that names none.
        known: the request bytes held per session, as :meth:`KnownRequests.known_request`
            describes them (the pipeline passes its joiner; ``None``: nothing is cut out);
            whether they are this session's, or still current, only changes the speed.

    Raises:
        BadRecord: the record fits no shape (its reason goes to the dead letters).
    """
    if value[:1] == b"{":  # the usual case: the same test as looks_like_otlp_json, cheaper
        # find, not `in`: bytes.__contains__ first tries its operand as an int, and the
        # TypeError it raises and clears costs more than the search.
        otlp = value.find(b'"resourceSpans"', 0, 64) >= 0
    else:
        otlp = otel.looks_like_otlp_json(value) or otel.looks_like_otlp_proto(value)
    if otlp:
        try:
            return otel.decode_batch(value)
        except BadRecord as error:
            return otel.decode_batch(_repaired(value, error))
    record = None
    # A record shorter than the least known bytes worth cutting out cannot hold them.
    if known is not None and type(value) is bytes and len(value) > _MIN_SPLICE:
        record = _decode_spliced(value, key, known)
    if record is None:
        try:
            record = wire.decode_lazy(value)
        except BadRecord as error:
            record = wire.decode_lazy(_repaired(value, error))
    session_id = record.session_id  # (read once: compiled, each read is a generic lookup)
    if session_id is None and key:
        session_id = key.decode("utf-8", "replace")
        record = msgspec.structs.replace(record, session_id=session_id)
    elif type(session_id) is int:  # a numeric id: the same session as its string
        session_id = str(session_id)
        record = msgspec.structs.replace(record, session_id=session_id)
    if record.type is None and record.request is not None and record.response is not None \
            and session_id:
        shape = "openai_exchange"  # what wire.classify says of it, without the call
    else:
        try:
            shape = wire.classify(record)
        except BadRecord:
            wire.typed(record)  # a malformed message is the reason, as a full decode gives
            raise
    if shape != "openai_exchange":
        return [(wire.typed(record), shape)]
    if _is_anthropic(record):
        return [(anthropic.to_openai(wire.typed(record)), anthropic.SHAPE)]
    return [(record, shape)]


def _repaired(value: bytes, error: BadRecord) -> bytes:
    """A record that did not decode, with its lone surrogate escapes read as U+FFFD (see
    :func:`wire.without_lone_surrogates`); ``error`` again when it holds none."""
    repaired = wire.without_lone_surrogates(value) if error.reason == "decode" and \
        type(value) is bytes else None
    if repaired is None:
        raise error
    return repaired


def _decode_spliced(value: bytes, key: bytes | None, known: KnownRequests
                    ) -> WireRecord[SplicedArray] | None:
    """:func:`wire.decode_lazy` of a record whose request repeats the known bytes of its
    session, without scanning them; ``None`` when it does not (or it cannot be proved).

    The known bytes ``K`` (``[`` and ``k >= 1`` values) are found where the request's array
    seems to start, followed by a comma: ``value = A + K + ws + "," + T``. They are replaced
    by ``MARK = ["NONCE",`` and ``A + MARK + T`` is decoded. When ``NONCE`` occurs once in
    those bytes (so neither in ``A`` nor in ``T``: no occurrence can straddle the splice, it
    holds no quote or bracket) and the decoded request array starts with ``MARK``, the array
    starts where ``K`` did. The decoder was then in the same state there as it would have
    been in ``value``, where ``K + ws + ","`` opens that same array (values a decoder
    accepted before, then a comma), so every other field decodes the same, and the array's
    bytes in ``value`` are ``K + ws + ","`` and ``T`` up to the array's end. The messages
    after ``K`` are decoded from the array's bytes after ``MARK`` (a type error among them:
    ``None``, and the full decode reports it). Which session ``K`` came from only matters
    for speed: the session id is the Kafka key or read from the bytes by a guess.
    """
    if key:
        session_id = key.decode("utf-8", "replace")
    else:
        found = _find_session_id(value, 0, 2048)
        if found is None:
            return None
        text, number = found.groups()
        session_id = (number if text is None else text).decode("utf-8", "replace")
    prefix = known.known_request(session_id)
    if prefix is None or len(prefix) < _MIN_SPLICE:
        return None
    at = value.find(b'"messages"')
    start = value.find(b"[", at + 10) if at >= 0 else -1
    if start < 0 or not value.startswith(prefix, start):
        return None
    comma = start + len(prefix)
    if value[comma:comma + 1] != b",":  # json.dumps puts none, an indenting writer may
        comma = len(value) - len(value[comma:].lstrip())
        if value[comma:comma + 1] != b",":
            return None
    spliced = _splice((value[:start], value[comma + 1:]))
    if spliced.count(_NONCE) != 1:
        return None
    try:
        record = _LAZY_DECODE(spliced)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return None  # decoded again whole: its own error is the one reported
    request = record.request
    if request is None or type(request.messages) is not _RAW:
        return None
    tail = bytes(request.messages)
    if not tail.startswith(_MARK):
        return None
    try:  # the messages after the known ones, as the join will read them
        messages = _MESSAGES_DECODE(b"[" + tail[len(_MARK):])
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return None  # decoded again whole: its own error is the one reported
    # The request was made by this decode and nobody else holds it yet.
    _force_setattr(request, "messages", SplicedArray(
        value, start, comma + 1 + len(tail) - len(_MARK), prefix, messages))
    return record

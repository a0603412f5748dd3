"""An output Kafka topic of scored tuples, for a training job that runs somewhere else.

Every tuple the pipeline stores is also sent here as msgspec JSON (a :class:`ScoredTuple`),
keyed ``"<interaction_id>|<extractor>|<kind>"`` (its dedup key). The pipeline flushes the
sink in ``checkpoint()`` *before* it returns offsets to commit, so a committed input offset
never runs ahead of the tuples produced from it.

Delivery: at least once, with a dedup key. The producer is idempotent
(``enable_idempotence=True``, ``acks="all"``: kafka-python 3 supports it), so its own retries
add no copies; a crash between a produce and the next checkpoint re-processes those input
records after the restart (or on the partition's new owner in a consumer group) and sends
their tuples again under the same keys. A consumer that keeps the last tuple per key (or a
compacted topic) sees every tuple exactly once; :func:`dedup_key` is the key to use.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

import msgspec
import structlog

from nextstate.daemon.producers import FLUSH_TIMEOUT_S, flush_then_close, flush_within
from nextstate.extractors.types import ScoredTuple

log = structlog.get_logger("nextstate.tuple_topic")


def dedup_key(t: ScoredTuple) -> bytes:
    """The tuple's Kafka key: ``interaction_id|extractor|kind``."""
    return f"{t.interaction_id}|{t.extractor}|{t.kind}".encode()


class TupleSink(Protocol):
    """Where stored tuples are also sent (the pipeline's optional second output)."""

    def send(self, tuples: Iterable[ScoredTuple]) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


class TupleTopicSink:
    """Sends tuples to a Kafka topic; ``flush()`` returns once the broker acknowledged all.

    Args:
        producer: a ``kafka.KafkaProducer`` (see :func:`tuple_topic_sink` for the settings).
        topic: the output topic.
        flush_timeout_s: how long a flush waits for the broker; tuples not acknowledged by
            then make it raise, and are waited for again (not sent again) by the next one.

    Raises (from ``flush``):
        kafka.errors.KafkaError: a send failed: the checkpoint must not go on (its offsets
            would cover tuples that were never written).
    """

    __slots__ = ("_encoder", "_failing", "_futures", "_kafka_error", "_timed_out",
                 "_too_large", "flush_timeout_s", "producer", "sent", "too_large", "topic")

    def __init__(self, producer: Any, topic: str,
                 flush_timeout_s: float = FLUSH_TIMEOUT_S) -> None:
        self.producer = producer
        self.topic = topic
        self.flush_timeout_s = flush_timeout_s
        self._encoder = msgspec.json.Encoder()
        self._futures: list[Any] = []
        self.sent = 0
        from kafka.errors import (  # (imported without Kafka too)
            KafkaError,
            KafkaTimeoutError,
            MessageSizeTooLargeError,
            RecordListTooLargeError,
        )

        self._kafka_error, self._timed_out = KafkaError, KafkaTimeoutError
        self._too_large = (MessageSizeTooLargeError, RecordListTooLargeError)
        self.too_large = 0  # tuples larger than the producer or the broker take: not sent
        self._failing: Exception | None = None  # no metadata since the last flush

    def send(self, tuples: Iterable[ScoredTuple]) -> None:
        for t in tuples:
            self._send(dedup_key(t), self._encoder.encode(t))

    def _send(self, key: bytes, value: bytes) -> None:
        if self._failing is not None:  # no metadata: don't wait max_block_ms for each tuple
            self._futures.append((key, value, _Failed(self._failing)))
            return
        try:
            future = self.producer.send(self.topic, key=key, value=value)
        except self._kafka_error as exc:
            # Raised at once (larger than max_request_size, no metadata within max_block_ms):
            # the flush raises it like a failed send (and sends it again), the tuples after it
            # go on. Before, it left the sink, and the batch's later tuples were never sent.
            if isinstance(exc, self._timed_out):
                self._failing = exc
            future = _Failed(exc)
        self._futures.append((key, value, future))

    def flush(self) -> None:
        """Wait for every send (at most ``flush_timeout_s``); a failed one is sent again and
        its error raised, so this checkpoint stops and the next one only passes once the retry
        was acknowledged. Sends still unanswered raise too, and are waited for again."""
        flush_within(self.producer, self.flush_timeout_s)
        futures, self._futures = self._futures, []
        self._failing = None
        error: Exception | None = None
        for key, value, future in futures:
            if not future.is_done:  # still in the producer (the broker away): not sent twice
                self._futures.append((key, value, future))
                continue
            try:
                future.get(timeout=0)  # raises the send's error, if it failed
                self.sent += 1
            except self._too_large as exc:
                # It will never fit: resending it stopped every checkpoint (and commit) for
                # good. It is in the durable buffers; the topic goes without it.
                self.too_large += 1
                log.warning("tuple_topic_too_large", key=key.decode(errors="replace")[:200],
                            bytes=len(value), error=str(exc)[:200], count=self.too_large)
            except Exception as exc:  # re-raised below, once the retries are queued
                error = error or exc
                self._send(key, value)
        if error is None and self._futures:
            error = self._timed_out(f"{len(self._futures)} tuple(s) not acknowledged within "
                                      f"{self.flush_timeout_s} s (the broker away?)")
        if error is not None:
            raise error

    def close(self) -> None:
        """Flush, then close the producer (at once if the flush raised: nothing past the
        tuples it could not write was committed)."""
        flush_then_close(self.flush, self.producer, self.flush_timeout_s)


class _Failed:
    """A send that raised at once, as a failed send future."""

    __slots__ = ("error",)
    is_done = True

    def __init__(self, error: Exception) -> None:
        self.error = error

    def get(self, timeout: float | None = None) -> None:
        raise self.error.with_traceback(None)  # (shared: a traceback per raise would pile up)


def tuple_topic_sink(bootstrap_servers: list[str], topic: str, client_id: str = "nextstate",
                     flush_timeout_s: float = FLUSH_TIMEOUT_S, **security: Any
                     ) -> TupleTopicSink:
    """A :class:`TupleTopicSink` on an idempotent, ``acks="all"`` producer whose sends wait
    for metadata no longer than its flushes wait for acknowledgements."""
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap_servers, acks="all",
                             enable_idempotence=True, linger_ms=20,
                             max_block_ms=int(flush_timeout_s * 1000),
                             client_id=f"{client_id}-tuples", **security)
    return TupleTopicSink(producer, topic, flush_timeout_s)


def decode_tuple(value: bytes) -> ScoredTuple:
    """A tuple read back from the output topic (for the training job's consumer)."""
    return msgspec.json.decode(value, type=ScoredTuple)

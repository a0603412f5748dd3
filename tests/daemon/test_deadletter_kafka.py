"""The Kafka dead-letter sink loses no dead letter: one too big for the producer is sent cut to
its head (with its size and sha256 in headers), and one the producer could not write makes
``flush()`` raise, so the checkpoint that would commit past it stops (against Tansu). The tuple
topic's sink lets no send that raised at once go either."""

from __future__ import annotations

import gc
import hashlib
import logging
import threading
import uuid
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from kafka import KafkaConsumer, KafkaProducer
from kafka.errors import KafkaError, KafkaTimeoutError, MessageSizeTooLargeError
from kafka.future import Future
from kafka.structs import TopicPartition

from nextstate.daemon import sources
from nextstate.daemon.deadletter import TRUNCATED_HEAD_BYTES, DeadLetterError, KafkaDeadLetters
from nextstate.daemon.pipeline import Pipeline
from nextstate.daemon.service import Health, Progress
from nextstate.daemon.tuple_topic import TupleTopicSink, tuple_topic_sink
from nextstate.extractors.types import ScoredTuple
from tests.daemon.test_kafka import Daemon, _metric, kafka_config
from tests.daemon.test_pipeline import stored, weather_session
from tests.kafka_broker import wait_for
from tests.records import line
from tests.tcp_proxy import tansu_behind_proxy

BIG = 3 << 20  # 3 MB: three times kafka-python's default max_request_size (1 MB)


def read_topic(bootstrap: str, topic: str) -> list[Any]:
    """Every record of the topic: read until each partition's position reaches the high
    watermark its fetches report (an idle timeout would guess how slow the broker may be)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                             auto_offset_reset="earliest")
    records: list[Any] = []

    def caught_up(partitions: list[TopicPartition]) -> bool:
        for batch in consumer.poll(timeout_ms=200).values():
            records.extend(batch)
        return all(consumer.highwater(tp) is not None
                   and consumer.position(tp) >= consumer.highwater(tp) for tp in partitions)

    try:
        assert wait_for(lambda: consumer.partitions_for_topic(topic), 30), f"no {topic}"
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        consumer.assign(partitions)
        assert wait_for(lambda: caught_up(partitions), 60, interval_s=0), f"{topic} not read"
        return records
    finally:
        consumer.close()


def new_topic(broker, name: str, partitions: int = 1) -> str:
    topic = f"{name}-{uuid.uuid4().hex[:8]}"
    broker.create_topic(topic, partitions)
    return topic


@pytest.mark.kafka
def test_oversized_dead_letter_is_cut_to_its_head_and_small_one_is_untouched(broker):
    topic = new_topic(broker, "dlq")
    dead_letters = KafkaDeadLetters(KafkaProducer(bootstrap_servers=broker.bootstrap,
                                                  acks="all"), topic)
    small = b'{"session_id": "s1", "request": [1, 2'
    big = b'{"session_id": "s2", "pad": "' + bytes(range(256)) * (BIG // 256) + b'"}'
    dead_letters.send(small, b"s1", "schema", "unterminated list", "in", 0, 7)
    dead_letters.send(big, b"s2", "too_large", f"{len(big)} bytes", "in", 1, 8)
    dead_letters.flush()
    dead_letters.close()
    assert (dead_letters.count, dead_letters.truncated) == (2, 1)

    first, second = sorted(read_topic(broker.bootstrap, topic),
                           key=lambda r: dict(r.headers)["nextstate.origin"])
    assert first.value == small and first.key == b"s1"  # byte for byte, no extra headers
    assert dict(first.headers) == {"nextstate.reason": b"schema",
                                   "nextstate.error": b"unterminated list",
                                   "nextstate.origin": b"in/0/7"}
    headers = dict(second.headers)
    assert second.value == big[:TRUNCATED_HEAD_BYTES] and second.key == b"s2"
    assert headers["nextstate.truncated"] == b"true"
    assert headers["nextstate.original_bytes"] == str(len(big)).encode()
    assert headers["nextstate.sha256"] == hashlib.sha256(big).hexdigest().encode()
    assert headers["nextstate.reason"] == b"too_large"
    assert headers["nextstate.origin"] == b"in/1/8"


@pytest.mark.kafka
@pytest.mark.filterwarnings("ignore::ResourceWarning")  # kafka-python's refused connects
def test_dead_letter_the_producer_could_not_write_fails_flush_until_written(caplog, tmp_path):
    """The daemon's own DLQ producer (idempotent, kafka-python's delivery timeout of 120 s)
    while the broker is cut off: each flush waits for the letters no longer than its bound and
    raises, the letters stay in the producer, and once the broker is back a flush passes with
    each letter written once. Before, the flush waited out the delivery timeout, or the whole
    outage. (This test once failed on a loaded machine: it counted on 1 s delivery timeouts
    and 30 tries after the broker was back, and read the topic with a 3 s idle timeout.)"""
    # kafka-python logs each refused connect; a captured record would keep its socket alive.
    caplog.set_level(logging.CRITICAL, logger="kafka")
    with tansu_behind_proxy() as (broker, proxy):
        config = kafka_config(broker, tmp_path, new_topic(broker, "dlq-outage"), "g-outage")
        broker.create_topic(config.kafka.dlq, 1)
        dead_letters = sources.kafka_dead_letters(config)
        try:
            errors = outage(dead_letters, proxy)
        finally:
            dead_letters.close()
        values = sorted(r.value for r in read_topic(broker.bootstrap, config.kafka.dlq))
    gc.collect()  # the sockets kafka-python left of its refused connects: here, not later
    first, second = errors
    assert isinstance(first, KafkaError)  # the Kafka loop's retry path takes it
    assert first.failed == 2 and "2 dead letter(s)" in str(first)
    assert isinstance(first.error, KafkaTimeoutError) and second.failed == 2
    assert values == [b"first", b"second", b"third"]


def flushed(sink: Any) -> bool:
    """Whether a flush of the sink passes now (one that raises keeps what it could not
    write, for the next)."""
    try:
        sink.flush()
    except KafkaError:
        return False
    return True


def outage(dead_letters: KafkaDeadLetters, proxy) -> list[Exception]:
    """Two dead letters sent while the broker is cut off; the errors of the two flushes that
    fail then, before it is back and one passes."""
    dead_letters.send(b"first", None, "schema", "e1", "in", 0, 1)
    # Written (a flush waits a bounded time; a loaded machine may need more than one): the
    # producer has the topic's metadata from here on.
    assert wait_for(lambda: flushed(dead_letters), 60)
    proxy.cut()
    dead_letters.send(b"second", None, "schema", "e2", "in", 0, 2)
    dead_letters.send(b"third", None, "schema", "e3", "in", 0, 3)
    errors: list[Exception] = []
    for _ in range(2):  # still in the producer: waited for again, not sent twice
        with pytest.raises(DeadLetterError) as raised:
            dead_letters.flush()
        errors.append(raised.value.with_traceback(None))
    proxy.restore()
    assert wait_for(lambda: flushed(dead_letters), 120), "not written once the broker was back"
    return errors


@pytest.mark.kafka
@pytest.mark.filterwarnings("ignore::ResourceWarning")  # kafka-python's refused connects
def test_tuple_topic_flush_during_an_outage_raises_and_sends_nothing_twice(caplog):
    """The tuple topic's idempotent producer while the broker is cut off: a flush waits no
    longer than its bound and raises; once the broker is back the tuples are written, each
    once (the unanswered sends were waited for again, not sent again)."""
    caplog.set_level(logging.CRITICAL, logger="kafka")
    with tansu_behind_proxy() as (broker, proxy):
        topic = new_topic(broker, "tuples-outage")
        sink = tuple_topic_sink([broker.bootstrap], topic, flush_timeout_s=1.0)
        try:
            sink.send([scored(0)])
            assert wait_for(lambda: flushed(sink), 60)  # the producer has the metadata
            proxy.cut()
            sink.send([scored(1), scored(2)])
            for _ in range(2):
                with pytest.raises(KafkaTimeoutError, match="2 tuple"):
                    sink.flush()
            proxy.restore()
            assert wait_for(lambda: flushed(sink), 120), "not written once the broker was back"
        finally:
            sink.close()
        keys = sorted(r.key for r in read_topic(broker.bootstrap, topic))
    gc.collect()
    assert keys == [f"i{n}|tool|evaluative".encode() for n in range(3)]
    assert sink.sent == 3


class FakeProducer:
    """Stands in for a KafkaProducer: each send's future fails with ``fail(value)`` (None:
    it succeeds) or ``send`` raises it when ``raising``."""

    def __init__(self, fail=lambda value: None, raising: bool = False) -> None:
        self.fail, self.raising = fail, raising
        self.config = {"max_request_size": 1 << 20}
        self.written: list[tuple[bytes, bytes | None, dict[str, bytes]]] = []
        self.closed = False

    def send(self, topic: str, value: bytes, key: bytes | None, headers: list) -> Future:
        error = self.fail(value)
        if error is not None and self.raising:
            raise error
        if error is not None:
            return Future().failure(error)
        self.written.append((value, key, dict(headers)))
        return Future().success(None)

    def flush(self, timeout: float | None = None) -> None:
        pass

    def close(self, timeout: float | None = None) -> None:
        self.closed = True


def test_dead_letter_the_broker_finds_too_large_is_sent_again_cut():
    """The broker's limit is under the producer's (a topic's max.message.bytes): the letter the
    broker refused is cut to its head and written by the same flush."""
    value = b"v" * 500_000
    producer = FakeProducer(lambda v: MessageSizeTooLargeError() if len(v) > 100_000 else None)
    dead_letters = KafkaDeadLetters(producer, "in.dlq")
    dead_letters.send(value, b"k", "schema", "bad", "in", 0, 1)
    dead_letters.flush()
    ((written, key, headers),) = producer.written
    assert written == value[:TRUNCATED_HEAD_BYTES] and key == b"k"
    assert headers["nextstate.original_bytes"] == b"500000"
    assert headers["nextstate.sha256"] == hashlib.sha256(value).hexdigest().encode()


def test_send_that_raises_does_not_stop_the_pipeline_but_fails_flush():
    """A send that raises at once (no topic metadata before max_block_ms) is kept: send()
    returns (the record's batch goes on), flush() raises, and a later flush writes it."""
    producer = FakeProducer(lambda v: KafkaTimeoutError("no metadata"), raising=True)
    dead_letters = KafkaDeadLetters(producer, "in.dlq")
    dead_letters.send(b"one", None, "schema", "bad", "in", 0, 1)
    dead_letters.send(b"two", None, "schema", "bad", "in", 0, 2)
    with pytest.raises(DeadLetterError, match="2 dead letter"):
        dead_letters.flush()
    producer.fail = lambda v: None
    dead_letters.close()
    assert [v for v, _, _ in producer.written] == [b"one", b"two"] and producer.closed


def test_close_closes_the_producer_even_when_letters_are_lost():
    producer = FakeProducer(lambda v: KafkaTimeoutError("gone"))
    dead_letters = KafkaDeadLetters(producer, "in.dlq")
    dead_letters.send(b"one", None, "schema", "bad", "in", 0, 1)
    with pytest.raises(DeadLetterError):
        dead_letters.close()
    assert producer.closed


def test_huge_key_is_cut_too():
    key = b"k" * (2 << 20)
    producer = FakeProducer()
    dead_letters = KafkaDeadLetters(producer, "in.dlq")
    dead_letters.send(b"value", key, "schema", "bad", "in", 0, 1)
    dead_letters.flush()
    ((value, written_key, headers),) = producer.written
    assert value == b"value" and written_key == key[:TRUNCATED_HEAD_BYTES]
    assert headers["nextstate.key_original_bytes"] == str(len(key)).encode()
    assert headers["nextstate.truncated"] == b"true"


# -- the daemon ----------------------------------------------------------------------------------
def session_records(count: int) -> tuple[list[tuple[bytes, bytes]], list[tuple[bytes, bytes]]]:
    """Each session's first two exchanges (the first closes one interaction), as two halves."""
    sessions = {f"s{n}": weather_session(f"s{n}", '{"temp_c": 21}') for n in range(count)}
    first = [(sid.encode(), line(records[0])) for sid, records in sessions.items()]
    second = [(sid.encode(), line(records[1])) for sid, records in sessions.items()]
    return first, second


def produce_in_order(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all",
                             max_request_size=8 << 20)  # the input may hold big records
    try:
        for key, value in records:
            producer.send(topic, key=key, value=value, partition=0)
        producer.flush()
    finally:
        producer.close()


@pytest.mark.kafka
def test_daemon_dead_letters_oversized_records_and_processes_the_rest(broker, tmp_path):
    """One record over ``join.max_record_bytes`` (3 MB) and one undecodable 1.5 MB record among
    good ones: both are in the DLQ topic (cut, with their size and hash), every good one is
    processed, and the offsets are committed."""
    topic = new_topic(broker, "big-bad")
    broker.create_topic(f"{topic}.dlq", 1)
    first, second = session_records(6)
    too_large = b'{"session_id": "s0", "pad": "' + b"x" * BIG + b'"}'
    undecodable = b'{"session_id": "s1", "request": [' + b"1, " * (500 << 10)
    records = [*first, (b"s0", too_large), *second[:3], (b"s1", undecodable), *second[3:]]
    produce_in_order(broker.bootstrap, topic, records)
    config = kafka_config(broker, tmp_path, topic, "g-big")
    config.join.max_record_bytes = 2 << 20
    with Daemon(config) as daemon:
        assert wait_for(lambda: _metric(daemon, "nextstate_interactions_total") == 6, 60)
        assert wait_for(lambda: broker.committed(topic, "g-big", 1)[0] is not None, 30)
    assert daemon.result == [0]
    dead = {dict(r.headers)["nextstate.origin"]: r
            for r in read_topic(broker.bootstrap, f"{topic}.dlq")}
    at = {value: f"{topic}/0/{offset}".encode() for offset, (_, value) in enumerate(records)}
    assert sorted(dead) == sorted([at[too_large], at[undecodable]])
    assert dict(dead[at[too_large]].headers)["nextstate.reason"] == b"too_large"
    for original in (too_large, undecodable):
        letter = dead[at[original]]
        headers = dict(letter.headers)
        assert letter.value == original[:TRUNCATED_HEAD_BYTES] and letter.key is not None
        assert headers["nextstate.truncated"] == b"true"
        assert headers["nextstate.original_bytes"] == str(len(original)).encode()
        assert headers["nextstate.sha256"] == hashlib.sha256(original).hexdigest().encode()


class FailingUntil:
    """A real producer that fails every send (the future, as after the producer's retries)
    until ``recover`` is set; counts the failures."""

    def __init__(self, producer: KafkaProducer) -> None:
        self.producer = producer
        self.config = producer.config
        self.recover = threading.Event()
        self.failures = 0

    def send(self, topic: str, **kwargs: Any) -> Any:
        if not self.recover.is_set():
            self.failures += 1
            return Future().failure(KafkaTimeoutError("expired after the producer's retries"))
        return self.producer.send(topic, **kwargs)

    def flush(self, timeout: float | None = None) -> None:
        self.producer.flush(timeout=timeout)

    def close(self, timeout: float | None = None) -> None:
        self.producer.close(timeout=timeout)


def poison_first_with_a_failing_dlq(broker, monkeypatch, name: str, failing_runs: int = 99
                                    ) -> tuple[str, tuple[bytes, bytes], list[FailingUntil]]:
    """A topic with a poison record, then 3 sessions; each daemon run's DLQ producer a
    :class:`FailingUntil` (the first ``failing_runs`` of them failing until told otherwise)."""
    topic = new_topic(broker, name)
    broker.create_topic(f"{topic}.dlq", 1)
    first, second = session_records(3)
    poison = (b"s0", b'{"session_id": "s0", "request": [1, 2')
    produce_in_order(broker.bootstrap, topic, [poison, *first, *second])
    failing: list[FailingUntil] = []

    def dead_letters(config):
        failing.append(FailingUntil(KafkaProducer(bootstrap_servers=broker.bootstrap,
                                                  acks="all")))
        if len(failing) > failing_runs:
            failing[-1].recover.set()
        return KafkaDeadLetters(failing[-1], config.kafka.dlq)

    monkeypatch.setattr(sources, "kafka_dead_letters", dead_letters)
    return topic, poison, failing


@pytest.mark.kafka
def test_daemon_commits_nothing_past_a_dead_letter_not_written(broker, tmp_path, monkeypatch):
    """A poison record first, good sessions after it, and a DLQ producer that fails: every
    checkpoint stops at the dead-letter flush, so no offset is committed (past the poison
    record); once the producer works the letter is written and the offsets are committed,
    without a restart."""
    topic, poison, failing = poison_first_with_a_failing_dlq(broker, monkeypatch, "dlq-down")
    config = kafka_config(broker, tmp_path, topic, "g-down")
    with Daemon(config) as daemon:
        assert wait_for(lambda: _metric(daemon, "nextstate_interactions_total") == 3, 60)
        # Failed once when sent, then again by each checkpoint: two checkpoints stopped.
        assert wait_for(lambda: failing[0].failures >= 3, 30)
        assert broker.committed(topic, "g-down", 1) == {0: None}
        failing[0].recover.set()
        assert wait_for(lambda: broker.committed(topic, "g-down", 1)[0] is not None, 60)
    assert daemon.result == [0]
    (letter,) = read_topic(broker.bootstrap, f"{topic}.dlq")
    assert letter.value == poison[1] and dict(letter.headers)["nextstate.reason"] == b"schema"
    assert Path(config.state_dir, "checkpoint.json").exists()


# -- the tuple topic: a send that raises at once --------------------------------------------------
def scored(n: int, context_bytes: int = 10) -> ScoredTuple:
    return ScoredTuple(interaction_id=f"i{n}", session_id="s", extractor="tool",
                       kind="evaluative", source="tool",
                       context=[{"role": "user", "content": "x" * context_bytes}],
                       action={"role": "assistant", "content": "a"}, reward=1.0, confidence=1.0)


@pytest.mark.kafka
def test_tuple_too_large_for_the_topic_is_left_out_and_the_rest_are_sent(broker):
    """kafka-python raises MessageSizeTooLargeError from send() itself: the sink used to let it
    out, the batch's later tuples unsent. Raising it from every flush instead would stop the
    checkpoints (and commits) for good, as it can never fit: it is left out of the topic,
    counted and logged (it is in the durable buffers), and the tuples after it are sent."""
    topic = new_topic(broker, "tuples")
    sink = tuple_topic_sink([broker.bootstrap], topic)
    try:
        sink.send([scored(0), scored(1, 2 << 20), scored(2)])
        sink.flush()
        sink.flush()
    finally:
        sink.producer.close()
    keys = sorted(r.key for r in read_topic(broker.bootstrap, topic))
    assert keys == [b"i0|tool|evaluative", b"i2|tool|evaluative"]
    assert (sink.sent, sink.too_large) == (2, 1)


class TupleProducer(FakeProducer):
    def send(self, topic: str, value: bytes, key: bytes | None, headers: list | None = None
             ) -> Any:
        self.tries = getattr(self, "tries", 0) + 1
        future = super().send(topic, value, key, headers or [])
        return type("Sent", (), {"is_done": True,
                                 "get": lambda _, timeout=None: future.value})()


def test_tuple_send_without_metadata_fails_the_flush_once_not_per_tuple():
    """No metadata within max_block_ms (send() raises KafkaTimeoutError after blocking): the
    batch's other tuples are not each sent to block as long; the flush raises, and once the
    producer works the sends again are written (the flush after them passes)."""
    producer = TupleProducer(lambda v: KafkaTimeoutError("no metadata"), raising=True)
    sink = TupleTopicSink(producer, "out")
    sink.send([scored(n) for n in range(5)])
    assert producer.tries == 1
    with pytest.raises(KafkaTimeoutError):
        sink.flush()
    producer.fail = lambda v: None
    with pytest.raises(KafkaTimeoutError):  # (sent again: this checkpoint still stops)
        sink.flush()
    sink.flush()
    assert sorted(k for _, k, _ in producer.written) == [
        f"i{n}|tool|evaluative".encode() for n in range(5)]


@pytest.mark.kafka
def test_daemon_stopped_while_its_dead_letters_cannot_be_written(broker, tmp_path, monkeypatch):
    """Stopped while the DLQ producer fails: the last checkpoint cannot write the letter. It
    ended in a traceback (the close raised the same error again); now ``run`` logs
    ``kafka_unavailable_at_stop`` and exits 4, nothing committed, and the next run writes the
    letter and processes every record once."""
    from nextstate.daemon.cli import EXIT_KAFKA_UNAVAILABLE

    topic, poison, failing = poison_first_with_a_failing_dlq(broker, monkeypatch, "dlq-stop",
                                                             failing_runs=1)
    config = kafka_config(broker, tmp_path, topic, "g-stop")
    with Daemon(config) as daemon:
        assert wait_for(lambda: _metric(daemon, "nextstate_interactions_total") == 3, 60)
        assert wait_for(lambda: failing[0].failures >= 2, 30)
    assert daemon.result == [EXIT_KAFKA_UNAVAILABLE]
    assert broker.committed(topic, "g-stop", 1) == {0: None}
    with Daemon(kafka_config(broker, tmp_path, topic, "g-stop")) as daemon:
        assert wait_for(lambda: broker.committed(topic, "g-stop", 1)[0] is not None, 60)
    assert daemon.result == [0]
    (letter,) = read_topic(broker.bootstrap, f"{topic}.dlq")
    assert letter.value == poison[1]


# -- partitions leaving while the dead letters cannot be written ---------------------------------
def failing_runner(broker, tmp_path, topic: str, group: str
                   ) -> tuple[sources.KafkaRunner, FailingUntil]:
    """A KafkaRunner whose DLQ producer fails until told otherwise. Its poll interval is long:
    each failed checkpoint backs the loop off (up to 30 s) without polling."""
    config = kafka_config(broker, tmp_path, topic, group)
    config.kafka.max_poll_interval_ms = 60_000
    failing = FailingUntil(KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all"))
    pipeline = Pipeline(config, dead_letters=KafkaDeadLetters(failing, config.kafka.dlq))
    runner = sources.KafkaRunner(pipeline, config, threading.Event(), Health(),
                                 Progress(pipeline.stats, False))
    return runner, failing


def pending_partitions(runner: sources.KafkaRunner) -> set[tuple[str, int]]:
    with runner.lock:
        return {s.partition for s in runner.pipeline.joiner.sessions.values()}


def owned(runner: sources.KafkaRunner) -> set[tuple[str, int]]:
    return {(tp.topic, tp.partition) for tp in runner.consumer.assignment()}


@pytest.mark.kafka
def test_partitions_revoked_while_dead_letters_cannot_be_written_leave_nothing_behind(
        broker, tmp_path, monkeypatch):
    """A second member joins while the daemon's dead letter cannot be written, so the revoke's
    checkpoint raises. Before, that skipped forgetting the revoked partitions: their pending
    joins stayed with this daemon while another owned them (both would close the same
    actions), and the listener raised again on every poll, holding up the rebalance. Now
    they are dropped whatever the checkpoint did, nothing is committed until the letter is
    written, and then every record is processed once: one dead letter, each interaction
    closed once, no tuple twice."""
    topic = new_topic(broker, "revoke-dlq", partitions=2)
    broker.create_topic(f"{topic}.dlq", 1)
    first, second = session_records(4)
    poison = (b"s0", b'{"session_id": "s0", "request": [1, 2')
    partition_of = {f"s{n}".encode(): n % 2 for n in range(4)}
    broker.produce(topic, [poison, *first], partition_of)
    runner, failing = failing_runner(broker, tmp_path, topic, "g-revoke")
    pipeline = runner.pipeline
    kept: list[set[tuple[str, int]]] = []  # after each revoke: revoked partitions still pending
    revoke = sources._Rebalance.on_partitions_revoked

    def revoked_then_pending(listener, revoked) -> None:
        try:
            revoke(listener, revoked)
        finally:
            if revoked:  # (the first join revokes nothing)
                kept.append(pending_partitions(runner) & {(tp.topic, tp.partition)
                                                          for tp in revoked})

    monkeypatch.setattr(sources._Rebalance, "on_partitions_revoked", revoked_then_pending)
    thread = threading.Thread(target=runner.run)
    thread.start()
    other = None
    try:
        assert wait_for(lambda: sum(pipeline.seen.values()) == 5 and failing.failures >= 2, 60)
        assert pending_partitions(runner) == {(topic, 0), (topic, 1)}
        other = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id="g-revoke",
                              enable_auto_commit=False, session_timeout_ms=6000,
                              heartbeat_interval_ms=1000, max_poll_interval_ms=60_000)
        other.subscribe([topic])
        assert wait_for(lambda: other.poll(100) is not None and bool(kept), 60), "no revoke"
        assert kept[0] == set(), "the revoked partitions' pending joins stayed"
        assert broker.committed(topic, "g-revoke", 2) == {0: None, 1: None}
        failing.recover.set()
        assert wait_for(lambda: other.poll(100) is not None and len(owned(runner)) == 1
                        and len(other.assignment()) == 1, 60), "the group did not rebalance"
        other.close(autocommit=False)
        other = None
        assert wait_for(lambda: len(owned(runner)) == 2, 60)
        broker.produce(topic, second, partition_of)
        assert wait_for(lambda: pipeline.stats.total("interactions") == 4, 60)
        assert wait_for(lambda: None not in broker.committed(topic, "g-revoke", 2).values(), 60)
    finally:
        failing.recover.set()
        if other is not None:
            other.close(autocommit=False)
        runner.stop.set()
        thread.join(60)
        runner.close()
        pipeline.close()
    assert not thread.is_alive() and set().union(*kept) == set()
    # Read again after the rebalances, the records processed before them were replays.
    assert pipeline.stats.total("records") == len(first) + len(second)
    assert pipeline.stats.total("dead_letters") == 1
    (letter,) = read_topic(broker.bootstrap, f"{topic}.dlq")
    assert letter.value == poison[1]
    keys = [t.key for t in stored(tmp_path / "state")]
    assert len({key[0] for key in keys}) == 4 and max(Counter(keys).values()) == 1


def test_partitions_lost_while_dead_letters_cannot_be_written_are_dropped(tmp_path):
    """Evicted from the group while the dead letter cannot be written: the lost partitions'
    pending joins are dropped all the same (before, the raising checkpoint skipped it), the
    listener does not raise, and the letter is kept: the next checkpoint still fails, and
    once the producer works it writes the letter."""
    config = kafka_config(SimpleNamespace(bootstrap="127.0.0.1:9"), tmp_path, "in", "g")
    producer = FakeProducer(lambda v: KafkaTimeoutError("broker away"))
    pipeline = Pipeline(config, dead_letters=KafkaDeadLetters(producer, "in.dlq"))
    runner = sources.KafkaRunner(pipeline, config, threading.Event(), Health(),
                                 Progress(pipeline.stats, False), consumer=object())
    first, _ = session_records(2)
    pipeline.process(b'{"session_id": "s0", "request": [1, 2', b"s0", "in", 0, 0)
    for offset, (key, value) in enumerate(first, start=1):
        pipeline.process(value, key, "in", offset % 2, offset)
    assert pending_partitions(runner) == {("in", 0), ("in", 1)}
    sources._Rebalance(runner).on_partitions_lost([TopicPartition("in", 1)])
    assert pending_partitions(runner) == {("in", 0)}
    with pytest.raises(DeadLetterError):
        pipeline.checkpoint()
    producer.fail = lambda v: None
    pipeline.checkpoint()
    assert [v for v, _, _ in producer.written] == [b'{"session_id": "s0", "request": [1, 2']
    pipeline.close()


# -- stopped during an outage ---------------------------------------------------------------------
def ended_session(sid: str) -> list[tuple[bytes, bytes]]:
    """A whole session, then its end: nothing of it stays pending."""
    records = [*weather_session(sid, '{"temp_c": 21}'), {"type": "session_end",
                                                         "session_id": sid}]
    return [(sid.encode(), line(r)) for r in records]


@pytest.mark.kafka
@pytest.mark.filterwarnings("ignore::ResourceWarning")  # kafka-python's refused connects
def test_daemon_stopped_during_an_outage_with_letters_and_tuples_unwritten(
        caplog, tmp_path, monkeypatch):
    """A dead letter and tuples are sent after the broker is cut off, then the daemon is
    stopped. Before, its checkpoints waited for the producers' delivery timeout (120 s; an
    idempotent producer can wait for the whole outage): it did not stop. Now it exits 4
    (``kafka_unavailable_at_stop``) with nothing committed past the record whose letter was
    not written; after the outage a restart writes that letter and those tuples, each
    once."""
    from nextstate.daemon.cli import EXIT_KAFKA_UNAVAILABLE

    caplog.set_level(logging.CRITICAL, logger="kafka")
    poisons = [(b"p", b'{"session_id": "p", "request": [' + n) for n in (b"1", b"2")]
    before, after = [poisons[0], *ended_session("s0")], [poisons[1], *ended_session("s1")]
    # The second poison record waits, fetched, until the broker is cut off.
    fetched, cut = threading.Event(), threading.Event()
    process = Pipeline.process

    def held(pipeline, value, *args):
        if value == poisons[1][1] and not cut.is_set():
            fetched.set()
            cut.wait(60)
        return process(pipeline, value, *args)

    monkeypatch.setattr(Pipeline, "process", held)
    with tansu_behind_proxy() as (broker, proxy):
        topic, output = new_topic(broker, "stop-outage"), new_topic(broker, "stop-tuples")
        broker.create_topic(f"{topic}.dlq", 1)
        produce_in_order(broker.bootstrap, topic, before)

        def config():
            config = kafka_config(broker, tmp_path, topic, "g-stop-outage")
            config.output_topic = output
            return config

        with Daemon(config()) as daemon:
            # A checkpoint wrote the first letter and tuples: both producers have metadata.
            assert wait_for(lambda: broker.committed(topic, "g-stop-outage", 1)[0]
                            == len(before), 60)
            produce_in_order(broker.bootstrap, topic, after)
            assert fetched.wait(60)
            proxy.cut()
            cut.set()
            assert wait_for(lambda: _metric(daemon, "nextstate_interactions_total") == 6, 60)
        assert daemon.result == [EXIT_KAFKA_UNAVAILABLE]
        proxy.restore()
        assert broker.committed(topic, "g-stop-outage", 1) == {0: len(before)}
        with Daemon(config()) as daemon:
            assert wait_for(lambda: broker.committed(topic, "g-stop-outage", 1)[0]
                            == len(before) + len(after), 60)
        assert daemon.result == [0]
        letters = sorted(r.value for r in read_topic(broker.bootstrap, f"{topic}.dlq"))
        sent = sorted(r.key for r in read_topic(broker.bootstrap, output))
    gc.collect()
    assert letters == sorted(value for _, value in poisons)
    assert sent == sorted("|".join(t.key).encode() for t in stored(tmp_path / "state"))
    assert {key.split(b"#")[0] for key in sent} == {b"s0", b"s1"}

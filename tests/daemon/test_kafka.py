"""Integration tests against a real Kafka-protocol broker (Tansu on loopback)."""

from __future__ import annotations

import json
import threading
import uuid
from pathlib import Path

import pytest
from kafka import KafkaConsumer

from nextstate.daemon.cli import run_daemon
from nextstate.daemon.config import load_config
from tests.daemon.test_pipeline import stored, weather_session
from tests.kafka_broker import daemon_http, metric_total, wait_for
from tests.records import line

pytestmark = pytest.mark.kafka

PARTITIONS = 3


class _Waits(threading.Event):
    """A stop event that notes how long the loop waits on it (its backoffs)."""

    def __init__(self) -> None:
        super().__init__()
        self.timeouts: list[float | None] = []

    def wait(self, timeout: float | None = None) -> bool:
        self.timeouts.append(timeout)
        return super().wait(timeout)


def kafka_config(broker, tmp_path: Path, topic: str, group: str):
    return load_config(
        None, source="kafka", state_dir=str(tmp_path / "state"), extractors=["tool"],
        metrics_port=0, log_format="json", progress="off", commit_interval_s=0.5,
        **{"kafka.bootstrap_servers": [broker.bootstrap], "kafka.topic": topic,
           "kafka.group_id": group, "kafka.session_timeout_ms": 6000,
           "kafka.heartbeat_interval_ms": 1000, "kafka.max_poll_interval_ms": 6000,
           "kafka.poll_timeout_ms": 200})


class Daemon:
    """``run_daemon`` on a thread, stopped like SIGTERM would (the stop event)."""

    def __init__(self, config) -> None:
        self.config = config
        self.stop = threading.Event()
        self.result: list[int] = []
        self.thread = threading.Thread(
            target=lambda: self.result.append(run_daemon(config, self.stop)))

    def __enter__(self) -> Daemon:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(60)
        assert not self.thread.is_alive(), "daemon did not stop"

    def http(self, path: str) -> tuple[int, bytes]:
        return daemon_http(Path(self.config.state_dir), path)


def produce_sessions(broker, topic: str, sessions: dict[str, list[dict]],
                     extra: list[tuple[bytes | None, bytes]] = (),
                     compression_type: str | None = None) -> int:
    records = [(sid.encode(), line(r)) for sid, rs in sessions.items() for r in rs]
    partition_of = {sid.encode(): n % PARTITIONS for n, sid in enumerate(sessions)}
    broker.produce(topic, records + list(extra), partition_of, compression_type)
    return len(records) + len(extra)


def test_consumer_group_end_to_end_with_restart_and_poison_record(broker, tmp_path):
    """Records across 3 partitions become tuples, offsets get committed, a poison record lands
    in the DLQ with its reason, and a restarted daemon processes no record twice."""
    topic, group = f"interactions-{uuid.uuid4().hex[:8]}", "nextstate-test"
    broker.create_topic(topic, PARTITIONS)
    broker.create_topic(f"{topic}.dlq", 1)
    sessions = {f"s{n}": weather_session(f"s{n}", "Error: missing required argument 'day'"
                                         if n % 2 else '{"temp_c": 21}') for n in range(9)}
    poison = (b"s0", b'{"session_id": "s0", "request": [1, 2')
    produce_sessions(broker, topic, {k: v[:2] for k, v in sessions.items()}, [poison])
    config = kafka_config(broker, tmp_path, topic, group)
    with Daemon(config) as daemon:
        assert wait_for(lambda: daemon.http("/readyz")[0] == 200, 60)
        # Two exchanges per session: the first action of each is closed, the second pending.
        assert wait_for(lambda: b"nextstate_interactions_total" in daemon.http("/metrics")[1]
                        and _metric(daemon, "nextstate_interactions_total") == 9, 60)
        assert wait_for(lambda: all(broker.committed(topic, group, PARTITIONS).values()), 30)
        assert daemon.http("/healthz")[0] == 200
    assert daemon.result == [0]
    first = stored(tmp_path / "state")
    assert len(first) == 9 + 4  # one evaluative per session, a directive for the 4 errors
    marks = broker.committed(topic, group, PARTITIONS)
    # Each committed offset points at a pending action's record: it must be re-read.
    assert all(offset is not None for offset in marks.values())

    # The agents go on; a restarted daemon rebuilds pending joins and closes them.
    produce_sessions(broker, topic, {k: v[2:] for k, v in sessions.items()})
    with Daemon(kafka_config(broker, tmp_path, topic, group)) as daemon:
        assert wait_for(lambda: _metric(daemon, "nextstate_interactions_total") == 18, 60)
    tuples = stored(tmp_path / "state")
    keys = [t.key for t in tuples]
    assert len(keys) == len(set(keys)) == 9 + 4  # later actions carry no tool signal
    records_total = _records_total(tmp_path)
    assert records_total == 9 * 3 + 0  # each good record processed once, across both runs
    dlq = KafkaConsumer(f"{topic}.dlq", bootstrap_servers=broker.bootstrap,
                        auto_offset_reset="earliest", consumer_timeout_ms=5000)
    (dead,) = list(dlq)
    dlq.close()
    headers = dict(dead.headers)
    assert dead.value == poison[1] and headers["nextstate.reason"] == b"schema"


def test_a_tombstone_goes_to_the_dead_letters_and_the_partition_reads_on(broker, tmp_path):
    """A record with no value (a tombstone, as any producer may send) raised a TypeError out
    of the poll loop: the daemon stopped, and again at the same offset after each restart."""
    topic, group = f"tombstone-{uuid.uuid4().hex[:8]}", "nextstate-test"
    broker.create_topic(topic, 1)
    broker.create_topic(f"{topic}.dlq", 1)
    session = weather_session("s0", "Error: missing required argument 'day'")
    broker.produce(topic, [(b"s0", line(session[0])), (b"s0", None),
                           *[(b"s0", line(r)) for r in session[1:]]])
    with Daemon(kafka_config(broker, tmp_path, topic, group)) as daemon:
        assert wait_for(lambda: _metric(daemon, "nextstate_interactions_total") == 2, 60)
        assert wait_for(lambda: broker.committed(topic, group, 1)[0] is not None, 30)
    assert daemon.result == [0]
    assert {t.kind for t in stored(tmp_path / "state")} == {"evaluative", "directive"}
    dlq = KafkaConsumer(f"{topic}.dlq", bootstrap_servers=broker.bootstrap,
                        auto_offset_reset="earliest", consumer_timeout_ms=5000)
    (dead,) = list(dlq)
    dlq.close()
    headers = dict(dead.headers)
    assert headers["nextstate.reason"] == b"empty" and headers["nextstate.origin"] == \
        f"{topic}/0/1".encode()


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
def test_a_compressed_topic_is_read(broker, tmp_path, codec):
    """Producers (and topics) often compress their batches. kafka-python reads snappy, lz4
    and zstd only with their libraries installed; without them the first such batch raised
    UnsupportedCodecError on every poll, taken for a broker outage: the daemon retried for
    good and read nothing. They are dependencies now."""
    topic, group = f"codec-{codec}-{uuid.uuid4().hex[:8]}", "nextstate-test"
    broker.create_topic(topic, PARTITIONS)
    broker.create_topic(f"{topic}.dlq", 1)
    sessions = {f"s{n}": weather_session(f"s{n}", "Error: HTTP 500") for n in range(3)}
    total = produce_sessions(broker, topic, sessions, compression_type=codec)
    with Daemon(kafka_config(broker, tmp_path, topic, group)) as daemon:
        assert wait_for(lambda: _metric(daemon, "nextstate_records_total") == total, 60)
    assert daemon.result == [0]
    assert {t.session_id for t in stored(tmp_path / "state")} == set(sessions)


def test_a_batch_that_does_not_read_leaves_the_daemon_answering(broker, tmp_path, monkeypatch):
    """kafka-python 3.0.12 raises once for a partition's batch that does not read (a codec it
    lacks, a batch failing its CRC check), then its next poll loops for good on the spent
    records: the daemon hung at full CPU, deaf to a stop. With the guard the error comes back
    on each poll: the daemon logs it, is not ready, and stops when told."""
    from kafka import codec

    topic, group = f"unreadable-{uuid.uuid4().hex[:8]}", "nextstate-test"
    broker.create_topic(topic, PARTITIONS)
    broker.create_topic(f"{topic}.dlq", 1)
    produce_sessions(broker, topic, {"s0": weather_session("s0", "Error: HTTP 500")},
                     compression_type="lz4")
    monkeypatch.setattr(codec, "has_lz4", lambda: False)  # as where lz4 is not installed
    daemon = Daemon(kafka_config(broker, tmp_path, topic, group))
    daemon.stop = waits = _Waits()
    with daemon:
        # Three polls that raised, each followed by its backoff (the bug: the second hung).
        assert wait_for(lambda: len(waits.timeouts) >= 3, 60)
        status, body = daemon.http("/readyz")
        assert status == 503 and "UnsupportedCodecError" in body.decode()
        assert daemon.http("/healthz")[0] == 200
    assert daemon.result == [0]  # (__exit__: it stopped when told)


def test_a_kafka_error_mid_batch_reads_the_rest_of_the_batch_again(broker, tmp_path,
                                                                   monkeypatch):
    """A KafkaError raised while a poll's records are processed (a producer's send used to
    raise one) left the consumer past the whole batch: the records after it were skipped and
    the next commit went past them. Now each partition is sought back to its first record not
    processed, and every record is processed once."""
    from kafka.errors import KafkaTimeoutError

    from nextstate.daemon.pipeline import Pipeline

    topic, group = f"midbatch-{uuid.uuid4().hex[:8]}", "nextstate-test"
    broker.create_topic(topic, PARTITIONS)
    broker.create_topic(f"{topic}.dlq", 1)
    sessions = {f"s{n}": weather_session(f"s{n}", "Error: HTTP 500") for n in range(3)}
    total = produce_sessions(broker, topic, sessions)
    process, failed = Pipeline.process, []

    def flaky(self, value, key, topic_, partition, offset):
        if offset == 2 and not failed:
            failed.append(offset)
            raise KafkaTimeoutError("injected: a send that timed out")
        return process(self, value, key, topic_, partition, offset)

    monkeypatch.setattr(Pipeline, "process", flaky)
    with Daemon(kafka_config(broker, tmp_path, topic, group)) as daemon:
        assert wait_for(lambda: _metric(daemon, "nextstate_records_total") == total, 60)
        assert wait_for(lambda: all(broker.committed(topic, group, PARTITIONS).values()), 30)
    assert failed == [2] and daemon.result == [0]
    assert _records_total(tmp_path) == total  # each once
    assert _metric_of_state(tmp_path, "interactions") == 2 * 3  # the last actions pending


def test_the_retry_backoff_stays_within_the_poll_interval(broker, tmp_path, monkeypatch):
    """Kafka errors in a row doubled the wait before the next poll up to 30 s, past a short
    ``max_poll_interval_ms`` (6 s here), and the client left the group over a broker that was
    fine. The waits now stop at a third of it, and the record is processed once it goes
    through."""
    from kafka.errors import KafkaTimeoutError

    from nextstate.daemon.pipeline import Pipeline

    topic, group = f"backoff-{uuid.uuid4().hex[:8]}", "nextstate-test"
    broker.create_topic(topic, PARTITIONS)
    broker.create_topic(f"{topic}.dlq", 1)
    total = produce_sessions(broker, topic, {"s0": weather_session("s0", "Error: HTTP 500")})
    process, failed = Pipeline.process, []

    def failing(self, value, key, topic_, partition, offset):
        if offset == 1 and len(failed) < 5:
            failed.append(offset)
            raise KafkaTimeoutError("injected: a send that timed out")
        return process(self, value, key, topic_, partition, offset)

    monkeypatch.setattr(Pipeline, "process", failing)
    daemon = Daemon(kafka_config(broker, tmp_path, topic, group))
    daemon.stop = waits = _Waits()
    with daemon:
        assert wait_for(lambda: _metric(daemon, "nextstate_records_total") == total, 60)
    assert len(failed) == 5 and daemon.result == [0]
    assert waits.timeouts[:5] == [0.5, 1.0, 2.0, 2.0, 2.0]  # 6000 ms / 3
    assert _records_total(tmp_path) == total


def _metric_of_state(tmp_path: Path, counter: str) -> float:
    state = json.loads((tmp_path / "state" / "checkpoint.json").read_text())
    return sum(value for name, _, value in state["stats"]["counters"] if name == counter)


def _metric(daemon: Daemon, name: str) -> float:
    _, body = daemon.http("/metrics")
    return metric_total(body, name)


def _records_total(tmp_path: Path) -> float:
    state = json.loads((tmp_path / "state" / "checkpoint.json").read_text())
    return sum(value for name, _, value in state["stats"]["counters"] if name == "records")


def test_consumer_fetch_wait_comes_from_config(broker, tmp_path):
    """The broker may hold an empty fetch only as long as ``kafka.fetch_max_wait_ms`` (100 ms
    unless configured: Tansu answers a held fetch only when the wait ends)."""
    default = kafka_config(broker, tmp_path, "t", "g")
    assert default.kafka.fetch_max_wait_ms == 100
    config = load_config(None, source="kafka", state_dir=str(tmp_path / "s"),
                         **{"kafka.bootstrap_servers": [broker.bootstrap],
                            "kafka.topic": "t", "kafka.fetch_max_wait_ms": 37})
    consumer = KafkaConsumer(**config.kafka.consumer_kwargs())
    try:
        assert consumer.config["fetch_max_wait_ms"] == 37
    finally:
        consumer.close()

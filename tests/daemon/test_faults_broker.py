"""Broker faults against Tansu: a network outage mid-stream (a loopback proxy cut and restored)
and backpressure (partitions paused while the pipeline says it is behind)."""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections import Counter

import pytest
from kafka import KafkaConsumer
from kafka.errors import TopicAlreadyExistsError

from nextstate.daemon.config import load_config
from nextstate.daemon.pipeline import Pipeline
from nextstate.daemon.service import Health, Progress
from nextstate.daemon.sources import KafkaRunner
from tests.daemon.test_faults_support import (
    EXTRACTORS,
    DaemonProcess,
    checkpoint_counter,
    reference_run,
    stream_records,
    write_config,
)
from tests.daemon.test_pipeline import stored
from tests.kafka_broker import wait_for
from tests.tcp_proxy import free_port, start_tansu, stop_tansu, tansu_behind_proxy

pytestmark = pytest.mark.kafka


def daemon_on_new_topic(broker, tmp_path, name: str, records: list[tuple[bytes, bytes]],
                        **config: float) -> tuple[str, DaemonProcess]:
    """A new topic (3 partitions and its DLQ) holding ``records``, and a daemon subprocess
    consuming it as group "g" (state in ``tmp_path/state``, output in ``tmp_path/daemon.log``)."""
    topic = f"{name}-{uuid.uuid4().hex[:8]}"
    broker.create_topic(topic, 3)
    broker.create_topic(f"{topic}.dlq", 1)
    broker.produce(topic, records)
    state = tmp_path / "state"
    path = write_config(tmp_path / "nextstate.toml", state, broker.bootstrap, topic, "g",
                        **config)
    return topic, DaemonProcess(path, state, tmp_path / "daemon.log").start()


def outage_run(tmp_path, outage_s: float, sessions: int) -> dict:
    records = stream_records(sessions, 5, seed=3)
    # The rest of the stream is produced after the outage: the cut lands mid-stream however
    # fast the daemon drains what it has fetched (one fetch may hold the whole first part).
    rest = int(len(records) * 0.6)
    with tansu_behind_proxy() as (broker, proxy):
        topic, daemon = daemon_on_new_topic(broker, tmp_path, "outage", records[:rest])
        state = daemon.state_dir
        try:
            assert wait_for(lambda: daemon.metric("nextstate_records_total")
                            >= len(records) * 0.3, 120), "daemon never consumed"
            proxy.cut()
            at_cut = daemon.metric("nextstate_records_total")
            assert wait_for(lambda: daemon.http("/readyz")[0] == 503, 30), "still ready"
            not_ready = [daemon.http("/readyz") for _ in range(3)]
            # The outage itself: the broker stays away for outage_s (a fault, not a sync),
            # and the loop stays alive throughout (no commit waits for the broker).
            alive: list[int] = []
            wait_for(lambda: alive.append(daemon.http("/healthz")[0]) and False, outage_s, 0.5)
            not_ready += [daemon.http("/readyz")]
            proxy.restore()
            assert wait_for(lambda: daemon.http("/readyz")[0] == 200, 90), "never ready again"
            broker.produce(topic, records[rest:])
            assert wait_for(lambda: daemon.metric("nextstate_records_total") >= len(records),
                            120), "did not resume"
            assert daemon.stop() == 0
        finally:
            if daemon.exited() is None:
                daemon.kill()
    reference, interactions = reference_run(records)
    keys = [t.key for t in stored(state)]
    log = (tmp_path / "daemon.log").read_text()
    return {"records": len(records), "consumed_at_cut": at_cut,
            "not_ready_during_outage": all(code == 503 for code, _ in not_ready),
            "alive_during_outage": bool(alive) and set(alive) == {200},
            "lost": len(set(reference) - set(keys)),
            "duplicated": sum(c - 1 for c in Counter(keys).values()),
            "records_counted": checkpoint_counter(state, "records"),
            "interactions": interactions,
            "interactions_counted": checkpoint_counter(state, "interactions"),
            "logged": ("broker_unreachable" in log or "kafka_error" in log)
                      and "broker_reconnected" in log}


def check_outage(result: dict) -> None:
    print(f"\nbroker outage: {result}")
    assert result["consumed_at_cut"] < result["records"]  # cut mid-stream
    assert result["not_ready_during_outage"] and result["alive_during_outage"]
    assert result["logged"]
    assert result["lost"] == 0 and result["duplicated"] == 0
    assert result["records_counted"] == result["records"]
    assert result["interactions_counted"] == result["interactions"]


def test_broker_outage_3s_fast(tmp_path):
    """A 3 s network cut mid-stream: /readyz says not ready, then the daemon resumes, no loss."""
    check_outage(outage_run(tmp_path, 3.0, sessions=100))


@pytest.mark.slow
def test_broker_outage_30s(tmp_path):
    """A 30 s network cut mid-stream: not ready throughout, resumes without loss or duplicate."""
    check_outage(outage_run(tmp_path, 30.0, sessions=200))


def no_loss_no_duplicate(state, records: list[tuple[bytes, bytes]]) -> None:
    """Every tuple of a run with no faults is stored, once."""
    reference, _ = reference_run(records)
    keys = [t.key for t in stored(state)]
    assert set(reference) <= set(keys), f"lost {len(set(reference) - set(keys))} tuples"
    assert not [k for k, c in Counter(keys).items() if c > 1], "duplicated tuples"
    assert checkpoint_counter(state, "records") == len(records)


@pytest.mark.parametrize("committed", [True, False], ids=["after-commits", "before-any-commit"])
def test_broker_that_comes_back_empty_is_read_from_the_reset_position(tmp_path, committed):
    """The broker is replaced by an empty one mid-run, after the daemon committed offsets or
    before it ever did: the daemon notices the new log (new topic id; records below its
    checkpointed offsets), logs kafka_offsets_reset, and processes every new record instead
    of skipping them as replays; what it had read from the old broker stays stored."""
    first, second = stream_records(30, 5, seed=5), stream_records(40, 5, seed=6)
    second = [(b"new-" + k, v.replace(b'"session_id": "', b'"session_id": "new-'))
              for k, v in second]  # a longer log than the first: offsets alone cannot tell
    with tansu_behind_proxy() as (broker, proxy):
        topic, daemon = daemon_on_new_topic(
            broker, tmp_path, "empty", first, commit_interval_s=0.5 if committed else 3600,
            commit_every_records=200 if committed else 10**9)
        state = daemon.state_dir
        replacement = None
        try:
            assert wait_for(lambda: daemon.metric("nextstate_records_total") == len(first), 120)
            offsets = lambda: broker.committed(topic, "g", 3).values()  # noqa: E731
            if committed:
                assert wait_for(lambda: None not in offsets(), 30), "nothing committed"
            else:
                assert set(offsets()) == {None}
            proxy.cut()
            port = free_port()
            replacement = start_tansu(port, proxy.port)  # advertises the proxy, like the first
            proxy.upstream = ("127.0.0.1", port)
            proxy.restore()
            # The daemon's metadata request may create the topic first (kafka-python asks for
            # auto-creation and Tansu grants it): then it has the broker's default partitions.
            for name, partitions in ((topic, 3), (f"{topic}.dlq", 1)):
                with contextlib.suppress(TopicAlreadyExistsError):
                    broker.create_topic(name, partitions)
            broker.produce(topic, second)
            assert wait_for(lambda: daemon.metric("nextstate_records_total")
                            == len(first) + len(second), 60), "new records were skipped"
            assert daemon.stop() == 0
        finally:
            if daemon.exited() is None:
                daemon.kill()
            if replacement is not None:
                stop_tansu(replacement)
    assert "kafka_offsets_reset" in (tmp_path / "daemon.log").read_text()
    no_loss_no_duplicate(state, first + second)


def test_stalled_consumer_is_replaced(tmp_path):
    """A half-dead connection (open, but silent from a Fetch on) while records wait: the
    watchdog logs consumer_stalled and replaces the consumer, which reads on; no loss, no
    duplicate."""
    first, second = stream_records(20, 5, seed=7), stream_records(20, 5, seed=8)
    second = [(b"more-" + k, v.replace(b'"session_id": "', b'"session_id": "more-'))
              for k, v in second]
    with tansu_behind_proxy() as (broker, proxy):
        topic, daemon = daemon_on_new_topic(broker, tmp_path, "stall", first)
        state, log = daemon.state_dir, daemon.log
        try:
            assert wait_for(lambda: daemon.metric("nextstate_records_total") == len(first), 120)
            proxy.freeze_next_fetch()  # the consumer polls on: its next fetch is the one
            assert wait_for(lambda: proxy.frozen == 1, 30)
            broker.produce(topic, second)  # a new connection: not frozen
            assert wait_for(lambda: "consumer_stalled" in log.read_text(), 60), "no watchdog"
            assert wait_for(lambda: daemon.metric("nextstate_records_total")
                            == len(first) + len(second), 60), "did not read on"
            assert daemon.stop() == 0
        finally:
            if daemon.exited() is None:
                daemon.kill()
    no_loss_no_duplicate(state, first + second)


def test_sigterm_during_an_outage_exits_promptly_and_a_restart_resumes(tmp_path):
    """SIGTERM while the broker is cut: commits wait for no request timeout, so the daemon
    exits at once (its final commit skipped, logged); restarted after the outage, it reads
    the rest from the group's offsets with no loss and no duplicate."""
    records = stream_records(60, 5, seed=9)
    with tansu_behind_proxy() as (broker, proxy):
        _, daemon = daemon_on_new_topic(broker, tmp_path, "term", records)
        state, log = daemon.state_dir, daemon.log
        try:
            assert wait_for(lambda: daemon.metric("nextstate_records_total") >= 60, 120)
            proxy.cut()
            assert wait_for(lambda: daemon.http("/readyz")[0] == 503, 30), "still ready"
            assert daemon.http("/healthz")[0] == 200  # not ready, but the loop is alive
            started = time.monotonic()
            assert daemon.stop(timeout_s=15) == 0
            assert time.monotonic() - started < 15
            assert "commit_deferred" in log.read_text()
            proxy.restore()
            daemon = DaemonProcess(daemon.config, state, log).start()
            assert wait_for(lambda: daemon.http("/readyz")[0] == 200, 60)  # handlers set
            assert wait_for(lambda: checkpoint_counter(state, "records") == len(records), 120)
            assert daemon.stop() == 0
        finally:
            if daemon.exited() is None:
                daemon.kill()
    no_loss_no_duplicate(state, records)


def test_backpressure_pauses_partitions_and_resumes(broker, tmp_path):
    """While the pipeline reports it is behind, every partition is paused and nothing more is
    fetched though polling goes on; once it catches up, consumption resumes to the end."""
    topic = f"bp-{uuid.uuid4().hex[:8]}"
    broker.create_topic(topic, 3)
    records = stream_records(40, 5, seed=4)
    broker.produce(topic, records)
    config = load_config(
        None, source="kafka", state_dir=str(tmp_path / "state"), extractors=["tool"],
        commit_interval_s=0.5,
        **{"kafka.bootstrap_servers": [broker.bootstrap], "kafka.topic": topic,
           "kafka.group_id": "bp", "kafka.session_timeout_ms": 2000,
           "kafka.heartbeat_interval_ms": 300, "kafka.max_poll_interval_ms": 3000,
           "kafka.poll_timeout_ms": 100, "kafka.max_poll_records": 20})
    pipeline = Pipeline(config)
    trainer_behind = threading.Event()
    trainer_behind.set()
    pipeline.pressure.append(lambda: "trainer behind" if trainer_behind.is_set() else None)
    stop, health = threading.Event(), Health()
    runner = KafkaRunner(pipeline, config, stop, health, Progress(pipeline.stats, False))
    beats: list[float] = []
    beat = health.beat
    health.beat = lambda: (beats.append(1.0), beat())[1]  # type: ignore[method-assign]
    thread = threading.Thread(target=runner.run)
    thread.start()
    try:
        assert wait_for(lambda: runner.paused_for == "trainer behind"
                        and len(runner.consumer.paused()) == 3, 60)
        seen = sum(pipeline.seen.values())
        polls = len(beats)
        assert wait_for(lambda: len(beats) >= polls + 20, 30)  # 20 more polls while paused
        assert sum(pipeline.seen.values()) == seen < len(records)
        trainer_behind.clear()
        assert wait_for(lambda: pipeline.stats.total("records") == len(records), 60)
        assert runner.paused_for is None and not runner.consumer.paused()
    finally:
        stop.set()
        thread.join(30)
        runner.close()
        pipeline.close()


def test_partitions_revoked_and_assigned_back_lose_no_pending_join(broker, tmp_path):
    """A second member joins the group and leaves again: the partitions the daemon keeps
    through both rebalances are read again from their low watermark (kafka-python 3 keeps
    their fetch position, but their pending joins were dropped), so no tuple is lost and
    none is stored twice."""
    topic = f"rb-{uuid.uuid4().hex[:8]}"
    broker.create_topic(topic, 4)
    broker.create_topic(f"{topic}.dlq", 1)
    records = stream_records(60, 6, seed=11)
    half = len(records) // 2
    broker.produce(topic, records[:half])
    group = {"kafka.session_timeout_ms": 2000, "kafka.heartbeat_interval_ms": 300,
             "kafka.max_poll_interval_ms": 3000}
    config = load_config(
        None, source="kafka", state_dir=str(tmp_path / "state"), extractors=EXTRACTORS,
        commit_interval_s=0.5,
        **{"kafka.bootstrap_servers": [broker.bootstrap], "kafka.topic": topic,
           "kafka.group_id": "rb", "kafka.poll_timeout_ms": 100, "kafka.max_poll_records": 50,
           **group})
    pipeline = Pipeline(config)
    stop = threading.Event()
    runner = KafkaRunner(pipeline, config, stop, Health(), Progress(pipeline.stats, False))
    thread = threading.Thread(target=runner.run)
    thread.start()
    try:
        assert wait_for(lambda: pipeline.stats.total("records") == half, 60)
        other = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id="rb",
                              enable_auto_commit=False,
                              **{k.split(".")[1]: v for k, v in group.items()})
        other.subscribe([topic])
        assert wait_for(lambda: other.poll(100) is not None and bool(other.assignment()), 60)
        # The daemon takes its share on its own next poll: the other member's assignment
        # says nothing of when that is (a fresh clone's run once saw all 4 still held here:
        # kafka-python 3.0.12 drops a join that completes between two polls and joins again,
        # about a second a time on Tansu). The other member is polled meanwhile: left alone
        # past its max_poll_interval_ms (3 s), it leaves the group on its own, and the
        # daemon goes from all 4 straight back to all 4, its share never seen.
        assert wait_for(lambda: other.poll(100) is not None
                        and 0 < len(runner.consumer.assignment()) < 4, 60)
        other.close(autocommit=False)
        assert wait_for(lambda: len(runner.consumer.assignment()) == 4, 60)
        broker.produce(topic, records[half:])
        assert wait_for(lambda: pipeline.stats.total("records") == len(records), 60)
    finally:
        stop.set()
        thread.join(30)
        runner.close()
        pipeline.close()
    no_loss_no_duplicate(tmp_path / "state", records)

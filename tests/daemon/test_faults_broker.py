"""Broker faults against Tansu: a network outage mid-stream (a loopback proxy cut and restored)
and backpressure (partitions paused while the pipeline says it is behind)."""

from __future__ import annotations

import threading
import uuid
from collections import Counter

import pytest

from nextstate.daemon.config import load_config
from nextstate.daemon.pipeline import Pipeline
from nextstate.daemon.service import Health, Progress
from nextstate.daemon.sources import KafkaRunner
from tests.daemon.test_faults_support import (
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


def outage_run(tmp_path, outage_s: float, sessions: int) -> dict:
    records = stream_records(sessions, 5, seed=3)
    with tansu_behind_proxy() as (broker, proxy):
        topic = f"outage-{uuid.uuid4().hex[:8]}"
        broker.create_topic(topic, 3)
        broker.create_topic(f"{topic}.dlq", 1)
        broker.produce(topic, records)
        state = tmp_path / "state"
        config = write_config(tmp_path / "nextstate.toml", state, broker.bootstrap, topic, "g")
        daemon = DaemonProcess(config, state, tmp_path / "daemon.log").start()
        try:
            assert wait_for(lambda: daemon.metric("nextstate_records_total")
                            >= len(records) * 0.3, 120), "daemon never consumed"
            proxy.cut()
            at_cut = daemon.metric("nextstate_records_total")
            assert wait_for(lambda: daemon.http("/readyz")[0] == 503, 30), "still ready"
            not_ready = [daemon.http("/readyz") for _ in range(3)]
            # The outage itself: the broker stays away for outage_s (a fault, not a sync).
            wait_for(lambda: False, outage_s, 0.5)
            not_ready += [daemon.http("/readyz")]
            proxy.restore()
            assert wait_for(lambda: daemon.http("/readyz")[0] == 200, 90), "never ready again"
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
    assert result["not_ready_during_outage"] and result["logged"]
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


# Known bug, left open in issue 9: in 2 of 3 runs here one partition of the replacement
# broker is never fetched again (kafka-python 3.0.12; no consumer_stalled fires), so its new
# records wait forever. Non-strict: the test still runs and its passes show the reset path.
@pytest.mark.xfail(strict=False, reason="one partition can stall after the broker is replaced "
                   "(kafka-python 3.0.12); see issue 9")
def test_broker_that_comes_back_empty_is_read_from_the_reset_position(tmp_path):
    """The broker is replaced by an empty one mid-run: the daemon notices that the new log
    starts below its checkpointed offsets, logs kafka_offsets_reset, and processes every new
    record instead of skipping them as replays."""
    first, second = stream_records(30, 5, seed=5), stream_records(20, 5, seed=6)
    second = [(b"new-" + k, v.replace(b'"session_id": "', b'"session_id": "new-'))
              for k, v in second]
    with tansu_behind_proxy() as (broker, proxy):
        topic = f"empty-{uuid.uuid4().hex[:8]}"
        broker.create_topic(topic, 3)
        broker.create_topic(f"{topic}.dlq", 1)
        broker.produce(topic, first)
        state = tmp_path / "state"
        config = write_config(tmp_path / "nextstate.toml", state, broker.bootstrap, topic, "g")
        daemon = DaemonProcess(config, state, tmp_path / "daemon.log").start()
        replacement = None
        try:
            assert wait_for(lambda: daemon.metric("nextstate_records_total") == len(first), 120)
            proxy.cut()
            port = free_port()
            replacement = start_tansu(port, proxy.port)  # advertises the proxy, like the first
            proxy.upstream = ("127.0.0.1", port)
            proxy.restore()
            broker.create_topic(topic, 3)
            broker.create_topic(f"{topic}.dlq", 1)
            broker.produce(topic, second)
            assert wait_for(lambda: daemon.metric("nextstate_records_total")
                            == len(first) + len(second), 120), "new records were skipped"
            assert daemon.stop() == 0
        finally:
            if daemon.exited() is None:
                daemon.kill()
            if replacement is not None:
                stop_tansu(replacement)
    assert "kafka_offsets_reset" in (tmp_path / "daemon.log").read_text()
    assert checkpoint_counter(state, "records") == len(first) + len(second)


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

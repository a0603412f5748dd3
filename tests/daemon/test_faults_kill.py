"""Crash safety against Tansu: SIGKILL the daemon subprocess again and again while it consumes;
every expected tuple ends up in the buffers exactly once."""

from __future__ import annotations

import random
import uuid
from collections import Counter

import pytest
from kafka import KafkaConsumer
from kafka.structs import TopicPartition

from tests.daemon.test_faults_support import (
    DaemonProcess,
    checkpoint_counter,
    processed_offsets,
    reference_run,
    stream_records,
    write_config,
)
from tests.daemon.test_pipeline import stored
from tests.kafka_broker import wait_for

pytestmark = pytest.mark.kafka

PARTITIONS = 3


def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        return {tp.partition: offset for tp, offset in consumer.end_offsets(tps).items()}
    finally:
        consumer.close()


def kill_loop(broker, tmp_path, sessions: int, turns: int, kills: int, seed: int,
              delta: float = 0.0) -> dict:
    """Produce the stream in ``kills + 1`` chunks; start the daemon, let it consume a random
    share of what is left, SIGKILL it, produce the next chunk, repeat; finally let one run
    drain the topic."""
    rng = random.Random(seed)
    topic, group = f"kill-{uuid.uuid4().hex[:8]}", f"g-{uuid.uuid4().hex[:6]}"
    broker.create_topic(topic, PARTITIONS)
    broker.create_topic(f"{topic}.dlq", 1)
    records = stream_records(sessions, turns, seed, delta)
    state = tmp_path / "state"
    config = write_config(tmp_path / "nextstate.toml", state, broker.bootstrap, topic, group)
    daemon = DaemonProcess(config, state, tmp_path / "daemon.log")
    chunk = len(records) // (kills + 1) + 1
    try:
        return _kill_and_drain(broker, topic, records, chunk, kills, rng, daemon, state)
    finally:
        if daemon.process is not None and daemon.exited() is None:
            daemon.kill()


def _kill_and_drain(broker, topic, records, chunk, kills, rng, daemon, state) -> dict:
    killed_mid_stream = 0
    for n in range(kills):
        broker.produce(topic, records[n * chunk:(n + 1) * chunk])
        before = sum(processed_offsets(state).values())
        produced = min((n + 1) * chunk, len(records))
        counted = checkpoint_counter(state, "records") if before else 0.0
        # The fault lands at a random point of what is left to consume: after a random share
        # of it has been counted live. (A random delay instead landed mostly after the daemon
        # had caught up, once it got fast enough to drain a chunk in a tenth of a second.)
        target = counted + rng.uniform(0.05, 0.95) * max(1, produced - before)
        daemon.start()
        assert wait_for(lambda: daemon.http("/readyz")[0] == 200, 90), "daemon never ready"
        wait_for(lambda t=target: daemon.metric("nextstate_records_total") >= t, 30, 0.005)
        daemon.kill()
        if sum(processed_offsets(state).values()) < produced:
            killed_mid_stream += 1
        assert sum(processed_offsets(state).values()) >= before  # checkpoints never regress
    broker.produce(topic, records[kills * chunk:])
    daemon.start()
    assert wait_for(lambda: daemon.http("/readyz")[0] == 200, 90), "daemon never ready"
    ends = end_offsets(broker.bootstrap, topic)
    # Tansu's end offsets can trail the last record's offset + 1 (offset gaps between batches):
    # drained = every partition checkpointed at or past its end offset.
    assert wait_for(lambda: all(processed_offsets(state).get(p, -1) >= end
                                for p, end in ends.items()), 240), \
        f"not drained: {processed_offsets(state)} vs {ends}"
    assert daemon.stop() == 0
    reference, interactions = reference_run(records)
    keys = [t.key for t in stored(state)]
    counts = Counter(keys)
    return {
        "records": len(records), "interactions": interactions, "kills": kills,
        "killed_mid_stream": killed_mid_stream,
        "lost": len(set(reference) - set(keys)),
        "unexpected": len(set(keys) - set(reference)),
        "duplicated": sum(c - 1 for c in counts.values()),
        "interactions_counted": checkpoint_counter(state, "interactions"),
        "records_counted": checkpoint_counter(state, "records"),
    }


def check(result: dict) -> None:
    print(f"\nkill -9 loop: {result}")
    assert result["lost"] == 0 and result["duplicated"] == 0 and result["unexpected"] == 0
    # Exactly once upstream of the buffers too: no record and no interaction counted twice.
    assert result["records_counted"] == result["records"]
    assert result["interactions_counted"] == result["interactions"]
    assert result["killed_mid_stream"] >= result["kills"] // 2


def test_kill_9_loop_fast(broker, tmp_path):
    """~2k interactions, 5 SIGKILLs mid-stream: lost = 0, duplicated = 0, each record once."""
    check(kill_loop(broker, tmp_path, sessions=100, turns=10, kills=5, seed=1))


def test_kill_9_loop_with_delta_clients(broker, tmp_path):
    """Half the sessions from clients that send only the new messages (their pending actions
    rebuilt after each kill from the session's first record): lost = 0, duplicated = 0."""
    check(kill_loop(broker, tmp_path, sessions=100, turns=10, kills=5, seed=3, delta=0.5))


@pytest.mark.slow
def test_kill_9_loop_20k_interactions_20_kills(broker, tmp_path):
    """>= 20k interactions, 20 SIGKILLs at random moments: lost = 0, duplicated = 0."""
    result = kill_loop(broker, tmp_path, sessions=1050, turns=10, kills=20, seed=2)
    check(result)
    assert result["interactions"] >= 20_000

"""Scale-out: three ``nextstate run`` processes in one consumer group against Tansu.

Each daemon keeps its own buffer shard and produces its tuples to one output topic. One is
SIGKILLed mid-stream: its partitions move to the survivors, which rebuild the pending joins
from the committed offsets (the low watermarks), so every interaction still yields its tuples.

What holds, and is asserted:
- the union of the shards is exactly the tuples a single daemon makes of the same records
  (nothing lost, nothing extra), and no shard stores a key twice;
- a key stored by two shards is one the killed daemon stored after its last commit: the new
  owner re-processes from the committed offset, and its replay suppression only knows its own
  checkpoint. The output topic is at least once with the dedup key: read by key, it holds
  exactly the reference tuples, and any repeated key is such a one.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest
from kafka import KafkaConsumer

from nextstate.daemon.pipeline import Pipeline
from nextstate.daemon.tuple_topic import decode_tuple
from tests.daemon.test_pipeline import config_for, stored
from tests.kafka_broker import wait_for
from tests.records import assistant, conversation_exchanges, line, tool, user

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

PARTITIONS = 6
DAEMONS = 3
SESSIONS = 24


def two_call_session(sid: str, n: int) -> list[dict]:
    """Three exchanges: call 1 (its result an error for odd n), call 2, the final answer."""
    first = "Error: missing required argument 'day'" if n % 2 else '{"temp_c": 21}'
    records = conversation_exchanges(sid, [
        (assistant(calls=[(f"{sid}-1", "get_weather", {"city": "Paris"})]),
         [tool(f"{sid}-1", first)]),
        (assistant(calls=[(f"{sid}-2", "get_weather", {"city": "Paris", "day": "mon"})]),
         [tool(f"{sid}-2", '{"temp_c": 19}')]),
        (assistant("Monday: 19 C."), [user("thanks")]),
    ])
    for record in records:
        record["request"]["messages"].insert(1, user("weather in Paris?"))
    return records


def _toml(path: Path, broker: str, topic: str, group: str, out_topic: str, state: Path) -> None:
    path.write_text(f"""
source = "kafka"
state_dir = "{state}"
extractors = ["tool"]
output_topic = "{out_topic}"
commit_interval_s = 0.3
metrics_port = -1
log_format = "json"
progress = "off"

[kafka]
bootstrap_servers = ["{broker}"]
topic = "{topic}"
group_id = "{group}"
session_timeout_ms = 6000
heartbeat_interval_ms = 1000
max_poll_interval_ms = 6000
poll_timeout_ms = 200
""")


class DaemonProcess:
    """One ``python -m nextstate.daemon.cli run`` process, its log captured to a file."""

    def __init__(self, tmp_path: Path, n: int, broker: str, topic: str, group: str,
                 out_topic: str) -> None:
        self.state = tmp_path / f"state{n}"
        config = tmp_path / f"daemon{n}.toml"
        _toml(config, broker, topic, group, out_topic, self.state)
        self.log = tmp_path / f"daemon{n}.log"
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "nextstate.daemon.cli", "run", "--config", str(config)],
                stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})

    def assigned(self) -> set[str]:
        """The partitions of this process's latest assignment (from its log)."""
        latest: set[str] = set()
        for row in self.log.read_text(errors="replace").splitlines():
            if '"partitions_assigned"' in row:
                latest = set(json.loads(row).get("partitions", []))
        return latest

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        self.process.wait(60)


def _reference_keys(tmp_path: Path, sessions: dict[str, list[dict]]) -> set:
    """The tuple keys one in-process daemon makes of the same records."""
    pipeline = Pipeline(config_for(tmp_path / "reference"))
    for offset, record in enumerate(r for rs in sessions.values() for r in rs):
        pipeline.process(line(record), None, "t", 0, offset)
    pipeline.close()
    return {t.key for t in stored(tmp_path / "reference" / "state")}


def test_group_of_three_survives_a_sigkill_without_losing_a_tuple(broker, tmp_path):
    """Every reference tuple is stored across the shards and produced to the output topic;
    duplicates only come from the killed daemon's uncommitted tail."""
    run = uuid.uuid4().hex[:8]
    topic, group, out_topic = f"scale-{run}", f"scale-{run}", f"tuples-{run}"
    broker.create_topic(topic, PARTITIONS)
    broker.create_topic(f"{topic}.dlq", 1)
    broker.create_topic(out_topic, 3)
    sessions = {f"s{n}": two_call_session(f"s{n}", n) for n in range(SESSIONS)}
    partition_of = {sid.encode(): n % PARTITIONS for n, sid in enumerate(sessions)}
    reference = _reference_keys(tmp_path, sessions)
    assert len(reference) == SESSIONS * 2 + SESSIONS // 2  # 2 evaluative + odd directives

    daemons = [DaemonProcess(tmp_path, n, broker.bootstrap, topic, group, out_topic)
               for n in range(DAEMONS)]
    try:
        # All three in the group, the six partitions split among them.
        assert wait_for(lambda: all(d.assigned() for d in daemons) and sorted(
            p for d in daemons for p in d.assigned()) == sorted(
            f"{topic}/{p}" for p in range(PARTITIONS)), 60)
        phase = [(sid.encode(), line(r)) for i in (0, 1) for sid, rs in sessions.items()
                 for r in [rs[i]]]
        broker.produce(topic, phase, partition_of)
        # Phase 1 committed: per partition up to its first pending (second) exchange.
        per_partition = SESSIONS // PARTITIONS
        assert wait_for(lambda: set(broker.committed(topic, group, PARTITIONS).values())
                        == {per_partition}, 60)

        victim = max(daemons, key=lambda d: len(d.assigned()))
        moved = victim.assigned()
        producer = threading.Thread(target=broker.produce, args=(
            topic, [(sid.encode(), line(rs[2])) for sid, rs in sessions.items()],
            partition_of))
        producer.start()
        victim.process.send_signal(signal.SIGKILL)  # mid-stream: phase 2 is being produced
        victim.process.wait(30)
        producer.join(30)
        survivors = [d for d in daemons if d is not victim]
        # The survivors take over the victim's partitions ...
        assert wait_for(lambda: moved <= {p for d in survivors for p in d.assigned()}, 60)
        # ... and rebuild its pending joins: every partition's pending exchange is closed.
        assert wait_for(lambda: set(broker.committed(topic, group, PARTITIONS).values())
                        == {2 * per_partition}, 60)  # the final answers wait
    finally:
        for d in daemons:
            d.stop()
    assert all(d.process.returncode == 0 for d in daemons if d is not victim)

    shards = {d.state.name: [t.key for t in stored(d.state)] for d in daemons}
    for keys in shards.values():
        assert len(keys) == len(set(keys)), "a shard stored a key twice"
    union = set().union(*map(set, shards.values()))
    assert union == reference
    victim_keys = set(shards[victim.state.name])
    twice = {k for k in union if sum(k in set(v) for v in shards.values()) > 1}
    assert twice <= victim_keys

    consumer = KafkaConsumer(out_topic, bootstrap_servers=broker.bootstrap,
                             auto_offset_reset="earliest", consumer_timeout_ms=3000)
    produced = [decode_tuple(r.value).key for r in consumer]
    consumer.close()
    assert set(produced) == reference
    repeated = {k for k in produced if produced.count(k) > 1}
    assert repeated <= victim_keys

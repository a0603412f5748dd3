"""The demo's records travel through a real Kafka broker (Tansu) when one is available."""

from __future__ import annotations

import json

import pytest
from kafka import KafkaConsumer
from kafka.structs import TopicPartition

from nextstate.daemon.demo.run import DemoSettings, Deployment
from nextstate.daemon.demo.transport import KafkaTransport
from nextstate.trainers.tiny import TinyConfig

pytestmark = pytest.mark.kafka


def test_closed_loop_over_kafka_matches_the_file_transport(broker, tmp_path):
    """Every record the agent publishes is produced to the topic and consumed by the pipeline,
    and the run is the same as over the file transport (same seed, same records)."""
    def settings() -> DemoSettings:
        return DemoSettings(
            interactions=12, seed=0, policy=TinyConfig(d_model=16, n_layers=1, n_heads=2,
                                                       max_length=384),
            trainer={"lr": 1e-3, "batch_size": 4, "micro_batch_size": 4, "publish_every": 1,
                     "kl_weight": 0.05, "opd_weight": 0.0},
            steps_per_interaction=0.25)

    transport = KafkaTransport(broker.bootstrap, topic="demo-kafka-test")
    try:
        over_kafka = Deployment(settings(), tmp_path / "kafka", transport).run()
    finally:
        transport.close()
    over_file = Deployment(settings(), tmp_path / "file").run()
    assert over_kafka.sessions == over_file.sessions
    assert over_kafka.versions == over_file.versions
    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, auto_offset_reset="earliest",
                             consumer_timeout_ms=3000)
    try:
        consumer.assign([TopicPartition("demo-kafka-test", 0)])
        in_topic = [record.value for record in consumer]
    finally:
        consumer.close()
    published = (tmp_path / "file" / "records.jsonl").read_bytes().splitlines()
    assert transport.sent == transport.received == len(published)
    def shape(raw: bytes) -> tuple:
        record = json.loads(raw)  # ts and float log-probs vary from run to run
        return record["session_id"], record.get("type"), len(record.get("request", {})
                                                               .get("messages", []))

    # The same records, in the same order (over Kafka in this run, in the file in the other).
    assert [shape(r) for r in in_topic] == [shape(r) for r in published]

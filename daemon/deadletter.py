"""Dead-letter sinks: where records that cannot be processed go, with the reason.

A bad record must never stop the daemon nor vanish: it is written, with its original bytes,
the error and where it came from, to ``<topic>.dlq`` (Kafka sources) or a JSON-lines file
(file sources). Sinks are flushed before offsets are committed, like the buffers.
"""

from __future__ import annotations

import base64
import json
import os
import time
from pathlib import Path
from typing import Any, Protocol


class DeadLetterSink(Protocol):
    """Receives rejected records; ``flush`` makes earlier sends durable."""

    def send(self, value: bytes, key: bytes | None, reason: str, error: str,
             topic: str, partition: int, offset: int) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


def _original(value: bytes) -> dict[str, str]:
    try:
        return {"value": value.decode("utf-8")}
    except UnicodeDecodeError:
        return {"value_b64": base64.b64encode(value).decode()}


class FileDeadLetters:
    """Appends one JSON object per rejected record to a file (fsync on flush)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - kept open
        self.count = 0

    def send(self, value: bytes, key: bytes | None, reason: str, error: str,
             topic: str, partition: int, offset: int) -> None:
        entry: dict[str, Any] = {"ts": time.time(), "reason": reason, "error": error[:2000],
                                 "source": topic, "partition": partition, "offset": offset,
                                 "key": key.decode("utf-8", "replace") if key else None,
                                 **_original(value)}
        self._file.write(json.dumps(entry) + "\n")
        self.count += 1

    def flush(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        if not self._file.closed:
            self.flush()
            self._file.close()


class KafkaDeadLetters:
    """Produces rejected records, original bytes untouched, to a dead-letter topic.

    The reason, error and origin travel as record headers (``nextstate.reason``,
    ``nextstate.error``, ``nextstate.origin``) so the value stays replayable as it was.
    """

    def __init__(self, producer: Any, topic: str) -> None:
        self.producer = producer
        self.topic = topic
        self.count = 0

    def send(self, value: bytes, key: bytes | None, reason: str, error: str,
             topic: str, partition: int, offset: int) -> None:
        headers = [("nextstate.reason", reason.encode()),
                   ("nextstate.error", error[:2000].encode()),
                   ("nextstate.origin", f"{topic}/{partition}/{offset}".encode())]
        self.producer.send(self.topic, value=value, key=key, headers=headers)
        self.count += 1

    def flush(self) -> None:
        self.producer.flush()

    def close(self) -> None:
        self.producer.flush()
        self.producer.close()

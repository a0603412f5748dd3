"""Dead-letter sinks: where records that cannot be processed go, with the reason.

A bad record must never stop the daemon nor vanish: it is written, with its original bytes,
the error and where it came from, to ``<topic>.dlq`` (Kafka sources) or a JSON-lines file
(file sources). Sinks are flushed before offsets are committed, like the buffers; a flush that
could not write every dead letter raises, so no offset past a lost one is committed. A Kafka
dead letter too big for the producer is sent cut to its head, with its size and sha256.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import os
import threading
import time
from pathlib import Path
from typing import Any, Protocol

from nextstate.daemon.producers import FLUSH_TIMEOUT_S, flush_then_close, flush_within


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

    def mark(self) -> tuple[int, int]:
        """The file's ``(inode, size)`` (after a :meth:`flush`): what a checkpoint covers."""
        stat = os.fstat(self._file.fileno())
        return stat.st_ino, stat.st_size

    def rewind(self, mark: tuple[int, int]) -> None:
        """Cut off what was written past a checkpoint's :meth:`mark`: the letters of records
        the checkpoint did not cover (written by a crash's flushed buffer, or by a close that
        skipped the checkpoint), which are processed again after the restart and rejected
        again. Kept, each was in the file twice. (Another file at the path is left alone.)"""
        inode, size = mark
        stat = os.fstat(self._file.fileno())
        if stat.st_ino == inode and stat.st_size > size:
            self._file.flush()
            os.ftruncate(self._file.fileno(), size)

    def close(self) -> None:
        if not self._file.closed:
            self.flush()
            self._file.close()


TRUNCATED_HEAD_BYTES = 64 << 10
"""How much of its value a dead letter too big for the producer keeps (its head)."""
RECORD_OVERHEAD_BYTES = 1 << 10
"""Room kept under the producer's ``max_request_size`` for the record batch's own framing."""
DEFAULT_MAX_REQUEST_SIZE = 1 << 20
"""kafka-python's ``max_request_size``, for a producer that does not tell its own."""

Letter = tuple[bytes, bytes | None, list[tuple[str, bytes]]]
"""A dead letter as produced: value, key and headers."""


def __getattr__(name: str) -> Any:
    # DeadLetterError is a KafkaError, made on first use: importing kafka-python costs a
    # file-source run (which never needs it) a quarter of a second.
    if name == "DeadLetterError":
        return _dead_letter_error()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@functools.cache
def _dead_letter_error() -> type[Exception]:
    from kafka.errors import KafkaError

    class DeadLetterError(KafkaError):
        """Dead letters the producer could not write (after its own retries).

        A ``KafkaError``: the Kafka source's loop backs off and checkpoints again, as for a
        broker away, and commits no offset until the letters (sent again by each
        :meth:`KafkaDeadLetters.flush`) are written. ``failed``: how many; ``error``: the
        first send's error.
        """

        def __init__(self, topic: str, failed: int, error: BaseException | None) -> None:
            super().__init__(
                f"{failed} dead letter(s) not written to {topic}: {error!r}; kept, and "
                "written by a later checkpoint, which commits no offset until they are")
            self.topic, self.failed, self.error = topic, failed, error

    DeadLetterError.__module__ = __name__
    DeadLetterError.__qualname__ = "DeadLetterError"
    return DeadLetterError


class KafkaDeadLetters:
    """Produces rejected records, original bytes untouched, to a dead-letter topic.

    The reason, error and origin travel as record headers (``nextstate.reason``,
    ``nextstate.error``, ``nextstate.origin``) so the value stays replayable as it was.

    No dead letter is lost:

    - One that would not fit the producer's ``max_request_size`` (1 MB unless configured:
      records rejected as ``too_large`` are big by definition), or that the broker refuses as
      too large, is sent cut to the first ``TRUNCATED_HEAD_BYTES`` (64 KiB) of its value,
      with ``nextstate.truncated: true``, ``nextstate.original_bytes`` (the value's size) and
      ``nextstate.sha256`` (the whole value's, hex) added; a key that alone would not fit is
      cut likewise (``nextstate.key_original_bytes``). The original stays in the input topic,
      at ``nextstate.origin``, until its retention ends.
    - A send that failed (after the producer's own retries, or at once, e.g. no metadata
      within ``max_block_ms``) is kept, and :meth:`flush` raises ``DeadLetterError`` (a
      ``KafkaError``) with how many and why. Checkpoints flush the sink before they return
      offsets, so no offset past a lost letter is committed; every flush sends the kept
      letters again (after a first failure new letters wait for it too, rather than block in
      a send each), and passes once all are written.
    - A flush waits at most ``flush_timeout_s`` for the broker: letters not acknowledged by
      then make it raise too, and stay in the producer (a later flush waits for them again,
      never sends them twice). Before, a flush during an outage waited for the producer's
      delivery timeout (120 s), or, idempotent, for the broker to come back.
    """

    def __init__(self, producer: Any, topic: str,
                 flush_timeout_s: float = FLUSH_TIMEOUT_S) -> None:
        self.producer = producer
        self.topic = topic
        self.flush_timeout_s = flush_timeout_s
        self.count = 0  # dead letters sent
        self.truncated = 0  # of which cut to fit
        self._lock = threading.Lock()  # the producer's IO thread reports failed sends
        self._unsent: list[tuple[Letter, BaseException | None]] = []  # with why (None: waited)
        self._in_flight = 0  # sent, neither acknowledged nor failed yet

    def send(self, value: bytes, key: bytes | None, reason: str, error: str,
             topic: str, partition: int, offset: int) -> None:
        headers = [("nextstate.reason", reason.encode()),
                   ("nextstate.error", error[:2000].encode()),
                   ("nextstate.origin", f"{topic}/{partition}/{offset}".encode())]
        letter: Letter = (value, key, headers)
        if _size(letter) > self._limit():
            letter = self._cut(letter)
        self._produce(letter)
        self.count += 1

    def _limit(self) -> int:
        config = getattr(self.producer, "config", None)
        size = config.get("max_request_size") if isinstance(config, dict) else None
        return int(size or DEFAULT_MAX_REQUEST_SIZE) - RECORD_OVERHEAD_BYTES

    def _cut(self, letter: Letter) -> Letter:
        value, key, headers = letter
        headers = [*headers, ("nextstate.truncated", b"true"),
                   ("nextstate.original_bytes", str(len(value)).encode()),
                   ("nextstate.sha256", hashlib.sha256(value).hexdigest().encode())]
        limit = self._limit()
        if key is not None and len(key) > min(TRUNCATED_HEAD_BYTES, limit // 4):
            headers.append(("nextstate.key_original_bytes", str(len(key)).encode()))
            key = key[:min(TRUNCATED_HEAD_BYTES, limit // 4)]
        room = limit - _size((b"", key, headers))
        self.truncated += 1
        return value[:max(0, min(TRUNCATED_HEAD_BYTES, room))], key, headers

    def _produce(self, letter: Letter) -> None:
        from kafka.errors import KafkaError

        with self._lock:
            if self._unsent:  # the producer is failing: wait for the next flush with them
                self._unsent.append((letter, None))
                return
            self._in_flight += 1
        value, key, headers = letter
        try:
            future = self.producer.send(self.topic, value=value, key=key, headers=headers)
        except KafkaError as exc:
            self._settled(letter, exc)
        else:
            future.add_both(self._settled, letter)

    def _settled(self, letter: Letter, outcome: Any) -> None:
        """A send's outcome (metadata, or the error: that letter is kept, to send again)."""
        with self._lock:
            self._in_flight -= 1
            if isinstance(outcome, BaseException):
                self._unsent.append((letter, outcome))

    def flush(self) -> None:
        """Return once every dead letter so far is written.

        Raises:
            DeadLetterError: some could not be (kept, and sent again by the next flush).
        """
        from kafka.errors import MessageSizeTooLargeError, RecordListTooLargeError

        def refused_size(letter: Letter, exc: BaseException | None) -> bool:
            # The broker's limit is under the producer's (a topic's max.message.bytes).
            return isinstance(exc, MessageSizeTooLargeError | RecordListTooLargeError) \
                and not _is_cut(letter)

        with self._lock:
            failed, self._unsent = self._unsent, []
        retry = [letter for letter, _ in failed]  # kept by an earlier flush, or failed since
        while True:
            for letter in retry:
                self._produce(letter)
            flush_within(self.producer, self.flush_timeout_s)
            with self._lock:
                failed, self._unsent = self._unsent, []
                waiting = self._in_flight
            if not any(refused_size(letter, exc) for letter, exc in failed):
                break
            # Those refused as too large go again, cut (each once), with the others, in order.
            retry = [self._cut(letter) if refused_size(letter, exc) else letter
                     for letter, exc in failed]
        if failed or waiting:
            with self._lock:
                self._unsent[:0] = failed
            error = next((exc for _, exc in failed if exc is not None), None)
            if error is None and waiting:
                from kafka.errors import KafkaTimeoutError

                error = KafkaTimeoutError(f"{waiting} not acknowledged within "
                                          f"{self.flush_timeout_s} s (the broker away?)")
            raise _dead_letter_error()(self.topic, len(failed) + waiting, error)

    def close(self) -> None:
        """Flush, then close the producer (also when the flush raised: then at once, giving
        up the letters not written; nothing past them was committed)."""
        flush_then_close(self.flush, self.producer, self.flush_timeout_s)


def _size(letter: Letter) -> int:
    value, key, headers = letter
    return len(value) + len(key or b"") + sum(len(k) + len(v) for k, v in headers)


def _is_cut(letter: Letter) -> bool:
    return any(name == "nextstate.truncated" for name, _ in letter[2])

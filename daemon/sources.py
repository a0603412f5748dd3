"""Where records come from: a JSON-lines file (or stdin), or a Kafka topic in a consumer group.

Both feed a :class:`~nextstate.daemon.pipeline.Pipeline` and follow the same rule: offsets
(line numbers for files) are committed only after ``pipeline.checkpoint()`` has made what they
cover durable, and only up to the oldest record a pending join still needs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, BinaryIO

import msgspec
import structlog
from kafka import ConsumerRebalanceListener, KafkaConsumer, KafkaProducer
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata, TopicPartition

from nextstate.buffers.statefile import read_json, write_atomically
from nextstate.daemon.config import DaemonConfig
from nextstate.daemon.deadletter import KafkaDeadLetters
from nextstate.daemon.pipeline import Pipeline
from nextstate.daemon.producers import FLUSH_TIMEOUT_S
from nextstate.daemon.service import Health, Progress

log = structlog.get_logger("nextstate.sources")


def _guard_spent_partition_records() -> None:
    """Work around a kafka-python 3.0 bug (3.0.12 checked): when a partition's fetched batch
    does not read (a compression codec it lacks, a batch failing its CRC check), ``take``
    raises once and then returns nothing from the spent record iterator, and the fetcher
    loops on it for good: the consumer thread at full CPU, deaf to a stop. Marking the
    records drained when ``take`` raises lets the error reach the loop (logged, not ready,
    retried with backoff) and the loop answer a stop."""
    from kafka.consumer.fetcher import Fetcher

    records = getattr(Fetcher, "PartitionRecords", None)
    take = getattr(records, "take", None)
    if take is None or getattr(take, "_nextstate_guard", False):
        return

    def guarded_take(self: Any, n: int | None = None) -> list[Any]:
        try:
            return take(self, n)
        except Exception:
            self.record_iterator = None  # falsy: the fetcher moves on (and fetches again)
            raise

    guarded_take._nextstate_guard = True  # type: ignore[attr-defined]
    records.take = guarded_take  # type: ignore[union-attr]


_guard_spent_partition_records()

FILE_OFFSETS = "file_offsets.json"
FILE_OFFSETS_REMEDY = ("move it aside: files are then read again from their first line "
                       "(tuples already stored are not stored twice)")
FINGERPRINT = "fingerprint:"  # + a file's topic, in file_offsets.json: which file the line is of
FINGERPRINT_BYTES = 4096  # how much of a file's first line identifies it
TOPIC_IDS = "kafka_topic_ids.json"  # which incarnation of each topic the offsets belong to
TOPIC_IDS_REMEDY = ("move it aside: each topic's id is then recorded anew (a broker that came "
                    "back empty before that goes unnoticed)")
FINAL_COMMIT_TIMEOUT_MS = 10_000  # the commit on stop: bounded, well inside a SIGTERM grace
PROBE_TIMEOUT_MS = 5_000  # a blocking look-up in the loop (ListOffsets, committed offsets)
MAX_BACKOFF_S = 30.0  # the longest wait before polling again after a Kafka error


class _Cadence:
    """Checkpoint when enough records or enough time has passed, whichever comes first."""

    def __init__(self, config: DaemonConfig) -> None:
        self.interval_s = config.commit_interval_s
        self.every = config.commit_every_records
        self.last = time.monotonic()

    def due(self, pipeline: Pipeline) -> bool:
        if (pipeline.records_since_checkpoint >= self.every
                or time.monotonic() - self.last >= self.interval_s):
            self.last = time.monotonic()
            return True
        return False


# -- files --------------------------------------------------------------------------------------
def run_file(pipeline: Pipeline, path: str, stop: threading.Event, health: Health,
             progress: Progress, follow: bool = False, poll_s: float = 0.2) -> None:
    """Process a JSON-lines file (``-`` = stdin) to its end, then close every pending join.

    A file run resumes where a killed run left off: its line offsets live in the state dir
    (``file_offsets.json``), checkpointed like Kafka offsets. ``follow`` tails the file until
    ``stop`` is set instead of finishing at its end.
    """
    max_bytes = pipeline.config.join.max_record_bytes
    if path == "-":
        lines = _lines_of(sys.stdin.buffer, stop, False, poll_s, max_bytes)
        _run_lines(pipeline, lines, f"stdin:{time.time()}", 0, None, stop, health, progress)
        return
    topic = f"file:{Path(path).resolve()}"
    log_file = _LogFile(path)
    try:
        start = _resume_line(pipeline, topic, log_file.fingerprint())
        lines = log_file.lines(stop, follow, poll_s, max_bytes)
        _run_lines(pipeline, lines, topic, start, log_file, stop, health, progress)
    finally:
        log_file.close()


def _run_lines(pipeline: Pipeline, lines: Iterator[bytes | None], topic: str, start: int,
               log_file: _LogFile | None, stop: threading.Event, health: Health,
               progress: Progress) -> None:
    cadence = _Cadence(pipeline.config)
    health.set_ready(True, "")
    if start:
        log.info("file_resume", source=topic, from_line=start)
    offset = 0
    last_line_at = time.monotonic()
    for line in lines:
        if stop.is_set():
            break
        if line is ROTATED:  # a followed log rotated: the file now at its path, from line 0
            log.info("file_rotated", source=topic, lines_of_the_old_one=offset)
            pipeline.forget_offsets((topic, 0))
            offset = start = 0
            continue
        if line is None:  # a followed file with nothing new: its event clock runs on
            pipeline.advance_quiet(time.monotonic() - last_line_at)
        else:
            last_line_at = time.monotonic()
            if offset >= start and line.strip():
                if offset == 0 and line[:3] == UTF8_BOM:
                    line = line[3:]  # saved as "UTF-8 with BOM" (Windows tools): no JSON
                pipeline.process(line.rstrip(b"\r\n"), None, topic, 0, offset)
                if pipeline.use_event_time:
                    # Event time moves with every record: close what went idle (the tuples
                    # wait for a tick: a buffer write per record cost 100 us of CPU each).
                    pipeline.close_idle()
            offset += 1
        # Every 256 lines, and whenever a followed file has nothing new.
        if line is None or offset % 256 == 1:
            pipeline.tick()
            health.beat()
            progress.update()
            if cadence.due(pipeline):
                _save_file_offsets(pipeline, pipeline.checkpoint(), topic, log_file)
    if not stop.is_set():
        pipeline.finish()  # the whole file is in: no next state will come for what is pending
    _save_file_offsets(pipeline, pipeline.checkpoint(), topic, log_file)
    health.set_ready(False, "finished")


UTF8_BOM = b"\xef\xbb\xbf"
"""What a file saved as "UTF-8 with BOM" starts with; its first line is read without it."""

ROTATED = b"\0rotated"
"""Yielded by :meth:`_LogFile.lines` when a followed log was rotated (never a line: each
ends with a newline or is the file's last)."""


class _LogFile:
    """A file source's file: told by its first line, and reopened when, followed, the path
    names another file (rotated by a rename) or it shrank (truncated in place), as ``tail -F``
    does. Before, a followed log that was rotated was read no more."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._open()

    def _open(self) -> None:
        self.fh: BinaryIO = open(self.path, "rb")  # noqa: SIM115 - closed by close()
        self._first = self.fingerprint()

    def fingerprint(self) -> int | None:
        """A hash of the open file's first line (its first FINGERPRINT_BYTES at most), as
        log shippers tell a rotated file from the one before; ``None`` until it has one."""
        data = os.pread(self.fh.fileno(), FINGERPRINT_BYTES, 0)
        newline = data.find(b"\n")
        if newline < 0 and len(data) < FINGERPRINT_BYTES:
            return None
        first = data if newline < 0 else data[:newline + 1]
        return int.from_bytes(hashlib.blake2b(first, digest_size=7).digest(), "big")

    def _rotated(self) -> bool:
        try:
            now = os.stat(self.path)
        except FileNotFoundError:
            return False  # moved away, its successor not created yet
        own = os.fstat(self.fh.fileno())
        if (now.st_dev, now.st_ino) != (own.st_dev, own.st_ino) or now.st_size < self.fh.tell():
            return True
        # Truncated in place and written past where this was read to before it looked: its
        # first line is another one.
        first = self.fingerprint()
        if self._first is None:
            self._first = first
        return first is not None and first != self._first

    def lines(self, stop: threading.Event, follow: bool, poll_s: float,
              max_bytes: int) -> Iterator[bytes | None]:
        """:func:`_lines_of` the file; followed, on to the next file at its path once this
        one is read to its end and rotated, with :data:`ROTATED` between them."""
        while True:
            yield from _lines_of(self.fh, stop, follow, poll_s, max_bytes,
                                 self._rotated if follow else None)
            if not follow or stop.is_set():
                return
            self.fh.close()
            self._open()
            yield ROTATED

    def close(self) -> None:
        self.fh.close()


def _lines_of(fh: BinaryIO, stop: threading.Event, follow: bool, poll_s: float,
              max_bytes: int, rotated: Callable[[], bool] | None = None
              ) -> Iterator[bytes | None]:
    """The file's lines; following it, ``None`` each time it has nothing new (then waits,
    and ends if ``rotated()`` says the file was rotated: checked before reading on, so that
    a file truncated and written again is not read from the middle).

    A line longer than ``max_bytes`` comes cut to its first ``max_bytes + 1`` bytes (the
    pipeline dead-letters it as too large) and the rest of it is read past, never held:
    before, a file without newlines (a binary file given by mistake) was read whole into
    memory as one line.
    """
    head = b""  # the line so far: at most max_bytes + 1 bytes of it
    while True:
        room = max_bytes + 1 - len(head)
        limit = room if room > 0 else 1 << 20
        chunk = fh.readline(limit)
        if room > 0:
            head += chunk
        if chunk.endswith(b"\n"):
            yield head
            head = b""
        elif len(chunk) == limit:
            continue  # the line goes on, and more of it is there to read
        elif not follow:  # the end of the file (a last line without its newline)
            if head:
                yield head
            return
        else:  # caught up, maybe mid-line: the writer will finish it
            yield None  # the caller ticks and checkpoints while it waits
            if stop.wait(poll_s) or (rotated is not None and rotated()):
                return


def _file_offsets(pipeline: Pipeline) -> dict[str, int]:
    """``file:PATH`` -> the line to resume at; a file that does not read is an error
    (:class:`~nextstate.buffers.statefile.CorruptStateFile`), never taken for none."""
    path = pipeline.state_dir / FILE_OFFSETS
    if not path.exists():
        return {}
    return read_json(path, dict[str, Annotated[int, msgspec.Meta(ge=0)]], FILE_OFFSETS_REMEDY)


def _resume_line(pipeline: Pipeline, topic: str, fingerprint: int | None) -> int:
    """The line a file run resumes at: where the last run left this file, or 0 when the file
    now at that path is another one (rotated, replaced: its first line differs). Before,
    the new file's lines up to the old one's length were skipped as already read."""
    offsets = _file_offsets(pipeline)
    start = offsets.get(topic, 0)
    known = offsets.get(FINGERPRINT + topic)
    if start and known is not None and fingerprint not in (known, None):
        log.warning("file_replaced", source=topic, lines_of_the_old_one=start,
                    action="read from its first line")
        pipeline.forget_offsets((topic, 0))
        return 0
    return start


def _save_file_offsets(pipeline: Pipeline, committable: dict[tuple[str, int], int],
                       file_topic: str, log_file: _LogFile | None) -> None:
    offsets = _file_offsets(pipeline)
    offsets.update({topic: offset for (topic, _), offset in committable.items()
                    if topic.startswith("file:")})
    # the file these lines are of: the one open, whatever the path names by now
    fingerprint = log_file.fingerprint() if log_file is not None else None
    if fingerprint is not None:
        offsets[FINGERPRINT + file_topic] = fingerprint
    # fsynced: a file emptied by a power loss would now stop the next run (exit 6)
    write_atomically(pipeline.state_dir / FILE_OFFSETS, json.dumps(offsets).encode())


# -- Kafka --------------------------------------------------------------------------------------
class _Rebalance(ConsumerRebalanceListener):
    """Commit what is safe before partitions leave; forget their pending joins, whatever the
    commit did: their next owner rebuilds them, and if both held them, both would close the
    same actions (duplicate tuples)."""

    def __init__(self, runner: KafkaRunner) -> None:
        self.runner = runner
        self.low_watermarks: dict[Any, int] = {}  # of the partitions just revoked

    def on_partitions_revoked(self, revoked: Any) -> None:
        if not revoked:
            return
        gone = [(tp.topic, tp.partition) for tp in revoked]
        # kafka-python 3 runs listeners on its IO thread, where a blocking commit is refused:
        # the commit is queued ahead of the group re-join on the same coordinator connection.
        # Closing the consumer (stop, a stalled one replaced), the runner has just committed.
        with self.runner.lock:
            try:
                if not self.runner.closing:
                    self.runner.commit(only=set(gone))
            except KafkaError as exc:
                _checkpoint_failed("partitions_revoked", gone, exc)
            finally:
                marks = self.runner.pipeline.low_watermarks()
                self.low_watermarks = {TopicPartition(*tp): marks[tp]
                                       for tp in gone if tp in marks}
                self.runner.pipeline.drop_partitions(gone)

    def on_partitions_lost(self, lost: Any) -> None:
        # Evicted from the group (e.g. a broker that came back without it): a commit would be
        # refused, but what was processed is still made durable.
        if not lost:
            return
        gone = [(tp.topic, tp.partition) for tp in lost]
        with self.runner.lock:
            try:
                self.runner.pipeline.checkpoint()
            except KafkaError as exc:
                _checkpoint_failed("partitions_lost", gone, exc)
            finally:
                self.runner.pipeline.drop_partitions(gone)

    def on_partitions_assigned(self, assigned: Any) -> None:
        # A partition revoked and assigned back keeps its fetch position in kafka-python 3
        # (eager protocol too), but its pending joins were dropped: read it again from the low
        # watermark just committed, so the replays rebuild them.
        for tp in assigned:
            if tp in self.low_watermarks:
                self.runner.consumer.seek(tp, self.low_watermarks[tp])
        self.low_watermarks = {}
        log.info("partitions_assigned", partitions=sorted(f"{tp.topic}/{tp.partition}"
                                                          for tp in assigned))


def _checkpoint_failed(event: str, partitions: list[tuple[str, int]], exc: Exception) -> None:
    """A rebalance's checkpoint could not write its dead letters or tuples. Not raised: that
    would stop the group's rebalance (kafka-python calls the listener again on every poll)
    while the broker or the DLQ is away. The letters and tuples are kept; every checkpoint of
    the loop raises until they are written, and commits nothing before."""
    log.warning("rebalance_checkpoint_failed", rebalance=event, error=repr(exc)[:300],
                partitions=[f"{t}/{p}" for t, p in partitions],
                action="their pending joins are dropped all the same; nothing is committed "
                       "until what could not be written is")


class KafkaRunner:
    """Consumes the interaction topic in a consumer group and drives the pipeline.

    Args:
        pipeline: the pipeline (its dead-letter sink should be a :class:`KafkaDeadLetters`).
        config: the daemon configuration.
        stop: set it (SIGTERM/SIGINT) to stop polling, checkpoint, commit and return.
        health: readiness: assigned partitions and a working broker connection.
        consumer: an already built consumer (tests); default: built from ``config.kafka``.
    """

    def __init__(self, pipeline: Pipeline, config: DaemonConfig, stop: threading.Event,
                 health: Health, progress: Progress, consumer: KafkaConsumer | None = None
                 ) -> None:
        self.pipeline = pipeline
        self.config = config
        self.stop = stop
        self.health = health
        self.progress = progress
        # Read before the consumer is built: a file that does not read stops us with nothing
        # to close (CorruptStateFile).
        self._topic_ids_path = pipeline.state_dir / TOPIC_IDS
        self._topic_ids: dict[str, str] = (
            read_json(self._topic_ids_path, dict[str, str], TOPIC_IDS_REMEDY)
            if self._topic_ids_path.exists() else {})
        self.consumer = consumer or KafkaConsumer(**config.kafka.consumer_kwargs())
        self.lag = 0
        self.reachable = True
        self._own_consumer = consumer is None  # only a consumer we built is rebuilt
        self._last_progress = time.monotonic()
        # Records waiting (lag), broker reachable, not paused, yet nothing fetched this long:
        # the consumer is stuck (see _fresh_consumer).
        self._stall_s = max(10.0, 3 * config.kafka.session_timeout_ms / 1000)
        # Look-ups block the loop, and backoff waits between polls: each within the limit.
        self._probe_ms = min(PROBE_TIMEOUT_MS, between_polls_ms(config))
        self._max_backoff_s = min(MAX_BACKOFF_S, between_polls_ms(config) / 1000)
        self.paused_for: str | None = None  # why consumption is paused (backpressure)
        self.closing = False  # closing the consumer, just after a final commit
        # kafka-python 3 runs the rebalance listener on its IO thread, and a group join goes
        # on there after poll() returned: the listener and this loop take turns on the
        # pipeline. Never held across a blocking client call (those wait on the IO thread).
        self.lock = threading.RLock()
        # The client's broker connections, each with when it was first seen: records are held
        # back until the metadata is newer than every connection (see _held_back).
        self._connections: dict[Any, tuple[Any, float]] = {}

    def _process(self, batches: dict[Any, list[Any]]) -> None:
        """Process a poll's records; on a Kafka error among them, seek each partition back to
        its first record not processed, so that the next poll reads them again (the consumer
        is past the whole batch: without it they were skipped, and later commits went past
        them) before the error goes on to the loop's backoff."""
        done: dict[Any, int] = {}
        try:
            for tp, records in batches.items():
                for record in records:
                    self.pipeline.process(record.value, record.key, tp.topic, tp.partition,
                                          record.offset)
                    done[tp] = record.offset + 1
        except KafkaError:
            for tp, records in batches.items():
                if done.get(tp, records[0].offset) <= records[-1].offset:
                    self.consumer.seek(tp, done.get(tp, records[0].offset))
            raise

    def run(self) -> None:
        kafka = self.config.kafka
        self.consumer.subscribe([kafka.topic], listener=_Rebalance(self))
        cadence = _Cadence(self.config)
        backoff = 0.5
        self.pipeline.write_batch = max(self.pipeline.write_batch, 4 * kafka.max_poll_records)
        while not self.stop.is_set():
            try:
                batches = self.consumer.poll(timeout_ms=kafka.poll_timeout_ms,
                                             max_records=kafka.max_poll_records)
                if self._held_back(batches):
                    batches = {}
                replaced = self._check_topic_id()
                batches = {tp: records for tp, records in batches.items()
                           if records and tp.topic not in replaced  # (fetched again)
                           and self._check_position(tp, records[0].offset)}
                with self.lock:
                    self._process(batches)
                    self.pipeline.write_pending()
                    self.pipeline.tick()
                if cadence.due(self.pipeline):
                    self.commit()
                backoff = 0.5
            except KafkaError as exc:
                # The broker is away: not ready; back off and retry (nothing was committed
                # past what is durable, so nothing is lost).
                self.health.set_ready(False, f"kafka: {type(exc).__name__}")
                self.reachable = False
                log.warning("kafka_error", error=repr(exc)[:300], retry_in_s=backoff)
                self.stop.wait(backoff)
                backoff = min(backoff * 2, self._max_backoff_s)
                continue
            assigned = self.consumer.assignment()
            self._apply_backpressure(assigned)
            reachable = self._broker_reachable()
            if reachable != self.reachable:
                self.reachable = reachable
                if reachable:
                    log.info("broker_reconnected")
                else:
                    log.warning("broker_unreachable", retry="kafka client reconnect backoff")
            self.health.set_ready(bool(assigned) and reachable,
                                  "" if assigned and reachable else
                                  "broker unreachable" if not reachable else
                                  "no partitions assigned")
            self.health.beat()
            self.lag = self._lag(assigned)
            self.progress.update(self.lag)
            if batches or not assigned or not reachable or self.paused_for:
                self._last_progress = time.monotonic()
            elif time.monotonic() - self._last_progress > self._stall_s:
                # Nothing fetched for a while: idle, or stuck? The client's own lag figures
                # cannot tell (its high watermarks come from the fetches that stopped), so ask.
                self._last_progress = time.monotonic()
                stuck = self._records_waiting(assigned)
                if stuck:
                    self._fresh_consumer(stuck)
        self.commit(final=True)

    def _apply_backpressure(self, assigned: Any) -> None:
        """Pause every assigned partition while the pipeline is behind, resume when it is not.

        Paused partitions are not fetched, so memory stays bounded, while ``poll`` goes on
        (heartbeats keep the group membership).
        """
        reason = self.pipeline.behind()
        if reason and assigned and not self.paused_for:
            self.consumer.pause(*assigned)
            self.paused_for = reason
            log.warning("backpressure_pause", reason=reason,
                        partitions=sorted(f"{tp.topic}/{tp.partition}" for tp in assigned))
        elif self.paused_for and not reason:
            self.consumer.resume(*self.consumer.paused())
            log.info("backpressure_resume", was=self.paused_for)
            self.paused_for = None
        elif self.paused_for and assigned:
            self.consumer.pause(*assigned)  # partitions assigned by a rebalance meanwhile

    def _fresh_consumer(self, reason: str) -> None:
        """Replace a stalled consumer with a fresh one that rejoins the group.

        Seen with kafka-python 3.0.12 after a network cut: a fetch in flight when the
        connection dropped never completes, and no further fetch goes to that broker, so the
        partitions stall with records waiting. The fresh consumer resumes from the committed
        offsets; the checkpoint makes the re-read records replays.
        """
        self._last_progress = time.monotonic()
        if not self._own_consumer:
            return
        log.warning("consumer_stalled", reason=reason, stalled_s=self._stall_s,
                    action="replacing the consumer")
        try:
            self.commit(final=True)
        finally:  # replaced even if the commit failed (then raised on): it reads no more
            with self.lock:
                self.pipeline.drop_partitions([(tp.topic, tp.partition)
                                               for tp in self.consumer.assignment()])
            self._close_consumer()
            self.consumer = KafkaConsumer(**self.config.kafka.consumer_kwargs())
            self.consumer.subscribe([self.config.kafka.topic], listener=_Rebalance(self))

    def _check_position(self, tp: Any, first: int) -> bool:
        """Notice a log that is not the one we processed: a broker that came back empty.

        Records start at the group's committed offset after an assignment, and follow on from
        the last one within it. Starting lower means the client's reset policy
        (``auto_offset_reset``) moved the position: the committed offset was missing or out
        of range. Offsets checkpointed beyond that point describe another log, and would make
        the new records look like replays, so they are forgotten (at-least-once from there:
        tuples already stored are dropped again by their keys).

        Returns whether to process the records: not while the group's offset cannot be read
        (the broker went away since the fetch); the partition is then set back to ``first``,
        to be fetched and checked again.
        """
        key = (tp.topic, tp.partition)
        expected = self.pipeline.seen.get(key)
        horizon = max(self.pipeline.processed.get(key, 0), self.pipeline.seen.get(key, 0))
        if expected is None:
            try:
                if not self._broker_reachable():
                    raise KafkaError("group coordinator unreachable")
                expected = self.consumer.committed(tp, timeout_ms=self._probe_ms)
            except KafkaError:
                self.consumer.seek(tp, first)
                return False
            # We never committed it and the group has no offset: after a restart before the
            # first commit this is the same log read again from the reset position (replays),
            # after a broker that came back empty it is another log. The same log reaches at
            # least as far as what was processed; another one may not.
            if (expected is None and key not in self.pipeline.committed
                    and (first >= horizon or self._log_end(tp) >= horizon)):
                return True
        if expected is not None and first >= expected:
            return True
        if first < horizon:
            self._log_reset(tp, "records start below the checkpointed offset",
                            first_offset=first, committed=expected, checkpointed=horizon)
            with self.lock:
                self.pipeline.forget_offsets(key)
        return True

    def _log_reset(self, tp: Any, reason: str, **fields: Any) -> None:
        log.error("kafka_offsets_reset", partition=f"{tp.topic}/{tp.partition}", reason=reason,
                  policy=self.config.kafka.auto_offset_reset,
                  action="the broker's log is not the one processed (did it come back "
                         "empty?): processing it from the reset position", **fields)

    def _log_end(self, tp: Any) -> int:
        """The partition's log end: the high watermark of the fetch that just returned its
        records (Tansu 0.6.0 answers ListOffsets "latest" with the last batch's base offset
        + 1, short of the end, so that is only the fallback); -1 if unknown."""
        high = self.consumer.highwater(tp)
        if high is not None:
            return int(high)
        try:
            return int(self.consumer.end_offsets([tp], timeout_ms=self._probe_ms)[tp])
        except KafkaError:
            return -1

    def _held_back(self, batches: dict[Any, list[Any]]) -> bool:
        """Hold back records while a broker connection is newer than the client's metadata,
        and let them be fetched again once the metadata is refreshed.

        The broker that answers on a new connection may be another one that came back empty:
        its records, fetched at the old positions (kafka-python 3.0.12 fetches by topic name),
        would pass for the rest of the old log. The topic id in fresh metadata tells
        (:meth:`_check_topic_id`), so nothing is processed before it is known. Costs a
        metadata round trip after each reconnect, nothing otherwise.
        """
        try:  # kafka-python has no public call for either
            connections = dict(self.consumer._client._manager._conns)
            cluster = self.consumer._client.cluster
            refreshed_s = cluster._last_successful_refresh_ms / 1000
        except AttributeError:  # another client version: no hold
            return False
        now = time.monotonic()
        first_seen = {}
        for node, conn in connections.items():
            known, seen = self._connections.get(node, (None, now))
            first_seen[node] = (conn, seen if known is conn else now)
        self._connections = first_seen
        if all(seen < refreshed_s for _, seen in self._connections.values()):
            return False
        cluster.request_update()
        for tp, records in batches.items():
            if records:
                self.consumer.seek(tp, records[0].offset)
        return True

    def _topic_id(self, topic: str) -> str | None:
        """The topic's id (KIP-516, Kafka 2.8+) from the client's metadata; None if unknown.
        kafka-python has no public call for it."""
        try:
            topic_id = self.consumer._client.cluster.topic_id(topic)
        except AttributeError:  # another client version: rely on the offsets alone
            return None
        return None if topic_id is None else str(topic_id)

    def _check_topic_id(self) -> set[str]:
        """Notice that the topic is another incarnation than the one whose offsets we hold:
        a broker that came back empty (or a deleted and recreated topic) has a new topic id.

        Its partitions' checkpointed offsets and pending joins are forgotten, and their
        positions set anew: the group's committed offset on the new log if it has one, else
        the reset policy. This catches what :meth:`_check_position` cannot tell apart from
        replays, e.g. a partition that was processed but never committed before the broker
        came back empty. Returns the topics replaced (their records in hand are dropped and
        fetched again from the new positions).
        """
        topic = self.config.kafka.topic
        current = self._topic_id(topic)
        known = self._topic_ids.get(topic)
        if current is None or current == known:
            return set()
        self._topic_ids[topic] = current
        if known is None:  # first sight (or a state dir from before topic ids were kept)
            self._save_topic_ids()
            return set()
        with self.lock:
            held = {key for offsets in (self.pipeline.processed, self.pipeline.seen,
                                        self.pipeline.committed)
                    for key in offsets if key[0] == topic}
            self.pipeline.drop_partitions(sorted(held))
            for key in held:
                self.pipeline.forget_offsets(key)
            # The forgotten offsets leave the checkpoint before the new id is saved: a crash
            # in between finds the old id and forgets again, never applies old offsets to a
            # new log.
            self.pipeline.checkpoint()
        self._save_topic_ids()
        log.error("kafka_offsets_reset", topic=topic, reason="topic id changed",
                  topic_id=current, was=known, forgotten=sorted(f"{t}/{p}" for t, p in held),
                  policy=self.config.kafka.auto_offset_reset,
                  action="the broker's log is not the one processed (did it come back "
                         "empty?): reading it from the group's offset or the reset position")
        for tp in sorted(self.consumer.assignment()):
            if tp.topic == topic:
                try:
                    committed = self.consumer.committed(tp, timeout_ms=self._probe_ms)
                except KafkaError:
                    committed = None
                self._reposition(tp, committed)
        return {topic}

    def _reposition(self, tp: Any, offset: int | None) -> None:
        """Seek to ``offset``, or where the reset policy says when it is None."""
        if offset is not None:
            self.consumer.seek(tp, offset)
        elif self.config.kafka.auto_offset_reset == "latest":
            self.consumer.seek_to_end(tp)
        else:
            self.consumer.seek_to_beginning(tp)

    def _save_topic_ids(self) -> None:
        write_atomically(self._topic_ids_path, json.dumps(self._topic_ids).encode())

    def _records_waiting(self, assigned: Any) -> str | None:
        """Does any assigned partition have records the consumer is not fetching? Returns
        why it is stuck, or None.

        Asks the partition leaders for their log ends (ListOffsets): the client's high
        watermarks come from the fetches that may have stopped. No answer while the group
        coordinator answers is a stall too. A position past the high watermark of the last
        fetch means the broker's log is shorter than the one read (a broker that came back
        empty): Kafka answers such a fetch with OFFSET_OUT_OF_RANGE and the client applies the
        reset policy, but Tansu 0.6.0 returns no records and no error, so the reset is
        applied here. (Tansu's ListOffsets "latest" is the last batch's base offset + 1,
        short of the end: it can show records waiting, never a log that ends early.)
        """
        try:
            ends = self.consumer.end_offsets(list(assigned), timeout_ms=self._probe_ms)
        except KafkaError as exc:
            return f"the partition leaders do not answer: {exc!r}"[:300]
        waiting = 0
        for tp in assigned:
            try:
                position = self.consumer.position(tp, timeout_ms=self._probe_ms)
            except KafkaError as exc:
                return f"no position for {tp.topic}/{tp.partition}: {exc!r}"[:300]
            high = self.consumer.highwater(tp)
            if position is None:
                continue
            if high is not None and position > high:
                key = (tp.topic, tp.partition)
                self._log_reset(tp, "fetch position past the log end", position=position,
                                log_end=high)
                with self.lock:
                    self.pipeline.drop_partitions([key])
                    self.pipeline.forget_offsets(key)
                self._reposition(tp, None)
            else:
                waiting += max(0, max(ends.get(tp, 0), high or 0) - position)
        return f"{waiting} records waiting, none fetched" if waiting else None

    def _broker_reachable(self) -> bool:
        """Is the group coordinator connected? kafka-python has no public call for it and
        ``poll`` does not raise while it reconnects, so this reads its connection state."""
        try:
            node = self.consumer._coordinator.coordinator_id
            return node is not None and bool(self.consumer._client.connected(node))
        except AttributeError:  # another client version: rely on errors from poll
            return True

    def commit(self, only: set[tuple[str, int]] | None = None,
               final: bool = False) -> dict[tuple[str, int], int]:
        """Checkpoint the pipeline, then commit its safe offsets for assigned partitions.

        The checkpoint always happens; the commit only follows it, so an offset is never
        committed before what it covers is durable. Commits are asynchronous (kafka-python 3
        also refuses blocking calls in rebalance listeners) and skipped while the group
        coordinator is unreachable, so an outage never holds the loop for the client's request
        timeout: the next checkpoint commits the newer offsets. ``final`` (stop, replacing a
        stalled consumer) waits for the commit, at most ``FINAL_COMMIT_TIMEOUT_MS``; if the
        broker is away it is skipped, and a restart re-reads from the group's last offset,
        the records already processed being replays. Returns the offsets to commit.
        """
        with self.lock:
            safe = self.pipeline.checkpoint()
        assigned = {(tp.topic, tp.partition) for tp in self.consumer.assignment()}
        offsets = {TopicPartition(t, p): OffsetAndMetadata(o, "", -1)
                   for (t, p), o in safe.items()
                   if (t, p) in assigned and (only is None or (t, p) in only)}
        if not offsets:
            return {}
        if not self._broker_reachable():
            log.log(logging.WARNING if final else logging.DEBUG, "commit_deferred",
                    reason="broker unreachable", final=final,
                    note="offsets are durable in the checkpoint; committed when reachable")
        elif final:
            try:
                self.consumer.commit(offsets, timeout_ms=FINAL_COMMIT_TIMEOUT_MS)
            except KafkaError as exc:
                log.warning("commit_failed", error=repr(exc)[:300], final=True)
            else:
                self._commit_done(offsets, None)
        else:
            self.consumer.commit_async(offsets, callback=self._commit_done)
        return {(tp.topic, tp.partition): om.offset for tp, om in offsets.items()}

    def _commit_done(self, offsets: dict[Any, Any], response: Any) -> None:
        """kafka-python calls it from ``poll`` (this thread) when a commit completes."""
        if isinstance(response, Exception):
            log.warning("commit_failed", error=repr(response)[:300], retry="next checkpoint")
            return
        with self.lock:
            self.pipeline.committed.update(
                {(tp.topic, tp.partition): om.offset for tp, om in offsets.items()})
        log.debug("committed", offsets={f"{tp.topic}/{tp.partition}": om.offset
                                        for tp, om in offsets.items()})

    def _lag(self, assigned: Any) -> int:
        lag = 0
        for tp in assigned:
            high = self.consumer.highwater(tp)
            if high is not None:
                lag += max(0, high - self.pipeline.seen.get((tp.topic, tp.partition), 0))
        return lag

    def close(self) -> None:
        self._close_consumer()

    def _close_consumer(self) -> None:
        """Close the consumer right after a final commit: its revoke on close only drops the
        partitions (a second checkpoint would wait for an absent broker once more)."""
        self.closing = True
        try:
            self.consumer.close(autocommit=False)
        finally:
            self.closing = False


def between_polls_ms(config: DaemonConfig) -> int:
    """The longest the loop may block between two polls: a third of the poll interval the
    group allows (a wait past ``max_poll_interval_ms`` makes the client leave the group, a
    rebalance for every member, though the broker was fine)."""
    return config.kafka.max_poll_interval_ms // 3


def producer_wait_s(config: DaemonConfig) -> float:
    """How long a checkpoint waits for a producer's acknowledgements (and a send for its
    topic's metadata): within :func:`between_polls_ms`, as look-ups."""
    return min(FLUSH_TIMEOUT_S, between_polls_ms(config) / 1000)


def kafka_dead_letters(config: DaemonConfig) -> KafkaDeadLetters:
    """A producer-backed dead-letter sink for ``config.kafka.dlq``."""
    wait_s = producer_wait_s(config)
    producer = KafkaProducer(bootstrap_servers=config.kafka.bootstrap_servers, acks="all",
                             client_id=f"{config.kafka.client_id}-dlq",
                             max_block_ms=int(wait_s * 1000), **config.kafka.security_kwargs())
    return KafkaDeadLetters(producer, config.kafka.dlq, wait_s)

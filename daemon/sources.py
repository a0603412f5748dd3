"""Where records come from: a JSON-lines file (or stdin), or a Kafka topic in a consumer group.

Both feed a :class:`~nextstate.daemon.pipeline.Pipeline` and follow the same rule: offsets
(line numbers for files) are committed only after ``pipeline.checkpoint()`` has made what they
cover durable, and only up to the oldest record a pending join still needs.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import structlog
from kafka import ConsumerRebalanceListener, KafkaConsumer, KafkaProducer
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata, TopicPartition

from nextstate.daemon.config import DaemonConfig
from nextstate.daemon.deadletter import KafkaDeadLetters
from nextstate.daemon.pipeline import Pipeline
from nextstate.daemon.service import Health, Progress

log = structlog.get_logger("nextstate.sources")

FILE_OFFSETS = "file_offsets.json"


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
    if path == "-":
        topic, start = f"stdin:{time.time()}", 0
        lines: Iterator[bytes] = iter(sys.stdin.buffer.readline, b"")
    else:
        topic = f"file:{Path(path).resolve()}"
        start = _file_offsets(pipeline).get(topic, 0)
        lines = _read_lines(path, stop, follow, poll_s)
    cadence = _Cadence(pipeline.config)
    health.set_ready(True, "")
    if start:
        log.info("file_resume", source=topic, from_line=start)
    for offset, line in enumerate(lines):
        if stop.is_set():
            break
        if offset >= start and line.strip():
            pipeline.process(line.rstrip(b"\r\n"), None, topic, 0, offset)
            if pipeline.use_event_time:
                pipeline.tick()  # event time moves with every record: close what went idle
        if offset % 256 == 0:
            pipeline.tick()
            health.beat()
            progress.update()
            if cadence.due(pipeline):
                _save_file_offsets(pipeline, pipeline.checkpoint())
    if not stop.is_set():
        pipeline.finish()  # the whole file is in: no next state will come for what is pending
    _save_file_offsets(pipeline, pipeline.checkpoint())
    health.set_ready(False, "finished")


def _read_lines(path: str, stop: threading.Event, follow: bool,
                poll_s: float) -> Iterator[bytes]:
    with open(path, "rb") as fh:
        partial = b""
        while True:
            line = fh.readline()
            if line.endswith(b"\n"):
                yield partial + line
                partial = b""
            elif line:
                partial += line  # a writer mid-line: wait for the rest when following
                if not follow:
                    yield partial
                    return
            elif not follow or stop.wait(poll_s):
                if partial and not follow:
                    yield partial
                return


def _file_offsets(pipeline: Pipeline) -> dict[str, int]:
    path = pipeline.state_dir / FILE_OFFSETS
    return json.loads(path.read_text()) if path.exists() else {}


def _save_file_offsets(pipeline: Pipeline, committable: dict[tuple[str, int], int]) -> None:
    offsets = _file_offsets(pipeline)
    offsets.update({topic: offset for (topic, _), offset in committable.items()
                    if topic.startswith("file:")})
    tmp = pipeline.state_dir / (FILE_OFFSETS + ".tmp")
    tmp.write_text(json.dumps(offsets))
    tmp.replace(pipeline.state_dir / FILE_OFFSETS)


# -- Kafka --------------------------------------------------------------------------------------
class _Rebalance(ConsumerRebalanceListener):
    """Commit what is safe before partitions leave; forget their pending joins."""

    def __init__(self, runner: KafkaRunner) -> None:
        self.runner = runner

    def on_partitions_revoked(self, revoked: Any) -> None:
        if not revoked:
            return
        gone = [(tp.topic, tp.partition) for tp in revoked]
        # kafka-python 3 runs listeners on its IO thread, where a blocking commit is refused:
        # the commit is queued ahead of the group re-join on the same coordinator connection.
        self.runner.commit(only=set(gone), blocking=False)
        self.runner.pipeline.drop_partitions(gone)

    def on_partitions_assigned(self, assigned: Any) -> None:
        log.info("partitions_assigned", partitions=sorted(f"{tp.topic}/{tp.partition}"
                                                          for tp in assigned))


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
        self.consumer = consumer or KafkaConsumer(**config.kafka.consumer_kwargs())
        self.lag = 0
        self.reachable = True
        self._own_consumer = consumer is None  # only a consumer we built is rebuilt
        self._last_progress = time.monotonic()
        # Records waiting (lag), broker reachable, not paused, yet nothing fetched this long:
        # the consumer is stuck (see _fresh_consumer).
        self._stall_s = max(10.0, 3 * config.kafka.session_timeout_ms / 1000)
        self.paused_for: str | None = None  # why consumption is paused (backpressure)

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
                for tp, records in batches.items():
                    if records:
                        self._check_position(tp, records[0].offset)
                    for record in records:
                        self.pipeline.process(record.value, record.key, tp.topic,
                                              tp.partition, record.offset)
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
                backoff = min(backoff * 2, 30.0)
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
            # A partition whose fetch never completes has no high watermark: its lag is
            # unknown, not zero, and counts as waiting records for the stall watchdog.
            waiting = self.lag or any(self.consumer.highwater(tp) is None for tp in assigned)
            if batches or not (waiting and reachable and not self.paused_for):
                self._last_progress = time.monotonic()
            elif time.monotonic() - self._last_progress > self._stall_s:
                self._fresh_consumer()
        self.commit()

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

    def _fresh_consumer(self) -> None:
        """Replace a stalled consumer with a fresh one that rejoins the group.

        Seen with kafka-python 3.0.12 after a network cut: a fetch in flight when the
        connection dropped never completes, and no further fetch goes to that broker, so the
        partitions stall with records waiting. The fresh consumer resumes from the committed
        offsets; the checkpoint makes the re-read records replays.
        """
        self._last_progress = time.monotonic()
        if not self._own_consumer:
            return
        log.warning("consumer_stalled", lag=self.lag, stalled_s=self._stall_s,
                    action="replacing the consumer")
        self.commit()
        self.pipeline.drop_partitions([(tp.topic, tp.partition)
                                       for tp in self.consumer.assignment()])
        self.consumer.close(autocommit=False)
        self.consumer = KafkaConsumer(**self.config.kafka.consumer_kwargs())
        self.consumer.subscribe([self.config.kafka.topic], listener=_Rebalance(self))

    def _check_position(self, tp: Any, first: int) -> None:
        """Notice a log that is not the one we processed: a broker that came back empty.

        Records start at the group's committed offset after an assignment, and follow on from
        the last one within it. Starting lower means the client's reset policy
        (``auto_offset_reset``) moved the position: the committed offset was missing or out
        of range. Offsets checkpointed beyond that point describe another log, and would make
        the new records look like replays, so they are forgotten (at-least-once from there:
        tuples already stored are dropped again by their keys).
        """
        key = (tp.topic, tp.partition)
        expected = self.pipeline.seen.get(key)
        if expected is None:
            expected = self.consumer.committed(tp)
            if expected is None and key not in self.pipeline.committed:
                return  # we never committed it: a missing group offset proves nothing
        if expected is not None and first >= expected:
            return
        horizon = max(self.pipeline.processed.get(key, 0), self.pipeline.seen.get(key, 0))
        if first < horizon:
            log.error("kafka_offsets_reset", partition=f"{tp.topic}/{tp.partition}",
                      first_offset=first, committed=expected, checkpointed=horizon,
                      policy=self.config.kafka.auto_offset_reset,
                      action="the broker's log is not the one processed (did it come back "
                             "empty?): processing it from the reset position")
            self.pipeline.forget_offsets(key)

    def _broker_reachable(self) -> bool:
        """Is the group coordinator connected? kafka-python has no public call for it and
        ``poll`` does not raise while it reconnects, so this reads its connection state."""
        try:
            node = self.consumer._coordinator.coordinator_id
            return node is not None and bool(self.consumer._client.connected(node))
        except AttributeError:  # another client version: rely on errors from poll
            return True

    def commit(self, only: set[tuple[str, int]] | None = None, blocking: bool = True) -> None:
        """Checkpoint the pipeline, then commit its safe offsets for assigned partitions."""
        safe = self.pipeline.checkpoint()
        assigned = {(tp.topic, tp.partition) for tp in self.consumer.assignment()}
        offsets = {TopicPartition(t, p): OffsetAndMetadata(o, "", -1)
                   for (t, p), o in safe.items()
                   if (t, p) in assigned and (only is None or (t, p) in only)}
        if offsets and blocking:
            if not self._broker_reachable():
                # The commit below waits out the request timeout (30 s): not ready meanwhile.
                # (Its timeout also drops the dead connection: kafka-python 3.0 was seen to
                # keep a fetch that was in flight at the cut pending otherwise, stalling.)
                self.health.set_ready(False, "broker unreachable")
                if self.reachable:
                    self.reachable = False
                    log.warning("broker_unreachable", retry="kafka client reconnect backoff")
            self.consumer.commit(offsets)
            self.pipeline.committed.update(
                {(tp.topic, tp.partition): om.offset for tp, om in offsets.items()})
        elif offsets:
            self.consumer.commit_async(offsets)
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
        self.consumer.close(autocommit=False)


def kafka_dead_letters(config: DaemonConfig) -> KafkaDeadLetters:
    """A producer-backed dead-letter sink for ``config.kafka.dlq``."""
    producer = KafkaProducer(bootstrap_servers=config.kafka.bootstrap_servers, acks="all",
                             client_id=f"{config.kafka.client_id}-dlq",
                             **config.kafka.security_kwargs())
    return KafkaDeadLetters(producer, config.kafka.dlq)

"""The processing pipeline: record bytes -> decode -> join -> extractors -> redact -> buffers.

:class:`Pipeline` is the part of the daemon that does not care where records come from: the
file and Kafka sources (``daemon/sources.py``) feed it ``(value, key, topic, partition,
offset)`` and ask it, at commit time, for the offsets that are safe to commit.

Delivery: ``checkpoint()`` first makes everything durable (buffers, dead letters, then a
checkpoint file with the processed offsets and the counters), and only then returns the offsets
the source may commit: per partition the oldest record a pending join still needs (its low
watermark). After a restart the source re-reads from there; records the checkpoint says were
already processed are *replayed*: they rebuild the join's pending state but emit nothing, so no
record is processed twice and no pending join is lost.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Annotated, Any

import msgspec
import structlog

from nextstate.buffers import BufferSet, BufferSpec
from nextstate.buffers.statefile import read_json, write_atomically
from nextstate.daemon import ingest, otel, wire
from nextstate.daemon.config import DaemonConfig
from nextstate.daemon.deadletter import DeadLetterSink, FileDeadLetters
from nextstate.daemon.join import SessionJoiner
from nextstate.daemon.timeseries import TimeSeriesRecorder
from nextstate.daemon.timeseries import default_path as timeseries_path
from nextstate.daemon.tuple_topic import TupleSink
from nextstate.daemon.wire import BadRecord
from nextstate.daemon.yieldstats import YieldStats
from nextstate.extractors.redact import Redactor
from nextstate.extractors.registry import Dispatch, build_extractors
from nextstate.extractors.types import Interaction, ScoredTuple

log = structlog.get_logger("nextstate.pipeline")

ErrorCallback = Callable[[Exception, Interaction, str], bool]
CHECKPOINT_FILE = "checkpoint.json"
CHECKPOINT_REMEDY = ("move it aside to start over: the counters restart at zero and records "
                     "after the last commit are processed again (tuples already stored are "
                     "not stored twice)")
WRITE_BATCH = 512
"""Tuples emitted before they are added to the buffers in one write. Whatever is waiting is
also written by every ``tick()`` (the sources tick after each Kafka poll, every 256 file lines
or every record in event time) and every checkpoint, so a trainer sampling the buffers in the
daemon sees tuples no later than the next tick."""
SCORE_BATCH = 512
"""Closed interactions scored in one run (and whatever waits, by every ``write_pending()``:
every tick and checkpoint). The extractors, the redactor and the yield counters, run back to
back over a run, keep their code and data in the CPU's caches, where one record's decoding
and joining between two interactions pushed them out: 16-21% more call-log records/s through
the whole pipeline (2026-11-27, ``bench_daemon.py``)."""


Offset = Annotated[int, msgspec.Meta(ge=0)]


class Counters(msgspec.Struct):
    """:meth:`YieldStats.state_dict`: ``[name, [[label, value], ...], count]`` per series."""

    counters: list[tuple[str, list[tuple[str, str]], float]] = []


class CheckpointState(msgspec.Struct):
    """What ``checkpoint.json`` holds (written by :meth:`Pipeline.checkpoint`); fields a
    later version adds are ignored, fields missing take their defaults."""

    processed: list[tuple[str, Offset, Offset]] = []
    """``[topic, partition, next offset to process]`` per partition."""
    committed: list[tuple[str, Offset, Offset]] = []
    """``[topic, partition, offset]`` the source committed to the broker."""
    stats: Counters = msgspec.field(default_factory=Counters)
    saved_at: float | None = None
    event_time: tuple[float, float] | None = None
    """``[latest record time, lateness]`` (event time only)."""
    event_leap: float | None = None
    """A record time more than an idle timeout ahead of the clock, waiting for the next
    record to bear it out (see ``Pipeline._far_ahead``; event time only)."""
    closed_below: list[tuple[str, Offset, Offset]] = []
    """``[topic, partition, offset]``: the highest mark of the oldest record that made a
    pending action a checkpoint saw. An action read below it was no longer pending then: its
    interaction was scored before."""
    forgotten: list[tuple[str, Offset, Offset, tuple[str, Offset, Offset] | None]] = []
    """Delta clients' sessions the join forgot (``SessionJoiner.state_dict``)."""
    dead_letter_file: tuple[int, Offset] | None = None
    """``[inode, size]`` of the dead-letter file (a file sink) as the checkpoint covers it."""


def read_checkpoint(state_dir: Path) -> CheckpointState | None:
    """The state dir's checkpoint, ``None`` if it has none.

    Raises:
        CorruptStateFile: it is there but does not read as a checkpoint.
    """
    path = Path(state_dir) / CHECKPOINT_FILE
    if not path.exists():
        return None
    return read_json(path, CheckpointState, CHECKPOINT_REMEDY)


def log_extractor_error(exc: Exception, interaction: Interaction, extractor: str) -> bool:
    """Default extractor error policy: log it and go on (one bad extractor call must not stop
    the daemon; the interaction's other extractors still run)."""
    log.error("extractor_failed", extractor=extractor, interaction_id=interaction.interaction_id,
              error=repr(exc)[:500])
    return True


class Pipeline:
    """Decodes, joins, extracts and stores; checkpoints what it has made durable.

    Args:
        config: the daemon configuration.
        dead_letters: where rejected records go (default: ``<state_dir>/dlq.jsonl``).
        on_extractor_error: ``(exc, interaction, extractor) -> suppress?``; re-raised if False.
        clock: wall-clock seconds (idle timeouts, time series), injectable for tests.
        tuple_sink: also send every stored tuple there (``config.output_topic``; see
            ``daemon/tuple_topic.py``); flushed by each checkpoint.
    """

    def __init__(self, config: DaemonConfig, dead_letters: DeadLetterSink | None = None,
                 on_extractor_error: ErrorCallback = log_extractor_error,
                 clock: Callable[[], float] = time.time,
                 tuple_sink: TupleSink | None = None) -> None:
        self.tuple_sink = tuple_sink
        self.config = config
        self.state_dir = config.state_path
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.clock = clock
        self.joiner = SessionJoiner(config.join.idle_timeout_s, config.join.max_sessions,
                                    config.join.max_pending_bytes,
                                    config.join.max_feedback_per_action,
                                    config.join.max_record_context)
        self._evicted_seen = 0
        self._evictions_seen: dict[str, int] = {}
        self._duplicates_seen = 0
        self.extractors = build_extractors(config.extractors, config.extractor_options)
        # A judge runs cascaded: it sees the cheap extractors' tuples and only fills the gaps.
        self._cascaded = [(name, ex) for name, ex in self.extractors
                          if hasattr(ex, "judge_if_uncertain")]
        self._cascaded_names = {name for name, _ in self._cascaded}
        # Each interaction meets only the extractors that read its kinds of next state.
        self._dispatch = Dispatch([(name, ex, name in self._cascaded_names)
                                   for name, ex in self.extractors])
        self.redactor = Redactor(enabled=config.redact, patterns=config.redact_patterns)
        # Read before any store is opened: a checkpoint that does not read stops us there.
        checkpoint = read_checkpoint(self.state_dir)
        self.timeseries = TimeSeriesRecorder(timeseries_path(self.state_dir))
        specs = [msgspec.convert(spec, BufferSpec) for spec in config.buffers]
        try:
            self.buffers = BufferSet.open(self.state_dir / "buffers", specs)
        except BaseException:  # a buffer that does not read: what is open closes
            self.timeseries.close()
            raise
        # Held around every buffer call: an in-daemon trainer samples from another thread.
        self.buffer_lock = threading.Lock()
        self.dead_letters = dead_letters or FileDeadLetters(self.state_dir / "dlq.jsonl")
        self.on_extractor_error = on_extractor_error
        self.stats = YieldStats(clock=clock)
        self._last_series = 0.0
        # Replayed logs carry their own time: idle timeouts and the time series follow it.
        self.use_event_time = config.event_time == "event" or (
            config.event_time == "auto" and config.source.startswith("file:"))
        self.event_time = 0.0  # the latest record time read
        # How far records' times went back behind the latest read before them: sessions go
        # idle by a clock this far behind (see idle_clock), unless the config fixes it.
        self.event_lateness = config.event_time_lateness_s or 0.0
        self._adapt_lateness = config.event_time_lateness_s is None
        # Record times past this are checked against the wall clock (read again only then).
        self._believable_until = 0.0
        self._clamped: dict[str, int] = {}  # records whose time was not taken as it was, by why
        # A record time more than an idle timeout ahead of the clock, waiting for the next
        # record to bear it out before the clock moves (see _read_event_time).
        self._leap: float | None = None
        # Wall seconds a followed file has had nothing new: the event clocks run on by as much
        # (see advance_quiet), so that the sessions of a quiet log still go idle.
        self._quiet_s = 0.0
        self.processed: dict[tuple[str, int], int] = {}  # next offset to process, durable
        # Offsets the source committed to the broker (Kafka): a group offset that vanished
        # later tells a broker that came back empty from a commit that never happened.
        self.committed: dict[tuple[str, int], int] = {}
        self.seen: dict[tuple[str, int], int] = {}       # next offset to process, in memory
        # Per partition, the highest mark of the oldest record that made a pending action a
        # checkpoint saw (low_watermarks(rebuild=False); a delta client's session is read
        # again from further back): actions read again from below it were closed and
        # scored before it (see process).
        self.closed_below: dict[tuple[str, int], int] = {}
        # Ids of such actions, pending again in the join: their interactions are not scored,
        # counted or judged a second time when they close.
        self._closed_before: set[str] = self.joiner.settled  # (the same set)
        # Partitions read again below ``processed`` after a restart (until their last such
        # record). In event time their sessions wait to go idle until then: the restored
        # clock runs ahead of the records read again, and a session open at the checkpoint
        # (a later record, feedback say, kept it from going idle) was closed before that
        # record came again, and scored without it.
        self._replaying: set[tuple[str, int]] = set()
        self.records_since_checkpoint = 0
        # Tuples are written to the buffers once this many are waiting, and by every tick and
        # checkpoint (before anything is made durable). The Kafka source raises it and calls
        # write_pending() after each poll. One dedup query and one insert statement per batch:
        # the profile's largest item was a dedup query and write setup per record.
        # With a trainer in the daemon (it samples the buffers from its own thread), at once.
        self.write_batch = 1 if config.train else WRITE_BATCH
        self._unwritten: list[ScoredTuple] = []
        # Closed interactions wait here to be scored (see SCORE_BATCH), and are scored before
        # anything reads what scoring makes: write_pending (so every tick and checkpoint),
        # the time series, the end of input.
        self.score_batch = 1 if config.train else SCORE_BATCH
        self._unscored: list[Interaction] = []
        # Backpressure signals: each returns why consumption should pause now, or None (an
        # in-daemon trainer falling behind, a slow store...). Sources pause while any says so.
        self.pressure: list[Callable[[], str | None]] = []
        if checkpoint is not None:
            self._restore(checkpoint)

    # -- records ----------------------------------------------------------------------------
    def process(self, value: bytes | None, key: bytes | None, topic: str, partition: int,
                offset: int) -> None:
        """Process one record; bad ones go to the dead-letter sink with their reason (an OTLP
        batch's bad spans each on their own, see :meth:`_feed_spans`)."""
        tp = (topic, partition)
        replay = offset < self.processed.get(tp, 0)
        if self._replaying and not replay and tp in self._replaying:
            self._end_replay(tp)  # its last record read again is gone (retention, compaction)
        quiet, self._quiet_s = self._quiet_s, 0.0
        seen = self.seen
        if offset >= seen.get(tp, 0):
            seen[tp] = offset + 1
        self.records_since_checkpoint += 1
        position = (topic, partition, offset)
        try:
            if not value:  # a Kafka tombstone (no value): it crashed the loop, again each restart
                value = b""
                raise BadRecord("empty", "the record has no value (a Kafka tombstone?)")
            if len(value) > self.config.join.max_record_bytes:
                raise BadRecord("too_large", f"{len(value)} bytes > join.max_record_bytes="
                                f"{self.config.join.max_record_bytes}")
            # An OTLP batch holds many spans; the joiner lends the request bytes it holds.
            decoded = ingest.decode_records(value, key, self.joiner)
            if self._closed_before and not replay:
                self._retire_closed_before(decoded)
            now = self._read_event_time(decoded, replay, quiet) if self.use_event_time \
                else self.clock()
            if type(decoded) is list:  # the usual case: one wire record per Kafka record
                record, shape = decoded[0]
                closed = self.joiner.feed(record, shape, now, position, len(value))
            else:  # an OTLP batch: its spans joined, or dead-lettered, each on its own
                decoded, closed = self._feed_spans(decoded, key, now, position, len(value),
                                                   replay)
        except (BadRecord, RecursionError) as error:
            exc = wire.as_bad_record(error)
            if replay:
                self._replayed(tp, offset)
            else:
                self._dead_letter(value, key, exc.reason, exc.detail, position)
            return
        # (Read again, a record's evictions and duplicates were counted the first time: the
        # checkpoint's stats hold them.)
        if self.joiner.evicted != self._evicted_seen:
            self._count_evictions(replay)
        if self.joiner.duplicates != self._duplicates_seen:
            if not replay:
                self.stats.inc("join_duplicates", (),
                               self.joiner.duplicates - self._duplicates_seen)
            self._duplicates_seen = self.joiner.duplicates
        if replay:
            if self._closed_before:
                # What it closed is no longer pending (feedback closes nothing of its action);
                # first, as a transcript's reward closes the action that then stands below.
                self._closed_before.difference_update(i.interaction_id for i in closed
                                                      if i.closed_by != "feedback")
            if offset < self.closed_below.get(tp, -1):
                # Read again from further back than a checkpoint (a commit that did not
                # land, a group offset reset, a file's offsets lost): an action it left
                # pending was closed before that checkpoint: not emitted again. So was a
                # session it left with none pending (a transcript's reward closed its last
                # action), forgotten before the checkpoint: that action's id stands for it.
                self._closed_before.update(self._pending_made_at(decoded, position))
            elif self._closed_before:
                # An action it moved up (a growing transcript sent again) may have been
                # pending at the checkpoint after all: emitted when it closes.
                self._closed_before.difference_update(self._pending_made_at(decoded, position))
            self._replayed(tp, offset)
            return
        if self._closed_before:
            # What a new record makes or closes is new, whatever its id: an action read again
            # and forgotten unscored on the way (evicted) left its id here, and the same
            # record sent again made it anew: it was not scored when it closed.
            self._closed_before.difference_update(i.interaction_id for i in closed)
            self._closed_before.difference_update(self._pending_made_at(decoded, position))
        stats = self.stats
        for record, shape in decoded:
            stats.observe_record(shape)
            if shape == "session_end":
                stats.observe_session_end(wire.score_value(record.outcome))
            elif shape == "transcript" and record.reward is not None:
                stats.observe_session_end(record.reward)
        if closed:
            self.emit(closed)
        if self.use_event_time and \
                self.event_time - self._last_series >= self.config.timeseries_interval_s:
            self.record_timeseries(self.event_time)

    def _pending_made_at(self, decoded: list[tuple[wire.WireRecord, str]],
                         position: tuple[str, int, int]) -> list[str]:
        """Ids of the pending actions the record at ``position`` made (or moved up to it)."""
        pending_at = self.joiner.pending_at
        return [interaction_id for record, _ in decoded if record.session_id is not None
                and (interaction_id := pending_at(record.session_id, position)) is not None]

    def _replayed(self, tp: tuple[str, int], offset: int) -> None:
        """After a record read again: the partition is replaying until its last such record;
        then the actions left pending that were closed before the checkpoint (as idle,
        evicted or ended: a record read again would have closed them) are forgotten with
        their sessions, as they were gone then."""
        if offset + 1 < self.processed[tp]:
            self._replaying.add(tp)
        else:
            self._end_replay(tp)

    def _held(self, session: Any) -> bool:
        """Whether a session must wait to go idle: its partition is being read again. So
        must one whose action was closed before the checkpoint: closed early, it would be
        missing for the records read again after it (the same record sent twice made it
        anew, scored again)."""
        return session.partition in self._replaying

    def _end_replay(self, tp: tuple[str, int]) -> None:
        """See :meth:`_replayed` (also called at a partition's first new record: its last
        record read again may be gone, deleted by retention or compaction)."""
        self._replaying.discard(tp)
        closed_before, sessions = self._closed_before, self.joiner.sessions
        for interaction_id in list(closed_before):
            session_id = interaction_id.rpartition("#")[0]
            session = sessions.get(session_id)
            if session is not None and session.partition == tp and \
                    self.joiner.held_action(session_id) == interaction_id:
                self.joiner.discard(session_id)  # (forgotten as then: see joiner.settled)
                closed_before.discard(interaction_id)

    def _retire_closed_before(self, decoded: list[tuple[wire.WireRecord, str]]) -> None:
        """A new record (past the re-read ones) for a session whose pending action was closed
        before the checkpoint (or, none pending, that was itself forgotten before it): no
        record closed it (one read again would have), so it was closed as idle, evicted or
        ended, and the session forgotten, before this record came.
        The session is forgotten now, and the record meets the join as it did then: feedback
        or a tool result for that action was kept with it and lost when it closed unscored;
        without a known action, feedback is a dead letter, as it was in the run not cut.
        (Most such sessions are gone by then, forgotten when their partition's re-read
        ended, see :meth:`_end_replay`; this catches one last heard of in another partition,
        or left by a re-read cut short, as by a rotated log's :meth:`forget_offsets`.)"""
        held, closed_before = self.joiner.held_action, self._closed_before
        for record, _ in decoded:
            interaction_id = held(record.session_id)  # type: ignore[arg-type]
            if interaction_id is not None and interaction_id in closed_before:
                self.joiner.discard(record.session_id)  # type: ignore[arg-type]
                closed_before.discard(interaction_id)

    def _feed_spans(self, batch: list[tuple[wire.WireRecord, str]], key: bytes | None,
                    now: float, position: tuple[str, int, int], size: int, replay: bool
                    ) -> tuple[list[tuple[wire.WireRecord, str]], list[Interaction]]:
        """Join an OTLP batch's spans one by one; returns those joined and the interactions
        they closed (it raises no :class:`BadRecord`: the batch is past its decode).

        A span the join rejects goes to the dead letters on its own, like those the decode
        rejected (each as a one-span batch, with the batch's position and the span's place
        in the detail): one bad span costs the batch nothing else, and a replay of the batch
        joins the same spans again.
        """
        assert isinstance(batch, otel.SpanBatch)
        joined: list[tuple[wire.WireRecord, str]] = []
        closed: list[Interaction] = []
        rejected = list(batch.rejected)
        share = size // max(1, len(batch))
        for n, (record, shape) in enumerate(batch):
            try:
                closed += self.joiner.feed(record, shape, now, position, share)
            except (BadRecord, RecursionError) as error:
                rejected.append(batch.reject(n, wire.as_bad_record(error)))
            else:
                joined.append((record, shape))
        if not replay:
            for span in sorted(rejected, key=lambda span: span.index):  # in batch order
                self._dead_letter(span.value, key, span.reason, span.detail, position)
        return joined, closed

    def _dead_letter(self, value: bytes, key: bytes | None, reason: str, detail: str,
                     position: tuple[str, int, int]) -> None:
        self.dead_letters.send(value, key, reason, detail, *position)
        self.stats.observe_dead_letter(reason)

    def now(self) -> float:
        """The pipeline's clock: the latest record time when replaying logs (run on by the
        time a followed file has been quiet), else wall time."""
        if self.use_event_time and self.event_time:
            return self.event_time + self._quiet_s
        return self.clock()

    def idle_clock(self) -> float:
        """The clock sessions go idle by: with event time, the latest record time less the
        lateness (a watermark: a session's next record may still come up to that far back)."""
        if self.use_event_time and self.event_time:
            return self.event_time + self._quiet_s - self.event_lateness
        return self.clock()

    def advance_quiet(self, seconds: float) -> None:
        """A followed file has had nothing new for ``seconds`` of wall time since its last
        record: with event time, the clocks run on by as much until the next record (a live
        writer's next record would be that much later). Without it, a quiet log's sessions
        never went idle and its time series stopped until the writer wrote again. The
        lateness does not learn from it: the next record's lag is taken from its own time."""
        self._quiet_s = seconds

    def _read_event_time(self, decoded: list[tuple[wire.WireRecord, str]], replay: bool,
                         quiet: float = 0.0) -> float:
        """The time a record happened (a batch's latest span), which its session was last
        seen at; moves the latest time read and, unless fixed, the lateness (not for a
        replayed record: the checkpoint holds both as they were after it). ``quiet``: the
        wall seconds a followed file had been quiet before it (see :meth:`advance_quiet`).

        Three times are not taken as they are (each counted, see :meth:`_clamp`): one past the
        wall clock by more than ``event_time_max_future_s`` (as if the record had none);
        with the lateness adapting, one further behind than ``event_time_max_lateness_s``
        (read at the idle clock); and, in a log older than the wall clock, one more than
        ``join.idle_timeout_s`` ahead of the clock that the next record does not bear out
        (``leap``: its session takes it, the clock does not). Before, one such time (a
        host's clock a month fast, in a log replayed later) moved the clock at once: every
        open session went idle, and every later record was behind it by more than the
        lateness may grow."""
        own = None
        for record, _ in decoded:
            if record.ts is not None:
                ts = wire.parse_ts(record.ts)
                own = ts if own is None or ts > own else own
        if own is None:  # no time of its own: as late as anything read
            return self.now()
        if own > self._believable_until:
            self._believable_until = self.clock() + self.config.event_time_max_future_s
            if own > self._believable_until:  # from the future: as if it had no time
                if not replay:
                    self._clamp("future", own)
                return self.now()
        if not replay and self._far_ahead(own, quiet):
            return own
        lag = self.event_time - own
        if lag > self.event_lateness and self._adapt_lateness:
            if lag > self.config.event_time_max_lateness_s:  # read at the idle clock
                if not replay:
                    self._clamp("late", own)
                    self._grow_lateness(self.config.event_time_max_lateness_s)
                return max(own, self.event_time - self.event_lateness)
            if not replay:
                self._grow_lateness(lag)
        elif lag < 0 and not replay:
            self.event_time = own
        return own

    def _far_ahead(self, own: float, quiet: float) -> bool:
        """Whether ``own`` leaps more than an idle timeout ahead of the clock and is not
        taken by it (yet). Live traffic (within ``event_time_max_future_s`` of the wall
        clock) is believed at once; an older leap moves the clock only when the next record
        leaps too (a log's traffic after a quiet hour), and then to the earlier of the two
        (one of them may be the stray). A leap the next record does not bear out is counted."""
        leap = self._leap
        if self.event_time and own - self.event_time - quiet > self.config.join.idle_timeout_s:
            if leap is not None:
                self._leap = None
                self.event_time = min(leap, own)
                return True
            if own < self.clock() - self.config.event_time_max_future_s:
                self._leap = own
                return True
            return False
        if leap is not None:
            self._leap = None
            self._clamp("leap", leap)
        return False

    def _grow_lateness(self, lag: float) -> None:
        if lag > self.event_lateness:
            if lag >= 2 * max(self.event_lateness, 1.0):  # a few lines a run
                log.info("event_time_lateness", seconds=round(lag, 3),
                         was=round(self.event_lateness, 3))
            self.event_lateness = lag

    def _clamp(self, reason: str, ts: float) -> None:
        """Count a record whose own time was not taken as it was; log the 1st, 2nd, 4th..."""
        count = self._clamped[reason] = self._clamped.get(reason, 0) + 1
        self.stats.inc("event_time_clamped", (("reason", reason),))
        if count & (count - 1) == 0:
            log.warning("event_time_clamped", reason=reason, ts=ts, count=count,
                        latest=self.event_time, wall_clock=round(self.clock(), 3))

    def _count_evictions(self, replay: bool = False) -> None:
        for reason, count in self.joiner.evictions.items():
            delta = count - self._evictions_seen.get(reason, 0)
            if delta and not replay:
                self.stats.inc("join_evictions", (("reason", reason),), delta)
        self._evictions_seen = dict(self.joiner.evictions)
        self._evicted_seen = self.joiner.evicted

    def emit(self, interactions: Iterable[Interaction]) -> None:
        """Queue closed interactions to be scored, their tuples redacted and added to the
        buffers (scored once ``score_batch`` wait, see :meth:`score_pending`)."""
        closed_before, unscored = self._closed_before, self._unscored
        for interaction in interactions:
            if closed_before and interaction.interaction_id in closed_before:
                closed_before.discard(interaction.interaction_id)  # scored before a restart
                continue
            unscored.append(interaction)
        if len(unscored) >= self.score_batch:
            self.score_pending()
            if len(self._unwritten) >= self.write_batch:
                self.write_pending()

    def score_pending(self) -> None:
        """Score the queued interactions: run their extractors, redact the tuples, count
        them, and queue the tuples for the buffers."""
        if not self._unscored:
            return
        interactions, self._unscored = self._unscored, []
        unwritten = self._unwritten
        redactor, observe = self.redactor, self.stats.observe_interaction
        for n, interaction in enumerate(interactions):
            try:
                tuples = self._score(interaction)
            except BaseException:
                # (only where on_extractor_error re-raises) the rest are scored next time
                self._unscored[:0] = interactions[n + 1:]
                raise
            if tuples:
                tuples = [redactor(t) for t in tuples]
                unwritten.extend(tuples)
            observe(interaction, tuples)

    def _score(self, interaction: Interaction) -> list[ScoredTuple]:
        """The tuples of one interaction's extractors (an error handled by
        ``on_extractor_error`` loses only that extractor's)."""
        tuples: list[ScoredTuple] = []
        for name, extractor, cascaded in self._dispatch(interaction):
            try:
                if cascaded:
                    tuples.extend(extractor.judge_if_uncertain(  # type: ignore[attr-defined]
                        interaction, tuples))
                else:
                    tuples.extend(extractor(interaction))
            except Exception as exc:
                if not self.on_extractor_error(exc, interaction, name):
                    raise
        return tuples

    def write_pending(self) -> None:
        """Score what waits, then add the tuples made so far to the buffers (and the tuple
        topic) in one write."""
        self.score_pending()
        if not self._unwritten:
            return
        batch, self._unwritten = self._unwritten, []
        with self.buffer_lock:
            self.buffers.extend(batch)
        if self.tuple_sink is not None:
            self.tuple_sink.send(batch)

    def tick(self) -> None:
        """Periodic work: close idle sessions, write waiting tuples to the buffers, append to
        the time series when due."""
        now = self.now()
        self.close_idle()
        self.write_pending()
        # In event time the records move the series (see process); a quiet followed file, here.
        if (not self.use_event_time or self._quiet_s) and \
                now - self._last_series >= self.config.timeseries_interval_s:
            self.record_timeseries(now)

    def close_idle(self) -> None:
        """Close the sessions gone idle by :meth:`idle_clock` and score what they held (a
        file run in event time calls it after every record; the tuples wait for a tick)."""
        closed = self.joiner.close_idle(
            self.idle_clock(), self._held if self._replaying and self.use_event_time else None)
        if closed:
            self.emit(closed)

    def finish(self) -> None:
        """End of input: close every pending join."""
        self.emit(self.joiner.close_all("end_of_input"))
        self.score_pending()

    def drop_partitions(self, partitions: Iterable[tuple[str, int]]) -> None:
        """Forget revoked partitions (their pending joins are rebuilt by whoever gets them).

        What was read of them counts as processed: its tuples are in the buffers, its dead
        letters and output tuples held by the sinks until written, so read here again it is
        replayed. A checkpoint does the same, but one that could not write its sinks stops
        before (it will write the processed offsets once they are written).
        """
        partitions = list(partitions)
        dropped = self.joiner.drop_partitions(partitions)
        if self._closed_before:  # the ids of actions dropped with them
            held = self.joiner.sessions
            self._closed_before.difference_update(
                [i for i in self._closed_before if i.rpartition("#")[0] not in held])
        for tp in partitions:
            self._replaying.discard(tp)
            if tp in self.seen:
                self.processed[tp] = max(self.processed.get(tp, 0), self.seen.pop(tp))
        log.info("partitions_dropped", partitions=[f"{t}/{p}" for t, p in partitions],
                 pending_sessions_dropped=dropped)

    def forget_offsets(self, tp: tuple[str, int]) -> None:
        """Drop what is known of a partition's offsets (its log was replaced): its records
        are processed again from wherever the source now reads."""
        self.processed.pop(tp, None)
        self.seen.pop(tp, None)
        self.committed.pop(tp, None)
        self.closed_below.pop(tp, None)
        self._replaying.discard(tp)

    def behind(self) -> str | None:
        """Why the source should stop fetching for now (``None``: it should not)."""
        for signal in self.pressure:
            reason = signal()
            if reason:
                return reason
        return None

    # -- durability -------------------------------------------------------------------------
    def checkpoint(self) -> dict[tuple[str, int], int]:
        """Make everything processed so far durable; return the offsets safe to commit."""
        self.write_pending()
        with self.buffer_lock:
            self.buffers.flush()
        if self.tuple_sink is not None:
            self.tuple_sink.flush()  # produced before the offsets that cover them are returned
        self.dead_letters.flush()
        self._mirror_component_counters()
        for tp, offset in self.seen.items():
            # max, not overwrite: a restarted run re-reads from the committed low watermark, so
            # its ``seen`` starts below ``processed``; lowering it would re-process records.
            if offset > self.processed.get(tp, 0):
                self.processed[tp] = offset
        marks = self.low_watermarks()
        closed_below = self.closed_below
        for tp, mark in self.low_watermarks(rebuild=False).items():
            # Only up: below an earlier mark everything was closed before, whatever was
            # read again since (re-read actions are pending again, lowering the marks).
            if mark > closed_below.get(tp, -1):
                closed_below[tp] = mark
        state = {"processed": [[t, p, o] for (t, p), o in self.processed.items()],
                 "committed": [[t, p, o] for (t, p), o in self.committed.items()],
                 "closed_below": [[t, p, o] for (t, p), o in self.closed_below.items()],
                 **self.joiner.state_dict(),
                 "stats": self.stats.state_dict(), "saved_at": self.clock()}
        if isinstance(self.dead_letters, FileDeadLetters):  # see _restore
            state["dead_letter_file"] = list(self.dead_letters.mark())
        if self.use_event_time:  # a resumed replay closes idle sessions as this run would
            state["event_time"] = [self.event_time, self.event_lateness]
            # A leap waiting for the next record: forgotten, the clock moved a record later
            # after a restart than in a run not cut (sessions closed at other records).
            state["event_leap"] = self._leap
        write_atomically(self.state_dir / CHECKPOINT_FILE, json.dumps(state).encode())
        self.records_since_checkpoint = 0
        return marks

    def low_watermarks(self, rebuild: bool = True) -> dict[tuple[str, int], int]:
        """Per partition read, the oldest offset a pending join still needs, else the next
        one: how far a commit may go, and where to read again to rebuild what is pending
        (``rebuild=False``: see :meth:`SessionJoiner.low_watermarks`)."""
        marks = self.joiner.low_watermarks(rebuild)
        return {tp: min(marks.get(tp, offset), offset) for tp, offset in self.seen.items()}

    def record_timeseries(self, now: float | None = None) -> None:
        """Append the counters to the time series (``nextstate report`` reads it)."""
        now = self.now() if now is None else now
        self.score_pending()  # the counters as of now
        self._mirror_component_counters()
        self.timeseries.record(now, self.stats.snapshot())
        self._last_series = now

    def _mirror_component_counters(self) -> None:
        for kind, count in self.redactor.counts.items():
            self.stats.set_total("redactions", (("type", kind),), count)
        for _, judge in self._cascaded:
            self.stats.set_total("judge_calls", (), judge.calls)  # type: ignore[attr-defined]
            self.stats.set_total("judge_tokens", (("direction", "prompt"),),
                                 judge.prompt_tokens)  # type: ignore[attr-defined]
            self.stats.set_total("judge_tokens", (("direction", "completion"),),
                                 judge.completion_tokens)  # type: ignore[attr-defined]

    def _restore(self, state: CheckpointState) -> None:
        self.processed = {(t, p): o for t, p, o in state.processed}
        self.committed = {(t, p): o for t, p, o in state.committed}
        self.closed_below = {(t, p): o for t, p, o in state.closed_below}
        self.joiner.load_state_dict({"forgotten": state.forgotten})
        self.stats.load_state_dict(msgspec.to_builtins(state.stats))
        if state.dead_letter_file is not None and isinstance(self.dead_letters, FileDeadLetters):
            # Letters past the checkpoint are of records processed again now: written once.
            self.dead_letters.rewind(state.dead_letter_file)
        if self.use_event_time and state.event_time is not None:
            self.event_time, lateness = state.event_time
            self._leap = state.event_leap
            if self._adapt_lateness:
                self.event_lateness = lateness
            if self.event_time > self.clock() + self.config.event_time_max_future_s:
                # saved by a version that believed a time from the future: start the clock again
                log.warning("event_time_reset", saved=self.event_time)
                self.event_time, self._leap = 0.0, None
                if self._adapt_lateness:
                    self.event_lateness = 0.0
        log.info("checkpoint_loaded", path=str(self.state_dir / CHECKPOINT_FILE),
                 partitions=len(self.processed))

    def close(self, durable: bool = True) -> None:
        """Final checkpoint and time-series point, then release files.

        ``durable=False`` (the store failed, e.g. a full disk) skips both: what was not
        checkpointed is simply re-read after a restart, and SQLite rolls back the open
        transaction, so the store stays as the last checkpoint left it.
        """
        if not durable:
            for release in (self.timeseries.close, self.buffers.close, self.dead_letters.close):
                try:
                    release()
                except Exception as exc:  # (a Kafka sink's flush too) best effort: log, go on
                    log.warning("close_failed", what=getattr(release, "__qualname__", "?"),
                                error=repr(exc)[:200])
            return
        self.checkpoint()
        self.record_timeseries()
        self.timeseries.close()
        with self.buffer_lock:
            self.buffers.close()
        self.dead_letters.close()


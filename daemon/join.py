"""The per-session join: each assistant action meets its next state.

For call-log input the next state of an action only arrives with the *next* exchange of the
same session (its request repeats the history, now followed by the tool results or the user's
reply), so the joiner keeps, per session, the latest action still waiting for its next state.
It closes that action when the next state arrives, or with no next state after an idle timeout,
at a ``session_end`` or at the end of the input.

A request that does not continue the known history (its message at the pending action's
position is not that action) is one of three things:

- a **duplicate**: the same request history and the same response as the pending exchange,
  or as the one closed last (a record delivered twice, or again after the next one); from a
  delta client, the same new messages, response and time. It is ignored: nothing closes,
  nothing changes, it is counted in ``SessionJoiner.duplicates``.
- a **branch**: a full history of the session that does not echo the pending action: the
  same request resent (a retry after a discarded response, a regenerated response) or an
  earlier turn edited or trimmed. The pending action closes as ``superseded`` with no next
  state (a discarded response is evidence of nothing; the extractors emit nothing for it,
  feedback attached to it aside), and the new action's context is the request's messages.
- a **delta**: the messages after the pending action, from a client that sends only new
  messages. The action's next state is what they hold up to an assistant message, and the
  new context is the held context, the action and these messages.

Branch or delta (:func:`_resends_history`): a full history starts with the context's first
message, a delta with what followed the action (tool results, or a user message), never with a
system prompt. So the request is a branch when it starts with a system prompt, or when its
first message equals the context's first message and that message could not start a delta:
the action called tools, or the request also repeats the context's second message, or the
context is that one message. A delta client whose user repeats their first message, more having
been said since, stays a delta; a full-history client whose first user message was edited is
taken for a delta.

The joiner also answers the question the offset committer asks: which is the oldest record
whose action is still pending? (:meth:`SessionJoiner.low_watermarks`). Committing only up to
there means a crash or a rebalance re-reads every record a pending join still needs: for a
delta client, every record of the session (its requests hold only the new messages).

The usual call-log record (its request the previous one's bytes, the pending action's echo,
then new messages) takes a short path (:meth:`SessionJoiner._continued`) that does what the
general one does for it. The joiner also lends those bytes to :func:`ingest.decode_records`
(:meth:`SessionJoiner.known_request`), which cuts them out of the next record before decoding
it, so a record costs what its new messages cost, not its whole history; the short path then
joins the messages ingest decoded after those very bytes (``wire.SplicedArray``).

Pure: no I/O, no clock of its own (callers pass ``now``), so it is tested without a broker.
"""

from __future__ import annotations

import operator
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import msgspec

from nextstate.daemon import anthropic, otel, wire

# wire's functions as globals: compiled, ``wire.f(...)`` is a module attribute lookup per call.
from nextstate.daemon.wire import (
    BadRecord,
    SplicedArray,
    WireRecord,
    decode_messages,
    feedback_of,
    normalize_message,
    normalize_messages,
    parse_ts,
    response_action,
    score_value,
    usage_of,
)
from nextstate.extractors.types import ClosedBy, Feedback, Interaction, Message, ToolCall, Usage

EXCHANGE_SHAPES = frozenset({"openai_exchange", anthropic.SHAPE, otel.EXCHANGE_SHAPE})
"""Shapes joined as request/response exchanges (the adapters rewrite theirs to OpenAI form)."""

Position = tuple[str, int, int]  # (topic, partition, offset) of a record
Forgotten = tuple[str, int, int, Position | None]
"""A forgotten delta session (see ``SessionJoiner.forgotten``) as the checkpoint keeps it:
``[session id, history length, first message's hash, [topic, partition, offset] of the
latest record heard for it]``."""
_encode = msgspec.json.Encoder().encode
_NO_USAGE = Usage()  # immutable: one for every transcript action
_role = operator.attrgetter("role")


class _Pending(msgspec.Struct, gc=False):
    """An action waiting for its next state.

    A Struct built positionally (one per exchange: a C ``__init__`` is several times cheaper
    than a dataclass's), mutable, and out of the cyclic collector (it refers to nothing that
    refers back to it).
    """

    interaction_id: str
    context: tuple[Message, ...]
    action: Message
    index: int
    position: Position | None
    model: str | None
    policy_version: str | None
    behaviour_logprobs: tuple[float, ...] | None
    usage: Usage
    ts: float
    shape: str
    feedback: tuple[Feedback, ...] = ()
    partial_next: tuple[Message, ...] = ()  # next state seen so far (growing transcripts)
    wire_action: wire.WireMessage | None = None  # the action as decoded (exchanges)
    # Tool results reported on their own (OTel tool spans), the latest per call id, in the
    # order first reported (as _with_reported merges them), and the action's call ids. A dict
    # and a set: appending each to a tuple and scanning the calls made a flood of spans for
    # one action quadratic (20k spans: 4.1 s) and held every one of them.
    reported: dict[str | None, Message] | None = None
    call_ids: frozenset[str] | None = None
    # The oldest record its state was built from, when older than ``position``: a delta
    # client's request holds only the new messages, so its context is rebuilt after a
    # restart only by reading again from the session's first record (the low watermark
    # holds there). ``None``: the record at ``position`` holds the whole history.
    since: Position | None = None

    def next_so_far(self) -> tuple[Message, ...]:
        """The next state seen so far: a growing transcript's, then the reported results."""
        reported = self.reported
        return (*self.partial_next, *reported.values()) if reported else self.partial_next

    def close(self, session_id: str, next_state: tuple[Message, ...], closed_by: ClosedBy,
              outcome: float | None = None) -> Interaction:
        # Positional, in Interaction's field order (tests/daemon/test_join.py checks it).
        return Interaction(
            self.interaction_id, session_id, self.context, self.action, next_state, closed_by,
            self.feedback, outcome, self.model, self.policy_version, self.behaviour_logprobs,
            self.usage, self.ts, self.shape)


@dataclass(slots=True)
class _Session:
    history_len: int = 0            # messages known so far, the pending action included
    last_action: Message | None = None
    pending: _Pending | None = None
    last_closed: Interaction | None = None
    last_seen: float = 0.0
    partition: tuple[str, int] | None = None
    # With no action pending (a transcript's reward closed its last one), the record that left
    # it so: the low watermark holds it, so that a restart rebuilds what late feedback joins.
    ended_at: Position | None = None
    size: int = 0                   # bytes counted for it: its latest record, known_bytes,
    built: int = 0                  # and the earlier records a delta client's context holds
    # The latest request's message array as bytes, without its closing bracket, and how many
    # messages it holds, all type-checked by then: the next request's messages within the
    # same leading bytes need no new decode.
    known_bytes: bytes | None = None
    known_count: int = 0
    # Its latest request held only the new messages (a delta client's), and when it came
    # back after its session was forgotten: the messages of its history not held (its
    # actions are numbered after them) and the hash of its first message.
    delta: bool = False
    base: int = 0
    first: int | None = None
    # The latest exchange record heard for it, a duplicate too (which leaves the pending
    # action as it was): remembered when it is forgotten (see SessionJoiner._gone_after).
    # Only a delta client's is remembered, and every record of one takes the general path:
    # the short path for whole histories (_continued) leaves it as it was.
    heard: Position | None = None


class SessionJoiner:
    """Joins decoded records into :class:`Interaction` s, per session.

    Args:
        idle_timeout_s: close a session's pending action (with no next state) and forget the
            session after this many seconds without a record for it.
        max_sessions: bound on sessions held; beyond it the least recently seen session is
            closed and forgotten (counted in :attr:`evicted`).
        max_pending_bytes: bound on the bytes held for pending joins (the size of each
            session's latest record, which its pending context repeats, plus the request
            bytes kept to decode the next request lazily; for a delta client, whose records
            hold only the new messages, also the earlier records its context holds); beyond
            it the least recently seen sessions are forgotten, counted like ``max_sessions``.
        max_feedback_per_action: feedback records kept on one pending action; beyond it the
            oldest is dropped (counted in ``evictions["feedback"]``).
        max_record_context: context messages the interactions one record closes may hold
            together; a transcript beyond it is a :class:`BadRecord` ``too_large``. Each
            action's context is every message before it, so a transcript of ``n`` messages
            holds about ``n * n / 4``: the bound keeps one record's memory and time in check.

    Each ``feed`` returns the interactions closed by that record (none for a duplicate,
    counted in :attr:`duplicates`). With ``replay=True`` the
    record only rebuilds state (its closed interactions are already durable downstream).
    """

    def __init__(self, idle_timeout_s: float = 300.0, max_sessions: int = 100_000,
                 max_pending_bytes: int = 1 << 30, max_feedback_per_action: int = 64,
                 max_record_context: int = 20_000_000) -> None:
        self.idle_timeout_s = idle_timeout_s
        self.max_sessions = max_sessions
        self.max_pending_bytes = max_pending_bytes
        self.max_feedback_per_action = max_feedback_per_action
        self.max_record_context = max_record_context
        # Least recently seen first. An OrderedDict: the head is found in O(1) however many
        # sessions were moved or closed before it (a plain dict's iteration walks over the
        # deleted entries at its front: 38 us per look at 100k sessions taking turns).
        self.sessions: OrderedDict[str, _Session] = OrderedDict()
        self.pending_bytes = 0
        self.evicted = 0
        self.duplicates = 0  # exchanges received again, ignored (see _duplicate)
        self.evictions: dict[str, int] = {}  # why: max_sessions | max_pending_bytes | feedback
        # Delta clients' sessions forgotten (idle, evicted, ended), least recently first: the
        # length of each one's history, the hash of its first message, and the latest record
        # heard for it (read again fast after a restart, the session is held past that
        # record: see _gone_after). One back later sends only its new messages, which do not
        # say how long the history was: without this its actions were numbered from 0 again,
        # taking earlier actions' ids (their tuples dropped as duplicates). At most
        # max_sessions; in the checkpoint (state_dict), so a restart does not forget them.
        self.forgotten: OrderedDict[str, tuple[int, int, Position | None]] = OrderedDict()
        # Ids of pending actions that records read again after a restart made, but that were
        # closed before its checkpoint (the pipeline's): their sessions were forgotten then,
        # and ``forgotten`` (from the checkpoint) holds what was kept of them. Forgotten
        # again, they change nothing there (remembered anew, they came back in the wrong
        # order, pushing out sessions the run not cut kept, or read again from the middle
        # of a delta session, with a history length of records taken for a client back).
        self.settled: set[str] = set()

    # -- records ----------------------------------------------------------------------------
    def known_request(self, session_id: str) -> bytes | None:
        """The session's latest request message array, without its closing bracket, if held
        and not empty (what :func:`ingest.decode_records` cuts out of the session's next
        record)."""
        session = self.sessions.get(session_id)
        return None if session is None or not session.known_count else session.known_bytes

    def feed(self, record: WireRecord, shape: str, now: float,
             position: Position | None = None, size: int = 0) -> list[Interaction]:
        """Apply one decoded record of the given shape (see :func:`wire.classify`).

        ``size`` is the record's encoded size: what the session's pending state now holds,
        counted against ``max_pending_bytes`` with the request bytes kept for lazy decoding.
        """
        session_id = record.session_id
        assert session_id is not None
        if shape == "openai_exchange":
            continued = self._continued(session_id, record, now, position, size)
            if continued is not None:
                return continued
        if shape in EXCHANGE_SHAPES:
            closed = self._exchange(session_id, record, now, position)
            if shape != "openai_exchange":  # adapted shapes (OTel, Anthropic) keep their label
                self.sessions[session_id].pending.shape = shape  # type: ignore[union-attr]
        elif shape == "transcript":
            closed = self._transcript(session_id, record, now, position)
        else:
            return self._other(session_id, record, shape, now)
        session = self.sessions[session_id]
        if session.known_bytes is not None:  # held beside the pending state (lazy decode)
            size += len(session.known_bytes)
        size += session.built
        self.pending_bytes += size - session.size
        session.size = size
        self._bound()
        return closed

    def _continued(self, session_id: str, record: WireRecord, now: float,
                   position: Position | None, size: int) -> list[Interaction] | None:
        """The usual call-log record, joined on a short path; ``None`` (nothing changed) when
        it is not one, and :meth:`_exchange` takes it from the start.

        The usual record: a lazily decoded request whose array starts with the bytes of the
        session's previous request, followed by the echo of the pending action. It is what
        :meth:`_exchange` does for such a record (the known prefix, then closing the pending
        action with the new messages as its next state), in the same order, so that a record
        rejected here is rejected for the same reason there; without the placeholder list of
        the held messages, the second pass over the new ones and the general path's calls.
        """
        # Each attribute is read once (into a local): compiled, every read of a Struct's or
        # a slotted class's attribute is a generic lookup.
        sessions = self.sessions
        session = sessions.get(session_id)
        if session is None:
            return None
        pending, known = session.pending, session.known_bytes
        if pending is None or known is None:
            return None
        request = record.request
        messages: Any = request.messages  # type: ignore[union-attr]
        k, shape = pending.index, pending.shape
        # _decode_after_known_bytes's test, then _known_prefix's: the same records take it.
        if k == 0 or session.known_count != k or session.history_len != k + 1 \
                or shape not in EXCHANGE_SHAPES:
            return None
        kind = type(messages)
        if kind is SplicedArray and messages.known is known:
            # ingest cut these very bytes out and decoded what follows them (the action's
            # echo, the new messages)
            tail = messages.tail
            head = messages.value[messages.start:messages.end - 1].rstrip()
        else:
            if kind is msgspec.Raw or kind is SplicedArray:
                array = bytes(messages)
            elif kind is bytes:
                array = messages
            else:
                return None
            if not array.startswith(known):
                return None
            comma = len(known)
            if array[comma:comma + 1] != b",":  # none between them, unless an indenting
                comma = len(array) - len(array[comma:].lstrip())  # writer's
                if array[comma:comma + 1] != b",":
                    return None
            tail = decode_messages(b"[" + array[comma + 1:])  # the echo, the new
            head = array[:-1].rstrip()
        action, logprobs, wire_action = response_action(record)
        if not tail:
            return None
        echoed, held_action = tail[0], pending.action
        if echoed != pending.wire_action and \
                not _same_action(normalize_message(echoed), held_action):
            return None
        new = list(map(normalize_message, tail[1:]))  # (a comprehension is a frame more)
        # Checked before anything changes: a bad timestamp rejects the record, state intact.
        ts = parse_ts(record.ts)

        sessions.move_to_end(session_id)
        session.last_seen = now
        if position is not None:
            session.partition = (position[0], position[1])  # (no slice object to make)
        if pending.partial_next or pending.reported or "assistant" in map(_role, new):
            next_state = _with_reported(_until_assistant(new), pending.next_so_far())
        else:  # the usual next state: every new message (tool results, the user's reply)
            next_state = tuple(new)
        held_context = pending.context
        closed = Interaction(
            pending.interaction_id, session_id, held_context, held_action, next_state,
            "next_state", pending.feedback, None, pending.model, pending.policy_version,
            pending.behaviour_logprobs, pending.usage, pending.ts, shape)
        session.last_closed = closed
        context = (*held_context, held_action, *new)
        index = len(context)
        response, version = record.response, record.policy_version
        session.pending = _Pending(
            f"{session_id}#{index}", context, action, index, position,
            record.model or request.model or (response.model if response else None),  # type: ignore[union-attr]
            None if version is None else str(version), logprobs, usage_of(record), ts,
            "openai_exchange", (), (), wire_action)
        session.history_len = index + 1
        session.last_action = action
        session.known_bytes = head
        session.known_count = k + len(tail)
        size += len(head)
        self.pending_bytes = pending_bytes = self.pending_bytes + size - session.size
        session.size = size
        if pending_bytes > self.max_pending_bytes or len(sessions) > self.max_sessions:
            self._bound()
        return [closed]

    def _other(self, session_id: str, record: WireRecord, shape: str,
               now: float) -> list[Interaction]:
        if shape == "feedback":
            return self._feedback(session_id, feedback_of(record), now)
        if shape == otel.TOOL_SHAPE:
            return self._tool_result(session_id, record, now)
        if shape == "session_end":
            return self._session_end(session_id, score_value(record.outcome))
        raise BadRecord("unknown_shape", shape)

    def _session(self, session_id: str, now: float | None, position: Position | None,
                 anew: bool = False) -> _Session:
        """The session, made if new (or ``anew``: the one held forgotten first, without
        closing its action); heard from at ``now`` (to the back of the idle order) unless
        ``now`` is ``None`` (only looked up, see :meth:`_exchange`)."""
        sessions = self.sessions
        session = sessions.get(session_id)
        if anew and session is not None:
            self._drop(session_id, remember=False)
            session = None
        if session is None:
            session = sessions[session_id] = _Session()
        elif now is not None:
            sessions.move_to_end(session_id)
        if now is not None:
            session.last_seen = now
            if position is not None:
                session.partition = position[:2]
        return session

    def _exchange(self, session_id: str, record: WireRecord, now: float,
                  position: Position | None) -> list[Interaction]:
        assert record.request is not None
        messages: Any = record.request.messages
        # Every check that rejects the record comes before the session is made or touched:
        # a rejected record leaves the join as it was (a stream of records with a bad time
        # made a session each, past max_sessions; found by atheris).
        ts = parse_ts(record.ts)
        held = self.sessions.get(session_id)
        gone = held is not None and bool(self.forgotten) and \
            self._gone_after(session_id, held, position)
        if gone:
            held = None  # (forgotten below, once nothing can reject the record)
        array = partial = since = None
        built = 0  # bytes of earlier records the context holds (see _Session.built)
        if type(messages) in wire.LAZY_ARRAYS:
            # A lazily decoded request (ingest): the messages after the bytes it shares with
            # the session's previous request are decoded, the others are placeholders (a
            # session's records stay O(new) objects, not O(history)).
            array = bytes(messages)
            messages = partial = _decode_after_known_bytes(array, held)
            if messages is None:
                messages = decode_messages(array)
        action, logprobs, wire_action = response_action(record)
        closed: list[Interaction] = []
        known_prefix = _known_prefix(messages, held)
        if known_prefix is not None:
            # The usual call log: the request repeats the history we already hold, so only
            # the messages after it are normalized; the context reuses the Message objects
            # already built.
            new = normalize_messages(messages[len(known_prefix):])
            context = known_prefix + tuple(new)
            session = self._session(session_id, now, position)
            session.delta = False  # (its client sends the whole history)
        elif _repeats_history(messages := normalize_messages(
                messages if partial is None else decode_messages(array)),  # type: ignore[arg-type]
                              session := self._session(session_id, None, None, gone)):
            new = messages[session.history_len:]
            context = tuple(messages)
            back = self.forgotten.get(session_id) if held is None and messages else None
            if back is not None and _message_hash(messages[0]) != back[1]:
                # Not its first message again (a full history): a delta client back.
                session.base, session.first, _ = back
                session.delta = True
            else:
                session.base, session.first, session.delta = 0, None, False
        elif _duplicate(messages, action, ts, session):
            # The same exchange again (an at-least-once producer): nothing new to join, and
            # no news of the session either: it keeps its place in the idle order (moved up,
            # it let sessions behind it close first, out of the order of their records that
            # a partition's low watermark assumes).
            self.duplicates += 1
            session.heard = position  # (still held then: forgotten after it, if at all)
            return closed
        elif session.pending is not None and _resends_history(messages, session.pending):
            # A full history that does not echo the pending action (a retry, a regenerated
            # response, an edited earlier turn): a branch. The pending action was discarded.
            new = None
            context = tuple(messages)
            session.base, session.first, session.delta = 0, None, False
        else:
            # A client that sends only the new messages (or the first record seen of a
            # session): the request is the delta after what we know.
            new = messages
            pending = session.pending
            known = (*pending.context, pending.action) if pending is not None else ()
            context = (*known, *messages)
            if pending is not None:  # built on what earlier records held
                session.delta = True
                since = pending.since or pending.position
                # Counted with it: everything counted for the session so far but the bytes
                # kept to decode its next request (a delta client's context grew past
                # max_pending_bytes uncounted: 40k messages, 30 MB, counted as 2.3 KB).
                built = session.size - len(session.known_bytes or b"")
        if known_prefix is None:
            self._session(session_id, now, position)  # heard from (see _duplicate above)
        if session.pending is not None:
            if new is None:
                interaction = session.pending.close(session_id, (), "superseded")
            else:
                next_state = _with_reported(_until_assistant(new), session.pending.next_so_far())
                interaction = session.pending.close(session_id, next_state, "next_state")
            closed.append(interaction)
            session.last_closed = interaction
        index = session.base + len(context)  # its place in the session's whole history
        # Positional, in _Pending's field order.
        session.pending = _Pending(
            f"{session_id}#{index}", context, action, index, position,
            record.model or record.request.model
            or (record.response.model if record.response else None),
            _version(record.policy_version), logprobs, usage_of(record), ts,
            "openai_exchange", (), (), wire_action, None, None, since)
        session.history_len = index + 1
        session.last_action = action
        # What the next request may repeat byte for byte: this one's array up to its last
        # message (every message in it type-checked by now).
        session.known_bytes = None if array is None else array[:-1].rstrip()
        session.known_count = len(messages)
        session.built = built
        session.heard = position
        return closed

    def _transcript(self, session_id: str, record: WireRecord, now: float,
                    position: Position | None) -> list[Interaction]:
        assert record.messages is not None
        messages = tuple(normalize_messages(record.messages))
        # A growing transcript re-sent by its logger: only the actions not closed yet.
        held = self.sessions.get(session_id)
        start = 0 if held is None else \
            held.pending.index if held.pending is not None else held.history_len
        actions = [i for i in range(start, len(messages)) if messages[i].role == "assistant"]
        # Action i's context is messages[:i], a copy: checked before any state changes. A
        # 1.3 MB transcript of 32k short messages took 9.5 s and 2 GB unchecked.
        context = sum(actions)
        if context > self.max_record_context:
            raise BadRecord("too_large", f"a transcript of {len(messages)} messages: its "
                            f"{len(actions)} actions' contexts hold {context} messages "
                            f"together > join.max_record_context={self.max_record_context}")
        ts = parse_ts(record.ts)  # (before the session is touched, as in _exchange)
        session = self._session(session_id, now, position)
        closed: list[Interaction] = []
        if actions:
            # The same for every action of the record: worked out once.
            model, version = record.model, _version(record.policy_version)
            held, session.pending = session.pending, None
            last = actions[-1]
            for n, i in enumerate(actions):
                next_state = messages[i + 1:actions[n + 1] if i != last else len(messages)]
                if n == 0 and held is not None and held.index == i:
                    pending = held  # keeps feedback already attached
                elif i != last:
                    # Closed at once: the Interaction itself, as _Pending.close would build it
                    # (positional, in Interaction's field order).
                    closed.append(Interaction(
                        f"{session_id}#{i}", session_id, messages[:i], messages[i], next_state,
                        "next_state", (), None, model, version, None, _NO_USAGE, ts,
                        "transcript"))
                    continue
                else:
                    pending = _Pending(f"{session_id}#{i}", messages[:i], messages[i], i,
                                       position, model, version, None, _NO_USAGE, ts,
                                       "transcript")
                if i != last:
                    closed.append(pending.close(session_id, next_state, "next_state"))
                elif record.reward is not None:
                    # A transcript with a reward is complete: its outcome closes the last action.
                    closed.append(pending.close(session_id, next_state, "session_end",
                                                outcome=float(record.reward)))
                else:
                    # Its next state may still grow (a later, longer transcript): wait for it.
                    pending.partial_next = next_state
                    pending.position = position
                    pending.since = None  # the transcript holds the whole history
                    session.pending = pending
        if closed:
            session.last_closed = closed[-1]
        if session.pending is None:
            session.ended_at = position
        session.history_len = len(messages)
        session.known_bytes = None
        session.built = 0  # the transcript holds the whole history
        session.base, session.first, session.delta = 0, None, False
        return closed

    def _feedback(self, session_id: str, feedback: Feedback, now: float) -> list[Interaction]:
        session = self.sessions.get(session_id)
        if session is None or (session.pending is None and session.last_closed is None):
            raise BadRecord("unmatched_feedback", f"no action known for session {session_id!r}")
        # Heard from, but left where it is in the recency order (it holds the sessions
        # behind it open until it goes idle): so sessions close as idle in the order of
        # their pending actions' records, and an action below a partition's low watermark
        # was closed before it (what a restart's closed_below relies on).
        session.last_seen = now
        if session.pending is not None:
            kept = session.pending.feedback[-(self.max_feedback_per_action - 1):] \
                if self.max_feedback_per_action > 1 else ()
            if len(kept) < len(session.pending.feedback):
                self._count("feedback")  # a flood of feedback on one action stays bounded
            session.pending.feedback = (*kept, feedback)
            return []
        assert session.last_closed is not None
        # The action already met its next state: its feedback closes a second interaction
        # for the same action, scored by the feedback extractor alone.
        last = session.last_closed
        return [Interaction(
            interaction_id=last.interaction_id, session_id=session_id, context=last.context,
            action=last.action, next_state=(), closed_by="feedback", feedback=(feedback,),
            model=last.model, policy_version=last.policy_version,
            behaviour_logprobs=last.behaviour_logprobs, usage=Usage(), ts=last.ts,
            shape=last.shape)]

    def _tool_result(self, session_id: str, record: WireRecord, now: float
                     ) -> list[Interaction]:
        """A tool result reported on its own (an OTel ``execute_tool`` span).

        It is kept with the pending action that called the tool (the next exchange's request
        may repeat it, but the span's status is the authority on errors), or, with no such
        action (message content not captured), it closes an interaction of its own: the call
        as the action, the result as its next state.
        """
        assert record.messages
        result = normalize_message(record.messages[0])
        ts = parse_ts(record.ts)  # (before the session is touched, as in _exchange)
        # No session is made for a result nobody waits for: a flood of such spans (content
        # capture off) must not grow the sessions past max_sessions (found by atheris).
        session = self.sessions.get(session_id)
        pending = None
        if session is not None:  # heard from, left in place (as feedback, see _feedback)
            session.last_seen = now
            pending = session.pending
        if pending is not None:
            calls = pending.call_ids
            if calls is None:
                calls = pending.call_ids = frozenset(c.id for c in pending.action.tool_calls)
            answered = result.tool_call_id
            if calls and (answered is None or answered in calls):
                if pending.reported is None:
                    pending.reported = {}
                pending.reported[answered] = result
                return []
        arguments = (record.metadata or {}).get("arguments", "")
        call = ToolCall(id=result.tool_call_id or "", name=result.name or "",
                        arguments=arguments if isinstance(arguments, str) else "")
        return [Interaction(
            interaction_id=f"{session_id}#tool:{call.id or call.name}", session_id=session_id,
            context=(), action=Message(role="assistant", tool_calls=(call,)),
            next_state=(result,), closed_by="next_state", ts=ts, shape=otel.TOOL_SHAPE)]

    def _session_end(self, session_id: str, outcome: float | None) -> list[Interaction]:
        session = self._drop(session_id)
        if session is None or session.pending is None:
            return []
        pending = session.pending
        return [pending.close(session_id, pending.next_so_far(), "session_end", outcome=outcome)]

    # -- closing ----------------------------------------------------------------------------
    def close_idle(self, now: float, hold: Callable[[_Session], bool] | None = None
                   ) -> list[Interaction]:
        """Close and forget sessions idle for longer than ``idle_timeout_s``.

        Sessions are checked in the order their latest records came, from the head, which is
        O(1) when none is idle. With event time out of order, a session idle behind one that
        is not waits for it: a session may close late, never early. So does one that
        ``hold`` holds (read again after a restart: its later records, which may find it,
        are still to come), and every session behind it.
        """
        closed: list[Interaction] = []
        horizon = now - self.idle_timeout_s
        while self.sessions:
            session_id, session = next(iter(self.sessions.items()))
            if session.last_seen > horizon or (hold is not None and hold(session)):
                break
            closed.extend(self._forget(session_id, "idle_timeout"))
        return closed

    def close_all(self, closed_by: ClosedBy = "end_of_input") -> list[Interaction]:
        """Close every pending action (end of a file, or shutdown of a one-shot run)."""
        closed: list[Interaction] = []
        for session_id in list(self.sessions):
            closed.extend(self._forget(session_id, closed_by))
        return closed

    def drop_partitions(self, partitions: Iterable[tuple[str, int]]) -> int:
        """Forget (without closing) the sessions of revoked partitions; returns how many."""
        dropped = set(partitions)
        gone = [s for s, state in self.sessions.items() if state.partition in dropped]
        for session_id in gone:
            self._drop(session_id, remember=False)
        # and what was kept of their forgotten ones: their next owner carries them on
        forgotten = self.forgotten
        for session_id in [s for s, (_, _, made_at) in forgotten.items()
                           if made_at is not None and made_at[:2] in dropped]:
            del forgotten[session_id]
        return len(gone)

    def discard(self, session_id: str) -> None:
        """Forget a session without closing its pending action (closed before, elsewhere:
        a delta client's is remembered, as it was when it was forgotten then)."""
        self._drop(session_id)

    def _drop(self, session_id: str, remember: bool = True) -> _Session | None:
        """Stop holding a session; returns it (None if none was held). Its bytes are no
        longer pending; with ``remember``, a delta client's history length is kept (see
        :meth:`_remember`): not for a partition handed to another reader, nor a session
        started anew."""
        session = self.sessions.pop(session_id, None)
        if session is not None:
            self.pending_bytes -= session.size
            if remember:
                self._remember(session_id, session)
        return session

    def _forget(self, session_id: str, closed_by: ClosedBy) -> list[Interaction]:
        session = self._drop(session_id)
        pending = None if session is None else session.pending
        if pending is None:
            return []
        return [pending.close(session_id, pending.next_so_far(), closed_by)]

    def _bound(self) -> None:
        while self.sessions and (len(self.sessions) > self.max_sessions
                                 or self.pending_bytes > self.max_pending_bytes):
            oldest = next(iter(self.sessions))
            self._count("max_sessions" if len(self.sessions) > self.max_sessions
                        else "max_pending_bytes")
            # Bounded memory beats completeness: the evicted pending action is dropped and
            # counted, and no longer holds back the committed offset.
            self._drop(oldest)

    def _gone_after(self, session_id: str, held: _Session, position: Position | None
                    ) -> bool:
        """Whether a delta client's session was forgotten after the latest record heard for
        it (``_Session.heard``), and this is a later one: read again fast after a restart, the
        session did not go idle as it did in the run read again (its next record joined
        the held context, not the history length remembered: a copy of that record sent
        again was then taken for a new message). It is forgotten again, as it was then."""
        gone = self.forgotten.get(session_id)
        pending = held.pending
        heard = held.heard or (pending.position if pending is not None else None)
        return gone is not None and pending is not None and heard is not None \
            and gone[2] == heard and position != heard

    def _remember(self, session_id: str, session: _Session) -> None:
        """Keep a forgotten delta client's history length (see :attr:`forgotten`)."""
        pending = session.pending
        if pending is None or not session.delta:
            return  # not a delta client's (its records hold the whole history)
        if pending.interaction_id in self.settled:
            return  # forgotten before the checkpoint (see settled)
        first = session.first if session.base else \
            _message_hash(pending.context[0] if pending.context else pending.action)
        forgotten = self.forgotten
        forgotten[session_id] = (session.history_len, first,  # type: ignore[assignment]
                                 session.heard or pending.position)
        forgotten.move_to_end(session_id)
        if len(forgotten) > self.max_sessions:
            forgotten.popitem(last=False)

    def _count(self, reason: str) -> None:
        self.evicted += 1
        self.evictions[reason] = self.evictions.get(reason, 0) + 1

    # -- state ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, list[Forgotten]]:
        """What a restart needs besides the records it reads again: the forgotten delta
        sessions (their pending state is rebuilt from the records)."""
        return {"forgotten": [(session_id, *gone) for session_id, gone in self.forgotten.items()]}

    def load_state_dict(self, state: dict[str, list[Forgotten]]) -> None:
        self.forgotten = OrderedDict(
            (session_id, (length, first, None if made_at is None else tuple(made_at)))
            for session_id, length, first, made_at in state.get("forgotten", ()))

    # -- offsets ----------------------------------------------------------------------------
    def low_watermarks(self, rebuild: bool = True) -> dict[tuple[str, int], int]:
        """Per (topic, partition): the offset of the oldest record a pending action needs
        (for a delta client's, the record its session's state was first built from).

        ``rebuild=False``: of the oldest record that made a pending action (a delta client's
        its latest). Sessions go idle in the order of those records, so every action made
        below it was closed (what :attr:`Pipeline.closed_below` relies on); not so below the
        record a delta client's session was first built from, seen again since.
        """
        marks: dict[tuple[str, int], int] = {}
        for session in self.sessions.values():
            pending = session.pending
            if pending is None:
                position = session.ended_at
            else:
                position = (pending.since or pending.position) if rebuild else pending.position
            if position is None:
                continue
            topic, partition, offset = position
            key = (topic, partition)
            if key not in marks or offset < marks[key]:
                marks[key] = offset
        return marks

    def pending_at(self, session_id: str, position: Position) -> str | None:
        """The id of the session's pending action if the record at ``position`` made it (or,
        none pending, of the last action closed if that record ended the session so)."""
        session = self.sessions.get(session_id)
        if session is None:
            return None
        pending = session.pending
        if pending is None:
            held = session.last_closed if session.ended_at == position else None
        else:
            held = pending if pending.position == position else None
        return None if held is None else held.interaction_id

    def held_action(self, session_id: str) -> str | None:
        """The id of the action the session's state was left with: its pending action, else
        the last one closed (feedback joins it, see :meth:`_feedback`); ``None`` if not held."""
        session = self.sessions.get(session_id)
        if session is None:
            return None
        held = session.last_closed if session.pending is None else session.pending
        return None if held is None else held.interaction_id

    @property
    def pending_count(self) -> int:
        """Actions waiting for their next state."""
        return sum(1 for s in self.sessions.values() if s.pending is not None)


def _message_hash(message: Message) -> int:
    """A message's hash, the same in every process (a checkpoint keeps it; ``hash()`` of a
    string is not)."""
    return zlib.crc32(_encode(message))


def _version(value: str | int | None) -> str | None:
    return None if value is None else str(value)


def _with_reported(new: list[Message], reported: tuple[Message, ...]) -> tuple[Message, ...]:
    """The next state, with tool results reported on their own (OTel tool spans) replacing
    the request's copies of the same call's result, or put first where it has none."""
    if not reported:
        return tuple(new)
    by_id = {m.tool_call_id: m for m in reported}
    merged = [by_id.pop(m.tool_call_id, m) if m.role == "tool" else m for m in new]
    return (*by_id.values(), *merged)


def _until_assistant(messages: list[Message]) -> list[Message]:
    out = []
    for message in messages:
        if message.role == "assistant":
            break
        out.append(message)
    return out


def _decode_after_known_bytes(array: bytes, session: _Session | None) -> list[Any] | None:
    """The request's messages when its array starts with the session's previous request's
    bytes: ``None`` placeholders for those ``k`` messages (``k``: the index of the pending
    action, which the next message echoes), decoded messages after them; else ``None``.

    Bytes, not content: a history re-serialized with other whitespace or key order is decoded
    in full, then joined as before. Messages are JSON objects (self-delimiting), so an equal
    leading byte string followed by a comma holds exactly the same first ``k`` messages.
    """
    if session is None or session.known_bytes is None or session.pending is None:
        return None
    k = session.pending.index
    known = session.known_bytes
    if k == 0 or session.known_count != k or not array.startswith(known):
        return None
    rest = array[len(known):].lstrip()
    if rest[:1] != b",":
        return None
    return [None] * k + decode_messages(b"[" + rest[1:])


def _known_prefix(messages: list[Any], session: _Session | None
                  ) -> tuple[Message, ...] | None:
    """The history held for an exchange session, if this request repeats it (else ``None``).

    Only the echo of the pending action is normalized to check it: the messages before it
    were checked when the earlier records of the session arrived.
    """
    if session is None or session.pending is None or session.pending.shape not in EXCHANGE_SHAPES \
            or session.base:  # (the held context is not the whole history)
        return None
    pending = session.pending
    n = pending.index + 1
    if session.history_len != n or len(messages) < n:
        return None
    echoed = messages[n - 1]
    # An echo equal to the response's message as decoded normalizes to the action itself.
    if echoed != pending.wire_action and \
            not _same_action(normalize_message(echoed), pending.action):
        return None
    return (*pending.context, pending.action)


def _same_action(echoed: Message, last: Message) -> bool:
    return echoed.role == "assistant" and (
        [c.id for c in echoed.tool_calls] == [c.id for c in last.tool_calls]
        and (echoed.content == last.content or bool(last.tool_calls)))


def _repeats_history(messages: list[Message], session: _Session) -> bool:
    """Does the request repeat the whole known history (as real clients send it)?"""
    n = session.history_len
    if n == 0 or len(messages) < n or session.last_action is None:
        return n == 0
    echoed = messages[n - 1]
    last = session.last_action
    return echoed.role == "assistant" and (
        [c.id for c in echoed.tool_calls] == [c.id for c in last.tool_calls]
        and (echoed.content == last.content or bool(last.tool_calls)))


def _duplicate(messages: list[Message], action: Message, ts: float, session: _Session
               ) -> bool:
    """Is this exchange one the session already joined: the pending one, or the one it closed
    last (a record delivered twice, or again after the next one)? Same request, same action
    (for a delta client, same time too: its user saying the same thing again, answered the
    same way, sends the same request).
    """
    delta = session.delta
    n = len(messages)
    for held in (session.pending, session.last_closed):
        if held is None or held.action != action:
            continue
        context = held.context
        if len(context) == n and context == tuple(messages):
            return True
        # A delta client's request holds only what followed the previous action: the same
        # delta again is the tail of the context it built, right after that action.
        if delta and held.ts == ts and 0 < n < len(context) \
                and context[-n - 1].role == "assistant" and context[-n:] == tuple(messages):
            return True
    return False


def _resends_history(messages: list[Message], pending: _Pending) -> bool:
    """Is a request that does not echo the pending action a full history (a branch) rather
    than the messages after the action (a delta client)?

    A full history starts with the context's first message; a delta starts with what
    followed the action: the results of its tool calls, or a user message, never a system
    prompt. So the request is a branch when it starts with a system (or developer) prompt,
    or when its first message equals the context's first message and that message could not
    start a delta: the action called tools (a delta would start with their results), or the
    request also repeats the context's second message, or it is the whole one-message
    context resent.
    Left for a delta: a request that only repeats a lone first user message while more was
    said since (a user saying the same thing again).
    """
    context = pending.context
    if messages and messages[0].role == "system":
        # A delta starts with what followed the action, never with a system prompt: a full
        # history, whatever context is held (one rebuilt from a delta record alone, read
        # again after a restart from the middle of a delta run, does not start with it).
        return True
    if not messages or not context or messages[0] != context[0]:
        return False
    if messages[0].role != "user" or pending.action.tool_calls:
        return True
    if len(context) == 1:
        return len(messages) == 1
    return len(messages) > 1 and messages[1] == context[1]

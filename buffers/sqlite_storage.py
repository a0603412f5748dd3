"""The durable default storage: one SQLite database file per buffer, in WAL mode.

Design note (why SQLite WAL rather than a hand-written segment log):

* **No torn tuple after kill -9.** Every add since the last :meth:`SQLiteStorage.flush` runs
  inside one open transaction; ``flush`` commits it. SQLite's WAL commit is atomic (frames
  are checksummed and a commit frame marks the end), so a crash leaves exactly the last
  committed state: every flushed tuple whole, nothing of the unflushed ones. A segment
  log would need the same checksums, recovery scan, compaction of evicted records and an
  index for dedup: all things SQLite already has, tested far more than we could.
* **Durability knob.** ``synchronous=FULL`` (default) fsyncs the WAL on every commit, so a
  flush also survives power loss, which is what lets the daemon commit Kafka offsets right
  after it; ``NORMAL`` survives process crashes only, for cheaper flushes.
* **Variable-length payloads are never copied per sample.** A row is ``(seq, key, source,
  version, priority, payload, chain, context_len)`` with the msgpack-encoded tuple in
  ``payload``. Sampling, eviction and staleness run on numpy metadata in memory
  (:class:`Storage`); a batch fetches only its own rows by primary key.
* **Each context message is stored once per session, not once per tuple.** Tuple k of a
  session carries every message before its action, so inline contexts made the file, the
  encoding and the fsyncs grow with the square of the session length. A *chain* is a stored
  message history of one session, in rows ``segments(chain, start, messages)``: each row
  holds the messages a chain grew by within one written batch (one row, not one per message:
  each row costs a statement execution and b-tree entries). A tuple whose context is a
  chain's first ``context_len`` messages (the same turn, or an earlier one written late)
  stores ``chain``/``context_len`` and a payload without the context; a longer context that
  starts with the whole chain appends its new messages to it. Any other context is a branch
  (an edited or regenerated history): the first time it is stored inline, as before chains,
  so a stream whose contexts never extend each other costs no extra rows; a context that
  extends that inline branch (the session went on from the edit) starts the session's new
  chain. Prefix tests compare the last shared message first (a different history usually
  differs there), then the tuples, which CPython compares element by element with an
  identity shortcut: a pointer compare per message when the daemon reuses the previous
  context's objects, as it does. The identity of the last message alone would not prove a
  prefix: the redactor hands out one object for equal redacted messages, so two histories
  can share their last object. NULL ``chain`` (every row written before chains existed,
  empty contexts, branches) means the context is inline in the payload. A chained payload
  starts with the byte ``0xC1`` (never valid msgpack), so code older than chains fails to
  decode it instead of reading an empty context.
* **Segments are a rowid table with a (chain, start) index, not WITHOUT ROWID.** Rows are
  1-5 KB and arrive interleaved across chains: keyed by (chain, start) the b-tree split its
  pages half-way and left a third of them empty (measured on the call-log bench); appended
  in rowid order the pages fill, and the index of three integers is small.
* **Messages are freed with their last tuple.** Live tuples per chain are counted in memory
  (rebuilt on open from the live rows); when a chain's count drops to zero its segments and
  its ``chains`` row are deleted, queued like any write, in the transaction that evicted the
  tuple. Chains no live tuple references (after a capacity shrink on open) are deleted on
  open.
* **Bounded memory.** The session -> newest-chain map holds live chains only (at most one per
  live tuple); the decoded chain histories (and last inline branch) used for the prefix
  tests are an LRU bounded in sessions and characters, read back from the file on a miss.
* **Blobs are bound as bytearray.** Python's sqlite3 binds ``bytes`` (and None) through its
  adapter look-up, which formats and drops an AttributeError per value; a bytearray skips
  it (measured 0.8 us less per row).
* **Dedup survives restarts.** ``key`` is UNIQUE-indexed. Eviction sets ``payload`` to NULL
  but keeps the row, so re-delivered keys are still refused; rows of evicted tuples older
  than the last ``dedup_horizon`` inserts are deleted on flush, so the file stays bounded.
* **Read beside its writer.** ``read_only`` opens a file another process writes (the
  daemon, while ``nextstate train`` samples its buffers): nothing is written, not even on
  open (a write would wait on the daemon's open transaction, and SQLite answered "database
  is locked"); priority updates stay in memory; :meth:`SQLiteStorage.refresh` takes in what
  the writer committed since, and a fetch of a tuple the writer evicted meanwhile raises
  :class:`SnapshotBehind` (the buffer then refreshes and draws again). WAL lets the reads go
  on while the writer writes.
* **One statement per batch.** Adds and evictions are queued and run as one ``executemany``
  each before the next read or flush (a tuple evicted within its own batch is inserted
  without its payload, so its key is still deduplicated). Durability is unchanged: nothing
  is committed before ``flush``.
* **Rebuilt on open.** Slot metadata and priorities are read back (payloads are not) and
  the sampler's sum tree is rebuilt from them. Priority updates are written on flush.
* **Session keys are derived, not stored.** A slot's session key (``Storage.session``) is
  the hash of its session id, salted per process, so it is recomputed on open: from the
  chain's ``chains.session`` for a chained context (the usual row), else from the
  ``session_id`` in the payload (inline contexts: branches, empty contexts, files written
  before chains). A stable digest in a column cost +0.7 us (4%) per stored tuple on the
  call-log bench, for what an open derives in one pass; and files of any age open the same
  way, with no migration.

One connection, used by one thread at a time (the buffer is not thread-safe).
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

import msgspec
import numpy as np

from nextstate.buffers.statefile import (
    CorruptStateFile,
    check_sqlite_tables,
    corrupt_sqlite,
    is_corruption,
)
from nextstate.buffers.storage import FREE, Key, Storage, session_key, source_code
from nextstate.extractors.types import Message, ScoredTuple

_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder(ScoredTuple)
_MESSAGES_DECODER = msgspec.msgpack.Decoder(tuple[Message, ...])

_CHAINED = b"\xc1"  # first byte of a payload whose context is in a chain (never msgpack)
PAGE_SIZE = 16384
_CHUNK = 900  # bound on SQL parameters per statement (SQLite's limit is far higher)
CONTEXT_CACHE_SESSIONS = 1024
"""Sessions whose newest chain is kept decoded in memory for the prefix test."""
CONTEXT_CACHE_CHARS = 1 << 25
"""Content characters those cached chains may hold together (GUI trees can be 100 KB each)."""
_ITER_CHAINS = 4096  # chains kept decoded while iter_tuples walks the file


class _SessionOnly(msgspec.Struct):
    """The one field of a stored ScoredTuple that deriving session keys reads."""

    session_id: str


_SESSION_DECODER = msgspec.msgpack.Decoder(_SessionOnly)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS tuples (
    seq INTEGER PRIMARY KEY,    -- insertion order; never reused
    key TEXT NOT NULL UNIQUE,   -- dedup key: JSON of (interaction_id, extractor, kind)
    source TEXT NOT NULL,
    version INTEGER NOT NULL,   -- parsed policy version, -1 unknown
    priority REAL NOT NULL,
    payload BLOB,               -- msgpack ScoredTuple; NULL once evicted (key kept)
    chain INTEGER,              -- context = messages of chain [0, context_len); NULL: inline
    context_len INTEGER
);
CREATE TABLE IF NOT EXISTS chains (
    chain INTEGER PRIMARY KEY,  -- a stored message history; ids grow
    session TEXT NOT NULL       -- whose (read on open to map sessions to their newest chain)
);
CREATE TABLE IF NOT EXISTS segments (
    chain INTEGER NOT NULL,
    start INTEGER NOT NULL,     -- position of its first message in the history, 0-based
    messages BLOB NOT NULL      -- msgpack array of the Messages appended together
);
CREATE UNIQUE INDEX IF NOT EXISTS segments_by_chain ON segments (chain, start);
"""
# Columns added since the first schema: a file made before them gets them with ALTER TABLE
# (NULL in every old row: context inline).
_ADDED_COLUMNS = (("tuples", "chain", "INTEGER"), ("tuples", "context_len", "INTEGER"))
# What a file of any age holds: a database with other tables is not a buffer.
_FIRST_SCHEMA = {"tuples": ("seq", "key", "source", "version", "priority", "payload")}
_MOVE_ASIDE = ("move it aside to start this buffer empty (its tuples are lost to training and "
               "export, and stored again if seen again)")


def _encode_blob(value: Any) -> bytearray:
    # A bytearray, not bytes: sqlite3 binds bytes through its adapter look-up, which
    # formats and drops an AttributeError per value (~0.8 us a row, measured).
    blob = bytearray()
    _ENCODER.encode_into(value, blob)
    return blob


def _chars(messages: tuple[Message, ...]) -> int:
    # A loop, not sum(map(len, map(attrgetter("content")))): the interpreter reads a Struct
    # field faster than attrgetter's generic look-up (measured 2.5x fewer instructions).
    chars = 0
    for message in messages:
        chars += len(message.content)
    return chars


def _starts_with(history: tuple[Message, ...], prefix: tuple[Message, ...]) -> bool:
    """Whether ``history`` begins with the (non-empty) ``prefix``.

    The last message of the prefix is compared first: a different history usually differs
    there, and equal-but-not-identical messages cost a field-by-field compare each. Then
    the tuple comparison, which tests identity before equality element by element: a
    pointer compare per message when the caller reused the stored objects, as the daemon
    does. Identity of the last message alone would not do: the redactor hands out one
    object for equal redacted messages, so two histories can share their last object.
    """
    length = len(prefix)
    if length > len(history):
        return False
    mine, theirs = history[length - 1], prefix[-1]
    if mine is not theirs and mine != theirs:
        return False
    return history is prefix or history[:length] == prefix


class _History:
    """A session's newest chain as cached in memory, and its last inline branch."""

    __slots__ = ("branch", "branch_chars", "chain", "chars", "known")

    def __init__(self, chain: int, known: tuple[Message, ...], chars: int) -> None:
        self.chain = chain
        self.known = known                            # every message of the chain
        self.branch: tuple[Message, ...] | None = None  # the last context stored inline
        self.branch_chars = 0
        self.chars = chars                            # content characters of both


class SnapshotBehind(Exception):
    """A read-only storage's writer evicted (or pruned) tuples it still holds: refresh."""


def encode_key(key: Key) -> str:
    """The unambiguous text form of a dedup key stored in the ``key`` column."""
    return msgspec.json.encode(key).decode()


class SQLiteStorage(Storage):
    """Durable slots in a SQLite WAL database.

    Args:
        path: the database file (created if missing, with its ``-wal``/``-shm`` files).
        capacity: number of slots; on reopen with a smaller capacity the oldest stored
            tuples beyond it are evicted.
        dedup_horizon: see :class:`~nextstate.buffers.spec.BufferSpec`.
        synchronous: ``FULL`` (flush survives power loss) or ``NORMAL``.
        context_cache_sessions: sessions whose stored history stays decoded in memory.
        context_cache_chars: content characters those histories may hold together.
        read_only: read a file another process writes (see the module's notes); it must
            exist, and the storage refuses writes.

    Example:
        >>> import tempfile, pathlib
        >>> from nextstate.extractors.types import Message, ScoredTuple
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "b.sqlite3"
        >>> store = SQLiteStorage(path, capacity=10)
        >>> t = ScoredTuple("s#1", "s", "tool", "evaluative", "tool", (), Message("assistant"))
        >>> store.write(store.free_slot(), t, priority=1.0, version=-1)
        >>> store.flush(); store.close()
        >>> reopened = SQLiteStorage(path, capacity=10)
        >>> list(reopened.iter_tuples()) == [t], t.key in reopened
        (True, True)
        >>> reopened.close()
    """

    def __init__(
        self,
        path: str | Path,
        capacity: int,
        dedup_horizon: int | None = None,
        synchronous: Literal["FULL", "NORMAL"] = "FULL",
        *,
        context_cache_sessions: int = CONTEXT_CACHE_SESSIONS,
        context_cache_chars: int = CONTEXT_CACHE_CHARS,
        read_only: bool = False,
    ) -> None:
        super().__init__(capacity, dedup_horizon)
        self.path = Path(path)
        self.read_only = read_only
        if read_only:
            if not self.path.is_file():
                raise FileNotFoundError(f"{self.path}: no buffer file to read")
            self._conn: sqlite3.Connection | None = sqlite3.connect(
                self.path.resolve().as_uri() + "?mode=ro", uri=True, isolation_level=None,
                check_same_thread=False)
            # Instance attributes: the writer's hot path pays no check for this mode.
            self._put = self._drop = self._refuse_write  # type: ignore[method-assign]
        else:
            self._conn = sqlite3.connect(self.path, isolation_level=None,
                                         check_same_thread=False)
        with self._closed_on_error():
            self._set_up_file(synchronous)
        self._in_transaction = False
        self._inserts: list[tuple[Any, ...]] = []  # rows written since the last statement
        self._pending: dict[int, int] = {}         # their seq -> position in _inserts
        self._drops: list[tuple[int]] = []         # seqs evicted since the last statement
        self._new_chains: list[tuple[int, str]] = []           # (chain, session) to insert
        # chain -> (start, context): its messages from start on are to be inserted.
        self._new_segments: dict[int, tuple[int, tuple[Message, ...]]] = {}
        self._dead_chains: list[tuple[int]] = []   # chains whose last live tuple went
        self._key_texts: dict[Key, str] = {}       # encode_key of the last known_keys call
        self._dirty = np.zeros(capacity, dtype=bool)
        self._pruned_below = 0
        # Slot -> the chain its tuple's context is in (absent: inline or empty). A dict of
        # ints, not numpy (storing a Python int in an int64 array costs ~0.5 us) nor a list
        # (the cyclic GC would walk it: a dict holding only ints is not tracked).
        self._slot_chain: dict[int, int] = {}
        self._chains: dict[int, list[Any]] = {}   # live chain -> [live tuples, session]
        self._newest: dict[str, int] = {}          # session -> its newest live chain
        self._next_chain = 0
        # session -> what its newest chain holds, least recently used first.
        self._histories: OrderedDict[str, _History] = OrderedDict()
        self._history_chars = 0
        if context_cache_sessions < 1 or context_cache_chars < 1:
            raise ValueError("context_cache_sessions and context_cache_chars must be >= 1")
        self._cache_sessions = context_cache_sessions
        self._cache_chars = context_cache_chars
        self._in_snapshot = False  # read-only: a read transaction is held (see _snapshot)
        with self._closed_on_error(), self._snapshot():
            self._rebuild(preferred=None)
            if not read_only:
                self._prune(full=True)

    @contextlib.contextmanager
    def _snapshot(self) -> Iterator[None]:
        """Read-only: the statements within see one committed state of the file (a read
        transaction; WAL keeps it while the writer commits), not a row the writer evicted
        between two of them. The writer's own reads need none."""
        if not self.read_only or self._in_snapshot:  # (within one: it covers these too)
            yield
            return
        self._db.execute("BEGIN")
        self._in_snapshot = True
        try:
            yield
        finally:
            self._in_snapshot = False
            if self._conn is not None:
                self._conn.execute("COMMIT")

    def _refuse_write(self, slot: int, seq: int, *rest: Any) -> None:
        raise ValueError(f"{self.path}: opened read-only (another process writes it)")

    def _set_up_file(self, synchronous: str) -> None:
        """Check the file is a buffer (or new), then set its pragmas and schema."""
        # Before anything writes: a pragma or our schema would change another program's file.
        check_sqlite_tables(self._db, self.path, _FIRST_SCHEMA, "a nextstate buffer",
                            _MOVE_ASIDE)
        if self.read_only:  # the writer set the file up; this connection may not write
            return
        # 16 KiB pages (default 4 KiB) for a new file: a typical tuple (2-3 KB of msgpack)
        # fills most of a 4 KiB page on its own, wasting the rest; measured 1.5-1.8x faster
        # durable inserts. An existing file keeps its page size (it takes a VACUUM to change).
        self._db.execute(f"PRAGMA page_size={PAGE_SIZE}")
        mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise RuntimeError(f"{self.path}: cannot enable WAL (journal_mode={mode})")
        if synchronous not in ("FULL", "NORMAL"):
            raise ValueError(f"synchronous must be FULL or NORMAL, got {synchronous!r}")
        self._db.execute(f"PRAGMA synchronous={synchronous}")
        # 16 MiB of page cache (default 2 MiB): keeps the hot part of the key index in
        # memory for large buffers; measured +30% inserts/s, bounded RSS.
        self._db.execute("PRAGMA cache_size=-16384")
        self._db.executescript(_SCHEMA)
        for table, column, kind in _ADDED_COLUMNS:
            if column not in {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}:
                self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")

    @contextlib.contextmanager
    def _closed_on_error(self) -> Iterator[None]:
        """Opening: whatever fails (a damaged file too, see :meth:`_reading`) closes it."""
        try:
            with self._reading():
                yield
        except BaseException:
            if self._conn is not None:
                self._conn.close()  # without a flush: nothing was written worth keeping
                self._conn = None
            raise

    @contextlib.contextmanager
    def _reading(self) -> Iterator[None]:
        """SQLite saying the file is damaged is a :class:`CorruptStateFile` naming it (on
        open, and mid-run: a damaged page is often first read by a dedup look-up or a write,
        which before ended ``run`` in a traceback naming no file)."""
        try:
            yield
        except sqlite3.DatabaseError as exc:
            if not is_corruption(exc):
                raise
            raise corrupt_sqlite(self.path, exc, _MOVE_ASIDE) from None

    def _undecodable(self, seq: int, exc: msgspec.DecodeError) -> CorruptStateFile:
        """A stored tuple that does not decode: evicting it keeps the rest (and its key)."""
        return CorruptStateFile(
            self.path, f"the tuple stored as seq {seq} does not decode ({exc})",
            f"evict it with `sqlite3 {self.path} 'UPDATE tuples SET payload = NULL WHERE "
            f"seq = {seq}'` (its key still deduplicates), or {_MOVE_ASIDE}")

    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise ValueError(f"{self.path}: storage is closed")
        return self._conn

    def _begin(self) -> None:
        if not self._in_transaction:
            self._db.execute("BEGIN")
            self._in_transaction = True

    def _commit(self) -> None:
        if self._in_transaction:
            self._db.execute("COMMIT")
            self._in_transaction = False

    # -- layout ------------------------------------------------------------------------

    def _rebuild(self, preferred: dict[int, tuple[int, float]] | None) -> None:
        """Lay the stored rows out in slots: ``preferred`` maps seq -> (slot, priority).

        Also recounts the live tuples of every chain and deletes chains none references.
        """
        rows = self._db.execute(
            "SELECT seq, source, version, priority, chain FROM tuples"
            " WHERE payload IS NOT NULL ORDER BY seq"
        ).fetchall()
        if len(rows) > self.capacity:
            # Capacity shrank since the last run: the oldest extras go, FIFO (read-only: they
            # are only left out).
            cutoff = rows[-self.capacity][0]
            if not self.read_only:
                self._begin()
                self._db.execute(
                    "UPDATE tuples SET payload = NULL WHERE seq < ? AND payload IS NOT NULL",
                    (cutoff,),
                )
            rows = rows[-self.capacity :]
        sessions = self._session_keys_of(rows)
        self._reset_layout()
        self._dirty[:] = False
        self._slot_chain = {}
        max_seq = self._db.execute("SELECT max(seq) FROM tuples").fetchone()[0]
        self.next_seq = 0 if max_seq is None else max_seq + 1
        unplaced = []
        for (seq, source, version, priority, chain), session in zip(rows, sessions,
                                                                    strict=True):
            slot_priority = preferred.get(seq) if preferred else None
            if slot_priority is not None and slot_priority[0] < self.capacity:
                slot, wanted = slot_priority
                self._place(slot, seq, source_code(source), version, wanted, session)
                if chain is not None:
                    self._slot_chain[slot] = chain
                if wanted != priority:
                    self._dirty[slot] = True
            else:
                unplaced.append((seq, source, version, priority, chain, session))
        empty = iter(np.flatnonzero(self.seq == FREE).tolist())
        for seq, source, version, priority, chain, session in unplaced:
            slot = next(empty)
            self._place(slot, seq, source_code(source), version, priority, session)
            if chain is not None:
                self._slot_chain[slot] = chain
        self._finish_layout()
        self._rebuild_chains(rows)
        self._commit()

    def _session_keys_of(self, rows: list[tuple[Any, ...]]) -> list[int]:
        """The session key of each live row: the hash of its chain's session, or of the
        ``session_id`` in its payload when its context is inline."""
        sessions = dict(self._db.execute("SELECT chain, session FROM chains").fetchall())
        keys = [session_key(sessions[row[4]]) if row[4] in sessions else None for row in rows]
        missing = [row[0] for row, key in zip(rows, keys, strict=True) if key is None]
        inline: dict[int, int] = {}
        for start in range(0, len(missing), _CHUNK):
            chunk = missing[start : start + _CHUNK]
            marks = ",".join("?" * len(chunk))
            for seq, payload in self._db.execute(
                f"SELECT seq, payload FROM tuples WHERE seq IN ({marks})", chunk
            ):
                body = memoryview(payload)[1:] if payload[:1] == _CHAINED else payload
                try:
                    inline[seq] = session_key(_SESSION_DECODER.decode(body).session_id)
                except msgspec.DecodeError as exc:
                    raise self._undecodable(seq, exc) from None
        return [inline[row[0]] if key is None else key
                for row, key in zip(rows, keys, strict=True)]

    def _rebuild_chains(self, rows: list[tuple[Any, ...]]) -> None:
        """Count the live tuples of each chain; delete the chains no live row references."""
        counts: dict[int, int] = {}
        for row in rows:
            if row[4] is not None:
                counts[row[4]] = counts.get(row[4], 0) + 1
        self._chains, self._newest = {}, {}
        self._histories.clear()
        self._history_chars = 0
        dead = []
        for chain, session in self._db.execute("SELECT chain, session FROM chains ORDER BY chain"):
            # After a restart the id of a deleted newest chain may come again: only evicted
            # rows (never read) can still name it.
            self._next_chain = max(self._next_chain, chain + 1)
            if chain in counts:
                self._chains[chain] = [counts[chain], session]
                self._newest[session] = chain
            else:
                dead.append((chain,))
        if dead and not self.read_only:
            self._begin()
            self._db.executemany("DELETE FROM segments WHERE chain = ?", dead)
            self._db.executemany("DELETE FROM chains WHERE chain = ?", dead)

    # -- contexts ----------------------------------------------------------------------

    def _chain_for(self, session: str, context: tuple[Message, ...]) -> int | None:
        """The chain holding ``context`` as a prefix, extended or started as needed; None
        when ``context`` is to be stored inline (a branch seen for the first time).

        Runs once per stored tuple, so the two usual cases (the session's next turn, and
        another tuple of the same turn) are :func:`_starts_with` spelled out in line.
        """
        histories = self._histories
        entry = histories.get(session)
        if entry is not None:
            histories.move_to_end(session)
        else:
            entry = self._load_history(session)
        if entry is not None:
            known = entry.known
            stored, wanted = len(known), len(context)
            if wanted > stored:
                mine, theirs = known[-1], context[stored - 1]
                if (mine is theirs or mine == theirs) and context[:stored] == known:
                    chain = entry.chain
                    queued = self._new_segments.get(chain)
                    self._new_segments[chain] = (stored if queued is None else queued[0],
                                                 context)
                    entry.known = context
                    self._grow(entry, _chars(context[stored:]))
                    return chain
            else:
                mine, theirs = known[wanted - 1], context[-1]
                if (mine is theirs or mine == theirs) and (
                        context is known or known[:wanted] == context):
                    return entry.chain
            branch = entry.branch
            if branch is None or not _starts_with(context, branch):
                # A branch seen once (a one-off edit, or a stream whose contexts never
                # extend each other) costs what it did before chains: stored inline.
                chars = _chars(context)
                self._grow(entry, chars - entry.branch_chars)
                entry.branch, entry.branch_chars = context, chars
                return None
        # A new session, or a branch that the session goes on from: a new chain.
        chain = self._next_chain
        self._next_chain += 1
        self._chains[chain] = [0, session]
        self._newest[session] = chain
        self._new_chains.append((chain, session))
        self._queue_segment(chain, context, 0)
        self._remember(session, _History(chain, context, _chars(context)))
        return chain

    def _queue_segment(self, chain: int, context: tuple[Message, ...], start: int) -> None:
        """Queue the messages of ``context`` from ``start`` on, as one row of ``segments``.

        One row per chain per written batch, not per message or per append: each row costs
        a statement execution and b-tree entries, and a session often grows several times
        within one batch. The row is encoded when written, from the newest context queued.
        """
        queued = self._new_segments.get(chain)
        self._new_segments[chain] = (start if queued is None else queued[0], context)

    def _remember(self, session: str, entry: _History) -> None:
        """Cache a session's newest history, evicting the least recently used over bounds."""
        old = self._histories.pop(session, None)
        if old is not None:
            self._history_chars -= old.chars
        self._histories[session] = entry
        self._history_chars += entry.chars
        self._bound_histories()

    def _grow(self, entry: _History, chars: int) -> None:
        entry.chars += chars
        self._history_chars += chars
        if self._history_chars > self._cache_chars:
            self._bound_histories()

    def _bound_histories(self) -> None:
        # The most recent entry stays, however large: it is the one the caller is using.
        histories = self._histories
        while len(histories) > 1 and (len(histories) > self._cache_sessions
                                      or self._history_chars > self._cache_chars):
            self._history_chars -= histories.popitem(last=False)[1].chars

    def _load_history(self, session: str) -> _History | None:
        """A cache miss: read the session's newest live chain back from the file."""
        chain = self._newest.get(session)
        if chain is None:
            return None
        queued = self._new_segments.get(chain)
        # A chain grown in this batch has its whole history queued (not yet in the file).
        known = queued[1] if queued is not None else self._load_chains([chain])[chain]
        entry = _History(chain, known, _chars(known))
        self._remember(session, entry)
        return entry

    def _load_chains(self, chains: Iterable[int]) -> dict[int, tuple[Message, ...]]:
        """The decoded messages of each chain (queued writes must have run)."""
        wanted = list(chains)
        found: dict[int, list[Message]] = {chain: [] for chain in wanted}
        decode = _MESSAGES_DECODER.decode
        with self._reading():
            for start in range(0, len(wanted), _CHUNK):
                chunk = wanted[start : start + _CHUNK]
                marks = ",".join("?" * len(chunk))
                for chain, messages in self._db.execute(
                    f"SELECT chain, messages FROM segments WHERE chain IN ({marks})"
                    " ORDER BY chain, start", chunk
                ):
                    try:
                        found[chain] += decode(messages)
                    except msgspec.DecodeError as exc:
                        raise CorruptStateFile(
                            self.path, f"the context messages of chain {chain} do not "
                            f"decode ({exc})", _MOVE_ASIDE) from None
        return {chain: tuple(messages) for chain, messages in found.items()}

    def _chain_died(self, chain: int) -> None:
        """Forget a chain whose last live tuple was evicted; queue deleting its rows."""
        session = self._chains.pop(chain)[1]
        if self._newest.get(session) == chain:
            del self._newest[session]
        cached = self._histories.get(session)
        if cached is not None and cached.chain == chain:
            self._history_chars -= self._histories.pop(session).chars
        self._new_segments.pop(chain, None)
        self._dead_chains.append((chain,))

    def _decode(self, seq: int, payload: bytes, context: tuple[Message, ...] | None
                ) -> ScoredTuple:
        try:
            if context is None:
                return _DECODER.decode(payload)
            item = _DECODER.decode(memoryview(payload)[1:])
        except msgspec.DecodeError as exc:
            raise self._undecodable(seq, exc) from None
        return msgspec.structs.replace(item, context=context)

    # -- Storage hooks -------------------------------------------------------------------

    def _put(self, slot: int, seq: int, item: ScoredTuple, priority: float,
             version: int) -> None:
        # Queued, not executed: one executemany per batch (see _write_queued). Every read
        # and the flush run the queue first, so nothing can observe the difference.
        key = self._key_texts.get((item.interaction_id, item.extractor, item.kind))
        if key is None:
            key = encode_key(item.key)
        context = item.context
        chain = self._chain_for(item.session_id, context) if context else None
        if chain is not None:
            self._chains[chain][0] += 1
            self._slot_chain[slot] = chain
            payload = bytearray(_CHAINED)  # a bytearray: see _encode_blob
            _ENCODER.encode_into(msgspec.structs.replace(item, context=()), payload, 1)
            row = (seq, key, item.source, version, priority, payload, chain, len(context))
        else:
            row = (seq, key, item.source, version, priority, _encode_blob(item), None, None)
        inserts = self._inserts
        self._pending[seq] = len(inserts)
        inserts.append(row)
        # No need to clear _dirty[slot]: a slot is written only when free, and a free slot
        # is never dirty (eviction clears it; only live slots are marked).

    def _drop(self, slot: int, seq: int) -> None:
        queued = self._pending.pop(seq, None)
        if queued is not None:
            # Evicted within the batch that added it: insert the row without its payload
            # (its key is still deduplicated, as for any evicted tuple).
            self._inserts[queued] = (*self._inserts[queued][:5], None, None, None)
        else:
            self._drops.append((seq,))
        chain = self._slot_chain.pop(slot, None)
        if chain is not None:
            live = self._chains[chain]
            live[0] -= 1
            if not live[0]:
                self._chain_died(chain)
        self._dirty[slot] = False

    def _write_queued(self) -> None:
        """Run the queued inserts and evictions in the open transaction (one statement each)."""
        if not (self._inserts or self._drops or self._new_segments or self._dead_chains):
            return
        self._begin()
        db = self._db
        if self._new_chains:
            rows, self._new_chains = self._new_chains, []
            db.executemany("INSERT INTO chains (chain, session) VALUES (?, ?)", rows)
        if self._new_segments:
            segments, self._new_segments = self._new_segments, {}
            db.executemany(
                "INSERT INTO segments (chain, start, messages) VALUES (?, ?, ?)",
                [(chain, start, _encode_blob(context[start:]))
                 for chain, (start, context) in segments.items()])
        if self._inserts:
            rows, self._inserts = self._inserts, []
            self._pending.clear()
            db.executemany(
                "INSERT INTO tuples (seq, key, source, version, priority, payload, chain,"
                " context_len) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
        if self._drops:
            drops, self._drops = self._drops, []
            db.executemany("UPDATE tuples SET payload = NULL WHERE seq = ?", drops)
        if self._dead_chains:
            dead, self._dead_chains = self._dead_chains, []
            db.executemany("DELETE FROM segments WHERE chain = ?", dead)
            db.executemany("DELETE FROM chains WHERE chain = ?", dead)

    def _priorities_changed(self, slots: np.ndarray) -> None:
        self._dirty[slots] = True

    def _fetch(self, slots: np.ndarray, seqs: np.ndarray) -> list[ScoredTuple]:
        self._write_queued()
        wanted = np.unique(seqs).tolist()
        rows: list[tuple[int, bytes, int | None, int | None]] = []
        with self._reading(), self._snapshot():  # payload pages are first read here
            for start in range(0, len(wanted), _CHUNK):
                chunk = wanted[start : start + _CHUNK]
                marks = ",".join("?" * len(chunk))
                rows += self._db.execute(
                    f"SELECT seq, payload, chain, context_len FROM tuples WHERE seq IN ({marks})",
                    chunk)
            chains = self._load_chains({row[2] for row in rows if row[2] is not None})
        if self.read_only and (len(rows) < len(wanted) or any(
                payload is None or (chain is not None and len(chains[chain]) < length)
                for _, payload, chain, length in rows)):
            raise SnapshotBehind(f"{self.path}: tuples evicted since the last refresh")
        found = {seq: self._decode(seq, payload,
                                   None if chain is None else chains[chain][:length])
                 for seq, payload, chain, length in rows}
        return [found[seq] for seq in seqs.tolist()]

    def __contains__(self, key: object) -> bool:
        if not (isinstance(key, tuple) and len(key) == 3):
            return False
        with self._reading():
            self._write_queued()
            row = self._db.execute(
                "SELECT 1 FROM tuples WHERE key = ?", (encode_key(key),)  # type: ignore[arg-type]
            ).fetchone()
        return row is not None

    def known_keys(self, keys: Iterable[Key]) -> set[Key]:
        with self._reading():
            return self._known_keys(keys)

    def _known_keys(self, keys: Iterable[Key]) -> set[Key]:
        self._write_queued()
        keys = keys if isinstance(keys, list) else list(keys)
        texts = list(map(encode_key, keys))
        # Kept for _put: the new ones among them are written next (one encoding each).
        self._key_texts = dict(zip(keys, texts, strict=True))
        by_text = dict(zip(texts, keys, strict=True))
        texts = list(by_text)
        known: set[Key] = set()
        for start in range(0, len(texts), _CHUNK):
            chunk = texts[start : start + _CHUNK]
            marks = ",".join("?" * len(chunk))
            for (text,) in self._db.execute(
                f"SELECT key FROM tuples WHERE key IN ({marks})", chunk
            ):
                known.add(by_text[text])
        return known

    def iter_tuples(self) -> Iterator[ScoredTuple]:
        self._write_queued()
        # export reads every row: the first to find a damaged page
        with self._reading(), self._snapshot():
            cursor = self._db.execute(
                "SELECT seq, payload, chain, context_len FROM tuples WHERE payload IS NOT NULL"
                " ORDER BY seq"
            )
            # The tuples of a session are spread over the file: keep recent chains decoded.
            chains: dict[int, tuple[Message, ...]] = {}
            while rows := cursor.fetchmany(512):
                needed = {chain for _, _, chain, _ in rows if chain is not None}
                missing = needed - chains.keys()
                if missing:
                    if len(chains) + len(missing) > _ITER_CHAINS:
                        chains.clear()
                        missing = needed
                    chains.update(self._load_chains(missing))
                for seq, payload, chain, length in rows:
                    yield self._decode(seq, payload,
                                       None if chain is None else chains[chain][:length])

    # -- durability ------------------------------------------------------------------------

    def flush(self) -> None:
        """Commit every write so far (and priority updates); durable when this returns."""
        with self._reading():
            self._flush()

    def _flush(self) -> None:
        if self.read_only:  # priority updates stay in memory; the writer owns the file
            self._dirty[:] = False
            return
        self._write_queued()
        dirty = np.flatnonzero(self._dirty & (self.seq != FREE))
        if dirty.size:
            self._begin()
            self._db.executemany(
                "UPDATE tuples SET priority = ? WHERE seq = ?",
                zip(self.priority[dirty].tolist(), self.seq[dirty].tolist(), strict=True),
            )
            self._dirty[:] = False
        self._prune(full=False)
        self._commit()

    def _prune(self, *, full: bool) -> None:
        """Forget keys of evicted tuples older than the dedup horizon.

        Flushes only scan the seq range added since the last prune; a tuple that outlived
        that range (lowest-priority eviction) and was evicted later is swept on next open.
        """
        cutoff = self.next_seq - self.dedup_horizon
        if cutoff <= self._pruned_below and not full:
            return
        self._begin()
        self._db.execute(
            "DELETE FROM tuples WHERE seq >= ? AND seq < ? AND payload IS NULL",
            (0 if full else self._pruned_below, cutoff),
        )
        self._pruned_below = max(cutoff, 0)
        if full:
            self._commit()

    def refresh(self) -> np.ndarray:
        """(``read_only``) Take in the tuples the writer committed since the last refresh,
        and forget those it evicted. A tuple still stored keeps its slot and its priority
        here (updated in memory); new tuples take free slots. Returns the slots whose tuple
        changed."""
        if not self.read_only:
            raise ValueError(f"{self.path}: refresh reads another process's writes; this "
                             "storage is the writer")
        before = self.seq.copy()
        live = np.flatnonzero(before != FREE)
        preferred = {seq: (slot, priority) for slot, seq, priority in zip(
            live.tolist(), before[live].tolist(), self.priority[live].tolist(), strict=True)}
        with self._reading(), self._snapshot():
            self._rebuild(preferred)
        return np.flatnonzero(self.seq != before)

    def close(self) -> None:
        """Flush, then close the database."""
        if self._conn is None:
            return
        self.flush()
        self._conn.close()
        self._conn = None

    def state_dict(self) -> dict[str, Any]:
        """Layout and priorities; the payloads themselves are the database file."""
        state = self._layout_state()
        state["path"] = str(self.path)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the slot layout and priorities of a checkpoint over the rows on disk.

        Rows on disk that the checkpoint does not know (added after it) take free slots;
        checkpointed rows no longer on disk are skipped.
        """
        if state["capacity"] != self.capacity:
            raise ValueError(f"capacity {state['capacity']} != {self.capacity}")
        self.flush()
        self.dedup_horizon = int(state["dedup_horizon"])
        seqs = np.asarray(state["seq"], dtype=np.int64)
        priorities = np.asarray(state["priority"], dtype=np.float64)
        slots = np.flatnonzero(seqs != FREE)
        preferred = {
            int(seqs[slot]): (int(slot), float(priorities[slot])) for slot in slots.tolist()
        }
        self._rebuild(preferred)
        self.next_seq = max(self.next_seq, int(state["next_seq"]))


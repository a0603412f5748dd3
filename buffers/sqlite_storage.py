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
  version, priority, payload)`` with the msgpack-encoded tuple in ``payload``. Sampling,
  eviction and staleness run on numpy metadata in memory (:class:`Storage`); a batch
  fetches only its own rows by primary key.
* **Dedup survives restarts.** ``key`` is UNIQUE-indexed. Eviction sets ``payload`` to NULL
  but keeps the row, so re-delivered keys are still refused; rows of evicted tuples older
  than the last ``dedup_horizon`` inserts are deleted on flush, so the file stays bounded.
* **One statement per batch.** Adds and evictions are queued and run as one ``executemany``
  each before the next read or flush (a tuple evicted within its own batch is inserted
  without its payload, so its key is still deduplicated). Durability is unchanged: nothing
  is committed before ``flush``.
* **Rebuilt on open.** Slot metadata and priorities are read back (payloads are not) and
  the sampler's sum tree is rebuilt from them. Priority updates are written on flush.

One connection, used by one thread at a time (the buffer is not thread-safe).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

import msgspec
import numpy as np

from nextstate.buffers.storage import FREE, Key, Storage, source_code
from nextstate.extractors.types import ScoredTuple

_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder(ScoredTuple)
PAGE_SIZE = 16384
_CHUNK = 900  # bound on SQL parameters per statement (SQLite's limit is far higher)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tuples (
    seq INTEGER PRIMARY KEY,    -- insertion order; never reused
    key TEXT NOT NULL UNIQUE,   -- dedup key: JSON of (interaction_id, extractor, kind)
    source TEXT NOT NULL,
    version INTEGER NOT NULL,   -- parsed policy version, -1 unknown
    priority REAL NOT NULL,
    payload BLOB                -- msgpack ScoredTuple; NULL once evicted (key kept)
);
"""


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
    ) -> None:
        super().__init__(capacity, dedup_horizon)
        self.path = Path(path)
        self._conn: sqlite3.Connection | None = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False
        )
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
        self._in_transaction = False
        self._inserts: list[tuple[Any, ...]] = []  # rows written since the last statement
        self._pending: dict[int, int] = {}         # their seq -> position in _inserts
        self._drops: list[tuple[int]] = []         # seqs evicted since the last statement
        self._dirty = np.zeros(capacity, dtype=bool)
        self._pruned_below = 0
        self._rebuild(preferred=None)
        self._prune(full=True)

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
        """Lay the stored rows out in slots: ``preferred`` maps seq -> (slot, priority)."""
        rows = self._db.execute(
            "SELECT seq, source, version, priority FROM tuples"
            " WHERE payload IS NOT NULL ORDER BY seq"
        ).fetchall()
        if len(rows) > self.capacity:
            # Capacity shrank since the last run: the oldest extras go, FIFO.
            cutoff = rows[-self.capacity][0]
            self._begin()
            self._db.execute(
                "UPDATE tuples SET payload = NULL WHERE seq < ? AND payload IS NOT NULL",
                (cutoff,),
            )
            self._commit()
            rows = rows[-self.capacity :]
        self._reset_layout()
        self._dirty[:] = False
        max_seq = self._db.execute("SELECT max(seq) FROM tuples").fetchone()[0]
        self.next_seq = 0 if max_seq is None else max_seq + 1
        unplaced = []
        for seq, source, version, priority in rows:
            slot_priority = preferred.get(seq) if preferred else None
            if slot_priority is not None and slot_priority[0] < self.capacity:
                slot, wanted = slot_priority
                self._place(slot, seq, source_code(source), version, wanted)
                if wanted != priority:
                    self._dirty[slot] = True
            else:
                unplaced.append((seq, source, version, priority))
        empty = iter(np.flatnonzero(self.seq == FREE).tolist())
        for seq, source, version, priority in unplaced:
            self._place(next(empty), seq, source_code(source), version, priority)
        self._finish_layout()

    # -- Storage hooks -------------------------------------------------------------------

    def _put(self, slot: int, seq: int, item: ScoredTuple, priority: float,
             version: int) -> None:
        # Queued, not executed: one executemany per batch (see _write_queued). Every read
        # and the flush run the queue first, so nothing can observe the difference.
        self._pending[seq] = len(self._inserts)
        self._inserts.append((seq, encode_key(item.key), item.source, version, priority,
                              _ENCODER.encode(item)))
        self._dirty[slot] = False

    def _drop(self, slot: int, seq: int) -> None:
        queued = self._pending.pop(seq, None)
        if queued is not None:
            # Evicted within the batch that added it: insert the row without its payload
            # (its key is still deduplicated, as for any evicted tuple).
            self._inserts[queued] = (*self._inserts[queued][:5], None)
        else:
            self._drops.append((seq,))
        self._dirty[slot] = False

    def _write_queued(self) -> None:
        """Run the queued inserts and evictions in the open transaction (one statement each)."""
        if not (self._inserts or self._drops):
            return
        self._begin()
        if self._inserts:
            rows, self._inserts = self._inserts, []
            self._pending.clear()
            self._db.executemany(
                "INSERT INTO tuples (seq, key, source, version, priority, payload)"
                " VALUES (?, ?, ?, ?, ?, ?)", rows)
        if self._drops:
            drops, self._drops = self._drops, []
            self._db.executemany("UPDATE tuples SET payload = NULL WHERE seq = ?", drops)

    def _priorities_changed(self, slots: np.ndarray) -> None:
        self._dirty[slots] = True

    def _fetch(self, slots: np.ndarray, seqs: np.ndarray) -> list[ScoredTuple]:
        self._write_queued()
        wanted = np.unique(seqs).tolist()
        found: dict[int, ScoredTuple] = {}
        for start in range(0, len(wanted), _CHUNK):
            chunk = wanted[start : start + _CHUNK]
            marks = ",".join("?" * len(chunk))
            for seq, payload in self._db.execute(
                f"SELECT seq, payload FROM tuples WHERE seq IN ({marks})", chunk
            ):
                found[seq] = _DECODER.decode(payload)
        return [found[seq] for seq in seqs.tolist()]

    def __contains__(self, key: object) -> bool:
        if not (isinstance(key, tuple) and len(key) == 3):
            return False
        self._write_queued()
        row = self._db.execute(
            "SELECT 1 FROM tuples WHERE key = ?", (encode_key(key),)  # type: ignore[arg-type]
        ).fetchone()
        return row is not None

    def known_keys(self, keys: Iterable[Key]) -> set[Key]:
        self._write_queued()
        by_text = {encode_key(key): key for key in keys}
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
        cursor = self._db.execute(
            "SELECT payload FROM tuples WHERE payload IS NOT NULL ORDER BY seq"
        )
        while rows := cursor.fetchmany(512):
            for (payload,) in rows:
                yield _DECODER.decode(payload)

    # -- durability ------------------------------------------------------------------------

    def flush(self) -> None:
        """Commit every write so far (and priority updates); durable when this returns."""
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


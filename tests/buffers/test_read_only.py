"""A durable buffer read beside its writer (``nextstate train`` beside a running daemon):
opened read-only, it never writes the file, not even while the writer holds a transaction
open; it takes in what the writer commits when refreshed, and a draw of tuples the writer
evicted meanwhile refreshes and draws again."""

from __future__ import annotations

import numpy as np
import pytest

from nextstate.buffers import BufferSpec, ReplayBuffer
from nextstate.buffers.sqlite_storage import SQLiteStorage
from nextstate.extractors.types import Message, ScoredTuple

SPEC = BufferSpec("evaluative", capacity=8, seed=0)


def tuples(start: int, stop: int) -> list[ScoredTuple]:
    # Each session's turns extend one history, so their contexts are stored as chains.
    history = tuple(Message("user", f"turn {i} of a long conversation") for i in range(stop))
    return [ScoredTuple(f"s#{i}", "s", "x", "evaluative", "tool", history[:i],
                        Message("assistant", f"action {i}"), reward=1.0)
            for i in range(start, stop)]


def keys(buffer: ReplayBuffer) -> set:
    return {t.key for t in buffer.storage.iter_tuples()}


def test_a_read_only_buffer_reads_beside_its_writer(tmp_path):
    writer = ReplayBuffer.from_spec(SPEC, tmp_path)
    writer.extend(tuples(0, 4))
    writer.flush()
    writer.extend(tuples(4, 6))  # not flushed
    assert ("x", "y", "z") not in writer  # a read runs the queued inserts: a transaction is open
    assert writer.storage._in_transaction
    reader = ReplayBuffer.from_spec(SPEC, tmp_path, read_only=True)
    assert len(reader) == 4  # what was committed
    first = reader.sample(4)
    reader.update_priorities(first.indices, np.full(4, 5.0))  # in memory only
    writer.flush()  # the reader holds no lock the writer waits on
    reader.refresh()
    assert len(reader) == 6 and keys(reader) == keys(writer)
    assert sorted(reader.storage.priority[np.unique(first.indices)]) == \
        [5.0] * len(np.unique(first.indices))
    # The writer evicts the 4 oldest; a draw from the stale view meets them, refreshes,
    # and draws again: only tuples the writer still holds come back.
    writer.extend(tuples(6, 12))
    writer.flush()
    batch = reader.sample(64)
    assert {t.key for t in batch.tuples} <= keys(writer)
    assert len(reader) == 8 and keys(reader) == keys(writer)
    # Contexts read from chains the writer extended meanwhile are whole.
    assert all(len(t.context) == int(t.interaction_id.split("#")[1]) for t in batch.tuples)


def test_a_read_only_buffer_never_writes(tmp_path):
    """Even of a file whose writer has stopped (its WAL folded in): the bytes stay."""
    writer = ReplayBuffer.from_spec(SPEC, tmp_path)
    writer.extend(tuples(0, 3))
    writer.close()
    before = (tmp_path / "evaluative.sqlite3").read_bytes()
    reader = ReplayBuffer.from_spec(SPEC, tmp_path, read_only=True)
    with pytest.raises(ValueError, match="read-only"):
        reader.extend(tuples(3, 4))
    batch = reader.sample(3)
    reader.update_priorities(batch.indices, np.full(3, 9.0))
    reader.flush()
    reader.refresh()
    reader.close()
    assert (tmp_path / "evaluative.sqlite3").read_bytes() == before
    reopened = ReplayBuffer.from_spec(SPEC, tmp_path)
    assert 9.0 not in reopened.storage.priority
    reopened.close()


def test_read_only_needs_the_file_and_only_it_refreshes(tmp_path):
    with pytest.raises(FileNotFoundError, match="no buffer file"):
        SQLiteStorage(tmp_path / "missing.sqlite3", 4, read_only=True)
    writer = SQLiteStorage(tmp_path / "b.sqlite3", 4)
    with pytest.raises(ValueError, match="this storage is the writer"):
        writer.refresh()
    writer.close()


def test_a_read_only_buffer_reads_one_committed_state_at_a_time(tmp_path):
    """A refresh or a fetch runs several statements (rows, then their sessions' chains and
    payloads); inside one snapshot a writer's commit in between is not seen, so no statement
    meets a row the writer evicted after an earlier one listed it."""
    writer = ReplayBuffer.from_spec(SPEC, tmp_path)
    writer.extend(tuples(0, 8))
    writer.flush()
    reader = ReplayBuffer.from_spec(SPEC, tmp_path, read_only=True)
    storage = reader.storage
    oldest = "SELECT min(seq) FROM tuples WHERE payload IS NOT NULL"
    with storage._snapshot():
        assert storage._db.execute(oldest).fetchone()[0] == 0
        writer.extend(tuples(8, 12))  # evicts the 4 oldest
        writer.flush()
        assert storage._db.execute(oldest).fetchone()[0] == 0  # the state it began with
        # ... so the evicted tuples still read back, whole (no SnapshotBehind)
        assert len(storage.get(np.flatnonzero(storage.seq >= 0))) == 8
    assert storage._db.execute(oldest).fetchone()[0] == 4  # the writer's commit, after it
    reader.close()
    writer.close()

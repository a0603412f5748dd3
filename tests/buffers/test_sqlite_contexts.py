"""SQLite storage of contexts: each message once per session, branches exact, files bounded."""

from __future__ import annotations

import sqlite3
from contextlib import closing

import msgspec
import numpy as np
import pytest

from nextstate.buffers import ReplayBuffer
from nextstate.buffers.sqlite_storage import SQLiteStorage
from nextstate.buffers.storage import FREE, session_key
from nextstate.extractors.types import Message, ScoredTuple

OLD_SCHEMA = """
CREATE TABLE IF NOT EXISTS tuples (
    seq INTEGER PRIMARY KEY,
    key TEXT NOT NULL UNIQUE,
    source TEXT NOT NULL,
    version INTEGER NOT NULL,
    priority REAL NOT NULL,
    payload BLOB
);
"""


def scored(session: str, index: int, context: tuple[Message, ...], *,
           extractor: str = "tool_result") -> ScoredTuple:
    """A tuple of ``session`` whose action follows ``context``."""
    return ScoredTuple(f"{session}#{index}", session, extractor, "evaluative", "tool", context,
                       Message("assistant", f"action {index} of {session}"), reward=0.5,
                       behaviour_logprobs=(-0.5,) * (index % 3))


def history(session: str, length: int, *, edit: int | None = None) -> tuple[Message, ...]:
    """Fresh message objects: the first ``length`` messages of a session (one edited)."""
    return tuple(Message(("user", "assistant")[k % 2],
                         f"{session} turn {k}" + (" (edited)" if k == edit else ""))
                 for k in range(length))


def grow(base: tuple[Message, ...], session: str, new: int) -> tuple[Message, ...]:
    """``base`` plus ``new`` messages, reusing base's objects (as the daemon's join does)."""
    return base + history(session, len(base) + new)[len(base):]


def write(store: SQLiteStorage, items: list[ScoredTuple]) -> list[int]:
    slots = []
    for item in items:
        slot = store.free_slot()
        store.write(slot, item, priority=1.0, version=-1)
        slots.append(slot)
    return slots


def rows(path, sql: str) -> list[tuple]:
    with closing(sqlite3.connect(path)) as conn:
        return conn.execute(sql).fetchall()


def stored_messages(path) -> int:
    """How many messages the segments of a file hold, all chains together."""
    decoder = msgspec.msgpack.Decoder(tuple[Message, ...])
    return sum(len(decoder.decode(blob)) for (blob,) in rows(path, "SELECT messages FROM segments"))


def test_a_growing_session_stores_each_message_once(tmp_path):
    """Contexts that extend the previous one store only their new messages; reads are equal."""
    path = tmp_path / "b.sqlite3"
    store = SQLiteStorage(path, 100)
    context: tuple[Message, ...] = ()
    items = []
    for turn in range(12):
        context = grow(context, "s", 3)
        items += [scored("s", turn, context), scored("s", turn, context, extractor="user")]
        if turn % 4 == 3:   # several written batches
            write(store, items[-8:])
            store.flush()
    assert store.get(np.arange(len(items))) == items
    store.close()
    assert stored_messages(path) == 36              # 12 turns x 3 new messages, not 468
    assert rows(path, "SELECT count(*) FROM chains") == [(1,)]
    assert rows(path, "SELECT count(*) FROM tuples WHERE chain IS NULL") == [(0,)]
    reopened = SQLiteStorage(path, 100)
    assert list(reopened.iter_tuples()) == items
    reopened.close()


def test_a_chained_payload_fails_to_decode_as_a_whole_tuple(tmp_path):
    """Code older than chains would read an empty context: its decoder refuses instead."""
    path = tmp_path / "b.sqlite3"
    store = SQLiteStorage(path, 10)
    write(store, [scored("s", 1, history("s", 4))])
    store.close()
    [(payload,)] = rows(path, "SELECT payload FROM tuples")
    with pytest.raises(msgspec.DecodeError):
        msgspec.msgpack.Decoder(ScoredTuple).decode(payload)


def test_branches_and_out_of_order_contexts_read_back_exactly(tmp_path):
    """Edited histories, shorter prefixes, equal-but-new objects and stale branches all
    come back as written, from get, iter_tuples and after reopening."""
    path = tmp_path / "b.sqlite3"
    store = SQLiteStorage(path, 100)
    a6 = history("s", 6)
    edited = history("s", 6, edit=3)
    items = [
        scored("s", 6, a6),
        scored("s", 2, history("s", 2)),            # out of order: a prefix, new objects
        scored("s", 7, edited),                     # a branch: message 3 edited
        scored("s", 9, grow(edited, "s", 2)),       # later turns extend the branch
        scored("s", 8, grow(a6, "s", 1)),           # a late turn of the old branch
        scored("s", 4, history("s", 4, edit=3)),    # a prefix of the edited branch
        scored("s", 5, (*a6[:3], edited[3])),       # old prefix, edited message: neither
        scored("t", 1, a6),                         # another session, the same messages
        scored("s", 10, ()),                        # no context at all
    ]
    # The redactor hands out one object for equal redacted messages: a history that
    # differs from the stored one before its (shared) last object is still a branch.
    shared = Message("tool", "[EMAIL] not found")
    items += [scored("r", 1, (Message("user", "one"), shared)),
              scored("r", 2, (Message("user", "two"), shared))]
    write(store, items[:4])
    store.flush()
    write(store, items[4:])
    assert store.get(np.arange(len(items))) == items
    assert list(store.iter_tuples()) == items
    store.close()
    reopened = SQLiteStorage(path, 100)
    assert list(reopened.iter_tuples()) == items
    assert reopened.get(np.arange(len(items))[::-1]) == items[::-1]
    reopened.close()


def test_a_branch_is_inline_until_the_session_goes_on_from_it(tmp_path):
    """A context that does not extend the session's chain is stored inline; one that
    extends that inline branch (the next turn after an edit) starts the session's new chain.
    Contexts that never extend each other stay inline after the first."""
    path = tmp_path / "b.sqlite3"
    store = SQLiteStorage(path, 100)
    a = history("s", 4)
    edited = history("s", 4, edit=2)
    after_edit = grow(edited, "s", 2)
    items = [scored("s", 1, a), scored("s", 2, edited), scored("s", 3, after_edit),
             scored("s", 4, grow(after_edit, "s", 2))]
    items += [scored("u", k, (Message("user", f"unrelated {k}"),)) for k in range(5)]
    write(store, items)
    store.close()
    inline = rows(path, "SELECT key FROM tuples WHERE chain IS NULL ORDER BY seq")
    assert [msgspec.json.decode(key)[0] for (key,) in inline] == [
        t.interaction_id for t in (items[1], *items[5:])]
    assert stored_messages(path) == 4 + 6 + 2 + 1
    reopened = SQLiteStorage(path, 100)
    assert list(reopened.iter_tuples()) == items
    reopened.close()


def test_a_history_cache_miss_reads_the_chain_back(tmp_path):
    """With one cached session, interleaved sessions still extend their own chains, and
    so does a session continued after reopening (cold cache)."""
    path = tmp_path / "b.sqlite3"
    store = SQLiteStorage(path, 100, context_cache_sessions=1)
    contexts = {"a": (), "b": ()}
    items = []
    for turn in range(6):
        for session in ("a", "b"):
            contexts[session] = grow(contexts[session], session, 2)
            items.append(scored(session, turn, contexts[session]))
            write(store, items[-1:])
        if turn == 2:
            store.flush()
    store.close()
    assert stored_messages(path) == 24
    reopened = SQLiteStorage(path, 100, context_cache_sessions=1)
    for session in ("a", "b"):
        contexts[session] = grow(history(session, 12), session, 2)   # equal, new objects
        items.append(scored(session, 6, contexts[session]))
        write(reopened, items[-1:])
    assert list(reopened.iter_tuples()) == items
    reopened.close()
    assert stored_messages(path) == 28
    assert rows(path, "SELECT count(*) FROM chains") == [(2,)]


def test_a_branch_after_a_cache_miss_does_not_overwrite_queued_messages(tmp_path):
    """A session evicted from the cache while its newest messages are still queued, then
    branching from the flushed part, keeps both histories exact."""
    path = tmp_path / "b.sqlite3"
    store = SQLiteStorage(path, 100, context_cache_sessions=1)
    a = history("a", 4)
    items = [scored("a", 2, a[:2])]
    write(store, items)
    store.flush()
    items += [scored("a", 4, a), scored("b", 1, history("b", 2)),
              scored("a", 5, a[:2] + history("a", 5, edit=2)[2:])]
    write(store, items[1:])
    assert list(store.iter_tuples()) == items
    store.close()
    reopened = SQLiteStorage(path, 100)
    assert list(reopened.iter_tuples()) == items
    reopened.close()


def test_messages_are_deleted_with_the_last_live_tuple(tmp_path):
    """Evicting every tuple of a session deletes its messages in the same transaction; a
    tuple evicted in its own batch leaves nothing behind."""
    path = tmp_path / "b.sqlite3"
    rb = ReplayBuffer(SQLiteStorage(path, 4))
    a = history("a", 5)
    rb.extend([scored("a", 1, a[:2]), scored("a", 2, a[:4])])
    rb.flush()
    b = history("b", 3)
    rb.extend([scored("b", k, b[:k]) for k in (1, 2, 3)])   # FIFO: evicts a#1
    rb.flush()
    assert stored_messages(path) == 4 + 3                    # a#2 still needs a[:4]
    rb.extend([scored("b", 4, b + history("b", 5)[3:])])    # evicts a#2, a's last
    rb.storage._write_queued()
    assert rb.storage._db.execute("SELECT count(*) FROM segments WHERE chain = 0"
                                  ).fetchone() == (0,)        # deleted in its transaction
    rb.storage._conn.close()                                 # crash before the flush
    rb.storage._conn = None
    assert stored_messages(path) == 7                        # nothing of it was durable
    rb = ReplayBuffer(SQLiteStorage(path, 4))
    rb.extend([scored("b", 4, b + history("b", 5)[3:])])
    rb.extend([scored("c", k, history("c", 9)[:k]) for k in range(1, 9)])  # 4 evicted in it
    rb.flush()
    assert rows(path, "SELECT DISTINCT session FROM chains") == [("c",)]
    assert stored_messages(path) == 8
    assert [len(t.context) for t in rb.iter_tuples()] == [5, 6, 7, 8]
    rb.close()


def test_reopening_smaller_deletes_chains_no_live_tuple_uses(tmp_path):
    """Tuples evicted by a capacity shrink on open take their sessions' messages along."""
    path = tmp_path / "b.sqlite3"
    store = SQLiteStorage(path, 10)
    items = [scored(session, k, history(session, 2 + k))
             for session in ("a", "b", "c") for k in range(2)]
    write(store, items)
    store.close()
    smaller = SQLiteStorage(path, 3, dedup_horizon=10)
    assert list(smaller.iter_tuples()) == items[3:]
    assert smaller.known_keys([t.key for t in items]) == {t.key for t in items}
    smaller.close()
    assert rows(path, "SELECT session FROM chains ORDER BY session") == [("b",), ("c",)]
    assert stored_messages(path) == 3 + 3


def test_load_state_dict_recounts_chains(tmp_path):
    """load_state_dict over chained rows restores layout and contexts, and its recount of
    live tuples still frees the messages with the last of them."""
    store = SQLiteStorage(tmp_path / "b.sqlite3", 6)
    context = history("s", 10)
    write(store, [scored("s", k, context[:k]) for k in (2, 4, 6, 8)])
    store.set_priorities(np.array([1, 2]), np.array([3.0, 0.5]))
    state = store.state_dict()
    write(store, [scored("s", 10, context)])   # after the checkpoint: takes a free slot
    store.load_state_dict(state)
    np.testing.assert_array_equal(store.state_dict()["priority"][:4], state["priority"])
    assert [len(t.context) for t in store.iter_tuples()] == [2, 4, 6, 8, 10]
    for slot in np.flatnonzero(store.seq != FREE).tolist()[:-1]:
        store.evict(slot)
    store.flush()
    assert stored_messages(store.path) == 10
    store.evict(int(np.flatnonzero(store.seq != FREE)[0]))
    store.flush()
    assert stored_messages(store.path) == 0
    store.close()


def test_a_file_of_the_old_schema_opens_reads_and_grows(tmp_path):
    """A buffer written before chains (inline contexts, no chain columns) opens, reads back
    equal, keeps deduplicating, and takes chained tuples beside its old rows."""
    path = tmp_path / "old.sqlite3"
    context = history("s", 6)
    old = [scored("s", k, context[:k]) for k in (2, 4, 6)]
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.executescript(OLD_SCHEMA)
        conn.executemany(
            "INSERT INTO tuples (seq, key, source, version, priority, payload)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            [(seq, msgspec.json.encode(t.key).decode(), t.source, -1, 1.0 + seq,
              None if seq == 0 else msgspec.msgpack.encode(t)) for seq, t in enumerate(old)])
        conn.commit()
    store = SQLiteStorage(path, 10)
    assert list(store.iter_tuples()) == old[1:]
    assert store.known_keys([t.key for t in old]) == {t.key for t in old}
    assert sorted(store.priority[store.seq != FREE].tolist()) == [2.0, 3.0]
    new = [scored("s", 8, grow(context, "s", 2)), scored("t", 1, history("t", 3))]
    write(store, new)
    store.close()
    columns = [row[1] for row in rows(path, "PRAGMA table_info(tuples)")]
    assert columns[-2:] == ["chain", "context_len"]
    reopened = SQLiteStorage(path, 10)
    assert list(reopened.iter_tuples()) == old[1:] + new
    assert reopened.get(np.flatnonzero(reopened.seq != FREE)) == old[1:] + new
    live = np.flatnonzero(reopened.seq != FREE)
    assert reopened.session[live].tolist() == [session_key(t.session_id) for t in old[1:] + new]
    reopened.close()


def test_session_keys_are_derived_on_open_from_chains_and_inline_payloads(tmp_path):
    """A reopened file gives every live slot its session's key: from the chain's session for
    chained contexts, from the payload for inline ones (a branch, an empty context)."""
    path = tmp_path / "b.sqlite3"
    store = SQLiteStorage(path, 10)
    a, b = history("a", 6), history("b", 4)
    items = [scored("a", 2, a[:2]), scored("b", 1, b[:1]), scored("a", 4, a[:4]),
             scored("b", 3, history("b", 3, edit=0)),  # a branch: inline
             scored("c", 0, ())]                       # empty: inline
    write(store, items)
    store.close()
    assert rows(path, "SELECT count(*) FROM tuples WHERE chain IS NULL") == [(2,)]
    reopened = SQLiteStorage(path, 10)
    live = reopened.occupied_slots()
    live = live[np.argsort(reopened.seq[live])]
    assert reopened.session[live].tolist() == [session_key(t.session_id) for t in items]
    reopened.close()


def test_the_history_cache_counts_exactly_the_characters_it_holds(tmp_path):
    """Growing, branching and evicting sessions keep the cache's character count equal to the
    content characters of the histories (and branches) it holds."""
    store = SQLiteStorage(tmp_path / "b.sqlite3", capacity=64, context_cache_sessions=3,
                          context_cache_chars=2_000)
    contexts = {name: history(name, 1) for name in "abcde"}
    for step in range(40):
        name = "abcde"[step * 7 % 5]
        if step % 9 == 8:
            context = history(name, len(contexts[name]), edit=0)  # a branch
        else:
            contexts[name] = context = grow(contexts[name], name, 1 + step % 3)
        write(store, [scored(name, step, context)])
        held = sum(sum(len(m.content) for m in (*entry.known, *(entry.branch or ())))
                   for entry in store._histories.values())
        assert store._history_chars == held
    store.close()

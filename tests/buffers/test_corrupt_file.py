"""A buffer file that is not what the storage wrote is a ``CorruptStateFile`` naming it, and
is never written to: another program's database, a damaged file, a row that does not decode."""

from __future__ import annotations

import random
import sqlite3
from contextlib import closing

import numpy as np
import pytest

from nextstate.buffers.sqlite_storage import SQLiteStorage
from nextstate.buffers.statefile import CorruptStateFile

from .conftest import make_tuple


def test_another_programs_database_is_refused_untouched(tmp_path):
    """A SQLite file with other tables: refused as not a buffer, byte for byte as it was
    (before, the storage added its tables and WAL mode to it and used it)."""
    path = tmp_path / "b.sqlite3"
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE accounts (id INTEGER PRIMARY KEY, name TEXT)")
        conn.commit()
    before = path.read_bytes()
    with pytest.raises(CorruptStateFile, match="not a nextstate buffer: its tables are "
                                                "accounts") as refused:
        SQLiteStorage(path, 4)
    assert refused.value.path == path
    assert path.read_bytes() == before


def test_a_file_that_is_no_database_is_refused_untouched(tmp_path):
    """Random bytes: refused naming the file and how to salvage it (a bare
    ``sqlite3.DatabaseError`` before)."""
    path = tmp_path / "b.sqlite3"
    path.write_bytes(random.Random(0).randbytes(8192))
    before = path.read_bytes()
    with pytest.raises(CorruptStateFile, match=r"damaged or not SQLite .*\.recover"):
        SQLiteStorage(path, 4)
    assert path.read_bytes() == before


def test_a_row_that_does_not_decode_names_its_seq(tmp_path):
    """A stored payload that is no tuple: reading it (export, a trainer's sample) names the
    file and the row to evict, and evicting that row as told makes the rest read (a bare
    msgspec error before)."""
    path = tmp_path / "b.sqlite3"
    store = SQLiteStorage(path, 4)
    for i in range(3):
        store.write(store.free_slot(), make_tuple(i), priority=1.0, version=-1)
    store.close()
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("UPDATE tuples SET payload = x'00ff' WHERE seq = 1")
        conn.commit()
    store = SQLiteStorage(path, 4)
    with pytest.raises(CorruptStateFile, match="seq 1 does not decode") as refused:
        list(store.iter_tuples())
    with pytest.raises(CorruptStateFile, match="seq 1 does not decode"):
        store.get(np.array([1]))
    store.close()
    with closing(sqlite3.connect(path)) as conn:  # the remedy the message gives
        assert "UPDATE tuples SET payload = NULL WHERE seq = 1" in str(refused.value)
        conn.execute("UPDATE tuples SET payload = NULL WHERE seq = 1")
        conn.commit()
    store = SQLiteStorage(path, 4)
    assert list(store.iter_tuples()) == [make_tuple(0), make_tuple(2)]
    assert make_tuple(1).key in store  # still deduplicated
    store.close()

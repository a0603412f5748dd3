"""State files that do not read back: one error naming the file, what is wrong, what to do.

Everything nextstate keeps on disk (the daemon's ``checkpoint.json``, ``file_offsets.json``,
``kafka_topic_ids.json``, ``timeseries.sqlite``, the buffers' SQLite files, the trainer's
published versions) is written atomically or inside SQLite transactions, so a file that does
not read back was damaged by something else: a disk fault, a manual edit, another program.
Loading it raises :class:`CorruptStateFile`, which every command turns into one line and
exit code :data:`EXIT_STATE_CORRUPT`. Before, each such file raised its own traceback (or,
for a few wrong value types, ran on: a checkpoint whose offsets were not numbers lost its
counters without a word). Nothing here repairs, truncates or removes a file: its owner may
want to recover it.

This module sits in ``buffers`` as the lowest layer the daemon and the trainers share.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import TypeVar

import msgspec

T = TypeVar("T")

EXIT_STATE_CORRUPT = 6
"""The exit code of ``run``, ``train``, ``stats``, ``export`` and ``report`` when a state
file does not read back. Not 2 (a config or argument error): the command line is right, the
data under the state dir needs a person (move the file aside or recover it), and a
supervisor that restarts on failure should stop on both."""

_SQLITE_CORRUPT, _SQLITE_NOTADB = 11, 26  # SQLite's primary result codes for a bad file


class CorruptStateFile(Exception):
    """A state file that does not read back as what nextstate wrote there.

    Args:
        path: the file (or a published version's directory).
        problem: what is wrong with it, e.g. ``not JSON: Input data was truncated``.
        remedy: what the user can do, and what that costs.

    Example:
        >>> str(CorruptStateFile(Path("st/checkpoint.json"), "empty", "move it aside"))
        'st/checkpoint.json: empty; move it aside'
    """

    def __init__(self, path: Path, problem: str, remedy: str) -> None:
        self.path = Path(path)
        self.problem = problem
        self.remedy = remedy
        super().__init__(f"{self.path}: {problem}; {remedy}")


def read_json(path: Path, kind: type[T], remedy: str) -> T:
    """The JSON file ``path`` as ``kind`` (a msgspec-typed shape), or :class:`CorruptStateFile`.

    Parsed by the standard library, then checked with :func:`msgspec.convert`: the writers
    use ``json.dumps``, which writes ``NaN``/``Infinity`` for a non-finite float, and
    msgspec's JSON decoder refuses those, so a file nextstate itself wrote could be refused.

    Raises:
        FileNotFoundError: there is no such file (the caller decides what that means).
        CorruptStateFile: it is empty, not JSON, or JSON of another shape or value types.
    """
    data = Path(path).read_bytes()
    if not data.strip():
        raise CorruptStateFile(path, "empty", remedy)
    try:
        parsed = json.loads(data)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError
        raise CorruptStateFile(path, f"not JSON ({str(exc)[:120]})", remedy) from None
    try:
        return msgspec.convert(parsed, kind)
    except msgspec.ValidationError as exc:
        raise CorruptStateFile(path, f"not the JSON expected ({exc})", remedy) from None


def is_corruption(exc: BaseException) -> bool:
    """Is this SQLite saying the file is damaged or no database at all (not a full disk, a
    lock or a missing file)?"""
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(exc, sqlite3.DatabaseError) and code is not None and \
        (code & 0xFF) in (_SQLITE_CORRUPT, _SQLITE_NOTADB)


def corrupt_sqlite(path: Path, exc: sqlite3.DatabaseError, remedy: str) -> CorruptStateFile:
    """The :class:`CorruptStateFile` for a SQLite corruption error (see :func:`is_corruption`),
    its remedy followed by how to salvage what still reads."""
    return CorruptStateFile(path, f"damaged or not SQLite ({exc})",
                            f"{remedy} (`sqlite3 {path} .recover` salvages what still reads)")


def check_sqlite_tables(conn: sqlite3.Connection, path: Path,
                        tables: Mapping[str, Collection[str]], what: str, remedy: str) -> bool:
    """Refuse a database that is not ours, before anything is written to it; whether it is
    new (it holds no tables yet).

    Call it right after connecting: the schema statements that follow would otherwise add our
    tables to another program's database, and ``PRAGMA journal_mode=WAL`` rewrites the
    header of any file. A new (empty) database passes.

    Args:
        conn: the open connection.
        path: its file, for the message.
        tables: table -> the columns read from it (columns added later need not be there).
        what: what the file is, e.g. ``a nextstate buffer``.
        remedy: what the user can do.

    Raises:
        CorruptStateFile: the file is no SQLite database, is damaged where its schema lies,
            or holds tables but not these with these columns.
    """
    try:
        found = {name: {column for (column,) in conn.execute(
                     "SELECT name FROM pragma_table_info(?)", (name,))}
                 for (name,) in conn.execute(
                     "SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()}
    except sqlite3.DatabaseError as exc:
        if not is_corruption(exc):
            raise
        raise corrupt_sqlite(path, exc, remedy) from None
    if not found:
        return True
    for table, columns in tables.items():
        missing = sorted(set(columns) - found.get(table, set()))
        if missing:
            has = ", ".join(sorted(found)) or "none"
            problem = (f"not {what}: table {table!r} lacks {', '.join(missing)}"
                       if table in found else f"not {what}: its tables are {has}")
            raise CorruptStateFile(path, problem, remedy)
    return False


def write_atomically(path: Path, data: bytes) -> None:
    """Write-to-temp, fsync, rename, fsync the folder: a crash or a power loss leaves the old
    file or the new one, never an empty or half one (which :func:`read_json` refuses)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)

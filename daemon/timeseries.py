"""The daemon's counters over time: :class:`YieldStats` snapshots persisted in SQLite.

The daemon calls ``recorder.record(time.time(), stats.snapshot())`` every
``timeseries_interval_s`` seconds and once at shutdown; ``nextstate report`` and
``nextstate stats`` read the file back with :func:`read_series` / :func:`latest`.

Storage is change-only: a snapshot writes a row only for the series whose value moved since
the previous snapshot (counters of an idle source do not grow the file), plus one row per
snapshot in ``snapshots`` so that the times of the samples are kept even when nothing moved.
Reading carries every series forward, so each returned sample is a full snapshot again.

Older snapshots are thinned (:data:`RETENTION`): after two days one per 5 minutes is kept,
after 30 days one per hour, each holding every series' last value in its span, so that the
curves and rates over a coarser step are unchanged. A daemon that ran for a year kept every
10 s snapshot before (measured: 39 MB a day at 150 moving series, and ``read_series`` over a
year would build 3 million full snapshots in memory).
The file lives beside the buffers (``<state_dir>/timeseries.sqlite``) in WAL mode, so a
report can read it while the daemon writes.
"""

from __future__ import annotations

import contextlib
import math
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

from nextstate.buffers.statefile import (
    CorruptStateFile,
    check_sqlite_tables,
    corrupt_sqlite,
    is_corruption,
)

FILE_NAME = "timeseries.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS series (id INTEGER PRIMARY KEY, key TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS snapshots (ts REAL PRIMARY KEY);
CREATE TABLE IF NOT EXISTS samples (
    ts REAL NOT NULL, series_id INTEGER NOT NULL, value REAL NOT NULL,
    PRIMARY KEY (series_id, ts)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS samples_ts ON samples (ts);
"""

Sample = tuple[float, dict[str, float]]

_TABLES = {"series": ("id", "key"), "snapshots": ("ts",), "samples": ("ts", "series_id", "value")}
_MOVE_ASIDE = ("move it aside: the daemon starts a new time series (`nextstate report` then "
               "draws only what follows)")

RETENTION: tuple[tuple[float, float], ...] = ((2 * 86_400.0, 300.0), (30 * 86_400.0, 3_600.0))
"""``(age, step)`` tiers: snapshots older than ``age`` seconds (behind the latest recorded)
are thinned to one per ``step`` seconds."""


def default_path(state_dir: str | Path) -> Path:
    """The time-series file of a daemon state directory."""
    return Path(state_dir) / FILE_NAME


class TimeSeriesRecorder:
    """Appends snapshots of flat ``{series_key: value}`` dicts to a SQLite file.

    Thread-safe (the daemon may record from a timer thread). Its only state is the file
    itself: reopening a recorder on the same path continues the series, so it needs no
    ``state_dict`` of its own.

    Args:
        path: the SQLite file; created (with its parent folder) if missing.

    Example:
        >>> import tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "ts.sqlite")
        >>> with TimeSeriesRecorder(path) as recorder:
        ...     recorder.record(10.0, {"records_total": 3.0})
        >>> latest(path)
        (10.0, {'records_total': 3.0})
    """

    __slots__ = ("_conn", "_ids", "_last", "_last_ts", "_lock", "_next_compaction",
                 "_thinned_to", "path", "retention")

    def __init__(self, path: str | Path,
                 retention: tuple[tuple[float, float], ...] = RETENTION) -> None:
        self.path = Path(path)
        self.retention = retention
        self._thinned_to: list[float | None] = [None] * len(retention)  # per tier, this run
        self._next_compaction = float("-inf")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(self.path, check_same_thread=False)
        try:
            with _reading(self.path):
                # Before anything writes: WAL mode and our schema would change another file.
                check_sqlite_tables(self._conn, self.path, _TABLES, "a nextstate time series",
                                    _MOVE_ASIDE)
                self._conn.execute("PRAGMA journal_mode=WAL")
                # A lost last sample on power loss is acceptable; a slow fsync per sample is not.
                self._conn.execute("PRAGMA synchronous=NORMAL")
                self._conn.executescript(_SCHEMA)
                self._ids: dict[str, int] = dict(self._conn.execute("SELECT key, id FROM series"))
                last = _latest(self._conn)
        except BaseException:
            self._conn.close()
            raise
        self._last_ts, self._last = last if last is not None else (float("-inf"), {})

    def record(self, ts: float, snapshot: dict[str, float]) -> None:
        """Persist one snapshot taken at ``ts`` (seconds since the epoch).

        Series absent from ``snapshot`` keep their previous value (counters never vanish).
        A snapshot at or before the last recorded time replaces nothing and is ignored,
        so that a clock step back cannot reorder the series.
        """
        with self._lock:
            if ts <= self._last_ts:
                return
            changed = [(k, float(v)) for k, v in snapshot.items() if self._last.get(k) != v]
            with self._conn:
                for key, _ in changed:
                    if key not in self._ids:
                        cursor = self._conn.execute("INSERT INTO series (key) VALUES (?)",
                                                    (key,))
                        self._ids[key] = int(cursor.lastrowid or 0)
                self._conn.execute("INSERT INTO snapshots (ts) VALUES (?)", (ts,))
                self._conn.executemany(
                    "INSERT INTO samples (ts, series_id, value) VALUES (?, ?, ?)",
                    [(ts, self._ids[k], v) for k, v in changed])
            self._last_ts = ts
            self._last.update(changed)
            if ts >= self._next_compaction and self.retention:
                # Each pass thins what aged since the last one: about a step of snapshots.
                self._next_compaction = ts + min(step for _, step in self.retention)
                self._thin_old(ts)

    def _thin_old(self, now: float) -> None:
        for tier, (age, step) in enumerate(self.retention):
            hi = math.floor((now - age) / step) * step  # whole steps only
            lo = self._thinned_to[tier]
            if lo is None or hi > lo:
                self._thin(lo, hi, step)
                self._thinned_to[tier] = hi

    def _thin(self, lo: float | None, hi: float, step: float) -> None:
        """Keep one snapshot per ``step`` seconds in ``[lo, hi)`` (``lo`` None: from the
        start): each step's last, every series' last sample in the step moved to its time."""
        low = float("-inf") if lo is None else lo
        conn = self._conn
        conn.execute("DROP TABLE IF EXISTS temp.kept")  # left by a pass that failed
        conn.execute("DROP TABLE IF EXISTS temp.moved")
        with conn:
            conn.execute("CREATE TEMP TABLE kept AS SELECT CAST(ts / ? AS INTEGER) AS b, "
                         "max(ts) AS ts FROM snapshots WHERE ts >= ? AND ts < ? GROUP BY b",
                         (step, low, hi))
            conn.execute(
                "CREATE TEMP TABLE moved AS SELECT k.ts AS ts, m.series_id AS series_id, "
                "m.value AS value FROM (SELECT series_id, value, CAST(ts / ? AS INTEGER) AS b, "
                "row_number() OVER (PARTITION BY series_id, CAST(ts / ? AS INTEGER) "
                "ORDER BY ts DESC) AS n FROM samples WHERE ts >= ? AND ts < ?) m "
                "JOIN kept k ON k.b = m.b WHERE m.n = 1", (step, step, low, hi))
            conn.execute("DELETE FROM samples WHERE ts >= ? AND ts < ?", (low, hi))
            conn.execute("INSERT INTO samples (ts, series_id, value) "
                         "SELECT ts, series_id, value FROM moved")
            conn.execute("DELETE FROM snapshots WHERE ts >= ? AND ts < ? "
                         "AND ts NOT IN (SELECT ts FROM kept)", (low, hi))
            conn.execute("DROP TABLE temp.kept")
            conn.execute("DROP TABLE temp.moved")

    def close(self) -> None:
        """Close the file (idempotent)."""
        with self._lock:
            self._conn.close()

    def __enter__(self) -> TimeSeriesRecorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def _reading(path: Path) -> Iterator[None]:
    """A damaged file, or a sample that is no number, is a :class:`CorruptStateFile`."""
    try:
        yield
    except sqlite3.DatabaseError as exc:
        if not is_corruption(exc):
            raise
        raise corrupt_sqlite(path, exc, _MOVE_ASIDE) from None
    except (ValueError, TypeError, KeyError) as exc:  # rows no recorder of ours wrote
        raise CorruptStateFile(path, f"holds rows nextstate does not write ({exc!r})",
                               _MOVE_ASIDE) from None


@contextlib.contextmanager
def _connect_readonly(path: str | Path) -> Iterator[sqlite3.Connection | None]:
    """The file in one read transaction; ``None`` while it holds no tables (a new file)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no time series at {path}")
    # Not mode=ro: a WAL reader may need to create the -shm file when the writer is gone.
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        with _reading(path):
            new = check_sqlite_tables(conn, path, _TABLES, "a nextstate time series",
                                      _MOVE_ASIDE)
            # One read transaction, so that every SELECT sees the same committed snapshots.
            conn.execute("BEGIN")
            yield None if new else conn
    finally:
        conn.close()


def _latest(conn: sqlite3.Connection) -> Sample | None:
    row = conn.execute("SELECT max(ts) FROM snapshots").fetchone()
    if row is None or row[0] is None:
        return None
    # SQLite takes the bare column ``value`` from the row holding ``max(ts)``.
    values = conn.execute(
        "SELECT s.key, m.value, max(m.ts) FROM samples m JOIN series s ON s.id = m.series_id "
        "GROUP BY m.series_id")
    return float(row[0]), {k: float(v) for k, v, _ in values}


def read_series(path: str | Path, since: float | None = None) -> list[Sample]:
    """Every snapshot recorded at or after ``since`` (all if None), oldest first.

    Each sample is a full snapshot: series that did not change at that time carry their
    previous value, including values recorded before ``since``.

    Raises:
        FileNotFoundError: there is no time-series file at ``path``.
        CorruptStateFile: the file is damaged or holds something else.
    """
    with _connect_readonly(path) as conn:
        if conn is None:
            return []
        keys = dict(conn.execute("SELECT id, key FROM series"))
        current: dict[str, float] = {}
        start = float("-inf") if since is None else float(since)
        if since is not None:
            # The value of every series as of just before ``since``.
            for series_id, value, _ in conn.execute(
                    "SELECT series_id, value, max(ts) FROM samples WHERE ts < ? "
                    "GROUP BY series_id", (start,)):
                current[keys[series_id]] = float(value)
        changes: dict[float, list[tuple[int, float]]] = {}
        for ts, series_id, value in conn.execute(
                "SELECT ts, series_id, value FROM samples WHERE ts >= ? ORDER BY ts", (start,)):
            changes.setdefault(ts, []).append((series_id, value))
        out: list[Sample] = []
        for (ts,) in conn.execute("SELECT ts FROM snapshots WHERE ts >= ? ORDER BY ts",
                                  (start,)):
            for series_id, value in changes.get(ts, ()):
                current[keys[series_id]] = float(value)
            out.append((float(ts), dict(current)))
        return out


def latest(path: str | Path) -> Sample | None:
    """The last recorded snapshot (full), or None if nothing was recorded yet.

    Raises:
        FileNotFoundError: there is no time-series file at ``path``.
        CorruptStateFile: the file is damaged or holds something else.
    """
    with _connect_readonly(path) as conn:
        return None if conn is None else _latest(conn)

"""The daemon's counters over time: :class:`YieldStats` snapshots persisted in SQLite.

The daemon calls ``recorder.record(time.time(), stats.snapshot())`` every
``timeseries_interval_s`` seconds and once at shutdown; ``nextstate report`` and
``nextstate stats`` read the file back with :func:`read_series` / :func:`latest`.

Storage is change-only: a snapshot writes a row only for the series whose value moved since
the previous snapshot (counters of an idle source do not grow the file), plus one row per
snapshot in ``snapshots`` so that the times of the samples are kept even when nothing moved.
Reading carries every series forward, so each returned sample is a full snapshot again.
The file lives beside the buffers (``<state_dir>/timeseries.sqlite``) in WAL mode, so a
report can read it while the daemon writes.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

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

    __slots__ = ("_conn", "_ids", "_last", "_last_ts", "_lock", "path")

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(self.path, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        # A lost last sample on power loss is acceptable; a slow fsync per sample is not.
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.executescript(_SCHEMA)
        self._ids: dict[str, int] = dict(self._conn.execute("SELECT key, id FROM series"))
        last = _latest(self._conn)
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

    def close(self) -> None:
        """Close the file (idempotent)."""
        with self._lock:
            self._conn.close()

    def __enter__(self) -> TimeSeriesRecorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _connect_readonly(path: str | Path) -> sqlite3.Connection:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no time series at {path}")
    # Not mode=ro: a WAL reader may need to create the -shm file when the writer is gone.
    conn = sqlite3.connect(path, isolation_level=None)
    # One read transaction, so that every SELECT sees the same committed snapshots.
    conn.execute("BEGIN")
    return conn


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
    """
    conn = _connect_readonly(path)
    try:
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
    finally:
        conn.close()


def latest(path: str | Path) -> Sample | None:
    """The last recorded snapshot (full), or None if nothing was recorded yet.

    Raises:
        FileNotFoundError: there is no time-series file at ``path``.
    """
    conn = _connect_readonly(path)
    try:
        return _latest(conn)
    finally:
        conn.close()

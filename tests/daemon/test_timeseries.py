"""Tests of the SQLite time series of YieldStats snapshots."""

from __future__ import annotations

import sqlite3
import threading

import pytest

from nextstate.daemon.timeseries import (
    TimeSeriesRecorder,
    default_path,
    latest,
    read_series,
)
from nextstate.daemon.yieldstats import YieldStats


def test_round_trip_full_snapshots(tmp_path):
    """Each read sample is the full snapshot recorded at that time, oldest first."""
    path = default_path(tmp_path)
    snaps = [{"a_total": 1.0, "b_total": 0.0}, {"a_total": 2.0, "b_total": 0.0},
             {"a_total": 2.0, "b_total": 5.0, "c_total": 1.0}]
    with TimeSeriesRecorder(path) as recorder:
        for i, snap in enumerate(snaps):
            recorder.record(100.0 + 10 * i, snap)
    got = read_series(path)
    assert [ts for ts, _ in got] == [100.0, 110.0, 120.0]
    assert [s for _, s in got] == snaps


def test_only_changed_series_are_written(tmp_path):
    """A snapshot in which nothing moved adds a time but no value rows."""
    path = tmp_path / "ts.sqlite"
    with TimeSeriesRecorder(path) as recorder:
        recorder.record(1.0, {"a_total": 1.0, "b_total": 2.0})
        recorder.record(2.0, {"a_total": 1.0, "b_total": 2.0})
        recorder.record(3.0, {"a_total": 4.0, "b_total": 2.0})
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT count(*) FROM samples").fetchone()[0] == 3
    assert conn.execute("SELECT count(*) FROM snapshots").fetchone()[0] == 3
    conn.close()
    assert read_series(path)[1] == (2.0, {"a_total": 1.0, "b_total": 2.0})


def test_since_carries_earlier_values(tmp_path):
    """Reading from ``since`` starts from the values as they stood before it."""
    path = tmp_path / "ts.sqlite"
    with TimeSeriesRecorder(path) as recorder:
        recorder.record(1.0, {"a_total": 1.0, "b_total": 7.0})
        recorder.record(2.0, {"a_total": 2.0, "b_total": 7.0})
        recorder.record(3.0, {"a_total": 3.0, "b_total": 7.0})
    got = read_series(path, since=2.0)
    assert got == [(2.0, {"a_total": 2.0, "b_total": 7.0}),
                   (3.0, {"a_total": 3.0, "b_total": 7.0})]
    assert read_series(path, since=10.0) == []


def test_latest_and_reopen_continue(tmp_path):
    """A reopened recorder continues the series and ignores a time that is not later."""
    path = tmp_path / "ts.sqlite"
    with TimeSeriesRecorder(path) as recorder:
        recorder.record(5.0, {"a_total": 1.0, "b_total": 1.0})
        recorder.record(6.0, {"a_total": 2.0, "b_total": 1.0})
    assert latest(path) == (6.0, {"a_total": 2.0, "b_total": 1.0})
    with TimeSeriesRecorder(path) as recorder:
        recorder.record(6.0, {"a_total": 99.0})
        recorder.record(4.0, {"a_total": 99.0})
        recorder.record(7.0, {"a_total": 2.0, "b_total": 3.0})
    got = read_series(path)
    assert [ts for ts, _ in got] == [5.0, 6.0, 7.0]
    assert got[-1][1] == {"a_total": 2.0, "b_total": 3.0}
    conn = sqlite3.connect(path)
    # Reopening knew the last values: the unchanged a_total at 7.0 wrote no row.
    assert conn.execute("SELECT count(*) FROM samples WHERE ts = 7.0").fetchone()[0] == 1
    conn.close()


def test_empty_and_missing_files(tmp_path):
    """A fresh file has no latest sample; a missing one is an explicit error."""
    path = tmp_path / "sub" / "ts.sqlite"
    TimeSeriesRecorder(path).close()
    assert latest(path) is None
    assert read_series(path) == []
    with pytest.raises(FileNotFoundError):
        read_series(tmp_path / "nope.sqlite")


def test_records_yieldstats_snapshots_while_read_concurrently(tmp_path):
    """Snapshots recorded from a thread are readable (WAL) and keep YieldStats' keys."""
    path = default_path(tmp_path)
    stats = YieldStats(clock=lambda: 0.0)
    recorder = TimeSeriesRecorder(path)
    done = threading.Event()

    def writer() -> None:
        for i in range(50):
            stats.observe_record("openai_exchange")
            recorder.record(float(i + 1), stats.snapshot())
        done.set()

    thread = threading.Thread(target=writer)
    thread.start()
    while not done.is_set():
        for ts, snap in read_series(path):  # a reader never sees a half-written snapshot
            assert snap['records_total{shape="openai_exchange"}'] == ts
    thread.join()
    recorder.close()
    got = read_series(path)
    assert len(got) == 50
    assert got[-1][1]['records_total{shape="openai_exchange"}'] == 50.0
    assert got[-1][1]["signal_per_interaction"] == 0.0


def test_old_snapshots_are_thinned_and_keep_their_values(tmp_path):
    """Past each tier's age one snapshot per step is kept (the step's last), holding every
    series' value at its time: read back, it equals the snapshot recorded then. Before, every
    snapshot was kept forever (39 MB a day at 150 moving series)."""
    import random

    rng = random.Random(7)
    path = tmp_path / "ts.sqlite"
    retention = ((3_600.0, 300.0), (6 * 3_600.0, 1_800.0))
    recorded: dict[float, dict[str, float]] = {}
    values = {f"s{n}_total": 0.0 for n in range(8)}
    with TimeSeriesRecorder(path, retention=retention) as recorder:
        for n in range(720):  # 12 h at one snapshot a minute
            for key in rng.sample(sorted(values), rng.randint(0, 3)):  # a few move, or none
                values[key] += rng.randint(1, 5)
            ts = 1_000_000.0 + 60 * n + rng.uniform(0, 30)
            recorder.record(ts, dict(values))
            recorded[ts] = dict(values)
    got = read_series(path)
    assert all(snapshot == recorded[ts] for ts, snapshot in got)
    last = max(recorded)
    assert got[-1] == (last, recorded[last])
    for age, step in retention:  # at most one snapshot per step beyond the age
        old = [ts for ts, _ in got if ts < last - age - 2 * step]  # thinned a step late
        buckets = [int(ts // step) for ts in old]
        assert len(buckets) == len(set(buckets)) and len(old) >= 1
    assert len(got) < 720 / 3
    recent = [ts for ts in recorded if ts >= last - 3_600.0 + 300.0]
    assert set(recent) <= {ts for ts, _ in got}  # the last hour, every snapshot

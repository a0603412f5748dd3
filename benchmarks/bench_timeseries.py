"""Time-series file size over days of a running daemon (the retention's effect).

    python benchmarks/bench_timeseries.py [--days 5] [--series 150] [--every 10]

Records one snapshot every ``--every`` simulated seconds in which all ``--series`` counters
move (the worst case for change-only storage), and prints the file size after each day and
how long reading the whole series back takes. The target: the size levels off after the
retention's first tier (two days) instead of growing by a day's snapshots every day.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from nextstate.daemon.timeseries import TimeSeriesRecorder, read_series


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--days", type=int, default=5)
    parser.add_argument("--series", type=int, default=150)
    parser.add_argument("--every", type=float, default=10.0)
    args = parser.parse_args()
    path = Path(tempfile.mkdtemp()) / "timeseries.sqlite"
    keys = [f'tuples_total{{extractor="e{i}",kind="evaluative",source="s{i % 5}"}}'
            for i in range(args.series)]
    per_day = int(86_400 / args.every)
    started = time.perf_counter()
    with TimeSeriesRecorder(path) as recorder:
        for day in range(args.days):
            for n in range(per_day):
                k = day * per_day + n
                recorder.record(1_760_000_000 + args.every * k,
                                {key: float(k * (i + 1)) for i, key in enumerate(keys)})
            recorder._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # size of the file alone
            print(f"after day {day + 1}: {path.stat().st_size / 1e6:6.1f} MB "
                  f"({time.perf_counter() - started:.0f} s)", flush=True)
    started = time.perf_counter()
    snapshots = read_series(path)
    print(f"read_series: {len(snapshots):,} snapshots in {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()

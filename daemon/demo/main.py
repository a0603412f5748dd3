"""``nextstate demo``: a trained run and a frozen control run with the same seed, a table and
a plot (success rate vs interactions, signal per interaction over time, policy version)."""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

import numpy as np

from nextstate.daemon.demo.run import DemoSettings, Deployment, RunResult
from nextstate.daemon.demo.transport import KafkaTransport, embedded_broker
from nextstate.daemon.report import Counters
from nextstate.daemon.timeseries import default_path, read_series


def _bar(label: str, done: int, total: int, extra: str) -> None:
    width = 30
    filled = min(width, int(width * done / max(1, total)))
    sys.stderr.write(f"\r{label:<8} [{'#' * filled}{'.' * (width - filled)}] "
                     f"{min(done, total)}/{total} {extra}")
    sys.stderr.flush()


def rolling_success(result: RunResult, window: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """(interactions, success rate over the last ``window`` sessions) after each session."""
    at = np.array([a for a, _ in result.sessions], dtype=float)
    ok = np.array([o for _, o in result.sessions], dtype=float)
    cumulative = np.concatenate([[0.0], np.cumsum(ok)])
    idx = np.arange(1, len(ok) + 1)
    lo = np.maximum(0, idx - window)
    return at, (cumulative[idx] - cumulative[lo]) / (idx - lo)


def signal_series(result: RunResult) -> tuple[np.ndarray, np.ndarray]:
    """(seconds since start, tuples per interaction per time bin) from the daemon's series."""
    assert result.state_dir is not None
    samples = read_series(default_path(result.state_dir))
    counters = Counters(samples, from_zero=True)
    if len(counters) < 3:
        return np.zeros(0), np.zeros(0)
    tuples, inter = counters.increase("tuples"), counters.increase("interactions")
    dt, di = np.diff(tuples), np.diff(inter)
    with np.errstate(divide="ignore", invalid="ignore"):
        rate = np.where(di > 0, dt / np.where(di > 0, di, 1), np.nan)
    return counters.ts[1:] - counters.ts[0], rate


def plot(trained: RunResult, frozen: RunResult, path: Path) -> Path:
    """The demo's figure: success vs interactions, signal per interaction, policy version."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(8, 9), dpi=100)
    for result, label in ((trained, "trained"), (frozen, "frozen control")):
        x, y = rolling_success(result)
        axes[0].plot(x, y, label=label)
        t, rate = signal_series(result)
        axes[1].plot(t, rate, marker=".", label=label)
    axes[0].set(title="Task success rate (last 20 sessions)", xlabel="interactions",
                ylim=(-0.02, 1.02))
    axes[1].set(title="Signal per interaction (daemon time series)", xlabel="seconds",
                ylabel="tuples / interaction")
    axes[2].step([a for a, _ in trained.versions], [v for _, v in trained.versions],
                 where="post")
    axes[2].set(title="Policy version the agent runs (trained run)", xlabel="interactions")
    for ax in axes[:2]:
        ax.legend(fontsize=8)
    for ax in axes:
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def table(trained: RunResult, frozen: RunResult) -> str:
    """The final comparison table."""
    rows = [("run", "sessions", "success", "success last 20%", "policy version", "wall s")]
    for name, r in (("trained", trained), ("frozen", frozen)):
        version = r.versions[-1][1] if r.versions else 0
        rows.append((name, str(len(r.sessions)), f"{r.success_rate():.3f}",
                     f"{r.success_rate(0.8):.3f}", str(version), f"{r.wall_s:.1f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True))
                     for row in rows)


def demo_main(argv: list[str]) -> int:
    """Entry point of ``nextstate demo``; returns the exit status."""
    parser = argparse.ArgumentParser(prog="nextstate demo", description=__doc__)
    parser.add_argument("--out", default="nextstate-demo", help="output folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--interactions", type=int, default=DemoSettings.interactions)
    parser.add_argument("--no-kafka", action="store_true",
                        help="skip the embedded Kafka broker: records go through a file")
    args = parser.parse_args(argv)
    out = Path(args.out)
    results: dict[str, RunResult] = {}
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        bootstrap = None if args.no_kafka else stack.enter_context(embedded_broker())
        print("records go through " + (f"Kafka (embedded Tansu broker at {bootstrap})"
                                       if bootstrap else "a JSON-lines file (file source)"))
        for name, train in (("trained", True), ("frozen", False)):
            settings = DemoSettings(interactions=args.interactions, seed=args.seed,
                                    train=train)

            def progress(done: int, result: RunResult, name: str = name) -> None:
                _bar(name, done, args.interactions,
                     f"success {result.success_rate():.2f} v{result.versions[-1][1]}")

            transport = (KafkaTransport(bootstrap, topic=f"agent-interactions-{name}")
                         if bootstrap else None)
            try:
                results[name] = Deployment(settings, out / name, transport).run(progress)
            finally:
                if transport is not None:
                    transport.close()
            sys.stderr.write("\n")
    print(table(results["trained"], results["frozen"]))
    path = plot(results["trained"], results["frozen"], out / "demo.png")
    print(f"total {time.perf_counter() - started:.1f} s; plot: {path}")
    return 0

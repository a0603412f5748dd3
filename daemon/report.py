"""``nextstate report`` and ``nextstate stats``: the signal yield and deployment metrics.

``nextstate report --state-dir DIR [DIR ...] [--since 1h] --out OUT [--prices prices.toml]``
reads the daemon's counter time series (``<state_dir>/timeseries.sqlite``, see
:mod:`nextstate.daemon.timeseries`) and writes one PNG per metric plus ``report.html``, a
single self-contained page (the PNGs are embedded) with each metric's definition beside its
plot. The definitions live in :data:`METRIC_DEFINITIONS` so that the page and the README say
the same thing.

Every rate is a ratio of counter *increases* over a time bin (counter resets, as after a
restart without state, are handled like Prometheus' ``increase``), never of raw totals, so a
plot shows how the yield changes over time. Several state dirs (the shards of daemons
scaled out in one consumer group) make one report: their counters' increases are summed at
every time any shard sampled (:meth:`Counters.merge`), and every rate is computed from
those sums.

The price table (``--prices``) is TOML, USD per 1M tokens::

    [models."gpt-4o-mini"]
    input = 0.15
    cached_input = 0.075
    output = 0.60
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import html
import json
import math
import re
import sys
import time
import tomllib
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from nextstate.buffers.statefile import EXIT_STATE_CORRUPT, CorruptStateFile
from nextstate.daemon.timeseries import default_path, read_series
from nextstate.daemon.yieldstats import parse_series_key
from nextstate.extractors.types import KINDS, SOURCES

# name -> (title, definition). The README's metric section is generated from the same text.
METRIC_DEFINITIONS: dict[str, tuple[str, str]] = {
    "signal_per_interaction": (
        "Signal per interaction",
        "Training tuples emitted per closed interaction (an agent action joined to its next "
        "state), per time bin. Per source: tuples from that source (user, tool, terminal, "
        "gui, judge, feedback) per closed interaction; the sources add up to the overall line."),
    "tuples_per_1k_tokens": (
        "Tuples per 1k tokens (signal per token)",
        "Training tuples per 1,000 tokens of the agent's own traffic (prompt + completion "
        "tokens of the exchanges that produced the actions), per time bin and source. It says "
        "how much learning signal each token the deployment already pays for yields."),
    "kind_share": (
        "Directive vs evaluative share",
        "Of the tuples in the window, the share of each kind: evaluative (a reward: was the "
        "action good?), directive (a hint: how should it have been different?) and "
        "preference (chosen vs rejected), per source and overall."),
    "judge_tokens_per_tuple": (
        "Judge tokens per tuple",
        "LLM-judge tokens spent (prompt + completion) per tuple the judge source emitted, per "
        "time bin. The cost of the judge's signal; zero judge tuples leave a gap."),
    "cache_read_share": (
        "Cache-read share of input tokens",
        "Cache-read prompt tokens (usage.prompt_tokens_details.cached_tokens, where the call "
        "log has it) divided by all prompt tokens, per time bin and model."),
    "dead_letter_rate": (
        "Dead-letter rate",
        "Records sent to the dead-letter queue per decoded-or-rejected input record "
        "(dead letters / (records + dead letters)), per time bin, overall and by reason."),
    "cost_per_session": (
        "Cost per session",
        "Agent spend in the time bin, priced from the price table (USD per 1M tokens: "
        "uncached input, cached input, output, per model), divided by the sessions that ended "
        "with a known outcome (cost per completed session) and by those whose outcome was "
        "positive (cost per successful session). Models without a price count as zero and are "
        "listed under the table."),
    "success_per_1m_tokens": (
        "Success per 1M tokens",
        "Sessions with a positive outcome (from session_end events and feedback-closed "
        "sessions) per million agent tokens (prompt + completion), per time bin."),
    "trajectory_quality": (
        "Trajectory quality",
        "Share of the agent's actions flagged as poor steps, per time bin and flag: error (a "
        "tool, terminal or GUI said the action failed), repeat (the same action as the "
        "session's previous one, a no-op in effect), and any other flag the daemon counts. "
        "Lower is better."),
}

_SINCE_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def parse_since(text: str, now: float | None = None) -> float:
    """Turn ``--since`` into epoch seconds: ``90s``, ``30m``, ``1h``, ``2d``, ``3600`` (seconds
    ago), or an ISO-8601 time (UTC when it has no offset).

    Raises:
        ValueError: the text is neither.
    """
    now = time.time() if now is None else now
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text)
    if match:
        return now - float(match.group(1)) * _SINCE_UNITS[match.group(2) or "s"]
    try:
        when = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"--since {text!r}: expected e.g. 1h, 30m, 3600 or an ISO time") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()


Prices = dict[str, dict[str, float]]


def load_prices(path: str | Path) -> Prices:
    """Read a TOML price table: ``[models."name"] input=, cached_input=, output=`` (USD/1M).

    ``cached_input`` defaults to ``input`` (no cache discount) when left out.

    Raises:
        ValueError: a model's table lacks ``input`` or ``output``, or a price is negative.
    """
    with open(path, "rb") as f:
        data = tomllib.load(f)
    prices: Prices = {}
    for model, row in data.get("models", {}).items():
        if "input" not in row or "output" not in row:
            raise ValueError(f"price table: model {model!r} needs input and output")
        entry = {"input": float(row["input"]), "output": float(row["output"]),
                 "cached_input": float(row.get("cached_input", row["input"]))}
        if min(entry.values()) < 0:
            raise ValueError(f"price table: negative price for {model!r}")
        prices[model] = entry
    return prices


class Counters:
    """Counter increases over the samples of a time series, reset-aware.

    Args:
        samples: ``(ts, snapshot)`` pairs, oldest first (from :func:`read_series`).
        from_zero: count from zero before the first sample (the whole history) rather than
            from the first sample's values (a ``--since`` window).
    """

    def __init__(self, samples: Sequence[tuple[float, dict[str, float]]],
                 from_zero: bool) -> None:
        if from_zero and samples:
            samples = [(samples[0][0], {}), *samples]
        self.ts = np.array([ts for ts, _ in samples], dtype=float)
        self._series: dict[str, list[tuple[dict[str, str], np.ndarray]]] = {}
        keys = {k for _, snap in samples for k in snap}
        for key in sorted(keys):
            name, labels = parse_series_key(key)
            if not name.endswith("_total"):
                continue  # gauges are recomputed from counters, never differenced
            values = np.array([snap.get(key, 0.0) for _, snap in samples], dtype=float)
            step = np.diff(values)
            dropped = step < 0
            step[dropped] = values[1:][dropped]  # a reset: the counter restarted from zero
            monotonic = np.concatenate([[0.0], np.cumsum(step)])
            self._series.setdefault(name[: -len("_total")], []).append((labels, monotonic))

    @classmethod
    def merge(cls, parts: Sequence[Counters]) -> Counters:
        """The counters of several shards as one: at every time any part sampled, each
        series' increase summed over the parts.

        A part's increase at a time is the one at its last sample at or before it (0 before
        its first): a shard's counters hold between its samples, and the shards sample at
        times of their own. Each part's resets were already folded into its increases, so the
        sum only grows. Gauges never enter (they are ratios; every rate is computed from the
        summed counters). Like a single part, the merged increases start at 0: a zero sample
        is put first when some part already counted at the earliest time.

        Example:
            >>> a = Counters([(1.0, {"tuples_total": 2.0}), (3.0, {"tuples_total": 5.0})], True)
            >>> b = Counters([(2.0, {"tuples_total": 4.0})], True)
            >>> merged = Counters.merge([a, b])
            >>> merged.ts.tolist(), merged.increase("tuples").tolist()
            ([1.0, 1.0, 2.0, 3.0], [0.0, 2.0, 6.0, 9.0])
        """
        parts = [part for part in parts if len(part)]
        ts = np.unique(np.concatenate([part.ts for part in parts])) if parts else np.zeros(0)
        # Per part, the index of its last sample at or before each merged time (-1: none).
        at = [np.searchsorted(part.ts, ts, side="right") - 1 for part in parts]
        summed: dict[tuple[str, tuple[tuple[str, str], ...]], np.ndarray] = {}
        for part, index in zip(parts, at, strict=True):
            for name, series in part._series.items():
                for labels, monotonic in series:
                    values = np.where(index >= 0, monotonic[np.maximum(index, 0)], 0.0)
                    key = (name, tuple(sorted(labels.items())))
                    summed[key] = summed[key] + values if key in summed else values
        if len(ts) and any(values[0] for values in summed.values()):
            ts = np.concatenate([ts[:1], ts])
            summed = {key: np.concatenate([[0.0], values]) for key, values in summed.items()}
        merged = cls([], from_zero=False)
        merged.ts = ts
        for (name, labels), values in sorted(summed.items()):
            merged._series.setdefault(name, []).append((dict(labels), values))
        return merged

    def __len__(self) -> int:
        return len(self.ts)

    def label_values(self, name: str, label: str) -> list[str]:
        """The values a label takes in the series of ``name``."""
        return sorted({ls[label] for ls, _ in self._series.get(name, []) if label in ls})

    def increase(self, name: str, **labels: str) -> np.ndarray:
        """Cumulative increase at each sample, summed over series whose labels match."""
        out = np.zeros(len(self.ts))
        for series_labels, monotonic in self._series.get(name, []):
            if all(series_labels.get(k) == v for k, v in labels.items()):
                out = out + monotonic
        return out

    def total(self, name: str, **labels: str) -> float:
        """Increase over the whole window."""
        inc = self.increase(name, **labels)
        return float(inc[-1]) if len(inc) else 0.0


def _ratio(num: float, den: float) -> float:
    return num / den if den else math.nan


def _bin_edges(n_samples: int, max_bins: int) -> np.ndarray:
    """Sample indices that cut the series into at most ``max_bins`` bins."""
    if n_samples < 2:
        return np.array([], dtype=int)
    return np.unique(np.linspace(0, n_samples - 1, min(max_bins, n_samples - 1) + 1).round()
                     .astype(int))


def binned(counters: Counters, edges: np.ndarray, num: np.ndarray,
           den: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """``scale * Δnum / Δden`` per bin (NaN where the denominator did not move)."""
    dn, dd = np.diff(num[edges]), np.diff(den[edges])
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(dd > 0, scale * dn / np.where(dd > 0, dd, 1.0), np.nan)


def _tokens(counters: Counters) -> np.ndarray:
    return counters.increase("prompt_tokens") + counters.increase("completion_tokens")


def _cost(counters: Counters, prices: Prices) -> tuple[np.ndarray, list[str]]:
    """Cumulative USD spend at each sample, and the models that had no price."""
    cost = np.zeros(len(counters))
    unpriced: list[str] = []
    models = sorted(set(counters.label_values("prompt_tokens", "model")) |
                    set(counters.label_values("completion_tokens", "model")))
    for model in models:
        price = prices.get(model)
        if price is None:
            unpriced.append(model)
            continue
        prompt = counters.increase("prompt_tokens", model=model)
        cached = counters.increase("cached_tokens", model=model)
        output = counters.increase("completion_tokens", model=model)
        cost += ((prompt - cached) * price["input"] + cached * price["cached_input"] +
                 output * price["output"]) / 1e6
    return cost, unpriced


def _sources(counters: Counters) -> list[str]:
    seen = set(counters.label_values("tuples", "source"))
    return [s for s in SOURCES if s in seen] + sorted(seen - set(SOURCES))


def summarize(counters: Counters, prices: Prices) -> dict[str, object]:
    """Every metric over the whole window, as plain numbers (NaN where undefined).

    Returns:
        ``{"window": {...}, "sources": {source: {...}}, "models": {...}, "deployment":
        {...}, "flags": {...}, "unpriced_models": [...]}``; ``sources`` has an ``all`` row.
    """
    interactions = counters.total("interactions")
    tokens = counters.total("prompt_tokens") + counters.total("completion_tokens")
    sources: dict[str, dict[str, float]] = {}
    for source in ["all", *_sources(counters)]:
        match = {} if source == "all" else {"source": source}
        tuples = counters.total("tuples", **match)
        row = {
            "tuples": tuples,
            "signal_per_interaction": _ratio(tuples, interactions),
            "share_with_signal": _ratio(counters.total("interactions_with_signal",
                                                       source=source), interactions),
            "tuples_per_1k_tokens": _ratio(1000 * tuples, tokens),
        }
        for kind in KINDS:
            row[f"{kind}_share"] = _ratio(counters.total("tuples", kind=kind, **match), tuples)
        sources[source] = row
    models = {}
    for model in counters.label_values("prompt_tokens", "model"):
        prompt = counters.total("prompt_tokens", model=model)
        models[model] = {"prompt_tokens": prompt,
                         "cached_tokens": counters.total("cached_tokens", model=model),
                         "completion_tokens": counters.total("completion_tokens", model=model),
                         "cache_read_share": _ratio(counters.total("cached_tokens", model=model),
                                                    prompt)}
    cost, unpriced = _cost(counters, prices)
    spend = float(cost[-1]) if len(cost) else 0.0
    ended, succeeded = counters.total("sessions_ended"), counters.total("sessions_succeeded")
    records, dead = counters.total("records"), counters.total("dead_letters")
    judge_tokens = counters.total("judge_tokens")
    deployment = {
        "cost_usd": spend if prices else math.nan,
        "sessions_ended": ended,
        "sessions_succeeded": succeeded,
        "cost_per_completed_session": _ratio(spend, ended) if prices else math.nan,
        "cost_per_successful_session": _ratio(spend, succeeded) if prices else math.nan,
        "success_per_1m_tokens": _ratio(1e6 * succeeded, tokens),
    }
    flags = {flag: _ratio(counters.total("actions_flagged", flag=flag), interactions)
             for flag in counters.label_values("actions_flagged", "flag")}
    window = {
        "start": float(counters.ts[0]) if len(counters) else math.nan,
        "end": float(counters.ts[-1]) if len(counters) else math.nan,
        "records": records,
        "interactions": interactions,
        "tokens": tokens,
        "cache_read_share": _ratio(counters.total("cached_tokens"),
                                   counters.total("prompt_tokens")),
        "dead_letters": dead,
        "dead_letter_rate": _ratio(dead, records + dead),
        "judge_tokens": judge_tokens,
        "judge_tokens_per_tuple": _ratio(judge_tokens, counters.total("tuples", source="judge")),
    }
    return {"window": window, "sources": sources, "models": models, "deployment": deployment,
            "flags": flags, "unpriced_models": unpriced}


# -- plots -----------------------------------------------------------------------------------

def _figure(title: str):  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.6), dpi=100)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    return fig, ax


def _save(fig, path: Path) -> Path:  # type: ignore[no-untyped-def]
    import matplotlib.pyplot as plt

    ax = fig.axes[0]
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="best")
    if not ax.has_data():
        ax.text(0.5, 0.5, "no data in this window", ha="center", va="center",
                transform=ax.transAxes, color="gray")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _times(counters: Counters, edges: np.ndarray) -> list[dt.datetime]:
    return [dt.datetime.fromtimestamp(float(t), dt.UTC) for t in counters.ts[edges[1:]]]


def _lines(out: Path, name: str, counters: Counters, edges: np.ndarray,
           lines: Sequence[tuple[str, np.ndarray]], ylabel: str) -> Path:
    fig, ax = _figure(METRIC_DEFINITIONS[name][0])
    x = _times(counters, edges)
    for label, y in lines:
        if len(y) and not np.all(np.isnan(y)):
            ax.plot(x, y, marker=".", label=label, linewidth=2.5 if label == "all" else 1.2)
    ax.set_ylabel(ylabel)
    ax.set_xlabel("time (UTC)")
    fig.autofmt_xdate()
    return _save(fig, out / f"{name}.png")


def draw_plots(counters: Counters, summary: dict[str, object], prices: Prices, out: Path,
               max_bins: int = 60) -> dict[str, Path]:
    """Write one PNG per metric of :data:`METRIC_DEFINITIONS` into ``out``."""
    edges = _bin_edges(len(counters), max_bins)
    interactions = counters.increase("interactions")
    tokens = _tokens(counters)
    sources = ["all", *_sources(counters)]

    def per_source(den: np.ndarray, scale: float = 1.0) -> list[tuple[str, np.ndarray]]:
        return [(s, binned(counters, edges, counters.increase(
            "tuples", **({} if s == "all" else {"source": s})), den, scale)) for s in sources]

    plots: dict[str, Path] = {}
    if len(edges) == 0:
        edges = np.array([0, 0]) if len(counters) else np.array([], dtype=int)
    bin_ok = len(edges) >= 2 and len(counters) >= 2
    empty: list[tuple[str, np.ndarray]] = []
    plots["signal_per_interaction"] = _lines(
        out, "signal_per_interaction", counters, edges,
        per_source(interactions) if bin_ok else empty, "tuples / interaction")
    plots["tuples_per_1k_tokens"] = _lines(
        out, "tuples_per_1k_tokens", counters, edges,
        per_source(tokens, 1000.0) if bin_ok else empty, "tuples / 1k tokens")

    # Kind shares: one stacked bar per source over the whole window.
    fig, ax = _figure(METRIC_DEFINITIONS["kind_share"][0])
    rows = summary["sources"]  # type: ignore[index]
    left = np.zeros(len(sources))
    colors = {"evaluative": "#4C72B0", "directive": "#DD8452", "preference": "#55A868"}
    for kind in KINDS:
        share = np.array([0.0 if math.isnan(v := rows[s][f"{kind}_share"]) else v  # type: ignore[index]
                          for s in sources])
        if share.any():
            ax.barh(sources, share, left=left, label=kind, color=colors[kind])
        left += share
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of tuples")
    ax.invert_yaxis()
    plots["kind_share"] = _save(fig, out / "kind_share.png")

    judge = counters.increase("judge_tokens")
    plots["judge_tokens_per_tuple"] = _lines(
        out, "judge_tokens_per_tuple", counters, edges,
        [("judge", binned(counters, edges, judge, counters.increase("tuples", source="judge")))]
        if bin_ok else empty, "judge tokens / judge tuple")
    cache_lines = [] if not bin_ok else [
        ("all", binned(counters, edges, counters.increase("cached_tokens"),
                       counters.increase("prompt_tokens")))] + [
        (m, binned(counters, edges, counters.increase("cached_tokens", model=m),
                   counters.increase("prompt_tokens", model=m)))
        for m in counters.label_values("prompt_tokens", "model")]
    plots["cache_read_share"] = _lines(out, "cache_read_share", counters, edges, cache_lines,
                                       "cached / prompt tokens")
    received = counters.increase("records") + counters.increase("dead_letters")
    dead_lines = [] if not bin_ok else [
        ("all", binned(counters, edges, counters.increase("dead_letters"), received))] + [
        (r, binned(counters, edges, counters.increase("dead_letters", reason=r), received))
        for r in counters.label_values("dead_letters", "reason")]
    plots["dead_letter_rate"] = _lines(out, "dead_letter_rate", counters, edges, dead_lines,
                                       "dead letters / record")
    cost, _ = _cost(counters, prices)
    cost_lines = [] if not (bin_ok and prices) else [
        ("per completed session", binned(counters, edges, cost,
                                         counters.increase("sessions_ended"))),
        ("per successful session", binned(counters, edges, cost,
                                          counters.increase("sessions_succeeded")))]
    plots["cost_per_session"] = _lines(out, "cost_per_session", counters, edges, cost_lines,
                                       "USD / session")
    plots["success_per_1m_tokens"] = _lines(
        out, "success_per_1m_tokens", counters, edges,
        [("all", binned(counters, edges, counters.increase("sessions_succeeded"), tokens, 1e6))]
        if bin_ok else empty, "successful sessions / 1M tokens")
    flag_lines = [] if not bin_ok else [
        (f, binned(counters, edges, counters.increase("actions_flagged", flag=f), interactions))
        for f in counters.label_values("actions_flagged", "flag")]
    plots["trajectory_quality"] = _lines(out, "trajectory_quality", counters, edges,
                                         flag_lines, "share of actions")
    return plots


# -- text and HTML ---------------------------------------------------------------------------

def fmt(value: float) -> str:
    """A metric value as the report prints it (``-`` when undefined)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.4g}"


_CSS = """
body{font-family:system-ui,-apple-system,"DejaVu Sans",sans-serif;margin:24px auto;
max-width:1180px;color:#1d2430;line-height:1.45;padding:0 16px}
h1{font-size:26px;margin:0 0 4px} h2{font-size:19px;margin:28px 0 8px;
border-bottom:1px solid #d9dee7;padding-bottom:4px}
.meta{color:#5a6475;font-size:14px}
table{border-collapse:collapse;font-size:14px;margin:8px 0}
th,td{border:1px solid #d9dee7;padding:4px 10px;text-align:right}
th{background:#f1f4f9} td:first-child,th:first-child{text-align:left}
.metric{display:flex;gap:20px;align-items:flex-start;margin:14px 0 22px}
.metric img{width:640px;max-width:62%;border:1px solid #e3e7ee}
.metric .def{flex:1;font-size:14.5px}
.metric .def h3{margin:0 0 6px;font-size:16px}
.note{color:#8a5a00;font-size:13px}
"""


def _table(headers: Sequence[str], rows: Sequence[Sequence[object]],
           keys: Sequence[str] | None = None) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = []
        for i, cell in enumerate(row):
            text = fmt(cell) if isinstance(cell, int | float) else str(cell)
            key = f' data-key="{html.escape(keys[i])}"' if keys and i else ""
            cells.append(f"<td{key}>{html.escape(text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def render_html(summary: dict[str, object], plots: dict[str, Path], title: str) -> str:
    """One self-contained page: summary tables, then each plot beside its definition."""
    window = summary["window"]  # type: ignore[assignment]
    deployment = summary["deployment"]  # type: ignore[assignment]

    def when(ts: float) -> str:
        if math.isnan(ts):
            return "-"
        return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")

    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'>"
             f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>",
             f"<p class='meta'>{when(window['start'])} to {when(window['end'])} · "
             f"{fmt(window['interactions'])} interactions · {fmt(window['records'])} records · "
             f"{fmt(window['tokens'])} agent tokens</p>",
             "<h2>Signal yield by source</h2>"]
    kinds = [f"{k} share" for k in KINDS]
    rows = [[source, row["tuples"], row["signal_per_interaction"], row["share_with_signal"],
             row["tuples_per_1k_tokens"], *[row[f"{k}_share"] for k in KINDS]]
            for source, row in summary["sources"].items()]  # type: ignore[attr-defined]
    parts.append(_table(["source", "tuples", "signal per interaction", "share with signal",
                         "tuples per 1k tokens", *kinds], rows))
    parts.append("<h2>Deployment</h2>")
    dep_rows = [["cost (USD)", deployment["cost_usd"]],
                ["sessions ended", deployment["sessions_ended"]],
                ["sessions succeeded", deployment["sessions_succeeded"]],
                ["cost per completed session (USD)", deployment["cost_per_completed_session"]],
                ["cost per successful session (USD)", deployment["cost_per_successful_session"]],
                ["success per 1M tokens", deployment["success_per_1m_tokens"]],
                ["cache-read share of input tokens", window["cache_read_share"]],
                ["judge tokens per judge tuple", window["judge_tokens_per_tuple"]],
                ["dead-letter rate", window["dead_letter_rate"]]]
    dep_rows += [[f"actions flagged {flag} (share)", share]
                 for flag, share in summary["flags"].items()]  # type: ignore[attr-defined]
    parts.append(_table(["metric", "value"], dep_rows))
    if summary["unpriced_models"]:
        parts.append("<p class='note'>No price for: " + html.escape(", ".join(
            summary["unpriced_models"])) + " (their tokens cost 0 here).</p>")  # type: ignore[arg-type]
    parts.append("<h2>Metrics over time</h2>")
    for name, path in plots.items():
        title_text, definition = METRIC_DEFINITIONS[name]
        data = base64.b64encode(path.read_bytes()).decode()
        parts.append(f"<div class='metric' id='{name}'><img alt='{html.escape(title_text)}' "
                     f"src='data:image/png;base64,{data}'><div class='def'>"
                     f"<h3>{html.escape(title_text)}</h3><p>{html.escape(definition)}</p>"
                     f"</div></div>")
    parts.append("<script type='application/json' id='summary'>" +
                 json.dumps(summary, default=float).replace("</", "<\\/") + "</script>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(counters: Counters, out: str | Path, prices: Prices | None = None,
                 title: str = "nextstate report") -> Path:
    """Write the PNGs and ``report.html`` for the counters (one state dir's, or several
    merged) into ``out``; returns the page."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    prices = prices or {}
    summary = summarize(counters, prices)
    plots = draw_plots(counters, summary, prices, out)
    page = out / "report.html"
    page.write_text(render_html(summary, plots, title), encoding="utf-8")
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=float) + "\n")
    return page


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nextstate report", description=__doc__.split("\n")[0])
    parser.add_argument("--state-dir", required=True, action="extend", nargs="+",
                        metavar="DIR", help="the daemon's state directory; several (repeat "
                        "the flag or list them) report the shards of a scaled-out group as one")
    parser.add_argument("--since", help="window start: 1h, 30m, 3600 (seconds ago) or ISO time")
    parser.add_argument("--out", required=True, help="folder for the PNGs and report.html")
    parser.add_argument("--prices", help="TOML price table, USD per 1M tokens per model")
    return parser


def report_main(argv: list[str], now: Callable[[], float] = time.time) -> int:
    """Entry point of ``nextstate report``; returns the exit status."""
    args = _parser().parse_args(argv)
    dirs = distinct_dirs(args.state_dir)
    try:
        since = parse_since(args.since, now()) if args.since else None
        prices = load_prices(args.prices) if args.prices else {}
        shards = [read_series(default_path(state_dir), since=since) for state_dir in dirs]
    except CorruptStateFile as exc:
        print(f"nextstate report: {exc}", file=sys.stderr)
        return EXIT_STATE_CORRUPT
    except (ValueError, FileNotFoundError, OSError, tomllib.TOMLDecodeError) as exc:
        print(f"nextstate report: {exc}", file=sys.stderr)
        return 2
    parts = [Counters(samples, from_zero=since is None) for samples in shards]
    samples = f"{sum(map(len, shards))} samples"
    if len(parts) == 1:
        counters, title = parts[0], "nextstate report"
    else:
        counters, title = Counters.merge(parts), f"nextstate report ({len(dirs)} state dirs)"
        samples += f" from {len(dirs)} state dirs"
    page = write_report(counters, args.out, prices, title=title)
    print(f"{samples} -> {page}")
    return 0


def distinct_dirs(values: Sequence[str]) -> list[Path]:
    """``--state-dir`` values as paths, in the order given, each directory once (named twice,
    as ``st`` and ``./st``, its counters would be summed twice); a state dir of
    ``--workers`` stands for its worker shards (:func:`~nextstate.daemon.workers.shard_dirs`)."""
    from nextstate.daemon.workers import shard_dirs

    dirs: dict[Path, Path] = {}
    for value in values:
        for path in shard_dirs(Path(value)):
            dirs.setdefault(path.resolve(), path)
    return list(dirs.values())

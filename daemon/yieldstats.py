"""Signal-yield accounting: the counters behind the metrics, the time series and the report.

One :class:`YieldStats` object counts everything the daemon reports: records by input shape,
closed interactions, tuples by extractor/kind/source, tokens, dead letters, session outcomes and
trajectory quality. It is the single source of truth: the Prometheus endpoint exposes it through
:class:`YieldCollector`, the time-series recorder persists its :meth:`YieldStats.snapshot`, and
``nextstate stats`` / ``nextstate report`` read those snapshots back.

**Signal per interaction** = training tuples emitted per closed interaction. Beside it: the
share of interactions that yield at least one tuple, and confidence-weighted tuples per
interaction; each overall and per source (user, tool, terminal, gui, judge, feedback).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from nextstate.extractors.types import SOURCES, Interaction, ScoredTuple

Labels = tuple[tuple[str, str], ...]


def series_key(name: str, labels: Labels = ()) -> str:
    """The flat key of one series in a snapshot: ``name{a="x",b="y"}`` (labels sorted)."""
    if not labels:
        return name
    return name + "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels)) + "}"


def parse_series_key(key: str) -> tuple[str, dict[str, str]]:
    """Inverse of :func:`series_key`."""
    if "{" not in key:
        return key, {}
    name, _, rest = key.partition("{")
    labels: dict[str, str] = {}
    for part in rest.rstrip("}").split('",'):
        k, _, v = part.partition("=")
        labels[k] = v.strip('"')
    return name, labels


# name -> (help, label names). Counters unless listed in _GAUGES.
METRICS: dict[str, tuple[str, tuple[str, ...]]] = {
    "records": ("Input records decoded, by input shape.", ("shape",)),
    "interactions": ("Closed interactions (action joined to its next state), by input shape.",
                     ("shape",)),
    "interactions_closed": ("Closed interactions by why they closed.", ("closed_by",)),
    "interactions_with_signal": ("Closed interactions that yielded at least one tuple, by "
                                 "source (source=all: from any source).", ("source",)),
    "tuples": ("Training tuples emitted, by extractor, kind and source.",
               ("extractor", "kind", "source")),
    "tuple_confidence": ("Sum of the confidence of emitted tuples, by source.", ("source",)),
    "prompt_tokens": ("Prompt tokens of the exchanges that produced the actions, by model.",
                      ("model",)),
    "cached_tokens": ("Cache-read prompt tokens (usage.prompt_tokens_details.cached_tokens), "
                      "by model.", ("model",)),
    "completion_tokens": ("Completion tokens of the actions, by model.", ("model",)),
    "dead_letters": ("Records sent to the dead-letter queue, by reason.", ("reason",)),
    "judge_calls": ("LLM-judge calls made.", ()),
    "judge_tokens": ("LLM-judge tokens spent, by direction (prompt, completion).",
                     ("direction",)),
    "sessions_ended": ("Sessions that ended with a known outcome.", ()),
    "sessions_succeeded": ("Sessions that ended with a positive outcome.", ()),
    "actions_flagged": ("Actions flagged as poor trajectory steps, by flag (error, noop, "
                        "repeat).",
                        ("flag",)),
    "redactions": ("Sensitive spans replaced by placeholders, by type.", ("type",)),
    "join_evictions": ("Pending join state dropped to stay within the join's bounds, by reason "
                       "(max_sessions, max_pending_bytes, feedback).", ("reason",)),
    "join_duplicates": ("Exchanges received again (same request, same response) and ignored "
                        "by the join.", ()),
}


class YieldStats:
    """Counts the pipeline's yield; cheap enough for the hot path (a few dict updates).

    Args:
        window_s: the rolling window of the ``signal_per_interaction_window`` gauge.
        clock: seconds, injectable for tests.

    Example:
        >>> stats = YieldStats()
        >>> stats.observe_record("transcript")
        >>> stats.snapshot()['records_total{shape="transcript"}']
        1.0
    """

    __slots__ = ("_clock", "_counters", "_keys", "_window", "window_s")

    def __init__(self, window_s: float = 60.0, clock=time.time) -> None:
        self.window_s = window_s
        self._clock = clock
        self._counters: dict[tuple[str, Labels], float] = {}
        # Counter keys of the per-interaction series by their label values, built once: the
        # hot path then costs a dict look-up per series instead of building label tuples.
        self._keys: dict[tuple[str, ...], tuple[tuple[str, Labels], ...]] = {}
        # (second, interactions, tuples, confidence) buckets inside the rolling window.
        self._window: deque[list[float]] = deque()

    # -- observation ------------------------------------------------------------------------
    def inc(self, name: str, labels: Labels = (), value: float = 1.0) -> None:
        """Add ``value`` to one counter series."""
        key = (name, labels)
        self._counters[key] = self._counters.get(key, 0.0) + value

    def observe_record(self, shape: str) -> None:
        """One input record decoded."""
        key = self._keys.get(("r", shape))
        if key is None:
            key = self._keys[("r", shape)] = (("records", (("shape", shape),)),)
        counters = self._counters
        counters[key[0]] = counters.get(key[0], 0.0) + 1.0

    def observe_dead_letter(self, reason: str) -> None:
        """One record sent to the dead-letter queue."""
        self.inc("dead_letters", (("reason", reason),))

    def observe_session_end(self, outcome: float | None) -> None:
        """A session ended; outcomes > 0 count as successes."""
        if outcome is None:
            return
        self.inc("sessions_ended")
        if outcome > 0:
            self.inc("sessions_succeeded")

    def observe_interaction(self, interaction: Interaction,
                            tuples: Sequence[ScoredTuple]) -> None:
        """One closed interaction and the tuples extracted from it."""
        counters, keys = self._counters, self._keys
        model = interaction.model or "unknown"
        ikey = ("i", interaction.shape, interaction.closed_by, model)
        series = keys.get(ikey)
        if series is None:
            labels = (("model", model),)
            series = keys[ikey] = (
                ("interactions", (("shape", interaction.shape),)),
                ("interactions_closed", (("closed_by", interaction.closed_by),)),
                ("prompt_tokens", labels), ("cached_tokens", labels),
                ("completion_tokens", labels))
        counters[series[0]] = counters.get(series[0], 0.0) + 1.0
        counters[series[1]] = counters.get(series[1], 0.0) + 1.0
        usage = interaction.usage
        for key, value in ((series[2], usage.prompt_tokens), (series[3], usage.cached_tokens),
                           (series[4], usage.completion_tokens)):
            if value:
                counters[key] = counters.get(key, 0.0) + value
        confidence = 0.0
        sources: set[str] = set()
        error = noop = False
        for t in tuples:
            tkey = (t.extractor, t.kind, t.source)
            pair = keys.get(tkey)
            if pair is None:
                pair = keys[tkey] = (
                    ("tuples", (("extractor", t.extractor), ("kind", t.kind),
                                ("source", t.source))),
                    ("tuple_confidence", (("source", t.source),)))
            counters[pair[0]] = counters.get(pair[0], 0.0) + 1.0
            counters[pair[1]] = counters.get(pair[1], 0.0) + t.confidence
            confidence += t.confidence
            sources.add(t.source)
            if t.kind == "evaluative" and t.reward < 0 and t.source in ("tool", "terminal",
                                                                           "gui"):
                error = True
            if t.label == "no_op":
                noop = True
        inc = self.inc
        for source in sources:
            inc("interactions_with_signal", (("source", source),))
        if sources:
            inc("interactions_with_signal", (("source", "all"),))
        if noop:  # the action changed nothing (a GUI no-op); not also counted as an error
            inc("actions_flagged", (("flag", "noop"),))
        elif error:
            inc("actions_flagged", (("flag", "error"),))
        if _repeats_previous_action(interaction):
            inc("actions_flagged", (("flag", "repeat"),))
        self._observe_window(len(tuples), confidence)

    def set_total(self, name: str, labels: Labels, value: float) -> None:
        """Set a counter mirrored from a component that keeps its own (judge, redactor)."""
        self._counters[(name, labels)] = float(value)

    def _observe_window(self, n_tuples: int, confidence: float) -> None:
        second = float(int(self._clock()))
        if self._window and self._window[-1][0] == second:
            bucket = self._window[-1]
            bucket[1] += 1
            bucket[2] += n_tuples
            bucket[3] += confidence
        else:
            self._window.append([second, 1.0, float(n_tuples), confidence])
            self._trim(second)

    def _trim(self, now: float) -> None:
        while self._window and self._window[0][0] <= now - self.window_s:
            self._window.popleft()

    # -- reading ----------------------------------------------------------------------------
    def total(self, name: str, **labels: str) -> float:
        """Sum of the series of ``name`` whose labels include ``labels``."""
        want = set(labels.items())
        return sum(v for (n, ls), v in self._counters.items()
                   if n == name and want <= set(ls))

    def signal_per_interaction(self) -> float:
        """Cumulative training tuples per closed interaction."""
        n = self.total("interactions")
        return self.total("tuples") / n if n else 0.0

    def window_signal_per_interaction(self) -> float:
        """Tuples per closed interaction over the last ``window_s`` seconds."""
        self._trim(float(int(self._clock())))
        n = sum(b[1] for b in self._window)
        return sum(b[2] for b in self._window) / n if n else 0.0

    def snapshot(self) -> dict[str, float]:
        """Every counter as ``{series_key: value}`` (``_total`` suffixed), plus the gauges."""
        snap = {series_key(name + "_total", labels): value
                for (name, labels), value in self._counters.items()}
        snap["signal_per_interaction"] = self.signal_per_interaction()
        snap["signal_per_interaction_window"] = self.window_signal_per_interaction()
        return snap

    def summary(self) -> dict[str, dict[str, float]]:
        """Per-source yield: tuples, tuples/interaction, share with signal, confidence-weighted."""
        n = self.total("interactions")
        rows: dict[str, dict[str, float]] = {}
        for source in ("all", *SOURCES):
            tuples = (self.total("tuples") if source == "all"
                      else self.total("tuples", source=source))
            conf = (self.total("tuple_confidence") if source == "all"
                    else self.total("tuple_confidence", source=source))
            with_signal = self.total("interactions_with_signal", source=source)
            rows[source] = {
                "tuples": tuples,
                "signal_per_interaction": tuples / n if n else 0.0,
                "share_with_signal": with_signal / n if n else 0.0,
                "confidence_weighted": conf / n if n else 0.0,
            }
        rows["all"]["interactions"] = n
        return rows

    def items(self) -> Iterator[tuple[str, Labels, float]]:
        """``(name, labels, value)`` for every counter series."""
        for (name, labels), value in self._counters.items():
            yield name, labels, value

    def state_dict(self) -> dict[str, list[list[object]]]:
        """Counters, so that totals continue across restarts."""
        return {"counters": [[name, [list(p) for p in labels], value]
                             for (name, labels), value in self._counters.items()]}

    def load_state_dict(self, state: dict[str, list[list[object]]]) -> None:
        """Restore counters saved by :meth:`state_dict`."""
        self._counters = {
            (str(name), tuple((str(k), str(v)) for k, v in labels)): float(value)  # type: ignore[misc,arg-type]
            for name, labels, value in state.get("counters", [])
        }


def _repeats_previous_action(interaction: Interaction) -> bool:
    """True when the action is the same as the session's previous assistant action."""
    action = interaction.action
    for message in reversed(interaction.context):
        if message.role == "assistant":
            return (message.content == action.content and
                    [(c.name, c.arguments) for c in message.tool_calls] ==
                    [(c.name, c.arguments) for c in action.tool_calls])
    return False


class YieldCollector(Collector):
    """Exposes a :class:`YieldStats` to prometheus_client, read at scrape time."""

    def __init__(self, stats: YieldStats, prefix: str = "nextstate",
                 extra: Iterable[tuple[str, str, float]] = ()) -> None:
        self.stats = stats
        self.prefix = prefix
        self.gauges: dict[str, tuple[str, float]] = {name: (doc, value)
                                                     for name, doc, value in extra}

    def set_gauge(self, name: str, doc: str, value: float) -> None:
        """Set a daemon gauge (lag, pending sessions, ...) exposed beside the counters."""
        self.gauges[name] = (doc, value)

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        by_name: dict[str, list[tuple[Labels, float]]] = {}
        for name, labels, value in self.stats.items():
            by_name.setdefault(name, []).append((labels, value))
        for name, (doc, label_names) in METRICS.items():
            family = CounterMetricFamily(f"{self.prefix}_{name}", doc, labels=label_names)
            for labels, value in by_name.get(name, []):
                got = dict(labels)
                family.add_metric([got.get(label, "") for label in label_names], value)
            yield family
        yield GaugeMetricFamily(f"{self.prefix}_signal_per_interaction",
                                "Cumulative training tuples per closed interaction.",
                                value=self.stats.signal_per_interaction())
        yield GaugeMetricFamily(f"{self.prefix}_signal_per_interaction_window",
                                "Training tuples per closed interaction over the rolling window.",
                                value=self.stats.window_signal_per_interaction())
        summary = self.stats.summary()
        share = GaugeMetricFamily(
            f"{self.prefix}_interaction_signal_share",
            "Share of closed interactions with at least one tuple, by source.",
            labels=("source",))
        weighted = GaugeMetricFamily(f"{self.prefix}_confidence_weighted_signal_per_interaction",
                                     "Sum of tuple confidence per closed interaction, by source.",
                                     labels=("source",))
        for source, row in summary.items():
            share.add_metric([source], row["share_with_signal"])
            weighted.add_metric([source], row["confidence_weighted"])
        yield share
        yield weighted
        for name, (doc, value) in self.gauges.items():
            yield GaugeMetricFamily(f"{self.prefix}_{name}", doc, value=value)

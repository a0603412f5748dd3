"""Signal-yield accounting: the counters behind the metrics, the time series and the report.

One :class:`YieldStats` object counts everything the daemon reports: records by input shape,
closed interactions, tuples by extractor/kind/source, tokens, dead letters, session outcomes and
trajectory quality. It is the single source of truth: the Prometheus endpoint exposes it through
:class:`YieldCollector`, the time-series recorder persists its :meth:`YieldStats.snapshot`, and
``nextstate stats`` / ``nextstate report`` read those snapshots back.

**Signal per interaction** = training tuples emitted per closed interaction. Beside it: the
share of interactions that yield at least one tuple, and confidence-weighted tuples per
interaction; each overall and per source (user, tool, terminal, gui, judge, feedback).

**Model labels are bounded**: the token counters are labelled with the ``model`` string of the
input records, so a stream with a new model per record would otherwise grow the series (in
memory, ``/metrics``, every time-series snapshot and the checkpoint) without bound. As in the
OpenTelemetry SDK's cardinality limit, the first ``max_models`` distinct models get their own
series, later ones are counted under ``model="other"`` (:data:`OVERFLOW_MODEL`; totals stay
exact) and ``model_labels_overflowed`` counts those interactions; a label is at most
:data:`MODEL_LABEL_MAX_CHARS` characters of the model name.
"""

from __future__ import annotations

import re
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence

import structlog
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from nextstate.extractors.types import SOURCES, Interaction, Message, ScoredTuple

Labels = tuple[tuple[str, str], ...]

log = structlog.get_logger("nextstate.yieldstats")

# The model label of the interactions of any model beyond ``max_models`` distinct ones.
OVERFLOW_MODEL = "other"
# A model name is cut to this many characters in its label (a 10 MB name would otherwise be
# copied into every snapshot, the checkpoint and each scrape).
MODEL_LABEL_MAX_CHARS = 200
# Label values of our own: always a series of their own, never counted against max_models.
_RESERVED_MODELS = frozenset(("unknown", OVERFLOW_MODEL))
_TOKEN_COUNTERS = frozenset(("prompt_tokens", "cached_tokens", "completion_tokens"))


def series_key(name: str, labels: Labels = ()) -> str:
    """The flat key of one series in a snapshot: ``name{a="x",b="y"}`` (labels sorted; values
    escaped as in Prometheus' text format, as a model name from the input may hold ``",``)."""
    if not labels:
        return name
    return name + "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels)) + "}"


def _escape(value: str) -> str:
    if "\\" in value or '"' in value or "\n" in value:
        return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return value


_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
_UNESCAPE = re.compile(r"\\(.)")


def parse_series_key(key: str) -> tuple[str, dict[str, str]]:
    """Inverse of :func:`series_key`."""
    if "{" not in key:
        return key, {}
    name, _, rest = key.partition("{")
    return name, {k: _UNESCAPE.sub(lambda m: "\n" if m[1] == "n" else m[1], v) if "\\" in v
                  else v for k, v in _LABEL.findall(rest)}


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
    "model_labels_overflowed": ("Closed interactions whose tokens were counted under "
                                'model="other", as max_models distinct models already had '
                                "series of their own.", ()),
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
        max_models: distinct model labels of the token counters; the interactions of any
            later model are counted under ``model="other"`` (:data:`OVERFLOW_MODEL`) and in
            ``model_labels_overflowed``. ``"unknown"`` (no model) and ``"other"`` do not
            count against it. The models with a series of their own are found again from the
            counters after :meth:`load_state_dict` and :meth:`merge` (the state format is
            unchanged); a model that never reported tokens has none, and its place is free
            again after a restart.

    Example:
        >>> stats = YieldStats()
        >>> stats.observe_record("transcript")
        >>> stats.snapshot()['records_total{shape="transcript"}']
        1.0
    """

    __slots__ = ("_clock", "_counters", "_flag_cells", "_interaction_series", "_models",
                 "_overflow_cell", "_overflow_logged", "_record_cells", "_signal_cells",
                 "_tuple_series", "_window", "max_models", "window_s")

    def __init__(self, window_s: float = 60.0, clock=time.time, max_models: int = 100) -> None:
        self.window_s = window_s
        self._clock = clock
        self.max_models = max_models
        # The model labels that have series of their own (at most max_models; more only when
        # restored or merged so).
        self._models: set[str] = set()
        self._overflow_logged = False
        # (name, labels) -> [value]: a one-item list, so that the hot path keeps a reference
        # to each series it bumps (hashing a nested key tuple costs more than the addition).
        # A series is inserted when first counted, never replaced: references stay valid
        # until load_state_dict, which drops them with the counters.
        self._counters: dict[tuple[str, Labels], list[float]] = {}
        self._forget_series()
        # (second, interactions, tuples, confidence) buckets inside the rolling window.
        self._window: deque[list[float]] = deque()

    def _forget_series(self) -> None:
        # The series of the per-record and per-interaction counters by their label values,
        # found once. Interaction: [interactions, interactions_closed, then prompt_tokens,
        # cached_tokens and completion_tokens (None until first counted)] and the model;
        # tuple: (tuples, tuple_confidence, its source, whether a negative reward is an error).
        self._record_cells: dict[str, list[float]] = {}
        self._interaction_series: dict[tuple[str, str, str], list] = {}  # type: ignore[type-arg]
        self._tuple_series: dict[tuple[str, str, str],
                                 tuple[list[float], list[float], str, bool]] = {}
        self._signal_cells: dict[str, list[float]] = {}  # interactions_with_signal by source
        self._flag_cells: dict[str, list[float]] = {}  # actions_flagged by flag
        self._overflow_cell: list[float] | None = None  # model_labels_overflowed

    def _cell(self, name: str, labels: Labels) -> list[float]:
        """The series ``(name, labels)``, inserted at 0.0 if new (the caller then adds to it)."""
        cell = self._counters.get((name, labels))
        if cell is None:
            cell = self._counters[(name, labels)] = [0.0]
        return cell

    # -- observation ------------------------------------------------------------------------
    def inc(self, name: str, labels: Labels = (), value: float = 1.0) -> None:
        """Add ``value`` to one counter series."""
        self._cell(name, labels)[0] += value

    def observe_record(self, shape: str) -> None:
        """One input record decoded."""
        cell = self._record_cells.get(shape)
        if cell is None:
            cell = self._record_cells[shape] = self._cell("records", (("shape", shape),))
        cell[0] += 1.0

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
        model = interaction.model or "unknown"
        series = self._interaction_series.get((interaction.shape, interaction.closed_by, model))
        if series is None:
            series = self._new_interaction_series(interaction, model)
        series[0][0] += 1.0
        series[1][0] += 1.0
        usage = interaction.usage
        # Token series are inserted when first counted (a model may never report cached
        # tokens), as the snapshot and the Prometheus output show only what was counted.
        tokens = usage.prompt_tokens
        if tokens:
            (series[2] or self._usage_cell(series, 2, "prompt_tokens"))[0] += tokens
        tokens = usage.cached_tokens
        if tokens:
            (series[3] or self._usage_cell(series, 3, "cached_tokens"))[0] += tokens
        tokens = usage.completion_tokens
        if tokens:
            (series[4] or self._usage_cell(series, 4, "completion_tokens"))[0] += tokens
        confidence = 0.0
        if tuples:
            source: str | None = None
            sources: set[str] | None = None  # only when the tuples come from several sources
            error = noop = False
            tuple_series = self._tuple_series
            for t in tuples:
                tkey = (t.extractor, t.kind, t.source)
                pair = tuple_series.get(tkey)
                if pair is None:
                    pair = tuple_series[tkey] = (
                        self._cell("tuples", (("extractor", t.extractor), ("kind", t.kind),
                                              ("source", t.source))),
                        self._cell("tuple_confidence", (("source", t.source),)),
                        t.source,
                        t.kind == "evaluative" and t.source in ("tool", "terminal", "gui"))
                tuples_cell, confidence_cell, tuple_source, may_err = pair
                tuples_cell[0] += 1.0
                weight = t.confidence
                confidence_cell[0] += weight
                confidence += weight
                if source is None:
                    source = tuple_source
                elif sources is not None:
                    sources.add(tuple_source)
                elif tuple_source != source:
                    # A set, filled in tuple order: the new series are then inserted in the
                    # order they always were.
                    sources = {source, tuple_source}
                if may_err and t.reward < 0:
                    error = True
                if t.label == "no_op":
                    noop = True
            signal = self._signal_cells
            if sources is None:
                (signal.get(source) or self._signal_cell(source))[0] += 1.0  # type: ignore[arg-type]
            else:
                for name in sources:
                    (signal.get(name) or self._signal_cell(name))[0] += 1.0
            (signal.get("all") or self._signal_cell("all"))[0] += 1.0
            if noop:  # the action changed nothing (a GUI no-op); not also counted as an error
                self._flag("noop")
            elif error:
                self._flag("error")
        # A repeat: the action is the same as the session's previous assistant action.
        action = interaction.action
        for message in reversed(interaction.context):
            if message.role == "assistant":
                if message.content == action.content and _same_calls(message, action):
                    self._flag("repeat")
                break
        second = float(int(self._clock()))
        window = self._window
        if window:
            bucket = window[-1]
            if bucket[0] == second:
                bucket[1] += 1
                bucket[2] += len(tuples)
                bucket[3] += confidence
                return
        window.append([second, 1.0, float(len(tuples)), confidence])
        self._trim(second)

    def _new_interaction_series(self, interaction: Interaction, model: str) -> list:  # type: ignore[type-arg]
        # The series are cached by their model label. The hot path looks them up by the
        # model name, which finds them when name and label are the same; an overflowed or
        # cut name comes here each time, so the cache holds labels only (a stream of new
        # names cannot grow it) and each overflowed interaction is counted.
        label = self._model_label(model)
        key = (interaction.shape, interaction.closed_by, label)
        series = self._interaction_series.get(key)
        if series is None:
            series = self._interaction_series[key] = [
                self._cell("interactions", (("shape", interaction.shape),)),
                self._cell("interactions_closed", (("closed_by", interaction.closed_by),)),
                None, None, None, label]
        return series

    def _model_label(self, model: str) -> str:
        """The label of ``model``: cut to MODEL_LABEL_MAX_CHARS, the overflow once full."""
        label = model[:MODEL_LABEL_MAX_CHARS]
        if label in self._models or label in _RESERVED_MODELS:
            return label
        if len(self._models) < self.max_models:
            self._models.add(label)
            return label
        if self._overflow_cell is None:
            self._overflow_cell = self._cell("model_labels_overflowed", ())
        self._overflow_cell[0] += 1.0
        if not self._overflow_logged:  # once: the counter tells how often since
            self._overflow_logged = True
            log.warning("model_labels_overflowed", max_models=self.max_models,
                        model=label[:80], counted_as=OVERFLOW_MODEL)
        return OVERFLOW_MODEL

    def _learn_models(self, keys: Iterable[tuple[str, Labels]]) -> None:
        # The models of restored or merged token series keep their series (no saved state
        # of its own: older checkpoints hold the same counters).
        for name, labels in keys:
            if name in _TOKEN_COUNTERS:
                for key, value in labels:
                    if key == "model" and value not in _RESERVED_MODELS:
                        self._models.add(value)

    def _flag(self, flag: str) -> None:
        cell = self._flag_cells.get(flag)
        if cell is None:
            cell = self._flag_cells[flag] = self._cell("actions_flagged", (("flag", flag),))
        cell[0] += 1.0

    def _usage_cell(self, series: list, index: int, name: str) -> list[float]:  # type: ignore[type-arg]
        cell = series[index] = self._cell(name, (("model", series[5]),))
        return cell

    def _signal_cell(self, source: str) -> list[float]:
        cell = self._signal_cells[source] = self._cell("interactions_with_signal",
                                                       (("source", source),))
        return cell

    def set_total(self, name: str, labels: Labels, value: float) -> None:
        """Set a counter mirrored from a component that keeps its own (judge, redactor)."""
        self._cell(name, labels)[0] = float(value)

    def _trim(self, now: float) -> None:
        while self._window and self._window[0][0] <= now - self.window_s:
            self._window.popleft()

    # -- reading ----------------------------------------------------------------------------
    def total(self, name: str, **labels: str) -> float:
        """Sum of the series of ``name`` whose labels include ``labels``."""
        want = set(labels.items())
        return sum(v[0] for (n, ls), v in list(self._counters.items())  # (see items())
                   if n == name and want <= set(ls))

    def signal_per_interaction(self) -> float:
        """Cumulative training tuples per closed interaction."""
        n = self.total("interactions")
        return self.total("tuples") / n if n else 0.0

    def window_signal_per_interaction(self) -> float:
        """Tuples per closed interaction over the last ``window_s`` seconds."""
        # Read, not trimmed: a scrape runs on another thread than the one that appends.
        since = float(int(self._clock())) - self.window_s
        buckets = [b for b in list(self._window) if b[0] > since]
        n = sum(b[1] for b in buckets)
        return sum(b[2] for b in buckets) / n if n else 0.0

    def snapshot(self) -> dict[str, float]:
        """Every counter as ``{series_key: value}`` (``_total`` suffixed), plus the gauges."""
        snap = {series_key(name + "_total", labels): value[0]
                for (name, labels), value in list(self._counters.items())}
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
        """``(name, labels, value)`` for every counter series.

        Safe to call from another thread than the pipeline's (the metrics scrape): it reads a
        copy of the series, taken at once (``list`` of a dict runs no Python code, so the GIL
        is not released), as the pipeline may add a series meanwhile.
        """
        for (name, labels), value in list(self._counters.items()):
            yield name, labels, value[0]

    def state_dict(self) -> dict[str, list[list[object]]]:
        """Counters, so that totals continue across restarts."""
        return {"counters": [[name, [list(p) for p in labels], value[0]]
                             for (name, labels), value in self._counters.items()]}

    def load_state_dict(self, state: dict[str, list[list[object]]]) -> None:
        """Restore counters saved by :meth:`state_dict`."""
        self._counters = {
            (str(name), tuple((str(k), str(v)) for k, v in labels)): [float(value)]  # type: ignore[misc,arg-type]
            for name, labels, value in state.get("counters", [])
        }
        self._forget_series()  # they point into the counters just replaced
        self._models = set()
        self._learn_models(self._counters)

    def merge(self, other: YieldStats) -> None:
        """Add ``other``'s counters to these (the shards of one scaled-out deployment).

        Every series is a count or a sum, so the shards' series add up; the ratios
        (:meth:`summary`, :meth:`signal_per_interaction`) are then computed from the sums.
        The rolling window behind ``signal_per_interaction_window`` is a live gauge of one
        process and is not merged. Series new to ``self`` are appended in ``other``'s order;
        the series the hot path holds stay valid (values are added in place).

        Example:
            >>> a, b = YieldStats(), YieldStats()
            >>> a.observe_record("transcript"); b.observe_record("transcript")
            >>> b.observe_dead_letter("decode")
            >>> a.merge(b)
            >>> a.total("records"), a.total("dead_letters")
            (2.0, 1.0)
        """
        for (name, labels), value in list(other._counters.items()):
            self._cell(name, labels)[0] += value[0]
        self._learn_models(list(other._counters))  # counting goes on in the merged series


def _same_calls(message: Message, action: Message) -> bool:
    """Whether two messages call the same tools with the same arguments, in the same order."""
    calls, again = message.tool_calls, action.tool_calls
    if len(calls) != len(again):
        return False
    for call, other in zip(calls, again, strict=True):
        if call.name != other.name or call.arguments != other.arguments:
            return False
    return True


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

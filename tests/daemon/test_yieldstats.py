"""Tests for the yield counters behind the metrics, the time series and the report."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from nextstate.daemon.yieldstats import YieldCollector, YieldStats, parse_series_key, series_key
from nextstate.extractors.types import Interaction, Message, ToolCall, Usage, tuple_from


def interaction(n: int, content: str = "x", context: tuple[Message, ...] = ()) -> Interaction:
    return Interaction(f"s#{n}", "s", context, Message("assistant", content),
                       usage=Usage(prompt_tokens=100, completion_tokens=10), model="m")


def test_signal_per_interaction_share_and_confidence_weighting():
    """3 tuples over 2 interactions: 1.5 per interaction, half with signal, by source."""
    stats = YieldStats(clock=lambda: 1000.0)
    first = interaction(1)
    stats.observe_interaction(first, [
        tuple_from(first, extractor="tool", kind="evaluative", source="tool", confidence=0.5),
        tuple_from(first, extractor="tool", kind="directive", source="tool", confidence=0.5),
        tuple_from(first, extractor="user", kind="evaluative", source="user", confidence=1.0)])
    stats.observe_interaction(interaction(2), [])
    rows = stats.summary()
    assert stats.signal_per_interaction() == 1.5 == stats.window_signal_per_interaction()
    assert rows["all"]["share_with_signal"] == 0.5
    assert rows["tool"]["signal_per_interaction"] == 1.0
    assert rows["tool"]["confidence_weighted"] == 0.5
    assert stats.total("prompt_tokens", model="m") == 200


def test_trajectory_flags_error_noop_and_repeat():
    """Errors, GUI no-ops and repeated actions are each counted under their own flag."""
    stats = YieldStats()
    call = Message("assistant", tool_calls=(ToolCall("c", "f", "{}"),))
    repeat = Interaction("s#3", "s", (Message("user", "q"), call), call)
    stats.observe_interaction(repeat, [tuple_from(repeat, extractor="tool", kind="evaluative",
                                                  source="tool", reward=-0.8)])
    noop = interaction(4)
    stats.observe_interaction(noop, [tuple_from(noop, extractor="gui", kind="evaluative",
                                                source="gui", reward=-0.5, label="no_op")])
    assert stats.total("actions_flagged", flag="error") == 1
    assert stats.total("actions_flagged", flag="repeat") == 1
    assert stats.total("actions_flagged", flag="noop") == 1


def test_collector_exposes_prometheus_families_and_state_round_trips():
    """The collector renders counters and gauges; state_dict restores every counter."""
    stats = YieldStats()
    stats.observe_record("transcript")
    stats.observe_dead_letter("decode")
    registry = CollectorRegistry()
    collector = YieldCollector(stats)
    collector.set_gauge("consumer_lag", "Records behind.", 7.0)
    registry.register(collector)
    text = generate_latest(registry).decode()
    assert 'nextstate_records_total{shape="transcript"} 1.0' in text
    assert 'nextstate_dead_letters_total{reason="decode"} 1.0' in text
    assert "nextstate_consumer_lag 7.0" in text
    restored = YieldStats()
    restored.load_state_dict(stats.state_dict())
    assert restored.snapshot() == stats.snapshot()


def test_merge_sums_the_shards_counters_and_counting_goes_on():
    """Merged shards: every series is the sum, ratios come from the sums, and the merged
    stats keep counting into the series they held before the merge."""
    a, b = YieldStats(clock=lambda: 1000.0), YieldStats(clock=lambda: 1000.0)
    first, second, third = interaction(1), interaction(2), interaction(3)
    a.observe_record("exchange")
    a.observe_interaction(first, [tuple_from(first, extractor="tool", kind="evaluative",
                                             source="tool", confidence=0.5)])
    for item in (second, third):
        b.observe_record("exchange")
        b.observe_interaction(item, [])
    b.observe_dead_letter("decode")
    b.set_total("judge_calls", (), 4)
    a.merge(b)
    assert a.total("records", shape="exchange") == 3
    assert a.total("interactions") == 3 and a.total("tuples") == 1
    assert a.total("dead_letters", reason="decode") == 1 and a.total("judge_calls") == 4
    assert a.total("prompt_tokens", model="m") == 300
    assert a.signal_per_interaction() == pytest.approx(1 / 3)  # not (1.0 + 0.0) / 2
    assert a.summary()["tool"]["confidence_weighted"] == pytest.approx(0.5 / 3)
    a.observe_record("exchange")
    a.observe_interaction(first, [tuple_from(first, extractor="tool", kind="evaluative",
                                             source="tool")])
    assert a.total("records") == 4 and a.total("tuples", source="tool") == 2
    assert b.total("records") == 2  # the merged-in stats are left as they were
    restored = YieldStats()
    restored.load_state_dict(b.state_dict())
    total = YieldStats()
    total.merge(restored)
    assert total.snapshot() == {**b.snapshot(), "signal_per_interaction_window": 0.0}


def test_series_keys_round_trip():
    """Flat series keys parse back into name and labels."""
    key = series_key("tuples_total", (("source", "tool"), ("kind", "evaluative")))
    assert key == 'tuples_total{kind="evaluative",source="tool"}'
    assert parse_series_key(key) == ("tuples_total", {"kind": "evaluative", "source": "tool"})


def test_counts_by_label_values_stay_apart():
    """Interactions of two models and tuples of two extractors are counted under their own
    labels, however often each label set repeats (the hot path caches their series keys)."""
    stats = YieldStats(clock=lambda: 1000.0)
    for n in range(4):
        item = Interaction(f"s#{n}", "s", (), Message("assistant", "x"),
                           usage=Usage(prompt_tokens=10, cached_tokens=4, completion_tokens=1),
                           model="a" if n % 2 else None)
        stats.observe_record("exchange" if n % 2 else "transcript")
        stats.observe_interaction(item, [tuple_from(item, extractor="tool" if n < 3 else "user",
                                                    kind="evaluative", source="tool",
                                                    confidence=0.25)])
    snap = stats.snapshot()
    assert snap['records_total{shape="exchange"}'] == snap['records_total{shape="transcript"}'] == 2
    assert snap['prompt_tokens_total{model="a"}'] == 20
    assert snap['prompt_tokens_total{model="unknown"}'] == 20
    assert snap['cached_tokens_total{model="a"}'] == 8
    assert snap['tuples_total{extractor="tool",kind="evaluative",source="tool"}'] == 3
    assert snap['tuples_total{extractor="user",kind="evaluative",source="tool"}'] == 1
    assert snap['tuple_confidence_total{source="tool"}'] == 1.0
    assert stats.total("interactions") == 4


def test_series_appear_when_first_counted_in_the_order_they_are_counted():
    """Token series of a model appear only once it reports such tokens; interactions with
    tuples of several sources count each source once, then "all"."""
    stats = YieldStats(clock=lambda: 1000.0)
    quiet = Interaction("s#1", "s", (), Message("assistant", "x"), model="m",
                        usage=Usage(prompt_tokens=5))
    stats.observe_interaction(quiet, [])
    assert 'cached_tokens_total{model="m"}' not in stats.snapshot()
    mixed = Interaction("s#2", "s", (), Message("assistant", "y"), model="m",
                        usage=Usage(prompt_tokens=5, cached_tokens=2))
    stats.observe_interaction(mixed, [
        tuple_from(mixed, extractor="tool", kind="evaluative", source="tool"),
        tuple_from(mixed, extractor="user", kind="evaluative", source="user"),
        tuple_from(mixed, extractor="tool", kind="directive", source="tool")])
    names = [(name, dict(labels)) for name, labels, _ in stats.items()]
    assert names.index(("prompt_tokens", {"model": "m"})) < \
        names.index(("cached_tokens", {"model": "m"}))
    assert stats.total("interactions_with_signal", source="tool") == 1
    assert stats.total("interactions_with_signal", source="user") == 1
    assert stats.total("interactions_with_signal", source="all") == 1
    assert stats.total("cached_tokens", model="m") == 2
    assert stats.total("prompt_tokens", model="m") == 10


def test_counting_continues_after_load_state_dict():
    """Restored counters keep counting: the series found before the restore are not reused."""
    stats = YieldStats(clock=lambda: 1000.0)
    item = interaction(1)
    tuples = [tuple_from(item, extractor="tool", kind="evaluative", source="tool")]
    stats.observe_record("exchange")
    stats.observe_interaction(item, tuples)
    saved = stats.state_dict()
    stats.observe_interaction(item, tuples)  # counted, then rolled back by the restore
    stats.load_state_dict(saved)
    stats.observe_record("exchange")
    stats.observe_interaction(item, tuples)
    snap = stats.snapshot()
    assert snap['records_total{shape="exchange"}'] == 2
    assert snap['interactions_total{shape="unknown"}'] == 2
    assert snap['tuples_total{extractor="tool",kind="evaluative",source="tool"}'] == 2
    assert snap['interactions_with_signal_total{source="all"}'] == 2
    assert snap['prompt_tokens_total{model="m"}'] == 200


def test_set_total_overwrites_a_series_the_hot_path_also_counts():
    """A mirrored total replaces the value in place, so later counting adds to it."""
    stats = YieldStats()
    stats.observe_record("exchange")
    stats.set_total("records", (("shape", "exchange"),), 10)
    stats.observe_record("exchange")
    assert stats.total("records", shape="exchange") == 11


def test_reading_the_series_survives_a_series_added_meanwhile():
    """The metrics scrape reads the series on its own thread while the pipeline may add one:
    a reader part-way through gets the series as they were, not "dictionary changed size
    during iteration"."""
    stats = YieldStats()
    stats.observe_record("transcript")
    stats.inc("dead_letters", (("reason", "decode"),))
    reading = stats.items()
    first = next(reading)
    stats.inc("dead_letters", (("reason", "schema"),))  # the pipeline, between two reads
    rest = list(reading)
    assert [first[0]] + [name for name, _, _ in rest] == ["records", "dead_letters"]
    assert stats.total("dead_letters") == 2.0

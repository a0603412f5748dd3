"""Tests for the yield counters behind the metrics, the time series and the report."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest

from nextstate.daemon.yieldstats import (
    MODEL_LABEL_MAX_CHARS,
    YieldCollector,
    YieldStats,
    parse_series_key,
    series_key,
)
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


@settings(max_examples=300, deadline=None)
@given(st.text(), st.text())
def test_series_keys_round_trip_any_label_value(model, shape):
    """A model name comes from the input: quotes, commas, backslashes and newlines in it are
    escaped (before, ``a",shape="x`` read back as two labels in the time series)."""
    key = series_key("prompt_tokens_total", (("model", model), ("shape", shape)))
    assert parse_series_key(key) == ("prompt_tokens_total", {"model": model, "shape": shape})


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


def model_interaction(n: int, model: str, prompt_tokens: int = 100) -> Interaction:
    return Interaction(f"s#{n}", "s", (), Message("assistant", "x"), model=model,
                       usage=Usage(prompt_tokens=prompt_tokens, completion_tokens=n + 1))


def model_labels(stats: YieldStats, name: str = "prompt_tokens") -> dict[str, float]:
    return {dict(labels)["model"]: value for n, labels, value in stats.items() if n == name}


def test_model_labels_beyond_max_models_go_to_one_overflow_series():
    """With max_models=3, the first 3 models keep their series and the 7 later ones share
    model="other"; the token totals are those fed, and the overflowed interactions counted."""
    stats = YieldStats(clock=lambda: 1000.0, max_models=3)
    fed = {"prompt_tokens": 0, "completion_tokens": 0}
    for n in range(10):
        for _ in range(2):  # a model seen again stays under the label it got first
            stats.observe_interaction(model_interaction(n, f"m{n}", prompt_tokens=10 + n), [])
            fed["prompt_tokens"] += 10 + n
            fed["completion_tokens"] += n + 1
    stats.observe_interaction(model_interaction(10, ""), [])  # no model: "unknown", not a slot
    prompt = model_labels(stats)
    assert sorted(prompt) == ["m0", "m1", "m2", "other", "unknown"]
    assert prompt["m1"] == 22 and prompt["other"] == 2 * sum(10 + n for n in range(3, 10))
    assert sorted(model_labels(stats, "completion_tokens")) == ["m0", "m1", "m2", "other",
                                                                "unknown"]
    assert stats.total("prompt_tokens") == fed["prompt_tokens"] + 100
    assert stats.total("completion_tokens") == fed["completion_tokens"] + 11
    assert stats.total("model_labels_overflowed") == 14
    assert stats.total("interactions") == 21
    assert stats.snapshot()["model_labels_overflowed_total"] == 14


def test_overflow_series_and_count_reach_prometheus():
    """The overflow label and its counter are exposed like any other series."""
    stats = YieldStats(max_models=1)
    for n in range(3):
        stats.observe_interaction(model_interaction(n, f"m{n}"), [])
    registry = CollectorRegistry()
    registry.register(YieldCollector(stats))
    text = generate_latest(registry).decode()
    assert 'nextstate_prompt_tokens_total{model="m0"} 100.0' in text
    assert 'nextstate_prompt_tokens_total{model="other"} 200.0' in text
    assert "nextstate_model_labels_overflowed_total 2.0" in text


def test_a_long_model_name_is_cut_in_its_label():
    """A 1 MB model name is a label of MODEL_LABEL_MAX_CHARS characters; names with the same
    prefix share it, and take one place under max_models."""
    stats = YieldStats(max_models=2)
    long_name = "big-" + "x" * 1_000_000
    stats.observe_interaction(model_interaction(1, long_name), [])
    stats.observe_interaction(model_interaction(2, long_name + "y"), [])
    stats.observe_interaction(model_interaction(3, "small"), [])
    prompt = model_labels(stats)
    assert sorted(len(label) for label in prompt) == [5, MODEL_LABEL_MAX_CHARS]
    assert prompt[long_name[:MODEL_LABEL_MAX_CHARS]] == 200
    assert max(len(key) for key in stats.snapshot()) < MODEL_LABEL_MAX_CHARS + 50
    assert stats.total("model_labels_overflowed") == 0


def test_model_limit_holds_after_load_state_dict_and_merge():
    """After a restart the models that had series keep them and new ones still overflow;
    checkpoints from before the limit (the same counters) load the same way."""
    stats = YieldStats(max_models=3)
    for n in range(5):
        stats.observe_interaction(model_interaction(n, f"m{n}"), [])
    restored = YieldStats(max_models=3)
    restored.load_state_dict(stats.state_dict())
    restored.observe_interaction(model_interaction(5, "m5"), [])  # a new, 4th model
    restored.observe_interaction(model_interaction(6, "m1"), [])  # a known one
    restored.observe_interaction(model_interaction(7, "m2"), [])
    prompt = model_labels(restored)
    assert sorted(prompt) == ["m0", "m1", "m2", "other"]
    assert prompt["m1"] == prompt["m2"] == 200 and prompt["other"] == 300
    assert restored.total("model_labels_overflowed") == 3
    # A shard's models, merged in, keep their series too.
    merged = YieldStats(max_models=3)
    merged.merge(restored)
    merged.observe_interaction(model_interaction(8, "m0"), [])
    merged.observe_interaction(model_interaction(9, "m9"), [])
    assert model_labels(merged) == {"m0": 200, "m1": 200, "m2": 200, "other": 400}
    assert merged.total("model_labels_overflowed") == 4

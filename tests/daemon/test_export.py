"""``nextstate export --format sft|dpo|kto``: TRL datasets that ``datasets`` loads."""

from __future__ import annotations

import json

import msgspec
import pytest

from nextstate.buffers import BufferSet, BufferSpec
from nextstate.daemon.cli import main as cli_main
from nextstate.daemon.config import DaemonConfig
from nextstate.extractors.types import Interaction, Message, ToolCall, tuple_from

datasets = pytest.importorskip("datasets")
pytest.importorskip("pyarrow")

CONTEXT = (Message(role="system", content="You are a weather agent."),
           Message(role="user", content="Weather in Paris?"))
CALL = Message(role="assistant", tool_calls=(ToolCall("c1", "get_weather",
                                                      '{"city": "Paris"}'),))
BAD = Message(role="assistant", content="I cannot know that.")


def _interaction(n: int, action: Message) -> Interaction:
    return Interaction(interaction_id=f"s{n}#2", session_id=f"s{n}", context=CONTEXT,
                       action=action,
                       next_state=(Message(role="tool", content="21 C", tool_call_id="c1"),))


@pytest.fixture()
def state_dir(tmp_path):
    """Buffers holding 2 positive + 1 negative evaluative, 1 directive and 1 preference."""
    tuples = [
        tuple_from(_interaction(0, CALL), extractor="tool", kind="evaluative", source="tool",
                   reward=0.4, confidence=0.6),
        tuple_from(_interaction(1, CALL), extractor="user", kind="evaluative", source="user",
                   reward=0.8),
        tuple_from(_interaction(2, BAD), extractor="user", kind="evaluative", source="user",
                   reward=-0.7),
        tuple_from(_interaction(2, BAD), extractor="user", kind="directive", source="user",
                   hint="call the weather tool"),
        tuple_from(_interaction(3, BAD), extractor="judge", kind="preference", source="judge",
                   chosen=CALL, rejected=BAD),
    ]
    specs = [msgspec.convert(s, BufferSpec) for s in DaemonConfig().buffers]
    buffers = BufferSet.open(tmp_path / "state" / "buffers", specs)
    buffers.extend(tuples)
    buffers.close()
    return tmp_path / "state"


def _export(state_dir, fmt: str, out) -> None:
    assert cli_main(["export", "--state-dir", str(state_dir), "--format", fmt,
                     "--out", str(out)]) == 0


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_sft_dpo_kto_load_with_datasets(state_dir, tmp_path, suffix):
    """Each format loads with datasets.load_dataset and has TRL's columns and rows."""
    loaded = {}
    for fmt in ("sft", "dpo", "kto"):
        out = tmp_path / f"{fmt}{suffix}"
        _export(state_dir, fmt, out)
        builder = "json" if suffix == ".jsonl" else "parquet"
        loaded[fmt] = datasets.load_dataset(builder, data_files=str(out), split="train",
                                            cache_dir=str(tmp_path / "hf-cache"))
    meta = {"reward", "confidence", "hint", "source", "session_id", "interaction_id"}
    sft, dpo, kto = loaded["sft"], loaded["dpo"], loaded["kto"]
    assert set(sft.column_names) == {"prompt", "completion"} | meta
    assert set(dpo.column_names) == {"prompt", "chosen", "rejected"} | meta
    assert set(kto.column_names) == {"prompt", "completion", "label"} | meta
    # sft: the two positive actions and the preference's chosen action
    assert sorted(sft["interaction_id"]) == ["s0#2", "s1#2", "s3#2"]
    assert len(dpo) == 1 and dpo[0]["rejected"][0]["content"] == "I cannot know that."
    assert sorted(zip(kto["interaction_id"], kto["label"], strict=True)) == [
        ("s0#2", True), ("s1#2", True), ("s2#2", False)]
    row = sft[0]
    assert [m["role"] for m in row["prompt"]] == ["system", "user"]
    (call,) = row["completion"][0]["tool_calls"]
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}


def test_buffer_filter_limits_the_rows(state_dir, tmp_path):
    """--buffer preference exports only what the preference buffer holds."""
    out = tmp_path / "kto.jsonl"
    assert cli_main(["export", "--state-dir", str(state_dir), "--format", "kto",
                     "--buffer", "preference", "--out", str(out)]) == 0
    assert out.read_text() == ""


def test_shards_export_each_key_once(state_dir, tmp_path):
    """Over two shards, a key both store is written once (the first shard's copy), in every
    format; a tuple only the second shard holds comes after the first shard's."""
    again = tuple_from(_interaction(1, CALL), extractor="user", kind="evaluative",
                       source="user", reward=0.8, confidence=0.5)  # the key of s1#2's
    only_here = tuple_from(_interaction(4, BAD), extractor="judge", kind="preference",
                           source="judge", chosen=CALL, rejected=BAD)
    specs = [msgspec.convert(s, BufferSpec) for s in DaemonConfig().buffers]
    other = tmp_path / "other"
    buffers = BufferSet.open(other / "buffers", specs)
    buffers.extend([again, only_here])
    buffers.close()
    shards = ["--state-dir", str(state_dir), "--state-dir", str(other)]
    out = tmp_path / "tuples.jsonl"
    assert cli_main(["export", *shards, "--format", "tuples", "--out", str(out)]) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [(r["interaction_id"], r["extractor"], r["kind"]) for r in rows] == [
        ("s0#2", "tool", "evaluative"), ("s1#2", "user", "evaluative"),
        ("s2#2", "user", "evaluative"), ("s2#2", "user", "directive"),
        ("s3#2", "judge", "preference"), ("s4#2", "judge", "preference")]
    rows_of = {}
    for fmt in ("rewards", "dpo", "kto"):
        out = tmp_path / f"{fmt}.jsonl"
        assert cli_main(["export", *shards, "--format", fmt, "--out", str(out)]) == 0
        rows_of[fmt] = [json.loads(x) for x in out.read_text().splitlines()]
    assert [(r["interaction_id"], r["confidence"]) for r in rows_of["rewards"]] == [
        ("s0#2", 0.6), ("s1#2", 1.0), ("s2#2", 1.0)]  # s1#2: the first shard's copy
    assert [r["interaction_id"] for r in rows_of["dpo"]] == ["s3#2", "s4#2"]
    assert [r["interaction_id"] for r in rows_of["kto"]] == ["s0#2", "s1#2", "s2#2"]

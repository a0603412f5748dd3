"""``nextstate stats|export|report`` over the state dirs of several daemons (scale-out shards).

The sample file's sessions are split over two files, one ``nextstate run`` per file into its
own state dir, as daemons in one consumer group split the partitions by session; reading both
dirs must give what one daemon over the whole file gives.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from nextstate.daemon.cli import main as cli_main
from nextstate.daemon.report import report_main
from nextstate.daemon.workers import shard_dirs

SAMPLE = Path(__file__).parents[2] / "daemon" / "sample_interactions.jsonl"
FORMATS = ("tuples", "rewards", "sft", "dpo", "kto")
# The defaults. The sample's records run back in time by up to 1,396 s (sessions
# interleaved), and each file's idle clock trails its latest time by the largest such lag:
# no session goes idle in one shard and not in the whole file.
CONFIG = ""


def _session(n: int, line: bytes) -> str:
    try:
        return str(json.loads(line).get("session_id"))
    except ValueError:
        return f"undecodable line {n}"  # the sample's dead letter: in a shard of its own choice


def _run(tmp: Path, name: str, lines: list[bytes]) -> Path:
    source, state = tmp / f"{name}.jsonl", tmp / name
    source.write_bytes(b"".join(lines))
    assert cli_main(["run", "--config", str(tmp / "join.toml"), "--source", f"file:{source}",
                     "--state-dir", str(state), "--metrics-port", "-1",
                     "--log-format", "json"]) == 0
    return state


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> dict[str, Path]:
    """State dirs: ``whole`` (one daemon, the whole file), ``a`` and ``b`` (a third and two
    thirds of the sessions: shards of unequal yield), and ``again``: one session of ``a``
    stored a second time, as by the next owner of a killed daemon's partition."""
    tmp = tmp_path_factory.mktemp("shards")
    (tmp / "join.toml").write_text(CONFIG)
    lines = SAMPLE.read_bytes().splitlines(keepends=True)
    sessions = sorted({_session(n, x) for n, x in enumerate(lines)})
    shard_of = {sid: "a" if i % 3 == 0 else "b" for i, sid in enumerate(sessions)}
    split: dict[str, list[bytes]] = {"a": [], "b": []}
    for n, x in enumerate(lines):
        split[shard_of[_session(n, x)]].append(x)
    again = next(sid for sid in sessions if shard_of[sid] == "a" and sid.startswith("s"))
    return {"whole": _run(tmp, "whole", lines), "a": _run(tmp, "a", split["a"]),
            "b": _run(tmp, "b", split["b"]),
            "again": _run(tmp, "again", [x for n, x in enumerate(lines)
                                         if _session(n, x) == again])}


def _stats(capsys, *dirs: Path) -> list[str]:
    capsys.readouterr()
    assert cli_main(["stats", "--state-dir", *map(str, dirs)]) == 0
    return capsys.readouterr().out.splitlines()


def test_stats_over_shards_is_the_whole_summary(shards, capsys):
    """The summed summary prints as one daemon's over the whole file, then a line per dir."""
    whole = _stats(capsys, shards["whole"])
    merged = _stats(capsys, shards["a"], shards["b"])
    assert merged[:len(whole)] == whole
    assert merged[len(whole):][0] == "2 state dirs:"
    assert [row.split(":")[0].strip() for row in merged[len(whole) + 1:]] == [
        str(shards["a"]), str(shards["b"])]
    # Given once with and once without a trailing ./, a dir still counts once.
    assert _stats(capsys, shards["a"], shards["a"] / ".") == _stats(capsys, shards["a"])


def _export(tmp: Path, fmt: str, dirs: list[Path], suffix: str = ".jsonl") -> Path:
    out = tmp / f"{fmt}-{'-'.join(d.name for d in dirs)}{suffix}"
    assert cli_main(["export", "--format", fmt, "--out", str(out),
                     *[arg for d in dirs for arg in ("--state-dir", str(d))]]) == 0
    return out


def _rows(path: Path) -> list[str]:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return [json.dumps(row, sort_keys=True) for row in pq.read_table(path).to_pylist()]
    return path.read_text().splitlines()


@pytest.mark.parametrize("fmt", FORMATS)
def test_export_over_shards_is_the_whole_export(shards, tmp_path, fmt):
    """Every format over both shards holds the rows one daemon exports, in an order that
    repeats: buffer by buffer, the shards in the order given."""
    whole = _rows(_export(tmp_path, fmt, [shards["whole"]]))
    merged = _export(tmp_path, fmt, [shards["a"], shards["b"]])
    assert sorted(_rows(merged)) == sorted(whole)
    assert _export(tmp_path, fmt, [shards["a"], shards["b"]]).read_bytes() == \
        merged.read_bytes()
    if fmt == "tuples":
        rows = [json.loads(x) for x in _rows(merged)]
        assert len(rows) > 100 and {r["kind"] for r in rows} == {"evaluative", "directive"}
        kinds = [r["kind"] for r in rows]
        assert kinds == sorted(kinds, key=["evaluative", "directive"].index)
        shard_of = {r["session_id"]: n for n, d in enumerate((shards["a"], shards["b"]))
                    for r in map(json.loads, _rows(_export(tmp_path, fmt, [d])))}
        evaluative = [shard_of[r["session_id"]] for r in rows if r["kind"] == "evaluative"]
        assert evaluative == sorted(evaluative)  # shard a's, then shard b's


@pytest.mark.parametrize("fmt", ["sft", "kto"])
def test_parquet_export_over_shards(shards, tmp_path, fmt):
    """The TRL formats written as Parquet from both shards hold the whole export's rows."""
    pytest.importorskip("pyarrow")
    whole = _export(tmp_path, fmt, [shards["whole"]], ".parquet")
    merged = _export(tmp_path, fmt, [shards["a"], shards["b"]], ".parquet")
    assert sorted(_rows(merged)) == sorted(_rows(whole)) != []


def test_a_tuple_on_two_shards_is_exported_once(shards, tmp_path):
    """A session stored by two daemons: its tuples are exported once, the rows still equal
    the whole export's, and stats counts what each daemon did (its interactions twice)."""
    keys = {d: {(t["interaction_id"], t["extractor"], t["kind"])
                for t in map(json.loads, _rows(_export(tmp_path, "tuples", [shards[d]])))}
            for d in ("a", "again")}
    assert keys["again"] and keys["again"] <= keys["a"]
    for fmt in FORMATS:
        whole = _rows(_export(tmp_path, fmt, [shards["whole"]]))
        merged = _rows(_export(tmp_path, fmt, [shards["a"], shards["again"], shards["b"]]))
        assert sorted(merged) == sorted(whole), fmt


def test_report_over_shards_is_the_whole_report(shards, tmp_path):
    """Counters summed per time: every number of the report over both shards equals one
    daemon's over the whole file, ratios from the summed counters, not averaged."""
    summaries = {}
    for name, dirs in {"whole": ["whole"], "a": ["a"], "b": ["b"],
                       "merged": ["a", "b"]}.items():
        out = tmp_path / name
        argv = [arg for d in dirs for arg in ("--state-dir", str(shards[d]))]
        assert report_main([*argv, "--out", str(out)]) == 0
        summaries[name] = json.loads((out / "summary.json").read_text(),
                                     parse_constant=float)
    whole, merged = summaries["whole"], summaries["merged"]
    # Event time: a daemon's clock is the latest record time it read, so a shard whose first
    # record is older than the whole file's first one starts the merged window earlier.
    assert merged["window"].pop("start") == min(summaries[s]["window"]["start"]
                                                 for s in ("a", "b"))
    whole["window"].pop("start")
    assert merged.keys() == whole.keys()
    for part, rows in whole.items():
        assert _close(merged[part], rows), part
    spi = [summaries[s]["sources"]["all"]["signal_per_interaction"] for s in ("a", "b")]
    interactions = [summaries[s]["window"]["interactions"] for s in ("a", "b")]
    assert interactions[0] != interactions[1] and spi[0] != spi[1]
    assert merged["sources"]["all"]["signal_per_interaction"] == pytest.approx(
        sum(summaries[s]["sources"]["all"]["tuples"] for s in ("a", "b")) / sum(interactions))
    assert merged["sources"]["all"]["signal_per_interaction"] != pytest.approx(sum(spi) / 2)
    page = (tmp_path / "merged" / "report.html").read_text()
    assert "nextstate report (2 state dirs)" in page


def _close(got: object, want: object) -> bool:
    """Equal, floats to rounding (the shards sum confidences in another order), NaN == NaN."""
    if isinstance(want, dict):
        return isinstance(got, dict) and got.keys() == want.keys() and all(
            _close(got[k], want[k]) for k in want)
    if isinstance(want, float) and isinstance(got, float):
        return math.isclose(got, want, rel_tol=1e-9) or (math.isnan(got) and math.isnan(want))
    return got == want


def test_a_dir_without_state_is_named_and_nothing_is_written(shards, tmp_path, capsys):
    """stats, export and report exit 2 naming the dir that holds no daemon state."""
    empty = tmp_path / "not-a-shard"
    empty.mkdir()
    dirs = ["--state-dir", str(shards["a"]), "--state-dir", str(empty)]
    capsys.readouterr()
    assert cli_main(["stats", *dirs]) == 2
    assert capsys.readouterr().err == \
        f"nextstate: no checkpoint in {empty} (has the daemon run there?)\n"
    out = tmp_path / "t.jsonl"
    assert cli_main(["export", *dirs, "--out", str(out)]) == 2
    assert capsys.readouterr().err == f"nextstate: no buffers in {empty}\n"
    assert not out.exists()
    assert report_main([*dirs, "--out", str(tmp_path / "report")]) == 2
    assert str(empty) in capsys.readouterr().err
    assert not (tmp_path / "report").exists()


def test_a_workers_state_dir_reads_as_its_worker_shards(shards, tmp_path, capsys):
    """``nextstate run --workers 2 --state-dir st`` keeps its shards in ``st/worker-0`` and
    ``st/worker-1``: stats, export and report given ``st`` read them, as if both were named
    (and a single daemon's state in ``st`` itself first, from a run before the workers)."""
    parent = tmp_path / "st"
    shutil.copytree(shards["a"], parent / "worker-0")
    shutil.copytree(shards["b"], parent / "worker-1")
    (parent / "worker-x").mkdir()  # not a worker's: left alone
    named = [parent / "worker-0", parent / "worker-1"]
    assert shard_dirs(parent) == named
    assert _stats(capsys, parent) == _stats(capsys, *named)
    assert _export(tmp_path, "tuples", [parent]).read_bytes() == \
        _export(tmp_path, "tuples", named).read_bytes()
    assert report_main(["--state-dir", str(parent), "--out", str(tmp_path / "report")]) == 0
    assert "nextstate report (2 state dirs)" in (tmp_path / "report" / "report.html").read_text()
    shutil.copytree(shards["again"], parent, dirs_exist_ok=True)
    assert shard_dirs(parent) == [parent, *named]
    assert shard_dirs(shards["a"]) == [shards["a"]]

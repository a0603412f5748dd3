"""Reading a state dir while its daemon writes it: ``nextstate export`` opens the buffers
read-only, so it neither waits on the daemon's open transaction nor writes its files (a
smaller ``capacity`` in ``--config`` used to evict the daemon's tuples on open)."""

from __future__ import annotations

import json

import msgspec

from nextstate.buffers import BufferSet, BufferSpec
from nextstate.daemon.cli import main as cli_main
from nextstate.daemon.config import DaemonConfig
from nextstate.extractors.types import Message, ScoredTuple


def scored(n: int) -> ScoredTuple:
    return ScoredTuple(f"s{n}#1", f"s{n}", "tool", "evaluative", "tool",
                       (Message("user", f"question {n}"),), Message("assistant", f"answer {n}"),
                       reward=1.0)


def exported(path) -> list[str]:
    return [json.loads(line)["interaction_id"] for line in path.read_text().splitlines()]


def test_export_beside_a_daemon_reads_what_it_committed_and_writes_nothing(tmp_path, capsys):
    specs = [msgspec.convert(spec, BufferSpec) for spec in DaemonConfig().buffers]
    small = tmp_path / "small.toml"
    small.write_text('[[buffers]]\nname = "evaluative"\nkinds = ["evaluative"]\ncapacity = 1\n')
    out = tmp_path / "t.jsonl"
    with BufferSet.open(tmp_path / "buffers", specs) as daemon:
        daemon.extend([scored(0), scored(1)])
        daemon.flush()
        daemon.extend([scored(2)])
        daemon.extend([scored(3)])  # runs the queued insert of s2: a transaction is open
        assert daemon.buffers["evaluative"].storage._in_transaction
        assert cli_main(["export", "--state-dir", str(tmp_path), "--out", str(out)]) == 0
        assert sorted(exported(out)) == ["s0#1", "s1#1"]  # what was committed
        assert cli_main(["export", "--state-dir", str(tmp_path), "--config", str(small),
                         "--out", str(out)]) == 0
        assert sorted(exported(out)) == ["s0#1", "s1#1"]  # the file's rows; none evicted
        daemon.flush()  # the daemon's commit goes through
    with BufferSet.open(tmp_path / "buffers", specs) as reopened:
        assert sorted(t.interaction_id for t in reopened.buffers["evaluative"].storage
                      .iter_tuples()) == ["s0#1", "s1#1", "s2#1", "s3#1"]
    missing = tmp_path / "missing.toml"
    missing.write_text('[[buffers]]\nname = "other"\nkinds = ["evaluative"]\n')
    capsys.readouterr()
    assert cli_main(["export", "--state-dir", str(tmp_path), "--config", str(missing),
                     "--out", str(out)]) == 2
    assert "other.sqlite3: no buffer file to read" in capsys.readouterr().err

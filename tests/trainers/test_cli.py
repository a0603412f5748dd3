"""``nextstate train`` (train_main) against a state directory's durable buffers."""

from __future__ import annotations

import json

from nextstate.buffers import BufferSet, BufferSpec
from nextstate.trainers.checkpoint import latest_checkpoint, read_manifest
from nextstate.trainers.cli import train_main

from .conftest import BAD, make_tuple, session_turns


def test_train_main_trains_publishes_and_resumes(tmp_path, capsys) -> None:
    """Two runs of 3 steps train from the durable buffers and continue at step 6."""
    specs = [BufferSpec("evaluative", kinds=("evaluative",)),
             BufferSpec("preference", kinds=("preference",))]
    with BufferSet.open(tmp_path / "buffers", specs) as buffers:
        buffers.extend([make_tuple(reward=1.0), make_tuple(action=BAD, reward=-1.0, index=2)])
        buffers.flush()
    config = tmp_path / "train.toml"
    config.write_text('[trainer]\nbatch_size = 4\npublish_every = 0\ntorch_threads = 1\n'
                      '[policy]\nkind = "tiny"\nd_model = 32\nn_layers = 1\nn_heads = 2\n'
                      '[[buffers]]\nname = "evaluative"\nkinds = ["evaluative"]\n'
                      '[[buffers]]\nname = "preference"\nkinds = ["preference"]\n')
    argv = ["--state-dir", str(tmp_path), "--config", str(config), "--steps", "3"]
    assert train_main(argv) == 0
    assert train_main(argv) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["step"] == 6 and summary["policy_version"] == 2
    manifest = read_manifest(latest_checkpoint(tmp_path / "checkpoints"))
    assert manifest["step"] == 6 and manifest["tuples_seen"] == {"user": 24}


def test_train_main_without_buffers_fails_cleanly(tmp_path, capsys) -> None:
    """A state directory without buffers is an error (exit 2), not a crash."""
    assert train_main(["--state-dir", str(tmp_path / "nothing")]) == 2
    assert "no buffers" in capsys.readouterr().err


def test_train_main_takes_session_group_from_the_buffers_table(tmp_path, capsys) -> None:
    """``session_group`` in a ``[[buffers]]`` table reaches the sampler of ``nextstate train``:
    every logged step forwards its batch's tuples in shared groups of 4."""
    specs = [BufferSpec("evaluative", kinds=("evaluative",))]
    with BufferSet.open(tmp_path / "buffers", specs) as buffers:
        buffers.extend([t for k in range(6) for s in range(20)
                        for t in session_turns(s, 6)[k:k + 1]])
        buffers.flush()
    config = tmp_path / "train.toml"
    config.write_text('[trainer]\nbatch_size = 8\nmicro_batch_size = 8\npublish_every = 0\n'
                      'torch_threads = 1\n'
                      '[policy]\nkind = "tiny"\nd_model = 32\nn_layers = 1\nn_heads = 2\n'
                      '[[buffers]]\nname = "evaluative"\nkinds = ["evaluative"]\n'
                      'session_group = 4\nseed = 0\n')
    argv = ["--state-dir", str(tmp_path), "--config", str(config), "--steps", "3",
            "--log-every", "1"]
    assert train_main(argv) == 0
    logged = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()[:-1]]
    assert len(logged) == 3
    assert all(m["charts/prefix_share_ratio"] >= 2.0 for m in logged)

"""``nextstate train`` (train_main) against a state directory's durable buffers."""

from __future__ import annotations

import json
import re

import pytest

from nextstate.buffers import BufferSet, BufferSpec
from nextstate.trainers.checkpoint import latest_checkpoint, read_manifest
from nextstate.trainers.cli import train_main
from nextstate.trainers.config import TrainerConfig

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


@pytest.mark.parametrize(("key", "value"), [
    ("staleness_mode", "dorp"), ("schedule", "cosin"), ("batch_size", 0),
    ("micro_batch_size", 0), ("lr", -1e-4), ("batch_size", "32"), ("betas", [0.9, 1.5]),
    ("buffer_mix", {"evaluative": -1.0}), ("staleness_decay", 0.0), ("torch_threads", 0),
])
def test_a_bad_trainer_config_value_is_an_error_naming_the_key(key, value) -> None:
    """The trainer config took any value: ``staleness_mode = "dorp"`` down-weighted stale
    tuples without a word, ``lr = -1e-4`` trained away from the rewards."""
    with pytest.raises(ValueError, match=re.escape(f"$.{key}")):
        TrainerConfig.from_mapping({key: value})


def test_a_trainer_config_file_converts_its_values() -> None:
    config = TrainerConfig.from_mapping({"betas": [0.8, 0.99], "lr": 1, "buffer_mix": {"a": 2}})
    assert (config.betas, config.lr, config.buffer_mix) == ((0.8, 0.99), 1.0, {"a": 2.0})


def test_train_main_over_a_workers_state_dir_samples_every_shard(tmp_path, capsys) -> None:
    """The state dir of ``nextstate run --workers 2``: tuples of worker 0's shard and of
    worker 1's are both trained on, and versions are published in the parent dir."""
    specs = [BufferSpec("evaluative", kinds=("evaluative",))]
    for worker, source in enumerate(("user", "tool")):
        with BufferSet.open(tmp_path / f"worker-{worker}" / "buffers", specs) as buffers:
            buffers.extend([make_tuple(reward=1.0, source=source, session=f"s{worker}"),
                            make_tuple(action=BAD, reward=-1.0, index=2, source=source,
                                       session=f"s{worker}")])
            buffers.flush()
    config = tmp_path / "train.toml"
    config.write_text('[trainer]\nbatch_size = 8\npublish_every = 0\ntorch_threads = 1\n'
                      '[policy]\nkind = "tiny"\nd_model = 32\nn_layers = 1\nn_heads = 2\n'
                      '[[buffers]]\nname = "evaluative"\nkinds = ["evaluative"]\nseed = 0\n')
    assert train_main(["--state-dir", str(tmp_path), "--config", str(config),
                       "--steps", "3"]) == 0
    manifest = read_manifest(latest_checkpoint(tmp_path / "checkpoints"))
    assert manifest["step"] == 3
    assert set(manifest["tuples_seen"]) == {"user", "tool"}
    assert sum(manifest["tuples_seen"].values()) == 24
    assert not (tmp_path / "worker-0" / "checkpoints").exists()


def test_train_main_beside_a_running_daemon_reads_its_buffers_without_writing(
        tmp_path, capsys) -> None:
    """The daemon's buffers stay open, with a transaction it has not committed (as between
    two checkpoints): ``nextstate train`` trains on what is committed and takes in what the
    daemon commits meanwhile (``--refresh-s 0``: before every step), and the daemon's next
    commit goes through. Opened for writing, the trainer's open failed: "database is
    locked"."""
    specs = [BufferSpec("evaluative", kinds=("evaluative",))]
    config = tmp_path / "train.toml"
    config.write_text('[trainer]\nbatch_size = 16\npublish_every = 0\ntorch_threads = 1\n'
                      '[policy]\nkind = "tiny"\nd_model = 32\nn_layers = 1\nn_heads = 2\n'
                      '[[buffers]]\nname = "evaluative"\nkinds = ["evaluative"]\nseed = 0\n')
    with BufferSet.open(tmp_path / "buffers", specs) as daemon:
        daemon.extend([make_tuple(reward=1.0), make_tuple(action=BAD, reward=-1.0, index=2)])
        daemon.flush()
        # Not committed; the second add runs the first's queued insert: a transaction is open.
        daemon.extend([make_tuple(reward=1.0, index=3, source="tool")])
        daemon.extend([make_tuple(reward=-1.0, action=BAD, index=4, source="tool")])
        assert train_main(["--state-dir", str(tmp_path), "--config", str(config),
                           "--steps", "2", "--refresh-s", "0"]) == 0
        seen = read_manifest(latest_checkpoint(tmp_path / "checkpoints"))["tuples_seen"]
        assert seen == {"user": 32}  # the uncommitted tool tuple is not read
        daemon.flush()
        assert train_main(["--state-dir", str(tmp_path), "--config", str(config),
                           "--steps", "2", "--refresh-s", "0"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["step"] == 4
    manifest = read_manifest(latest_checkpoint(tmp_path / "checkpoints"))
    assert manifest["tuples_seen"]["user"] > 0 and manifest["tuples_seen"]["tool"] > 0

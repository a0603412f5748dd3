"""A published version that does not load back (a disk fault, a manual edit): ``nextstate
train`` and ``nextstate run --train`` exit ``EXIT_STATE_CORRUPT`` naming the file and how to
resume from the version before, and leave the version as it was (a traceback before: torch,
safetensors or a KeyError/ValueError of the trainer state)."""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from nextstate.buffers import BufferSet, BufferSpec
from nextstate.buffers.statefile import EXIT_STATE_CORRUPT
from nextstate.daemon.cli import main as cli_main
from nextstate.trainers.checkpoint import POLICY_DIR, TRAINER_STATE, version_dir
from nextstate.trainers.cli import train_main
from nextstate.trainers.tiny import WEIGHTS_FILE

from .conftest import BAD, make_tuple

TINY = ('[trainer]\nbatch_size = 4\npublish_every = 0\ntorch_threads = 1\n'
        '[policy]\nkind = "tiny"\nd_model = 32\nn_layers = 1\nn_heads = 2\n')
Corruption = Callable[[Path], None]


def _bytes(make: Callable[[bytes], bytes]) -> Corruption:
    def corrupt(path: Path) -> None:
        path.write_bytes(make(path.read_bytes()))
    return corrupt


FILE_CORRUPTIONS = {"truncated": _bytes(lambda data: data[: len(data) // 2]),
                    "random bytes": _bytes(lambda _: random.Random(0).randbytes(4096)),
                    "empty": _bytes(lambda _: b"")}
STATE_CORRUPTIONS = {**FILE_CORRUPTIONS,
                     "a step that is no number": lambda p: torch.save({"global_step": "x"}, p)}
WEIGHTS_CORRUPTIONS = {**FILE_CORRUPTIONS,
                       "other tensors": lambda p: save_file({"w": torch.zeros(2)}, str(p))}


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A state dir with buffers and one published version (v000001) of a tiny policy."""
    state = tmp_path_factory.mktemp("published") / "state"
    with BufferSet.open(state / "buffers", [BufferSpec("evaluative", kinds=("evaluative",))]
                        ) as buffers:
        buffers.extend([make_tuple(reward=1.0), make_tuple(action=BAD, reward=-1.0, index=2)])
        buffers.flush()
    config = state.parent / "train.toml"
    config.write_text(TINY + '[[buffers]]\nname = "evaluative"\nkinds = ["evaluative"]\n')
    assert train_main(["--state-dir", str(state), "--config", str(config), "--steps", "1"]) == 0
    return state


@pytest.fixture
def state(published: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "state"
    shutil.copytree(published, copy)
    shutil.copy(published.parent / "train.toml", tmp_path / "train.toml")
    return copy


def _refused_train(state: Path, named: Path, file: Path,
                   capsys: pytest.CaptureFixture[str]) -> None:
    before = file.read_bytes()
    argv = ["--state-dir", str(state), "--config", str(state.parent / "train.toml"),
            "--steps", "1"]
    assert train_main(argv) == EXIT_STATE_CORRUPT
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"nextstate train: {named}: does not load (")
    assert f"move {version_dir(state / 'checkpoints', 1)} aside" in line
    assert file.read_bytes() == before
    assert not version_dir(state / "checkpoints", 2).exists()  # nothing published over it


@pytest.mark.parametrize("corrupt", STATE_CORRUPTIONS.values(), ids=STATE_CORRUPTIONS)
def test_a_corrupt_trainer_state_stops_train(state, corrupt, capsys):
    """trainer_state.pt truncated, random, empty or of another shape: exit 6 naming it."""
    path = version_dir(state / "checkpoints", 1) / TRAINER_STATE
    corrupt(path)
    _refused_train(state, path, path, capsys)


@pytest.mark.parametrize("corrupt", WEIGHTS_CORRUPTIONS.values(), ids=WEIGHTS_CORRUPTIONS)
def test_corrupt_weights_stop_train(state, corrupt, capsys):
    """The policy's weights truncated, random, empty or other tensors: exit 6 naming the
    version's policy folder."""
    policy = version_dir(state / "checkpoints", 1) / POLICY_DIR
    corrupt(policy / WEIGHTS_FILE)
    _refused_train(state, policy, policy / WEIGHTS_FILE, capsys)


def test_a_corrupt_trainer_state_stops_run_train(state, tmp_path, capfd):
    """``run --train`` resumes from the same versions: exit 6 with a ``state_file_corrupt``
    line naming the file, before the metrics server starts (a traceback before)."""
    path = version_dir(state / "checkpoints", 1) / TRAINER_STATE
    FILE_CORRUPTIONS["truncated"](path)
    before = path.read_bytes()
    source = tmp_path / "in.jsonl"
    source.write_text("")
    config = tmp_path / "daemon.toml"
    config.write_text(TINY)
    assert cli_main(["run", "--source", f"file:{source}", "--state-dir", str(state),
                     "--config", str(config), "--metrics-port", "0", "--log-format", "json",
                     "--train"]) == EXIT_STATE_CORRUPT
    out = capfd.readouterr()
    (event,) = [json.loads(line) for line in (out.out + out.err).splitlines()
                if '"state_file_corrupt"' in line]
    assert event["file"] == str(path) and "aside" in event["action"]
    assert path.read_bytes() == before
    assert not (state / "http.json").exists()

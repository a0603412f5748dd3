"""Versioned checkpoints: atomic publish, discovery of the latest one, safe loading.

Layout of ``checkpoint_dir``::

    v000007/
        manifest.json        version, step, tuples seen per source, losses, time
        trainer_state.pt     optimizer, schedule, baselines, RNG (tensors + plain types)
        policy/              what a deployed agent loads: for LoRA the PEFT adapter
                             directory (adapter_model.safetensors + adapter_config.json)
                             that vLLM/PEFT load; otherwise safetensors weights

A version is written under a temporary name, every file and directory fsynced, then renamed
into place: a reader sees a complete version or none. Loading never unpickles arbitrary
objects (safetensors for weights, ``torch.load(weights_only=True)`` for trainer state). A
version that does not load back (a disk fault, a manual edit) is a
:class:`~nextstate.buffers.statefile.CorruptStateFile` naming its file (see
:func:`loading_version`); it is never removed or overwritten.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError

from nextstate.buffers.statefile import CorruptStateFile
from nextstate.trainers.policy import POLICY_FILE, CausalLMPolicy

MANIFEST = "manifest.json"
TRAINER_STATE = "trainer_state.pt"
POLICY_DIR = "policy"
_VERSION_DIR = re.compile(r"^v(\d{6,})$")


def version_dir(checkpoint_dir: Path, version: int) -> Path:
    """Directory of a published version."""
    return Path(checkpoint_dir) / f"v{version:06d}"


def _fsync_tree(root: Path) -> None:
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            with open(os.path.join(dirpath, name), "rb") as f:
                os.fsync(f.fileno())
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(checkpoint_dir: Path, version: int, write: Callable[[Path], None],
            manifest: dict[str, Any], keep: int = 0) -> Path:
    """Write a version atomically: ``write(tmp)`` fills a temp dir, then fsync and rename.

    Args:
        checkpoint_dir: where versions live.
        version: the new version number (must not exist yet).
        write: fills the directory it is given (policy, trainer state).
        manifest: written last as ``manifest.json``.
        keep: keep only the newest ``keep`` versions (0 keeps all).

    Returns:
        The published version's directory.
    """
    checkpoint_dir = Path(checkpoint_dir)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    final = version_dir(checkpoint_dir, version)
    if final.exists():
        raise FileExistsError(f"version {version} already published at {final}")
    _remove_stale_temps(checkpoint_dir)
    tmp = checkpoint_dir / f".tmp-{final.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    write(tmp)
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    _fsync_tree(tmp)
    os.rename(tmp, final)
    _fsync_dir(checkpoint_dir)
    if keep > 0:
        for old in list_versions(checkpoint_dir)[:-keep]:
            shutil.rmtree(version_dir(checkpoint_dir, old), ignore_errors=True)
    return final


def _remove_stale_temps(checkpoint_dir: Path) -> None:
    """Remove the half-written versions of trainers that died mid-publish (a temp dir names
    its writer's pid). Each is a whole policy: a crash loop would otherwise fill the disk.
    A writer still alive (another trainer on this directory) keeps its temp dir."""
    for entry in checkpoint_dir.glob(".tmp-v*-*"):
        pid = entry.name.rsplit("-", 1)[1]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            shutil.rmtree(entry, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, as another user
        return True
    return True


def list_versions(checkpoint_dir: Path) -> list[int]:
    """Published versions (complete ones: with a manifest), oldest first."""
    checkpoint_dir = Path(checkpoint_dir)
    if not checkpoint_dir.is_dir():
        return []
    found = []
    for entry in checkpoint_dir.iterdir():
        match = _VERSION_DIR.match(entry.name)
        if match and (entry / MANIFEST).is_file():
            found.append(int(match.group(1)))
    return sorted(found)


def latest_checkpoint(checkpoint_dir: Path) -> Path | None:
    """The newest published version's directory, or None."""
    versions = list_versions(checkpoint_dir)
    return version_dir(checkpoint_dir, versions[-1]) if versions else None


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest of a version directory."""
    return json.loads((Path(path) / MANIFEST).read_text())


# What a damaged or foreign file raises from safetensors, torch.load(weights_only=True) or
# load_state_dict (a tensor of another shape: RuntimeError; a missing entry: KeyError).
_UNLOADABLE = (OSError, EOFError, KeyError, ValueError, TypeError, RuntimeError,
               pickle.UnpicklingError, SafetensorError)


@contextlib.contextmanager
def loading_version(version: Path, name: str) -> Iterator[None]:
    """Loading the file (or folder) ``name`` of a published version: what fails to load is a
    :class:`CorruptStateFile` naming it, with how to resume from the version before.

    Example:
        >>> with loading_version(Path("checkpoints/v000003"), TRAINER_STATE):
        ...     raise EOFError("Ran out of input")
        Traceback (most recent call last):
        ...
        nextstate.buffers.statefile.CorruptStateFile: checkpoints/v000003/trainer_state.pt: ...
    """
    try:
        yield
    except torch.cuda.OutOfMemoryError:  # a RuntimeError, but no fault of the file
        raise
    except _UNLOADABLE as exc:
        detail = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]  # one line
        raise CorruptStateFile(
            Path(version) / name, f"does not load ({detail})",
            f"if the [policy] config changed since it was published, restore it; else move "
            f"{version} aside: training resumes from the version before it (or from scratch "
            f"if none)") from None


def load_trainer_state(path: Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    """A version's trainer state, loaded without unpickling arbitrary objects."""
    return torch.load(Path(path) / TRAINER_STATE, map_location=device, weights_only=True)


def load_policy(path: Path, device: str | torch.device = "cpu") -> CausalLMPolicy:
    """Load a published policy (what a deployed agent hot-loads).

    Args:
        path: a version directory (``v000007``), its ``policy/`` directory, or any
            directory a policy's ``save`` wrote.
        device: where to put the weights.
    """
    path = Path(path)
    if (path / POLICY_DIR / POLICY_FILE).is_file():
        path = path / POLICY_DIR
    meta = json.loads((path / POLICY_FILE).read_text())
    if meta["kind"] == "tiny":
        from nextstate.trainers.tiny import TinyPolicy

        return TinyPolicy.load(path, device=device)
    if meta["kind"] == "hf":
        from nextstate.trainers.hf import HFPolicy

        return HFPolicy.load(path, device=device)
    raise ValueError(f"unknown policy kind {meta['kind']!r} in {path}")

"""Tests that the project installs under one import name, non-editable, and runs from the root."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from tests.compiling import HAS_CC, environ

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("daemon", "extractors", "buffers", "trainers")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(out), str(ROOT)], check=True, capture_output=True,
                   env=environ())  # compiled, whatever this run's NEXTSTATE_PURE_PYTHON
    (built,) = out.glob("nextstate-*.whl")
    return built


def test_wheel_holds_every_module_under_the_nextstate_name(wheel):
    """Every source module of the four folders is in the wheel as nextstate.<folder>...,
    and nothing generic (daemon/, buffers/...) lands top level in site-packages."""
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"nextstate/{p.relative_to(ROOT).as_posix()}"
                for folder in FOLDERS for p in (ROOT / folder).rglob("*.py")
                if "__pycache__" not in p.parts}
    assert expected - names == set()
    tops = {name.split("/", 1)[0] for name in names}
    assert tops == {"nextstate", wheel.name.split("-")[0] + "-0.1.0.dist-info"}
    assert "nextstate/daemon/sample_interactions.jsonl" in names
    # setup.py's hot path, compiled, each module with the hash of the source it came from
    # (with a C compiler: compiling is optional)
    for module in ("daemon/join", "daemon/ingest", "extractors/user") if HAS_CC else ():
        assert any(n.startswith(f"nextstate/{module}.") and n.endswith(".so") for n in names)
        assert f"nextstate/{module}.compiled.sha256" in names


def test_installed_wheel_imports_and_runs_from_the_repository_root(wheel, tmp_path):
    """A non-editable install works when Python runs from the repo root (no shadowing)."""
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                    str(target), str(wheel)], check=True, capture_output=True)
    deps = sysconfig.get_paths()["purelib"]
    # -S: skip site (and the editable install's finder); the deps come from the venv.
    code = ("import sys; sys.path[:0] = [sys.argv[1], sys.argv[2]]; "
            "import nextstate.daemon.cli as cli, nextstate.extractors as ex; "
            "from nextstate.extractors._compiled import hot_path; "
            "print(cli.__file__); print(','.join(ex.available())); print(hot_path())")
    result = subprocess.run([sys.executable, "-S", "-c", code, str(target), deps],
                            cwd=ROOT, check=True, capture_output=True, text=True, env=environ())
    module_file, extractors, hot_path = result.stdout.splitlines()
    assert module_file.startswith(str(target))
    assert "tool" in extractors.split(",")
    assert (hot_path.startswith("compiled (") and "edited" not in hot_path) or not HAS_CC

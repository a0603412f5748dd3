"""The hot path compiled with Cython (setup.py): it runs compiled, gives what its Python source
gives, and an edited module runs as its new source, never as the older compiled one."""

from __future__ import annotations

import ast
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nextstate.extractors._compiled import RECORD, compiled_modules
from tests.compiling import HAS_CC, PURE, environ

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not HAS_CC, reason="no C compiler: the hot path runs as Python")


def listed() -> list[str]:
    """setup.py's COMPILED, as module names (read, not imported: importing it builds)."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    (paths,) = [ast.literal_eval(node.value) for node in tree.body
                if isinstance(node, ast.Assign) and node.targets[0].id == "COMPILED"]
    return [f"nextstate.{path.removesuffix('.py').replace('/', '.')}" for path in paths]


def hot_path(env: dict[str, str]) -> str:
    code = ("import nextstate.daemon, nextstate.extractors._compiled as c; "
            "print(c.hot_path())")
    return subprocess.run([sys.executable, "-c", code], env=env, check=True,
                          capture_output=True, text=True).stdout.strip()


def test_every_listed_module_runs_compiled():
    """What `make install` built is what runs (a module that failed to compile, or was edited
    and not compiled again, runs as Python: slower, and not what this suite should test)."""
    if os.environ.get(PURE):
        pytest.skip(f"the suite runs as Python ({PURE})")
    import nextstate.daemon.ingest  # noqa: F401  (the daemon package's modules registered)

    status = compiled_modules()
    assert {name: status.get(name) for name in listed()} == dict.fromkeys(listed(), "compiled"), \
        "run `make install` to compile the hot path again"
    assert hot_path(environ()) == f"compiled ({len(listed())} modules)"


def test_compiled_and_python_give_the_same_output(tmp_path):
    """benchmarks/same_output.py's ten streams (re-serialised, retried, branched, truncated,
    delta, multi-part and malformed records, the sample file) through decode, join, idle
    timeouts and every rule extractor: each interaction, tuple and rejected record's reason
    byte for byte the same compiled and as Python."""
    outputs = {}
    for label, env, says in (("compiled", environ(), "compiled ("),
                             ("python", environ(**{PURE: "1"}), f"Python ({PURE})")):
        assert hot_path(env).startswith(says)
        out = tmp_path / f"{label}.msgpack"
        subprocess.run([sys.executable, str(ROOT / "benchmarks" / "same_output.py"), "--dump",
                        str(out), "--sessions", "60"], env=env, check=True)
        outputs[label] = out.read_bytes()
    assert len(outputs["python"]) > 100_000
    assert outputs["compiled"] == outputs["python"]


@pytest.fixture(scope="module")
def compiled_package(tmp_path_factory) -> Path:
    """A package ``pkg`` whose module ``mod`` (``WHERE = "compiled"``) is compiled in place,
    with the record of its source, as setup.py leaves one; its ``__init__`` calls the guard."""
    root = tmp_path_factory.mktemp("compiled")
    package = root / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text(
        "from nextstate.extractors._compiled import prefer_fresh_source\n"
        "prefer_fresh_source(__name__, __path__)\n")
    source = package / "mod.py"
    source.write_text('WHERE = "compiled"\n')
    subprocess.run([sys.executable, "-m", "Cython.Build.Cythonize", "-q", "-i", "-3",
                    str(source)], cwd=root, check=True, capture_output=True)
    assert list(package.glob("mod.*.so"))
    (package / f"mod{RECORD}").write_text(hashlib.sha256(source.read_bytes()).hexdigest())
    return root


def where(root: Path, env: dict[str, str] | None = None) -> list[str]:
    """What ``pkg.mod`` says, the kind of file it was loaded from, and the guard's status."""
    code = ("import pkg.mod, nextstate.extractors._compiled as c; print(pkg.mod.WHERE); "
            "print(pkg.mod.__file__.rsplit('.', 1)[1]); print(c.STATUS['pkg.mod'])")
    return subprocess.run([sys.executable, "-c", code], cwd=root, check=True, text=True,
                          capture_output=True, env=environ(**(env or {}))).stdout.split()


def test_a_module_compiled_from_its_source_runs_compiled(compiled_package):
    assert where(compiled_package) == ["compiled", "so", "compiled"]
    assert where(compiled_package, {"NEXTSTATE_PURE_PYTHON": "1"}) == ["compiled", "py", "pure"]


def test_an_edited_module_runs_as_its_new_source(compiled_package, tmp_path):
    """Python imports ``mod.*.so`` before ``mod.py``: an edit would not run, silently."""
    root = tmp_path / "edited"
    subprocess.run(["cp", "-r", str(compiled_package), str(root)], check=True)
    (root / "pkg" / "mod.py").write_text('WHERE = "source"\n')
    assert where(root) == ["source", "py", "edited"]
    (root / "pkg" / f"mod{RECORD}").unlink()  # no record: not known to be this source's
    (root / "pkg" / "mod.py").write_text('WHERE = "compiled"\n')
    assert where(root) == ["compiled", "py", "edited"]

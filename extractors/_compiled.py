"""Which modules run compiled (``setup.py`` compiles the hot path with Cython), and never one
compiled from other source than the one beside it.

Python imports ``join.cpython-*.so`` before ``join.py`` in the same folder. In an editable
checkout the compiled module stays there when ``join.py`` is edited, so the edit would not
run. :func:`prefer_fresh_source` (called first by each package's ``__init__``) compares every
compiled module's recorded source hash with its source and imports the source instead where
they differ (or where ``NEXTSTATE_PURE_PYTHON`` is set: the same code as Python, for the
tests that compare the two and for fuzzing, which instruments Python only).

Import machinery, not pipeline I/O: it runs once per package, before its modules load.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import Iterable
from pathlib import Path

RECORD = ".compiled.sha256"
"""Suffix of the file beside a compiled module: the sha256 of the source it came from."""

STATUS: dict[str, str] = {}
"""Module name -> ``"compiled"`` or why it runs as Python: ``"edited"`` (source changed
since it was compiled), ``"pure"`` (``NEXTSTATE_PURE_PYTHON``). Modules never compiled are
not listed."""


class _SourceFirst(importlib.abc.MetaPathFinder):
    """Finds the listed modules as their ``.py`` source; leaves every other to the rest."""

    def __init__(self) -> None:
        self.sources: dict[str, str] = {}

    def find_spec(self, fullname: str, path: object = None, target: object = None
                  ) -> importlib.machinery.ModuleSpec | None:
        source = self.sources.get(fullname)
        return None if source is None else importlib.util.spec_from_file_location(
            fullname, source)


_FINDER = _SourceFirst()


def prefer_fresh_source(package: str, paths: Iterable[str]) -> None:
    """Before ``package``'s modules are imported: each compiled one in ``paths`` whose source
    differs from the one it was compiled from (or all, with ``NEXTSTATE_PURE_PYTHON``) is
    imported from its source."""
    pure = bool(os.environ.get("NEXTSTATE_PURE_PYTHON"))
    for folder in map(Path, paths):
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            for binary in folder.glob(f"*{suffix}"):
                name = binary.name.removesuffix(suffix)
                source = folder / f"{name}.py"
                if "." in name or not source.is_file():
                    continue
                fullname = f"{package}.{name}"
                if pure:
                    STATUS[fullname] = "pure"
                elif _recorded(folder / f"{name}{RECORD}") == _hash(source):
                    STATUS[fullname] = "compiled"
                    continue
                else:
                    STATUS[fullname] = "edited"
                _FINDER.sources[fullname] = str(source)
    if _FINDER.sources and _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)


def compiled_modules() -> dict[str, str]:
    """A copy of :data:`STATUS` (for the daemon's start-up log and the benchmarks)."""
    return dict(STATUS)


def hot_path() -> str:
    """One phrase for logs and benchmark output: how the modules ``setup.py`` compiles run."""
    compiled = sum(state == "compiled" for state in STATUS.values())
    edited = sorted(name.removeprefix("nextstate.") for name, state in STATUS.items()
                    if state == "edited")
    if not STATUS:
        return "Python (not compiled)"
    if any(state == "pure" for state in STATUS.values()):
        return "Python (NEXTSTATE_PURE_PYTHON)"
    return f"compiled ({compiled} modules" + (
        f"; as Python, edited since: {', '.join(edited)})" if edited else ")")


def _recorded(record: Path) -> str | None:
    try:
        return record.read_text().strip()
    except OSError:
        return None


def _hash(source: Path) -> str:
    return hashlib.sha256(source.read_bytes()).hexdigest()

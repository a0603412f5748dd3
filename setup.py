"""Compiles the daemon's hot path with Cython, from the same Python source (no ``.pyx``).

The modules in ``COMPILED`` (decoding, the join, the rule extractors) run 10-30% faster
compiled (README, "Compiled hot path"); the rest of the packaging is in ``pyproject.toml``.
Compiling is optional: without Cython or a C compiler, or with ``NEXTSTATE_PURE_PYTHON=1``,
the package installs as plain Python and runs the same.

Beside each compiled module the build writes ``<name>.compiled.sha256``, the hash of the
source it was compiled from: an editable checkout edited since its build imports the edited
source, not the older compiled module (``extractors/_compiled.py``).
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
COMPILED = [
    "daemon/anthropic.py",
    "daemon/ingest.py",
    "daemon/join.py",
    "daemon/otel.py",
    "daemon/wire.py",
    "extractors/feedback.py",
    "extractors/gui.py",
    "extractors/lru.py",
    "extractors/names.py",
    "extractors/registry.py",
    "extractors/terminal.py",
    "extractors/tool.py",
    "extractors/types.py",
    "extractors/user.py",
    "extractors/window.py",
]
# annotation_typing=False: the annotations stay hints, as in Python (Cython would make a
# ``float`` argument a C double: an int passed as 1.0, None refused, a new float object each
# time). binding=False: compiled functions are called as C functions, not function objects
# (bench_daemon's call logs over Python: +3.5% and +7.7% with the default, +13% and +17%
# without); their signatures are embedded in the form inspect.signature reads from builtins.
DIRECTIVES = {"language_level": 3, "annotation_typing": False, "binding": False,
              "embedsignature": True, "embedsignature.format": "clinic"}


class OptionalBuildExt(build_ext):
    """Builds what compiles, warns and leaves the rest to Python; beside each module built,
    the hash of its source (copied with it into the wheel, or beside the source in place)."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as error:  # no compiler at all: the pure Python package is complete
            _warn(f"compiling the hot path failed ({error}); installing it as Python")

    def build_extension(self, ext: Extension) -> None:
        if self.compiler.compiler_type == "unix":  # gcc 12's false alarms on CPython's macros
            ext.extra_compile_args = [*ext.extra_compile_args, "-Wno-array-bounds"]
        try:
            super().build_extension(ext)
        except Exception as error:
            _warn(f"{ext.name} not compiled ({error}); it runs as Python")
            return
        source = ROOT / _source(ext.name)
        record = _record(os.path.join(self.build_lib, self.get_ext_filename(ext.name)))
        Path(record).write_text(hashlib.sha256(source.read_bytes()).hexdigest() + "\n")

    def copy_extensions_to_source(self) -> None:
        super().copy_extensions_to_source()
        for built, in_place in self._records():
            self.copy_file(built, in_place, level=self.verbose)

    def _get_output_mapping(self):  # type: ignore[no-untyped-def]
        yield from super()._get_output_mapping()
        if self.inplace:
            yield from self._records()

    def get_outputs(self) -> list[str]:
        outputs = super().get_outputs()
        return outputs if self.inplace else sorted(outputs + [b for b, _ in self._records()])

    def _records(self) -> list[tuple[str, str]]:
        """(built, in place) paths of the records of the modules that compiled."""
        build_py = self.get_finalized_command("build_py")
        pairs = (self._get_inplace_equivalent(build_py, ext) for ext in self.extensions)
        return [(_record(built), _record(in_place)) for in_place, built in pairs
                if os.path.exists(_record(built))]


def _source(module: str) -> str:
    """``nextstate.daemon.join`` -> ``daemon/join.py`` (an entry of :data:`COMPILED`)."""
    return module.removeprefix("nextstate.").replace(".", "/") + ".py"


def _record(module_file: str) -> str:
    """``daemon/join.cpython-311-x86_64-linux-gnu.so`` -> ``daemon/join.compiled.sha256``."""
    folder, name = os.path.split(module_file)
    return os.path.join(folder, name.split(".", 1)[0] + ".compiled.sha256")


def _warn(message: str) -> None:
    print(f"nextstate: {message}", file=sys.stderr)


def extensions() -> list[Extension]:
    if os.environ.get("NEXTSTATE_PURE_PYTHON"):
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        _warn("Cython not installed; the hot path runs as Python")
        return []
    modules = [Extension("nextstate." + path.removesuffix(".py").replace("/", "."), [path])
               for path in COMPILED]
    # cythonize regenerates a module's C when its source is newer, not when the directives or
    # Cython change: those name the folder the C is kept in.
    from Cython import __version__ as cython_version

    key = hashlib.sha256(repr((sorted(DIRECTIVES.items()), cython_version)).encode())
    return cythonize(modules, compiler_directives=DIRECTIVES, quiet=True,
                     build_dir=f"build/cython-{key.hexdigest()[:12]}")


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})

"""Shared by the tests of the compiled hot path (test_compiled) and of the built wheel
(test_packaging): whether this machine can compile it, and a subprocess environment that
runs it compiled."""

from __future__ import annotations

import os
import shutil
import sysconfig

# Compiling is optional (setup.py): with no C compiler the package installs as Python.
HAS_CC = shutil.which((sysconfig.get_config_var("CC") or "cc").split()[0]) is not None
PURE = "NEXTSTATE_PURE_PYTHON"


def environ(**extra: str) -> dict[str, str]:
    """This process's environment for a subprocess, compiled unless ``extra`` says."""
    return {**{k: v for k, v in os.environ.items() if k != PURE}, **extra}

"""The runnable examples in the buffers' docstrings."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["", ".sumtree", ".versions", ".memory_storage", ".sqlite_storage", ".samplers",
           ".writers", ".priorities", ".replay_buffer", ".buffer_set", ".sharded"]


@pytest.mark.parametrize("suffix", MODULES)
def test_docstring_examples_run(suffix):
    """Every docstring example of the module runs and prints what it shows."""
    module = importlib.import_module("nextstate.buffers" + suffix)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0

"""Parsing policy versions."""

from __future__ import annotations

import pytest

from nextstate.buffers.versions import UNKNOWN_VERSION, parse_policy_version


@pytest.mark.parametrize(("label", "expected"), [
    ("7", 7), ("v7", 7), ("policy-7", 7), ("ckpt_2024_12", 12), ("v10 ", 10),
    (None, UNKNOWN_VERSION), ("latest", UNKNOWN_VERSION), ("", UNKNOWN_VERSION),
])
def test_trailing_integer_is_the_version(label, expected):
    """The trailing integer of a label is its version; no integer means unknown."""
    assert parse_policy_version(label) == expected

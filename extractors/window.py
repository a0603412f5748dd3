"""Bounded windows of long texts, so that a rule's reading costs the same at any length.

A record may hold up to ``join.max_record_bytes`` (16 MB) of one text; the rule extractors
read a long one by its head and tail (what an output or a reply says sits at its ends:
a verdict or a cause at the start, a summary or an ask at the end), never the middle.
"""

from __future__ import annotations


def head_and_tail(text: str, head: int, tail: int) -> str:
    """``text`` when it holds at most ``head + tail`` characters, else its first ``head``
    and last ``tail`` characters with a newline between them.

    A window is its own window, so reading a text and reading its window agree.

    >>> head_and_tail("no, wrong. " + "log line\\n" * 1000 + "Use Celsius.", 10, 12)
    'no, wrong.\\nUse Celsius.'
    """
    if len(text) <= head + tail:
        return text
    return text[:head] + "\n" + text[len(text) - tail:]

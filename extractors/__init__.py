"""Extractors: next states into scored training tuples.

Importing this package registers the built-in extractors; see :mod:`.registry`.
"""

from nextstate.extractors import tool  # noqa: F401  (registers "tool")
from nextstate.extractors.registry import available, build_extractors, register
from nextstate.extractors.types import Interaction, Message, ScoredTuple, ToolCall

__all__ = [
    "Interaction",
    "Message",
    "ScoredTuple",
    "ToolCall",
    "available",
    "build_extractors",
    "register",
]

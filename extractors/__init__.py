"""Extractors: next states into scored training tuples.

Importing this package registers the built-in extractors; see :mod:`.registry`.
"""

from nextstate.extractors import (
    feedback,  # noqa: F401  (registers "feedback")
    gui,  # noqa: F401  (registers "gui")
    judge,  # noqa: F401  (registers "judge")
    terminal,  # noqa: F401  (registers "terminal")
    tool,  # noqa: F401  (registers "tool")
    user,  # noqa: F401  (registers "user")
)
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

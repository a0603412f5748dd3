"""Extractors: next states into scored training tuples.

Importing this package registers the built-in extractors; see :mod:`.registry`.
"""

# First: the modules below may be compiled (setup.py); one edited since runs as its source.
from nextstate.extractors._compiled import prefer_fresh_source

prefer_fresh_source(__name__, __path__)

from nextstate.extractors import (  # noqa: E402
    feedback,  # noqa: F401  (registers "feedback")
    gui,  # noqa: F401  (registers "gui")
    judge,  # noqa: F401  (registers "judge")
    terminal,  # noqa: F401  (registers "terminal")
    tool,  # noqa: F401  (registers "tool")
    user,  # noqa: F401  (registers "user")
)
from nextstate.extractors.registry import available, build_extractors, register  # noqa: E402
from nextstate.extractors.types import Interaction, Message, ScoredTuple, ToolCall  # noqa: E402

__all__ = [
    "Interaction",
    "Message",
    "ScoredTuple",
    "ToolCall",
    "available",
    "build_extractors",
    "register",
]

"""The extractor registry: names to factories of ``Interaction -> list[ScoredTuple]`` callables.

An extractor is a plain callable, like a structlog processor. Stateless ones are functions;
configurable ones are small classes whose ``__init__`` takes keyword options (from the
``[extractors.<name>]`` table of the daemon's config) and whose ``__call__`` scores one
interaction. Registering one is a decorator line::

    @register("tool")
    class ToolResultExtractor: ...

and the daemon builds the configured list in order with :func:`build_extractors`.

An extractor may declare which kinds of next state it can score, ``reads`` (a class or function
attribute, a set of ``"user"``, ``"tool"``, ``"feedback"``; see :func:`next_state_kinds`):
:class:`Dispatch` then runs it only on interactions that have one of them (it would return
``[]`` on the others). Extractors that declare nothing run on every interaction.

One may also declare which actions with a single tool call it scores, by the call's tool
name: a method ``scores_call_to(name) -> bool`` (see :class:`Dispatch`). A shell tool's
result then meets the terminal extractor only, not the GUI one too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Generic, TypeVar

from nextstate.extractors.types import Interaction, ScoredTuple

Extractor = Callable[[Interaction], list[ScoredTuple]]
ExtractorFactory = Callable[..., Extractor]

_REGISTRY: dict[str, ExtractorFactory] = {}


def register(name: str) -> Callable[[ExtractorFactory], ExtractorFactory]:
    """Register an extractor factory (a class or a function returning an extractor).

    A plain function ``Interaction -> list[ScoredTuple]`` registers as itself: the factory
    call with no options returns it unchanged.
    """

    def decorator(factory: ExtractorFactory) -> ExtractorFactory:
        if name in _REGISTRY and _REGISTRY[name] is not factory:
            raise ValueError(f"extractor {name!r} is already registered")
        _REGISTRY[name] = factory
        return factory

    return decorator


def register_function(name: str) -> Callable[[Extractor], Extractor]:
    """Register a stateless extractor function under ``name``."""

    def decorator(function: Extractor) -> Extractor:
        register(name)(lambda **_: function)
        return function

    return decorator


def available() -> list[str]:
    """Names of every registered extractor."""
    _load_builtins()
    return sorted(_REGISTRY)


def build_extractors(
    names: Iterable[str], options: Mapping[str, Mapping[str, Any]] | None = None
) -> list[tuple[str, Extractor]]:
    """Instantiate the configured extractors, in order.

    Args:
        names: registry names, in the order the daemon should run them.
        options: per-name keyword options for the factories.

    Returns:
        ``(name, extractor)`` pairs.

    Raises:
        KeyError: a name is not registered (the message lists those that are).
    """
    _load_builtins()
    options = options or {}
    built: list[tuple[str, Extractor]] = []
    for name in names:
        if name not in _REGISTRY:
            raise KeyError(f"unknown extractor {name!r}; registered: {', '.join(available())}")
        built.append((name, _REGISTRY[name](**dict(options.get(name, {})))))
    return built


def _load_builtins() -> None:
    # Importing the package registers the built-in extractors (each module's decorator).
    import nextstate.extractors  # noqa: F401


NEXT_STATE_KINDS = {"user": 1, "tool": 2, "feedback": 4}
"""The kinds of next state an extractor may declare in ``reads``, as bits of a kinds mask."""

E = TypeVar("E")


def next_state_kinds(interaction: Interaction) -> int:
    """The kinds mask of an interaction: ``user`` when its next state holds a user message,
    ``tool`` when the action calls tools and the next state holds a tool message, ``feedback``
    when feedback targeted the action."""
    kinds = 4 if interaction.feedback else 0
    calls = bool(interaction.action.tool_calls)
    for message in interaction.next_state:
        role = message.role
        if role == "user":
            kinds |= 1
        elif role == "tool" and calls:
            kinds |= 2
    return kinds


def reads_mask(extractor: Any) -> int | None:
    """The kinds mask an extractor declares in ``reads`` (``None``: it declares none)."""
    reads = getattr(extractor, "reads", None)
    if reads is None:
        return None
    unknown = set(reads) - NEXT_STATE_KINDS.keys()
    if unknown:
        raise ValueError(f"unknown next-state kinds in reads: {sorted(unknown)}")
    mask = 0
    for kind in reads:
        mask |= NEXT_STATE_KINDS[kind]
    return mask


_CALL_MEMO_NAMES = 1024
"""Tool names whose dispatch :class:`Dispatch` keeps (per kinds mask): names come from the
model, so a stream could hold any number of them; past this, each is worked out anew."""


class Dispatch(Generic[E]):
    """Which of a chain's entries can score an interaction, by the kinds of its next state.

    The table holds, for each kinds mask, the entries (in chain order) whose extractor reads
    one of those kinds or declares none: an interaction only meets the extractors that can
    score it. An action with exactly one tool call also skips the extractors whose
    ``scores_call_to(name)`` says False for that call's tool name (each name is asked once).

    Args:
        entries: the chain, e.g. ``(name, extractor)`` pairs from :func:`build_extractors`.
        extractor_of: the extractor of an entry (default: its second item).

    Example:
        >>> from nextstate.extractors.types import Interaction, Message
        >>> dispatch = Dispatch(build_extractors(["feedback", "user", "tool"]))
        >>> i = Interaction("s#1", "s", (), Message("assistant", "hi"), (Message("user", "ok"),))
        >>> [name for name, _ in dispatch(i)]
        ['user']
    """

    __slots__ = ("_by_call", "_checked", "_table")

    def __init__(self, entries: Sequence[E],
                 extractor_of: Callable[[E], Any] = lambda entry: entry[1]  # type: ignore[index]
                 ) -> None:
        masks = [reads_mask(extractor_of(entry)) for entry in entries]
        checks = [getattr(extractor_of(entry), "scores_call_to", None) for entry in entries]
        # Each row's entries with their extractor's scores_call_to (None: declares none).
        self._checked = tuple(
            tuple((e, check) for e, mask, check in zip(entries, masks, checks, strict=True)
                  if mask is None or mask & kinds)
            for kinds in range(8))
        self._table = tuple(tuple(e for e, _ in row) for row in self._checked)
        # Per kinds mask: tool name -> the row's entries for an action calling only it
        # (None: no extractor declares scores_call_to, every action gets its row).
        self._by_call: tuple[dict[str, tuple[E, ...]], ...] | None = (
            tuple({} for _ in range(8)) if any(checks) else None)

    def __call__(self, interaction: Interaction) -> tuple[E, ...]:
        kinds = next_state_kinds(interaction)
        calls = interaction.action.tool_calls
        if len(calls) != 1 or self._by_call is None:
            return self._table[kinds]
        name = calls[0].name
        row = self._by_call[kinds].get(name)
        return row if row is not None else self._row_for_call(kinds, name)

    def _row_for_call(self, kinds: int, name: str) -> tuple[E, ...]:
        """The row of ``kinds`` less the entries that score no single call to ``name``."""
        row = tuple(e for e, scores_call_to in self._checked[kinds]
                    if scores_call_to is None or scores_call_to(name))
        memo = self._by_call[kinds]  # type: ignore[index]
        if len(memo) < _CALL_MEMO_NAMES:
            memo[name] = row
        return row

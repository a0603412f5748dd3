"""The extractor registry: names to factories of ``Interaction -> list[ScoredTuple]`` callables.

An extractor is a plain callable, like a structlog processor. Stateless ones are functions;
configurable ones are small classes whose ``__init__`` takes keyword options (from the
``[extractors.<name>]`` table of the daemon's config) and whose ``__call__`` scores one
interaction. Registering one is a decorator line::

    @register("tool")
    class ToolResultExtractor: ...

and the daemon builds the configured list in order with :func:`build_extractors`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

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

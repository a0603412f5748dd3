"""BufferSet: the named buffers of one deployment, fed by kind."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from nextstate.buffers.replay_buffer import ReplayBuffer
from nextstate.buffers.spec import BufferSpec
from nextstate.extractors.types import ScoredTuple


class BufferSet:
    """Routes each tuple to every buffer whose ``kinds`` include its kind.

    Example:
        >>> from nextstate.extractors.types import Message, ScoredTuple
        >>> bufs = BufferSet.open(None, [BufferSpec("evaluative", kinds=("evaluative",)),
        ...                              BufferSpec("everything")])
        >>> t = ScoredTuple("s#1", "s", "tool", "evaluative", "tool", (), Message("assistant"))
        >>> bufs.extend([t, t]), len(bufs.buffers["evaluative"]), len(bufs.buffers["everything"])
        (2, 1, 1)
    """

    def __init__(self, buffers: dict[str, ReplayBuffer], specs: Sequence[BufferSpec]) -> None:
        self.buffers = buffers
        self.specs = {spec.name: spec for spec in specs}
        self._kinds = {spec.name: frozenset(spec.kinds) for spec in specs}

    @classmethod
    def open(cls, state_dir: Path | None, specs: Sequence[BufferSpec],
             read_only: bool = False) -> BufferSet:
        """Open (or create) every buffer: ``<state_dir>/<name>.sqlite3``, or in memory.

        Reopening the same directory gives back every flushed tuple, and deduplication
        keeps working against them. ``read_only``: sample the buffers of a directory another
        process writes (the daemon's), never writing them; each file must exist.
        """
        names = [spec.name for spec in specs]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate buffer names in {names}")
        if state_dir is not None:
            state_dir = Path(state_dir)
            if not read_only:
                state_dir.mkdir(parents=True, exist_ok=True)
        buffers: dict[str, ReplayBuffer] = {}
        try:
            for spec in specs:
                buffers[spec.name] = ReplayBuffer.from_spec(spec, state_dir, read_only)
        except BaseException:
            for buffer in buffers.values():
                buffer.close()
            raise
        return cls(buffers, specs)

    def extend(self, tuples: Iterable[ScoredTuple]) -> int:
        """Add each tuple to every buffer of its kind; returns how many were newly stored
        (a tuple stored in two buffers counts twice; duplicates count zero)."""
        items = tuples if type(tuples) is list else list(tuples)
        # Grouped by kind (one dict look-up per tuple); a buffer of one kind takes its group
        # as is, a buffer of several kinds picks its tuples in their order.
        by_kind: dict[str, list[ScoredTuple]] = {}
        for item in items:
            group = by_kind.get(item.kind)
            if group is None:
                by_kind[item.kind] = [item]
            else:
                group.append(item)
        stored = 0
        for name, kinds in self._kinds.items():
            present = [kind for kind in kinds if kind in by_kind]
            if len(present) == 1:
                stored += self.buffers[name].extend(by_kind[present[0]])
            elif present:
                stored += self.buffers[name].extend([t for t in items if t.kind in kinds])
        return stored

    def flush(self) -> None:
        """Every add so far is durable when this returns (commit Kafka offsets after it)."""
        for buffer in self.buffers.values():
            buffer.flush()

    def close(self) -> None:
        """Flush and close every buffer."""
        for buffer in self.buffers.values():
            buffer.close()

    def __enter__(self) -> BufferSet:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def state_dict(self) -> dict[str, Any]:
        """Each buffer's state by name."""
        return {name: buffer.state_dict() for name, buffer in self.buffers.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the buffers named in ``state`` (others are left as they are)."""
        unknown = set(state) - set(self.buffers)
        if unknown:
            raise KeyError(f"no buffer named {sorted(unknown)}")
        for name, buffer_state in state.items():
            self.buffers[name].load_state_dict(buffer_state)

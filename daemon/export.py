"""Stored tuples as TRL datasets: ``nextstate export --format sft|dpo|kto``.

Rows follow TRL's *conversational* dataset conventions, so ``datasets.load_dataset("json", ...)``
(or ``"parquet"``) hands them to TRL's ``SFTTrainer``/``DPOTrainer``/``KTOTrainer`` (or verl,
OpenRLHF) unchanged:

- ``sft``: ``prompt`` (the context) / ``completion`` (``[action]``) for evaluative tuples with
  a positive reward, and ``[chosen]`` for preference tuples (prompt-completion format).
- ``dpo``: ``prompt`` / ``chosen`` / ``rejected`` from preference tuples.
- ``kto``: ``prompt`` / ``completion`` / ``label`` (reward > 0) from evaluative tuples with a
  non-zero reward.

Every row also has ``reward``, ``confidence``, ``hint``, ``source``, ``session_id`` and
``interaction_id``. Messages are ``{"role", "content", "tool_calls", "tool_call_id"}``, every
key in every message (Arrow needs one schema), tool calls in OpenAI's form with the
arguments as the JSON text the model produced.

Scaled-out daemons keep one buffer shard each; :func:`shard_tuples` reads several shards as
one, exporting a tuple stored on two of them once.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from nextstate.extractors.types import Message, ScoredTuple

if TYPE_CHECKING:
    from nextstate.buffers import BufferSet

FORMATS = ("sft", "dpo", "kto")


def shard_tuples(shards: Sequence[BufferSet], buffer: str | None = None
                 ) -> Iterator[ScoredTuple]:
    """Every tuple the shards' buffers hold: buffer by buffer (the first shard's buffer
    order), within a buffer shard by shard in the order given, each shard oldest first.

    A key (interaction, extractor, kind) that several shards hold in the same buffer comes
    once, from the first shard that holds it: a daemon killed between processing a record and
    committing its offset leaves its tuples for the partition's next owner to store again
    (README, Scale-out). A tuple that one shard routes to two buffers comes once per buffer,
    as a single shard's export always gave it.

    Args:
        shards: the buffer sets of the shards, opened with the same buffer specs.
        buffer: only the buffer of this name (all if None).
    """
    if not shards:
        return
    for name in shards[0].buffers:
        if buffer and name != buffer:
            continue
        if len(shards) == 1:  # one shard holds each key once per buffer: nothing to skip
            yield from shards[0].buffers[name].iter_tuples()
            continue
        seen: set[tuple[str, str, str]] = set()
        for shard in shards:
            for t in shard.buffers[name].iter_tuples():
                key = t.key
                if key not in seen:
                    seen.add(key)
                    yield t


def message_row(message: Message) -> dict[str, Any]:
    """One message as a chat-template dict (OpenAI ``tool_calls``)."""
    return {"role": message.role, "content": message.content,
            "tool_calls": [{"id": c.id, "type": "function",
                            "function": {"name": c.name, "arguments": c.arguments}}
                           for c in message.tool_calls],
            "tool_call_id": message.tool_call_id}


def _meta(t: ScoredTuple) -> dict[str, Any]:
    return {"reward": t.reward, "confidence": t.confidence, "hint": t.hint, "source": t.source,
            "session_id": t.session_id, "interaction_id": t.interaction_id}


def trl_rows(tuples: Iterable[ScoredTuple], fmt: str) -> Iterator[dict[str, Any]]:
    """The rows of one TRL format (see the module docstring for which tuples make a row)."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, not {fmt!r}")
    for t in tuples:
        prompt = [message_row(m) for m in t.context]
        if fmt == "sft":
            if t.kind == "evaluative" and t.reward > 0:
                completion = t.action
            elif t.kind == "preference" and t.chosen is not None:
                completion = t.chosen
            else:
                continue
            yield {"prompt": prompt, "completion": [message_row(completion)], **_meta(t)}
        elif fmt == "dpo":
            if t.kind == "preference" and t.chosen is not None and t.rejected is not None:
                yield {"prompt": prompt, "chosen": [message_row(t.chosen)],
                       "rejected": [message_row(t.rejected)], **_meta(t)}
        elif t.kind == "evaluative" and t.reward != 0:
            yield {"prompt": prompt, "completion": [message_row(t.action)],
                   "label": t.reward > 0, **_meta(t)}


def write_rows(rows: Iterable[dict[str, Any]], out: str | Path) -> int:
    """Write rows as JSON lines, or Parquet when ``out`` ends in ``.parquet``; returns count.

    Raises:
        RuntimeError: Parquet asked for without ``pyarrow`` installed.
    """
    out = Path(out)
    if out.suffix == ".parquet":
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise RuntimeError("--out *.parquet needs pyarrow (pip install pyarrow)") from None
        table = pa.Table.from_pylist(list(rows))
        pq.write_table(table, out)
        return int(table.num_rows)
    encoder = msgspec.json.Encoder()
    written = 0
    with open(out, "wb") as fh:
        for row in rows:
            fh.write(encoder.encode(row) + b"\n")
            written += 1
    return written

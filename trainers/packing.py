"""Prefix packing: forward a shared prefix once and read every action's log-probs from it.

The interactions of one session share most of their context. With per-message rendering
(``chat.py``) the token sequence ``context_k + action_k`` of turn k is a prefix of turn k+1's
sequence, and a causal LM's log-prob of a token depends only on the tokens before it. So a
batch only needs to forward its *maximal* sequences ("carriers"); every other sequence that
is a prefix of a carrier reads its action's log-probs from the carrier's logits. Exact, model
agnostic (no attention-mask surgery), and on a 10-turn session it forwards one sequence
instead of ten.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

LogitsFn = Callable[[torch.Tensor], torch.Tensor]
"""``input_ids [C, L] -> logits [C, L, V]`` of a causal LM (right padding is harmless)."""


@dataclass(frozen=True, slots=True)
class Encoded:
    """A tokenized ``context + action`` sequence.

    Attributes:
        ids: prompt then action token ids.
        action_start: index in ``ids`` of the first action token.
        tool_arg_mask: one flag per action token: inside a tool call's arguments.
    """

    ids: tuple[int, ...]
    action_start: int
    tool_arg_mask: tuple[bool, ...]

    @property
    def action_len(self) -> int:
        """Number of action tokens."""
        return len(self.ids) - self.action_start


@dataclass(frozen=True, slots=True)
class Packing:
    """Which carrier each sequence is read from.

    Attributes:
        carriers: the sequences actually forwarded.
        owner: ``owner[i]`` is the carrier that sequence i is a prefix of.
    """

    carriers: list[tuple[int, ...]]
    owner: list[int]

    @property
    def forward_tokens(self) -> int:
        """Tokens the model forwards for this packing."""
        return sum(len(c) for c in self.carriers)


def pack_prefixes(seqs: Sequence[tuple[int, ...]], share: bool = True) -> Packing:
    """Assign each sequence to a carrier it is a prefix of (itself if none).

    Longest first, so a carrier is always a maximal sequence; candidates are looked up by
    their first token block, which keeps the scan short when a batch mixes sessions.

    >>> p = pack_prefixes([(1, 2), (1, 2, 3), (4,)])
    >>> p.carriers, p.owner
    ([(1, 2, 3), (4,)], [0, 0, 1])
    """
    if not share:
        return Packing(carriers=list(seqs), owner=list(range(len(seqs))))
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
    carriers: list[tuple[int, ...]] = []
    by_head: dict[tuple[int, ...], list[int]] = {}
    owner = [0] * len(seqs)
    head_len = 16
    for i in order:
        seq = seqs[i]
        n = len(seq)
        found = -1
        # Sequences shorter than the key could hide under any head: scan all carriers.
        candidates = by_head.get(seq[:head_len], ()) if n >= head_len else range(len(carriers))
        for c in candidates:
            if carriers[c][:n] == seq:
                found = c
                break
        if found < 0:
            found = len(carriers)
            carriers.append(seq)
            by_head.setdefault(seq[:head_len], []).append(found)
        owner[i] = found
    return Packing(carriers=carriers, owner=owner)


def packed_action_logprobs(logits_fn: LogitsFn, encoded: Sequence[Encoded],
                           device: torch.device, pad_id: int = 0,
                           share: bool = True) -> tuple[list[torch.Tensor], Packing]:
    """Per-token log-probs of every sequence's action tokens, forwarding shared prefixes once.

    Gradients flow when grad mode is on (the caller decides with ``torch.no_grad()``).

    Args:
        logits_fn: the model.
        encoded: the sequences to score.
        device: where to put the batch.
        pad_id: right-padding token (never read: the model is causal).
        share: forward each shared prefix once; False forwards every sequence.

    Returns:
        ``(logprobs, packing)``: ``logprobs[i]`` has ``encoded[i].action_len`` entries.
    """
    if not encoded:
        return [], Packing([], [])
    packing = pack_prefixes([e.ids for e in encoded], share=share)
    longest = max(len(c) for c in packing.carriers)
    batch = torch.full((len(packing.carriers), longest), pad_id, dtype=torch.long)
    for row, carrier in enumerate(packing.carriers):
        batch[row, :len(carrier)] = torch.tensor(carrier, dtype=torch.long)
    batch = batch.to(device)
    logits = logits_fn(batch)
    # Only the positions that predict some action token need a softmax: from the earliest
    # action start among a carrier's members to its end.
    first = [len(c) for c in packing.carriers]
    for enc, c in zip(encoded, packing.owner, strict=True):
        first[c] = min(first[c], max(enc.action_start, 1))
    per_carrier: list[torch.Tensor] = []
    for row, carrier in enumerate(packing.carriers):
        lo, hi = first[row] - 1, len(carrier) - 1
        targets = batch[row, lo + 1:hi + 1]
        logp = torch.log_softmax(logits[row, lo:hi].float(), dim=-1)
        per_carrier.append(logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1))
    out: list[torch.Tensor] = []
    for enc, c in zip(encoded, packing.owner, strict=True):
        offset = first[c] - 1
        start = enc.action_start - 1 - offset
        out.append(per_carrier[c][start:start + enc.action_len])
    return out, packing

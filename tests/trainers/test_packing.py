"""Prefix packing: which sequences share a forward, and that sharing changes no log-prob."""

from __future__ import annotations

import torch

from nextstate.extractors.types import Message
from nextstate.trainers.packing import pack_prefixes


def test_pack_prefixes_assigns_prefixes_to_their_longest_carrier() -> None:
    """A chain of prefixes is forwarded once; a diverging sequence gets its own carrier."""
    seqs = [(1, 2, 3), (1, 2, 3, 4, 5), (1, 2, 9), (1,)]
    packing = pack_prefixes(seqs)
    assert packing.carriers == [(1, 2, 3, 4, 5), (1, 2, 9)]
    assert packing.owner == [0, 0, 1, 0]
    assert packing.forward_tokens == 8
    assert pack_prefixes(seqs, share=False).forward_tokens == 12


def test_session_turns_share_one_forward_with_identical_logprobs(tiny_policy) -> None:
    """Turn k's sequence is a prefix of turn k+1's; shared and unshared log-probs agree."""
    policy = tiny_policy()
    history: list[Message] = [Message(role="user", content="start")]
    encoded = []
    for turn in range(4):
        action = Message(role="assistant", content=f"answer {turn}")
        encoded.append(policy.encode(history, action))
        history += [action, Message(role="user", content=f"follow up {turn}")]
    with torch.no_grad():
        shared, packing = policy.packed_logprobs(encoded, share_prefixes=True)
        plain, plain_packing = policy.packed_logprobs(encoded, share_prefixes=False)
    assert len(packing.carriers) == 1
    assert plain_packing.forward_tokens > 2 * packing.forward_tokens
    for a, b in zip(shared, plain, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)

"""The tiny built-in policy: encoding, tool-argument spans, scoring, sampling, save/load."""

from __future__ import annotations

import json

import torch

from nextstate.extractors.types import Message, ToolCall
from nextstate.trainers.checkpoint import load_policy
from nextstate.trainers.tiny import ByteTokenizer

from .conftest import CONTEXT, GOOD


def test_byte_tokenizer_round_trips_text_with_specials_and_offsets() -> None:
    """Special tokens are single ids; every byte of a multi-byte char maps to that char."""
    tok = ByteTokenizer()
    text = "<|im_start|>user\nhé<|im_end|>\n"
    ids, offsets = tok.encode(text)
    assert tok.decode(ids) == text
    assert ids[0] == tok.special["<|im_start|>"] and offsets[0] == (0, 12)
    assert offsets[-4:-2] == [(18, 19), (18, 19)]  # the two bytes of "é"


def test_tool_arg_mask_covers_exactly_the_arguments(tiny_policy) -> None:
    """The masked action tokens decode to the tool call's arguments text."""
    policy = tiny_policy()
    enc = policy.encode(CONTEXT, GOOD)
    action = enc.ids[enc.action_start:]
    masked = [t for t, m in zip(action, enc.tool_arg_mask, strict=True) if m]
    assert policy.decode(masked) == GOOD.tool_calls[0].arguments
    assert len(enc.tool_arg_mask) == enc.action_len


def test_action_logprobs_with_and_without_grad(tiny_policy) -> None:
    """Scores are negative per-token log-probs; grad=True lets gradients reach the weights."""
    policy = tiny_policy()
    lp = policy.action_logprobs(CONTEXT, GOOD)
    assert not lp.requires_grad and (lp < 0).all()
    policy.action_logprobs(CONTEXT, GOOD, grad=True).sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in policy.parameters())


def test_generate_reproduces_a_learned_completion_and_scores_it(tiny_policy) -> None:
    """After fitting "hello" for a context, greedy sampling emits it and it outscores others."""
    policy = tiny_policy()
    context = [Message(role="user", content="hi")]
    target = Message(role="assistant", content="hello")
    optimizer = torch.optim.Adam(policy.trainable_parameters(), lr=3e-3)
    for _ in range(60):
        optimizer.zero_grad()
        (-policy.action_logprobs(context, target, grad=True).sum()).backward()
        optimizer.step()
    assert policy.generate(context, max_new_tokens=12, temperature=0) == "hello"
    sampled = policy.generate(context, max_new_tokens=12,
                              generator=torch.Generator().manual_seed(1))
    assert isinstance(sampled, str)
    assert policy.logprob_of(context, "hello") > policy.logprob_of(context, "world")


def test_save_load_gives_identical_logprobs(tiny_policy, tmp_path) -> None:
    """A saved policy reloads (safetensors + JSON) to exactly the same log-probs."""
    policy = tiny_policy(seed=3)
    action = Message(role="assistant", content="x",
                     tool_calls=(ToolCall(id="1", name="f", arguments="{}"),))
    policy.save(tmp_path / "p")
    loaded = load_policy(tmp_path / "p")
    torch.testing.assert_close(policy.action_logprobs(CONTEXT, action),
                               loaded.action_logprobs(CONTEXT, action), rtol=0, atol=0)


def test_long_context_is_cut_from_the_left(tiny_policy) -> None:
    """A context longer than max_length keeps the action and the newest tokens."""
    policy = tiny_policy(max_length=64)
    context = [Message(role="user", content="a" * 200)]
    enc = policy.encode(context, Message(role="assistant", content="ok"))
    assert len(enc.ids) == 64 and policy.decode(enc.ids[enc.action_start:]).startswith("ok")
    assert policy.action_logprobs(context, Message(role="assistant", content="ok")).shape[0] == 4


def test_an_action_longer_than_max_length_keeps_its_head(tiny_policy) -> None:
    """The model has no position past max_length: an action longer than that (3,300 characters
    for the byte-level policy at its default 2048) raised an IndexError in the trainer. Its
    head is scored now, after one context token, with its tool-argument mask cut alike."""
    policy = tiny_policy(max_length=64)
    call = ToolCall(id="c1", name="write", arguments=json.dumps({"text": "x" * 200}))
    action = Message(role="assistant", content="Writing it.", tool_calls=(call,))
    enc = policy.encode([Message(role="user", content="hi")], action)
    assert len(enc.ids) == 64 and enc.action_start == 1
    assert len(enc.tool_arg_mask) == enc.action_len == 63 and any(enc.tool_arg_mask)
    whole = tiny_policy(max_length=2048).encode([Message(role="user", content="hi")], action)
    start = whole.action_start
    assert enc.ids == whole.ids[start - 1:start + 63]
    assert enc.tool_arg_mask == whole.tool_arg_mask[:63]
    assert policy.action_logprobs([], action).shape[0] == 63
    assert policy.encode_text([], "y" * 500).action_len == 63

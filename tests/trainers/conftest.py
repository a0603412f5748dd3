"""Fixture factories for the trainer tests: tuples, tiny policies, a tiny HF model on disk."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from nextstate.extractors.types import Message, ScoredTuple, ToolCall
from nextstate.trainers.tiny import TinyConfig, TinyPolicy
from nextstate.trainers.trainer import Trainer


@pytest.fixture(autouse=True)
def _trainer_device(monkeypatch: pytest.MonkeyPatch) -> None:
    """``NEXTSTATE_TEST_DEVICE=cuda`` runs every Trainer of these tests on that device (the
    GPU check, where a machine has one; CI has none and runs them on the CPU)."""
    device = os.environ.get("NEXTSTATE_TEST_DEVICE")
    if not device:
        return
    build = Trainer.__init__

    def on_device(self: Trainer, config: Any, *args: Any, **kwargs: Any) -> None:
        build(self, dataclasses.replace(config, device=device), *args, **kwargs)

    monkeypatch.setattr(Trainer, "__init__", on_device)

CONTEXT = (Message(role="system", content="You are a helpful agent."),
           Message(role="user", content="What is the weather in Paris?"))
GOOD = Message(role="assistant", content="Let me check.",
               tool_calls=(ToolCall(id="c1", name="weather", arguments='{"city": "Paris"}'),))
BAD = Message(role="assistant", content="I refuse.")


def make_tuple(kind: str = "evaluative", *, action: Message = GOOD, reward: float = 0.0,
               context: tuple[Message, ...] = CONTEXT, session: str = "s1", index: int = 1,
               **fields: Any) -> ScoredTuple:
    """A scored tuple with sensible defaults (override any field)."""
    return ScoredTuple(interaction_id=f"{session}#{index}", session_id=session,
                       extractor=fields.pop("extractor", "test"), kind=kind,  # type: ignore[arg-type]
                       source=fields.pop("source", "user"), context=context, action=action,
                       reward=reward, **fields)


def session_turns(session: int, turns: int) -> list[ScoredTuple]:
    """One multi-turn session: turn k's context is turn k-1's context, action and result."""
    context: tuple[Message, ...] = (Message(role="system", content="You are a weather bot."),)
    out = []
    for k in range(turns):
        context += (Message(role="user", content=f"Session {session}, turn {k}: and Oslo?"),)
        action = Message(role="assistant", content=f"Checking ({session}/{k}).")
        out.append(make_tuple(action=action, context=context, session=f"s{session}",
                              index=len(context), reward=(-1.0) ** k, policy_version="0"))
        context += (action, Message(role="tool", content=f"{k} degrees"))
    return out


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Tiny models run fastest single-threaded; spinning OpenMP threads on a busy 2-core
    machine make each small matmul ~1000x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def tuple_factory() -> Callable[..., ScoredTuple]:
    """Builds scored tuples."""
    return make_tuple


@pytest.fixture
def tiny_policy() -> Callable[..., TinyPolicy]:
    """Builds small, seeded tiny policies."""
    def build(seed: int = 0, **shape: Any) -> TinyPolicy:
        return TinyPolicy(TinyConfig(**({"d_model": 48, "n_layers": 2, "n_heads": 4} | shape)),
                          seed=seed)
    return build


def build_hf_model_dir(path: Path) -> Path:
    """Save a randomly initialised 2-layer GPT-2 and a locally trained BPE tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    corpus = ["You are a helpful agent.", "What is the weather in Paris?", "Let me check.",
              '<tool_call>\n{"name": "weather", "arguments": {"city": "Paris"}}\n</tool_call>',
              "I refuse.", "user assistant system tool"]
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>",
                                   additional_special_tokens=["<|im_start|>", "<|im_end|>"])
    fast.chat_template = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}"
                          "<|im_end|>\n{% endfor %}"
                          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    config = GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=512, vocab_size=len(fast),
                        bos_token_id=0, eos_token_id=fast.eos_token_id, resid_pdrop=0.0,
                        embd_pdrop=0.0, attn_pdrop=0.0)
    GPT2LMHeadModel(config).save_pretrained(path)
    fast.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def hf_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny GPT-2 + tokenizer saved with save_pretrained (no hub download)."""
    return build_hf_model_dir(tmp_path_factory.mktemp("gpt2"))

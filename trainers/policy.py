"""The policy a trainer needs, and the causal-LM plumbing both implementations share.

A policy renders a context and an action to token ids (``encode``), scores an action's tokens
with or without grad (``action_logprobs``, ``packed_logprobs``), samples completions for the
acting agent (``generate``), and saves/loads its weights with safetensors only. Subclasses
(``tiny.TinyPolicy``, ``hf.HFPolicy``) supply a tokenizer with character offsets, a logits
function and the file format.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from nextstate.extractors.types import Message
from nextstate.trainers.chat import IM_END, generation_prompt, render_action, render_message
from nextstate.trainers.packing import Encoded, Packing, packed_action_logprobs

POLICY_FILE = "nextstate_policy.json"
"""Written into every saved policy directory: which class loads it (see ``load_policy``)."""


@runtime_checkable
class Policy(Protocol):
    """What the trainer uses of a policy."""

    device: torch.device

    def encode(self, context: Sequence[Message], action: Message) -> Encoded: ...

    def packed_logprobs(self, encoded: Sequence[Encoded], share_prefixes: bool = True
                        ) -> tuple[list[torch.Tensor], Packing]: ...

    def trainable_parameters(self) -> list[nn.Parameter]: ...

    def reference(self) -> Policy: ...

    def state_dict(self) -> dict[str, torch.Tensor]: ...

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None: ...

    def save(self, path: Path) -> None: ...

    def load_weights(self, path: Path) -> None: ...

    def to(self, device: str | torch.device) -> Policy: ...


def _overlaps(span: tuple[int, int], spans: Sequence[tuple[int, int]]) -> bool:
    return any(span[0] < end and span[1] > start for start, end in spans)


class CausalLMPolicy(abc.ABC):
    """Shared encode / score / generate logic over a tokenizer with offsets and a causal LM.

    Messages are tokenized one by one and cached (``Message`` is a frozen, hashable struct),
    so a session's contexts cost one tokenization per message however often they are
    sampled, and sequences of one session are exact token prefixes of each other.
    """

    device: torch.device
    max_length: int | None = None
    _cache_limit = 65536

    def __init__(self) -> None:
        self._message_cache: dict[Message, tuple[int, ...]] = {}
        self._header_ids: tuple[int, ...] | None = None

    # -- what subclasses provide -------------------------------------------------------
    @abc.abstractmethod
    def tokenize(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Token ids of ``text`` and each token's ``[start, end)`` character offsets."""

    @abc.abstractmethod
    def logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        """``input_ids [B, L] -> logits [B, L, V]``."""

    @property
    @abc.abstractmethod
    def module(self) -> nn.Module:
        """The torch module holding the weights."""

    @property
    @abc.abstractmethod
    def pad_id(self) -> int:
        """Token used for right padding."""

    @property
    @abc.abstractmethod
    def end_id(self) -> int:
        """The ``<|im_end|>`` token that ends a message (stops generation)."""

    @abc.abstractmethod
    def decode(self, ids: Sequence[int]) -> str:
        """Text of token ids."""

    @abc.abstractmethod
    def save(self, path: Path) -> None:
        """Write the policy to a directory (safetensors + JSON only)."""

    @abc.abstractmethod
    def load_weights(self, path: Path) -> None:
        """Load weights saved by :meth:`save` into this policy, in place."""

    @abc.abstractmethod
    def reference(self) -> CausalLMPolicy:
        """A frozen copy of the current policy (the KL / DPO reference)."""

    # -- encoding ----------------------------------------------------------------------
    def _message_ids(self, message: Message) -> tuple[int, ...]:
        ids = self._message_cache.get(message)
        if ids is None:
            ids = tuple(self.tokenize(render_message(message))[0])
            if len(self._message_cache) >= self._cache_limit:
                self._message_cache.clear()
            self._message_cache[message] = ids
        return ids

    def prompt_ids(self, context: Sequence[Message]) -> list[int]:
        """Token ids of the rendered context followed by the assistant header."""
        if self._header_ids is None:
            self._header_ids = tuple(self.tokenize(generation_prompt())[0])
        ids: list[int] = []
        for message in context:
            ids.extend(self._message_ids(message))
        ids.extend(self._header_ids)
        return ids

    def encode(self, context: Sequence[Message], action: Message) -> Encoded:
        """Tokenize ``context + action`` and mark the action's tool-argument tokens.

        A sequence longer than ``max_length`` loses its oldest context tokens, and when the
        action alone is longer, the action's tail too (see :meth:`_fit`).
        """
        prompt = self.prompt_ids(context)
        text, spans = render_action(action)
        action_ids, offsets = self.tokenize(text)
        return self._fit(prompt, action_ids, tuple(_overlaps(o, spans) for o in offsets))

    def encode_text(self, context: Sequence[Message], completion: str) -> Encoded:
        """Tokenize a raw completion (what ``generate`` returns) after ``context``."""
        prompt = self.prompt_ids(context)
        action_ids, _ = self.tokenize(completion)
        return self._fit(prompt, action_ids, (False,) * len(action_ids))

    def _fit(self, prompt: list[int], action_ids: list[int], mask: tuple[bool, ...]
             ) -> Encoded:
        """``prompt + action`` within ``max_length``: the oldest context tokens go first (one
        is kept), then the action's tail. The model has no position past ``max_length``: an
        action longer than that (3,300 characters for the byte-level tiny policy) raised an
        IndexError in the trainer, which stopped the daemon's training for good."""
        ids = prompt + action_ids
        start = len(prompt)
        limit = self.max_length
        if limit is not None and len(ids) > limit:
            cut = min(len(ids) - limit, start - 1)
            ids, start = ids[cut:cut + limit], start - cut
            mask = mask[:limit - start]
        return Encoded(ids=tuple(ids), action_start=start, tool_arg_mask=mask)

    # -- scoring -----------------------------------------------------------------------
    def packed_logprobs(self, encoded: Sequence[Encoded], share_prefixes: bool = True
                        ) -> tuple[list[torch.Tensor], Packing]:
        """Action-token log-probs of many sequences (grad follows ``torch.is_grad_enabled``)."""
        return packed_action_logprobs(self.logits, encoded, self.device, pad_id=self.pad_id,
                                      share=share_prefixes)

    def action_logprobs(self, context: Sequence[Message], action: Message,
                        grad: bool = False) -> torch.Tensor:
        """Per-token log-probs of ``action``'s tokens given ``context``."""
        with torch.set_grad_enabled(grad):
            return self.packed_logprobs([self.encode(context, action)])[0][0]

    def logprob_of(self, context: Sequence[Message], completion: str) -> float:
        """Total log-prob of a candidate completion text (for ranking candidates)."""
        with torch.no_grad():
            lp = self.packed_logprobs([self.encode_text(context, completion)])[0][0]
        return float(lp.sum())

    @torch.no_grad()
    def generate(self, context: Sequence[Message], max_new_tokens: int = 64,
                 temperature: float = 1.0, generator: torch.Generator | None = None) -> str:
        """Sample a completion after ``context`` until ``<|im_end|>`` or the token limit.

        Returns the completion text without the end marker.
        """
        ids = self.prompt_ids(context)
        out: list[int] = []
        for _ in range(max_new_tokens):
            window = ids + out
            if self.max_length is not None:
                window = window[-self.max_length:]
            logits = self.logits(torch.tensor([window], device=self.device))[0, -1].float()
            if temperature <= 0:
                token = int(logits.argmax())
            else:
                probs = torch.softmax(logits / temperature, dim=-1).cpu()
                token = int(torch.multinomial(probs, 1, generator=generator))
            if token == self.end_id:
                break
            out.append(token)
        return self.decode(out).replace(IM_END, "")

    # -- weights -----------------------------------------------------------------------
    def trainable_parameters(self) -> list[nn.Parameter]:
        """The parameters an optimizer should update."""
        return [p for p in self.module.parameters() if p.requires_grad]

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Trainable weights by name (all weights for a full model, the adapter for LoRA)."""
        names = {id(p) for p in self.trainable_parameters()}
        return {k: v.detach().clone() for k, v in self.module.named_parameters()
                if id(v) in names}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Load weights from :meth:`state_dict` in place."""
        params = dict(self.module.named_parameters())
        missing = set(self.state_dict()) - set(state)
        if missing:
            raise KeyError(f"policy state lacks {sorted(missing)[:5]}")
        with torch.no_grad():
            for name, value in state.items():
                params[name].copy_(value)

    def to(self, device: str | torch.device) -> CausalLMPolicy:
        """Move the weights to ``device`` (from the trainer's config)."""
        self.device = torch.device(device)
        self.module.to(self.device)
        return self

    def parameters(self) -> Iterator[nn.Parameter]:
        """All parameters of the underlying module."""
        return self.module.parameters()

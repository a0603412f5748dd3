"""A tiny byte-level transformer policy: fast on CPU, for tests and the closed-loop demo.

Vocabulary: the 256 byte values plus ``<|im_start|>``, ``<|im_end|>`` and a pad token, so any
text encodes and character offsets are exact. Pre-LayerNorm decoder blocks with PyTorch's
scaled-dot-product attention, learned positions, tied input/output embeddings.

Example:
    >>> from nextstate.extractors.types import Message
    >>> policy = TinyPolicy(TinyConfig(d_model=32, n_layers=1, n_heads=2), seed=0)
    >>> lp = policy.action_logprobs([Message(role="user", content="hi")],
    ...                             Message(role="assistant", content="yo"))
    >>> lp.shape  # "yo" + "<|im_end|>" + "\\n"
    torch.Size([4])
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from nextstate.trainers.chat import SPECIAL_TOKENS
from nextstate.trainers.policy import POLICY_FILE, CausalLMPolicy

WEIGHTS_FILE = "model.safetensors"


@dataclass(frozen=True)
class TinyConfig:
    """Shape of the tiny transformer."""

    d_model: int = 64
    """Width of the residual stream."""
    n_layers: int = 2
    """Decoder blocks."""
    n_heads: int = 4
    """Attention heads (must divide ``d_model``)."""
    max_length: int = 2048
    """Longest sequence (learned positions); longer contexts are cut from the left."""


class ByteTokenizer:
    """UTF-8 bytes plus ChatML special tokens, with character offsets for every token."""

    def __init__(self) -> None:
        self.special = {tok: 256 + i for i, tok in enumerate(SPECIAL_TOKENS)}
        self.pad_id = 256 + len(SPECIAL_TOKENS)
        self.vocab_size = self.pad_id + 1
        self._split = re.compile("(" + "|".join(re.escape(t) for t in SPECIAL_TOKENS) + ")")
        self._by_id = {v: k for k, v in self.special.items()}

    def encode(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Token ids and their ``[start, end)`` character offsets in ``text``."""
        ids: list[int] = []
        offsets: list[tuple[int, int]] = []
        pos = 0
        for piece in self._split.split(text):
            if not piece:
                continue
            special = self.special.get(piece)
            if special is not None:
                ids.append(special)
                offsets.append((pos, pos + len(piece)))
            elif piece.isascii():
                ids.extend(piece.encode())
                offsets.extend((pos + i, pos + i + 1) for i in range(len(piece)))
            else:
                for i, char in enumerate(piece):
                    raw = char.encode()
                    ids.extend(raw)
                    offsets.extend([(pos + i, pos + i + 1)] * len(raw))
            pos += len(piece)
        return ids, offsets

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ids (invalid UTF-8 replaced, pad dropped)."""
        out: list[str] = []
        raw = bytearray()
        for token in ids:
            if token < 256:
                raw.append(token)
                continue
            out.append(raw.decode(errors="replace"))
            raw.clear()
            out.append(self._by_id.get(token, ""))
        out.append(raw.decode(errors="replace"))
        return "".join(out)


class _Block(nn.Module):
    def __init__(self, cfg: TinyConfig) -> None:
        super().__init__()
        self.n_heads = cfg.n_heads
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.mlp = nn.Sequential(nn.Linear(cfg.d_model, 4 * cfg.d_model), nn.GELU(),
                                 nn.Linear(4 * cfg.d_model, cfg.d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.n_heads, d // self.n_heads).unbind(2)
        att = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                             v.transpose(1, 2), is_causal=True)
        x = x + self.proj(att.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp(self.ln2(x))


class TinyTransformer(nn.Module):
    """The decoder: embeddings, blocks, final norm, tied output head."""

    def __init__(self, cfg: TinyConfig, vocab_size: int) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab_size, cfg.d_model)
        self.pos = nn.Embedding(cfg.max_length, cfg.d_model)
        self.blocks = nn.ModuleList(_Block(cfg) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        nn.init.normal_(self.tok.weight, std=0.02)
        nn.init.normal_(self.pos.weight, std=0.02)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(ids.shape[1], device=ids.device)
        x = self.tok(ids) + self.pos(positions)
        for block in self.blocks:
            x = block(x)
        return self.ln_f(x) @ self.tok.weight.T


class TinyPolicy(CausalLMPolicy):
    """The built-in policy: :class:`TinyTransformer` over :class:`ByteTokenizer`.

    Args:
        config: model shape.
        seed: seeds the initial weights (so two policies built alike are identical).
        device: where the weights live.
    """

    def __init__(self, config: TinyConfig | None = None, seed: int = 0,
                 device: str | torch.device = "cpu") -> None:
        super().__init__()
        self.config = config or TinyConfig()
        self.tokenizer = ByteTokenizer()
        self.max_length = self.config.max_length
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.model = TinyTransformer(self.config, self.tokenizer.vocab_size)
        self.model.eval()  # no dropout anywhere; eval keeps it that way if one is added
        self.to(device)

    def tokenize(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        return self.tokenizer.encode(text)

    def logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids)

    @property
    def module(self) -> nn.Module:
        return self.model

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_id

    @property
    def end_id(self) -> int:
        return self.tokenizer.special["<|im_end|>"]

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(ids)

    def reference(self) -> TinyPolicy:
        ref = copy.copy(self)
        ref.model = copy.deepcopy(self.model).requires_grad_(False)
        ref._message_cache = self._message_cache  # same tokenizer: share the cache
        return ref

    def save(self, path: Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        save_file(state, str(path / WEIGHTS_FILE))
        (path / POLICY_FILE).write_text(json.dumps({"kind": "tiny",
                                                    "config": asdict(self.config)}))

    def load_weights(self, path: Path) -> None:
        state = load_file(str(Path(path) / WEIGHTS_FILE), device=str(self.device))
        self.model.load_state_dict(state)

    @classmethod
    def load(cls, path: Path, device: str | torch.device = "cpu") -> TinyPolicy:
        """Build a policy from a directory written by :meth:`save`."""
        meta = json.loads((Path(path) / POLICY_FILE).read_text())
        policy = cls(TinyConfig(**meta["config"]), device=device)
        policy.load_weights(path)
        return policy

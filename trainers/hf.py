"""A Hugging Face causal LM policy, optionally with a PEFT LoRA adapter (the production case).

Loading is the real ``from_pretrained(path)``; with LoRA only the adapter trains, and
:meth:`HFPolicy.save` writes the adapter directory (``adapter_model.safetensors`` +
``adapter_config.json``) that vLLM and PEFT load, plus the tokenizer. Token-level credit
uses the fast tokenizer's offset mapping to find the tool-argument tokens.

Example (``path`` holds a model and a fast tokenizer with ``<|im_start|>``/``<|im_end|>``)::

    policy = HFPolicy.from_pretrained(path, lora={"r": 8, "target_modules": ["c_attn"]})
    policy.save(out_dir)                    # adapter only
    same = HFPolicy.load(out_dir)           # base from adapter_config.json + adapter
"""

from __future__ import annotations

import contextlib
import copy
import json
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from nextstate.trainers.chat import IM_END
from nextstate.trainers.policy import POLICY_FILE, CausalLMPolicy

ADAPTER_WEIGHTS = "adapter_model.safetensors"


@contextlib.contextmanager
def _quiet_peft():  # type: ignore[no-untyped-def]
    """Silence peft's use of an attribute transformers 5 deprecated (not ours to fix)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*",
                                category=FutureWarning)
        yield


class HFPolicy(CausalLMPolicy):
    """A ``transformers`` causal LM (+ optional LoRA) behind the policy protocol.

    Args:
        model: a ``PreTrainedModel`` or a ``peft.PeftModel`` wrapping one.
        tokenizer: a fast tokenizer (offset mappings are required) that knows ``<|im_end|>``.
        base_model: path the base model loads from (recorded for LoRA adapters).
        device: where the weights live.
    """

    def __init__(self, model: nn.Module, tokenizer: Any, base_model: str | None = None,
                 device: str | torch.device = "cpu") -> None:
        super().__init__()
        from peft import PeftModel

        if not getattr(tokenizer, "is_fast", False):
            raise TypeError("HFPolicy needs a fast tokenizer (for offset mappings)")
        self.model = model
        self.tokenizer = tokenizer
        self.is_lora = isinstance(model, PeftModel)
        self.base_model = base_model
        self._adapter_disabled = False
        config = model.config
        self.max_length = getattr(config, "max_position_embeddings", None) or getattr(
            config, "n_positions", None)
        end = tokenizer.convert_tokens_to_ids(IM_END)
        if end is None or end == tokenizer.unk_token_id:
            raise ValueError(f"tokenizer has no {IM_END} token")
        self._end_id = int(end)
        self.model.eval()  # no dropout: log-probs must match the behaviour policy's
        self.to(device)

    @classmethod
    def from_pretrained(cls, path: str | Path, *, lora: Any = None,
                        device: str | torch.device = "cpu", dtype: torch.dtype | None = None
                        ) -> HFPolicy:
        """Load a model and tokenizer with ``from_pretrained`` and optionally add LoRA.

        Args:
            path: a local model directory (or hub id where a hub is reachable).
            lora: a ``peft.LoraConfig`` or a mapping of its arguments; None trains all
                weights.
            device: where the weights live.
            dtype: weights' dtype (default: as saved).
        """
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(path))
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)
        if lora is not None:
            if isinstance(lora, Mapping):
                lora = LoraConfig(task_type="CAUSAL_LM", **lora)
            with _quiet_peft():
                model = get_peft_model(model, lora)
        return cls(model, tokenizer, base_model=str(path), device=device)

    @classmethod
    def load(cls, path: Path, device: str | torch.device = "cpu",
             trainable: bool = False) -> HFPolicy:
        """Load a policy written by :meth:`save` (an adapter directory or a full model)."""
        from peft import PeftModel
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = Path(path)
        meta = json.loads((path / POLICY_FILE).read_text())
        tokenizer = AutoTokenizer.from_pretrained(str(path))
        if meta.get("lora"):
            base = AutoModelForCausalLM.from_pretrained(meta["base_model"])
            with _quiet_peft():
                model = PeftModel.from_pretrained(base, str(path), is_trainable=trainable)
            return cls(model, tokenizer, base_model=meta["base_model"], device=device)
        return cls(AutoModelForCausalLM.from_pretrained(str(path)), tokenizer,
                   base_model=str(path), device=device)

    def tokenize(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]

    def logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self._adapter_disabled:
            with self.model.disable_adapter():
                return self.model(input_ids=input_ids).logits
        return self.model(input_ids=input_ids).logits

    @property
    def module(self) -> nn.Module:
        return self.model

    @property
    def pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return int(pad if pad is not None else self._end_id)

    @property
    def end_id(self) -> int:
        return self._end_id

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)

    def reference(self) -> HFPolicy:
        """The frozen reference: the base model with the adapter disabled (LoRA: no copy),
        else a frozen copy of the model."""
        ref = copy.copy(self)
        if self.is_lora:
            ref._adapter_disabled = True
        else:
            ref.model = copy.deepcopy(self.model).requires_grad_(False)
        return ref

    def save(self, path: Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(str(path), safe_serialization=True)
        self.tokenizer.save_pretrained(str(path))
        (path / POLICY_FILE).write_text(json.dumps(
            {"kind": "hf", "lora": self.is_lora, "base_model": self.base_model}))

    def load_weights(self, path: Path) -> None:
        path = Path(path)
        if self.is_lora:
            from peft import set_peft_model_state_dict

            state = load_file(str(path / ADAPTER_WEIGHTS), device=str(self.device))
            result = set_peft_model_state_dict(self.model, state)
            if result.unexpected_keys:
                raise KeyError(f"adapter has unexpected keys {result.unexpected_keys[:5]}")
            return
        files = sorted(path.glob("model*.safetensors"))
        if not files:
            raise FileNotFoundError(f"no safetensors weights in {path}")
        state: dict[str, torch.Tensor] = {}
        for file in files:
            state |= load_file(str(file), device=str(self.device))
        result = self.model.load_state_dict(state, strict=False)
        if result.unexpected_keys:
            raise KeyError(f"weights have unexpected keys {result.unexpected_keys[:5]}")

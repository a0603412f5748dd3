"""The Hugging Face policy: real from_pretrained loading, LoRA training and adapter publishing."""

from __future__ import annotations

import torch

from nextstate.trainers.checkpoint import latest_checkpoint, load_policy
from nextstate.trainers.config import TrainerConfig
from nextstate.trainers.hf import HFPolicy
from nextstate.trainers.sampling import ListBuffer
from nextstate.trainers.trainer import Trainer

from .conftest import BAD, CONTEXT, GOOD, make_tuple

LORA = {"r": 4, "lora_alpha": 8, "target_modules": ["c_attn"], "fan_in_fan_out": True}


def test_rendering_matches_the_tokenizers_chat_template(hf_model_dir) -> None:
    """Our ChatML prompt ids equal apply_chat_template's for a text-only context."""
    policy = HFPolicy.from_pretrained(hf_model_dir)
    messages = [{"role": m.role, "content": m.content} for m in CONTEXT]
    expected = policy.tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                                    tokenize=False)
    assert policy.decode(policy.prompt_ids(CONTEXT)) == expected


def test_offsets_mark_the_tool_argument_tokens(hf_model_dir) -> None:
    """The fast tokenizer's offsets select the tokens of the tool call's arguments."""
    policy = HFPolicy.from_pretrained(hf_model_dir)
    enc = policy.encode(CONTEXT, GOOD)
    masked = [t for t, m in zip(enc.ids[enc.action_start:], enc.tool_arg_mask, strict=True)
              if m]
    assert GOOD.tool_calls[0].arguments in policy.decode(masked)
    assert 0 < len(masked) < enc.action_len


def test_lora_trains_only_the_adapter_and_publishes_it(hf_model_dir, tmp_path) -> None:
    """Steps change the adapter only; the published adapter reloads to identical log-probs."""
    policy = HFPolicy.from_pretrained(hf_model_dir, lora=LORA)
    assert all("lora_" in name for name in policy.state_dict())
    base_before = {k: v.clone() for k, v in policy.model.named_parameters() if "lora_" not in k}
    good0 = policy.action_logprobs(CONTEXT, GOOD).sum()
    tuples = [make_tuple(reward=1.0), make_tuple(action=BAD, reward=-1.0, index=2),
              make_tuple("preference", chosen=GOOD, rejected=BAD, index=3),
              make_tuple("directive", hint="check the weather", index=4)]
    config = TrainerConfig(batch_size=8, micro_batch_size=4, lr=1e-2, publish_every=5,
                           kl_weight=0.1)
    trainer = Trainer(config, policy, {"main": ListBuffer(tuples)}, tmp_path)
    for _ in range(5):
        metrics = trainer.step()
    assert {"losses/pg", "losses/opd", "losses/dpo", "losses/kl"} <= set(metrics)
    for name, value in policy.model.named_parameters():
        if "lora_" not in name:
            torch.testing.assert_close(value.cpu(), base_before[name], rtol=0, atol=0)
    assert policy.action_logprobs(CONTEXT, GOOD).sum() > good0
    latest = latest_checkpoint(tmp_path)
    adapter = latest / "policy"
    assert (adapter / "adapter_model.safetensors").is_file()
    assert (adapter / "adapter_config.json").is_file()
    assert not list(adapter.glob("model*.safetensors"))
    loaded = load_policy(latest)
    torch.testing.assert_close(loaded.to(policy.device).action_logprobs(CONTEXT, GOOD),
                               policy.action_logprobs(CONTEXT, GOOD), rtol=1e-5, atol=1e-5)
    # Resume into a fresh LoRA policy: weights and step come back.
    fresh = HFPolicy.from_pretrained(hf_model_dir, lora=LORA)
    resumed = Trainer.resume(config, fresh, {"main": ListBuffer(tuples)}, tmp_path)
    assert resumed.global_step == 5
    torch.testing.assert_close(fresh.action_logprobs(CONTEXT, GOOD),
                               policy.action_logprobs(CONTEXT, GOOD), rtol=1e-5, atol=1e-5)


def test_lora_reference_is_the_base_model(hf_model_dir) -> None:
    """The reference disables the adapter: it scores like the plain base model."""
    policy = HFPolicy.from_pretrained(hf_model_dir, lora=LORA)
    with torch.no_grad():
        for name, p in policy.model.named_parameters():
            if "lora_B" in name:
                p.fill_(0.05)
    base = HFPolicy.from_pretrained(hf_model_dir)
    reference = policy.reference()
    torch.testing.assert_close(reference.action_logprobs(CONTEXT, GOOD),
                               base.action_logprobs(CONTEXT, GOOD), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(policy.action_logprobs(CONTEXT, GOOD),
                              base.action_logprobs(CONTEXT, GOOD))


def test_full_model_save_load_round_trip(hf_model_dir, tmp_path) -> None:
    """Without LoRA the whole model is saved as safetensors and reloads identically."""
    policy = HFPolicy.from_pretrained(hf_model_dir)
    with torch.no_grad():
        next(policy.model.parameters()).add_(0.01)
    policy.save(tmp_path / "p")
    loaded = load_policy(tmp_path / "p")
    torch.testing.assert_close(loaded.action_logprobs(CONTEXT, GOOD),
                               policy.action_logprobs(CONTEXT, GOOD), rtol=0, atol=0)
    other = HFPolicy.from_pretrained(hf_model_dir)
    other.load_weights(tmp_path / "p")
    torch.testing.assert_close(other.action_logprobs(CONTEXT, GOOD),
                               policy.action_logprobs(CONTEXT, GOOD), rtol=0, atol=0)

"""Trainer benchmarks on CPU with the tiny policy: step overhead, tokens/s, prefix sharing.

1. **Overhead**: ``Trainer.step`` (sampling, staleness, encoding, packing, objectives,
   priorities, metrics) vs a plain torch loop (pre-tokenized padded tensors, forward,
   REINFORCE loss, backward, clip, AdamW) on the same batches and model, prefix sharing off
   so both forward the same tokens. Target: <= 10% overhead.
2. **Tokens/s** of the trainer, with and without prefix sharing.
3. **Prefix sharing** on a realistic multi-turn stream (10-turn tool-using sessions, every
   turn scored): forward tokens per tuple when a session's tuples share one micro-batch vs
   forwarding every tuple's full sequence. Target: >= 3x fewer.

Run: ``python benchmarks/bench_trainer.py`` (about a minute; single torch thread).
"""

from __future__ import annotations

import json
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from nextstate.extractors.types import Message, ScoredTuple, ToolCall
from nextstate.trainers.config import TrainerConfig
from nextstate.trainers.packing import pack_prefixes
from nextstate.trainers.sampling import ListBatch
from nextstate.trainers.tiny import TinyConfig, TinyPolicy
from nextstate.trainers.trainer import Trainer

CITIES = ["Paris", "Berlin", "Lisbon", "Oslo", "Rome", "Vienna", "Prague", "Madrid"]


def session_tuples(session: int, turns: int = 10, rng: random.Random | None = None
                   ) -> list[ScoredTuple]:
    """One tool-using session: each turn a user ask, an action with a tool call, a result."""
    rng = rng or random.Random(session)
    context: list[Message] = [Message(role="system", content="You are a travel assistant. "
                                      "Use tools; answer briefly.")]
    out = []
    for turn in range(turns):
        city = rng.choice(CITIES)
        context.append(Message(role="user", content=f"Turn {turn}: what about {city} on "
                                                    f"day {rng.randint(1, 28)}? Be quick."))
        args = json.dumps({"city": city, "day": rng.randint(1, 28), "units": "metric"})
        action = Message(role="assistant", content=f"Checking {city}.",
                         tool_calls=(ToolCall(id=f"c{turn}", name="forecast", arguments=args),))
        ok = rng.random() < 0.7
        out.append(ScoredTuple(
            interaction_id=f"s{session}#{len(context)}", session_id=f"s{session}",
            extractor="tool", kind="evaluative", source="tool", context=tuple(context),
            action=action, reward=0.5 if ok else -0.8, credit="tool_args",
            policy_version="0"))
        result = (f'{{"temp": {rng.randint(-5, 30)}, "sky": "clear"}}' if ok
                  else "Error: missing required argument 'date'")
        context += [action, Message(role="tool", content=result, tool_call_id=f"c{turn}")]
    return out


class ScriptedBuffer:
    """Returns pre-drawn batches in order, so the trainer and the plain loop see the same."""

    def __init__(self, batches: list[list[ScoredTuple]]) -> None:
        self.batches, self.i = batches, 0

    def sample(self, batch_size: int, current_version: int | None = None) -> ListBatch:
        batch = self.batches[self.i % len(self.batches)]
        self.i += 1
        return ListBatch(batch, np.arange(len(batch)), np.ones(len(batch)))

    def update_priorities(self, indices: np.ndarray, priorities: np.ndarray) -> None:
        pass


def plain_loop_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    ids: torch.Tensor, targets_mask: torch.Tensor, adv: torch.Tensor) -> None:
    """The reference: forward, token log-probs, REINFORCE, backward, clip, AdamW."""
    logits = model(ids)
    logp = torch.log_softmax(logits[:, :-1].float(), -1).gather(
        -1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    loss = -((logp * targets_mask).sum(1) / targets_mask.sum(1) * adv).mean()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def pretokenize(policy: TinyPolicy, batch: list[ScoredTuple]):
    encs = [policy.encode(t.context, t.action) for t in batch]
    longest = max(len(e.ids) for e in encs)
    ids = torch.full((len(encs), longest), policy.pad_id, dtype=torch.long)
    mask = torch.zeros(len(encs), longest - 1)
    for i, e in enumerate(encs):
        ids[i, :len(e.ids)] = torch.tensor(e.ids)
        arg = torch.tensor(e.tool_arg_mask, dtype=torch.float)
        mask[i, e.action_start - 1:len(e.ids) - 1] = arg
    adv = torch.tensor([t.reward for t in batch])
    return ids, mask, adv


def time_plain(shape: TinyConfig, batches: list[list[ScoredTuple]]) -> tuple[float, int]:
    """Seconds for the plain loop over ``batches`` (pre-tokenized) and tokens it forwarded."""
    policy = TinyPolicy(shape, seed=0)
    optimizer = torch.optim.AdamW(policy.trainable_parameters(), lr=1e-4)
    data = [pretokenize(policy, b) for b in batches]
    plain_loop_step(policy.model, optimizer, *data[0])  # warm-up
    start = time.perf_counter()
    for ids, mask, adv in data:
        plain_loop_step(policy.model, optimizer, ids, mask, adv)
    return time.perf_counter() - start, sum(int(d[0].numel()) for d in data)


def time_trainer(shape: TinyConfig, batches: list[list[ScoredTuple]], share: bool
                 ) -> tuple[float, float]:
    """Seconds for ``Trainer.step`` over ``batches`` and tokens it forwarded."""
    config = TrainerConfig(batch_size=len(batches[0]), micro_batch_size=len(batches[0]),
                           publish_every=0, opd_weight=0, dpo_weight=0, share_prefixes=share)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(config, TinyPolicy(shape, seed=0),
                          {"main": ScriptedBuffer(batches)}, Path(tmp))
        trainer.step()  # warm-up (fills the tokenization cache, as in steady state)
        trainer.buffers["main"].i = 0
        start = time.perf_counter()
        forward = sum(trainer.step()["charts/forward_tokens"] for _ in batches)
        return time.perf_counter() - start, forward


def main() -> None:
    torch.set_num_threads(1)
    shape = TinyConfig(d_model=64, n_layers=2, n_heads=4, max_length=4096)

    # --- 1 + 2: overhead and tokens/s on short tuples (where per-step overhead shows most)
    short = [t for s in range(40) for t in session_tuples(s, turns=2)]
    rng = random.Random(0)
    steps, rounds = 25, 3
    batches = [rng.sample(short, 8) for _ in range(steps)]
    plain, trainer = [], []
    for _ in range(rounds):  # interleaved; the best round of each is compared
        plain.append(time_plain(shape, batches))
        trainer.append(time_trainer(shape, batches, share=False))
    (p_s, p_tok), (t_s, t_tok) = min(plain), min(trainer)
    print(f"tiny policy d_model={shape.d_model} layers={shape.n_layers}, 1 CPU thread; "
          f"batches of 8 short tuples ({p_tok / steps / 8:.0f} tokens padded), "
          f"{steps} steps, best of {rounds}")
    print(f"  plain torch loop   {p_s / steps * 1e3:6.1f} ms/step  {p_tok / p_s:8.0f} tokens/s")
    print(f"  Trainer.step       {t_s / steps * 1e3:6.1f} ms/step  {t_tok / t_s:8.0f} tokens/s"
          f"  overhead {t_s / p_s - 1:+.1%} (target <= +10%)")

    # --- 3: prefix sharing on 10-turn sessions ---------------------------------------------
    policy = TinyPolicy(shape, seed=0)
    unshared = shared = n = 0
    for s in range(40):
        encs = [policy.encode(t.context, t.action) for t in session_tuples(s)]
        unshared += sum(len(e.ids) for e in encs)
        shared += pack_prefixes([e.ids for e in encs]).forward_tokens
        n += len(encs)
    print(f"prefix sharing, 10-turn sessions, a session's tuples in one micro-batch: "
          f"{unshared / n:.0f} -> {shared / n:.0f} forward tokens/tuple "
          f"({unshared / shared:.2f}x fewer; target >= 3x)")
    stream = [t for s in range(40) for t in session_tuples(s)]
    sample = random.Random(1).sample(stream, 32)
    encs = [policy.encode(t.context, t.action) for t in sample]
    full = sum(len(e.ids) for e in encs)
    packed = pack_prefixes([e.ids for e in encs]).forward_tokens
    print(f"  but a uniform batch of 32 from 40 sessions shares little: {full / 32:.0f} -> "
          f"{packed / 32:.0f} forward tokens/tuple ({full / packed:.2f}x)")
    sessions = [session_tuples(s) for s in range(3)]
    off, _ = time_trainer(shape, sessions, share=False)
    on, _ = time_trainer(shape, sessions, share=True)
    print(f"  Trainer.step on whole 10-turn sessions: {off / 3:.2f} s/step unshared, "
          f"{on / 3:.2f} s/step shared ({off / on:.2f}x faster)")


if __name__ == "__main__":
    main()

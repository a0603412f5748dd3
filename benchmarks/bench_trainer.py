"""Trainer benchmarks on CPU with the tiny policy: step overhead, tokens/s, prefix sharing.

1. **Overhead**: ``Trainer.step`` (sampling, staleness, encoding, packing, objectives,
   priorities, metrics) vs a plain torch loop (pre-tokenized padded tensors, forward,
   REINFORCE loss, backward, clip, AdamW) on the same batches and model, prefix sharing off
   so both forward the same tokens. Target: <= 10% overhead.
2. **Tokens/s** of the trainer, with and without prefix sharing.
3. **Prefix sharing** on a realistic multi-turn stream (10-turn tool-using sessions, every
   turn scored): forward tokens per tuple when a session's tuples share one micro-batch vs
   forwarding every tuple's full sequence. Target: >= 3x fewer.
4. **Session-grouped sampling** in real training: a replay buffer holding many such sessions
   (``--sessions`` x 10 turns, turns of all sessions interleaved as they arrive), sampled by
   ``Trainer.step`` with ``session_group`` g = 1, 4, 8 (``BufferSpec.session_group``):
   forward tokens per tuple and tuples/s of the whole step (sampling, fetch, packing,
   forward, backward, AdamW), uniform and prioritized.

Run: ``python benchmarks/bench_trainer.py`` (a few minutes; single torch thread);
``--only grouped`` runs section 4 alone.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from nextstate.buffers import BufferSpec, ReplayBuffer
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


def time_plain(shape: TinyConfig, batches: list[list[ScoredTuple]]) -> tuple[float, int, int]:
    """Seconds for the plain loop over ``batches`` (pre-tokenized), the tokens it forwarded
    (padding included) and the tuples' own tokens (what ``Trainer.step`` counts)."""
    policy = TinyPolicy(shape, seed=0)
    optimizer = torch.optim.AdamW(policy.trainable_parameters(), lr=1e-4)
    data = [pretokenize(policy, b) for b in batches]
    plain_loop_step(policy.model, optimizer, *data[0])  # warm-up
    start = time.perf_counter()
    for ids, mask, adv in data:
        plain_loop_step(policy.model, optimizer, ids, mask, adv)
    elapsed = time.perf_counter() - start
    return (elapsed, sum(int(d[0].numel()) for d in data),
            sum(int((d[0] != policy.pad_id).sum()) for d in data))


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


def interleaved_sessions(sessions: int, turns: int = 10) -> list[ScoredTuple]:
    """``sessions`` 10-turn sessions running at once: turn k of every session, then k+1."""
    per_session = [session_tuples(s, turns) for s in range(sessions)]
    return [per_session[s][k] for k in range(turns) for s in range(sessions)]


def time_grouped(shape: TinyConfig, stream: list[ScoredTuple], sampler: str, group: int,
                 steps: int, warmup: int = 2) -> tuple[float, float, float, float]:
    """Train from a buffer holding ``stream``, drawing session groups of ``group``.

    Returns:
        ``(forward tokens/tuple, unshared tokens/tuple, tuples/s, sample ms/step)`` over
        ``steps`` steps after ``warmup`` ones.
    """
    spec = BufferSpec("main", capacity=len(stream), sampler=sampler, session_group=group,
                      seed=0)
    buffer = ReplayBuffer.from_spec(spec, None)
    buffer.extend(stream)
    config = TrainerConfig(batch_size=32, micro_batch_size=8, publish_every=0, opd_weight=0,
                           dpo_weight=0)
    policy = TinyPolicy(shape, seed=0)
    for t in stream:  # tokenize once up front, as in steady state (the cache holds them)
        policy.encode(t.context, t.action)
    sample_s = 0.0

    class Timed:
        def sample(self, batch_size: int, current_version: int | None = None):
            nonlocal sample_s
            start = time.perf_counter()
            batch = buffer.sample(batch_size, current_version)
            sample_s += time.perf_counter() - start
            return batch

        def update_priorities(self, indices: np.ndarray, priorities: np.ndarray) -> None:
            buffer.update_priorities(indices, priorities)

    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(config, policy, {"main": Timed()}, Path(tmp))
        for _ in range(warmup):
            trainer.step()
        sample_s = 0.0
        forward = unshared = tuples = 0.0
        start = time.perf_counter()
        for _ in range(steps):
            metrics = trainer.step()
            forward += metrics["charts/forward_tokens"]
            unshared += metrics["charts/forward_tokens_unshared"]
            tuples += metrics["charts/tuples"]
        elapsed = time.perf_counter() - start
    return forward / tuples, unshared / tuples, tuples / elapsed, sample_s / steps * 1e3


def grouped_section(shape: TinyConfig, sessions: int, steps: int) -> None:
    """Section 4: g = 1 vs 4 vs 8 on a buffer of many interleaved sessions."""
    stream = interleaved_sessions(sessions)
    print(f"session-grouped sampling: a buffer of {sessions} sessions x 10 turns "
          f"({len(stream)} tuples, interleaved), Trainer.step with batch 32, micro-batch 8, "
          f"{steps} steps each")
    for sampler in ("uniform", "prioritized"):
        base = None
        for group in (1, 4, 8):
            fwd, full, rate, sample_ms = time_grouped(shape, stream, sampler, group, steps)
            base = base or (fwd, rate)
            print(f"  {sampler:11s} g={group}: {full:5.0f} -> {fwd:5.0f} forward tokens/tuple "
                  f"({full / fwd:4.2f}x shared), {rate:6.1f} tuples/s, sampling "
                  f"{sample_ms:5.2f} ms/step; vs g=1: {base[0] / fwd:4.2f}x fewer tokens, "
                  f"{rate / base[1]:4.2f}x tuples/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", choices=["grouped"], help="run one section only")
    parser.add_argument("--sessions", type=int, default=200,
                        help="sessions in the buffer of section 4")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per g in section 4")
    args = parser.parse_args()
    torch.set_num_threads(1)
    shape = TinyConfig(d_model=64, n_layers=2, n_heads=4, max_length=4096)
    if args.only == "grouped":
        grouped_section(shape, args.sessions, args.steps)
        return

    # --- 1 + 2: overhead and tokens/s on short tuples (where per-step overhead shows most)
    short = [t for s in range(40) for t in session_tuples(s, turns=2)]
    rng = random.Random(0)
    steps, rounds = 25, 3
    batches = [rng.sample(short, 8) for _ in range(steps)]
    plain, trainer = [], []
    for _ in range(rounds):  # interleaved; the best round of each is compared
        plain.append(time_plain(shape, batches))
        trainer.append(time_trainer(shape, batches, share=False))
    (p_s, p_tok, p_own), (t_s, t_tok) = min(plain), min(trainer)
    print(f"tiny policy d_model={shape.d_model} layers={shape.n_layers}, 1 CPU thread; "
          f"batches of 8 short tuples ({p_tok / steps / 8:.0f} tokens padded), "
          f"{steps} steps, best of {rounds}")
    # Both rates count the tuples' own tokens (the plain loop also forwards its padding).
    print(f"  plain torch loop   {p_s / steps * 1e3:6.1f} ms/step  {p_own / p_s:8.0f} tokens/s")
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

    # --- 4: session-grouped sampling from a buffer of many sessions -----------------------
    grouped_section(shape, args.sessions, args.steps)


if __name__ == "__main__":
    main()

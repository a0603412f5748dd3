"""The online trainer: sample buffers, score with the policy, combine objectives, step, publish.

One :meth:`Trainer.step` reads top to bottom:

1. sample ``batch_size`` tuples, split over the buffers by ``buffer_mix``;
2. weight each by its sampling importance weight and staleness (drop beyond
   ``max_staleness`` versions);
3. group tuples of one session into the same micro-batch so shared prefixes are forwarded
   once, and for every micro-batch: forward, compute each objective, backward (gradients
   accumulate; each objective is averaged over its tuples in the whole step);
4. clip, AdamW, schedule; feed priorities back to the buffers; update the baselines;
5. every ``publish_every`` steps publish a versioned checkpoint.

Example:
    >>> import tempfile
    >>> from nextstate.trainers.sampling import ListBuffer
    >>> from nextstate.trainers.tiny import TinyConfig, TinyPolicy
    >>> trainer = Trainer(TrainerConfig(), TinyPolicy(TinyConfig(d_model=32, n_layers=1)),
    ...                   {"main": ListBuffer([])}, Path(tempfile.mkdtemp()))
    >>> trainer.step()  # nothing to learn from yet
    {}
"""

from __future__ import annotations

import itertools
import math
import random
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence

from nextstate.extractors.types import ScoredTuple
from nextstate.trainers.chat import hinted_context
from nextstate.trainers.checkpoint import (
    POLICY_DIR,
    TRAINER_STATE,
    latest_checkpoint,
    load_trainer_state,
    loading_version,
    publish,
)
from nextstate.trainers.config import TrainerConfig
from nextstate.trainers.objectives import RunningBaseline, dpo_loss, kl_penalty, opd_loss, pg_loss
from nextstate.trainers.packing import Encoded
from nextstate.trainers.policy import CausalLMPolicy
from nextstate.trainers.sampling import Sampleable
from nextstate.trainers.staleness import staleness_of, staleness_stats, staleness_weights

Announce = Callable[[dict[str, Any]], None]
"""Called with a published version's manifest (plus ``path``); the daemon sends it to Kafka."""

_PRIORITY_EPS = 1e-3


@dataclass(slots=True)
class _Item:
    """One sampled tuple with where it came from and how much it counts."""

    buffer: str
    index: int
    weight: float
    staleness: int | None
    tuple: ScoredTuple
    priority: float = 0.0


class _Schedule:
    """Learning-rate factor: linear warm-up then constant, linear or cosine decay."""

    def __init__(self, kind: str, warmup: int, total: int) -> None:
        self.kind, self.warmup, self.total = kind, warmup, total

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        progress = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        if self.kind == "linear":
            return 1.0 - progress
        if self.kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0


def _split(total: int, shares: Mapping[str, float]) -> dict[str, int]:
    """Split ``total`` by ``shares`` with largest-remainder rounding (sums to ``total``)."""
    norm = sum(shares.values())
    exact = {k: total * v / norm for k, v in shares.items()}
    out = {k: int(v) for k, v in exact.items()}
    by_remainder = sorted(exact, key=lambda k: exact[k] - out[k], reverse=True)
    for k in by_remainder[:total - sum(out.values())]:
        out[k] += 1
    return out


def _pad(rows: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad 1-D tensors to ``[B, T]`` and return the validity mask."""
    padded = pad_sequence(list(rows), batch_first=True)
    mask = pad_sequence([torch.ones(len(r), device=r.device) for r in rows], batch_first=True)
    return padded, mask


class Trainer:
    """Learns a policy online from replay buffers of scored tuples.

    Args:
        config: the run's configuration.
        policy: the policy to train (moved to ``config.device``).
        buffers: replay buffers by name (names are the keys of ``config.buffer_mix``).
        checkpoint_dir: where versions are published and resumed from.
        announce: optional callback told about every published version.
    """

    def __init__(self, config: TrainerConfig, policy: CausalLMPolicy,
                 buffers: Mapping[str, Sampleable], checkpoint_dir: Path,
                 announce: Announce | None = None) -> None:
        self.config = config
        random.seed(config.seed)
        np.random.seed(config.seed)
        torch.manual_seed(config.seed)
        if config.torch_threads is not None:
            torch.set_num_threads(config.torch_threads)
        self.policy = policy.to(config.device)
        self.buffers = dict(buffers)
        self.checkpoint_dir = Path(checkpoint_dir)
        self.announce = announce
        self.optimizer = torch.optim.AdamW(policy.trainable_parameters(), lr=config.lr,
                                           betas=config.betas,
                                           weight_decay=config.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, _Schedule(config.schedule, config.warmup_steps, config.total_steps))
        self.baseline = RunningBaseline(config.baseline_momentum)
        self.global_step = 0
        self.policy_version = 0
        self.skipped_steps = 0  # optimizer steps not taken: the gradient was not finite
        self.last_published_step = 0
        self.tuples_seen: Counter[str] = Counter()
        self.last_losses: dict[str, float] = {}
        self._reference: CausalLMPolicy | None = None

    # -- the step ----------------------------------------------------------------------
    def step(self) -> dict[str, float]:
        """One optimizer step on one sampled batch; ``{}`` when there is nothing to learn from.

        Returns:
            Metrics: ``losses/*`` per objective, ``charts/*`` (tokens/s, staleness, step,
            policy version, prefix sharing, ...).
        """
        cfg = self.config
        started = time.perf_counter()
        sampled = self._sample()
        if not sampled:
            return {}
        weights = staleness_weights([it.staleness for it in sampled], cfg.max_staleness,
                                    cfg.staleness_mode, cfg.staleness_decay)
        metrics = staleness_stats([it.staleness for it in sampled], weights)
        items = []
        for item, w in zip(sampled, weights, strict=True):
            if w > 0:
                item.weight *= float(w)
                items.append(item)
        if not items:
            return metrics
        # Keep a session's tuples together (and in turn order) so prefixes are shared.
        items.sort(key=lambda it: (it.tuple.session_id, len(it.tuple.context)))
        counts = Counter(it.tuple.kind for it in items)
        totals: Counter[str] = Counter()
        for micro in session_micro_batches(items, cfg.micro_batch_size):
            losses, stats = self._micro_batch(micro, counts)
            total = (cfg.pg_weight * losses.get("pg", 0.0) + cfg.opd_weight * losses.get(
                "opd", 0.0) + cfg.dpo_weight * losses.get("dpo", 0.0)
                + cfg.kl_weight * losses.get("kl", 0.0))
            if isinstance(total, torch.Tensor) and total.requires_grad:
                total.backward()
            for name, value in losses.items():
                totals[f"losses/{name}"] += float(value.detach())
            totals["losses/total"] += float(
                total.detach() if isinstance(total, torch.Tensor) else total)
            totals.update(stats)
        grad_norm = self._optimizer_step()
        self._feed_back(items)
        self.global_step += 1
        elapsed = time.perf_counter() - started
        self.last_losses = {k: v for k, v in totals.items() if k.startswith("losses/")}
        metrics |= self.last_losses
        metrics |= {
            "charts/step": float(self.global_step),
            "charts/policy_version": float(self.policy_version),
            "charts/lr": self.scheduler.get_last_lr()[0],
            "charts/grad_norm": grad_norm,
            "charts/tuples": float(len(items)),
            "charts/forward_tokens": totals["forward_tokens"],
            "charts/forward_tokens_unshared": totals["unshared_tokens"],
            "charts/prefix_share_ratio": totals["unshared_tokens"] / max(
                1.0, totals["forward_tokens"]),
            "charts/tokens_per_s": totals["forward_tokens"] / elapsed,
            "charts/action_tokens_per_s": totals["action_tokens"] / elapsed,
            "charts/behaviour_logprobs_used": totals["behaviour_used"],
            "charts/skipped_steps": float(self.skipped_steps),
            "charts/step_time_s": elapsed,
        }
        for key in ("advantage_sum", "opd_adv_sum", "dpo_margin_sum"):
            kind = {"advantage_sum": "evaluative", "opd_adv_sum": "directive",
                    "dpo_margin_sum": "preference"}[key]
            if counts[kind]:
                metrics[f"charts/{key.removesuffix('_sum')}_mean"] = totals[key] / counts[kind]
        for source, n in Counter(it.tuple.source for it in items).items():
            metrics[f"charts/tuples_{source}"] = float(n)
        self.maybe_publish()
        return metrics

    def _sample(self) -> list[_Item]:
        """Draw ``batch_size`` tuples split by ``buffer_mix``; empty buffers' shares move on."""
        active = {name: share for name, share in (self.config.buffer_mix or {
            name: 1.0 for name in self.buffers}).items() if share > 0 and name in self.buffers}
        need = self.config.batch_size
        items: list[_Item] = []
        while active and need > 0:
            empty = []
            for name, quota in _split(need, active).items():
                if quota == 0:
                    continue
                try:
                    batch = self.buffers[name].sample(quota, current_version=self.policy_version)
                except ValueError:  # the buffers' way of saying "nothing sampleable"
                    empty.append(name)
                    continue
                if len(batch.tuples) == 0:
                    empty.append(name)
                    continue
                for t, idx, w in zip(batch.tuples, batch.indices, batch.weights, strict=True):
                    items.append(_Item(name, int(idx), float(w),
                                       staleness_of(t.policy_version, self.policy_version), t))
            need = self.config.batch_size - len(items)
            if not empty:
                break
            for name in empty:
                del active[name]
        return items

    def _micro_batch(self, items: Sequence[_Item], counts: Counter[str]
                     ) -> tuple[dict[str, torch.Tensor], Counter[str]]:
        """Losses of one micro-batch, each already divided by its kind's count in the step."""
        cfg, policy, device = self.config, self.policy, self.policy.device
        evaluative = [it for it in items if it.tuple.kind == "evaluative"]
        directive = [it for it in items if it.tuple.kind == "directive" and it.tuple.hint]
        preference = [it for it in items if it.tuple.kind == "preference"
                      and it.tuple.chosen is not None and it.tuple.rejected is not None]
        # Every sequence that needs grad goes through one packed forward.
        student: list[Encoded] = [policy.encode(it.tuple.context, it.tuple.action)
                                  for it in evaluative + directive]
        for it in preference:
            student.append(policy.encode(it.tuple.context, it.tuple.chosen))
            student.append(policy.encode(it.tuple.context, it.tuple.rejected))
        teacher = [policy.encode(hinted_context(it.tuple.context, it.tuple.hint or "",
                                                cfg.hint_template), it.tuple.action)
                   for it in directive]
        logps, packing = policy.packed_logprobs(student, cfg.share_prefixes)
        stats: Counter[str] = Counter()
        stats["forward_tokens"] += packing.forward_tokens
        stats["unshared_tokens"] += sum(len(e.ids) for e in student)
        stats["action_tokens"] += sum(e.action_len for e in student)
        with torch.no_grad():
            teacher_logps, teacher_packing = policy.packed_logprobs(teacher, cfg.share_prefixes)
            stats["forward_tokens"] += teacher_packing.forward_tokens
            stats["unshared_tokens"] += sum(len(e.ids) for e in teacher)
            ref_needed = [e for e in student[:len(evaluative)]] if cfg.kl_weight > 0 else []
            ref_needed += student[len(evaluative) + len(directive):]
            ref_logps: list[torch.Tensor] = []
            if ref_needed:
                ref_logps, ref_packing = self.reference.packed_logprobs(
                    ref_needed, cfg.share_prefixes)
                stats["forward_tokens"] += ref_packing.forward_tokens
                stats["unshared_tokens"] += sum(len(e.ids) for e in ref_needed)
        losses: dict[str, torch.Tensor] = {}
        n_eval, n_dir = len(evaluative), len(directive)
        if evaluative:
            encs, lps = student[:n_eval], logps[:n_eval]
            logp, valid = _pad(lps)
            old, used = self._old_logprobs([it.tuple for it in evaluative], lps)
            stats["behaviour_used"] += used
            credit = valid.clone()
            for row, (it, enc) in enumerate(zip(evaluative, encs, strict=True)):
                if (cfg.tool_args_credit and it.tuple.credit == "tool_args"
                        and any(enc.tool_arg_mask)):
                    credit[row, :enc.action_len] = torch.tensor(enc.tool_arg_mask, device=device)
            adv = torch.tensor([it.tuple.reward - self.baseline.value(it.tuple.source)
                                for it in evaluative], device=device)
            weight = torch.tensor([it.weight * it.tuple.confidence for it in evaluative],
                                  device=device)
            per_seq = pg_loss(logp, old, adv, credit, cfg.clip_eps, cfg.dual_clip)
            losses["pg"] = (per_seq * weight).sum() / counts["evaluative"]
            stats["advantage_sum"] += float(adv.sum())
            for it, a in zip(evaluative, adv.tolist(), strict=True):
                it.priority = abs(a)
            if cfg.kl_weight > 0:
                ref, _ = _pad(ref_logps[:n_eval])
                kl = kl_penalty(logp, ref, valid)
                losses["kl"] = (kl * weight).sum() / counts["evaluative"]
        if directive:
            lps = logps[n_eval:n_eval + n_dir]
            logp, valid = _pad(lps)
            teacher_lp, _ = _pad(teacher_logps)
            old, used = self._old_logprobs([it.tuple for it in directive], lps)
            stats["behaviour_used"] += used
            weight = torch.tensor([it.weight * it.tuple.confidence for it in directive],
                                  device=device)
            per_seq, adv = opd_loss(logp, teacher_lp, old, valid, cfg.opd_adv_clip,
                                    cfg.clip_eps, cfg.dual_clip)
            losses["opd"] = (per_seq * weight).sum() / counts["directive"]
            per_tuple_adv = (adv.abs().sum(1) / valid.sum(1).clamp_min(1)).tolist()
            stats["opd_adv_sum"] += float((adv.sum(1) / valid.sum(1).clamp_min(1)).sum())
            for it, a in zip(directive, per_tuple_adv, strict=True):
                it.priority = a
        if preference:
            lps = logps[n_eval + n_dir:]
            ref_pref = ref_logps[len(ref_logps) - len(lps):]
            sums = torch.stack([lp.sum() for lp in lps])
            ref_sums = torch.stack([lp.sum() for lp in ref_pref])
            per_pair, margin = dpo_loss(sums[0::2], sums[1::2], ref_sums[0::2], ref_sums[1::2],
                                        cfg.dpo_beta)
            weight = torch.tensor([it.weight * it.tuple.confidence for it in preference],
                                  device=device)
            losses["dpo"] = (per_pair * weight).sum() / counts["preference"]
            stats["dpo_margin_sum"] += float(margin.sum())
            for it, loss in zip(preference, per_pair.tolist(), strict=True):
                it.priority = loss
        return losses, stats

    def _old_logprobs(self, tuples: Sequence[ScoredTuple], logps: Sequence[torch.Tensor]
                      ) -> tuple[torch.Tensor, int]:
        """Behaviour log-probs where logged, token-aligned and above ``min_logged_logprob``,
        else current ones detached."""
        rows, used = [], 0
        floor = self.config.min_logged_logprob
        for t, lp in zip(tuples, logps, strict=True):
            logged = t.behaviour_logprobs
            if logged is not None and len(logged) == len(lp) and min(logged, default=0) >= floor:
                rows.append(torch.tensor(t.behaviour_logprobs, device=lp.device,
                                         dtype=lp.dtype))
                used += 1
            else:
                rows.append(lp.detach())
        return _pad(rows)[0], used

    def _optimizer_step(self) -> float:
        params = self.policy.trainable_parameters()
        if self.config.grad_clip > 0:
            norm = float(torch.nn.utils.clip_grad_norm_(params, self.config.grad_clip))
        else:
            grads = [p.grad.norm() for p in params if p.grad is not None]
            norm = float(torch.stack(grads).norm()) if grads else 0.0
        if not math.isfinite(norm):
            # One NaN or inf gradient would make every weight NaN, and the next published
            # version with them: the step is not taken (and counted) instead.
            self.optimizer.zero_grad(set_to_none=True)
            self.skipped_steps += 1
            return norm
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm

    def _feed_back(self, items: Sequence[_Item]) -> None:
        """Priorities back to each buffer; evaluative rewards into the baselines."""
        by_buffer: dict[str, list[_Item]] = {}
        for it in items:
            by_buffer.setdefault(it.buffer, []).append(it)
            self.tuples_seen[it.tuple.source] += 1
        for name, group in by_buffer.items():
            priorities = np.array([it.priority + _PRIORITY_EPS for it in group])
            kept = np.isfinite(priorities)  # a NaN loss keeps the tuple's old priority
            self.buffers[name].update_priorities(
                np.array([it.index for it in group], dtype=np.int64)[kept], priorities[kept])
        rewards: dict[str, list[float]] = {}
        for it in items:
            if it.tuple.kind == "evaluative":
                rewards.setdefault(it.tuple.source, []).append(it.tuple.reward)
        for source, values in rewards.items():
            self.baseline.update(source, values)

    @property
    def reference(self) -> CausalLMPolicy:
        """The frozen reference for KL and DPO: the policy as it was when first needed (for
        LoRA, the base model with the adapter disabled)."""
        if self._reference is None:
            self._reference = self.policy.reference()
        return self._reference

    # -- publishing and resuming -------------------------------------------------------
    def maybe_publish(self, force: bool = False) -> Path | None:
        """Publish a new version if ``publish_every`` steps passed since the last (or forced).

        Returns:
            The new version's directory, or None when it was not time yet.
        """
        every = self.config.publish_every
        due = every > 0 and self.global_step - self.last_published_step >= every
        if not (due or (force and self.global_step > self.last_published_step)):
            return None
        version = self.policy_version + 1
        previous = (self.policy_version, self.last_published_step)
        self.policy_version, self.last_published_step = version, self.global_step

        def write(tmp: Path) -> None:
            self.policy.save(tmp / POLICY_DIR)
            torch.save(self.state_dict(include_policy=False), tmp / TRAINER_STATE)

        manifest = {"version": version, "step": self.global_step,
                    "tuples_seen": dict(self.tuples_seen), "losses": self.last_losses,
                    "created_ts": time.time(), "policy_dir": POLICY_DIR,
                    "config": asdict(self.config)}
        try:
            path = publish(self.checkpoint_dir, version, write, manifest,
                           keep=self.config.keep_checkpoints)
        except BaseException:
            self.policy_version, self.last_published_step = previous
            raise
        if self.announce is not None:
            self.announce(manifest | {"path": str(path)})
        return path

    def restore_latest(self) -> Path | None:
        """Load the newest published version (weights, optimizer, step, RNG...), if any.

        Raises:
            CorruptStateFile: that version does not load (it is left as it is).
        """
        path = latest_checkpoint(self.checkpoint_dir)
        if path is None:
            return None
        with loading_version(path, POLICY_DIR):
            self.policy.load_weights(path / POLICY_DIR)
        with loading_version(path, TRAINER_STATE):
            self.load_state_dict(load_trainer_state(path, device=self.policy.device))
        self._reference = None
        return path

    @classmethod
    def resume(cls, config: TrainerConfig, policy: CausalLMPolicy,
               buffers: Mapping[str, Sampleable], checkpoint_dir: Path,
               announce: Announce | None = None) -> Trainer:
        """A trainer restored from ``checkpoint_dir``'s latest version (fresh if none)."""
        trainer = cls(config, policy, buffers, checkpoint_dir, announce)
        trainer.restore_latest()
        return trainer

    def state_dict(self, include_policy: bool = True) -> dict[str, Any]:
        """Everything needed to continue exactly: counters, optimizer, schedule, baselines,
        RNG, and (unless excluded) the trainable policy weights."""
        np_state = np.random.get_state()
        state: dict[str, Any] = {
            "global_step": self.global_step,
            "policy_version": self.policy_version,
            "last_published_step": self.last_published_step,
            "tuples_seen": dict(self.tuples_seen),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "baseline": self.baseline.state_dict(),
            "rng": {"torch": torch.get_rng_state(), "python": random.getstate(),
                    "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)),
                              int(np_state[2]), int(np_state[3]), float(np_state[4])]},
        }
        if torch.cuda.is_available():
            state["rng"]["cuda"] = torch.cuda.get_rng_state_all()
        if include_policy:
            state["policy"] = self.policy.state_dict()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.global_step = int(state["global_step"])
        self.policy_version = int(state["policy_version"])
        self.last_published_step = int(state["last_published_step"])
        self.tuples_seen = Counter({k: int(v) for k, v in state["tuples_seen"].items()})
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.baseline.load_state_dict(state["baseline"])
        rng = state["rng"]
        torch.set_rng_state(rng["torch"].cpu())
        py = rng["python"]
        random.setstate((py[0], tuple(py[1]), py[2]))
        np_state = rng["numpy"]
        # (.cpu(): a state loaded onto a GPU has its RNG states there too, and both setters
        # take host tensors: resuming a CUDA trainer raised before)
        np.random.set_state((np_state[0], np_state[1].cpu().numpy().astype(np.uint32),
                             np_state[2], np_state[3], np_state[4]))
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([state.cpu() for state in rng["cuda"]])
        if "policy" in state:
            self.policy.load_state_dict(state["policy"])


def session_micro_batches(items: Sequence[_Item], size: int) -> list[list[_Item]]:
    """Cut a step's items (sorted by session) into micro-batches of at most ``size``, between
    sessions where it can: a session's tuples share their prefix only within one micro-batch.
    A session with more than ``size`` tuples fills micro-batches of its own."""
    batches: list[list[_Item]] = []
    current: list[_Item] = []
    for _, run in itertools.groupby(items, key=lambda it: it.tuple.session_id):
        tuples = list(run)
        if current and len(current) + len(tuples) > size:
            batches.append(current)
            current = []
        while len(tuples) > size:
            batches.append(tuples[:size])
            tuples = tuples[size:]
        current += tuples
    if current:
        batches.append(current)
    return batches

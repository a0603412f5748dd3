"""The demo agent: the policy chooses among candidate actions by their log-probability.

The agent sees only the conversation (never the task object). From it, it builds a candidate
set: a call of each tool with argument fills read from the request (numbers, words, currency
codes, the GUI's element ids), malformed variants of those calls (a number passed as a string,
a missing argument, swapped fields: what a weak model really emits), and final answers (one
that states what the last tool result said, a guess, a give-up). The policy scores every
candidate as the assistant message it would be (exactly the tokens the trainer later scores)
and the agent samples by the policy's log-likelihood of each candidate relative to the
initial policy's (see :class:`PolicyAgent`). So the policy really decides, and training
really changes what it decides.
"""

from __future__ import annotations

import json
import math
import random
import re

import torch

from nextstate.daemon.demo.env import CITIES, CURRENCIES, SETTINGS
from nextstate.extractors.types import Message, ToolCall
from nextstate.trainers.policy import CausalLMPolicy

SYSTEM_PROMPT = "Call a tool, then state its result."


def _call(name: str, args: dict[str, object], call_id: str) -> Message:
    return Message(role="assistant", tool_calls=(ToolCall(id=call_id, name=name,
                                                          arguments=json.dumps(args)),))


def _answer(text: str) -> Message:
    return Message(role="assistant", content=text)


def _request_text(messages: list[Message]) -> str:
    """The user's words so far (a rephrased request or a correction adds to them)."""
    return " ".join(m.content for m in messages if m.role == "user")


def tool_candidates(messages: list[Message], call_id: str) -> list[Message]:
    """A call of each tool filled from the request text, plus malformed variants.

    Arguments come only from the user's words: what the request does not say is left out
    (as a model that cannot fill an argument leaves it out), so calling a tool that does not
    fit the request is a call the tool really rejects.
    """
    text = _request_text(messages)
    numbers = [int(n) for n in re.findall(r"\b\d+\b", text)]
    cities = [c for c in CITIES if c in text]
    units = sorted((u for u in ("celsius", "fahrenheit") if u in text), key=text.index)
    codes = sorted((c for c in CURRENCIES if c in text), key=text.index)
    ops = sorted((w for w in ("plus", "times") if re.search(rf"\b{w}\b", text)),
                 key=text.index)
    # The request names its setting before the screen lists them all: the first mention.
    settings = sorted((s for s in SETTINGS if s in text), key=text.index)
    weather = _fill(city=cities[-1:], unit=units[:1])
    money = _fill(amount=numbers[:1], source=codes[:1], target=codes[1:2])
    calc = _fill(a=numbers[:1], b=numbers[1:2],
                 op=[{"plus": "add", "times": "multiply"}[w] for w in ops[:1]])
    click = _fill(element=[SETTINGS[s] for s in settings[:1]])
    options = [
        _call("get_weather", weather, call_id),
        _call("get_weather", _fill(city=cities[-1:]), call_id),
        _call("convert_currency", money, call_id),
        _call("convert_currency", {**money, "amount": " ".join(
            str(v) for v in (*numbers[:1], *codes[:1]))}, call_id),
        _call("calculator", calc, call_id),
        _call("calculator", {k: str(v) for k, v in calc.items()}, call_id),
        _call("click", click, call_id),
        _call("click", _fill(element=settings[:1]), call_id),
    ]
    return list(dict.fromkeys(options))  # a malformed variant may coincide with the call


def _fill(**found: list[object]) -> dict[str, object]:
    """The arguments whose value the request gave (the first one found)."""
    return {key: values[0] for key, values in found.items() if values}


def report_answer(result: str) -> str:
    """An answer that states what the last tool result said."""
    try:
        data = json.loads(result)
    except json.JSONDecodeError:
        return f"The tool said: {result[:120]}"
    if not isinstance(data, dict):
        return f"The tool said: {result[:120]}"
    if data.get("error"):
        return f"The tool said: {data['error']}"
    if "temperature" in data:
        return f"It is {data['temperature']} degrees {data['unit']} in {data['city']}."
    if "source" in data:
        return f"{data['amount']} {data['source']} is {data['result']} {data['target']}."
    if "result" in data:
        return f"The result is {data['result']}."
    if "axtree" in data:
        states = re.findall(r"checkbox '([^']+)' checked=(\w+)", data["axtree"])
        return "Done. " + ", ".join(f"{label}: {'on' if v == 'true' else 'off'}"
                                    for label, v in states) + "."
    return f"The tool said: {result[:120]}"


def answer_candidates(messages: list[Message], rng: random.Random) -> list[Message]:
    """Final answers once a tool has answered: state its result, guess, or give up.

    Before any tool result the agent only calls tools, as its system prompt says.
    """
    last = messages[-1]
    if last.role != "tool":
        return []
    return [_answer(report_answer(last.content)),
            _answer(f"I think it is {rng.randint(2, 400)}."),
            _answer("Sorry, I could not find that out.")]


def candidates(messages: list[Message], rng: random.Random, call_id: str) -> list[Message]:
    """Every action the agent may take next."""
    return tool_candidates(messages, call_id) + answer_candidates(messages, rng)


class PolicyAgent:
    """Samples a candidate action by how much the policy has come to prefer it.

    A candidate is the assistant message it would be, scored with the trainer's own encoding
    (``policy.encode`` + ``packed_logprobs``): its log-likelihood ``S(c)``, the sum of its token
    log-probs. The agent samples ``p(c) ∝ exp((S(c) - S_0(c)) / temperature)``, where ``S_0``
    is the initial policy's log-likelihood: the policy's implicit reward relative to its
    reference (DPO's ``β log π/π_ref``). Why not ``exp(S(c))`` alone: an untrained byte-level
    model gives every byte about -5.6 nats, so raw likelihoods only say which candidate is
    shortest, and no training in a demo's budget moves a 200-nat length gap. Relative to the
    reference the initial choice is uniform over the candidates (the enumerator is the
    proposal) and every nat the trainer's policy gradient adds to or removes from an action's
    tokens moves its choice probability by the same amount.

    Args:
        policy: the current policy (swapped in place by :meth:`load`).
        reference: the initial policy; None scores by raw log-likelihood ``S(c)``.
        temperature: softmax temperature over the scores.
        seed: seeds the agent's sampling.
    """

    def __init__(self, policy: CausalLMPolicy, reference: CausalLMPolicy | None = None,
                 temperature: float = 1.0, seed: int = 0) -> None:
        self.policy = policy
        self.reference = reference
        self.temperature = temperature
        self.rng = random.Random(seed)
        self.version = 0

    def logprobs(self, context: list[Message], options: list[Message],
                 policy: CausalLMPolicy | None = None) -> list[list[float]]:
        """Per-token log-probs of each candidate action after ``context``."""
        policy = policy or self.policy
        encoded = [policy.encode(context, option) for option in options]
        with torch.no_grad():
            logps, _ = policy.packed_logprobs(encoded)
        return [lp.tolist() for lp in logps]

    def scores(self, context: list[Message], options: list[Message]
               ) -> tuple[list[float], list[list[float]]]:
        """Each candidate's score and its per-token log-probs under the current policy."""
        logps = self.logprobs(context, options)
        totals = [math.fsum(lp) for lp in logps]
        if self.reference is None:
            return totals, logps
        if self.version == 0:  # still the reference's weights: every score is exactly 0
            return [0.0] * len(options), logps
        ref = self.logprobs(context, options, self.reference)
        return [t - math.fsum(r) for t, r in zip(totals, ref, strict=True)], logps

    def choose(self, context: list[Message], options: list[Message]
               ) -> tuple[int, list[float]]:
        """Sample one candidate; returns its index and its per-token (behaviour) log-probs."""
        scores, logps = self.scores(context, options)
        top = max(scores)
        weights = [math.exp((s - top) / self.temperature) for s in scores]
        index = self.rng.choices(range(len(options)), weights=weights)[0]
        return index, logps[index]

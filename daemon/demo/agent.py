"""The demo agent: the policy chooses among candidate actions by their log-probability.

The agent sees only the conversation (never the task object). From it, it builds a candidate
set: a call of each tool with argument fills read from the request (numbers, words, currency
codes, the GUI's element ids), malformed variants of those calls (a number passed as a string,
a missing argument, swapped fields: what a weak model really emits), and final answers (one
that states what the last tool result said, a guess, a give-up). The policy scores every
candidate as the assistant message it would be (exactly the tokens the trainer later scores)
and the agent samples from the policy decoding constrained to the candidates (see
:class:`PolicyAgent`). So the policy really decides, and training
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
    """Calls of each tool whose required arguments the request supplies, plus malformed
    variants of them (a number passed as a string, an argument left out, a label where the
    screen's element id belongs, the user's word where the schema wants its enum value).

    The agent proposes only calls it can fill from the user's words (a byte-level model this
    small cannot learn which tool a request needs in a demo's budget: measured, its tool
    error rate stayed at ~90% over 500 interactions when every tool was proposed); which
    *form* of the call and which answer to give is the policy's to learn.
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
    options = []
    if cities and units:
        weather = {"city": cities[-1], "unit": units[0]}
        options += [_call("get_weather", weather, call_id),
                    _call("get_weather", {"city": cities[-1]}, call_id),
                    _call("get_weather", {**weather, "unit": units[0].title()}, call_id)]
    if numbers and len(codes) >= 2:
        money = {"amount": numbers[0], "source": codes[0], "target": codes[1]}
        options += [_call("convert_currency", money, call_id),
                    _call("convert_currency", {**money, "amount": f"{numbers[0]} {codes[0]}"},
                          call_id)]
    if len(numbers) >= 2 and ops:
        calc = {"a": numbers[0], "b": numbers[1],
                "op": {"plus": "add", "times": "multiply"}[ops[0]]}
        options += [_call("calculator", calc, call_id),
                    _call("calculator", {**calc, "a": str(numbers[0]), "b": str(numbers[1])},
                          call_id),
                    _call("calculator", {**calc, "op": ops[0]}, call_id)]
    if settings:
        options += [_call("click", {"element": SETTINGS[settings[0]]}, call_id),
                    _call("click", {"element": settings[0]}, call_id)]
    # A call already made in this session is not made again: its result is in the context.
    made = {(c.name, c.arguments) for m in messages for c in m.tool_calls}
    return [o for o in options if (o.tool_calls[0].name, o.tool_calls[0].arguments) not in made]


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
        return [] if tool_candidates(messages, "") else [
            _answer("Sorry, I could not find that out.")]
    return [_answer(report_answer(last.content)),
            _answer(f"I think it is {rng.randint(2, 400)}."),
            _answer("Sorry, I could not find that out.")]


def candidates(messages: list[Message], rng: random.Random, call_id: str) -> list[Message]:
    """Every action the agent may take next."""
    return tool_candidates(messages, call_id) + answer_candidates(messages, rng)


def constrained_scores(actions: list[tuple[int, ...]], logps: list[list[float]]) -> list[float]:
    """Log-probability of each candidate under the policy decoding constrained to the set.

    The candidates form a token trie. Constrained decoding samples the policy's next token
    among the children of the current trie node only, renormalised: ``p(c) = prod_t
    p(c_t | c_<t) / sum_{a in children(c_<t)} p(a | c_<t)``. Positions where all candidates
    left agree contribute a factor 1, so a candidate's length or its shared boilerplate does
    not matter, only the policy's preferences where candidates part. Every sibling's
    ``p(a | c_<t)`` is in the siblings' own per-token log-probs (same prefix, same position).

    Args:
        actions: each candidate's action token ids.
        logps: each candidate's per-token log-probs (same lengths as ``actions``).

    Returns:
        Log-probabilities that sum (in probability) to 1 over the candidates.
    """
    scores = []
    for i, action in enumerate(actions):
        live = [j for j in range(len(actions)) if j != i]
        total = 0.0
        for t, token in enumerate(action):
            live = [j for j in live if len(actions[j]) > t and actions[j][:t] == action[:t]]
            if not live:
                break  # alone below this node: the remaining factors are 1
            children = {token: logps[i][t]}
            for j in live:
                children.setdefault(actions[j][t], logps[j][t])
            if len(children) > 1:
                top = max(children.values())
                norm = top + math.log(math.fsum(math.exp(v - top) for v in children.values()))
                total += logps[i][t] - norm
        scores.append(total)
    return scores


class PolicyAgent:
    """Samples a candidate action from the policy, decoding constrained to the candidate set.

    A candidate is the assistant message it would be, scored with the trainer's own encoding
    (``policy.encode`` + ``packed_logprobs``), and chosen with the probability the policy
    gives it under constrained decoding (:func:`constrained_scores`, the way grammar-
    constrained generation samples). Why not ``exp(sum of token log-probs)`` over the set:
    an untrained byte-level model gives every byte about -5.6 nats, so raw likelihoods only
    say which candidate is shortest. Under constrained decoding only the tokens where
    candidates part count, and those are exactly the tokens whose log-probs the trainer's
    policy gradient raises or lowers.

    Args:
        policy: the current policy (swapped in place by :meth:`load`).
        temperature: divides the log-probs at every branching token (1: the policy itself).
        seed: seeds the agent's sampling.
    """

    def __init__(self, policy: CausalLMPolicy, temperature: float = 1.0, seed: int = 0) -> None:
        self.policy = policy
        self.temperature = temperature
        self.rng = random.Random(seed)
        self.version = 0

    def scores(self, context: list[Message], options: list[Message]
               ) -> tuple[list[float], list[list[float]]]:
        """Each candidate's constrained log-probability and its per-token log-probs."""
        encoded = [self.policy.encode(context, option) for option in options]
        with torch.no_grad():
            packed, _ = self.policy.packed_logprobs(encoded)
        logps = [lp.tolist() for lp in packed]
        actions = [e.ids[e.action_start:] for e in encoded]
        tempered = [[v / self.temperature for v in lp] for lp in logps]
        return constrained_scores(actions, tempered), logps

    def choose(self, context: list[Message], options: list[Message]
               ) -> tuple[int, list[float]]:
        """Sample one candidate; returns its index and its per-token (behaviour) log-probs."""
        scores, logps = self.scores(context, options)
        top = max(scores)
        weights = [math.exp(s - top) for s in scores]
        index = self.rng.choices(range(len(options)), weights=weights)[0]
        return index, logps[index]

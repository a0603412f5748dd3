"""The demo agent: the policy chooses among candidate actions by their log-probability.

The agent sees only the conversation (never the task object). From it, it builds a candidate
set: a call of each tool with argument fills read from the request (numbers, words, currency
codes, the GUI's element ids), malformed variants of those calls (a number passed as a string,
a missing argument, swapped fields: what a weak model really emits), and final answers (one
that states what the last tool result said, a guess, a give-up). The policy scores every
candidate as the assistant message it would be (exactly the tokens the trainer later scores)
and the agent samples from the softmax of the per-token mean log-probs. So the policy really
decides, and training really changes what it decides.
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

SYSTEM_PROMPT = ("You are a helpful assistant. Use the tools to answer; state the tool's "
                 "result in your answer.")


def _call(name: str, args: dict[str, object], call_id: str) -> Message:
    return Message(role="assistant", tool_calls=(ToolCall(id=call_id, name=name,
                                                          arguments=json.dumps(args)),))


def _answer(text: str) -> Message:
    return Message(role="assistant", content=text)


def _request_text(messages: list[Message]) -> str:
    """The user's words so far (a rephrased request or a correction adds to them)."""
    return " ".join(m.content for m in messages if m.role == "user")


def tool_candidates(messages: list[Message], rng: random.Random, call_id: str) -> list[Message]:
    """A call of each tool filled from the request text, plus malformed variants."""
    text = _request_text(messages)
    numbers = [int(n) for n in re.findall(r"\b\d+\b", text)]
    while len(numbers) < 2:
        numbers.append(rng.randint(2, 99))
    cities = [c for c in CITIES if c in text] or [rng.choice(CITIES)]
    unit = ("fahrenheit" if "fahrenheit" in text else "celsius" if "celsius" in text
            else rng.choice(("celsius", "fahrenheit")))
    codes = sorted((c for c in CURRENCIES if c in text), key=text.index) or rng.sample(
        list(CURRENCIES), 2)
    while len(codes) < 2:
        codes.append(rng.choice([c for c in CURRENCIES if c not in codes]))
    op = "multiply" if re.search(r"\btimes\b", text) else "add"
    # The request names its setting before the screen lists them all: the first mention.
    settings = sorted((s for s in SETTINGS if s in text), key=text.index) or [
        rng.choice(list(SETTINGS))]
    element = SETTINGS[settings[0]]
    a, b = numbers[0], numbers[1]
    return [
        _call("get_weather", {"city": cities[-1], "unit": unit}, call_id),
        _call("get_weather", {"city": cities[-1]}, call_id),
        _call("convert_currency", {"amount": numbers[0], "source": codes[0],
                                   "target": codes[1]}, call_id),
        _call("convert_currency", {"amount": f"{numbers[0]} {codes[0]}", "source": codes[0],
                                   "target": codes[1]}, call_id),
        _call("calculator", {"a": a, "b": b, "op": op}, call_id),
        _call("calculator", {"a": str(a), "b": str(b), "op": op}, call_id),
        _call("click", {"element": element}, call_id),
        _call("click", {"element": settings[0]}, call_id),
    ]


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
    """Final answers: state the last tool result (if any), guess, or give up."""
    answers = [_answer(f"I think it is {rng.randint(2, 400)}."),
               _answer("Sorry, I could not find that out.")]
    last = messages[-1]
    if last.role == "tool":
        answers.insert(0, _answer(report_answer(last.content)))
    return answers


def candidates(messages: list[Message], rng: random.Random, call_id: str) -> list[Message]:
    """Every action the agent may take next."""
    return tool_candidates(messages, rng, call_id) + answer_candidates(messages, rng)


class PolicyAgent:
    """Samples an action from ``softmax(mean token log-prob / temperature)`` over candidates.

    Args:
        policy: the current policy (swapped in place by :meth:`load`).
        temperature: softmax temperature over per-token mean log-probs; low values make the
            agent follow the policy's preferences closely.
        seed: seeds the agent's sampling.
    """

    def __init__(self, policy: CausalLMPolicy, temperature: float = 0.05, seed: int = 0) -> None:
        self.policy = policy
        self.temperature = temperature
        self.rng = random.Random(seed)
        self.version = 0

    def logprobs(self, context: list[Message], options: list[Message]) -> list[list[float]]:
        """Per-token log-probs of each candidate action after ``context``."""
        encoded = [self.policy.encode(context, option) for option in options]
        with torch.no_grad():
            logps, _ = self.policy.packed_logprobs(encoded)
        return [lp.tolist() for lp in logps]

    def choose(self, context: list[Message], options: list[Message]
               ) -> tuple[int, list[float]]:
        """Sample one candidate; returns its index and its per-token (behaviour) log-probs."""
        logps = self.logprobs(context, options)
        scores = [sum(lp) / len(lp) for lp in logps]
        top = max(scores)
        weights = [math.exp((s - top) / self.temperature) for s in scores]
        index = self.rng.choices(range(len(options)), weights=weights)[0]
        return index, logps[index]

"""Throughput of the rule extractors and the redactor on one core.

Run ``python -m nextstate.extractors.benchmark [--n 50000]``. Prints interactions per second
for each extractor alone and for the whole default chain plus redaction, over a mix of chat
replies, tool results, terminal runs and GUI steps (100 KB accessibility trees), so a change
that makes one extractor slow shows up as a ratio against the others in the same run.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence

from nextstate.extractors.evaluate import DEFAULT_EXTRACTORS
from nextstate.extractors.redact import Redactor
from nextstate.extractors.registry import build_extractors
from nextstate.extractors.types import Interaction, Message, ToolCall


def _chat(i: int) -> Interaction:
    replies = ("Thanks, that works!", "No, use the metric system.", "Can you write a haiku?",
               "Thanks, but I asked for Tuesday.")
    context = (Message("user", "What's the weather in Oslo tomorrow? Mail me at a@b.io"),)
    return Interaction(f"c#{i}", "c", context, Message("assistant", "50 F and rain."),
                       (Message("user", replies[i % len(replies)]),))


def _tool(i: int, name: str, result: str) -> Interaction:
    call = ToolCall(f"t{i}", name, json.dumps({"command": "pytest -q", "city": "Oslo"}))
    return Interaction(f"t#{i}", "t", (Message("user", "Do it."),),
                       Message("assistant", "", tool_calls=(call,)),
                       (Message("tool", result, tool_call_id=call.id, name=name),))


def _gui_pair(lines: int) -> Interaction:
    tree = "\n".join(f"\t[{k}] link 'Item number {k} in the catalogue'" for k in range(lines))
    before = json.dumps({"url": "u", "title": "t", "axtree": tree, "error": ""})
    after = json.dumps({"url": "u", "title": "t", "error": "",
                        "axtree": tree.replace("[42] link", "[42] link, expanded=True")})
    first = ToolCall("g0", "browser", '{"action": "noop()"}')
    call = ToolCall("g1", "browser", '{"action": "click(\'42\')"}')
    context = (Message("user", "task"), Message("assistant", "", tool_calls=(first,)),
               Message("tool", before, tool_call_id="g0", name="browser"))
    return Interaction("g#1", "g", context, Message("assistant", "", tool_calls=(call,)),
                       (Message("tool", after, tool_call_id="g1", name="browser"),))


def workload(n: int) -> list[Interaction]:
    """A mix: half chat replies, a quarter tool results, a quarter terminal runs."""
    makers = (
        _chat, _chat,
        lambda i: _tool(i, "get_weather", '{"temp_c": 11, "error": null}'),
        lambda i: _tool(i, "bash", "collected 12 items\n==== 1 failed, 11 passed in 0.5s ===="),
    )
    return [makers[i % len(makers)](i) for i in range(n)]


def _rate(fn, items: Sequence[Interaction]) -> float:
    start = time.perf_counter()
    for item in items:
        fn(item)
    return len(items) / (time.perf_counter() - start)


def main(argv: Sequence[str] | None = None) -> int:
    """Print interactions per second per extractor, for the chain, and for GUI diffs."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=50_000)
    args = parser.parse_args(argv)
    items = workload(args.n)
    extractors = build_extractors(DEFAULT_EXTRACTORS)
    print(f"{args.n} mixed interactions, one core:")
    for name, extractor in extractors:
        print(f"  {name:<10} {_rate(extractor, items):>12,.0f} interactions/s")
    redactor = Redactor()

    def chain(interaction: Interaction) -> None:
        for _, extractor in extractors:
            for scored in extractor(interaction):
                redactor(scored)

    print(f"  {'chain+redact':<10} {_rate(chain, items):>12,.0f} interactions/s")
    gui = dict(extractors)["gui"]
    step = _gui_pair(3000)
    size = len(step.next_state[0].content)
    rate = _rate(gui, [step] * 200)
    print(f"GUI diff of two {size / 1000:.0f} KB observations: {1000 / rate:.2f} ms per step")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

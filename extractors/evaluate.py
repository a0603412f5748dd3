"""Measure the extractors: per-source precision/recall/F1 on a labeled set, and GUI AUROC.

Run::

    python -m nextstate.extractors.evaluate [--data tests/data/extractor_eval.jsonl]
                                            [--gui-dev ../shared/data/gui-dev]

The labeled set is JSON lines, one next state each::

    {"id": "user-017", "source": "user", "case": "thanks_but",
     "context": [<OpenAI messages>], "action": <OpenAI assistant message>,
     "next_state": [<OpenAI messages>], "feedback": [{"value": -1, "text": "..."}],
     "label": {"sign": -1, "hint": "use the metric system"}}

``sign`` is the true sign of the signal (0: the next state carries none); ``hint`` the gist a
directive tuple should carry (null: none expected). For each source, the sign of the
evaluative tuple from that source is compared with ``sign`` (precision over emitted non-zero
tuples, recall over non-zero labels), also restricted to tuples with confidence >= 0.8; a
hint counts as right when it contains most of the label's content words.

With ``--gui-dev``, the extractors also run over real web-agent sessions
(``transcripts.jsonl`` + ``outcomes.json``) and the command prints how well each session's
mean reward separates successful from failed sessions (AUROC).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from nextstate.extractors.registry import Extractor, build_extractors
from nextstate.extractors.types import (
    SOURCES,
    Feedback,
    Interaction,
    Message,
    ScoredTuple,
    ToolCall,
)

DEFAULT_EXTRACTORS = ("feedback", "user", "tool", "terminal", "gui")
DEFAULT_DATA = Path("tests/data/extractor_eval.jsonl")
CONFIDENT = 0.8
_WORD = re.compile(r"[a-z0-9]+")
_STOP = frozenset((
    "a", "an", "the", "to", "of", "in", "on", "for", "and", "or", "is", "it", "i", "you",
    "be", "was", "this", "that", "with", "use", "please", "should", "not",
))


def message_from_openai(data: dict[str, Any]) -> Message:
    """A :class:`Message` from an OpenAI chat message dict (content parts flattened)."""
    content = data.get("content")
    if isinstance(content, list):
        content = "".join(p.get("text", "") if p.get("type") == "text" else "[image]"
                          for p in content if isinstance(p, dict))
    calls = tuple(
        ToolCall(str(c.get("id", "")), str(c.get("function", {}).get("name", "")),
                 str(c.get("function", {}).get("arguments", "")))
        for c in data.get("tool_calls") or ()
    )
    return Message(role=data["role"], content=content or "", tool_calls=calls,
                   tool_call_id=data.get("tool_call_id"), name=data.get("name"))


def interactions_from_messages(session_id: str,
                               messages: Sequence[dict[str, Any]]) -> list[Interaction]:
    """One interaction per assistant message: context before it, next state until the next."""
    converted = tuple(message_from_openai(m) for m in messages)
    interactions = []
    for index, message in enumerate(converted):
        if message.role != "assistant":
            continue
        end = index + 1
        while end < len(converted) and converted[end].role != "assistant":
            end += 1
        interactions.append(Interaction(
            interaction_id=f"{session_id}#{index}", session_id=session_id,
            context=converted[:index], action=message, next_state=converted[index + 1:end],
            closed_by="next_state" if end < len(converted) else "end_of_input",
            shape="transcript"))
    return interactions


def item_interaction(item: dict[str, Any]) -> Interaction:
    """The interaction of one labeled item."""
    return Interaction(
        interaction_id=f"eval#{item['id']}", session_id=f"eval-{item['id']}",
        context=tuple(message_from_openai(m) for m in item.get("context", ())),
        action=message_from_openai(item["action"]),
        next_state=tuple(message_from_openai(m) for m in item.get("next_state", ())),
        feedback=tuple(Feedback(value=f.get("value"), text=f.get("text"))
                       for f in item.get("feedback", ())))


def run_all(extractors: Iterable[tuple[str, Extractor]],
            interaction: Interaction) -> list[ScoredTuple]:
    """Every tuple the extractors produce for one interaction, in order."""
    return [t for _, extractor in extractors for t in extractor(interaction)]


def _sign(value: float) -> int:
    return (value > 0) - (value < 0)


def hint_matches(predicted: str | None, gold: str | None) -> bool:
    """Whether a predicted hint carries the gold hint: >= 60% of its content words."""
    if not predicted or not gold:
        return False
    gold_words = {w for w in _WORD.findall(gold.lower()) if w not in _STOP}
    if not gold_words:
        return True
    found = set(_WORD.findall(predicted.lower()))
    return len(gold_words & found) / len(gold_words) >= 0.6


def _prf(tp: int, emitted: int, relevant: int) -> tuple[float, float, float]:
    precision = tp / emitted if emitted else float("nan")
    recall = tp / relevant if relevant else float("nan")
    f1 = (2 * precision * recall / (precision + recall)
          if emitted and relevant and precision + recall > 0 else float("nan"))
    return precision, recall, f1


def score_items(items: Sequence[dict[str, Any]],
                extractors: Sequence[tuple[str, Extractor]]) -> dict[str, dict[str, float]]:
    """Per-source (and ``all``) sign and hint metrics over labeled items."""
    counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for item in items:
        source, label = item["source"], item["label"]
        gold_sign, gold_hint = int(label.get("sign", 0)), label.get("hint")
        tuples = [t for t in run_all(extractors, item_interaction(item)) if t.source == source]
        evaluative = max((t for t in tuples if t.kind == "evaluative"),
                         key=lambda t: t.confidence, default=None)
        hints = [t.hint for t in tuples if t.kind == "directive" and t.hint]
        for key in (source, "all"):
            c = counts[key]
            c["items"] += 1
            c["relevant"] += gold_sign != 0
            if evaluative is not None and _sign(evaluative.reward) != 0:
                right = _sign(evaluative.reward) == gold_sign
                c["emitted"] += 1
                c["tp"] += right
                if evaluative.confidence >= CONFIDENT:
                    c["emitted_conf"] += 1
                    c["tp_conf"] += right
            c["gold_hints"] += bool(gold_hint)
            c["hints"] += bool(hints)
            c["hint_tp"] += bool(hints) and hint_matches(hints[0], gold_hint)
    table: dict[str, dict[str, float]] = {}
    for key, c in counts.items():
        p, r, f = _prf(c["tp"], c["emitted"], c["relevant"])
        pc, rc, _ = _prf(c["tp_conf"], c["emitted_conf"], c["relevant"])
        hp, hr, hf = _prf(c["hint_tp"], c["hints"], c["gold_hints"])
        table[key] = {"items": c["items"], "labeled": c["relevant"], "emitted": c["emitted"],
                      "P": p, "R": r, "F1": f, "emitted@0.8": c["emitted_conf"], "P@0.8": pc,
                      "R@0.8": rc, "hints": c["gold_hints"], "hint_P": hp, "hint_R": hr,
                      "hint_F1": hf}
    return table


def auroc(positives: Sequence[float], negatives: Sequence[float]) -> float:
    """Probability that a random positive outscores a random negative (ties count half)."""
    if not positives or not negatives:
        return float("nan")
    wins = sum((p > n) + 0.5 * (p == n) for p in positives for n in negatives)
    return wins / (len(positives) * len(negatives))


def score_sessions(gui_dev: Path, extractors: Sequence[tuple[str, Extractor]],
                   ) -> dict[str, dict[str, float]]:
    """Per-source session scores (mean evaluative reward) on the GUI dev set vs outcomes."""
    outcomes = json.loads((gui_dev / "outcomes.json").read_text())
    per_source: dict[str, dict[str, list[float]]] = defaultdict(dict)
    with (gui_dev / "transcripts.jsonl").open() as lines:
        for line in lines:
            session = json.loads(line)
            rewards: dict[str, list[float]] = defaultdict(list)
            for interaction in interactions_from_messages(session["session_id"],
                                                          session["messages"]):
                for t in run_all(extractors, interaction):
                    if t.kind == "evaluative":
                        rewards[t.source].append(t.reward)
                        rewards["all"].append(t.reward)
            for source in ("all", *SOURCES):
                values = rewards.get(source, [])
                per_source[source][session["session_id"]] = (sum(values) / len(values)
                                                              if values else 0.0)
    report = {}
    for source, scores in per_source.items():
        good = [s for sid, s in scores.items() if outcomes.get(sid) == 1.0]
        bad = [s for sid, s in scores.items() if outcomes.get(sid) == 0.0]
        if not any(scores.values()):
            continue
        report[source] = {"sessions": len(scores), "AUROC": auroc(good, bad),
                          "mean_good": sum(good) / max(1, len(good)),
                          "mean_bad": sum(bad) / max(1, len(bad))}
    return report


def _format(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    return "  -  " if value != value else f"{value:.3f}"  # NaN: nothing to measure


def format_table(table: dict[str, dict[str, float]], columns: Sequence[str]) -> str:
    """A fixed-width text table, one row per source."""
    order = [s for s in (*SOURCES, "all") if s in table]
    header = f"{'source':<9}" + "".join(f"{c:>12}" for c in columns)
    rows = [f"{s:<9}" + "".join(f"{_format(table[s][c]):>12}" for c in columns) for s in order]
    return "\n".join([header, *rows])


def main(argv: Sequence[str] | None = None) -> int:
    """Print the evaluation tables; returns a process exit code."""
    parser = argparse.ArgumentParser(prog="nextstate eval-extractors", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help="labeled next states (JSON lines)")
    parser.add_argument("--gui-dev", type=Path, default=None,
                        help="folder with transcripts.jsonl and outcomes.json")
    parser.add_argument("--extractors", default=",".join(DEFAULT_EXTRACTORS),
                        help="comma-separated extractor names, in order")
    args = parser.parse_args(argv)
    extractors = build_extractors([n for n in args.extractors.split(",") if n])
    if not args.data.exists():
        print(f"no labeled data at {args.data}", file=sys.stderr)
        return 2
    items = [json.loads(line) for line in args.data.read_text().splitlines() if line.strip()]
    table = score_items(items, extractors)
    print(f"Signal sign and hints on {len(items)} labeled next states ({args.data}):")
    print(format_table(table, ("items", "labeled", "emitted", "P", "R", "F1", "emitted@0.8",
                               "P@0.8", "R@0.8")))
    print()
    print(format_table(table, ("hints", "hint_P", "hint_R", "hint_F1")))
    if args.gui_dev is not None:
        report = score_sessions(args.gui_dev, extractors)
        print()
        print(f"Session separation on {args.gui_dev} (score = mean evaluative reward):")
        print(format_table(report, ("sessions", "AUROC", "mean_good", "mean_bad")))
    return 0


if __name__ == "__main__":
    sys.exit(main())

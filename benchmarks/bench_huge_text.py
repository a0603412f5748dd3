"""Seconds the daemon spends on one huge text in each place a message can hold it.

    python benchmarks/bench_huge_text.py [--mb 15] [--shapes prose,one,nospace]
                                         [--places user,tool,...] [--against REV]

A record may hold up to ``join.max_record_bytes`` (16 MB) of one text. For each place (a user
reply, the request a reply may rephrase, a tool result, a terminal output, the assistant's
text, a tool call's arguments, a GUI observation or error, the system prompt, a feedback
text) and each shape (prose; one character repeated; a base64-like blob, no blank at all),
a short session holding such a text goes through ``Pipeline.process`` (default config,
redaction on) and ``Pipeline.close``; the time of both is printed with the tuples made.
With ``--against REV`` the same runs at ``REV`` (``git archive`` into a temporary folder,
imported first in a subprocess), on the same machine, side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SID = "s1"
SHAPES = ("prose", "one", "nospace")
EXTRACTORS = ("user", "tool", "terminal", "gui", "feedback")
_WORDS = ("the", "report", "was", "fine", "but", "I", "need", "more", "data", "on", "Tuesday",
          "please", "check", "again", "thanks", "error", "value", "not", "wrong,", "it.",
          "now", "should", "use", "\n")
_BASE64 = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+/"


def huge_text(shape: str, size: int) -> str:
    """``size`` characters of prose (with newlines), of "a", or of a base64-like blob."""
    rng = random.Random(0)
    if shape == "prose":
        words = rng.choices(_WORDS, k=size // 4)
        return " ".join(words)[:size].ljust(size, ".")
    if shape == "one":
        return "a" * size
    block = "".join(rng.choices(_BASE64, k=4096))
    return (block * (size // 4096 + 1))[:size]


def _user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def _assistant(text: str | None = None, call: tuple[str, str, dict[str, Any]] | None = None
               ) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if call:
        message["tool_calls"] = [{"id": call[0], "type": "function", "function": {
            "name": call[1], "arguments": json.dumps(call[2])}}]
    return message


def _tool(call_id: str, content: str) -> dict[str, Any]:
    return {"role": "tool", "tool_call_id": call_id, "content": content}


def _session(turns: list[tuple[dict[str, Any], list[dict[str, Any]]]],
             system: str = "You are a helpful agent.") -> list[dict[str, Any]]:
    """Call logs whose requests repeat the history, as real clients send them."""
    history: list[dict[str, Any]] = [{"role": "system", "content": system}]
    records, pending = [], []
    for response, next_messages in turns:
        history.extend(pending)
        records.append({"session_id": SID, "request": {"messages": list(history)},
                        "response": {"choices": [{"message": response}]}})
        history.append(response)
        pending = next_messages
    return records


def _obs(tree: str = "[1] button 'Go'", **extra: str) -> str:
    return json.dumps({"url": "u", "title": "t", "axtree": tree, **extra})


def records(place: str, big: str) -> list[dict[str, Any]]:
    """A session that holds ``big`` in ``place``, ended by a session_end record."""
    half = big[: len(big) // 2]  # two texts in one record: half each
    shell = ("c1", "run_shell", {"cmd": "pytest"})
    noop = _assistant(call=("c0", "browser", {"action": "noop()"}))
    click = _assistant(call=("c1", "browser", {"action": "click('1')"}))
    sessions = {
        "user": lambda: _session([(_assistant("Here you go."), [_user(big)]),
                                  (_assistant("ok"), [])]),
        "request": lambda: _session([(_assistant("a"), [_user(big)]),
                                     (_assistant("b"), [_user("the weather in Oslo, please")]),
                                     (_assistant("c"), [])]),
        "reply_and_request": lambda: _session([(_assistant("a"), [_user(half)]),
                                               (_assistant("b"), [_user(half)]),
                                               (_assistant("c"), [])]),
        "tool_result": lambda: _session([
            (_assistant(call=("c1", "get_weather", {"city": "Oslo"})), [_tool("c1", big)]),
            (_assistant("ok"), [_user("thanks")]), (_assistant("x"), [])]),
        "terminal_output": lambda: _session([(_assistant(call=shell), [_tool("c1", big)]),
                                             (_assistant("ok"), [_user("thanks")]),
                                             (_assistant("x"), [])]),
        "assistant_text": lambda: _session([(_assistant(big), [_user("no, wrong")]),
                                            (_assistant("ok"), [])]),
        "tool_arguments": lambda: _session([
            (_assistant(call=("c1", "get_weather", {"city": big})),
             [_tool("c1", "Error: missing required argument 'day'")]),
            (_assistant("ok"), [_user("thanks")]), (_assistant("x"), [])]),
        "terminal_arguments": lambda: _session([
            (_assistant(call=("c1", "run_shell", {"cmd": big})),
             [_tool("c1", "bash: x: command not found\n[exit code: 127]")]),
            (_assistant("ok"), [_user("thanks")]), (_assistant("x"), [])]),
        "gui_arguments": lambda: _session([
            (noop, [_tool("c0", _obs())]),
            (_assistant(call=("c1", "browser", {"action": f"click('{big}')"})),
             [_tool("c1", _obs())]), (_assistant("x"), [])]),
        "system_prompt": lambda: _session([(_assistant("a"), [_user("thanks")]),
                                           (_assistant("b"), [_user("no, that's wrong")]),
                                           (_assistant("c"), [])], system=big),
        "gui_observation": lambda: _session([
            (noop, [_tool("c0", _obs())]),
            (click, [_tool("c1", _obs(big + "\n[1] button 'Go'"))]), (_assistant("x"), [])]),
        "gui_raw_trees": lambda: _session([(noop, [_tool("c0", half)]),
                                           (click, [_tool("c1", big[len(half):])]),
                                           (_assistant("x"), [])]),
        "gui_error": lambda: _session([(noop, [_tool("c0", _obs())]),
                                       (click, [_tool("c1", _obs(error=big))]),
                                       (_assistant("x"), [])]),
        "feedback_text": lambda: [*_session([(_assistant("a"), [])]),
                                  {"type": "feedback", "session_id": SID, "text": big}],
        "feedback_with_score": lambda: [*_session([(_assistant("a"), [])]), {
            "type": "feedback", "session_id": SID, "value": -1, "text": big}],
    }
    return [*sessions[place](), {"type": "session_end", "session_id": SID}]


PLACES = ("user", "request", "reply_and_request", "tool_result", "terminal_output",
          "assistant_text", "tool_arguments", "terminal_arguments", "gui_arguments",
          "system_prompt", "gui_observation", "gui_raw_trees", "gui_error", "feedback_text",
          "feedback_with_score")


def measure(shapes: list[str], places: list[str], size: int) -> list[dict[str, Any]]:
    """Process and close time, tuples made and dead letters of each (shape, place)."""
    from nextstate.daemon.config import load_config
    from nextstate.daemon.pipeline import Pipeline

    results = []
    for shape in shapes:
        big = huge_text(shape, size)
        for place in places:
            lines = [json.dumps(r).encode() for r in records(place, big)]
            with tempfile.TemporaryDirectory() as tmp:
                pipeline = Pipeline(load_config(None, state_dir=tmp + "/state"))
                start = time.perf_counter()
                for offset, value in enumerate(lines):
                    pipeline.process(value, None, "bench", 0, offset)
                pipeline.score_pending()  # (closed interactions are scored in runs)
                processed = time.perf_counter()
                pipeline.close()
                closed = time.perf_counter()
                stats = pipeline.stats
                results.append({
                    "shape": shape, "place": place, "process_s": processed - start,
                    "close_s": closed - processed,
                    "tuples": {e: int(n) for e in EXTRACTORS
                               if (n := stats.total("tuples", extractor=e))},
                    "dead_letters": int(stats.total("dead_letters"))})
    return results


def _run(args: argparse.Namespace, pythonpath: str | None) -> list[dict[str, Any]]:
    """:func:`measure` in a fresh interpreter (with ``pythonpath`` first on its path)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.json"
        env = dict(os.environ)
        if pythonpath is not None:
            env["PYTHONPATH"] = pythonpath
        subprocess.run([sys.executable, __file__, "--child", str(out), "--mb", str(args.mb),
                        "--shapes", args.shapes, "--places", args.places],
                       check=True, env=env, cwd=ROOT)
        return json.loads(out.read_text())


def _at_revision(args: argparse.Namespace) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory() as tmp:
        package = Path(tmp) / "nextstate"
        package.mkdir()
        (package / "__init__.py").write_text("")
        archive = subprocess.run(["git", "archive", args.against, "daemon", "extractors",
                                  "buffers"], cwd=ROOT, check=True, capture_output=True).stdout
        with tarfile.open(fileobj=BytesIO(archive)) as tar:
            tar.extractall(package, filter="data")
        return _run(args, tmp)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=float, default=15.0, help="the text's size, in MB")
    parser.add_argument("--shapes", default=",".join(SHAPES))
    parser.add_argument("--places", default=",".join(PLACES))
    parser.add_argument("--against", help="git revision to time side by side")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = measure(args.shapes.split(","), args.places.split(","), int(args.mb * 1e6))
        Path(args.child).write_text(json.dumps(result))
        return
    theirs = _at_revision(args) if args.against else None
    ours = _run(args, None)
    print(f"{args.mb:g} MB of one text, Pipeline.process + close (seconds)")
    header = f"{'shape':<8} {'place':<20}"
    if theirs is not None:
        header += f" {args.against + ' process':>16} {'close':>6}"
    print(header + f" {'process':>8} {'close':>6}  tuples")
    for index, row in enumerate(ours):
        line = f"{row['shape']:<8} {row['place']:<20}"
        if theirs is not None:
            line += f" {theirs[index]['process_s']:>16.2f} {theirs[index]['close_s']:>6.2f}"
        made = " ".join(f"{e}={n}" for e, n in row["tuples"].items())
        dead = f" dead_letters={row['dead_letters']}" if row["dead_letters"] else ""
        print(line + f" {row['process_s']:>8.2f} {row['close_s']:>6.2f}  {made}{dead}")


if __name__ == "__main__":
    main()

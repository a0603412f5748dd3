"""Build ``extractor_eval.jsonl`` from the hand-written cases in ``eval_src/``.

Run ``python tests/data/build_extractor_eval.py`` after editing a case file; the JSON lines
file is committed so that the evaluation command needs no build step.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE / "eval_src"))

import feedback_items  # noqa: E402
import gui_items  # noqa: E402
import heldout_feedback_items  # noqa: E402
import heldout_gui_items  # noqa: E402
import heldout_terminal_items  # noqa: E402
import heldout_tool_items  # noqa: E402
import heldout_user_items  # noqa: E402
import terminal_items  # noqa: E402
import tool_items  # noqa: E402
import user_items  # noqa: E402

SETS = {
    # Dev set: written first, measured, then used to find gaps in the rules.
    "extractor_eval.jsonl": (user_items, feedback_items, tool_items, terminal_items, gui_items),
    # Held-out set: written after the rule fixes, measured once, not used to change rules.
    "extractor_heldout.jsonl": (heldout_user_items, heldout_feedback_items,
                                heldout_tool_items, heldout_terminal_items, heldout_gui_items),
}


def _call(call_id: str, name: str, arguments: str) -> dict:
    return {"role": "assistant", "content": None, "tool_calls": [
        {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}]}


def _result(call_id: str, name: str, content: str) -> dict:
    return {"role": "tool", "tool_call_id": call_id, "name": name, "content": content}


def _item(source: str, index: int, case: str, context: list, action: dict, next_state: list,
          sign: int, hint: str | None, feedback: list | None = None) -> dict:
    item = {"id": f"{source}-{index:03d}", "source": source, "case": case, "context": context,
            "action": action, "next_state": next_state,
            "label": {"sign": sign, "hint": hint}}
    if feedback:
        item["feedback"] = feedback
    return item


def build(user, feedback_cases, tool, terminal, gui) -> list[dict]:
    """Labeled items from one set's case modules (user, feedback, tool, terminal, gui)."""
    items = []
    for i, (request, answer, reply, sign, hint) in enumerate(user.CASES):
        items.append(_item("user", i, "reply", [{"role": "user", "content": request}],
                           {"role": "assistant", "content": answer},
                           [{"role": "user", "content": reply}], sign, hint))
    for i, (events, sign, hint) in enumerate(feedback_cases.CASES):
        feedback = [{k: v for k, v in (("value", value), ("text", text)) if v is not None}
                    for value, text in events]
        items.append(_item("feedback", i, "feedback",
                           [{"role": "user", "content": "What's the weather in Oslo tomorrow?"}],
                           {"role": "assistant", "content": "Tomorrow: 50 F, light rain."}, [],
                           sign, hint, feedback))
    for i, (name, arguments, result, sign, hint) in enumerate(tool.CASES):
        items.append(_item("tool", i, "tool_result",
                           [{"role": "user", "content": "Please take care of this for me."}],
                           _call("call_1", name, arguments),
                           [_result("call_1", name, result)], sign, hint))
    for i, (tool, command, output, previous, sign, hint) in enumerate(terminal.CASES):
        arguments = json.dumps({"command": command})
        context = [{"role": "user", "content": "Fix the failing build and make the tests pass."}]
        if previous is not None:
            context += [_call("call_0", tool, arguments), _result("call_0", tool, previous),
                        {"role": "assistant", "content": "I edited the code; running again."}]
        items.append(_item("terminal", i, "terminal", context, _call("call_1", tool, arguments),
                           [_result("call_1", tool, output)], sign, hint))
    for i, (action, before, after, sign, hint) in enumerate(gui.CASES):
        context = [{"role": "user", "content": "Complete the task on the website."},
                   _call("call_0", "browser", json.dumps({"action": "noop()"})),
                   _result("call_0", "browser", before)]
        items.append(_item("gui", i, "gui_step", context,
                           _call("call_1", "browser", json.dumps({"action": action})),
                           [_result("call_1", "browser", after)], sign, hint))
    return items


if __name__ == "__main__":
    for name, modules in SETS.items():
        out = HERE / name
        rows = build(*modules)
        out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        print(f"wrote {len(rows)} items to {out}")

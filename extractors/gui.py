"""GUI / web state diffs: what did the action change on the page?

Observations are the results of GUI tools: a JSON object ``{"url", "title", "axtree"|"dom",
"error"}`` (the shape BrowserGym-style agents produce) or raw accessibility-tree / DOM text.
Given the observation before the action (the latest earlier GUI result in the context) and
the one after it, this extractor reads, in order:

1. the action's own error (``error`` field): the action failed (a timeout is milder than an
   invalid action);
2. an error page after navigation, or an error dialog / alert / toast that appeared;
3. a success toast ("saved", "has been added");
4. the targeted element's state change (``click('42')`` and line ``[42] ...`` changed; a
   ``fill`` whose value now shows), then navigation, then any significant change;
5. nothing changed for an action that should change something: a no-op, negative.

The diff is line-set based, linear in tree size: lines only in one of the two trees are the
change; pairs that differ only in digits or focus are noise (clocks, counters, focus rings).
Passive actions (``noop``, ``scroll``, ``send_msg_to_user``, notes) expect no change and are
only scored on their errors. The next-state excerpt is a compact diff.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from nextstate.extractors.names import GUI_TOOLS, json_object, tool_name
from nextstate.extractors.registry import register
from nextstate.extractors.types import (
    Interaction,
    Message,
    ScoredTuple,
    directive,
    evaluative,
)


class Observation(NamedTuple):
    """One parsed GUI observation."""

    url: str
    title: str
    tree: str
    error: str


class GuiReading(NamedTuple):
    """How one action's page change reads."""

    label: str
    reward: float
    confidence: float
    hint: str | None
    diff: str


PASSIVE_ACTIONS: frozenset[str] = frozenset({
    "noop", "scroll", "hover", "mouse_move", "send_msg_to_user", "report_infeasible",
    "take_note", "calculate", "screenshot", "wait", "focus", "tab_focus", "answer", "stop",
    "finish", "done", "note",
})
_NON_GUI_ACTIONS = frozenset({"send_msg_to_user", "report_infeasible", "take_note", "calculate",
                              "answer", "stop", "finish", "done", "note"})
_ACTION = re.compile(r"^\s*([A-Za-z_]\w*)\s*\(\s*(?:['\"]([^'\"]*)['\"])?(?:\s*,\s*['\"]"
                     r"([^'\"]*)['\"])?")
_BID = re.compile(r"^\s*\[([^\]]+)\]")
_BID_ANY = re.compile(r"\[[^\]\n]{1,12}\]")
# A line's noise key drops what ``\d+|, focused|\bfocused\b|^\s*\[[^\]]*\]\s*`` matches, in
# three steps (see _noise_key): that one regex tried four alternatives at every character,
# each of these skips to its candidates at C speed or is not run at all (two 7.5 MB trees
# whose every line changed: 3.1 s, now 0.8 s).
_LEADING_BID = re.compile(r"\s*\[[^\]]*\]\s*")
_FOCUSED = re.compile(r", focused|\bfocused\b")
_DIGITS = re.compile(r"\d+")
_NO_ASCII_DIGITS = str.maketrans("", "", "0123456789")
_ERROR_PAGE = re.compile(r"\b(?:404|403|500|502|503|not found|page not found|access denied|"
                         r"forbidden|internal server error|bad gateway|this site can.t be "
                         r"reached|err_\w+|whoops|something went wrong)\b", re.I)
_ALERT_ROLE = re.compile(r"^\s*(?:\[[^\]]*\]\s*)?(?:alert|alertdialog|dialog|status)\b")
_ERROR_TEXT = re.compile(r"\b(?:error|invalid|failed|failure|is required|required field|"
                         r"not found|denied|unable to|couldn.t|could not|went wrong|try again|"
                         r"incorrect|not allowed|please (?:enter|select|fill|correct))\b", re.I)
_SUCCESS_TEXT = re.compile(r"\b(?:success(?:fully)?|saved|has been (?:added|created|updated|"
                           r"saved|submitted|deleted|sent|posted)|you (?:saved|added|"
                           r"submitted)|thank you for your|added to (?:your )?cart)\b", re.I)
# A necessary lower-case substring of each alternative of _ERROR_TEXT and _SUCCESS_TEXT: a
# long ASCII line with none of them is not scanned (_may_search).
_ERROR_NEEDLES = ("error", "invalid", "fail", "required", "not found", "denied", "unable to",
                  "could", "went wrong", "try again", "incorrect", "not allowed", "please ")
_SUCCESS_NEEDLES = ("success", "saved", "has been ", "you ", "added to ")
_LONG_LINE = 256
_MAX_DIFF_LINES = 6
# Real targets are element ids, selectors or a message to the user (the longest in
# ../shared/data/gui-dev: 1,050 characters): named whole below this.
_MAX_TARGET_CHARS = 4000


def parse_observation(content: str) -> Observation:
    """Parse a GUI tool result: the JSON object shape, or raw tree/DOM text."""
    data = json_object(content)
    if data is not None:
        tree = data.get("axtree") or data.get("dom") or data.get("accessibility_tree") or ""
        return Observation(str(data.get("url") or ""), str(data.get("title") or ""),
                           str(tree), str(data.get("error") or data.get("last_action_error")
                                          or ""))
    return Observation("", "", content, "")


def parse_action(call_name: str, arguments: str) -> tuple[str, str | None, str | None]:
    """``(action name, target id, value)`` from a GUI call.

    Handles BrowserGym-style ``{"action": "click('42')"}`` arguments and tools named after
    the action (``click`` with ``{"bid": "42"}``).
    """
    text = arguments
    data = json_object(arguments)
    if data is not None:
        action = data.get("action")
        if isinstance(action, str) and "(" in action:
            text = action
        else:
            target = next((str(data[k]) for k in ("bid", "element", "element_id", "ref", "id",
                                                  "selector") if k in data), None)
            value = next((str(data[k]) for k in ("value", "text", "url") if k in data), None)
            name = action if isinstance(action, str) and action else call_name
            return name, target, value
    match = _ACTION.match(text)
    if match:
        return match.group(1), match.group(2), match.group(3)
    return call_name, None, None


def _may_search(pattern: re.Pattern[str], needles: tuple[str, ...], line: str) -> bool:
    """Whether ``pattern`` matches somewhere in ``line``.

    A long line (a page on one line: 15 MB took 0.5 s a scan) is first checked for the
    needles at C speed; ASCII only, as re.I folds a few other letters onto ASCII ones.
    """
    if len(line) > _LONG_LINE and line.isascii():
        low = line.lower()
        if not any(needle in low for needle in needles):
            return False
    return pattern.search(line) is not None


def _noise_key(line: str) -> str:
    """The line without digits, bids and focus marks, stripped.

    The same as one substitution of the four patterns (tests/extractors/test_long_text.py
    compares them): a leading bid can only match at the start, where no other can; the focus
    marks hold no digit, so they are the same matches before the digits go or after; and the
    digits all go, whatever came out first.
    """
    bid = _LEADING_BID.match(line)
    if bid is not None:
        line = line[bid.end():]  # "\b" at the cut: after "]" or a blank, as in the line
    if "focused" in line:
        line = _FOCUSED.sub("", line)
    if len(line) > _LONG_LINE and line.isascii():  # \d in ASCII text is 0-9: 25x faster
        return line.translate(_NO_ASCII_DIGITS).strip()
    return _DIGITS.sub("", line).strip()


def diff_trees(before: str, after: str) -> tuple[list[str], list[str]]:
    """Lines added and removed between two trees, noise pairs dropped; linear in size.

    A removed and an added line that are equal once digits, bids and focus marks are dropped
    are the same element with a ticking number or moved focus: noise, not change.
    """
    before_list, after_list = before.splitlines(), after.splitlines()
    before_lines, after_lines = set(before_list), set(after_list)
    added = [ln for ln in after_list if ln not in before_lines and ln.strip()]
    removed = [ln for ln in before_list if ln not in after_lines and ln.strip()]
    if added and removed:
        # Each line's key once (a key is a regex substitution: half of a big diff's time).
        added_keys = [_noise_key(ln) for ln in added]
        removed_keys = [_noise_key(ln) for ln in removed]
        added_set, removed_set = set(added_keys), set(removed_keys)
        added = [ln for ln, key in zip(added, added_keys, strict=True)
                 if key not in removed_set]
        removed = [ln for ln, key in zip(removed, removed_keys, strict=True)
                   if key not in added_set]
    return added, removed


def _compact(action: str, before: Observation | None, after: Observation, added: list[str],
             removed: list[str]) -> str:
    parts = [action]
    if before is not None and before.url != after.url:
        parts.append(f"url {before.url} -> {after.url}")
    if before is not None and before.title != after.title:
        parts.append(f"title {before.title!r} -> {after.title!r}")
    if after.error:
        parts.append(f"error {after.error.splitlines()[0][:160]}")
    parts.append(f"+{len(added)}/-{len(removed)} lines")
    parts.extend("+ " + ln.strip()[:100] for ln in added[:_MAX_DIFF_LINES])
    parts.extend("- " + ln.strip()[:100] for ln in removed[: _MAX_DIFF_LINES // 2])
    return "; ".join(parts)


def _call_text(action: str, target: str | None) -> str:
    """How the hint and the diff name the action: ``click('42')``."""
    if not target:
        return f"{action}()"
    if len(target) > _MAX_TARGET_CHARS:
        # A 15 MB target (a message to the user) made a 15 MB hint and excerpt, which
        # every tuple then carried through redaction into the store (2-4 s).
        return f"{action}({target[:_MAX_TARGET_CHARS]!r}...)"
    return f"{action}({target!r})"


def read_gui_change(action: str, target: str | None, value: str | None,
                    before: Observation | None, after: Observation) -> GuiReading | None:
    """Score one GUI action from the observations before and after it."""
    call_text = _call_text(action, target)
    if after.error:
        first = after.error.strip().splitlines()[0][:200]
        timeout = "timeout" in first.lower()
        reward, confidence = (-0.5, 0.8) if timeout else (-0.8, 0.9)
        added, removed = diff_trees(before.tree, after.tree) if before else ([], [])
        return GuiReading("action_error", reward, confidence,
                          f"The action {call_text} failed: {first}",
                          _compact(call_text, before, after, added, removed))
    if action in _NON_GUI_ACTIONS:
        return None
    if before is None:
        if _ERROR_PAGE.search(after.title):
            return GuiReading("error_page", -0.6, 0.8, None,
                              _compact(call_text, None, after, [], []))
        return None
    added, removed = diff_trees(before.tree, after.tree)
    diff = _compact(call_text, before, after, added, removed)
    navigated = before.url != after.url
    # Element ids like [500] are not status codes: look at the page's words only.
    head = _BID_ANY.sub("", after.title + "\n" + after.tree[:400])
    if (navigated or before.title != after.title) and _ERROR_PAGE.search(head) and not \
            _ERROR_PAGE.search(_BID_ANY.sub("", before.title + "\n" + before.tree[:400])):
        return GuiReading("error_page", -0.6, 0.8,
                          f"The action {call_text} led to an error page: {after.title[:120]}",
                          diff)
    alerts = [ln for ln in added if _ALERT_ROLE.match(ln)]
    # A message counts only in a small change or beside an alert: no scan otherwise.
    if alerts or len(added) <= 20:
        error_line = next((ln for ln in added[:200]
                           if _may_search(_ERROR_TEXT, _ERROR_NEEDLES, ln)), None)
        if error_line is not None:
            message = error_line.strip()[:200]
            return GuiReading("error_message", -0.6, 0.85 if alerts else 0.7,
                              f"After {call_text} the page showed: {message}", diff)
        if any(_may_search(_SUCCESS_TEXT, _SUCCESS_NEEDLES, ln) for ln in added[:200]):
            return GuiReading("success_message", 0.7, 0.8, None, diff)
    if target:
        marker = f"[{target}]"
        changed = [ln for ln in added if ln.lstrip().startswith(marker)]
        if changed and value and action in ("fill", "type", "select_option") and \
                value.lower() in changed[0].lower():
            return GuiReading("value_set", 0.6, 0.8, None, diff)
        if changed or any(ln.lstrip().startswith(marker) for ln in removed):
            return GuiReading("target_changed", 0.5, 0.7, None, diff)
    if navigated:
        return GuiReading("navigation", 0.5, 0.65, None, diff)
    if added or removed or before.title != after.title:
        return GuiReading("page_changed", 0.3, 0.55, None, diff)
    if action in PASSIVE_ACTIONS:
        return None
    return GuiReading("no_op", -0.5, 0.75,
                      f"The action {call_text} changed nothing on the page; "
                      "target another element or use another action.", diff)


@register("gui")
class GuiDiffExtractor:
    """Scores GUI actions by diffing the observations before and after them.

    Args:
        tools: names of the GUI tools (defaults: browser, computer, click, navigate, ...).
        history: how many earlier messages to search for the observation before the action.

    Example:
        >>> import json
        >>> from nextstate.extractors.types import Interaction, Message, ToolCall
        >>> obs = json.dumps({"url": "u", "title": "t", "axtree": "[1] button 'Go'"})
        >>> call = ToolCall("c2", "browser", json.dumps({"action": "click('1')"}))
        >>> i = Interaction("s#3", "s", (Message("tool", obs, tool_call_id="c1",
        ...                 name="browser"),), Message("assistant", tool_calls=(call,)),
        ...                 (Message("tool", obs, tool_call_id="c2", name="browser"),))
        >>> [(t.reward, t.kind) for t in GuiDiffExtractor()(i)]
        [(-0.5, 'evaluative'), (0.0, 'directive')]
    """

    reads = frozenset({"tool"})  # see registry.Dispatch
    __slots__ = ("_cache_content", "_cache_obs", "history", "tools")

    def __init__(self, tools: tuple[str, ...] | list[str] | None = None,
                 history: int = 40) -> None:
        self.tools = frozenset(tools) if tools is not None else GUI_TOOLS
        self.history = history
        # The observation after step k is the one before step k+1: parse it once.
        self._cache_content: str | None = None
        self._cache_obs: Observation | None = None

    def scores_call_to(self, name: str) -> bool:
        """Whether an action whose only tool call is to ``name`` can get a tuple (see
        registry.Dispatch): only if it is a GUI tool."""
        return name in self.tools

    def _parse(self, content: str) -> Observation:
        if content is not self._cache_content:
            self._cache_content, self._cache_obs = content, parse_observation(content)
        assert self._cache_obs is not None
        return self._cache_obs

    def _before(self, interaction: Interaction) -> Message | None:
        context = interaction.context
        stop = max(0, len(context) - self.history)
        for index in range(len(context) - 1, stop - 1, -1):
            message = context[index]
            if message.role == "tool" and tool_name(message, context, index) in self.tools:
                return message
        return None

    def __call__(self, interaction: Interaction) -> list[ScoredTuple]:
        action_calls = interaction.action.tool_calls
        if len(action_calls) == 1 and action_calls[0].name not in self.tools:
            return []  # the usual action calls one tool, most often not a GUI one
        calls = [c for c in action_calls if c.name in self.tools]
        if not calls:
            return []
        ids = {c.id for c in calls}
        after_message = next((m for m in interaction.next_state if m.role == "tool" and (
            m.tool_call_id in ids or m.name in self.tools)), None)
        if after_message is None:
            return []
        call = next((c for c in calls if c.id == after_message.tool_call_id), calls[-1])
        action, target, value = parse_action(call.name, call.arguments)
        before_message = self._before(interaction)
        before = self._parse(before_message.content) if before_message is not None else None
        after = self._parse(after_message.content)
        reading = read_gui_change(action, target, value, before, after)
        if reading is None:
            return []
        confidence = reading.confidence
        tuples = [evaluative(interaction, "gui", "gui", reading.diff, reading.reward,
                             confidence, "tool_args", reading.label)]
        if reading.hint and reading.reward < 0:
            tuples.append(directive(interaction, "gui", "gui", reading.diff, reading.hint,
                                    0.7 if confidence > 0.7 else confidence, "tool_args",
                                    reading.label))
        return tuples

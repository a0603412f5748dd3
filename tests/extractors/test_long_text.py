"""Long texts (a record holds up to 16 MB of one) are read by bounded windows: a reading
costs the same at any length, and a long text reads as its window does."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from nextstate.extractors import gui, redact, terminal, user
from nextstate.extractors.feedback import FeedbackExtractor
from nextstate.extractors.gui import parse_observation, read_gui_change
from nextstate.extractors.redact import Redactor
from nextstate.extractors.types import Feedback, ScoredTuple
from nextstate.extractors.user import UserReplyExtractor, reply_window
from nextstate.extractors.window import head_and_tail

# About 1 MB each: prose, one character repeated, and a text with no blank at all.
FILLERS = {
    "log lines": "".join(f"2026-01-01 12:00:{i % 60:02d} worker {i} ok\n"
                         for i in range(30_000)),
    "one character": "a" * 1_000_000,
    "no blanks": "x1y2z3/" * 150_000,
}
# (head, what the middle says, tail): the middle would change the reading if it were read.
REPLIES = [
    ("Thanks, that fixed it. Here is the log:\n", "that's wrong, nothing works",
     "\nAnything else to check?"),
    ("Here is the output:\n", "thanks, perfect", "\nNo, I asked for Tuesday."),
    ("log:\n", "actually it should be Friday", ""),
    ("", "no, use Celsius", "what does this mean?"),
]


def _long(head: str, middle: str, tail: str, filler: str) -> str:
    return f"{head}{filler} {middle} {filler}{tail}"


def _fields(tuples: list[ScoredTuple]) -> list[tuple[Any, ...]]:
    return [(t.kind, t.reward, t.confidence, t.hint, t.next_state_excerpt) for t in tuples]


class _Counting:
    """Stands in for a compiled regex and records the length of every text it is handed."""

    __slots__ = ("pattern", "seen")

    def __init__(self, pattern: re.Pattern[str], seen: list[int]) -> None:
        self.pattern, self.seen = pattern, seen

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self.pattern, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            text = args[1] if name in ("sub", "subn") else args[0]  # sub(repl, text)
            self.seen.append(len(text))
            return method(*args, **kwargs)

        return call


@pytest.fixture
def lengths_read(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The length of every text the user rules hand a regex or split into words."""
    seen: list[int] = []
    for name, value in list(vars(user).items()):
        if isinstance(value, re.Pattern):
            monkeypatch.setattr(user, name, _Counting(value, seen))
    monkeypatch.setattr(user, "_COMPLAINT_COMPILED", tuple(
        (triggers, _Counting(pattern, seen)) for triggers, pattern in user._COMPLAINT_COMPILED))
    words = user._words

    def counted_words(low: str) -> frozenset[str]:
        seen.append(len(low))
        return words(low)

    monkeypatch.setattr(user, "_words", counted_words)
    return seen


WINDOW = user._REPLY_HEAD + 1 + user._REPLY_TAIL


@pytest.mark.parametrize("filler", FILLERS.values(), ids=list(FILLERS))
@pytest.mark.parametrize(("head", "middle", "tail"), REPLIES)
def test_a_long_reply_is_read_within_its_window(chat, lengths_read: list[int], head: str,
                                                middle: str, tail: str, filler: str) -> None:
    """No user rule hands a regex or the word split more than the window of a 2 MB reply
    (the whole reply was read: 15 MB took 4 s)."""
    UserReplyExtractor()(chat(_long(head, middle, tail, filler)))
    assert lengths_read and max(lengths_read) <= WINDOW


@pytest.mark.parametrize("filler", FILLERS.values(), ids=list(FILLERS))
def test_a_long_request_is_compared_within_its_window(chat, lengths_read: list[int],
                                                      filler: str) -> None:
    """A short reply that may rephrase a 2 MB request reads the request's window only."""
    request = _long("What's the weather in Oslo tomorrow? ", "please", "", filler)
    reading = UserReplyExtractor()(chat("the weather in Oslo tomorrow, please check",
                                        request=request))
    assert reading == [] and lengths_read and max(lengths_read) <= WINDOW


@pytest.mark.parametrize("filler", FILLERS.values(), ids=list(FILLERS))
@pytest.mark.parametrize(("head", "middle", "tail"), REPLIES)
def test_a_long_reply_reads_as_its_window(chat, head: str, middle: str, tail: str,
                                          filler: str) -> None:
    """Whatever the middle of a long reply says, it reads as its head and tail do."""
    reply = _long(head, middle, tail, filler)
    extractor = UserReplyExtractor()
    assert _fields(extractor(chat(reply))) == _fields(extractor(chat(reply_window(reply))))
    assert reply_window(reply) == head_and_tail(reply, user._REPLY_HEAD, user._REPLY_TAIL)


@pytest.mark.parametrize("value", [None, -1.0])
@pytest.mark.parametrize(("head", "middle", "tail"), REPLIES)
def test_a_long_feedback_text_reads_as_its_window(chat, head: str, middle: str, tail: str,
                                                  value: float | None) -> None:
    """A feedback text is read as a reply is: its hint too comes from its window."""
    text = _long(head, middle, tail, FILLERS["log lines"])

    def read(text: str) -> list[tuple[Any, ...]]:
        return _fields(FeedbackExtractor()(chat(None, feedback=[Feedback(value, text)])))

    assert read(text) == read(reply_window(text))


def test_short_replies_are_read_whole() -> None:
    """Texts up to the window's size are their own window (every reply of the eval sets)."""
    text = "No, I asked for Tuesday. " * 640  # 16,000 characters
    assert reply_window(text) is text
    assert reply_window(text + "!") == text[:8000] + "\n" + (text + "!")[-8000:]


def test_a_window_is_its_own_window() -> None:
    """Reading a text and reading its window agree (the feedback extractor reads twice)."""
    for size in (0, 10, 16_000, 16_001, 16_002, 100_000):
        window = reply_window("ab\n" * size)
        assert reply_window(window) == window


def test_terminal_window_is_unchanged() -> None:
    """The terminal extractor's window is still its first 4,000 and last 12,000 characters."""
    output = "".join(f"line {i}\n" for i in range(5000))
    assert terminal._window(output) == output[:4000] + "\n" + output[-12000:]
    assert terminal._window(output[:16_000]) == output[:16_000]
    assert head_and_tail("abc", 1, 0) == "a\n"  # no tail: not text[-0:], the whole text


def test_a_long_gui_target_is_named_by_its_head() -> None:
    """A 1 MB message to the user is named by its head in the hint and the diff (they held it
    whole, through redaction into the store); a real one (1,050 characters) whole."""
    before = parse_observation(json.dumps({"url": "u", "title": "t", "axtree": "[1] a"}))
    after = parse_observation(json.dumps({"url": "u", "title": "t", "axtree": "[1] a",
                                          "error": "TimeoutError: page closed"}))
    long_target = "Here is the report. " * 50_000
    reading = read_gui_change("send_msg_to_user", long_target, None, before, after)
    assert reading is not None and reading.hint is not None
    assert reading.hint.startswith("The action send_msg_to_user('Here is the report. ")
    assert len(reading.hint) < 4200 and len(reading.diff) < 4200
    real = "nc/test-circle-ci\n" * 58
    reading = read_gui_change("send_msg_to_user", real, None, before, after)
    assert reading is not None and f"send_msg_to_user({real!r})" in reading.diff


_OLD_NOISE = re.compile(r"\d+|, focused|\bfocused\b|^\s*\[[^\]]*\]\s*")


@example("\t[42] button 'Add to cart', focused")
@example(" [a]focused 1focused focused2 foc1used ,focused")
@given(st.lists(st.sampled_from(["[", "]", " ", "\t", "\u00a0", "1", "\u0663", "f", "ocused",
                                 "focused", ", focused", ",", "x", "_", "é", "'", "x" * 300]),
                max_size=12).map("".join))
def test_noise_keys_are_those_of_the_one_regex(line: str) -> None:
    """The GUI diff's noise key in three steps is the one-regex key it was."""
    assert gui._noise_key(line) == _OLD_NOISE.sub("", line).strip()


def test_a_long_changed_tree_diffs_as_before() -> None:
    """A 1 MB tree whose every line changed: the same lines added and removed as with the
    one-regex keys (which took 0.45 s a MB)."""
    before = "".join(f"\t[{i}] StaticText 'row {i} of the list'\n" for i in range(30_000))
    after = before.replace("row", "line").replace("[7]", "[7] focused")
    added, removed = gui.diff_trees(before, after)
    old_keys = {_OLD_NOISE.sub("", ln).strip() for ln in before.splitlines()}
    assert added == [ln for ln in after.splitlines()
                     if _OLD_NOISE.sub("", ln).strip() not in old_keys]
    assert len(added) == len(removed) == 30_000


@pytest.mark.parametrize("key", ["apikey", "apiKey", "Api_key", "api_Key", "Api-key",
                                 "api-Key"])
def test_the_secret_guard_passes_every_api_key_spelling(key: str) -> None:
    """The API-key needles cover every spelling ``[Aa]pi[_-]?[Kk]ey`` matches."""
    text = f'config {key}: "abcdefgh1234"'
    assert redact._SECRET.search(text) and redact._may_hold_secret(text)


def test_a_long_blob_with_no_secret_skips_the_secret_scan() -> None:
    """A base64 blob in JSON arguments holds "pi", "ey" and ":" but no API key: the guard
    no longer sends it through the secret scan (15 MB: 2-3 s)."""
    blob = "".join(chr(48 + (i * 7919) % 75) for i in range(4096)) + "piey"
    arguments = json.dumps({"data": blob * 100})
    assert not redact._may_hold_secret(arguments)
    assert Redactor().redact_text(arguments) is arguments


_MESSAGE_PIECES = ["x" * 300, " ", "-", "É", "\u017f", "error", "ERROR", "Invalid", "failed",
                   "is required", "required field", "not found", "denied", "unable to",
                   "couldn't", "could not", "went wrong", "try again", "incorrect",
                   "not allowed", "please enter", "success", "Successfully", "saved",
                   "has been added", "you saved", "thank you for your", "added to cart",
                   "added to your cart", "errors", "could"]


@example("x" * 300 + " error")
@example("x" * 300 + " \u017fuccess")
@given(st.lists(st.sampled_from(_MESSAGE_PIECES), max_size=8).map("".join))
def test_message_needles_never_skip_a_match(line: str) -> None:
    """A long line skipped for want of a needle is one the message regexes do not match."""
    for pattern, needles in ((gui._ERROR_TEXT, gui._ERROR_NEEDLES),
                             (gui._SUCCESS_TEXT, gui._SUCCESS_NEEDLES)):
        assert gui._may_search(pattern, needles, line) == bool(pattern.search(line))

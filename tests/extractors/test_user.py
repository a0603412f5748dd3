"""Tests for the user-reply extractor."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nextstate.extractors import user
from nextstate.extractors.user import UserReplyExtractor, classify_reply, correction_hint


@pytest.mark.parametrize("reply", [
    "Thanks, that's exactly what I needed!",
    "Perfect, works now.",
    "Great job, looks good to me.",
    "no worries, thanks a lot",
])
def test_satisfied_replies_are_positive(reply: str) -> None:
    """Thanks and satisfaction read as a positive signal."""
    reading = classify_reply(reply)
    assert reading is not None and reading.reward > 0


@pytest.mark.parametrize("reply", [
    "That's wrong, I asked for Tuesday.",
    "No, use the metric system.",
    "This doesn't work at all.",
    "You forgot the attachment.",
    "Great, now nothing works.",
    "Oh wonderful, another error.",
    "Thanks for nothing.",
    "Thanks, but I wanted it in euros.",
    "Hmm, I think the deadline was Friday, not Thursday.",
])
def test_corrections_complaints_and_sarcasm_are_negative(reply: str) -> None:
    """Corrections, complaints, sarcasm and 'thanks, but' read as negative."""
    reading = classify_reply(reply)
    assert reading is not None and reading.reward < 0


def test_neutral_new_request_gives_no_signal() -> None:
    """A new request with no acknowledgement says nothing about the previous action."""
    assert classify_reply("Can you summarize this paper for me?") is None


def test_rephrased_request_is_negative() -> None:
    """Repeating the previous request means the action missed it."""
    reading = classify_reply("what is the weather in Oslo for tomorrow",
                             "What's the weather in Oslo tomorrow?")
    assert reading is not None and reading.label == "rephrase"


@pytest.mark.parametrize(("reply", "expected"), [
    ("No, use the metric system.", "use the metric system"),
    ("That's wrong, I asked for Tuesday.", "I asked for Tuesday"),
    ("Thanks, but please use euros.", "please use euros"),
])
def test_correction_hint_is_the_directive_clause(reply: str, expected: str) -> None:
    """The hint is the clause that says what was wanted, without the complaint."""
    assert correction_hint(reply) == expected


def test_extractor_emits_evaluative_and_directive_tuples(chat) -> None:
    """A correction yields an evaluative tuple and a directive tuple with the hint."""
    tuples = UserReplyExtractor()(chat("No, use the metric system."))
    assert [t.kind for t in tuples] == ["evaluative", "directive"]
    assert tuples[0].source == "user" and tuples[0].reward < 0
    assert tuples[1].hint == "use the metric system"


def test_extractor_without_reply_returns_nothing(chat) -> None:
    """No user message in the next state: no tuple."""
    assert UserReplyExtractor()(chat(None)) == []


def test_min_confidence_drops_weak_readings(chat) -> None:
    """Readings under min_confidence (an acknowledged move on) are dropped."""
    interaction = chat("Ok, now book a table for two.")
    assert UserReplyExtractor()(interaction)
    assert UserReplyExtractor(min_confidence=0.8)(interaction) == []


# The ungated reading, as first written: every regex family scanned on every reply. The
# word gates in user.py must never change a reading, only skip scans that cannot match.
def _reference_hint(reply: str) -> str | None:
    after_contrast = None
    match = user._CONTRAST.search(reply)
    if match and user._PRAISE_OPENER.match(reply.lower()):
        after_contrast = reply[match.end():]
    for text in (after_contrast, reply):
        if not text:
            continue
        for clause in user._SENTENCES.split(text):
            clause = user._LEADING_FILLER.sub("", clause).strip(" ,.;!-\n\t")
            if len(clause) >= 4 and user._DIRECTIVE.search(clause):
                return clause[:300]
    if after_contrast:
        clause = user._LEADING_FILLER.sub("", after_contrast).strip(" ,.;!-\n\t")
        return clause[:300] if len(clause) >= 4 else None
    return None


def _reference_reading(reply: str, request: str | None) -> tuple | None:
    text = user._normalise(reply)
    if not text:
        return None
    text = user._QUOTED.sub("'…'", text) if ("'" in text or '"' in text or "`" in text) else text
    low = text.lower()
    praise = user._PRAISE_OPENER.match(low)
    if (praise and user._SARCASM_OUTCOME.search(low)) or user._SARCASM_ALONE.search(low):
        return ("sarcasm", None)
    complaint = user._COMPLAINT.search(low)
    if complaint and user._BARE_NO.match(complaint.group(0)) and user._COMPLAINT.search(
            low, complaint.end()) is None and user._POSITIVE.search(low):
        complaint = None
    if complaint:
        return ("complaint", _reference_hint(text))
    if praise and user._CONTRAST.search(low, praise.end()):
        return ("correction", _reference_hint(text))
    if user._POLITE_CORRECTION.search(low):
        return ("correction", _reference_hint(text))
    if request and user._similar(text, request):
        return ("rephrase", None)
    if user._POSITIVE.search(low):
        return ("satisfied", None)
    if user._MOVE_ON.match(low):
        return ("moves_on", None)
    return None


_VOCAB = sorted({
    *user._SARCASM_TRIGGERS, *user._POLITE_TRIGGERS, *user._POSITIVE_TRIGGERS,
    *user._DIRECTIVE_TRIGGERS, *(w for t, _ in user._COMPLAINT_GROUPS if t for w in t),
    "hallucinated", "hmmm", "umm", "i", "you", "that's", "it's", "doesn't", "didn't", "won't",
    "isn't", "wasn't", "aren't", "shouldn't", "don't", "you're", "the", "a", "app", "again",
    "work", "sense", "up", "of", "than", "quite", "really", "problem", "worries", "be",
    "what", "wanted", "Tuesday", "Celsius", "'x'", "ſhould", "K", "-", "but", "however",
    # heads of multi-word alternatives, so that random replies reach every branch
    "i said", "i asked for", "i told you", "i meant", "i think it", "i was hoping for",
    "that's wrong", "this is not right", "it's still broken", "that is a mistake",
    "not what i wanted", "not helpful", "nothing works", "now it crashed", "the app broke",
    "doesn't work", "did not help", "still not working", "you forgot", "you got it wrong",
    "you made that up", "you didn't read", "try again", "redo it", "wrong answer",
    "makes no sense", "that's not it", "why did you", "are you sure", "where did you get",
    "should be", "shouldn't have", "instead of", "rather than", "not quite", "close, but",
    "double-check", "looks off", "seems too long", "supposed to", "could you use",
    "please keep", "you need to include", "isn't it", "paris, not", "thank you",
    "much appreciated", "it works", "that did the trick", "works perfectly", "looks good",
    "spot on", "exactly what i needed", "great job", "you're a lifesaver", "problem solved",
    "that's right", "no problem", "all good", "nailed it", "well done", "now nothing works",
    "now it is broken", "thanks for nothing", "another error", "deleted everything",
    "even worse", "yeah, right", "exactly what i didn't", "breaking things",
    "use celsius", "make sure", "do not", "has to", "in metric", "it's friday not",
    "the date is", "was on", "no, use", "ok, now", "got it", "sure thing",
})
_SEPARATORS = st.sampled_from([" ", " ", " ", ", ", ". ", "! ", "? ", "; ", "\n", " - "])


def _corpus() -> list[str]:
    data = Path(__file__).resolve().parents[1] / "data"
    replies = list(_VOCAB)
    for name in ("extractor_eval.jsonl", "extractor_heldout.jsonl"):
        for line in (data / name).read_text().splitlines():
            item = json.loads(line)
            replies += [m["content"] for m in item.get("next_state", ())
                        if m.get("role") == "user" and isinstance(m.get("content"), str)]
            replies += [f["text"] for f in item.get("feedback", ()) if f.get("text")]
    return replies


def test_gated_reading_equals_ungated_on_the_eval_replies_and_phrases() -> None:
    """On every labeled reply and every trigger phrase alone, gated and ungated readings agree."""
    request = "what's the weather in oslo tomorrow please"
    for reply in _corpus():
        reading = classify_reply(reply, request)
        got = (reading.label, reading.hint) if reading else None
        expected = _reference_reading(reply, request)
        if expected is not None and expected[0] in ("sarcasm", "rephrase", "satisfied",
                                                    "moves_on"):
            expected = (expected[0], None)
        assert got == expected, reply


@settings(max_examples=1500)
@given(st.lists(st.tuples(st.sampled_from(_VOCAB), _SEPARATORS), min_size=1, max_size=14),
       st.booleans())
def test_gated_reading_equals_ungated_regex_battery(parts: list[tuple[str, str]],
                                                    capital: bool) -> None:
    """Word gates only skip scans: the label and hint equal the plain regex battery's."""
    reply = "".join(w + sep for w, sep in parts).strip()
    reply = reply.capitalize() if capital else reply
    request = "what's the weather in oslo tomorrow please"
    reading = classify_reply(reply, request)
    got = (reading.label, reading.hint) if reading else None
    expected = _reference_reading(reply, request)
    if expected is not None and expected[0] in ("sarcasm", "rephrase", "satisfied", "moves_on"):
        expected = (expected[0], None)
    assert got == expected


@settings(max_examples=1000)
@given(st.lists(st.tuples(st.sampled_from(_VOCAB), _SEPARATORS), min_size=1, max_size=14),
       st.integers(0, 40))
def test_find_complaint_equals_combined_regex(parts: list[tuple[str, str]], pos: int) -> None:
    """The grouped complaint search returns the combined regex's leftmost match, from any pos."""
    low = "".join(w + sep for w, sep in parts).lower()
    pos = min(pos, len(low))
    expected = user._COMPLAINT.search(low, pos)
    got = user._find_complaint(low, set(user._RUN.findall(low, pos)), pos)
    assert (got.span() if got else None) == (expected.span() if expected else None)


def test_reading_memo_is_bounded_and_skips_long_replies(chat) -> None:
    """The per-extractor memo of short replies never holds more than memo_entries readings."""
    extractor = UserReplyExtractor(memo_entries=8)
    for k in range(50):
        extractor(chat(f"thanks a lot {k}"))
    extractor(chat("thanks " * 40))
    assert len(extractor._readings) == 8
    assert extractor(chat("thanks a lot 3"))[0].reward > 0  # evicted, read again the same


def test_memo_of_a_reply_still_reads_it_against_each_request() -> None:
    """The memo is keyed by the reply alone: the rephrase rule still sees each request."""
    from nextstate.extractors.types import Interaction, Message

    extractor = UserReplyExtractor()

    def answered(request: str, reply: str) -> Interaction:
        return Interaction("s#2", "s", (Message("user", request),),
                           Message("assistant", "It is 12C."), (Message("user", reply),))

    reply = "What's the weather in Oslo on Friday?"
    labels = [extractor(answered(request, reply))
              for request in ("What's the weather in Oslo on Friday?", "Book a table for two")]
    assert labels[0][0].reward == -0.6 and labels[1] == []
    assert len(extractor._readings) == 1


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(
    st.sampled_from(["thanks!", "No, use Celsius.", "ok, now Paris", "Paris on Friday?",
                     "Thanks, but I asked for Tuesday", "what's the weather in Paris?", " ",
                     "hmm, I think it should be Friday", "great, now nothing works"]),
    st.sampled_from(["What's the weather in Paris on Friday?", "paris on friday?", "thanks!",
                     "", "Thanks, but I asked for Tuesday!", "WHAT'S THE WEATHER IN PARIS?"])),
    max_size=12))
def test_memoized_readings_equal_fresh_ones(pairs) -> None:
    """Whatever replies recur with whatever requests (through memos small enough to evict),
    the tuples encode as a fresh read's and read as classify_reply does."""
    import msgspec

    from nextstate.extractors.types import Interaction, Message

    memo, fresh = UserReplyExtractor(memo_entries=2), UserReplyExtractor(memo_chars=-1)
    for reply, request in pairs:
        interaction = Interaction("s#2", "s", (Message("user", request),),
                                  Message("assistant", "It is 12C."), (Message("user", reply),))
        got = memo(interaction)
        assert msgspec.msgpack.encode(got) == msgspec.msgpack.encode(fresh(interaction))
        reading = classify_reply(reply, request)
        assert [t.reward for t in got[:1]] == ([reading.reward] if reading else [])
        assert len(memo._readings) <= 2


@settings(max_examples=1000)
@given(st.text(alphabet=st.characters(max_codepoint=0x17F), max_size=60)
       | st.lists(st.sampled_from(_VOCAB), max_size=10).map(" ".join))
def test_words_equal_the_word_regex(text: str) -> None:
    """The byte-table split finds the same word runs as ``_WORD``, ASCII or not, any case."""
    for variant in (text, text.lower()):
        assert user._words(variant) == frozenset(user._WORD.findall(variant))

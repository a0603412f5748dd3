"""User replies: was the user satisfied, did they correct the action, or just move on?

The reply that follows an assistant turn is the richest free signal a chat agent gets. This
module reads it with precompiled rules, in the order that resolves the hard cases:

1. sarcasm ("great, now it's broken") and "thanks, but ..." are negative although they open
   with praise: praise followed by a complaint or a contrast is read as the complaint;
2. explicit corrections and complaints ("that's wrong", "I asked for Tuesday") are negative
   and confident; polite corrections ("actually, it should be Friday") are negative too;
3. a reply that repeats or rephrases the previous request says the action missed it;
4. thanks / satisfaction is positive; an acknowledged move on ("ok, now ...") weakly positive;
5. anything else (a neutral new request) yields no tuple.

A correction also yields a directive tuple whose hint is the clause of the reply that says what
was wanted ("use the metric system", "I asked for Tuesday").
"""

from __future__ import annotations

import re
from difflib import SequenceMatcher
from typing import NamedTuple

from nextstate.extractors.lru import LruCache
from nextstate.extractors.names import previous_user_request
from nextstate.extractors.registry import register
from nextstate.extractors.types import (
    Interaction,
    ScoredTuple,
    directive,
    evaluative,
    next_user_message,
)
from nextstate.extractors.window import head_and_tail


class ReplyReading(NamedTuple):
    """How one reply reads: a label, its reward and confidence, and a hint for corrections."""

    label: str
    reward: float
    confidence: float
    hint: str | None = None


_PRAISE_OPENER = re.compile(
    r"^\W*(?:oh,?\s+|wow,?\s+|well,?\s+)?(?:thanks?|thank you|thx|ty|perfect|great|awesome|"
    r"excellent|nice|brilliant|amazing|wonderful|fantastic|lovely|cool|good job|well done|"
    r"super|splendid|terrific|good|ok(?:ay)?|fine|sure|yes|cool cool)\b")
_SARCASM_OUTCOME = re.compile(
    r"\b(?:now nothing (?:works|loads|runs|happens)|"
    r"now (?:it|nothing|everything|the \w+)\b.{0,40}\b(?:broken|broke|crash\w*|fails?|"
    r"failing|gone|deleted|lost|worse|doesn'?t|won'?t|isn'?t)|for nothing|another (?:error|"
    r"bug|crash|failure|exception)|(?:broke|deleted|wiped|lost|crashed) (?:everything|it|the|my|"
    r"all)|even worse|yeah,? right|just what i needed,? another|exactly what i didn'?t|"
    r"(?:breaking|ruining|deleting|wiping) \w+)\b")
_SARCASM_ALONE = re.compile(r"^\W*yeah,? right\b|\bthanks for nothing\b")
_QUOTED = re.compile(r"(?<!\w)'[^'\n]{2,80}'(?!\w)|\"[^\"\n]{2,80}\"|`[^`\n]{1,80}`")
_BARE_NO = re.compile(r"^\W*(?:no|nope|nah)\b")
_CONTRAST = re.compile(r"(?:^|[,.;!]\s*|\s)(?:but|however|though|although|except|only)\b[,\s]*",
                       re.I)
# Complaint alternatives in order, in groups that each carry their trigger words (``None``:
# anchored at the start, always cheap to try). ``_COMPLAINT`` is all of them in one regex;
# :func:`_find_complaint` runs only the groups whose triggers occur and returns the same
# leftmost match (ties to the earlier alternative, as the combined regex does).
_COMPLAINT_GROUPS: tuple[tuple[frozenset[str] | None, str], ...] = (
    (frozenset(("not", "wrong", "incorrect", "inaccurate", "useless", "nonsense", "broken",
                "off", "mistake")),
     r"\b(?:that|this|it|you|thats|that is|this is|it is)(?:'s|'re| is| are|s)?\s+"
     r"(?:still\s+)?(?:not (?:right|correct|what|it|accurate|true|working)|wrong|incorrect|"
     r"inaccurate|useless|nonsense|broken|off|a mistake)\b"),
    (None,
     r"^\W*(?:no|nope|nah|wrong|incorrect|not quite|not really|negative)\b(?!\s+(?:problem|"
     r"worries|need|rush|thanks))"),
    (frozenset(("nothing", "crashes", "crashed", "broke", "not")),
     r"\bnothing (?:works|happens|changed|loads|shows up)\b"
     r"|\b(?:it|this|that|the app|now it) (?:still )?(?:crash(?:es|ed)|broke)\b|\bnot helpful\b"
     r"|\bnot what i (?:asked|wanted|meant|said|need(?:ed)?)\b"),
    (frozenset(("said", "asked", "meant", "told", "specified", "explicitly", "clearly")),
     r"\bi (?:said|asked for|asked you|meant|told you|specified|explicitly|clearly)\b"),
    (frozenset(("doesn", "doesnt", "didn", "didnt", "does", "did", "won", "wont", "isn",
                "isnt", "is", "still")),
     r"\b(?:doesn'?t|didn'?t|does not|did not|won'?t|isn'?t|is not|still (?:doesn'?t|"
     r"not|fails?|broken|wrong|the same)) (?:work|working|compile|run|help|fix|answer|load|"
     r"make sense|match|add up)\w*\b"),
    (frozenset(("forgot", "missed", "ignored", "skipped", "left", "misread", "misunderstood",
                "broke", "got", "made", "didn", "didnt")),
     r"\byou (?:just )?(?:forgot|missed|ignored|skipped|left out|misread|misunderstood|broke|"
     r"got (?:it|that|this) wrong|made (?:that|this|it) up|made up|didn'?t (?:read|listen|"
     r"answer|do|include|use))\b"),
    (frozenset(("try", "redo", "wrong", "makes", "not", "incorrect", "why", "sure", "where",
                _HALLUCINATION := "hallucinat")),
     r"\b(?:try again|redo (?:it|this|that)|wrong (?:answer|file|date|day|city|one|number|"
     r"language|unit|format)|hallucinat\w*|makes no sense|that'?s (?:not it|incorrect)|"
     r"why (?:did|would) you|are you sure|where did you get)\b"),
)
_COMPLAINT = re.compile("(?:" + "|".join(p for _, p in _COMPLAINT_GROUPS) + ")")
_COMPLAINT_COMPILED = tuple((triggers, re.compile(p)) for triggers, p in _COMPLAINT_GROUPS)
# "X, not Y" (in _POLITE_CORRECTION and _DIRECTIVE, both only ever asked whether they match
# somewhere): ``\b[\w.']+,\s*not`` tried from every word boundary of a run like "a.a.a.a"
# and scanned the run to its end each time (10 KB: 0.6 s, 100 KB: over a minute). It starts
# where the run starts instead, and needs a word character in the run, as that ``\b`` did
# (a run of only "." and "'" holds no boundary): there is a match somewhere exactly when
# there was one.
_X_NOT = r"(?<![\w.'])[.']*+\w[\w.']*+,\s*not"
_POLITE_CORRECTION = re.compile(
    r"(?:^\W*(?:actually|hmm+|um+|erm|wait|sorry)\b"
    r"|\bi think (?:it|the|that|this|you)\b.{0,80}\b(?:not|should|was|is actually)\b"
    r"|\b(?:should(?:n'?t)? (?:it |that |this )?(?:be|have been|have|use|say|include))\b"
    r"|\b(?:instead of|rather than|not quite|close,? but|almost,? but|double[- ]check|"
    r"(?:looks?|seems?) (?:off|wrong|incorrect|too (?:high|low|long|short))|i meant|"
    r"supposed to|that was meant|i was (?:asking|hoping|looking) for|"
    r"(?:could|can) you (?:please )?(?:use|keep|switch|redo|fix|recheck|re-check)|"
    r"please (?:use|keep|switch|stick|don'?t|do not|fix)|you (?:should|need to) (?:use|have|"
    r"include)|instead|(?:isn'?t|wasn'?t|aren'?t) (?:it|that|this|there))\b"
    r"|" + _X_NOT + r"\s+[\w.']+\b)")
_POSITIVE = re.compile(
    r"\b(?:thanks?|thank you|thx|cheers|much appreciated|appreciate it|"
    r"(?:that|it|this) (?:works|worked|did it|did the trick|fixed it|helps|helped|is perfect|"
    r"is exactly|is (?:great|awesome|amazing|excellent|helpful))|helpful|"
    r"works (?:now|perfectly|great|fine|like a charm)|ty|"
    r"(?:looks|sounds|seems) (?:good|great|right|perfect|correct|fine)|lgtm|spot on|"
    r"exactly what i (?:needed|wanted)|perfect|excellent|awesome|great (?:job|work)|"
    r"you'?re (?:a lifesaver|the best|right)|problem solved|that'?s (?:it|right|correct|"
    r"perfect|great)|no problems?|all good|nailed it|love it|well done)\b")
_MOVE_ON = re.compile(r"^\W*(?:ok(?:ay)?|alright|all right|got it|cool|good|great|nice|fine|"
                      r"understood|noted|sure)\b[,.!\s]+\S")
# The "but" and " - " cuts start where a run of blanks starts: from every blank of a run they
# scanned to its end (10 KB of spaces: 1.2 s). What follows the run decides them, so inside
# it they fail as they did at its start, and no split resumes inside a run (each cut ends
# at the end of one): the same cuts.
_SENTENCES = re.compile(
    r"(?<=[.!?;\n])\s+|(?<!\s)\s++(?=but\b)|(?<!\s)\s++-\s+"
    r"|,\s+(?=i (?:said|asked|meant|wanted|told)\b)", re.I)
_DIRECTIVE = re.compile(
    r"\b(?:use|using|i (?:said|asked|meant|wanted|specified|told you|need(?:ed)?)|should|"
    r"instead|rather|make (?:it|sure)|please|don'?t|do not|needs? to|has to|have to|must|"
    r"supposed to|expected|keep|switch|convert|include|exclude|add|remove|mention|in (?:metric|"
    r"celsius|fahrenheit|imperial|utc)|it'?s .{1,40}\bnot\b|not .{1,40}\b(?:but)\b|"
    r"instead|hoping for|wanted|"
    r"was (?:on|at|in|for)|is (?:on|at|in|for)|(?:the )?(?:deadline|date|day|total|answer|"
    r"name|number|price) (?:is|was))\b|" + _X_NOT + r"\s\b", re.I)
_LEADING_FILLER = re.compile(
    r"^\W*(?:(?:no|nope|nah|wrong|incorrect|actually|hmm+|um+|wait|sorry|oh|well|thanks?|"
    r"thank you|great|ok(?:ay)?|but|and|so|also|that(?:'s| is) (?:wrong|not right|incorrect)|"
    r"not quite|close|almost)\b[,.!:;\s-]*)+", re.I)
_WORD = re.compile(r"[a-z0-9']+")
# Each byte: itself where it can be part of a ``_WORD`` run, else a space (see _words).
_WORD_BYTES = bytes(c if chr(c) in "abcdefghijklmnopqrstuvwxyz0123456789'" else 32
                    for c in range(256))
_RUN = re.compile(r"\w+")
# Word gates. Each regex family above can only match a text whose ``\w+`` runs include one of
# its trigger words (the first or a required word of every alternative), so one tokenisation
# per reply and a set intersection (C speed) skip the scans that cannot match; the regexes
# stay the only judges of what matches. ``*_WORDS`` are alternatives that are whole words on
# their own: a hit there *is* a match, no scan needed. Tests check gated == ungated.
_SARCASM_TRIGGERS = frozenset((  # "for nothing" -> nothing, "even worse" -> worse, ...
    "now", "nothing", "another", "broke", "deleted", "wiped", "lost", "crashed", "worse",
    "yeah", "exactly", "breaking", "ruining", "deleting", "wiping"))
_POLITE_TRIGGERS = frozenset((
    "actually", "erm", "wait", "sorry", "think", "should", "shouldn", "shouldnt", "instead",
    "rather", "not", "close", "almost", "double", "look", "looks", "seem", "seems", "meant",
    "supposed", "asking", "hoping", "looking", "could", "can", "please", "need", "isn",
    "isnt", "wasn", "wasnt", "aren", "arent"))
_POLITE_WORDS = frozenset(("instead",))
_POSITIVE_TRIGGERS = frozenset((
    "thank", "thanks", "thx", "cheers", "much", "appreciate", "works", "worked", "did",
    "fixed", "helps", "helped", "is", "helpful", "ty", "looks", "sounds", "seems", "lgtm",
    "spot", "exactly", "perfect", "excellent", "awesome", "great", "lifesaver", "best",
    "right", "problem", "it", "correct", "no", "all", "nailed", "love", "well"))
_POSITIVE_WORDS = frozenset((
    "thank", "thanks", "thx", "cheers", "helpful", "ty", "lgtm", "perfect", "excellent",
    "awesome"))
_DIRECTIVE_TRIGGERS = frozenset((
    "use", "using", "said", "asked", "meant", "wanted", "specified", "told", "need", "needed",
    "should", "instead", "rather", "make", "please", "don", "dont", "do", "needs", "has",
    "have", "must", "supposed", "expected", "keep", "switch", "convert", "include", "exclude",
    "add", "remove", "mention", "metric", "celsius", "fahrenheit", "imperial", "utc", "not",
    "hoping", "on", "at", "in", "for", "deadline", "date", "day", "total", "answer", "name",
    "number", "price"))
_DIRECTIVE_WORDS = frozenset((
    "use", "using", "should", "instead", "rather", "please", "must", "expected", "keep",
    "switch", "convert", "include", "exclude", "add", "remove", "mention", "wanted"))


def _has_directive(clause: str) -> bool:
    """``_DIRECTIVE.search(clause)`` as a bool, gated by the clause's words."""
    if not clause.isascii():  # re.I folds a few non-ASCII letters that lower() keeps
        return _DIRECTIVE.search(clause) is not None
    words = set(_RUN.findall(clause.lower()))
    if not words.isdisjoint(_DIRECTIVE_WORDS):
        return True
    return not words.isdisjoint(_DIRECTIVE_TRIGGERS) and _DIRECTIVE.search(clause) is not None


def _normalise(text: str) -> str:
    return text.replace("’", "'").replace("‘", "'").strip()


# A reply's verdict sits at its start ("no, ...", "thanks, but ..."), a pasted log may follow
# and its end may hold the ask: a longer reply (or request) is read by its head and tail
# alone, so that a 15 MB paste costs what 16 KB does (it took 4-12 s). The replies of the
# eval sets and benchmark streams (under 200 characters) are far shorter: read whole.
_REPLY_HEAD, _REPLY_TAIL = 8000, 8000


def reply_window(text: str) -> str:
    """The part of a reply (or feedback text, or request) that the rules read."""
    return head_and_tail(text, _REPLY_HEAD, _REPLY_TAIL)


def _words(low: str) -> frozenset[str]:
    """The ``_WORD`` runs of a (lowered) text, as a set."""
    if low.isascii():
        # The same runs as the regex, at half its cost: a byte table blanks every other
        # character, and split() cuts at the blanks.
        return frozenset(low.encode().translate(_WORD_BYTES).decode().split())
    return frozenset(_WORD.findall(low))


_last_request: tuple[str, str, frozenset[str]] = ("", "", frozenset())


def _request_words(request: str) -> tuple[str, frozenset[str]]:
    # The replies of one exchange all answer the same request: lower and split it once.
    global _last_request
    if request is not _last_request[0] and request != _last_request[0]:
        low = request.lower()
        _last_request = (request, low, _words(low))
    return _last_request[1], _last_request[2]


def _similar(reply: str, request: str) -> bool:
    """Whether the reply repeats or rephrases the request (token overlap, then difflib)."""
    a = reply.lower()
    return _rephrases(a, _words(a), request)


def _rephrases(a: str, words_a: frozenset[str], request: str) -> bool:
    """``_similar_words(a, words_a, *_request_words(request))``: whether the lowered reply
    ``a`` (its words ``words_a``) repeats or rephrases ``request``."""
    # Every word of the request is a substring of it: a reply with no word inside it shares
    # none (overlap 0), so the request need not be split, the costly part (most replies
    # are no rephrase).
    if len(request) > _REPLY_HEAD + _REPLY_TAIL:  # (inline: this runs for most replies)
        request = reply_window(request)
    b = request.lower()
    for word in words_a:
        if word in b:
            break
    else:
        return False
    return _similar_words(a, words_a, *_request_words(request))


def _similar_words(a: str, words_a: frozenset[str], b: str, words_b: frozenset[str]) -> bool:
    """:func:`_similar` of the lowered reply ``a`` and request ``b`` and their words."""
    if len(a) < 12 or len(b) < 12:
        return False
    if not words_a or not words_b:
        return False
    common = len(words_a & words_b)
    size_a, size_b = len(words_a), len(words_b)
    overlap = common / (size_b if size_b < size_a else size_a)  # min(): a call costs more
    if overlap < 0.6:
        return False
    jaccard = common / len(words_a | words_b)
    return jaccard >= 0.6 or SequenceMatcher(None, a, b).ratio() >= 0.7


def correction_hint(reply: str) -> str | None:
    """The clause of a correction that says what was wanted, or ``None``.

    >>> correction_hint("No, use the metric system.")
    'use the metric system'
    """
    after_contrast = None
    if _PRAISE_OPENER.match(reply.lower()):
        match = _CONTRAST.search(reply)
        if match:
            after_contrast = reply[match.end():]
    for text in (after_contrast, reply):
        if not text:
            continue
        for clause in _SENTENCES.split(text):
            clause = _LEADING_FILLER.sub("", clause).strip(" ,.;!-\n\t")
            if len(clause) >= 4 and _has_directive(clause):
                return clause[:300]
    if after_contrast:
        clause = _LEADING_FILLER.sub("", after_contrast).strip(" ,.;!-\n\t")
        return clause[:300] if len(clause) >= 4 else None
    return None


class ReplyParts(NamedTuple):
    """How a reply reads before its request is known (see :func:`read_reply`).

    ``final``: ``reading`` holds whatever the request was. Otherwise the reply is a rephrase
    if ``text`` repeats the request, and reads as ``reading`` if not.
    """

    final: bool
    reading: ReplyReading | None
    text: str


def read_reply(reply: str) -> ReplyParts:
    """Every rule of :func:`classify_reply` that does not need the previous request.

    Replies recur far more often than (reply, request) pairs ("thanks!", "no, use Celsius"),
    so this is the part worth memoizing; :func:`with_request` finishes the reading. A long
    reply reads as its :func:`reply_window`.
    """
    text = reply_window(_normalise(reply))
    if not text:
        return ReplyParts(True, None, text)
    # Quoted text is what the user cites ("what does 'wrong number' mean?"), not their verdict.
    if text.count("'") > 1 or '"' in text or "`" in text:
        text = _QUOTED.sub("'…'", text)
    low = text.lower()
    words = set(_RUN.findall(low))
    praise = _PRAISE_OPENER.match(low)
    if (praise and not words.isdisjoint(_SARCASM_TRIGGERS) and _SARCASM_OUTCOME.search(low)) \
            or (("right" in low or "nothing" in low) and _SARCASM_ALONE.search(low)):
        return ReplyParts(True, ReplyReading("sarcasm", -0.8, 0.8, None), text)
    complaint = _find_complaint(low, words)
    if complaint and _BARE_NO.match(complaint.group(0)) and _is_positive(low, words) and \
            _find_complaint(low, set(_RUN.findall(low, complaint.end())),
                            complaint.end()) is None:
        complaint = None  # "No, that's all I needed, thanks!"
    if complaint:
        return ReplyParts(True, ReplyReading("complaint", -0.8, 0.9, correction_hint(text)), text)
    if praise and _CONTRAST.search(low, praise.end()):
        return ReplyParts(True, ReplyReading("correction", -0.5, 0.85, correction_hint(text)),
                          text)
    if (not words.isdisjoint(_POLITE_TRIGGERS) or "hmm" in low or "um" in low) and (
            not words.isdisjoint(_POLITE_WORDS) or _POLITE_CORRECTION.search(low)):
        return ReplyParts(True, ReplyReading("correction", -0.5, 0.8, correction_hint(text)),
                          text)
    # Next comes the rephrase rule (with_request); these apply when the reply is not one.
    if _is_positive(low, words):
        return ReplyParts(False, ReplyReading("satisfied", 0.8, 0.85, None), text)
    if _MOVE_ON.match(low):
        return ReplyParts(False, ReplyReading("moves_on", 0.3, 0.55, None), text)
    return ReplyParts(False, None, text)


_REPHRASE = ReplyReading("rephrase", -0.6, 0.75, None)


def with_request(parts: ReplyParts, previous_request: str | None) -> ReplyReading | None:
    """The reading of a reply (its :func:`read_reply` parts) given the request it answers."""
    if not parts.final and previous_request and _similar(parts.text, previous_request):
        return _REPHRASE
    return parts.reading


def classify_reply(reply: str, previous_request: str | None = None) -> ReplyReading | None:
    """Read a user reply as a signal on the action it answers; ``None`` means no signal.

    Args:
        reply: the user's reply text.
        previous_request: the user's request the action answered (for rephrase detection).

    >>> classify_reply("Thanks, but I asked for Tuesday").label
    'complaint'
    >>> classify_reply("Thanks, but could it be shorter?").label
    'correction'
    """
    return with_request(read_reply(reply), previous_request)


def _find_complaint(low: str, words: set[str], pos: int = 0) -> re.Match[str] | None:
    """``_COMPLAINT.search(low, pos)``, trying only the groups whose trigger words occur.

    ``words`` must hold the ``\\w+`` runs of ``low[pos:]`` (a run cut at ``pos`` may be in
    it too: extra words only cost a scan).
    """
    best = None
    for triggers, pattern in _COMPLAINT_COMPILED:
        if triggers is not None and words.isdisjoint(triggers) and (
                _HALLUCINATION not in triggers or low.find(_HALLUCINATION, pos) < 0):
            continue
        match = pattern.search(low, pos)
        if match is not None and (best is None or match.start() < best.start()):
            best = match
    return best


def _is_positive(low: str, words: set[str]) -> bool:
    """``_POSITIVE.search(low)`` as a bool, gated by the reply's words."""
    if not words.isdisjoint(_POSITIVE_WORDS):
        return True
    return not words.isdisjoint(_POSITIVE_TRIGGERS) and _POSITIVE.search(low) is not None


@register("user")
class UserReplyExtractor:
    """Scores an action by the user's reply; corrections also give a directive tuple.

    Args:
        excerpt_chars: how much of the reply to keep as the next-state excerpt.
        min_confidence: readings below this confidence are dropped.

    Example:
        >>> from nextstate.extractors.types import Interaction, Message
        >>> i = Interaction("s#1", "s", (Message("user", "Weather in Oslo?"),),
        ...                 Message("assistant", "It is 50 F."),
        ...                 (Message("user", "No, use the metric system."),))
        >>> [t.kind for t in UserReplyExtractor()(i)]
        ['evaluative', 'directive']
    """

    reads = frozenset({"user"})  # see registry.Dispatch
    __slots__ = ("_readings", "excerpt_chars", "memo_chars", "min_confidence")

    def __init__(self, excerpt_chars: int = 300, min_confidence: float = 0.0,
                 memo_entries: int = 4096, memo_chars: int = 80) -> None:
        self.excerpt_chars = excerpt_chars
        self.min_confidence = min_confidence
        # Short replies ("thanks!", "no", "ok, next") recur across sessions: read each once
        # (all but the rephrase rule, which needs the request; the memo keeps the lowered
        # text and words it compares). Bounded; long replies are rarely repeated and skip it.
        self.memo_chars = memo_chars
        self._readings: LruCache[tuple[ReplyParts, str, frozenset[str]]] = LruCache(
            memo_entries, memo_entries * 512)
        # (The request a reply may rephrase is lowered and split by _request_words: it is
        # the previous user message, so on real traffic each one is read for one reply,
        # and a memo of them only paid on the benchmark's templated texts: 0.84-0.87x on
        # unique ones, `bench_extractors.py` sessions/user.)

    def _read(self, reply: str, interaction: Interaction) -> ReplyReading | None:
        if len(reply) > self.memo_chars:
            request = previous_user_request(interaction)
            return classify_reply(reply, request.content if request else None)
        entry = self._readings.get(reply)
        if entry is None:
            parts = read_reply(reply)
            low = "" if parts.final else parts.text.lower()
            entry = (parts, low, _words(low) if len(low) >= 12 else
                     frozenset())
            self._readings.put(reply, entry, len(reply))
        parts, low, words = entry
        # with_request(parts, request), with the reply's words read once: a final reading,
        # or a reply shorter than 12 characters (or with no words), is no rephrase whatever
        # the request, which is then not even looked up.
        if words:
            request = previous_user_request(interaction)
            if request is not None and request.content and _rephrases(
                    low, words, request.content):
                return _REPHRASE
        return parts.reading

    def __call__(self, interaction: Interaction) -> list[ScoredTuple]:
        reply = next_user_message(interaction)
        content = reply.content if reply is not None else None
        if not content:
            return []
        reading = self._read(content, interaction)
        if reading is None or reading.confidence < self.min_confidence:
            return []
        excerpt = content[: self.excerpt_chars]
        tuples = [evaluative(interaction, "user", "user", excerpt, reading.reward,
                             reading.confidence)]
        if reading.hint:
            confidence = reading.confidence  # min(confidence, 0.8), without the call
            tuples.append(directive(interaction, "user", "user", excerpt, reading.hint,
                                    0.8 if confidence > 0.8 else confidence))
        return tuples

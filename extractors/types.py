"""The pipeline's data model: messages, interactions and scored training tuples.

These are the types every stage shares. The daemon decodes wire records (``daemon/wire.py``)
into :class:`Message` s, joins them into :class:`Interaction` s, extractors turn interactions
into :class:`ScoredTuple` s, buffers store tuples and trainers learn from them.

All are frozen ``msgspec.Struct`` s: cheap to build, hashable, and encoded/decoded by msgspec
without a schema of their own (the buffer stores them with ``msgspec.msgpack``).
They are built bottom-up from immutable values, so none can be part of a reference cycle:
``gc=False`` keeps them out of the cyclic garbage collector, whose passes would otherwise walk
every message a daemon's pending joins hold.
"""

from __future__ import annotations

from typing import Literal

import msgspec

Role = Literal["system", "user", "assistant", "tool"]
Kind = Literal["evaluative", "directive", "preference"]
Source = Literal["user", "tool", "terminal", "gui", "judge", "feedback"]
ClosedBy = Literal["next_state", "idle_timeout", "session_end", "end_of_input", "feedback",
                   "superseded"]

KINDS: tuple[Kind, ...] = ("evaluative", "directive", "preference")
SOURCES: tuple[Source, ...] = ("user", "tool", "terminal", "gui", "judge", "feedback")


class ToolCall(msgspec.Struct, frozen=True, gc=False):
    """One function call an assistant message asks for.

    ``arguments`` is kept as the JSON text the model produced (OpenAI's convention): it is
    what the policy emitted token by token, so trainers can put credit on exactly it.
    """

    id: str
    name: str
    arguments: str = ""


class Message(msgspec.Struct, frozen=True, omit_defaults=True, gc=False):
    """One chat message in OpenAI's roles, with content flattened to text.

    ``content`` joins the text parts of a multi-part message; non-text parts (images) are
    represented by a placeholder like ``[image]`` so that a context stays readable.
    """

    role: Role
    content: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    name: str | None = None


class Feedback(msgspec.Struct, frozen=True, omit_defaults=True, gc=False):
    """Explicit feedback on an action: a score in [-1, 1] (thumbs = +-1) and/or a text."""

    value: float | None = None
    text: str | None = None


class Usage(msgspec.Struct, frozen=True, omit_defaults=True, gc=False):
    """Token usage of the exchange that produced an action (from the call log)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0


class Interaction(msgspec.Struct, frozen=True, omit_defaults=True, gc=False):
    """An action joined to its next state: the unit extractors score.

    Attributes:
        interaction_id: ``"<session_id>#<index>"`` where index is the action's position in
            the session's full message history. Deterministic, so a re-delivered record
            yields the same id and the buffers can drop the duplicate.
        session_id: the session (Kafka key) the action belongs to.
        context: every message before the action, oldest first (shared, not copied,
            between the interactions of one session).
        action: the assistant message being judged.
        next_state: what followed the action until the next assistant message: the tool
            results answering its calls and/or the next user message. Empty when the
            interaction closed with no next state.
        closed_by: why the join closed this interaction.
        feedback: explicit feedback events that targeted this action.
        outcome: the session's outcome (from ``session_end`` or a transcript's ``reward``),
            set on the session's last action only.
        model: the model that produced the action, when logged.
        policy_version: the policy version that produced the action, when logged.
        behaviour_logprobs: per-token log-probs of the action under the behaviour policy,
            when the agent logged them (enables PPO-style ratios in trainers).
        usage: token usage of the exchange that produced the action.
        ts: event time of the action (seconds since the epoch), 0.0 if unknown.
        shape: which input shape the action came from (``openai_exchange``,
            ``transcript``, ...), for per-shape metrics.
    """

    interaction_id: str
    session_id: str
    context: tuple[Message, ...]
    action: Message
    next_state: tuple[Message, ...] = ()
    closed_by: ClosedBy = "next_state"
    feedback: tuple[Feedback, ...] = ()
    outcome: float | None = None
    model: str | None = None
    policy_version: str | None = None
    behaviour_logprobs: tuple[float, ...] | None = None
    usage: Usage = Usage()
    ts: float = 0.0
    shape: str = "unknown"


class ScoredTuple(msgspec.Struct, frozen=True, omit_defaults=True, gc=False):
    """A training tuple scored from one interaction's next state.

    Attributes:
        interaction_id: the interaction it was scored from.
        session_id: its session.
        extractor: the registry name of the extractor that produced it.
        kind: ``evaluative`` (a reward: was the action good?), ``directive`` (a hint: how
            should it have been different?) or ``preference`` (chosen vs rejected).
        source: where the signal came from: user, tool, terminal, gui, judge or feedback.
        context: the messages before the action.
        action: the action that was scored.
        next_state_excerpt: the part of the next state that justified the score (short).
        reward: in [-1, 1]; meaningful for evaluative tuples.
        confidence: in [0, 1]: how sure the extractor is of the sign/hint.
        hint: directive tuples: how the action should have been different.
        chosen: preference tuples: the preferred action.
        rejected: preference tuples: the dispreferred action.
        credit: which tokens of the action a reward is about: ``action`` (all of it) or
            ``tool_args`` (only the tool-call arguments: a tool's error is caused by the
            call, not by the prose around it).
        model: the model that produced the action, when logged.
        policy_version: the policy version that produced the action, when logged.
        behaviour_logprobs: the action's per-token behaviour log-probs, when logged.
        prompt_tokens: prompt tokens of the exchange that produced the action.
        completion_tokens: completion tokens of the action.
        action_ts: event time of the action.
        created_ts: when the tuple was extracted.
        label: the extractor's reading of the next state (e.g. ``no_op``, ``schema``,
            ``thanks``), for analysis and the daemon's trajectory-quality flags.
    """

    interaction_id: str
    session_id: str
    extractor: str
    kind: Kind
    source: Source
    context: tuple[Message, ...]
    action: Message
    next_state_excerpt: str = ""
    reward: float = 0.0
    confidence: float = 1.0
    hint: str | None = None
    chosen: Message | None = None
    rejected: Message | None = None
    credit: Literal["action", "tool_args"] = "action"
    model: str | None = None
    policy_version: str | None = None
    behaviour_logprobs: tuple[float, ...] | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    action_ts: float = 0.0
    created_ts: float = 0.0
    label: str = ""

    @property
    def key(self) -> tuple[str, str, str]:
        """The deduplication key: one tuple per (interaction, extractor, kind)."""
        return (self.interaction_id, self.extractor, self.kind)


def _clamp(value: float, low: float, high: float) -> float:
    """``min(high, max(low, value))`` (NaN reads as ``low``), down to which float object is
    kept: a bound comes back as the caller's own object, which is the field's default object
    (one constant per module), and omit_defaults compares floats by identity."""
    value = float(value)
    value = value if value > low else low
    return value if value < high else high


def tuple_from(
    interaction: Interaction,
    *,
    extractor: str,
    kind: Kind,
    source: Source,
    excerpt: str = "",
    reward: float = 0.0,
    confidence: float = 1.0,
    hint: str | None = None,
    chosen: Message | None = None,
    rejected: Message | None = None,
    credit: Literal["action", "tool_args"] = "action",
    created_ts: float = 0.0,
    label: str = "",
) -> ScoredTuple:
    """Build a :class:`ScoredTuple` that carries an interaction's ids, context and metadata.

    Clamps ``reward`` to [-1, 1] and ``confidence`` to [0, 1] so that no extractor can emit
    an out-of-range score (NaN reads as the lower bound).
    """
    reward = _clamp(reward, -1.0, 1.0)
    confidence = _clamp(confidence, 0.0, 1.0)
    usage = interaction.usage
    # Positional, in ScoredTuple's field order (tests/extractors/test_types.py checks it):
    # five times cheaper than keywords, and every extractor builds one or two per interaction.
    return ScoredTuple(
        interaction.interaction_id, interaction.session_id, extractor, kind, source,
        interaction.context, interaction.action, excerpt, reward, confidence, hint, chosen,
        rejected, credit, interaction.model, interaction.policy_version,
        interaction.behaviour_logprobs, usage.prompt_tokens, usage.completion_tokens,
        interaction.ts, created_ts, label)


def evaluative(interaction: Interaction, extractor: str, source: Source, excerpt: str,
               reward: float, confidence: float, credit: Literal["action", "tool_args"] = "action",
               label: str = "") -> ScoredTuple:
    """``tuple_from(interaction, kind="evaluative", ...)`` with positional arguments.

    The extractors build one or two tuples per interaction; keywords cost more than the
    tuple itself. Same clamping and the same float objects as :func:`tuple_from`.
    """
    # A float strictly inside its range is what _clamp returns, and skips the call (bounds,
    # NaN and ints still go through it).
    if not (type(reward) is float and -1.0 < reward < 1.0):
        reward = _clamp(reward, -1.0, 1.0)
    if not (type(confidence) is float and 0.0 < confidence < 1.0):
        confidence = _clamp(confidence, 0.0, 1.0)
    usage = interaction.usage
    return ScoredTuple(
        interaction.interaction_id, interaction.session_id, extractor, "evaluative", source,
        interaction.context, interaction.action, excerpt, reward, confidence, None, None,
        None, credit, interaction.model, interaction.policy_version,
        interaction.behaviour_logprobs, usage.prompt_tokens, usage.completion_tokens,
        interaction.ts, 0.0, label)


def directive(interaction: Interaction, extractor: str, source: Source, excerpt: str,
              hint: str, confidence: float, credit: Literal["action", "tool_args"] = "action",
              label: str = "") -> ScoredTuple:
    """``tuple_from(interaction, kind="directive", hint=hint, ...)`` with positional arguments.

    The reward is left at its default (the field's own ``0.0`` object: omitted when encoded).
    """
    if not (type(confidence) is float and 0.0 < confidence < 1.0):  # as in evaluative
        confidence = _clamp(confidence, 0.0, 1.0)
    usage = interaction.usage
    return ScoredTuple(
        interaction.interaction_id, interaction.session_id, extractor, "directive", source,
        interaction.context, interaction.action, excerpt, 0.0, confidence, hint, None, None,
        credit, interaction.model, interaction.policy_version, interaction.behaviour_logprobs,
        usage.prompt_tokens, usage.completion_tokens, interaction.ts, 0.0, label)


def tool_results_for(interaction: Interaction) -> list[tuple[ToolCall, Message]]:
    """Pair each tool call of the action with the tool message that answered it.

    Calls with no answer in the next state are left out; answers matched by
    ``tool_call_id`` first, then by position for logs that omit the ids.
    """
    calls = interaction.action.tool_calls
    if not calls:
        return []
    results = [m for m in interaction.next_state if m.role == "tool"]
    if not results:
        return []
    if len(calls) == 1:
        answer = answer_to(calls[0], interaction.next_state)
        return [(calls[0], answer)] if answer is not None else []
    return pair_by_id_then_position(calls, results)


def answer_to(call: ToolCall, next_state: tuple[Message, ...]) -> Message | None:
    """The tool message answering ``call`` when it is the action's only call.

    That is what :func:`tool_results_for` pairs it with: the last tool message with its id,
    else the first tool message (which then has no id or another one), as the general case
    reads it; ``None`` when the next state holds no tool message.
    """
    first = matched = None
    call_id = call.id
    for message in next_state:
        if message.role == "tool":
            if first is None:
                first = message
            answered = message.tool_call_id
            if answered and answered == call_id:
                matched = message
    return matched if matched is not None else first


def pair_by_id_then_position(calls: tuple[ToolCall, ...], results: list[Message]
                             ) -> list[tuple[ToolCall, Message]]:
    """The general pairing of :func:`tool_results_for`: by ``tool_call_id``, then the
    results with no (or an unknown) id in order."""
    by_id = {m.tool_call_id: m for m in results if m.tool_call_id}
    pairs: list[tuple[ToolCall, Message]] = []
    # Linear in the calls and results: the call ids were a set rebuilt for every result,
    # and the unmatched taken with pop(0) (8,000 calls in one action: 13 s).
    call_ids = {c.id for c in calls}
    unmatched = iter([m for m in results if not m.tool_call_id
                      or m.tool_call_id not in call_ids])
    for call in calls:
        answer = by_id.get(call.id)
        if answer is None:
            answer = next(unmatched, None)
        if answer is not None:
            pairs.append((call, answer))
    return pairs


def next_user_message(interaction: Interaction) -> Message | None:
    """The user message in the next state (the reply to the action), if any."""
    for message in interaction.next_state:
        if message.role == "user":
            return message
    return None

"""Write a realistic stream of agent call logs (OpenAI chat-completions exchanges), JSON lines.

Sessions of a tool-using assistant: each turn the agent calls a tool (weather, calendar,
search, a shell running tests) whose result is a real-looking success or error, then answers;
the user thanks, corrects ("no, I asked for Tuesday"), rephrases or moves on. Requests repeat
the whole history, as real clients send them. Some sessions end with feedback or session_end.

    python benchmarks/make_stream.py --sessions 200 --turns 10 --out stream.jsonl [--seed 0]
        [--delta 0.25]

Used for the shipped sample stream (``daemon/sample_interactions.jsonl``), the load
benchmarks and the Kafka tests.
"""

from __future__ import annotations

import argparse
import json
import random
from typing import Any

CITIES = ["Paris", "Lisbon", "Osaka", "Denver", "Nairobi", "Oslo", "Lima", "Hanoi"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday"]

TOOL_RESULTS: dict[str, list[tuple[str, str]]] = {
    "get_weather": [
        ("ok", '{"city": "%(city)s", "day": "%(day)s", "temp_c": %(n)d, "sky": "clear"}'),
        ("ok", '{"city": "%(city)s", "day": "%(day)s", "temp_c": %(n)d, "sky": "rain"}'),
        ("err", "Error: missing required argument 'day'"),
        ("err", '{"error": "HTTP 503 Service Unavailable", "retry_after": 3}'),
    ],
    "create_event": [
        ("ok", '{"id": "evt_%(n)d", "status": "confirmed", "day": "%(day)s"}'),
        ("err", "ValueError: invalid value for 'time': expected HH:MM, got '%(n)d pm'"),
        ("err", "Error: unknown tool 'create_events'"),
    ],
    "search_docs": [
        ("ok", "1. Setting up the SDK (docs/sdk.md)\n2. Authentication (docs/auth.md)"),
        ("ok", "[]"),
        ("err", "TimeoutError: search backend timed out after 30s"),
    ],
    "bash": [
        ("ok", "$ pytest -q\n........................                [100%%]\n"
               "24 passed in 1.%(n)ds\n[exit code: 0]"),
        ("err", "$ pytest -q\n....F...F..............\nFAILED tests/test_api.py::test_auth"
                "\n2 failed, 22 passed in 1.%(n)ds\n[exit code: 1]"),
        ("err", "Traceback (most recent call last):\n  File \"app.py\", line %(n)d, in <module>"
                "\nNameError: name 'confg' is not defined\n[exit code: 1]"),
    ],
}
REQUESTS = {
    "get_weather": "What's the weather in {city} on {day}?",
    "create_event": "Put a meeting with Dana on my calendar for {day} at {n} pm.",
    "search_docs": "Find the docs about SDK authentication.",
    "bash": "Run the test suite and tell me what fails.",
}
REPLIES = {
    "thanks": ["Thanks, that's exactly it!", "Perfect, thank you.", "Great, that works."],
    "correction": ["No, I asked for {other_day}, not {day}.", "That's wrong, use {other_city}.",
                   "Actually, it should be in Celsius.", "Not what I asked, I meant {other_city}."],
    "rephrase": ["I said: what's the weather in {city} on {day}?",
                 "Again: put the meeting with Dana on {day} at {n} pm."],
    "move_on": ["Ok. Now check {other_city} too.", "Next: what about {other_day}?"],
}


def session(rng: random.Random, sid: str, turns: int, t0: float) -> list[dict[str, Any]]:
    history: list[dict[str, Any]] = [
        {"role": "system", "content": "You are a helpful assistant with tools."}]
    records: list[dict[str, Any]] = []
    ts = t0
    for turn in range(turns):
        tool = rng.choice(list(TOOL_RESULTS))
        fill = {"city": rng.choice(CITIES), "day": rng.choice(DAYS), "n": rng.randint(1, 30),
                "other_city": rng.choice(CITIES), "other_day": rng.choice(DAYS)}
        if turn == 0 or rng.random() < 0.5:
            history.append({"role": "user", "content": REQUESTS[tool].format(**fill)})
        call_id = f"call_{sid}_{turn}"
        args = {"city": fill["city"], "day": fill["day"]} if tool == "get_weather" else (
            {"cmd": "pytest -q"} if tool == "bash" else {"query": "SDK authentication"})
        call = {"role": "assistant", "content": None, "tool_calls": [
            {"id": call_id, "type": "function",
             "function": {"name": tool, "arguments": json.dumps(args)}}]}
        records.append(_exchange(sid, history, call, ts, rng))
        history.append(call)
        _, result = rng.choice(TOOL_RESULTS[tool])
        history.append({"role": "tool", "tool_call_id": call_id, "name": tool,
                        "content": result % fill})
        ts += rng.uniform(0.5, 3.0)
        answer = {"role": "assistant",
                  "content": f"Here is what I found: {result % fill}"[:200]}
        records.append(_exchange(sid, history, answer, ts, rng))
        history.append(answer)
        kind = rng.choices(list(REPLIES), weights=[4, 3, 1, 2])[0]
        history.append({"role": "user", "content": rng.choice(REPLIES[kind]).format(**fill)})
        ts += rng.uniform(2.0, 20.0)
    roll = rng.random()
    if roll < 0.3:
        records.append({"type": "feedback", "session_id": sid,
                        "value": rng.choice(["up", "down"])})
    if roll < 0.6:
        records.append({"type": "session_end", "session_id": sid,
                        "outcome": rng.choice([1.0, 0.0])})
    return records


def _exchange(sid: str, history: list[dict[str, Any]], response: dict[str, Any], ts: float,
              rng: random.Random) -> dict[str, Any]:
    prompt = sum(len(str(m.get("content") or "")) for m in history) // 4 + 50
    return {"session_id": sid, "ts": round(ts, 3), "model": "gpt-4o-mini",
            "policy_version": "1",
            "request": {"messages": list(history)},
            "response": {"choices": [{"message": response}]},
            "usage": {"prompt_tokens": prompt, "completion_tokens": rng.randint(10, 60),
                      "prompt_tokens_details": {"cached_tokens": int(prompt * 0.6)}}}


def as_delta_client(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A session's records as a client that sends only the new messages would: each request
    after the first holds what followed the previous exchange's response."""
    out, seen = [], 0
    for record in records:
        if "request" in record:
            messages = record["request"]["messages"]
            record = {**record, "request": {**record["request"], "messages": messages[seen:]}}
            seen = len(messages) + 1  # its history, then the response
        out.append(record)
    return out


def stream(sessions: int, turns: int, seed: int = 0, concurrent: int = 16, delta: float = 0.0
           ) -> list[dict[str, Any]]:
    """Records of ``sessions`` sessions, interleaved ``concurrent`` at a time (as live);
    a ``delta`` share of them from clients that send only the new messages."""
    rng = random.Random(seed)
    per_session = [session(rng, f"s{n:05d}", turns, 1_760_000_000.0 + n * 60)
                   for n in range(sessions)]
    if delta:  # (its own draws: the stream is the same as without it otherwise)
        pick = random.Random(f"{seed}-delta")
        per_session = [as_delta_client(s) if pick.random() < delta else s for s in per_session]
    out: list[dict[str, Any]] = []
    active: list[list[dict[str, Any]]] = []
    pending = iter(per_session)
    while True:
        while len(active) < concurrent:
            nxt = next(pending, None)
            if nxt is None:
                break
            active.append(list(nxt))
        if not active:
            return out
        current = rng.choice(active)
        out.append(current.pop(0))
        if not current:
            active.remove(current)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=200)
    parser.add_argument("--turns", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--delta", type=float, default=0.0,
                        help="share of sessions whose client sends only the new messages")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    records = stream(args.sessions, args.turns, args.seed, delta=args.delta)
    with open(args.out, "w") as fh:
        for record in records:
            fh.write(json.dumps(record) + "\n")
    print(f"wrote {len(records)} records to {args.out}")


if __name__ == "__main__":
    main()

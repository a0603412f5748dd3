"""Do decode + join + the rule extractors give exactly the output they gave at a git revision?

    python benchmarks/same_output.py --against a08b93e [--sessions 150]

Runs the daemon's core loop (``ingest.decode_records`` -> ``SessionJoiner`` -> every rule
extractor, idle timeouts on event time, then ``close_all``) over streams from
``make_stream.py`` and their variants, here and at ``REV`` (``git archive`` into a temporary
folder, run in a subprocess that imports it first), and compares, record by record, every
closed interaction, every extractor's tuples and every rejected record's reason. Exits 1
and prints the first difference when they differ, except for the streams whose output
changed on purpose since ``REV`` (``INTENDED``: against a revision from before such a change,
that stream is reported as different, as intended, and the others must still be the same).

The variants are what a faster decode or join could get wrong: records re-serialised with
other whitespace or key order (equal content, other bytes), retried and regenerated
responses, edited earlier history (a branch), truncated histories, clients that send only
the new messages, multi-part content, inline responses, malformed and unknown-role messages
in the repeated history, and the shipped sample stream.
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import subprocess
import sys
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from make_stream import stream  # noqa: E402

EXTRACTORS = ("feedback", "user", "tool", "terminal", "gui")

# Streams whose output changed on purpose, against revisions from before the change: name ->
# (a string only the changed revisions hold in the file, that file, why the output changed).
INTENDED = {
    "misbehaving_clients": (
        '"superseded"', "extractors/types.py",
        "a retried or regenerated response, an edited or trimmed history is a branch (the "
        "pending action closes as superseded, the new context is the request), an exchange "
        "received twice is ignored (join.SessionJoiner.duplicates)"),
}


def _dumps(record: dict[str, Any], rng: random.Random, mode: str) -> bytes:
    if mode == "indent":
        return json.dumps(record, indent=1).encode()
    if mode == "compact":
        return json.dumps(record, separators=(",", ":")).encode()
    if mode == "reorder":
        return json.dumps(_reordered(record, rng)).encode()
    return json.dumps(record).encode()


def _reordered(value: Any, rng: random.Random) -> Any:
    if isinstance(value, dict):
        items = list(value.items())
        rng.shuffle(items)
        return {k: _reordered(v, rng) for k, v in items}
    if isinstance(value, list):
        return [_reordered(v, rng) for v in value]
    return value


def _mutate(record: dict[str, Any], rng: random.Random, branches: bool = True
            ) -> list[dict[str, Any]]:
    """Zero or more records standing for one call-log record of a misbehaving client.

    With ``branches=False`` what changes the history a client sent before (retries,
    regenerations, edits, trims, a switch to multi-part content: what the join takes for
    duplicates and branches) is left out, the rest of the misbehaviour kept.
    """
    if "request" not in record:
        return [record]
    roll = rng.random()
    messages = record["request"]["messages"]
    if not branches and roll < 0.20:
        return [record]
    if roll < 0.05:
        return [record, record]  # a retry: the same record delivered twice
    if roll < 0.10:  # a regenerated response, then the original one
        other = copy.deepcopy(record)
        other["response"]["choices"][0]["message"] = {"role": "assistant",
                                                      "content": "Let me try again."}
        return [other, record]
    if roll < 0.14 and len(messages) > 3:  # an earlier message edited (a branch)
        edited = copy.deepcopy(record)
        index = rng.randrange(1, len(messages) - 1)
        if isinstance(edited["request"]["messages"][index].get("content"), str):
            edited["request"]["messages"][index]["content"] += " (edited)"
        return [edited]
    if roll < 0.17 and len(messages) > 3:  # the client trimmed its history
        trimmed = copy.deepcopy(record)
        del trimmed["request"]["messages"][1]
        return [trimmed]
    if roll < 0.20:  # multi-part content
        parts = copy.deepcopy(record)
        for message in parts["request"]["messages"]:
            if isinstance(message.get("content"), str) and rng.random() < 0.5:
                message["content"] = [{"type": "text", "text": message["content"]},
                                      {"type": "image_url"}]
        return [parts]
    if roll < 0.22:  # an inline response (the assistant message itself)
        inline = copy.deepcopy(record)
        inline["response"] = inline["response"]["choices"][0]["message"]
        return [inline]
    if roll < 0.24 and len(messages) > 2:  # a malformed message in the repeated history
        bad = copy.deepcopy(record)
        bad["request"]["messages"][1]["content"] = 42
        return [bad, record]
    if roll < 0.26 and len(messages) > 2:  # an unknown role in the repeated history
        odd = copy.deepcopy(record)
        odd["request"]["messages"][1]["role"] = "wizard"
        return [odd]
    if roll < 0.28 and len(messages) > 2:  # an unknown role in the new messages
        odd = copy.deepcopy(record)
        odd["request"]["messages"][-1]["role"] = "wizard"
        return [odd]
    return [record]


def _delta(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The same sessions from a client that sends only the messages after its last call."""
    sent: dict[str, int] = {}
    out = []
    for record in records:
        if "request" in record:
            record = copy.deepcopy(record)
            sid = record["session_id"]
            messages = record["request"]["messages"]
            start = sent.get(sid, 0)
            record["request"]["messages"] = messages[start:]
            sent[sid] = len(messages) + 1
        out.append(record)
    return out


def streams(sessions: int) -> dict[str, list[tuple[bytes, bytes | None]]]:
    """Named streams of ``(value, key)``."""
    rng = random.Random(7)
    out: dict[str, list[tuple[bytes, bytes | None]]] = {}
    for seed in (0, 1):
        records = stream(sessions, 8, seed=seed)
        out[f"call_log_{seed}"] = [(json.dumps(r).encode(), None) for r in records]
    records = stream(sessions, 8, seed=2)
    out["whitespace_and_key_order"] = [
        (_dumps(r, rng, rng.choice(["plain", "indent", "compact", "reorder"])), None)
        for r in records]
    out["misbehaving_clients"] = [
        (_dumps(m, rng, rng.choice(["plain", "plain", "reorder"])), None)
        for r in stream(sessions, 8, seed=3) for m in _mutate(r, rng)]
    out["misbehaving_no_branches"] = [
        (_dumps(m, rng, rng.choice(["plain", "plain", "reorder"])), None)
        for r in stream(sessions, 8, seed=3) for m in _mutate(r, rng, branches=False)]
    out["delta_clients"] = [(json.dumps(r).encode(), None)
                            for r in _delta(stream(sessions // 2, 8, seed=4))]
    keyed = []
    for r in stream(sessions // 4, 6, seed=5):
        sid = r.pop("session_id")
        keyed.append((json.dumps(r).encode(), sid.encode()))
    out["kafka_keys"] = keyed
    last: dict[str, dict[str, Any]] = {}
    grown = []
    for r in stream(sessions, 8, seed=6):
        if "request" in r:
            messages = [*r["request"]["messages"], r["response"]["choices"][0]["message"]]
            transcript = {"session_id": r["session_id"], "messages": messages}
            grown.append((json.dumps(transcript).encode(), None))  # a growing transcript
            last[r["session_id"]] = transcript
        else:
            grown.append((json.dumps(r).encode(), None))
    out["growing_transcripts"] = grown
    out["transcripts"] = [(json.dumps({**t, "reward": 1.0}).encode(), None)
                          for t in last.values()]
    sample = ROOT / "daemon" / "sample_interactions.jsonl"
    out["sample"] = [(line, None) for line in sample.read_bytes().splitlines() if line.strip()]
    return out


def run(values: list[tuple[bytes, bytes | None]]) -> list[bytes]:
    """The core loop's output, one msgpack-encoded item per record (and one for the end)."""
    import functools
    import inspect

    import msgspec

    from nextstate.daemon import ingest, wire
    from nextstate.daemon.join import SessionJoiner
    from nextstate.daemon.wire import BadRecord
    from nextstate.extractors.registry import build_extractors

    joiner = SessionJoiner(idle_timeout_s=600.0)
    extractors = build_extractors(EXTRACTORS)
    decode_records = ingest.decode_records
    if "known" in inspect.signature(decode_records).parameters:  # a revision that cuts out
        decode_records = functools.partial(decode_records, known=joiner)  # the known bytes
    encode = msgspec.msgpack.encode
    now = 0.0
    out: list[bytes] = []

    def score(closed: list[Any]) -> list[Any]:
        scored = []
        for interaction in closed:
            tuples = []
            for name, extractor in extractors:
                try:
                    tuples.append([name, extractor(interaction)])
                except Exception as exc:  # the pipeline logs it and goes on
                    tuples.append([name, repr(exc)])
            scored.append([interaction, tuples])
        return scored

    for offset, (value, key) in enumerate(values):
        try:
            decoded = decode_records(value, key)
            for record, _ in decoded:
                if record.ts is not None:
                    now = max(now, wire.parse_ts(record.ts))
            closed = []
            for record, shape in decoded:
                closed += joiner.feed(record, shape, now, ("t", 0, offset), len(value))
        except BadRecord as exc:
            out.append(encode(["bad", exc.reason]))
            continue
        if offset % 64 == 63:
            closed += joiner.close_idle(now)
        out.append(encode(["ok", [s for _, s in decoded], score(closed),
                           sorted(joiner.low_watermarks().items())]))
    out.append(encode(["end", score(joiner.close_all())]))
    return out


def dump(sessions: int, path: str) -> None:
    import msgspec

    results = {name: run(values) for name, values in streams(sessions).items()}
    Path(path).write_bytes(msgspec.msgpack.encode(results))


def against(rev: str, sessions: int) -> tuple[dict[str, list[bytes]], set[str]]:
    """The output of the core loop as it was at ``rev`` (run in a subprocess), and which
    streams are expected to differ from it (:data:`INTENDED`)."""
    import msgspec

    with tempfile.TemporaryDirectory() as tmp:
        package = Path(tmp) / "nextstate"
        package.mkdir()
        (package / "__init__.py").write_text("")
        archive = subprocess.run(["git", "archive", rev, "daemon", "extractors", "buffers"],
                                 cwd=ROOT, check=True, capture_output=True).stdout
        with tarfile.open(fileobj=BytesIO(archive)) as tar:
            tar.extractall(package, filter="data")
        expected = {name for name, (marker, path, _) in INTENDED.items()
                    if marker not in (package / path).read_text()}
        out = Path(tmp) / "out.msgpack"
        # The archived package comes first on sys.path, so it shadows the editable install.
        subprocess.run([sys.executable, __file__, "--dump", str(out), "--sessions",
                        str(sessions)], check=True, env={"PYTHONPATH": tmp, "PATH": ""},
                       cwd=tmp)
        result: dict[str, list[bytes]] = msgspec.msgpack.decode(out.read_bytes())
        return result, expected


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--against", default="HEAD", help="git revision to compare with")
    parser.add_argument("--sessions", type=int, default=150)
    parser.add_argument("--dump", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.dump:
        dump(args.sessions, args.dump)
        return
    import msgspec

    reference, expected = against(args.against, args.sessions)
    differ = False
    for name, values in streams(args.sessions).items():
        ours, theirs = run(values), reference[name]
        same = ours == theirs
        if not same and name in expected:
            print(f"{name:<26}{len(values):>7} records  different, as intended: "
                  f"{INTENDED[name][2]}")
            continue
        print(f"{name:<26}{len(values):>7} records  {'same' if same else 'DIFFERENT'}")
        if not same:
            differ = True
            index = next((i for i, (a, b) in enumerate(zip(ours, theirs, strict=False))
                          if a != b), min(len(ours), len(theirs)))
            print(f"  first difference at record {index}:")
            for label, items in (("here", ours), (args.against, theirs)):
                item = msgspec.msgpack.decode(items[index]) if index < len(items) else None
                print(f"  {label}: {str(item)[:1500]}")
    sys.exit(1 if differ else 0)


if __name__ == "__main__":
    main()

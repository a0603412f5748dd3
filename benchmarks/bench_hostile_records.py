"""Hostile record shapes through ``Pipeline.process``: time and peak memory of one record.

    python benchmarks/bench_hostile_records.py transcript [--n 32000] [--limit N]
    python benchmarks/bench_hostile_records.py tool_calls [--n 8000]
    python benchmarks/bench_hostile_records.py otel_rejects [--n 4000] [--proto]

- ``transcript``: one transcript of ``n`` short messages, user and assistant in turns. Each
  action's context is every message before it, so the contexts hold about ``n * n / 4``
  messages together; ``join.max_record_context`` (``--limit``, default the config's) makes a
  transcript beyond it a ``too_large`` dead letter before any is built.
- ``tool_calls``: an exchange whose action calls ``run_shell`` ``n`` times, then the next
  request holding the ``n`` results (the second record is the one timed: it closes the
  action, which the tool and terminal extractors score call by call).
- ``otel_rejects``: one OTLP trace batch (JSON, or protobuf with ``--proto``) of ``n`` chat
  spans whose output messages are no JSON: each is rejected, and cut out of the batch as a
  dead letter of its own.

Prints the record's size, the seconds ``process`` took, whether it was dead-lettered, and
this process's peak RSS.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time

from nextstate.daemon.config import load_config
from nextstate.daemon.pipeline import Pipeline


def transcript(n: int) -> list[dict]:
    return [{"session_id": "long", "messages": [
        {"role": role, "content": f"{role[0]}{i}"}
        for i in range(n // 2) for role in ("user", "assistant")]}]


def tool_calls(n: int) -> list[dict]:
    ask = {"role": "user", "content": "run the checks"}
    action = {"role": "assistant", "content": None, "tool_calls": [
        {"id": f"c{i}", "type": "function",
         "function": {"name": "run_shell", "arguments": '{"cmd": "make check"}'}}
        for i in range(n)]}
    results = [{"role": "tool", "tool_call_id": f"c{i}", "content": "Error: exit code 2"}
               for i in range(n)]
    done = {"choices": [{"message": {"role": "assistant", "content": "Done."}}]}
    return [{"session_id": "calls", "request": {"messages": [ask]},
             "response": {"choices": [{"message": action}]}},
            {"session_id": "calls", "request": {"messages": [ask, action, *results]},
             "response": done}]


def otel_rejects(n: int) -> list[dict]:
    def attribute(key: str, value: str) -> dict:
        return {"key": key, "value": {"stringValue": value}}

    ask = json.dumps([{"role": "user", "parts": [{"type": "text", "content": "hi"}]}])
    spans = [{"traceId": "ab" * 16, "spanId": f"{i:016x}", "name": "chat",
              "startTimeUnixNano": str(1_760_000_000_000_000_000 + i),
              "attributes": [attribute("gen_ai.operation.name", "chat"),
                             attribute("gen_ai.input.messages", ask),
                             attribute("gen_ai.output.messages", "[{not json")]}
             for i in range(n)]
    return [{"resourceSpans": [{"resource": {}, "scopeSpans": [{"scope": {}, "spans": spans}]}]}]


def as_protobuf(batch: dict) -> bytes:
    """An OTLP JSON batch in the protobuf encoding (ids are base64 in protobuf's JSON)."""
    import base64

    from google.protobuf.json_format import ParseDict
    from opentelemetry.proto.trace.v1.trace_pb2 import TracesData

    for resource_spans in batch["resourceSpans"]:
        for scope in resource_spans["scopeSpans"]:
            for span in scope["spans"]:
                for key in ("traceId", "spanId"):
                    span[key] = base64.b64encode(bytes.fromhex(span[key])).decode()
    return ParseDict(batch, TracesData()).SerializeToString()


SHAPES = {"transcript": transcript, "tool_calls": tool_calls, "otel_rejects": otel_rejects}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("shape", choices=sorted(SHAPES))
    parser.add_argument("--n", type=int, default=32_000)
    parser.add_argument("--limit", type=int, default=None, help="join.max_record_context")
    parser.add_argument("--proto", action="store_true", help="otel_rejects: protobuf")
    args = parser.parse_args()
    records = SHAPES[args.shape](args.n)
    values = [as_protobuf(r) if args.proto else json.dumps(r).encode() for r in records]
    overrides = {} if args.limit is None else {"join.max_record_context": args.limit}
    with tempfile.TemporaryDirectory() as state:
        pipeline = Pipeline(load_config(None, state_dir=state, **overrides))
        for offset, value in enumerate(values[:-1]):
            pipeline.process(value, None, "bench", 0, offset)
        start = time.perf_counter()
        pipeline.process(values[-1], None, "bench", 0, len(values) - 1)
        seconds = time.perf_counter() - start
        rejected = pipeline.dead_letters.count
        pipeline.close()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{args.shape} n={args.n}, {len(values[-1]) / 1e6:.2f} MB: process {seconds:.2f} s, "
          f"{f'{rejected} dead letter(s)' if rejected else 'scored'}, peak RSS {peak_mb:.0f} MB")


if __name__ == "__main__":
    main()

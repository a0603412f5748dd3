"""OpenTelemetry GenAI spans from the real opentelemetry-sdk, in the collectors' encodings."""

from __future__ import annotations

import json
import re

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nextstate.daemon.ingest import decode_records
from nextstate.daemon.join import SessionJoiner
from nextstate.daemon.pipeline import Pipeline
from nextstate.daemon.wire import BadRecord
from tests.daemon.test_pipeline import config_for, stored

sdk_trace = pytest.importorskip("opentelemetry.sdk.trace")
in_memory = pytest.importorskip("opentelemetry.sdk.trace.export.in_memory_span_exporter")
encoder = pytest.importorskip("opentelemetry.exporter.otlp.proto.common.trace_encoder")
json_format = pytest.importorskip("google.protobuf.json_format")
from opentelemetry.trace import Status, StatusCode  # noqa: E402 - after the skips

SYSTEM = [{"type": "text", "content": "You are a weather agent."}]
ASK = {"role": "user", "parts": [{"type": "text", "content": "Weather in Paris tomorrow?"}]}


def _call(call_id: str, args: dict) -> dict:
    return {"role": "assistant", "parts": [{"type": "tool_call", "id": call_id,
                                            "name": "get_weather", "arguments": args}],
            "finish_reason": "tool_calls"}


def _chat(tracer, inputs: list[dict], output: dict, usage: tuple[int, int, int] | None,
          deprecated_usage: bool = False) -> None:
    with tracer.start_as_current_span("chat gpt-4o") as span:
        span.set_attribute("gen_ai.operation.name", "chat")
        span.set_attribute("gen_ai.request.model", "gpt-4o")
        span.set_attribute("gen_ai.provider.name", "openai")
        span.set_attribute("gen_ai.response.finish_reasons", [output.get("finish_reason",
                                                                         "stop")])
        span.set_attribute("gen_ai.system_instructions", json.dumps(SYSTEM))
        span.set_attribute("gen_ai.input.messages", json.dumps(inputs))
        span.set_attribute("gen_ai.output.messages", json.dumps([output]))
        if usage and deprecated_usage:
            span.set_attribute("gen_ai.usage.prompt_tokens", usage[0])
            span.set_attribute("gen_ai.usage.completion_tokens", usage[1])
        elif usage:
            span.set_attribute("gen_ai.usage.input_tokens", usage[0])
            span.set_attribute("gen_ai.usage.output_tokens", usage[1])
            span.set_attribute("gen_ai.usage.cache_read.input_tokens", usage[2])


def _tool(tracer, call_id: str, args: dict, result: str, error: str | None = None) -> None:
    with tracer.start_as_current_span("execute_tool get_weather") as span:
        span.set_attribute("gen_ai.operation.name", "execute_tool")
        span.set_attribute("gen_ai.tool.name", "get_weather")
        span.set_attribute("gen_ai.tool.call.id", call_id)
        span.set_attribute("gen_ai.tool.call.arguments", json.dumps(args))
        span.set_attribute("gen_ai.tool.call.result", result)
        if error:
            span.set_status(Status(StatusCode.ERROR, error))


def agent_run(conversation: str | None, tool_error: str | None) -> list:
    """One agent turn traced by the SDK: invoke_agent > chat (tool call) > execute_tool > chat.

    The second chat span repeats the history with the tool's answer, as the openai-v2
    instrumentation records it; the tool span carries the authoritative status.
    """
    exporter = in_memory.InMemorySpanExporter()
    provider = sdk_trace.TracerProvider()
    provider.add_span_processor(sdk_trace.export.SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("agent")
    args = {"city": "Paris"}
    result = "upstream returned 503" if tool_error else '{"temp_c": 21}'
    with tracer.start_as_current_span("invoke_agent weather") as agent:
        agent.set_attribute("gen_ai.operation.name", "invoke_agent")
        if conversation:
            agent.set_attribute("gen_ai.conversation.id", conversation)
        _chat(tracer, [ASK], _call("call_1", args), (120, 14, 100))
        _tool(tracer, "call_1", args, result, tool_error)
        answer = {"role": "tool", "parts": [{"type": "tool_call_response", "id": "call_1",
                                             "response": result}]}
        _chat(tracer, [ASK, _call("call_1", args), answer],
              {"role": "assistant", "parts": [{"type": "text", "content": "21 C, sunny."}],
               "finish_reason": "stop"}, (150, 8, 0), deprecated_usage=True)
    provider.shutdown()
    return list(exporter.get_finished_spans())


def collector_json(spans: list) -> bytes:
    """The OTel Collector's Kafka exporter JSON: the OTLP envelope, hex ids, enums as ints."""
    request = encoder.encode_spans(spans)
    data = json_format.MessageToDict(request, use_integers_for_enums=True)
    for rs in data["resourceSpans"]:
        for ss in rs["scopeSpans"]:
            for span in ss["spans"]:
                for field in ("traceId", "spanId", "parentSpanId"):
                    if field in span:
                        span[field] = _b64_to_hex(span[field])
    return json.dumps(data).encode()


def _b64_to_hex(value: str) -> str:
    import base64

    return base64.b64decode(value).hex()


def rotel_json(spans: list) -> bytes:
    """Rotel's JSON: a bare list of ResourceSpans."""
    return json.dumps(json.loads(collector_json(spans))["resourceSpans"]).encode()


def protobuf(spans: list) -> bytes:
    """The protobuf encoding (ExportTraceServiceRequest has TracesData's wire format)."""
    return encoder.encode_spans(spans).SerializeToString()


@pytest.mark.parametrize("encode", [collector_json, rotel_json, protobuf,
                                    lambda s: json_format.MessageToJson(
                                        encoder.encode_spans(s)).encode()],
                         ids=["collector_json", "rotel_list", "protobuf", "canonical_json"])
def test_every_encoding_yields_the_same_spans_in_order(encode):
    """Collector JSON, Rotel's list, protobuf and canonical (base64-id) JSON decode to the
    same two exchanges and one tool result, in end order, keyed by the conversation id."""
    records = decode_records(encode(agent_run("conv-7", None)), None)
    assert [shape for _, shape in records] == ["otel_span", "otel_tool", "otel_span"]
    assert {r.session_id for r, _ in records} == {"conv-7"}
    first, tool, second = (r for r, _ in records)
    assert first.response.tool_calls[0].function.name == "get_weather"
    assert json.loads(first.response.tool_calls[0].function.arguments) == {"city": "Paris"}
    assert [m.role for m in first.request.messages] == ["system", "user"]
    assert first.usage.prompt_tokens == 120 and first.usage.completion_tokens == 14
    assert first.usage.prompt_tokens_details.cached_tokens == 100
    assert second.usage.prompt_tokens == 150  # the deprecated prompt_tokens name
    assert tool.messages[0].tool_call_id == "call_1"
    assert [m.role for m in second.request.messages] == ["system", "user", "assistant", "tool"]


def test_trace_id_is_the_session_without_a_conversation_id():
    """With no gen_ai.conversation.id anywhere, the hex trace id ties the session together."""
    spans = agent_run(None, None)
    records = decode_records(rotel_json(spans), None)
    trace_hex = format(spans[0].context.trace_id, "032x")
    assert {r.session_id for r, _ in records} == {trace_hex}
    # protobuf ids (bytes) and the collector's hex ids name the same session
    assert {r.session_id for r, _ in decode_records(protobuf(spans), None)} == {trace_hex}


def test_pipeline_scores_tool_results_and_error_status_from_spans(tmp_path):
    """Two traced runs through the pipeline: a tool span whose status is ERROR becomes a
    negative tool tuple (although its result text looks harmless), an OK one a positive."""
    pipeline = Pipeline(config_for(tmp_path))
    pipeline.process(collector_json(agent_run("ok", None)), None, "otlp_traces", 0, 0)
    pipeline.process(collector_json(agent_run("bad", "ConnectionError: weather API down")),
                     None, "otlp_traces", 0, 1)
    pipeline.finish()
    pipeline.close()
    tuples = {(t.session_id, t.kind): t for t in stored(tmp_path / "state")}
    assert tuples[("ok", "evaluative")].reward > 0
    bad = tuples[("bad", "evaluative")]
    assert bad.reward < 0 and "weather API down" in bad.next_state_excerpt
    assert bad.interaction_id == "bad#2" and bad.prompt_tokens == 120
    assert pipeline.stats.total("records", shape="otel_span") == 4
    assert pipeline.stats.total("records", shape="otel_tool") == 2
    assert pipeline.stats.total("interactions", shape="otel_span") == 4


def test_tool_span_without_captured_content_is_its_own_interaction(tmp_path):
    """With message content not captured (no chat exchange), a failed execute_tool span alone
    still yields a negative tuple on the call's arguments."""
    exporter = in_memory.InMemorySpanExporter()
    provider = sdk_trace.TracerProvider()
    provider.add_span_processor(sdk_trace.export.SimpleSpanProcessor(exporter))
    _tool(provider.get_tracer("agent"), "c9", {"day": "someday"}, "",
          "missing required argument 'city'")
    provider.shutdown()
    pipeline = Pipeline(config_for(tmp_path))
    pipeline.process(collector_json(list(exporter.get_finished_spans())), None, "t", 0, 0)
    pipeline.close()
    (evaluative,) = [t for t in stored(tmp_path / "state") if t.kind == "evaluative"]
    assert evaluative.reward < 0 and evaluative.action.tool_calls[0].id == "c9"
    assert json.loads(evaluative.action.tool_calls[0].arguments) == {"day": "someday"}


def test_a_flood_of_tool_spans_for_one_call_keeps_the_latest_result():
    """Tool spans for a pending action's call are kept one per call id, the latest (as the
    next exchange merges them). Before, every span was appended to a tuple after a scan of
    the action's calls: held without bound, and quadratic (20k spans: 4.1 s)."""
    call = {"role": "assistant", "parts": [{"type": "tool_call", "id": "c1", "name": "get_weather",
                                            "arguments": {"city": "Paris"}}]}
    chat = _span("chat", "a" * 32, 0)
    chat["attributes"][2] = _kv("gen_ai.output.messages", json.dumps([call]))
    tools = [_span("tool", "a" * 32, n + 1) for n in range(1_000)]
    for n, span in enumerate(tools):
        span["attributes"][2] = _kv("gen_ai.tool.call.result", f"ok {n}")
    joiner = SessionJoiner()
    for spans in ([chat], tools[:500], tools[500:]):
        value = json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": spans}]}]}).encode()
        for record, shape in decode_records(value, None):
            assert joiner.feed(record, shape, 0.0) == []
    (closed,) = joiner.close_all()
    assert [(m.tool_call_id, m.content) for m in closed.next_state] == [("c1", "ok 999")]


def odd_run(conversation: str) -> list:
    """A traced run with two bad chat spans under its ``invoke_agent``: the first's output
    messages are no JSON (the decode rejects it), the second's input holds a message of an
    unknown role (the join rejects it)."""
    exporter = in_memory.InMemorySpanExporter()
    provider = sdk_trace.TracerProvider()
    provider.add_span_processor(sdk_trace.export.SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("agent")
    with tracer.start_as_current_span("invoke_agent odd") as agent:
        agent.set_attribute("gen_ai.operation.name", "invoke_agent")
        agent.set_attribute("gen_ai.conversation.id", conversation)
        with tracer.start_as_current_span("chat gpt-4o") as span:
            span.set_attribute("gen_ai.operation.name", "chat")
            span.set_attribute("gen_ai.input.messages", json.dumps([ASK]))
            span.set_attribute("gen_ai.output.messages", "[{not json")
        wizard = {"role": "wizard", "parts": [{"type": "text", "content": "abracadabra"}]}
        _chat(tracer, [ASK, wizard], {"role": "assistant", "parts": [
            {"type": "text", "content": "Pardon?"}]}, None)
    provider.shutdown()
    return list(exporter.get_finished_spans())


ENCODINGS = {"collector_json": collector_json, "rotel_list": rotel_json, "protobuf": protobuf}


def alone(value: bytes) -> tuple[dict, dict, dict]:
    """A one-span batch (any encoding): its resource, its scope, and its span's attributes."""
    if value[:1] == b"\n":
        from opentelemetry.proto.trace.v1.trace_pb2 import TracesData

        data = json_format.MessageToDict(TracesData.FromString(value))
    else:
        data = json.loads(value)
    (resource,) = data if isinstance(data, list) else data["resourceSpans"]
    (scope,) = resource["scopeSpans"]
    (span,) = scope["spans"]
    return resource, scope, {kv["key"]: next(iter(kv["value"].values()))
                             for kv in span["attributes"]}


@pytest.mark.parametrize("encode", ENCODINGS.values(), ids=ENCODINGS)
def test_a_malformed_span_is_rejected_alone_as_a_batch_of_its_own(encode):
    """A chat span whose output messages are no JSON costs the batch only itself: the other
    spans come through, and it is rejected as a one-span batch in the batch's encoding (its
    resource, its scope, the conversation id its parent carried) that, decoded alone, is
    rejected again for the same reason."""
    value = encode(agent_run("conv-1", None) + odd_run("conv-2"))
    batch = decode_records(value, None)
    assert [(r.session_id, s) for r, s in batch] == [
        ("conv-1", "otel_span"), ("conv-1", "otel_tool"), ("conv-1", "otel_span"),
        ("conv-2", "otel_span")]
    (rejected,) = batch.rejected
    assert (rejected.index, rejected.reason) == (4, "schema")
    assert rejected.detail.startswith("span 4 (") and "GenAI messages attribute" in \
        rejected.detail
    assert rejected.value[:1] == value[:1]
    resource, scope, attributes = alone(rejected.value)
    assert "telemetry.sdk.language" in {kv["key"] for kv in resource["resource"]["attributes"]}
    assert scope["scope"]["name"] == "agent"
    assert attributes["gen_ai.output.messages"] == "[{not json"
    assert attributes["gen_ai.conversation.id"] == "conv-2"  # from its invoke_agent parent
    again = decode_records(rejected.value, None)
    assert list(again) == []
    assert again.rejected == [msgspec.structs.replace(
        rejected, index=0, detail=rejected.detail.replace("span 4 ", "span 0 "),
        value=again.rejected[0].value)]


@pytest.mark.parametrize("encode", ENCODINGS.values(), ids=ENCODINGS)
def test_a_span_the_join_rejects_decodes_alone_as_it_did_in_its_batch(encode):
    """The span of a pair the join rejects (a message of unknown role), cut out of its batch,
    decodes alone to the same record, in the same session (the conversation id its parent
    carried comes with it)."""
    batch = decode_records(encode(odd_run("conv-2")), None)
    ((record, shape),) = batch
    with pytest.raises(BadRecord) as exc:
        SessionJoiner().feed(record, shape, 0.0)
    assert exc.value.reason == "unknown_role"
    rejected = batch.reject(0, exc.value)
    assert (rejected.index, rejected.reason) == (1, "unknown_role")
    assert rejected.detail.startswith("span 1 (") and "wizard" in rejected.detail
    again = decode_records(rejected.value, None)
    assert list(again) == [(record, shape)] and again.rejected == []
    assert record.session_id == "conv-2"


def test_only_malformed_spans_make_a_batch_of_rejects_not_a_bad_record():
    """A valid batch whose GenAI spans are all malformed yields no record and every span
    rejected on its own (a batch that is not OTLP at all stays one bad record)."""
    batch = decode_records(collector_json(odd_run("conv-2")[:1] * 2), None)
    assert list(batch) == []
    assert [(r.index, r.reason) for r in batch.rejected] == [(0, "schema"), (1, "schema")]


@pytest.mark.parametrize("encode", ENCODINGS.values(), ids=ENCODINGS)
def test_many_rejected_spans_read_their_batch_again_once(encode, monkeypatch):
    """Each rejected span is cut out of its batch as a batch of its own. That decoded (or
    parsed) the whole batch again for every one of them: 4,000 bad spans in a 2 MB JSON
    batch took 8 s, in a 1 MB protobuf one 17 s, and a 16 MB batch minutes. Now the batch is
    read again once, and every span alone is still its own span in its resource and scope."""
    from nextstate.daemon import otel

    calls = []
    for name in ("_raw_json", "_raw_proto"):
        read = getattr(otel, name)
        monkeypatch.setattr(otel, name, lambda value, read=read: calls.append(1) or read(value))
    spans = odd_run("conv-m")
    bad = [s for s in spans if s.attributes.get("gen_ai.output.messages") == "[{not json"]
    batch = decode_records(encode(bad * 60 + spans), None)
    (wizard,) = batch  # decoded: the join rejects it, with the batch's conversation id
    rejected = [*batch.rejected, batch.reject(0, BadRecord("unknown_role", "wizard"))]
    assert len(calls) == 1
    assert sorted(r.index for r in rejected) == list(range(62))  # the agent span: 62
    for r in rejected[:-1]:
        assert alone(r.value)[2]["gen_ai.output.messages"] == "[{not json"
    attributes = alone(rejected[-1].value)[2]
    assert "wizard" in attributes["gen_ai.input.messages"]
    assert attributes["gen_ai.conversation.id"] == "conv-m"  # inherited from its trace
    assert wizard[0].session_id == "conv-m"


@pytest.mark.parametrize("value", [{"arrayValue": {"values": [{"stringValue": "chat"}]}},
                                   {"kvlistValue": {"values": []}}])
def test_an_operation_name_that_is_no_string_skips_only_its_span(value):
    """``gen_ai.operation.name`` as an array or a map (found by atheris: it reached a set
    look-up as an unhashable list) names no operation: that span is skipped, the others come
    through."""
    batch = json.loads(collector_json(agent_run("conv-1", None)))
    expected = [s for _, s in decode_records(json.dumps(batch).encode(), None)]
    spans = batch["resourceSpans"][0]["scopeSpans"][0]["spans"]
    odd = json.loads(json.dumps(spans[0]))
    for kv in odd["attributes"]:
        if kv["key"] == "gen_ai.operation.name":
            kv["value"] = value
    spans.insert(0, odd)
    assert [s for _, s in decode_records(json.dumps(batch).encode(), None)] == expected


def test_malformed_otlp_batch_is_a_bad_record():
    """A JSON list that is not ResourceSpans, or broken protobuf, is rejected with a reason."""
    with pytest.raises(BadRecord) as schema:
        decode_records(b'[{"scopeSpans": 3}]', None)
    assert schema.value.reason == "schema"
    with pytest.raises(BadRecord) as broken:
        decode_records(b"\n\xff\xff\xff", None)
    assert broken.value.reason == "decode"


def _letters(state_dir) -> list[dict]:
    path = state_dir / "dlq.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def test_a_batch_with_bad_spans_loses_nothing_else(tmp_path):
    """One batch: two sessions' runs around a trace with a span the decode rejects and one
    the join rejects. Both sessions' interactions are stored; each bad span is a dead letter
    of its own (its reason, its place in the detail, the batch's key and offset) that, re-fed
    alone, is rejected again for the same reason; the batch replayed after a restart joins
    its spans again and adds no dead letter."""
    value = collector_json(agent_run("conv-a", None) + odd_run("conv-c")
                           + agent_run("conv-b", "ConnectionError: weather API down"))
    pipeline = Pipeline(config_for(tmp_path))
    pipeline.process(value, b"k", "otlp_traces", 0, 7)
    pipeline.finish()
    pipeline.close()
    tuples = {(t.session_id, t.kind): t for t in stored(tmp_path / "state")}
    assert tuples[("conv-a", "evaluative")].reward > 0
    assert tuples[("conv-b", "evaluative")].reward < 0
    assert {session for session, _ in tuples} == {"conv-a", "conv-b"}
    assert pipeline.stats.total("interactions", shape="otel_span") == 4
    assert pipeline.stats.total("records", shape="otel_span") == 4
    assert pipeline.stats.total("records", shape="otel_tool") == 2
    letters = _letters(tmp_path / "state")
    assert [(e["reason"], e["source"], e["partition"], e["offset"], e["key"])
            for e in letters] == [("schema", "otlp_traces", 0, 7, "k"),
                                  ("unknown_role", "otlp_traces", 0, 7, "k")]
    assert letters[0]["error"].startswith("span 4 (")
    assert letters[1]["error"].startswith("span 5 (") and "wizard" in letters[1]["error"]
    assert pipeline.stats.total("dead_letters", reason="schema") == 1
    assert pipeline.stats.total("dead_letters", reason="unknown_role") == 1
    for n, entry in enumerate(letters):
        again = Pipeline(config_for(tmp_path / f"again{n}"))
        again.process(entry["value"].encode(), None, "otlp_traces.dlq", 0, 0)
        again.close()
        (letter,) = _letters(tmp_path / f"again{n}" / "state")
        assert letter["reason"] == entry["reason"]
        assert letter["error"] == re.sub(r"^span \d+ ", "span 0 ", entry["error"])
    restarted = Pipeline(config_for(tmp_path))
    joined, feed = [], restarted.joiner.feed
    restarted.joiner.feed = lambda record, shape, *rest: joined.append(shape) or feed(
        record, shape, *rest)
    restarted.process(value, b"k", "otlp_traces", 0, 7)  # re-read below the checkpoint
    # joined again (the span the join rejects included), no dead letter added (below)
    assert sorted(joined) == ["otel_span"] * 5 + ["otel_tool"] * 2
    # conv-a's and conv-b's last exchanges, pending again, were closed (end of input) before
    # the checkpoint: forgotten once the re-read is over, as they were gone then.
    assert restarted.joiner.pending_count == 0 and not restarted._closed_before
    restarted.close()
    assert len(_letters(tmp_path / "state")) == 2
    assert restarted.stats.total("dead_letters") == 2


def _kv(key: str, value: str | int) -> dict:
    return {"key": key, "value": {"stringValue": value} if isinstance(value, str)
            else {"intValue": str(value)}}


def _span(kind: str, trace: str, n: int) -> dict:
    """A span of one kind (see SPAN_KINDS) in ``trace``, its id from ``n``."""
    chat = [_kv("gen_ai.operation.name", "chat"),
            _kv("gen_ai.input.messages", json.dumps([ASK])),
            _kv("gen_ai.output.messages", json.dumps([{"role": "assistant", "parts": [
                {"type": "text", "content": f"answer {n}"}]}]))]
    attributes = {
        "chat": chat,
        "chat_own_conversation": [*chat, _kv("gen_ai.conversation.id", f"own-{n}")],
        "tool": [_kv("gen_ai.operation.name", "execute_tool"), _kv("gen_ai.tool.call.id", "c1"),
                 _kv("gen_ai.tool.call.result", "ok")],
        "conversation_carrier": [_kv("gen_ai.operation.name", "invoke_agent"),
                                 _kv("gen_ai.conversation.id", f"conv-{trace[:1]}")],
        "http": [_kv("http.request.method", "GET"), _kv("http.response.status_code", 200)],
        "bad_messages": [*chat[:2], _kv("gen_ai.output.messages", "[{not json")],
        "bad_start": [_kv("gen_ai.operation.name", "execute_tool")],
        "bad_int": [*chat, {"key": "n", "value": {"intValue": "x8"}}],
    }[kind]
    return {"traceId": trace, "spanId": f"{n:016x}", "name": kind, "kind": 3,
            "startTimeUnixNano": "17x" if kind == "bad_start" else str(1760000000 + n) + "0" * 9,
            "attributes": attributes}


SPAN_KINDS = ["chat", "chat_own_conversation", "tool", "conversation_carrier", "http",
              "bad_messages", "bad_start", "bad_int"]
BAD_KINDS = {"bad_messages": "schema", "bad_start": "schema", "bad_int": "schema"}
SPANS = st.tuples(st.sampled_from(SPAN_KINDS), st.sampled_from(["a" * 32, "b" * 32]))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.lists(SPANS, max_size=4), max_size=3), max_size=3),
       st.booleans())
def test_every_span_is_a_record_or_a_reject_that_decodes_alone_the_same(resources, listed):
    """Batches of several resources and scopes, good and bad spans mixed: each GenAI span is a
    record or a reject, in batch order; a reject decoded alone is rejected again for the same
    reason, and any record's span cut out as a reject decodes alone to the same record."""
    kinds: list[str] = []
    places: list[tuple[int, int]] = []  # each span's resource and scope
    data = []
    for r, scopes in enumerate(resources):
        resource: dict = {"resource": {"attributes": [_kv("service.name", f"svc-{r}")]},
                          "scopeSpans": [], "schemaUrl": "https://opentelemetry.io/schemas/1"}
        for s, spans in enumerate(scopes):
            resource["scopeSpans"].append({"scope": {"name": f"scope-{r}-{s}"}, "spans": [
                _span(kind, trace, len(kinds) + k) for k, (kind, trace) in enumerate(spans)]})
            kinds += [kind for kind, _ in spans]
            places += [(r, s)] * len(spans)
        data.append(resource)
    value = json.dumps(data if listed else {"resourceSpans": data}).encode()
    batch = decode_records(value, None)
    assert [(r.index, r.reason) for r in batch.rejected] == [
        (i, BAD_KINDS[k]) for i, k in enumerate(kinds) if k in BAD_KINDS]
    assert len(batch) == sum(k in ("chat", "chat_own_conversation", "tool") for k in kinds)
    for rejected in batch.rejected:
        again = decode_records(rejected.value, None)
        assert list(again) == [] and [(r.reason, r.detail) for r in again.rejected] == [
            (rejected.reason, re.sub(r"^span \d+ ", "span 0 ", rejected.detail))]
        resource, scope, _ = alone(rejected.value)
        r, s = places[rejected.index]
        assert resource["resource"]["attributes"] == [_kv("service.name", f"svc-{r}")]
        assert resource["schemaUrl"] and scope["scope"] == {"name": f"scope-{r}-{s}"}
    for n, pair in enumerate(batch):
        cut = batch.reject(n, BadRecord("unknown_role", "as if the join rejected it"))
        assert list(decode_records(cut.value, None)) == [pair]


@pytest.mark.parametrize("first_length", [9, 10, 13, 32, 91, 123])
def test_protobuf_whose_first_length_byte_reads_as_json_is_still_protobuf(first_length):
    """A first ResourceSpans of 91 bytes starts the batch with ``\\n[`` (123: ``\\n{``; 9,
    10, 13, 32: whitespace): still decoded as protobuf, not rejected as broken JSON."""
    from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, TracesData

    real = TracesData.FromString(protobuf(agent_run("conv-9", None)))
    pad = ResourceSpans(schema_url="x" * (first_length - 2))  # tag, length, the URL
    assert pad.ByteSize() == first_length
    batch = TracesData(resource_spans=[pad, *real.resource_spans]).SerializeToString()
    assert batch[:2] == bytes([0x0A, first_length])
    records = decode_records(batch, None)
    assert [shape for _, shape in records] == ["otel_span", "otel_tool", "otel_span"]
    assert {r.session_id for r, _ in records} == {"conv-9"}


_OTLP_VALUES = [{"stringValue": "abc"}, {"intValue": "-5"}, {"intValue": "7"},
                {"doubleValue": 1.5}, {"boolValue": True}, {"bytesValue": "AAEC"}, {},
                {"arrayValue": {"values": [{"intValue": "1"}]}},
                {"kvlistValue": {"values": [{"key": "k", "value": {"intValue": "1"}}]}}]


def test_any_otlp_value_in_any_attribute_is_scored_or_rejected_never_raised(tmp_path):
    """Each attribute of a traced run (a tool error in it) set to each OTLP value type, through
    the whole pipeline: nothing raises, and every span is a record or a dead letter. A model
    that was a number, a token count that was a string or a list, or a list as a tool call id
    raised a TypeError in the join or the yield counters: out of the poll loop, at the same
    offset after every restart."""
    run = json.loads(collector_json(agent_run("conv", "boom")))
    spans = [span for rs in run["resourceSpans"] for ss in rs["scopeSpans"]
             for span in ss["spans"]]
    targets = [(n, a["key"]) for n, span in enumerate(spans)
               for a in span.get("attributes", [])] + ["error.type"]
    pipeline = Pipeline(config_for(tmp_path, extractors=["feedback", "user", "tool",
                                                         "terminal", "gui"]))
    offset = 0
    for target in targets:
        for value in _OTLP_VALUES:
            data = json.loads(json.dumps(run))
            for n, span in enumerate(s for rs in data["resourceSpans"]
                                     for ss in rs["scopeSpans"] for s in ss["spans"]):
                attributes = span.setdefault("attributes", [])
                if target == "error.type":  # not in the run: added to every span
                    attributes.append({"key": "error.type", "value": value})
                for attribute in attributes:
                    if (n, attribute["key"]) == target:
                        attribute["value"] = value
            # A conversation of its own per run, so that no run's state meets another's.
            value_bytes = json.dumps(data).replace('"conv"', f'"conv{offset}"').encode()
            pipeline.process(value_bytes, None, "otlp_traces", 0, offset)
            offset += 1
    pipeline.finish()
    pipeline.close()
    letters = _letters(tmp_path / "state")
    assert {letter["reason"] for letter in letters} == {"schema"}
    errors = " ".join(letter["error"] for letter in letters)
    assert "is not a token count" in errors and "gen_ai.request.model is not a string" in errors
    assert "gen_ai.tool.call.id is not a string" in errors
    assert pipeline.stats.total("interactions") >= offset  # the runs around the bad spans

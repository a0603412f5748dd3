"""OpenTelemetry GenAI spans from the real opentelemetry-sdk, in the collectors' encodings."""

from __future__ import annotations

import json

import pytest

from nextstate.daemon.ingest import decode_records
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


def test_a_malformed_span_skips_only_itself():
    """A chat span whose messages attribute is not JSON is skipped; the batch's good spans
    still come through; a batch of only such spans is a bad record."""
    batch = json.loads(collector_json(agent_run("conv-1", None)))
    spans = batch["resourceSpans"][0]["scopeSpans"][0]["spans"]
    broken = json.loads(json.dumps(spans[0]))
    for kv in broken["attributes"]:
        if kv["key"] == "gen_ai.output.messages":
            kv["value"] = {"stringValue": "[{not json"}
    spans.insert(0, broken)
    shapes = [s for _, s in decode_records(json.dumps(batch).encode(), None)]
    assert shapes == ["otel_span", "otel_tool", "otel_span"]
    only_bad = {"resourceSpans": [{"scopeSpans": [{"spans": [broken]}]}]}
    with pytest.raises(BadRecord) as exc:
        decode_records(json.dumps(only_bad).encode(), None)
    assert exc.value.reason == "schema"


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

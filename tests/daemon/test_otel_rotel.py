"""End to end: the official OpenAI SDK, instrumented by opentelemetry-instrumentation-openai-v2,
exports spans over OTLP/HTTP to a real Rotel collector, whose Kafka exporter writes them to
Tansu; the pipeline turns the records it reads back into tool tuples."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from kafka import KafkaConsumer

from nextstate.daemon.pipeline import Pipeline
from tests.daemon.test_pipeline import config_for, stored
from tests.kafka_broker import free_port, wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

rotel = pytest.importorskip("rotel")
pytest.importorskip("openai")
pytest.importorskip("opentelemetry.instrumentation.openai_v2")
pytest.importorskip("opentelemetry.exporter.otlp.proto.http.trace_exporter")

# Runs in its own process: the instrumentation patches the openai module globally.
AGENT = r'''
import json, os, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

os.environ["OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"] = "SPAN_ONLY"
os.environ["OTEL_SEMCONV_STABILITY_OPT_IN"] = "gen_ai_latest_experimental"
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor


class Model(BaseHTTPRequestHandler):
    """An OpenAI-compatible stub: a tool call after a user turn, an answer after a tool's."""

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        if body["messages"][-1]["role"] == "user":
            message = {"role": "assistant", "content": None, "tool_calls": [{
                "id": "call_" + body["messages"][-1]["content"][-2:], "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]}
        else:
            message = {"role": "assistant", "content": "It is 21 C."}
        out = json.dumps({"id": "r", "object": "chat.completion", "created": 1,
                          "model": "stub-model", "choices": [{"index": 0, "message": message,
                          "finish_reason": "tool_calls" if message.get("tool_calls") else "stop"}],
                          "usage": {"prompt_tokens": 50, "completion_tokens": 7,
                                    "total_tokens": 57}}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)


server = ThreadingHTTPServer(("127.0.0.1", 0), Model)
threading.Thread(target=server.serve_forever, daemon=True).start()
provider = TracerProvider()
provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=sys.argv[1])))
OpenAIInstrumentor().instrument(tracer_provider=provider)
import openai

client = openai.OpenAI(base_url=f"http://127.0.0.1:{server.server_address[1]}/v1",
                       api_key="stub")
tracer = provider.get_tracer("weather-agent")
for n, (conversation, result) in enumerate(json.loads(sys.argv[2])):
    # An agent framework's parent span ties the chat calls of one run together.
    with tracer.start_as_current_span("invoke_agent weather") as agent:
        agent.set_attribute("gen_ai.operation.name", "invoke_agent")
        if conversation:
            agent.set_attribute("gen_ai.conversation.id", conversation)
        messages = [{"role": "system", "content": "You are a weather agent."},
                    {"role": "user", "content": f"Weather in Paris? {n:02d}"}]
        call = client.chat.completions.create(model="stub-model",
                                              messages=messages).choices[0].message
        messages.append(call.model_dump(exclude_none=True))
        messages.append({"role": "tool", "tool_call_id": call.tool_calls[0].id,
                         "content": result})
        client.chat.completions.create(model="stub-model", messages=messages)
provider.shutdown()
server.shutdown()
'''

RUNS = [("conv-ok", '{"temp_c": 21}'), ("", "Error: missing required argument 'day'")]


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.parametrize("fmt", ["json", "protobuf"])
def test_instrumented_openai_agent_through_rotel_to_tuples(broker, tmp_path: Path, fmt):
    """Spans a real instrumented client exports, in either Kafka encoding of a real collector,
    become a positive tuple for the good tool call and a negative one for the failed call
    (whose session is the trace id, as no conversation id was set)."""
    agent_bin = Path(rotel.__file__).parent / "rotel-agent"
    if not agent_bin.exists() and shutil.which("rotel-agent") is None:
        pytest.skip("rotel-agent binary not in the rotel wheel")
    topic = f"otlp-{uuid.uuid4().hex[:8]}"
    broker.create_topic(topic, 1)
    http_port, grpc_port = free_port(), free_port()
    collector = subprocess.Popen(
        [str(agent_bin), "start", "--otlp-http-endpoint", f"127.0.0.1:{http_port}",
         "--otlp-grpc-endpoint", f"127.0.0.1:{grpc_port}", "--exporter", "kafka",
         "--kafka-exporter-brokers", broker.bootstrap, "--kafka-exporter-traces-topic", topic,
         "--kafka-exporter-format", fmt, "--batch-timeout", "100ms"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: _listening(http_port), 30)
        script = tmp_path / "agent.py"
        script.write_text(AGENT)
        subprocess.run([sys.executable, str(script), f"http://127.0.0.1:{http_port}/v1/traces",
                        json.dumps(RUNS)], check=True, timeout=60)
        consumer = KafkaConsumer(topic, bootstrap_servers=broker.bootstrap,
                                 auto_offset_reset="earliest", consumer_timeout_ms=1000)
        pipeline = Pipeline(config_for(tmp_path))
        records = []

        def drain() -> bool:
            for record in consumer:
                records.append(record)
                pipeline.process(record.value, record.key, topic, record.partition,
                                 record.offset)
            return pipeline.stats.total("records", shape="otel_span") >= 4
        assert wait_for(drain, 30)
        consumer.close()
        pipeline.finish()
        pipeline.close()
    finally:
        collector.terminate()
        collector.wait(10)
    assert pipeline.stats.total("dead_letters") == 0
    evaluative = {t.session_id: t for t in stored(tmp_path / "state") if t.kind == "evaluative"}
    assert evaluative["conv-ok"].reward > 0
    (trace_session,) = set(evaluative) - {"conv-ok"}
    assert len(trace_session) == 32  # the hex trace id
    assert evaluative[trace_session].reward < 0
    assert evaluative[trace_session].action.tool_calls[0].name == "get_weather"
    assert evaluative[trace_session].prompt_tokens == 50

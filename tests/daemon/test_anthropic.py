"""Anthropic Messages API exchanges: tool_use/tool_result blocks through the one join."""

from __future__ import annotations

import json

from nextstate.daemon.ingest import decode_records
from nextstate.daemon.pipeline import Pipeline
from tests.daemon.test_pipeline import config_for, stored
from tests.records import line

SYSTEM = "You are a weather agent."
ASK = {"role": "user", "content": "Weather in Paris tomorrow?"}


def _use(call_id: str, args: dict) -> dict:
    return {"role": "assistant", "content": [
        {"type": "text", "text": "Let me check."},
        {"type": "tool_use", "id": call_id, "name": "get_weather", "input": args}]}


def _result(call_id: str, content: str, is_error: bool = False) -> dict:
    block = {"type": "tool_result", "tool_use_id": call_id,
             "content": [{"type": "text", "text": content}]}
    if is_error:
        block["is_error"] = True
    return {"role": "user", "content": [block]}


def _exchange(sid: str, messages: list[dict], response: dict, usage: dict) -> dict:
    return {"session_id": sid, "request": {"model": "claude-sonnet-4-5", "max_tokens": 1024,
                                           "system": SYSTEM, "messages": messages},
            "response": {"id": "msg_1", "type": "message", "model": "claude-sonnet-4-5",
                         "stop_reason": "tool_use" if any(
                             b["type"] == "tool_use" for b in response["content"])
                         else "end_turn", "usage": usage, **response}}


def session(sid: str, result: str, is_error: bool) -> list[dict]:
    """Two calls of one session: a tool_use, then the answer after its tool_result."""
    call = _use(f"{sid}-t", {"city": "Paris"})
    answer = {"role": "assistant", "content": [{"type": "text", "text": "Sunny, 21 C."}]}
    return [
        _exchange(sid, [ASK], call, {"input_tokens": 30, "output_tokens": 12,
                                     "cache_read_input_tokens": 200}),
        _exchange(sid, [ASK, call, _result(f"{sid}-t", result, is_error)], answer,
                  {"input_tokens": 60, "output_tokens": 6}),
    ]


def test_blocks_normalize_to_tool_calls_and_tool_messages():
    """tool_use -> a tool call with JSON arguments, tool_result -> a tool message, system ->
    a system message, is_error -> an "Error: " result, usage -> OpenAI-style counts."""
    first, second = session("a", "weather API down", is_error=True)
    ((call, shape),) = decode_records(line(first), None)
    assert shape == "anthropic_exchange"
    (tool_call,) = call.response.tool_calls
    assert tool_call.id == "a-t" and json.loads(tool_call.function.arguments) == {
        "city": "Paris"}
    assert call.response.content == "Let me check."
    assert call.usage.prompt_tokens == 230 and call.usage.prompt_tokens_details.cached_tokens \
        == 200
    ((answer, _),) = decode_records(line(second), None)
    roles = [m.role for m in answer.request.messages]
    assert roles == ["system", "user", "assistant", "tool"]
    tool = answer.request.messages[-1]
    assert tool.tool_call_id == "a-t" and tool.content == "Error: weather API down"


def test_openai_exchange_is_not_taken_for_anthropic():
    """An OpenAI chat-completions log keeps its own shape label."""
    record = {"session_id": "o", "request": {"messages": [ASK]},
              "response": {"choices": [{"message": {"role": "assistant", "content": "hi"}}]}}
    assert [s for _, s in decode_records(line(record), None)] == ["openai_exchange"]


def test_pipeline_scores_anthropic_tool_results(tmp_path):
    """An is_error tool_result scores the tool_use negative, a good result positive; the
    interactions count under the anthropic_exchange shape."""
    config = config_for(tmp_path)
    pipeline = Pipeline(config)
    records = session("good", '{"temp_c": 21}', False) + session("bad", "timeout", True)
    for offset, record in enumerate(records):
        pipeline.process(line(record), None, "t", 0, offset)
    pipeline.finish()
    pipeline.close()
    tuples = {(t.session_id, t.kind): t for t in stored(tmp_path / "state")}
    assert tuples[("good", "evaluative")].reward > 0
    assert tuples[("bad", "evaluative")].reward < 0
    assert tuples[("bad", "evaluative")].prompt_tokens == 230
    assert tuples[("bad", "evaluative")].action.tool_calls[0].name == "get_weather"
    assert pipeline.stats.total("interactions", shape="anthropic_exchange") == 4

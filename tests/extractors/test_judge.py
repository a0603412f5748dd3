"""Tests for the LLM judge extractor and its HTTP client, against a loopback server."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

from nextstate.daemon.judge_client import JudgeRequestError, OpenAIJudgeClient
from nextstate.extractors.judge import JudgeExtractor, JudgeReply, parse_judgement
from nextstate.extractors.types import ScoredTuple, tuple_from


class FakeOpenAI(BaseHTTPRequestHandler):
    """Answers /v1/chat/completions with scripted choices and records requests."""

    answers: ClassVar[list[str]] = []
    requests: ClassVar[list[tuple[dict, dict]]] = []
    honour_n: ClassVar[bool] = True

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FakeOpenAI.requests.append((dict(self.headers), body))
        if self.path != "/v1/chat/completions":
            self.send_response(404)
            self.end_headers()
            return
        n = body.get("n", 1) if FakeOpenAI.honour_n else 1
        choices = [{"index": i, "message": {"role": "assistant",
                                            "content": FakeOpenAI.answers[i % len(
                                                FakeOpenAI.answers)]}} for i in range(n)]
        payload = json.dumps({"choices": choices,
                              "usage": {"prompt_tokens": 100, "completion_tokens": 10 * n}})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(payload.encode())

    def log_message(self, *args: object) -> None:  # keep test output quiet
        pass


@pytest.fixture
def server() -> Iterator[str]:
    """A fake OpenAI-compatible endpoint on a free loopback port; yields its base URL."""
    FakeOpenAI.answers = ["SCORE: -0.8\nHINT: Ask for the date first."]
    FakeOpenAI.requests = []
    FakeOpenAI.honour_n = True
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), FakeOpenAI)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def test_parse_judgement() -> None:
    """Scores are clamped and NONE hints dropped."""
    assert parse_judgement("SCORE: 3\nHINT: NONE") == (1.0, None)
    assert parse_judgement("SCORE: -0.5\nHINT: Use UTC.") == (-0.5, "Use UTC.")
    assert parse_judgement("I think it is fine") is None


def test_judge_over_http_majority_vote(server, chat, monkeypatch) -> None:
    """k samples over HTTP: the majority sign wins, tokens are counted, the key is sent."""
    monkeypatch.setenv("JUDGE_TEST_KEY", "sk-test-secret")
    FakeOpenAI.answers = ["SCORE: -0.8\nHINT: Ask for the date first.", "SCORE: -0.6\nHINT: x",
                          "SCORE: 0.5\nHINT: NONE"]
    judge = JudgeExtractor(base_url=server, model="judge-1", api_key_env="JUDGE_TEST_KEY", k=3)
    tuples = judge(chat("hm, ok"))
    assert [t.kind for t in tuples] == ["evaluative", "directive"]
    assert tuples[0].reward == pytest.approx(-0.7) and tuples[0].source == "judge"
    assert tuples[1].hint == "Ask for the date first."
    assert (judge.calls, judge.prompt_tokens, judge.completion_tokens) == (1, 100, 30)
    headers, body = FakeOpenAI.requests[0]
    assert headers["Authorization"] == "Bearer sk-test-secret"
    assert body["model"] == "judge-1" and body["n"] == 3


def test_client_collects_n_when_server_ignores_n(server) -> None:
    """A server that returns one choice per request is asked until n texts arrive."""
    FakeOpenAI.honour_n = False
    reply = OpenAIJudgeClient(server, "m")([{"role": "user", "content": "hi"}], 3)
    assert len(reply.texts) == 3 and len(FakeOpenAI.requests) == 3
    assert reply.prompt_tokens == 300


def test_client_errors_do_not_leak_the_key(server, monkeypatch) -> None:
    """An HTTP error raises JudgeRequestError whose message has no API key."""
    monkeypatch.setenv("JUDGE_TEST_KEY", "sk-should-not-leak")
    client = OpenAIJudgeClient(server.replace("/v1", "/nope"), "m", api_key_env="JUDGE_TEST_KEY")
    with pytest.raises(JudgeRequestError) as raised:
        client([{"role": "user", "content": "hi"}], 1)
    assert "sk-should-not-leak" not in str(raised.value)


def test_judge_failure_is_counted_not_raised(chat) -> None:
    """A failing endpoint yields no tuple and bumps the failure counter."""
    def broken(messages, n):
        raise JudgeRequestError("down")

    judge = JudgeExtractor(complete=broken)
    assert judge(chat("hm")) == [] and judge.failures == 1


def test_budget_refuses_calls_over_the_per_minute_limit(chat) -> None:
    """Calls beyond max_calls_per_minute are refused until the window moves on."""
    now = [0.0]
    judge = JudgeExtractor(complete=lambda m, n: JudgeReply(["SCORE: 1"] * n, 5, 1),
                           max_calls_per_minute=2, clock=lambda: now[0])
    results = [judge(chat("hm")) for _ in range(3)]
    assert [bool(r) for r in results] == [True, True, False] and judge.budget_refusals == 1
    now[0] = 61.0
    assert judge(chat("hm")) and judge.calls == 3


def test_token_budget(chat) -> None:
    """Once the window's tokens reach max_tokens_per_minute, calls are refused."""
    judge = JudgeExtractor(complete=lambda m, n: JudgeReply(["SCORE: 1"] * n, 900, 200),
                           max_tokens_per_minute=1000, clock=lambda: 0.0)
    assert judge(chat("hm")) and judge(chat("hm")) == [] and judge.budget_refusals == 1


def test_judge_if_uncertain_skips_confident_interactions(chat) -> None:
    """The cascade judges only when earlier tuples are below the threshold."""
    judge = JudgeExtractor(complete=lambda m, n: JudgeReply(["SCORE: 1"] * n, 5, 1),
                           threshold=0.8)
    interaction = chat("thanks!")
    confident: list[ScoredTuple] = [tuple_from(interaction, extractor="user", kind="evaluative",
                                               source="user", reward=0.8, confidence=0.85)]
    assert judge.judge_if_uncertain(interaction, confident) == [] and judge.calls == 0
    unsure = [tuple_from(interaction, extractor="user", kind="evaluative", source="user",
                         reward=0.3, confidence=0.55)]
    assert judge.judge_if_uncertain(interaction, unsure) and judge.calls == 1


def test_state_dict_round_trip(chat) -> None:
    """Counters survive a state_dict / load_state_dict round trip."""
    judge = JudgeExtractor(complete=lambda m, n: JudgeReply(["SCORE: 1"] * n, 7, 2))
    judge(chat("hm"))
    fresh = JudgeExtractor(complete=lambda m, n: JudgeReply([], 0, 0))
    fresh.load_state_dict(judge.state_dict())
    assert fresh.metrics() == judge.metrics() == {"calls": 1, "prompt_tokens": 7,
                                                  "completion_tokens": 2,
                                                  "budget_refusals": 0, "failures": 0}

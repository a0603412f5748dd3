"""Every signal source produces tuples through the daemon, from real-looking records."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from nextstate.daemon.cli import main as cli_main
from tests.daemon.test_pipeline import stored
from tests.records import assistant, conversation_exchanges, tool, user

ROOT = Path(__file__).resolve().parents[2]
GUI_DEV = ROOT.parent / "shared" / "data" / "gui-dev" / "transcripts.jsonl"


def _page(url: str, title: str, tree: str, error: str = "") -> str:
    return json.dumps({"url": url, "title": title, "axtree": tree, "error": error})


def records() -> list[dict]:
    """One session per source: user correction, tool error, pytest run, a web page, feedback."""
    out: list[dict] = []
    out += conversation_exchanges("chat", [
        (assistant("Tomorrow will be 64F and sunny."),
         [user("No, use the metric system please.")]),
        (assistant("Tomorrow will be 18C and sunny."), [user("Perfect, thanks!")]),
        # A neutral follow-up: no cheap extractor is sure, so the judge is asked.
        (assistant("Saturday looks rainy."), [user("And what about Sunday?")]),
        (assistant("Sunday is dry."), []),
    ])
    out += conversation_exchanges("tools", [
        (assistant(calls=[("t1", "create_event", {"title": "sync"})]),
         [tool("t1", "Error: missing required argument 'date'")]),
        (assistant("I could not create it."), []),
    ])
    out += conversation_exchanges("swe", [
        (assistant(calls=[("b1", "bash", {"cmd": "pytest -q"})]),
         [tool("b1", "....F\nFAILED tests/test_x.py::test_y\n1 failed, 4 passed in 0.3s\n"
                     "[exit code: 1]")]),
        (assistant(calls=[("b2", "bash", {"cmd": "pytest -q"})]),
         [tool("b2", ".....\n5 passed in 0.3s\n[exit code: 0]")]),
        (assistant("All tests pass now."), []),
    ])
    before = "RootWebArea 'Shop'\n\t[12] button 'Add to cart'\n\t[13] link 'Cart (0)'"
    after = "RootWebArea 'Shop'\n\t[12] button 'Add to cart'\n\t[13] link 'Cart (1)'\n" \
            "\tStaticText 'Item has been added to your cart.'"
    out.append({"session_id": "web", "messages": [
        {"role": "user", "content": "Add the mug to my cart."},
        assistant(calls=[("g1", "browser", {"action": "noop()"})]),
        tool("g1", _page("http://shop/mug", "Shop", before), name="browser"),
        assistant(calls=[("g2", "browser", {"action": "click('12')"})]),
        tool("g2", _page("http://shop/mug", "Shop", after), name="browser"),
        assistant(calls=[("g3", "browser", {"action": "click('99')"})]),
        tool("g3", _page("http://shop/mug", "Shop", after,
                         error="Element with bid '99' not found"), name="browser"),
        assistant("Done."),
    ]})
    out.append({"type": "feedback", "session_id": "chat", "value": "down",
                "text": "answer in Celsius"})
    return out


class _Judge(BaseHTTPRequestHandler):
    """An OpenAI-compatible chat endpoint that always judges the action bad, with a hint."""

    calls = 0

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).calls += 1
        text = "SCORE: -1\nHINT: Say what you could not do and why."
        reply = {"id": "x", "object": "chat.completion", "model": body["model"],
                 "choices": [{"index": i, "message": {"role": "assistant", "content": text},
                              "finish_reason": "stop"} for i in range(body.get("n", 1))],
                 "usage": {"prompt_tokens": 100, "completion_tokens": 20}}
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


def test_every_source_yields_tuples_through_the_daemon(tmp_path, capsys):
    """user, tool, terminal, gui, feedback and (cascaded) judge tuples all reach the buffers."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Judge)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        source = tmp_path / "in.jsonl"
        source.write_text("".join(json.dumps(r) + "\n" for r in records()))
        config = tmp_path / "nextstate.toml"
        port = server.server_address[1]
        config.write_text(
            'extractors = ["feedback", "user", "tool", "terminal", "gui", "judge"]\n'
            "[extractor_options.judge]\n"
            f'base_url = "http://127.0.0.1:{port}/v1"\nmodel = "judge-small"\nk = 3\n')
        state = tmp_path / "state"
        assert cli_main(["run", "--config", str(config), "--source", f"file:{source}",
                         "--state-dir", str(state), "--metrics-port", "-1",
                         "--log-format", "json"]) == 0
    finally:
        server.shutdown()
        server.server_close()
    tuples = stored(state)
    by_source: dict[str, list] = {}
    for t in tuples:
        by_source.setdefault(t.source, []).append(t)
    assert set(by_source) == {"user", "tool", "terminal", "gui", "feedback", "judge"}
    user_rewards = {t.interaction_id: t.reward for t in by_source["user"]
                    if t.kind == "evaluative"}
    assert user_rewards["chat#1"] < 0 < user_rewards["chat#3"]  # corrected, then thanked
    assert any(t.kind == "directive" and "metric" in (t.hint or "") for t in by_source["user"])
    assert any(t.reward < 0 and t.credit == "tool_args" for t in by_source["tool"])
    terminal = sorted((t.interaction_id, t.reward) for t in by_source["terminal"]
                      if t.kind == "evaluative")
    assert terminal[0][1] < 0 < terminal[-1][1]  # failing run, then the fix
    gui = {t.interaction_id: t.reward for t in by_source["gui"] if t.kind == "evaluative"}
    assert gui["web#3"] > 0 and gui["web#5"] < 0  # the click that added it; the bad bid
    assert by_source["feedback"][0].reward == -1.0
    assert _Judge.calls >= 1 and all(t.reward < 0 for t in by_source["judge"]
                                     if t.kind == "evaluative")
    cli_main(["stats", "--state-dir", str(state)])
    assert "judge" in capsys.readouterr().out


def test_real_web_agent_transcripts_flow_through_the_daemon(tmp_path):
    """The recorded BrowserGym sessions (shared/data/gui-dev) yield gui tuples end to end."""
    if not GUI_DEV.exists():  # the shared data set lives beside the repository
        import pytest

        pytest.skip(f"{GUI_DEV} not present")
    lines = GUI_DEV.read_text().splitlines()[:5]
    source = tmp_path / "gui.jsonl"
    source.write_text("\n".join(lines) + "\n")
    state = tmp_path / "state"
    assert cli_main(["run", "--source", f"file:{source}", "--state-dir", str(state),
                     "--metrics-port", "-1", "--log-format", "json"]) == 0
    gui = [t for t in stored(state) if t.source == "gui"]
    assert len({t.session_id for t in gui}) == 5
    assert any(t.reward > 0 for t in gui) and any(t.reward < 0 for t in gui)

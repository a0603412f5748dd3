"""Tests of the demo's simulated environment, its agent and one tiny closed-loop run."""

from __future__ import annotations

import json
import math
import random

import pytest

from nextstate.daemon.demo.agent import (
    PolicyAgent,
    candidates,
    constrained_scores,
    report_answer,
    tool_candidates,
)
from nextstate.daemon.demo.env import (
    SETTINGS,
    ToolError,
    make_task,
    run_tool,
    temperature,
    validate,
)
from nextstate.daemon.timeseries import default_path, read_series
from nextstate.extractors.types import Message
from nextstate.trainers.tiny import TinyConfig, TinyPolicy


def test_tools_validate_typed_arguments():
    """Schema violations are real errors with the validator's wording."""
    with pytest.raises(ToolError, match="unknown tool"):
        validate("weather", "{}")
    with pytest.raises(ToolError, match="missing required argument 'unit'"):
        validate("get_weather", '{"city": "Oslo"}')
    with pytest.raises(ToolError, match="is not of type 'integer'"):
        validate("calculator", '{"a": "3", "b": 4, "op": "add"}')
    with pytest.raises(ToolError, match="must be one of"):
        validate("get_weather", '{"city": "Oslo", "unit": "kelvin"}')
    assert validate("calculator", '{"a": 3, "b": 4, "op": "add"}') == {"a": 3, "b": 4,
                                                                         "op": "add"}


def test_every_task_kind_has_a_correct_candidate_and_answer():
    """From the conversation alone the agent can build a call and answer that satisfy the user."""
    rng = random.Random(1)
    kinds = set()
    for _ in range(40):
        task = make_task(rng)
        kinds.add(task.kind)
        messages = [Message(role="user", content=task.request)]
        solved = False
        for call in tool_candidates(messages, "c"):
            tc = call.tool_calls[0]
            result = run_tool(task, tc.name, tc.arguments)
            if task.done(report_answer(result)):
                solved = True
            if task.screen is not None and task.screen.checked[task.params["setting"]]:
                task.screen.click(SETTINGS[task.params["setting"]])  # undo for the next try
        assert solved, task.request
        assert not task.done("I think it is 1234567.")
    assert kinds == {"weather", "convert", "calc", "gui"}


def test_gui_click_toggles_and_user_corrects_with_a_hint():
    """A click toggles the screen; a wrong answer gets a correction naming what was wanted."""
    rng = random.Random(3)
    task = next(t for t in iter(lambda: make_task(rng), None) if t.kind == "gui")
    setting = task.params["setting"]
    bad = json.loads(run_tool(task, "click", json.dumps({"element": setting})))
    assert "no element" in bad["error"]
    good = run_tool(task, "click", json.dumps({"element": SETTINGS[setting]}))
    assert f"'{setting}' checked=true" in json.loads(good)["axtree"]
    assert task.done(report_answer(good))
    weather = next(t for t in iter(lambda: make_task(rng), None) if t.kind == "weather")
    reply = weather.correction("I think it is 3.", random.Random(0))
    assert weather.params["city"] in reply or "rephrase" in reply
    answer = report_answer(run_tool(weather, "get_weather", json.dumps(weather.params)))
    assert str(temperature(**weather.params)) in answer and weather.done(answer)


def test_agent_scores_candidates_as_the_trainer_encodes_them():
    """The agent's behaviour log-probs are the policy's log-probs of the logged action."""
    policy = TinyPolicy(TinyConfig(d_model=16, n_layers=1, n_heads=2), seed=0)
    agent = PolicyAgent(policy, seed=0)
    messages = [Message(role="user", content="What is 3 plus 4?")]
    options = candidates(messages, random.Random(0), "c")
    index, logps = agent.choose(messages, options)
    assert 0 <= index < len(options)
    expected = policy.action_logprobs(messages, options[index]).tolist()
    assert logps == pytest.approx(expected, abs=1e-5)


def test_only_the_fitting_tool_is_proposed_and_malformed_calls_really_fail():
    """Calls are proposed for the tool the request can fill; its malformed variants error."""
    rng = random.Random(5)
    for _ in range(30):
        task = make_task(rng)
        messages = [Message(role="user", content=task.request)]
        ok = set()
        fits = {"weather": "get_weather", "convert": "convert_currency", "calc": "calculator",
                "gui": "click"}[task.kind]
        for call in tool_candidates(messages, "c"):
            tc = call.tool_calls[0]
            result = run_tool(task, tc.name, tc.arguments)
            if "Error" not in result:
                ok.add(tc.name)
            else:
                assert tc.name == fits
        assert ok == {fits}, (task.request, ok)


def test_constrained_scores_count_only_branching_tokens():
    """Shared tokens cost nothing; at a branch the policy's probabilities are renormalised."""
    actions = [(1, 2, 3, 9, 9, 9), (1, 2, 4), (5,)]
    logps = [[-1.0, -2.0, -0.5, -7.0, -7.0, -7.0], [-1.0, -2.0, -1.5], [-3.0]]
    scores = constrained_scores(actions, logps)
    first = math.log(math.exp(-1.0) + math.exp(-3.0))
    second = math.log(math.exp(-0.5) + math.exp(-1.5))
    assert scores == pytest.approx([-1.0 - first - 0.5 - second, -1.0 - first - 1.5 - second,
                                    -3.0 - first])


def test_agent_choice_is_a_distribution_over_candidates():
    """The agent's candidate probabilities from a real policy sum to one."""
    policy = TinyPolicy(TinyConfig(d_model=16, n_layers=1, n_heads=2), seed=0)
    agent = PolicyAgent(policy, seed=0)
    messages = [Message(role="user", content="What is 3 plus 4?")]
    options = candidates(messages, random.Random(0), "c")
    scores, logps = agent.scores(messages, options)
    assert len(options) == 3 and sum(math.exp(x) for x in scores) == pytest.approx(1.0)
    assert all(sum(lp) < s for lp, s in zip(logps, scores, strict=True))


def test_tiny_closed_loop_run(tmp_path):
    """Records flow through the pipeline into buffers; the trainer publishes, the agent loads."""
    from nextstate.daemon.demo.run import DemoSettings, Deployment

    settings = DemoSettings(
        interactions=12, seed=0, policy=TinyConfig(d_model=16, n_layers=1, n_heads=2,
                                                   max_length=384),
        trainer={"lr": 1e-3, "batch_size": 4, "micro_batch_size": 4, "publish_every": 1,
                 "kl_weight": 0.05, "opd_weight": 0.0},
        steps_per_interaction=0.25)
    result = Deployment(settings, tmp_path).run()
    assert result.interactions >= 12
    lines = (tmp_path / "records.jsonl").read_text().splitlines()
    assert sum('"request"' in line for line in lines) == result.interactions
    snapshot = read_series(default_path(tmp_path / "state"))[-1][1]
    assert snapshot['interactions_total{shape="openai_exchange"}'] == result.interactions
    assert snapshot.get("sessions_ended_total") == len(result.sessions)
    assert result.versions[-1][1] >= 1  # the agent hot-loaded a published version


def test_table_and_success_windows():
    """The table reports overall and last-20% success computed from the sessions."""
    from nextstate.daemon.demo.main import rolling_success, table
    from nextstate.daemon.demo.run import RunResult

    trained = RunResult(sessions=[(10, False), (50, False), (90, True), (100, True)],
                        versions=[(100, 3)], interactions=100)
    frozen = RunResult(sessions=[(50, True), (100, False)], versions=[(100, 0)],
                       interactions=100)
    assert trained.success_rate() == 0.5 and trained.success_rate(0.8) == 1.0
    assert frozen.success_rate(0.8) == 0.0
    text = table(trained, frozen)
    assert "1.000" in text.splitlines()[1] and text.splitlines()[2].split()[3] == "0.000"
    _, rate = rolling_success(trained, window=2)
    assert list(rate) == [0.0, 0.0, 0.5, 1.0]


def _last_fifth_success(seed: int, train: bool, interactions: int) -> float:
    """Success over the last 20% of interactions of one run (in a worker process)."""
    import tempfile
    from pathlib import Path

    from nextstate.daemon.demo.run import DemoSettings, Deployment

    with tempfile.TemporaryDirectory() as workdir:
        settings = DemoSettings(interactions=interactions, seed=seed, train=train)
        return Deployment(settings, Path(workdir)).run().success_rate(0.8)


MARGIN = 0.25
"""Trained minus frozen success over the last 20% of interactions, required on every seed."""


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_trained_beats_frozen_on_three_seeds():
    """On seeds 0-2 the trained policy's late success beats the frozen control by MARGIN."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    seeds, interactions = (0, 1, 2), 400
    jobs = [(seed, train, interactions) for seed in seeds for train in (True, False)]
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        results = pool.map(_last_fifth_success, *zip(*jobs, strict=True))
        rates = dict(zip(jobs, results, strict=True))
    margins = {seed: rates[(seed, True, interactions)] - rates[(seed, False, interactions)]
               for seed in seeds}
    print("trained-frozen margins (last 20%):", margins, "rates:", rates)
    assert all(m >= MARGIN for m in margins.values()), margins

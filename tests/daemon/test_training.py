"""Tests for online training inside the daemon."""

from __future__ import annotations

import json
import threading

from nextstate.daemon.config import load_config
from nextstate.daemon.training import TrainingWorker
from nextstate.daemon.yieldstats import YieldCollector, YieldStats
from nextstate.trainers.checkpoint import latest_checkpoint
from tests.records import assistant, tool, user


def test_worker_trains_from_tuples_the_pipeline_adds_and_publishes(tmp_path):
    """The background worker steps on buffered tuples, publishes versions and exposes metrics."""
    from nextstate.daemon.pipeline import Pipeline

    config = load_config(None, state_dir=str(tmp_path), extractors=["tool"], train=True,
                         trainer={"batch_size": 4, "micro_batch_size": 4,
                                  "publish_every": 2},
                         policy={"kind": "tiny", "d_model": 32, "n_layers": 1, "n_heads": 2})
    pipeline = Pipeline(config)
    stop = threading.Event()
    collector = YieldCollector(YieldStats())
    worker = TrainingWorker(config, pipeline.buffers.buffers, pipeline.buffer_lock, stop,
                            collector, idle_s=0.01)
    worker.start()
    try:
        for n in range(8):
            record = {"session_id": f"s{n}", "messages": [
                user("weather?"), assistant(calls=[("c", "get_weather", {"city": "Oslo"})]),
                tool("c", "Error: missing required argument 'day'" if n % 2 else '{"t": 3}'),
                assistant("ok")]}
            pipeline.process(json.dumps(record).encode(), None, "t", 0, n)
        from tests.kafka_broker import wait_for

        assert wait_for(lambda: worker.trainer.policy_version >= 2, 60)
    finally:
        stop.set()
        worker.join(60)
    assert worker.error is None
    assert latest_checkpoint(tmp_path / "checkpoints") is not None
    assert collector.gauges["trainer_policy_version"][1] >= 2
    assert any(name.startswith("trainer_losses_") for name in collector.gauges)
    pipeline.close()


def test_a_trainer_that_falls_behind_signals_backpressure(tmp_path):
    """With train_max_lag, stored tuples the trainer has not caught up with pause the source."""
    config = load_config(None, state_dir=str(tmp_path), train=True, train_max_lag=10,
                         trainer={"batch_size": 4},
                         policy={"kind": "tiny", "d_model": 32, "n_layers": 1, "n_heads": 2})
    produced = [0.0]
    buffers = {"evaluative": object()}  # never sampled: the worker is not started
    worker = TrainingWorker(config, buffers, threading.Lock(), threading.Event(),
                            produced=lambda: produced[0])
    assert worker.behind() is None
    produced[0] = 11
    assert worker.behind() == "trainer behind by 11 tuples"
    worker.steps = 1  # one step of 4 samples brings it back within the bound
    assert worker.behind() is None

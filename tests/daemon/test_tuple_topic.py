"""The output topic sink: tuples keyed for dedup, produced before offsets are committed."""

from __future__ import annotations

import pytest

from nextstate.daemon.pipeline import Pipeline
from nextstate.daemon.tuple_topic import TupleTopicSink, decode_tuple
from tests.daemon.test_pipeline import config_for, weather_session
from tests.records import line


class FakeFuture:
    """kafka-python's send future, reduced to ``is_done`` and ``get``."""

    def __init__(self) -> None:
        self.error: Exception | None = None
        self.is_done = False

    def get(self, timeout: float | None = None) -> None:
        if self.error is not None:
            raise self.error


class FakeProducer:
    """Records sends; ``flush`` completes them (or fails them when ``fail`` is set)."""

    def __init__(self) -> None:
        self.pending: list[tuple[bytes, bytes, FakeFuture]] = []
        self.acked: list[tuple[bytes, bytes]] = []
        self.fail = False

    def send(self, topic: str, key: bytes, value: bytes) -> FakeFuture:
        future = FakeFuture()
        self.pending.append((key, value, future))
        return future

    def flush(self, timeout: float | None = None) -> None:
        for key, value, future in self.pending:
            if self.fail:
                future.error = RuntimeError("broker said no")
            else:
                self.acked.append((key, value))
            future.is_done = True
        self.pending = []

    def close(self, timeout: float | None = None) -> None:
        pass


def _process(pipeline: Pipeline, records: list[dict]) -> None:
    for offset, record in enumerate(records):
        pipeline.process(line(record), None, "t", 0, offset)


def test_checkpoint_produces_every_stored_tuple_under_its_dedup_key(tmp_path):
    """Nothing is acknowledged before the checkpoint; after it, each stored tuple is on the
    topic once, keyed interaction_id|extractor|kind, and decodes back to the same tuple."""
    producer = FakeProducer()
    pipeline = Pipeline(config_for(tmp_path), tuple_sink=TupleTopicSink(producer, "out"))
    _process(pipeline, weather_session("s", "Error: missing required argument 'day'"))
    assert producer.acked == []
    pipeline.checkpoint()
    keys = [k for k, _ in producer.acked]
    assert sorted(keys) == [b"s#2|tool|directive", b"s#2|tool|evaluative"]
    assert all(decode_tuple(v).key == tuple(k.decode().split("|")) for k, v in producer.acked)
    pipeline.close()


def test_failed_produce_stops_the_checkpoint_and_is_retried(tmp_path):
    """A send the broker refused raises from checkpoint(): no offsets are handed out and the
    checkpoint file does not move; the next checkpoint re-sends it before it passes."""
    producer = FakeProducer()
    producer.fail = True
    pipeline = Pipeline(config_for(tmp_path), tuple_sink=TupleTopicSink(producer, "out"))
    _process(pipeline, weather_session("s", '{"temp_c": 21}'))
    with pytest.raises(RuntimeError, match="broker said no"):
        pipeline.checkpoint()
    assert not (tmp_path / "state" / "checkpoint.json").exists()
    producer.fail = False
    assert pipeline.checkpoint() == {("t", 0): 2}  # the third exchange's action is pending
    assert [k for k, _ in producer.acked] == [b"s#2|tool|evaluative"]
    pipeline.close()

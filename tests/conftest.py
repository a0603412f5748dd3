"""Session-wide fixtures: one real Tansu broker, started on demand."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.kafka_broker import Broker, tansu_broker


@pytest.fixture(scope="session")
def broker() -> Iterator[Broker]:
    """A Tansu Kafka-protocol broker on a free loopback port, for the whole test session."""
    with tansu_broker() as running:
        yield running

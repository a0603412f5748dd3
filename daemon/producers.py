"""Bounded waits on kafka-python producers (the dead-letter and tuple-topic sinks).

A checkpoint waits for its producers before it hands out offsets. While the broker is away,
kafka-python's ``flush()`` waits for the records' ``delivery_timeout_ms`` (120 s by default),
and an idempotent producer (kafka-python 3's default) whose expired batch had been sent resets
its producer id and then expires nothing more until the broker is back: the flush waited for
the whole outage, the poll loop with it, and a SIGTERM was not obeyed until the broker
returned. Here a flush waits at most ``timeout_s``; what is not acknowledged by then stays in
the producer (sent once the broker is back, never twice) and the sink's flush raises, so the
checkpoint stops before any commit.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

FLUSH_TIMEOUT_S = 5.0
"""How long a sink's flush waits for the broker's acknowledgements (and a send for the topic's
metadata, ``max_block_ms``): a stop waits for it about twice, well inside a SIGTERM grace."""
FORCED_CLOSE_WAIT_S = 5.0
"""How long a forced close waits for the producer's IO thread to give up its records."""


def flush_within(producer: Any, timeout_s: float) -> bool:
    """Wait at most ``timeout_s`` for every record sent so far; returns whether all were
    completed (acknowledged or failed: each send's future tells which)."""
    from kafka.errors import KafkaTimeoutError

    try:
        producer.flush(timeout=timeout_s)
    except KafkaTimeoutError:
        return False
    return True


def close_within(producer: Any, timeout_s: float) -> None:
    """Close the producer, giving up what it could not send within ``timeout_s``.

    kafka-python 3.0.12's ``close(timeout)`` flushes first and raises ``KafkaTimeoutError``
    when records are left, leaving the producer open; its IO thread is then told to drop them
    (what ``close`` does itself once a graceful close timed out), and the close goes on.
    """
    from kafka.errors import KafkaTimeoutError

    try:
        producer.close(timeout=timeout_s)
        return
    except KafkaTimeoutError:
        pass
    sender = getattr(producer, "_sender", None)  # kafka-python has no public call for it
    if sender is not None:
        sender.force_close()  # fails the records left: their futures complete
        sender.join(FORCED_CLOSE_WAIT_S)
    producer.close(timeout=0)


def flush_then_close(flush: Callable[[], None], producer: Any, timeout_s: float) -> None:
    """A sink's close: ``flush()``, then close the producer, at once if the flush raised
    (giving up what it could not write: nothing past that was committed; the error goes on)."""
    written = False
    try:
        flush()
        written = True
    finally:
        close_within(producer, timeout_s if written else 0)

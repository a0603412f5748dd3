"""The daemon's edges that are not Kafka: health state, the metrics/health HTTP server, logs and
the terminal progress line."""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import IO, Any

import structlog
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from nextstate.daemon.yieldstats import YieldStats


class Health:
    """What ``/healthz`` and ``/readyz`` report, updated by the consuming loop.

    Alive: the loop has beaten within ``stall_s``. Ready: alive, and the source says it is
    assigned and consuming (a Kafka source with partitions and a reachable broker; a file
    source while it reads).
    """

    def __init__(self, stall_s: float = 60.0) -> None:
        self.stall_s = stall_s
        self.last_beat = time.monotonic()
        self.ready = False
        self.reason = "starting"

    def beat(self) -> None:
        """The loop is alive."""
        self.last_beat = time.monotonic()

    def set_ready(self, ready: bool, reason: str = "") -> None:
        """Record readiness and why not."""
        self.ready = ready
        self.reason = reason

    @property
    def alive(self) -> bool:
        return time.monotonic() - self.last_beat < self.stall_s


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    # Seconds a connection may take to send its request. Without it each idle connection held
    # a thread forever: a scraper's half-open sockets, or a flood of them from a pod when the
    # server binds beyond loopback, grew the threads without bound.
    timeout = 10.0

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._send(200, generate_latest(self.server.registry), CONTENT_TYPE_LATEST)
        elif path == "/healthz":
            alive = self.server.health.alive
            self._json(200 if alive else 503, {"alive": alive})
        elif path == "/readyz":
            health = self.server.health
            ready = health.alive and health.ready
            self._json(200 if ready else 503, {"ready": ready, "reason": health.reason})
        else:
            self._send(404, b"not found\n", "text/plain")

    def _json(self, status: int, body: dict[str, Any]) -> None:
        self._send(status, json.dumps(body).encode() + b"\n", "application/json")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # scrapes every few seconds would drown the logs


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    registry: CollectorRegistry
    health: Health


def start_http_server(host: str, port: int, registry: CollectorRegistry,
                      health: Health, request_timeout_s: float = _Handler.timeout) -> _Server:
    """Serve ``/metrics``, ``/healthz`` and ``/readyz`` on a background thread.

    Returns the server; ``server.server_address`` has the bound port (``port=0`` picks one).
    A connection that sends no whole request within ``request_timeout_s`` is closed.
    """
    handler = type("_TimedHandler", (_Handler,), {"timeout": request_timeout_s})
    server = _Server((host, port), handler)
    server.registry = registry
    server.health = health
    threading.Thread(target=server.serve_forever, name="nextstate-http", daemon=True).start()
    return server


def stop_on_signals(stop: threading.Event | None = None) -> threading.Event:
    """``stop`` (or a new event), set by SIGTERM and SIGINT when called on the main thread
    (elsewhere, where handlers cannot be installed, only by whoever holds it)."""
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
    return stop


_PROCESS_FIELDS: dict[str, Any] = {}


def bind_process_fields(**fields: Any) -> None:
    """Fields every log line of this process carries, from any thread (a worker of
    ``--workers``: its index). structlog's context variables would not reach the lines that
    kafka-python's IO thread logs through our rebalance listener."""
    _PROCESS_FIELDS.update(fields)


def _add_process_fields(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    for name, value in _PROCESS_FIELDS.items():
        event.setdefault(name, value)
    return event


def configure_logging(log_format: str = "auto", stream: IO[str] | None = None) -> None:
    """structlog: JSON lines for machines, a console renderer on a terminal."""
    console = log_format == "console" or (log_format == "auto" and
                                          (stream or sys.stderr).isatty())
    renderer: Any = (structlog.dev.ConsoleRenderer(colors=False) if console
                     else structlog.processors.JSONRenderer())
    structlog.configure(
        processors=[_add_process_fields, structlog.processors.add_log_level,
                    structlog.processors.TimeStamper(fmt="iso", utc=True),
                    structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        # Resolve the stream per logger: a stream swapped after configuration (tests, a
        # redirected stderr) must not leave loggers writing to a closed file. One write per
        # line (WriteLogger): print() writes the line and its newline apart, and stderr is
        # unbuffered when redirected, so the lines of `--workers` processes sharing it were
        # spliced into one another (seen in test_workers).
        logger_factory=(lambda *_: structlog.WriteLogger(stream)) if stream is not None
        else (lambda *_: structlog.WriteLogger(sys.stderr)),
        cache_logger_on_first_use=False,
    )


class Progress:
    """A one-line progress display on a terminal: records/s, signal per interaction, lag."""

    def __init__(self, stats: YieldStats, enabled: bool, stream: IO[str] | None = None,
                 every_s: float = 0.5) -> None:
        self.stats = stats
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.every_s = every_s
        self._last = 0.0
        self._last_records = 0.0
        self._start = time.monotonic()

    def update(self, lag: int | None = None, force: bool = False) -> None:
        """Redraw if due."""
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last < self.every_s:
            return
        records = self.stats.total("records")
        rate = (records - self._last_records) / max(now - self._last, 1e-9) if self._last else 0.0
        self._last, self._last_records = now, records
        line = (f"\rrecords {int(records):,} ({rate:,.0f}/s) | interactions "
                f"{int(self.stats.total('interactions')):,} | tuples "
                f"{int(self.stats.total('tuples')):,} | signal/interaction "
                f"{self.stats.signal_per_interaction():.2f} | dlq "
                f"{int(self.stats.total('dead_letters')):,}"
                + (f" | lag {lag:,}" if lag is not None else "") + "   ")
        self.stream.write(line)
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.update(force=True)
            self.stream.write("\n")
            self.stream.flush()

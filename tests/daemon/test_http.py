"""The metrics/health server under idle connections."""

from __future__ import annotations

import socket
import threading
import urllib.request

from prometheus_client import CollectorRegistry

from nextstate.daemon.service import Health, start_http_server
from tests.kafka_broker import wait_for


def test_an_idle_connection_is_closed_and_its_thread_freed():
    """A connection that never sends its request is closed after the request timeout (before,
    each held a server thread forever); the server answers others meanwhile."""
    health = Health()
    health.set_ready(True)
    server = start_http_server("127.0.0.1", 0, CollectorRegistry(), health,
                               request_timeout_s=0.5)
    port = server.server_address[1]
    try:
        idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(20)]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as reply:
            assert reply.status == 200
        for sock in idle:
            sock.settimeout(30)  # the server closes it long before: recv then reads EOF
            assert sock.recv(1024) == b""
            sock.close()
        # Every handler thread ends once its connection is closed.
        assert wait_for(lambda: not [t for t in threading.enumerate()
                                     if "process_request_thread" in t.name], 10)
    finally:
        server.shutdown()
        server.server_close()

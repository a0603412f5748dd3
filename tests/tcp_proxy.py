"""A loopback TCP proxy that tests can cut and restore: a network outage without a broker restart.

The Tansu build the tests use keeps its log in memory only, so an outage cannot be a broker
restart. A Kafka client reconnects to the address the broker *advertises*, so the broker must
advertise the proxy's port (:func:`tansu_behind_proxy`); otherwise the client bypasses it.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

from tests.kafka_broker import Broker, free_port, start_tansu, stop_tansu


class TcpProxy:
    """Forwards ``127.0.0.1:port`` to ``upstream``; :meth:`cut` drops every connection and
    stops listening, so new connections are refused (as with a dead broker host) until
    :meth:`restore` listens again on the same port.

    Example:
        >>> proxy = TcpProxy(("127.0.0.1", 9092))  # doctest: +SKIP
        >>> proxy.cut(); proxy.restore(); proxy.close()  # doctest: +SKIP
    """

    def __init__(self, upstream: tuple[str, int], port: int = 0) -> None:
        self.upstream = upstream
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self.accepted = 0
        self.port = port
        self._listener: socket.socket | None = None
        self._listen()

    def _listen(self) -> None:
        # create_server sets SO_REUSEADDR: the same port can be bound again after a cut.
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self.port = int(self._listener.getsockname()[1])
        threading.Thread(target=self._accept, args=(self._listener,), name="tcp-proxy",
                         daemon=True).start()

    def cut(self) -> None:
        """Drop every open connection and stop listening (connects are refused)."""
        if self._listener is not None:
            _close(self._listener)
            self._listener = None
        with self._lock:
            sockets, self._open = self._open, set()
        for sock in sockets:
            _close(sock)

    def restore(self) -> None:
        """Listen and forward again."""
        if self._listener is None:
            self._listen()

    def close(self) -> None:
        self.cut()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                _close(client)
                continue
            upstream.settimeout(None)
            with self._lock:
                self._open.update((client, upstream))
                self.accepted += 1
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with self._lock:
                self._open.discard(src)
                self._open.discard(dst)
            _close(src)
            _close(dst)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()


@contextlib.contextmanager
def tansu_behind_proxy() -> Iterator[tuple[Broker, TcpProxy]]:
    """A Tansu broker that advertises a proxy's port, and that proxy; every client (tests
    included) reaches the broker through the proxy, so cutting it cuts everyone. Pointing
    ``proxy.upstream`` at another broker (:func:`start_tansu` with the proxy's port
    advertised) while cut makes "the broker" come back empty."""
    broker_port, proxy_port = free_port(), free_port()
    proxy = TcpProxy(("127.0.0.1", broker_port), proxy_port)
    process = start_tansu(broker_port, proxy_port)
    try:
        yield Broker(bootstrap=f"127.0.0.1:{proxy_port}", process=process), proxy
    finally:
        proxy.close()
        stop_tansu(process)

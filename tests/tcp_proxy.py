"""A loopback TCP proxy that tests can cut and restore: a network outage without a broker restart.

The Tansu build the tests use keeps its log in memory only, so an outage cannot be a broker
restart. A Kafka client reconnects to the address the broker *advertises*, so the broker must
advertise the proxy's port (:func:`tansu_behind_proxy`); otherwise the client bypasses it.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Iterator

from tests.kafka_broker import Broker, free_port, start_tansu, stop_tansu

FETCH = 1  # the Kafka API key of a Fetch request


class _Frames:
    """Follows Kafka request frames (int32 size, then int16 API key) across reads."""

    def __init__(self) -> None:
        self.skip = 0  # bytes left in the current frame
        self.head = b""  # a frame header split across reads

    def api_keys(self, data: bytes) -> list[int]:
        """The API keys of the requests that start in ``data``."""
        keys, i = [], 0
        while i < len(data):
            if self.skip:
                step = min(self.skip, len(data) - i)
                self.skip -= step
                i += step
                continue
            take = min(6 - len(self.head), len(data) - i)
            self.head += data[i:i + take]
            i += take
            if len(self.head) == 6:
                size, key = struct.unpack(">ih", self.head)
                keys.append(key)
                self.skip, self.head = size - 2, b""
        return keys


class TcpProxy:
    """Forwards ``127.0.0.1:port`` to ``upstream``; :meth:`cut` drops every connection and
    stops listening, so new connections are refused (as with a dead broker host) until
    :meth:`restore` listens again on the same port. :meth:`freeze_next_fetch` leaves one
    connection open but silent: a half-dead connection, the kind a client can wait on forever.

    Example:
        >>> proxy = TcpProxy(("127.0.0.1", 9092))  # doctest: +SKIP
        >>> proxy.cut(); proxy.restore(); proxy.close()  # doctest: +SKIP
    """

    def __init__(self, upstream: tuple[str, int], port: int = 0) -> None:
        self.upstream = upstream
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self.accepted = 0
        self.frozen = 0  # connections frozen by freeze_next_fetch
        self._freeze = False
        self._silent: set[socket.socket] = set()
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
        with self._lock:  # (a connection being accepted meanwhile is dropped by _accept)
            listener, self._listener = self._listener, None
            sockets, self._open = self._open, set()
        if listener is not None:
            _close(listener)
        for sock in sockets:
            _close(sock)

    def restore(self) -> None:
        """Listen and forward again."""
        if self._listener is None:
            self._listen()

    def freeze_next_fetch(self) -> None:
        """The next connection to carry a Fetch request goes silent in both directions from
        that request on (the request is not forwarded), though it stays open; later
        connections are forwarded as usual."""
        self._freeze = True

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
                cut = self._listener is not listener  # cut since this accept: no connection
                if not cut:
                    self._open.update((client, upstream))
                    self.accepted += 1
            if cut:
                _close(client)
                _close(upstream)
                return
            threading.Thread(target=self._pump, args=(client, upstream, _Frames()),
                             daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket,
              requests: _Frames | None = None) -> None:
        try:
            while data := src.recv(65536):
                if requests is not None and FETCH in requests.api_keys(data):
                    with self._lock:
                        if self._freeze:
                            self._freeze = False
                            self.frozen += 1
                            self._silent.update((src, dst))
                if src in self._silent or dst in self._silent:
                    continue  # read and dropped: nothing more passes either way
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

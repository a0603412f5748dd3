"""TLS for the Kafka tests: throwaway certificates, and a TLS-terminating proxy on loopback.

The Tansu 0.6.0 build the tests use cannot serve TLS itself (its ``--cert``/``--key`` flags are
mutually exclusive, and the acceptor it builds from them is never used: README, "Security"), so
the tests put this proxy in front of a plaintext Tansu that advertises the proxy's port. Every
client connection then runs kafka-python's real SSL path (``security_protocol="SSL"``, CA
verification, hostname check) up to the proxy, which forwards the decrypted bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.kafka_broker import Broker, free_port, start_tansu, stop_tansu


@dataclass(frozen=True)
class Certs:
    """PEM files: a CA, and a server certificate and key signed by it."""

    ca: Path
    cert: Path
    key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_certs(folder: Path, hosts: tuple[str, ...] = ("127.0.0.1", "localhost"),
               tag: str = "test") -> Certs:
    """A fresh CA and a server certificate for ``hosts`` (IP addresses or DNS names, put in the
    subjectAltName, which is what hostname checks read), valid for a day."""
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(_name(f"nextstate {tag} CA"))
          .issuer_name(_name(f"nextstate {tag} CA")).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                       crl_sign=True, content_commitment=False,
                                       key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False,
                                       decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    cert = (x509.CertificateBuilder().subject_name(_name(hosts[0])).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.OID_SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = Certs(folder / f"{tag}-ca.pem", folder / f"{tag}-cert.pem", folder / f"{tag}-key.pem")
    paths.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths.key.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                            serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption()))
    return paths


class TlsProxy:
    """Accepts TLS on ``127.0.0.1:port`` and forwards the plaintext to ``upstream``.

    One asyncio loop on a daemon thread serves every connection, so a client that never
    finishes its handshake holds no thread. ``handshakes`` counts completed TLS handshakes.

    Example:
        >>> proxy = TlsProxy(("127.0.0.1", 9092), certs)  # doctest: +SKIP
        >>> proxy.close()  # doctest: +SKIP
    """

    def __init__(self, upstream: tuple[str, int], certs: Certs, port: int = 0) -> None:
        self.upstream = upstream
        self.handshakes = 0
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(certs.cert, certs.key)
        self._loop = asyncio.new_event_loop()
        started = threading.Event()

        async def serve() -> asyncio.Server:
            return await asyncio.start_server(self._connection, "127.0.0.1", port, ssl=context,
                                              ssl_handshake_timeout=10)

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            self._server = self._loop.run_until_complete(serve())
            started.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name="tls-proxy", daemon=True)
        self._thread.start()
        started.wait(10)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def _connection(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        self.handshakes += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.close()
            return

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, ssl.SSLError):
                pass
            finally:
                with contextlib.suppress(OSError, ssl.SSLError, RuntimeError):
                    dst.close()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))

    def close(self) -> None:
        """Stop listening, drop every connection and end the loop."""
        async def shutdown() -> None:
            self._server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        if self._loop.is_running():
            asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


@contextlib.contextmanager
def tansu_behind_tls(certs: Certs, tansu_args: tuple[str, ...] = ()
                     ) -> Iterator[tuple[Broker, TlsProxy]]:
    """A plaintext Tansu that advertises a TLS proxy's port, and that proxy. The broker's
    ``bootstrap`` is the proxy, and its helpers' clients speak TLS (verifying ``certs.ca``):
    every client reaches Tansu through the proxy."""
    broker_port, proxy_port = free_port(), free_port()
    proxy = TlsProxy(("127.0.0.1", broker_port), certs, proxy_port)
    process = start_tansu(broker_port, proxy_port, extra_args=tansu_args)
    try:
        yield Broker(bootstrap=f"127.0.0.1:{proxy_port}", process=process,
                     security={"security_protocol": "SSL", "ssl_cafile": str(certs.ca)}), proxy
    finally:
        proxy.close()
        stop_tansu(process)

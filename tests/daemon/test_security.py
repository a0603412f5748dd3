"""Security: loopback-only metrics by default, secrets never logged or stored, no pickle in
checkpoints, and a card number in a user message never reaches the files on disk."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

import pytest

from nextstate.daemon.cli import EXIT_KAFKA_UNAVAILABLE
from nextstate.daemon.config import DaemonConfig, load_config
from tests.daemon.test_faults_support import ROOT, DaemonProcess, write_config
from tests.kafka_broker import wait_for
from tests.records import assistant, conversation_exchanges, line, tool, user

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
    """No daemon or buffer module unpickles, and trainer state loads with weights_only."""
    offenders = []
    for folder in ("daemon", "buffers", "extractors", "trainers"):
        for path in (ROOT / folder).rglob("*.py"):
            text = path.read_text()
            if re.search(r"\bimport (c?pickle|dill|shelve)\b|allow_pickle\s*=\s*True", text):
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
def test_sasl_failure_logs_never_show_the_password(broker, tmp_path):
    """SASL_PLAINTEXT against a broker without SASL: the daemon exits with a clear
    kafka_unavailable error, and the password from sasl_password_env is in no log line and no
    state file."""
    state = tmp_path / "state"
    config = write_config(tmp_path / "nextstate.toml", state, broker.bootstrap, "sasl-topic",
                          "sasl", kafka_extra='security_protocol = "SASL_PLAINTEXT"\n'
                                             'sasl_mechanism = "PLAIN"\n'
                                             'sasl_username = "nextstate"\n'
                                             'sasl_password_env = "NEXTSTATE_TEST_PASSWORD"')
    daemon = DaemonProcess(config, state, tmp_path / "daemon.log",
                           env={"NEXTSTATE_TEST_PASSWORD": SECRET})
    daemon.start()
    assert daemon.process is not None
    # The broker refuses the SASL handshake: a clear error and a non-zero exit, no traceback.
    assert daemon.process.wait(180) == EXIT_KAFKA_UNAVAILABLE
    log = (tmp_path / "daemon.log").read_bytes()
    assert b'"kafka_unavailable"' in log and b"SASL_PLAINTEXT" in log
    assert b"Traceback" not in log
    assert files_containing(tmp_path, [SECRET.encode()]) == []

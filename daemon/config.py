"""The daemon's configuration: a TOML file, overridden by command-line flags.

Every field has a default, so an empty file (or none) runs the daemon on its embedded defaults.
Example ``nextstate.toml``::

    source = "kafka"
    state_dir = "/var/lib/nextstate"
    extractors = ["feedback", "user", "tool", "terminal", "gui"]

    [kafka]
    bootstrap_servers = ["broker-1:9092", "broker-2:9092"]
    topic = "agent-interactions"
    group_id = "nextstate"
    security_protocol = "SASL_SSL"
    sasl_mechanism = "SCRAM-SHA-512"
    sasl_username = "nextstate"
    sasl_password_env = "NEXTSTATE_KAFKA_PASSWORD"   # the secret itself stays in the env

    [join]
    idle_timeout_s = 300

    [[buffers]]
    name = "evaluative"
    kinds = ["evaluative"]
    capacity = 1000000
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

# Bounds checked when the config loads: ``max_sessions = 0`` or ``idle_timeout_s = -5`` ran
# and silently joined nothing; ``max_poll_records = 0`` raised out of the first Kafka poll.
Positive = Annotated[float, msgspec.Meta(gt=0)]
NonNegative = Annotated[float, msgspec.Meta(ge=0)]
AtLeastOne = Annotated[int, msgspec.Meta(ge=1)]
NonNegativeInt = Annotated[int, msgspec.Meta(ge=0)]

SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
"""Password mechanisms; OAUTHBEARER and GSSAPI need a token provider or Kerberos, which the
daemon does not configure."""


@dataclass
class KafkaConfig:
    """How to reach the agent-interaction topic."""

    bootstrap_servers: list[str] = field(default_factory=lambda: ["localhost:9092"])
    """Kafka brokers to bootstrap from (host:port)."""
    topic: str = "agent-interactions"
    """The topic of agent interactions (key = session id, value = one JSON record)."""
    group_id: str = "nextstate"
    """Consumer group: run several daemons with one group id to split the partitions."""
    dlq_topic: str | None = None
    """Where undecodable records go; default ``<topic>.dlq``."""
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    """Where a group with no committed offset (or an out-of-range one) starts: earliest|latest."""
    client_id: str = "nextstate"
    """Client id reported to the brokers."""
    security_protocol: str = "PLAINTEXT"
    """PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL."""
    sasl_mechanism: str | None = None
    """PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (required with the SASL protocols)."""
    sasl_username: str | None = None
    """SASL user name."""
    sasl_password_env: str | None = None
    """Name of the environment variable holding the SASL password (never put it in the file)."""
    ssl_cafile: str | None = None
    """CA bundle to verify the brokers with (default: the system's). The broker's certificate
    must also name the host it is reached at (the hostname check cannot be turned off)."""
    ssl_certfile: str | None = None
    """Client certificate (mutual TLS)."""
    ssl_keyfile: str | None = None
    """Client private key (mutual TLS)."""
    poll_timeout_ms: NonNegativeInt = 500
    """How long one poll waits for records."""
    max_poll_records: AtLeastOne = 500
    """Records per poll at most."""
    fetch_max_wait_ms: NonNegativeInt = 100
    """How long the broker may hold a fetch that has no new records. Kafka's default is 500;
    a broker that answers only when this wait ends (Tansu does: measured p50 126 ms from
    produce to consume at 500, 27 ms at 100) adds up to this much to every record's latency.
    100 bounds that at 10 idle fetches/s per broker."""
    session_timeout_ms: AtLeastOne = 10_000
    """Group session timeout: a member silent this long is considered dead."""
    heartbeat_interval_ms: AtLeastOne = 3_000
    """Heartbeat period (under a third of the session timeout)."""
    max_poll_interval_ms: AtLeastOne = 300_000
    """Max time between polls before the member is evicted; also bounds rebalance waits."""

    def consumer_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``kafka.KafkaConsumer`` (the password read from the env)."""
        kwargs: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers, "group_id": self.group_id,
            "client_id": self.client_id, "enable_auto_commit": False,
            "auto_offset_reset": self.auto_offset_reset,
            "session_timeout_ms": self.session_timeout_ms,
            "heartbeat_interval_ms": self.heartbeat_interval_ms,
            "max_poll_interval_ms": self.max_poll_interval_ms,
            "max_poll_records": self.max_poll_records,
            "fetch_max_wait_ms": self.fetch_max_wait_ms,
        }
        kwargs.update(self.security_kwargs())
        return kwargs

    def security_kwargs(self) -> dict[str, Any]:
        """TLS/SASL settings shared by the consumer and the producers.

        Raises:
            kafka.errors.KafkaConfigurationError: ``sasl_password_env`` names a variable that is
                not set (the daemon reports it as ``kafka_unavailable`` instead of sending an
                empty password).
        """
        kwargs: dict[str, Any] = {"security_protocol": self.security_protocol}
        for name in ("sasl_mechanism", "ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            if getattr(self, name) is not None:
                kwargs[name] = getattr(self, name)
        if self.sasl_username is not None:
            kwargs["sasl_plain_username"] = self.sasl_username
        if self.sasl_password_env is not None:
            password = os.environ.get(self.sasl_password_env)
            if password is None:
                from kafka.errors import KafkaConfigurationError

                raise KafkaConfigurationError(
                    f"sasl_password_env: environment variable {self.sasl_password_env} is not set")
            kwargs["sasl_plain_password"] = password
        return kwargs

    def check_security(self) -> None:
        """Reject a protocol or mechanism kafka-python would refuse, or a SASL protocol without
        its mechanism, user and password variable, with a message naming the key.

        Raises:
            ValueError: what is wrong.
        """
        if self.security_protocol not in SECURITY_PROTOCOLS:
            raise ValueError(f"kafka.security_protocol must be one of "
                             f"{', '.join(SECURITY_PROTOCOLS)}, not {self.security_protocol!r}")
        if not self.security_protocol.startswith("SASL_"):
            return
        if self.sasl_mechanism not in SASL_MECHANISMS:
            raise ValueError(f"kafka.sasl_mechanism must be one of {', '.join(SASL_MECHANISMS)} "
                             f"with {self.security_protocol}, not {self.sasl_mechanism!r}")
        for name in ("sasl_username", "sasl_password_env"):
            if not getattr(self, name):
                raise ValueError(f"kafka.{name} is required with {self.security_protocol}")

    @property
    def dlq(self) -> str:
        """The dead-letter topic."""
        return self.dlq_topic or f"{self.topic}.dlq"


@dataclass
class JoinConfig:
    """How actions wait for their next state."""

    idle_timeout_s: Positive = 300.0
    """Close a session's pending action with no next state after this long without records."""
    max_sessions: AtLeastOne = 100_000
    """Sessions held at most; the least recently seen is closed and counted beyond it."""
    max_pending_bytes: AtLeastOne = 1 << 30
    """Bytes of pending join state held at most (each session's latest record, the request
    bytes kept to decode its next one, and for a client that sends only the new messages the
    earlier records its context holds); the least recently seen sessions are forgotten and
    counted (``join_evictions``) beyond it."""
    max_record_bytes: AtLeastOne = 16 << 20
    """Larger records go to the dead-letter queue (reason ``too_large``) undecoded."""
    max_feedback_per_action: AtLeastOne = 64
    """Feedback records kept on one pending action; the oldest is dropped beyond it."""
    max_record_context: AtLeastOne = 20_000_000
    """Context messages the interactions of one record may hold together; a transcript
    beyond it goes to the dead-letter queue (``too_large``). Each action's context is every
    message before it: a transcript of n messages holds about n*n/4 (9,000 messages of
    turns: 20M, about 160 MB while its interactions are scored)."""


@dataclass
class DaemonConfig:
    """Everything ``nextstate run`` needs; see the module docstring for a TOML example."""

    source: str = "kafka"
    """``kafka``, ``file:PATH`` (JSON lines) or ``file:-`` (standard input)."""
    state_dir: str = "nextstate-state"
    """Where buffers, checkpoints, the time series and the file DLQ live."""
    follow: bool = False
    """File sources: keep tailing the file instead of exiting at its end."""
    kafka: KafkaConfig = field(default_factory=KafkaConfig)
    """Kafka consumer settings (used when ``source = "kafka"``)."""
    output_topic: str | None = None
    """Kafka sources: also produce every stored tuple to this topic (msgspec JSON, key
    ``interaction_id|extractor|kind``), flushed before each offset commit."""
    join: JoinConfig = field(default_factory=JoinConfig)
    """Join settings."""
    extractors: list[str] = field(
        default_factory=lambda: ["feedback", "user", "tool", "terminal", "gui"])
    """Extractors to run, in order (registry names; ``judge`` adds the LLM judge)."""
    extractor_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per-extractor keyword options, e.g. ``[extractor_options.gui] tools = ["browser"]``."""
    redact: bool = True
    """Replace emails, phone and card numbers, keys and tokens before tuples are stored."""
    redact_patterns: dict[str, str] = field(default_factory=dict)
    """Extra regexes to redact, by name."""
    buffers: list[dict[str, Any]] = field(default_factory=lambda: [
        {"name": "evaluative", "kinds": ["evaluative"]},
        {"name": "directive", "kinds": ["directive"]},
        {"name": "preference", "kinds": ["preference"]},
    ])
    """Named replay buffers (``nextstate.buffers.BufferSpec`` fields)."""
    workers: AtLeastOne | Literal["auto"] = 1
    """Kafka sources: daemon processes in one consumer group, started and supervised by this
    one (``nextstate.daemon.workers``) to use more cores. Worker ``k`` keeps its buffer shard
    in ``<state_dir>/worker-<k>`` and serves metrics and health on ``metrics_port + k``.
    ``"auto"``: one per core this process may run on (a file source or ``train``: 1); read
    as that number once loaded. Workers beyond the topic's partitions get none."""
    train: bool = False
    """Train the policy inside the daemon on a background worker (``nextstate train`` does
    the same standalone)."""
    trainer: dict[str, Any] = field(default_factory=dict)
    """``nextstate.trainers.TrainerConfig`` fields (objective weights, batch size, lr, ...)."""
    policy: dict[str, Any] = field(default_factory=lambda: {"kind": "tiny"})
    """The policy to train: ``kind = "tiny"`` (built-in) or ``kind = "hf"`` with ``path`` and
    an optional ``lora`` table."""
    train_max_lag: NonNegativeInt = 0
    """With ``train``: pause consumption (backpressure) while more than this many stored tuples
    are ahead of what the trainer has sampled (steps x batch size); 0 never pauses."""
    commit_interval_s: NonNegative = 5.0
    """Flush buffers, checkpoint and commit offsets at least this often."""
    commit_every_records: AtLeastOne = 5_000
    """... or after this many records, whichever comes first."""
    event_time: Literal["auto", "event", "wall"] = "auto"
    """The clock of idle timeouts and the time series: ``event`` (the records' ``ts``, for
    replaying logs), ``wall``, or ``auto`` (event time for file sources, wall for Kafka)."""
    event_time_lateness_s: NonNegative | None = None
    """With event time: how far a record's ``ts`` may lie behind the latest ``ts`` read before
    it (logs merged from several hosts, sessions exported one after another). Sessions go idle
    by a clock this far behind the latest time, so a session is not closed while its next
    record may still come. Unset: the largest lag seen so far, which adapts to the input, up
    to ``event_time_max_lateness_s``."""
    event_time_max_lateness_s: NonNegative = 86_400.0
    """With event time and the lateness unset: the most it adapts to. A record further behind
    (a host whose clock was never set) counts as read at the idle clock, so its session is
    neither closed at once nor keeps every other session open; such records are counted
    (``event_time_clamped{reason="late"}``). A day covers logs of a day's files concatenated."""
    event_time_max_future_s: NonNegative = 300.0
    """With event time: how far a record's ``ts`` may lie ahead of this machine's clock. A
    later ``ts`` (a clock set wrong, nanoseconds read as milliseconds) is not believed: the
    record counts as having no time of its own (``event_time_clamped{reason="future"}``), so
    that one such record cannot close every open session and stop the time series."""
    timeseries_interval_s: Positive = 10.0
    """How often the yield counters are appended to the time series."""
    metrics_host: str = "127.0.0.1"
    """Address of the metrics/health server (loopback unless you mean otherwise)."""
    metrics_port: Annotated[int, msgspec.Meta(ge=-1, le=65535)] = 9464
    """Port of the metrics/health server; 0 picks a free one, -1 disables it."""
    log_format: Literal["auto", "json", "console"] = "auto"
    """``json``, ``console`` or ``auto`` (console on a terminal, JSON otherwise)."""
    progress: Literal["auto", "on", "off"] = "auto"
    """Progress line on stderr: ``on``, ``off`` or ``auto`` (on a terminal)."""

    @property
    def state_path(self) -> Path:
        """The state directory as a path."""
        return Path(self.state_dir)

    def redacted(self) -> dict[str, Any]:
        """The config as a dict safe to log (it holds no secret: passwords live in the env)."""
        return dataclasses.asdict(self)


def load_config(path: str | Path | None = None, **overrides: Any) -> DaemonConfig:
    """Read a TOML config (or none) and apply flag overrides (``None`` values are ignored).

    Raises:
        ValueError: the file has unknown keys or wrong types (the message says which).
    """
    data: dict[str, Any] = {}
    if path is not None:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    for key, value in overrides.items():
        if value is None:
            continue
        if "." in key:
            section, _, name = key.partition(".")
            data.setdefault(section, {})[name] = value
        else:
            data[key] = value
    where = f" in {path}" if path else ""
    _check_keys(data, DaemonConfig, where, "")
    try:
        config = msgspec.convert(data, DaemonConfig, strict=False)
    except msgspec.ValidationError as exc:
        raise ValueError(f"bad config{where}: {exc}") from None
    if config.workers == "auto":
        config = dataclasses.replace(config, workers=_auto_workers(config))
    try:
        config.kafka.check_security()
        _check_workers(config)
    except ValueError as exc:
        raise ValueError(f"bad config{where}: {exc}") from None
    return config


def _auto_workers(config: DaemonConfig) -> int:
    """``workers = "auto"``: the cores this process may run on (its CPU affinity, which a
    container's cpuset limits), where workers can split the input."""
    if config.source != "kafka" or config.train:
        return 1
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else \
        os.cpu_count() or 1


def _check_workers(config: DaemonConfig) -> None:
    if config.workers == 1:
        return
    if config.source != "kafka":
        raise ValueError(f"workers = {config.workers} needs source = \"kafka\" (a consumer "
                         f"group splits a topic's partitions; {config.source!r} has one "
                         "reader)")
    if config.train:
        raise ValueError(f"workers = {config.workers} with train: each worker would train "
                         "its own policy on its own shard; run `nextstate train --state-dir "
                         f"{config.state_dir}` beside them (it samples every shard)")


def _check_keys(data: dict[str, Any], cls: type, where: str, prefix: str) -> None:
    """Reject unknown keys: a typo in a config file must not be silently ignored."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key, value in data.items():
        if key not in fields:
            raise ValueError(f"bad config{where}: unknown key {prefix}{key!r}; "
                             f"known: {', '.join(sorted(fields))}")
        sub = fields[key].default_factory
        if isinstance(value, dict) and dataclasses.is_dataclass(sub):
            _check_keys(value, sub, where, f"{prefix}{key}.")  # type: ignore[arg-type]

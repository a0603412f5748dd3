"""The ``nextstate`` command.

    nextstate run    --config nextstate.toml | --source file:PATH [--state-dir DIR]
    nextstate stats  --state-dir DIR [DIR ...]
    nextstate export --state-dir DIR [DIR ...] --format tuples|rewards [--buffer NAME] --out FILE
    nextstate export --state-dir DIR [DIR ...] --format sft|dpo|kto [--buffer NAME]
                     --out F.jsonl|.parquet
    nextstate report --state-dir DIR [DIR ...] --out DIR
    nextstate train  --state-dir DIR
    nextstate demo
    nextstate eval-extractors

stats, export and report read several state dirs as one (the buffer shards of daemons scaled
out in one consumer group): ``--state-dir a b``, ``--state-dir a --state-dir b`` or a shell
glob ``--state-dir shards/*``. stats sums the shards' counters; export writes every shard's
tuples to one file, a tuple stored on two shards once; report sums the counters' time series.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import signal
import sqlite3
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import msgspec
import structlog
from prometheus_client import CollectorRegistry

from nextstate.buffers.statefile import EXIT_STATE_CORRUPT, CorruptStateFile
from nextstate.daemon.config import DaemonConfig, load_config
from nextstate.daemon.pipeline import CHECKPOINT_FILE, Pipeline, read_checkpoint
from nextstate.daemon.service import (
    Health,
    Progress,
    configure_logging,
    start_http_server,
    stop_on_signals,
)
from nextstate.daemon.statelock import (
    TRAINER_LOCK_FILE,
    StateDirLock,
    StateDirLocked,
    StateLockError,
)
from nextstate.daemon.yieldstats import YieldCollector, YieldStats
from nextstate.extractors._compiled import hot_path

log = structlog.get_logger("nextstate")


def _workers(text: str) -> int | str:
    """``--workers``: a count, or ``auto`` (see ``DaemonConfig.workers``)."""
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a count nor auto: {text!r}") from None


def _run_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="consume agent interactions and produce training tuples")
    p.add_argument("--config", help="TOML config file (flags override it)")
    p.add_argument("--source", help="kafka | file:PATH | file:- (stdin)")
    p.add_argument("--state-dir", help="buffers, checkpoints and the time series live here")
    p.add_argument("--follow", action="store_true", default=None,
                   help="file sources: keep tailing the file")
    p.add_argument("--bootstrap-servers", help="comma-separated host:port list")
    p.add_argument("--topic", help="the agent-interaction topic")
    p.add_argument("--group-id", help="the consumer group")
    p.add_argument("--extractors", help="comma-separated extractor names, in order")
    p.add_argument("--metrics-host", help="metrics/health bind address (default 127.0.0.1)")
    p.add_argument("--metrics-port", type=int, help="0: any free port, -1: no server")
    p.add_argument("--log-format", choices=["auto", "json", "console"])
    p.add_argument("--progress", choices=["auto", "on", "off"])
    p.add_argument("--train", action="store_true", default=None,
                   help="train the policy online on a background worker")
    p.add_argument("--workers", type=_workers,
                   help="Kafka: daemon processes in one consumer group (shards in "
                        "<state-dir>/worker-<k>, metrics on metrics-port + k); auto: one "
                        "per usable core")


def run_main(args: argparse.Namespace) -> int:
    """``nextstate run``: the daemon."""
    try:
        config = load_config(
            args.config, source=args.source, state_dir=args.state_dir, follow=args.follow,
            extractors=args.extractors.split(",") if args.extractors else None,
            metrics_host=args.metrics_host, metrics_port=args.metrics_port,
            log_format=args.log_format, progress=args.progress, train=args.train,
            workers=args.workers, **{"kafka.bootstrap_servers": args.bootstrap_servers.split(",")
               if args.bootstrap_servers else None,
               "kafka.topic": args.topic, "kafka.group_id": args.group_id})
    except (ValueError, OSError) as exc:
        print(f"nextstate: {exc}", file=sys.stderr)
        return 2
    if config.workers > 1:
        from nextstate.daemon.workers import run_workers

        return run_workers(config)
    return run_daemon(config)


def run_daemon(config: DaemonConfig, stop: threading.Event | None = None) -> int:
    """Run until the input ends (file) or ``stop``/SIGTERM/SIGINT (Kafka or --follow)."""
    configure_logging(config.log_format)
    stop = stop_on_signals(stop)
    is_kafka = config.source == "kafka"
    if not is_kafka and not config.source.startswith("file:"):
        print(f"nextstate: source must be kafka or file:PATH, not {config.source!r}",
              file=sys.stderr)
        return 2
    path = config.source.removeprefix("file:")
    if not is_kafka and path != "-" and not Path(path).is_file():
        # Before the pipeline opens its state dir: a typo must not leave an empty state behind
        # (a later ``stats`` there would show zeros instead of this error).
        print(f"nextstate: no input file {path!r} (source {config.source!r})", file=sys.stderr)
        return 2
    # Before anything in the state dir is opened for writing, and before Kafka is reached (a
    # second consumer in the group would set off a rebalance): one daemon per state dir.
    state_lock = StateDirLock(config.state_path)
    refused = acquire_state_lock(state_lock, "state_dir_locked", "state_dir_unlockable")
    if refused is not None:
        return refused
    with state_lock:  # held until the daemon returns (or the process dies: the OS drops it)
        # With --train, also the trainer's lock on checkpoints/: a `nextstate train` there
        # would publish versions beside this one's (each resuming from the other's).
        trainer_lock: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
        if config.train:
            trainer_lock = StateDirLock(config.state_path / "checkpoints", TRAINER_LOCK_FILE,
                                        "nextstate trainer")
            refused = acquire_state_lock(trainer_lock, "trainer_locked", "trainer_unlockable")
            if refused is not None:
                return refused
        with trainer_lock:
            try:
                return _run_locked(config, stop, is_kafka)
            except CorruptStateFile as exc:  # what it opened is closed; the file untouched
                log.error("state_file_corrupt", file=str(exc.path), error=exc.problem,
                          action=exc.remedy)
                return EXIT_STATE_CORRUPT


def acquire_state_lock(lock: StateDirLock, locked: str, unlockable: str) -> int | None:
    """Take ``lock``; ``None``, or the exit code after logging why it could not be taken
    (``locked``, ``unlockable``: the events logged)."""
    try:
        lock.acquire()
    except StateDirLocked as exc:
        log.error(locked, error=str(exc), state_dir=str(lock.state_dir),
                  pid=exc.holder.get("pid"), host=exc.holder.get("host"),
                  lock_file=str(lock.path))
        return EXIT_STATE_DIR_LOCKED
    except StateLockError as exc:
        log.error(unlockable, error=str(exc), state_dir=str(lock.state_dir))
        return 2
    return None


def _run_locked(config: DaemonConfig, stop: threading.Event, is_kafka: bool) -> int:
    """``run_daemon`` once the state dir's lock is held."""
    from nextstate.daemon import sources  # Kafka client import only when running

    try:
        dead_letters = sources.kafka_dead_letters(config) if is_kafka else None
    except sources.KafkaError as exc:
        # No broker reachable (or authentication refused) at start: say so and exit, for the
        # supervisor to restart us, instead of a traceback.
        log.error("kafka_unavailable", error=str(exc)[:300],
                  bootstrap_servers=config.kafka.bootstrap_servers,
                  security_protocol=config.kafka.security_protocol)
        return EXIT_KAFKA_UNAVAILABLE
    tuple_sink = None
    if is_kafka and config.output_topic:
        from nextstate.daemon.tuple_topic import tuple_topic_sink

        tuple_sink = tuple_topic_sink(config.kafka.bootstrap_servers, config.output_topic,
                                      config.kafka.client_id, sources.producer_wait_s(config),
                                      **config.kafka.security_kwargs())
    pipeline = Pipeline(config, dead_letters=dead_letters, tuple_sink=tuple_sink)
    health = Health()
    registry = CollectorRegistry()
    collector = YieldCollector(pipeline.stats)
    registry.register(collector)
    worker = None
    stop_training = threading.Event()
    if config.train:  # before the server: it resumes from checkpoints/, which may not read
        from nextstate.daemon.training import TrainingWorker

        try:
            worker = TrainingWorker(config, pipeline.buffers.buffers, pipeline.buffer_lock,
                                    stop_training, collector,
                                    produced=lambda: pipeline.stats.total("tuples"))
        except CorruptStateFile:
            pipeline.close(durable=False)  # nothing was processed: nothing to checkpoint
            raise
        pipeline.pressure.append(worker.behind)  # a slow trainer pauses consumption
    server = None
    if config.metrics_port >= 0:
        try:
            server = start_http_server(config.metrics_host, config.metrics_port, registry,
                                       health)
        except OSError as exc:  # the port is taken (a second daemon on this host?): say so
            log.error("metrics_unavailable", error=str(exc), host=config.metrics_host,
                      port=config.metrics_port, hint="set metrics_port (0 picks a free one, "
                      "-1 serves none)")
            pipeline.close()
            return 2
        host, port = server.server_address[:2]
        (config.state_path / "http.json").write_text(json.dumps({"host": host, "port": port}))
    tty = sys.stderr.isatty()
    progress = Progress(pipeline.stats, config.progress == "on" or
                        (config.progress == "auto" and tty))
    if worker is not None:
        worker.start()
    log.info("starting", source=config.source, state_dir=str(config.state_path),
             extractors=config.extractors, hot_path=hot_path(),
             metrics=f"{server.server_address[0]}:{server.server_address[1]}" if server
             else None, kafka=config.redacted()["kafka"] if is_kafka else None)
    store_failed = kafka_failed = False
    try:
        if is_kafka:
            runner = sources.KafkaRunner(pipeline, config, stop, health, progress)
            try:
                runner.run()
            finally:
                runner.close()
        else:
            sources.run_file(pipeline, config.source.removeprefix("file:"), stop, health,
                             progress, follow=config.follow)
    except (OSError, sqlite3.Error) as exc:
        if not storage_full(exc):
            raise
        store_failed = _log_storage_full(exc, config)
    except CorruptStateFile:
        # A damaged page found mid-run (a dedup look-up, a write): closed without a
        # checkpoint, so nothing past the last durable one is committed; main() says which
        # file and exits 6.
        store_failed = True
        raise
    except sources.KafkaError as exc:
        # The last checkpoint could not write its dead letters or tuples (the broker is
        # away): nothing past them was committed, so a restart processes those records again.
        # Before, the traceback went on, and the close below raised the same error again.
        kafka_failed = _log_kafka_unavailable_at_stop(exc)
    finally:
        if worker is not None:
            stop_training.set()
            worker.join()
        try:
            pipeline.close(durable=not store_failed and not kafka_failed)
        except (OSError, sqlite3.Error) as exc:
            if not storage_full(exc):
                raise
            store_failed = store_failed or _log_storage_full(exc, config)
            pipeline.close(durable=False)
        if tuple_sink is not None:
            try:
                tuple_sink.close()  # its producer is closed even if this raises
            except sources.KafkaError as exc:  # a traceback before (exit 1)
                kafka_failed = kafka_failed or _log_kafka_unavailable_at_stop(exc)
        progress.close()
        if server is not None:
            server.shutdown()
            server.server_close()
            (config.state_path / "http.json").unlink(missing_ok=True)
    if store_failed:
        return EXIT_STORAGE_FULL
    if kafka_failed:
        return EXIT_KAFKA_UNAVAILABLE
    if worker is not None and worker.error is not None:
        log.error("stopped_with_trainer_error", error=repr(worker.error)[:500])
        return 1
    summary = pipeline.stats.summary()["all"]
    log.info("stopped", interactions=int(summary["interactions"]),
             tuples=int(summary["tuples"]),
             signal_per_interaction=round(summary["signal_per_interaction"], 4),
             dead_letters=int(pipeline.stats.total("dead_letters")))
    return 0


EXIT_STORAGE_FULL = 3
"""``nextstate run``'s exit code when the state directory's disk is full."""
EXIT_KAFKA_UNAVAILABLE = 4
"""``nextstate run``'s exit code when no Kafka broker accepts it at start."""
EXIT_STATE_DIR_LOCKED = 5
"""``nextstate run``'s exit code when another daemon holds the state dir (its lock file,
``daemon.lock``, see :mod:`nextstate.daemon.statelock`); nothing in the dir was touched."""
# EXIT_STATE_CORRUPT (6, from nextstate.buffers.statefile): a state file does not read back;
# run, train, stats, export and report all exit with it, naming the file.


def _log_kafka_unavailable_at_stop(exc: BaseException) -> bool:
    log.error("kafka_unavailable_at_stop", error=repr(exc)[:300],
              hint="nothing uncommitted is lost: a restart reads it again")
    return True


def storage_full(exc: BaseException) -> bool:
    """Is this the disk (or quota) being full, from a file write or from SQLite?"""
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    return isinstance(exc, sqlite3.OperationalError) and "full" in str(exc)


def _log_storage_full(exc: BaseException, config: DaemonConfig) -> bool:
    log.error("storage_full", error=str(exc)[:300], state_dir=str(config.state_path),
              action="stopped consuming; no offset was committed past the last durable "
                     "checkpoint; free disk space and restart (the store reopens as it was)")
    return True


def _load_stats(state_dir: Path) -> YieldStats:
    stats = YieldStats()
    checkpoint = read_checkpoint(state_dir)
    if checkpoint is not None:
        stats.load_state_dict(msgspec.to_builtins(checkpoint.stats))
    return stats


def _state_dir_argument(parser: argparse.ArgumentParser) -> None:
    # extend, not append with a default: argparse would add the given dirs to the default.
    parser.add_argument("--state-dir", action="extend", nargs="+", metavar="DIR",
                        help="the daemon's state dir (default nextstate-state); several "
                             "(repeat the flag or list them) read the shards of a scaled-out "
                             "group as one")


def _state_dirs(args: argparse.Namespace) -> list[Path]:
    from nextstate.daemon.report import distinct_dirs

    return distinct_dirs(args.state_dir or ["nextstate-state"])


def _missing(dirs: Sequence[Path], what: str, message: str) -> bool:
    """Print ``message`` for each dir without ``what`` in it; whether any was."""
    missing = [d for d in dirs if not (d / what).exists()]
    for state_dir in missing:
        print(message.format(state_dir), file=sys.stderr)
    return bool(missing)


def stats_main(args: argparse.Namespace) -> int:
    """``nextstate stats``: the yield summary per source, and what the buffers hold; over
    several state dirs, their counters summed, then one line per dir."""
    dirs = _state_dirs(args)
    if _missing(dirs, CHECKPOINT_FILE, "nextstate: no checkpoint in {} (has the daemon run "
                "there?)"):
        return 2
    try:
        shards = [_load_stats(state_dir) for state_dir in dirs]
    except CorruptStateFile as exc:
        print(f"nextstate stats: {exc}", file=sys.stderr)
        return EXIT_STATE_CORRUPT
    stats = YieldStats()
    for shard in shards:
        stats.merge(shard)
    rows = stats.summary()
    n = int(rows["all"]["interactions"])
    print(f"interactions: {n:,}   records: {int(stats.total('records')):,}   "
          f"dead letters: {int(stats.total('dead_letters')):,}")
    print(f"{'source':<10}{'tuples':>10}{'per interaction':>17}{'share w/ signal':>17}"
          f"{'conf-weighted':>15}")
    for source, row in rows.items():
        print(f"{source:<10}{int(row['tuples']):>10,}{row['signal_per_interaction']:>17.3f}"
              f"{row['share_with_signal']:>17.3f}{row['confidence_weighted']:>15.3f}")
    for kind in ("evaluative", "directive", "preference"):
        print(f"{kind} tuples: {int(stats.total('tuples', kind=kind)):,}")
    if len(dirs) > 1:
        print(f"{len(dirs)} state dirs:")
        for state_dir, shard in zip(dirs, shards, strict=True):
            print(f"  {state_dir}: interactions {int(shard.total('interactions')):,}   "
                  f"records {int(shard.total('records')):,}   "
                  f"tuples {int(shard.total('tuples')):,}   "
                  f"per interaction {shard.signal_per_interaction():.3f}")
    return 0


def export_main(args: argparse.Namespace) -> int:
    """``nextstate export``: every stored tuple (``tuples``) or one row per reward, from one
    state dir or several shards (a key two shards hold is written once)."""
    from nextstate.buffers import BufferSet, BufferSpec
    from nextstate.daemon.export import shard_tuples

    dirs = _state_dirs(args)
    if _missing(dirs, "buffers", "nextstate: no buffers in {}"):
        return 2
    config = load_config(args.config) if args.config else DaemonConfig()
    specs = [msgspec.convert(spec, BufferSpec) for spec in config.buffers]
    shards: list[BufferSet] = []
    try:
        for state_dir in dirs:
            # Read-only: a running daemon may be writing them (a write here would wait on its
            # open transaction, and a smaller capacity in --config would evict its tuples).
            shards.append(BufferSet.open(state_dir / "buffers", specs, read_only=True))
        tuples = shard_tuples(shards, args.buffer)
        if args.format in ("sft", "dpo", "kto"):
            from nextstate.daemon.export import trl_rows, write_rows

            written = write_rows(trl_rows(tuples, args.format), args.out)
            print(f"wrote {written:,} {args.format} rows to {args.out}")
            return 0
        encoder = msgspec.json.Encoder()
        written = 0
        with open(args.out, "wb") as out:
            for t in tuples:
                if args.format == "rewards":
                    if t.kind != "evaluative":
                        continue
                    row: object = {"session_id": t.session_id,
                                   "interaction_id": t.interaction_id, "source": t.source,
                                   "reward": t.reward, "confidence": t.confidence}
                else:
                    row = t
                out.write(encoder.encode(row) + b"\n")
                written += 1
    except CorruptStateFile as exc:  # on open, or a row that does not read back mid-way
        print(f"nextstate export: {exc} ({args.out} is incomplete)", file=sys.stderr)
        return EXIT_STATE_CORRUPT
    except FileNotFoundError as exc:  # a buffer of --config the daemon never made
        print(f"nextstate export: {exc}", file=sys.stderr)
        return 2
    finally:
        for shard in shards:
            shard.close()
    print(f"wrote {written:,} rows to {args.out}")
    return 0


def _delegate(module: str, function: str) -> Callable[[list[str]], int]:
    def call(argv: list[str]) -> int:
        import importlib

        return int(getattr(importlib.import_module(module), function)(argv))
    return call


# Subcommands owned by other packages: their own argument parsers take the rest of argv.
DELEGATED: dict[str, tuple[str, Callable[[list[str]], int]]] = {
    "report": ("draw the yield report (PNG + HTML) from the time series",
               _delegate("nextstate.daemon.report", "report_main")),
    "demo": ("run the closed-loop demo: a simulated deployment that learns from its traffic",
             _delegate("nextstate.daemon.demo", "demo_main")),
    "train": ("train the policy from the durable buffers",
              _delegate("nextstate.trainers.cli", "train_main")),
    "eval-extractors": ("precision/recall of the extractors on the labeled set",
                        _delegate("nextstate.extractors.evaluate", "main")),
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``nextstate`` command."""
    try:
        return _main(list(sys.argv[1:] if argv is None else argv))
    except BrokenPipeError:
        # The reader went away (``nextstate stats | head``): stop quietly, as a shell tool
        # killed by SIGPIPE does. Output still buffered would raise again as Python flushes
        # its streams at exit, so they are pointed at /dev/null first (the recipe in the
        # docs of ``signal``, "Note on SIGPIPE").
        devnull = os.open(os.devnull, os.O_WRONLY)
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError, AttributeError):
                os.dup2(devnull, stream.fileno())
        return 128 + signal.SIGPIPE


def _main(argv: list[str]) -> int:
    if argv and argv[0] in DELEGATED:
        return DELEGATED[argv[0]][1](argv[1:])
    parser = argparse.ArgumentParser(prog="nextstate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    _run_parser(sub)
    p = sub.add_parser("stats", help="yield summary per source")
    _state_dir_argument(p)
    p = sub.add_parser("export", help="export stored tuples as JSON lines")
    _state_dir_argument(p)
    p.add_argument("--config", help="the daemon's config (for its buffer names)")
    p.add_argument("--format", choices=["tuples", "rewards", "sft", "dpo", "kto"],
                   default="tuples", help="sft|dpo|kto: TRL conversational datasets "
                   "(JSON lines, or Parquet for --out *.parquet)")
    p.add_argument("--buffer", help="only this buffer")
    p.add_argument("--out", required=True)
    for name, (help_text, _) in DELEGATED.items():
        sub.add_parser(name, help=help_text, add_help=False)
    args = parser.parse_args(argv)
    return {"run": run_main, "stats": stats_main, "export": export_main}[args.command](args)


if __name__ == "__main__":
    raise SystemExit(main())

"""``nextstate run --workers N``: N daemon processes in one consumer group, one command.

One daemon is one Python process, and its pipeline holds the GIL: on one core it reads a
topic at 0.5-0.6x of a bare kafka-python loop that only parses the records. Several
daemons in one consumer group split the partitions (records are keyed by session, so a
session stays with one of them) and use the host's cores. This module starts them as
children of one supervisor process, each a whole daemon (``run_daemon``) with its own buffer
shard, ``<state_dir>/worker-<k>``, and its own metrics and health server on
``metrics_port + k``. ``nextstate stats``, ``export`` and ``report`` given the parent state dir
read its worker shards as one deployment (:func:`shard_dirs`).

The supervisor:

* holds the parent state dir's lock, so a second supervisor or a plain daemon on it refuses
  to start (each worker locks its own shard);
* forwards SIGTERM and SIGINT to the workers, waits for their graceful stops (each commits
  what it made durable) and exits 0, or with the first non-zero exit code among them;
* restarts a worker that crashed (a traceback, exit 1), was killed by a signal or stopped
  though the supervisor was not (exit 0), after a backoff of 1 s doubling to 30 s (reset
  once it has run a minute): its partitions move to the others meanwhile, who rebuild its
  pending joins from the committed offsets;
* stops the others and exits with a worker's code when one exits for a reason a restart
  would not mend (a bad config 2, disk full 3, no broker 4, a locked shard 5, a corrupt
  state file 6; see ``nextstate.daemon.cli``).

Each worker asks the kernel to send it SIGTERM when the supervisor dies (Linux), so a
supervisor killed with SIGKILL leaves no daemon consuming on its own.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import multiprocessing
import os
import signal
import sys
import threading
import time
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

import structlog

from nextstate.daemon.config import DaemonConfig

log = structlog.get_logger("nextstate.workers")

WORKER_DIR = "worker-{}"
"""A worker's shard under the parent state dir (``worker-0``, ``worker-1``, ...)."""
RESTARTED_EXIT_CODES = frozenset({0, 1})
"""Exit codes after which a worker is started again, as after any death by a signal: a crash
(1), or a stop nobody asked the supervisor for (0: a SIGTERM sent to the worker alone). The
others (2-6) end the supervisor with that code: the same cause would stop the restarted
worker again."""
FIRST_BACKOFF_S = 1.0
MAX_BACKOFF_S = 30.0
STEADY_S = 60.0  # a worker that ran this long had started well: its next restart is quick


def worker_config(config: DaemonConfig, index: int) -> DaemonConfig:
    """Worker ``index``'s config: its shard of the state dir, its metrics port, one worker,
    and no progress line (N of them on one terminal line would overwrite each other)."""
    port = config.metrics_port + index if config.metrics_port > 0 else config.metrics_port
    return dataclasses.replace(config, workers=1, metrics_port=port, progress="off",
                               state_dir=str(config.state_path / WORKER_DIR.format(index)))


def shard_dirs(state_dir: Path) -> list[Path]:
    """The daemon state dirs under ``state_dir``: its worker shards in order (with itself
    first if a single daemon ran there too), or itself alone."""
    prefix = WORKER_DIR.format("")
    workers = sorted((p for p in state_dir.glob(f"{prefix}*")
                      if p.is_dir() and p.name.removeprefix(prefix).isdecimal()),
                     key=lambda p: int(p.name.removeprefix(prefix)))
    if not workers:
        return [state_dir]
    from nextstate.daemon.pipeline import CHECKPOINT_FILE

    single = (state_dir / CHECKPOINT_FILE).exists()  # a daemon of one worker ran here before
    return [state_dir, *workers] if single else workers


def run_workers(config: DaemonConfig, stop: threading.Event | None = None) -> int:
    """Start ``config.workers`` daemons in one consumer group and supervise them until
    ``stop`` is set (SIGTERM/SIGINT set it); returns the exit code (see the module
    docstring). ``stop`` is set when it returns."""
    from nextstate.daemon.cli import acquire_state_lock
    from nextstate.daemon.service import configure_logging, stop_on_signals
    from nextstate.daemon.statelock import StateDirLock

    configure_logging(config.log_format)
    stop = stop_on_signals(stop)
    state_lock = StateDirLock(config.state_path)
    refused = acquire_state_lock(state_lock, "state_dir_locked", "state_dir_unlockable")
    if refused is not None:
        return refused
    # The supervisor waits on its workers' exits and on this pipe, which gets a byte when
    # ``stop`` is set: a stop is seen at once, with no polling.
    wake_r, wake_w = os.pipe()
    watcher = threading.Thread(target=lambda: (stop.wait(), os.write(wake_w, b"x")),
                               name="nextstate-stop-watcher", daemon=True)
    watcher.start()
    try:
        with state_lock:
            return _Supervisor(config, stop, wake_r).run()
    finally:
        stop.set()
        watcher.join()
        os.close(wake_r)
        os.close(wake_w)


class _Supervisor:
    def __init__(self, config: DaemonConfig, stop: threading.Event, wake_fd: int) -> None:
        self.config = config
        self.stop = stop
        self.wake_fd = wake_fd
        self.context = multiprocessing.get_context("spawn")  # no forked locks or threads
        self.processes: dict[int, Any] = {}
        self.started_at: dict[int, float] = {}
        self.backoff = dict.fromkeys(range(config.workers), FIRST_BACKOFF_S)
        self.restart_at: dict[int, float] = {}  # workers waiting out their backoff

    def run(self) -> int:
        log.info("workers_starting", workers=self.config.workers,
                 state_dir=str(self.config.state_path))
        for index in range(self.config.workers):
            self._start(index)
        code = 0
        while not self.stop.is_set():
            timeout = (max(0.0, min(self.restart_at.values()) - time.monotonic())
                       if self.restart_at else None)
            sentinels = {p.sentinel: i for i, p in self.processes.items()}
            ready = wait([self.wake_fd, *sentinels], timeout)
            if self.stop.is_set():
                break
            for sentinel in ready:
                if sentinel in sentinels:
                    code = self._exited(sentinels[sentinel])
                    if code:
                        break
            if code:
                log.error("workers_stopping", reason=f"a worker exited with {code}",
                          action="stopping the others; a restart would stop the same way")
                break
            now = time.monotonic()
            for index, due in list(self.restart_at.items()):
                if due <= now:
                    del self.restart_at[index]
                    self._start(index)
        return self._stop_all(code)

    def _start(self, index: int) -> None:
        process = self.context.Process(target=_worker_main, name=f"nextstate-worker-{index}",
                                       args=(worker_config(self.config, index), index,
                                             os.getpid()))
        process.start()
        self.processes[index] = process
        self.started_at[index] = time.monotonic()
        log.info("worker_started", worker=index, pid=process.pid,
                 state_dir=str(self.config.state_path / WORKER_DIR.format(index)))

    def _exited(self, index: int) -> int:
        """A worker ended while no stop was asked: schedule its restart (returns 0), or
        return its exit code for the supervisor to stop with."""
        process = self.processes.pop(index)
        process.join()
        code = process.exitcode
        if code is not None and code >= 0 and code not in RESTARTED_EXIT_CODES:
            log.error("worker_exited", worker=index, pid=process.pid, exit_code=code)
            return code
        ran = time.monotonic() - self.started_at[index]
        if ran >= STEADY_S:
            self.backoff[index] = FIRST_BACKOFF_S
        delay = self.backoff[index]
        self.backoff[index] = min(delay * 2, MAX_BACKOFF_S)
        self.restart_at[index] = time.monotonic() + delay
        how = _signal_name(-code) if code is not None and code < 0 else f"exit code {code}"
        log.warning("worker_died", worker=index, pid=process.pid, how=how, ran_s=round(ran, 1),
                    action=f"restarting it in {delay:g} s; the others take its partitions "
                           "meanwhile")
        return 0

    def _stop_all(self, code: int) -> int:
        """SIGTERM to every worker, then wait for each; the first non-zero exit code wins."""
        for process in self.processes.values():
            if process.is_alive():
                process.terminate()  # SIGTERM: the worker's graceful stop
        for index, process in sorted(self.processes.items()):
            process.join()
            exit_code = process.exitcode
            if exit_code == -signal.SIGTERM:  # ended before its handler was set: nothing
                exit_code = 0                # was processed, so nothing is lost
            log.info("worker_stopped", worker=index, pid=process.pid, exit_code=exit_code)
            if not code and exit_code:
                code = exit_code if exit_code > 0 else 1
        log.info("workers_stopped", exit_code=code)
        return code


def _signal_name(number: int) -> str:
    try:
        return f"signal {signal.Signals(number).name}"
    except ValueError:  # a real-time signal has no name
        return f"signal {number}"


def _worker_main(config: DaemonConfig, index: int, supervisor: int) -> None:
    """A worker process: one whole daemon, its log lines marked with its index."""
    _terminate_with(supervisor)
    from nextstate.daemon.cli import run_daemon
    from nextstate.daemon.service import bind_process_fields

    bind_process_fields(worker=index)
    sys.exit(run_daemon(config))


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _terminate_with(supervisor: int) -> None:
    """Ask Linux for a SIGTERM when the supervisor (the parent) dies; elsewhere, nothing."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != supervisor:  # it died before the request: nobody would send it
        os.kill(os.getpid(), signal.SIGTERM)

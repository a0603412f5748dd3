"""One daemon per state dir: an exclusive ``flock`` on ``<state_dir>/daemon.lock``.

Two daemons on one state dir (a rolling update or a restart that starts the new one before
the old one has stopped, a second ``nextstate run`` by mistake) each keep their own picture of
the buffers (slots, sequence numbers, message-history chains), of the checkpoint and of the
metrics address in ``http.json``. Their writes collide: whichever one writes second dies with
an ``sqlite3.IntegrityError`` traceback (measured: the running daemon in 3 of 4 tries with a
following daemon, the newcomer otherwise), and the survivor's ``http.json`` may point at the
dead one. :class:`StateDirLock` makes the second one
refuse to start instead, before it opens anything in the state dir for writing.

How it works, and why so:

* ``flock(LOCK_EX | LOCK_NB)`` on a file that stays in place. The kernel drops the lock when
  the last descriptor of its open file description closes, so a daemon killed with SIGKILL (or
  by the OOM killer, or a power cut) leaves no stale lock: the pid written in the file is only
  there for the error message and is never trusted on its own.
* One open per lock: flock locks belong to the open file description, so a second
  :class:`StateDirLock` on the same dir in the same process conflicts like another process
  would. The descriptor is close-on-exec (a child started with exec does not inherit it); a
  child made with a bare ``fork()`` would share it and keep the lock after the daemon died.
* The file is never deleted: removing a lock file while others may hold it open lets two
  processes lock two different inodes. After locking, the path is checked to still name the
  locked inode (someone removed or replaced it in between), and the lock is taken again if not.
* Only ``nextstate run`` locks. ``nextstate stats``, ``export``, ``report`` and ``train`` open
  the state dir while a daemon runs, as before: stats reads ``checkpoint.json`` (replaced
  atomically), report the time series, export and train the buffers (SQLite in WAL mode both:
  readers beside the daemon's writer), and train publishes to ``checkpoints/``, which a daemon
  without ``--train`` never writes (with ``--train`` it does: one trainer per state dir).
* flock on a network file system: Linux emulates it with POSIX byte-range locks over NFS
  (v4, or v3 with its lock manager), so two hosts exclude each other there too. A file system
  that cannot lock at all is an error (:class:`StateLockError`), not a silent pass.

Example:
    >>> import tempfile
    >>> state = tempfile.mkdtemp()
    >>> with StateDirLock(state) as lock:
    ...     lock.held
    ...     try:
    ...         StateDirLock(state).acquire()
    ...     except StateDirLocked as exc:
    ...         exc.holder["pid"] == os.getpid()
    True
    True
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import socket
from pathlib import Path
from types import TracebackType
from typing import Any

try:
    import fcntl
except ImportError:  # not POSIX (Windows): StateDirLock.acquire says so
    fcntl = None  # type: ignore[assignment]

LOCK_FILE = "daemon.lock"
"""The lock file's name in the state dir."""
TRAINER_LOCK_FILE = "trainer.lock"
"""The lock file a trainer holds in its checkpoint dir: ``nextstate train`` beside
``nextstate run --train`` on one state dir both published versions into it."""


class StateLockError(Exception):
    """The state dir cannot be locked at all (not writable, no flock on this file system or
    platform)."""


class StateDirLocked(StateLockError):
    """Another process holds the state dir's lock.

    Attributes:
        state_dir: the state dir.
        holder: what the holder wrote in the lock file (``pid``, ``host``, ``started``), or
            ``{}`` if it could not be read (the holder had not written it yet).
    """

    def __init__(self, state_dir: Path, holder: dict[str, Any],
                 role: str = "nextstate daemon") -> None:
        self.state_dir = state_dir
        self.holder = holder
        who = describe_holder(holder)
        super().__init__(
            f"{str(state_dir)!r} is in use by another {role} ({who}); "
            "stop that one first, or give this one its own --state-dir")


def describe_holder(holder: dict[str, Any]) -> str:
    """``pid 123 on host h since 2026-...``, from a lock file's contents."""
    if not holder.get("pid"):
        return "pid unknown"
    text = f"pid {holder['pid']}"
    if holder.get("host"):
        text += f" on host {holder['host']}"
    if holder.get("started"):
        text += f" since {holder['started']}"
    return text


def read_holder(state_dir: str | Path) -> dict[str, Any]:
    """What the daemon's lock file says about its holder; ``{}`` if missing or unreadable.

    Only a hint: a daemon that was killed leaves its pid in the file, unlocked.
    """
    return _read_holder(Path(state_dir) / LOCK_FILE)


def _read_holder(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_bytes() or b"{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


class StateDirLock:
    """The exclusive lock on a state dir, held from :meth:`acquire` to :meth:`release`
    (or the process's end); a context manager.

    Args:
        state_dir: the daemon's state dir; created (with its parents) if missing.
        name: the lock file's name in it (a trainer locks ``checkpoints/`` with its own).
        role: who holds such a lock, for the error message.

    Raises (from :meth:`acquire`):
        StateDirLocked: another process (or another lock in this one) holds it.
        StateLockError: it cannot be locked (permissions, read-only or lockless file system,
            no ``fcntl`` on this platform).
    """

    def __init__(self, state_dir: str | Path, name: str = LOCK_FILE,
                 role: str = "nextstate daemon") -> None:
        self.state_dir = Path(state_dir)
        self.path = self.state_dir / name
        self.role = role
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> StateDirLock:
        if self._fd is not None:
            return self
        if fcntl is None:
            raise StateLockError(
                f"cannot lock state dir {str(self.state_dir)!r}: this platform "
                "has no fcntl.flock (the daemon runs on Linux and other POSIX systems)")
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StateLockError(f"cannot create state dir "
                                 f"{str(self.state_dir)!r}: {exc.strerror or exc}") from exc
        while True:
            fd = self._open_and_lock()
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # the file was removed or replaced after our open: lock the new one
        self._fd = fd
        record = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        except OSError:  # only the error message of a second daemon needs it
            pass
        return self

    def _open_and_lock(self) -> int:
        assert fcntl is not None
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise StateLockError(f"cannot open lock file {str(self.path)!r}: "
                                 f"{exc.strerror or exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StateDirLocked(self.state_dir, _read_holder(self.path), self.role) from None
        except OSError as exc:
            os.close(fd)
            raise StateLockError(f"cannot lock {str(self.path)!r}: "
                                 f"{exc.strerror or exc} (does this file system support "
                                 "flock?)") from exc
        return fd

    def release(self) -> None:
        """Unlock (the file stays: see the module docstring). Idempotent."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)  # while still held: the next holder's record is never cut
        os.close(fd)  # closing the only descriptor of the open file description unlocks

    def __enter__(self) -> StateDirLock:
        return self.acquire()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()

"""SQLite writers queue instead of sleeping.

SQLite lets one writer in at a time; the others get ``SQLITE_BUSY`` and its busy handler sleeps
1, 2, 5, 10 … 100 ms before it tries again, however soon the lock is free. With several threads
or processes creating disks at once (a boot storm) those sleeps, not the work, set the pace.
So every write transaction first takes ``WriterQueue``: a lock for the threads of this process,
then an exclusive ``flock`` on ``<ledger>-writer`` for the processes of this host. Both wake a
waiter the moment the holder lets go. SQLite's own lock and busy timeout stay underneath for
whoever writes without the queue (the ``sqlite3`` shell, an older diskledger).

The queue is taken just before ``BEGIN IMMEDIATE`` and let go just after ``COMMIT`` or
``ROLLBACK`` (``connect`` wires it to the engine's transaction events).
"""

from __future__ import annotations

import fcntl
import os
import threading
from pathlib import Path

__all__ = ["WriterQueue"]


class WriterQueue:
    """Exclusive write access to one SQLite ledger among threads and processes. Reentrant in a
    thread, so that a second write begun while the first is open fails on SQLite's lock as it
    always did rather than waiting here for ever."""

    def __init__(self, ledger: Path | None) -> None:
        self._path = None if ledger is None else ledger.with_name(ledger.name + "-writer")
        self._start()

    def _start(self) -> None:
        self._pid = os.getpid()
        self._threads = threading.RLock()
        self._depth = 0
        self._fd: int | None = None

    def acquire(self) -> None:
        if self._pid != os.getpid():
            # A forked child: the lock file's descriptor (and with it the flock) is shared with
            # the parent, and the thread lock may have been copied held. Start afresh.
            self._start()
        self._threads.acquire()
        try:
            if self._depth == 0 and self._path is not None:
                if self._fd is None:
                    self._fd = os.open(self._path, os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
                fcntl.flock(self._fd, fcntl.LOCK_EX)
            self._depth += 1
        except BaseException:
            self._threads.release()
            raise

    def release(self) -> None:
        self._depth -= 1
        try:
            if self._depth == 0 and self._fd is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._threads.release()

    def close(self) -> None:
        with self._threads:
            if self._fd is not None:
                os.close(self._fd)  # also lets go of the flock, should it be held
                self._fd = None

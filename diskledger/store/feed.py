"""The change feed: every event of the ledger, in order, caught up by position and then live.

``subscribe`` reads what is already recorded with ``read_all`` and then waits for more. Waiting is
a wake-up only, never the data: PostgreSQL appends run ``pg_notify('diskledger', <head>)`` in their
transaction and the feed ``LISTEN``s on a connection of its own; on SQLite a connection of its own
polls ``PRAGMA data_version`` (which does not change for commits made on the same connection,
hence a dedicated one). Either way the feed then re-reads by position, so a lost notification, a
lost connection or a slow consumer can delay an event but never drop or reorder one.

Every event is checked before it is handed out: its position is the one after the last, its
``prev_hash`` is the hash of the event before it and its hash matches its content. Anything else
raises ``FeedGap``; nothing is ever skipped silently.

The feed is at-least-once: a consumer stores the position of the last event it acted on together
with its own effects, and resumes with ``subscribe(after_position=that)``.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Generator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Generic, Protocol, Self, TypeVar

from diskledger.errors import FeedGap, InvalidInput, StoreError
from diskledger.events import RecordedEvent
from diskledger.store.hashing import GENESIS, chain_problem

__all__ = [
    "CHANNEL",
    "Heartbeat",
    "PostgresWaker",
    "SqliteWaker",
    "Subscription",
    "Waker",
    "subscribe",
]

log = logging.getLogger(__name__)

CHANNEL: Final = "diskledger"
"""The PostgreSQL notification channel; the payload is the new head position, as text."""

STOP_CHECK: Final = 0.25
"""Longest the feed waits at a time before it looks at its stop flag again (seconds)."""
SQLITE_POLL: Final = 0.1
"""How often a SQLite feed asks ``PRAGMA data_version`` whether another connection committed."""
RESYNC: Final = 5.0
"""Re-read by position after this long without a wake-up, whatever the waker says: a writer that
does not notify (an older diskledger) delays an event by at most this much."""
GIVE_UP: Final = 30.0
"""A feed that cannot reach the database for this long raises the last ``StoreError``."""
_BACKOFF_FIRST, _BACKOFF_MAX = 0.05, 2.0

T_co = TypeVar("T_co", covariant=True)


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Yielded (only when asked for, with ``heartbeat=``) after that many idle seconds.

    ``head`` is the position of the last event the feed has checked and handed out (0 before the
    first; ``after_position`` before any new one): a consumer that skips events may store it as
    its checkpoint.
    """

    head: int


class Waker(Protocol):
    """What the feed waits on between reads. It says *that* the ledger may have changed, never
    *what* changed: the feed re-reads by position after every wake-up."""

    def wait(self, timeout: float) -> bool:
        """Wait at most ``timeout`` seconds for a sign of a commit; True when one came.

        Raises ``StoreError`` when the connection is lost (the feed then opens a new waker).
        """
        ...

    def close(self) -> None: ...


class _Log(Protocol):
    def read_all(
        self, after_position: int = 0, *, batch: int = 1000
    ) -> Iterator[RecordedEvent]: ...


class Subscription(Generic[T_co]):
    """An iterator over the feed (``RecordedEvent``s, and ``Heartbeat``s when asked for).

    It ends when ``stop`` is set or ``close()`` is called, from any thread: within about
    ``STOP_CHECK`` seconds when it is waiting, and before the next event when it is not. Use it
    as a context manager, or call ``close()``, to release its connection at once.
    """

    def __init__(self, run: Generator[T_co], stop: threading.Event) -> None:
        self._run = run
        self._stop = stop
        # Held while the generator runs: close() from another thread must not close it under
        # the consumer (that raises "generator already executing"); it sets the flag instead.
        self._running = threading.Lock()

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> T_co:
        with self._running:
            return next(self._run)

    def close(self) -> None:
        """Stop the feed. Safe from any thread, and more than once."""
        self._stop.set()
        if self._running.acquire(blocking=False):
            try:
                self._run.close()  # runs the generator's cleanup: its connection closes now
            finally:
                self._running.release()
        # else: the consumer's thread is inside next(); it sees the flag and cleans up itself.

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def subscribe(
    store: _Log,
    wake: Callable[[], Waker],
    after_position: int = 0,
    *,
    heartbeat: float | None = None,
    stop: threading.Event | None = None,
    batch: int = 1000,
) -> Subscription[Any]:
    """The feed of ``store`` after ``after_position``; ``wake`` opens a waker (see ``Waker``).

    This is the implementation behind ``EventStore.subscribe`` (whose docstring is the contract);
    stores call it with the waker that suits their database (``SqliteWaker``, ``PostgresWaker``).
    """
    if after_position < 0:
        raise InvalidInput(f"a feed starts after a position of 0 or more, not {after_position}")
    if heartbeat is not None and not heartbeat > 0:
        raise InvalidInput(f"a heartbeat interval is a positive number of seconds, not {heartbeat}")
    if batch < 1:
        raise InvalidInput(f"a feed reads at least one event at a time, not {batch}")
    stop = stop or threading.Event()
    return Subscription(_Feed(store, wake, after_position, heartbeat, stop, batch).run(), stop)


class _Feed:
    """The state of one subscription: the last position handed out and its hash."""

    def __init__(
        self,
        store: _Log,
        wake: Callable[[], Waker],
        after: int,
        heartbeat: float | None,
        stop: threading.Event,
        batch: int,
    ) -> None:
        self.store, self.wake, self.after = store, wake, after
        self.heartbeat, self.stop, self.batch = heartbeat, stop, batch
        self.last = after
        self.prev_hash: str | None = GENESIS if after == 0 else None
        self.waker: Waker | None = None
        self.last_yield = self.last_read = time.monotonic()

    def run(self) -> Generator[RecordedEvent | Heartbeat]:
        failing_since: float | None = None
        backoff = _BACKOFF_FIRST
        try:
            while not self.stop.is_set():
                try:
                    stale = self._connect_or_wait(reconnected=failing_since is not None)
                    if self.prev_hash is None:
                        self.prev_hash = _hash_at(self.store, self.after)
                    if stale:
                        yield from self._read()
                    failing_since, backoff = None, _BACKOFF_FIRST
                except FeedGap:
                    raise
                except StoreError as exc:
                    # A lost connection (the listener's, or a read's): open a new waker and
                    # re-read from the last position handed out: nothing missed, nothing twice.
                    self._drop_waker()
                    now = time.monotonic()
                    if failing_since is None:
                        failing_since = now
                        log.warning("change feed: %s; reconnecting", exc)
                    elif now - failing_since >= GIVE_UP:
                        raise
                    self.stop.wait(backoff)
                    backoff = min(backoff * 2, _BACKOFF_MAX)
                    continue
                if self.heartbeat is not None and self._idle() >= self.heartbeat:
                    yield Heartbeat(self.last)
                    self.last_yield = time.monotonic()
        finally:
            self._drop_waker()

    def _connect_or_wait(self, *, reconnected: bool) -> bool:
        """Open the waker (then the ledger must be read), or wait on it; True: read now."""
        if self.waker is None:
            # The waker first (LISTEN, committed; or the data_version to compare with), then
            # the read: whatever commits after the read is sure to wake it.
            self.waker = self.wake()
            if reconnected:
                log.info("change feed: reconnected; re-reading after position %d", self.last)
            return True
        since_read = time.monotonic() - self.last_read
        wait = min(STOP_CHECK, RESYNC - since_read)
        if self.heartbeat is not None:
            wait = min(wait, self.heartbeat - self._idle())
        return self.waker.wait(max(0.0, wait)) or time.monotonic() - self.last_read >= RESYNC

    def _read(self) -> Iterator[RecordedEvent]:
        self.last_read = time.monotonic()
        for event in self.store.read_all(self.last, batch=self.batch):
            assert self.prev_hash is not None
            _check(event, self.last + 1, self.prev_hash)
            yield event
            self.last, self.prev_hash = event.position, event.hash
            self.last_yield = time.monotonic()
            if self.stop.is_set():
                return

    def _idle(self) -> float:
        return time.monotonic() - self.last_yield

    def _drop_waker(self) -> None:
        if self.waker is not None:
            waker, self.waker = self.waker, None
            try:
                waker.close()
            except Exception as exc:  # closing a connection that is already broken
                log.debug("change feed: closing the waker: %s", exc)


def _hash_at(store: _Log, position: int) -> str:
    """The hash of the event at ``position``: what the next event's ``prev_hash`` must be."""
    event = next(iter(store.read_all(position - 1, batch=1)), None)
    if event is None or event.position != position:
        found = "no event" if event is None else f"the next event is at {event.position}"
        raise FeedGap(
            position,
            position,
            f"resuming after position {position}, but the ledger has {found} there",
        )
    return event.hash


def _check(event: RecordedEvent, expected: int, prev_hash: str) -> None:
    """Raise ``FeedGap`` unless ``event`` is the next link of the chain."""
    problem = chain_problem(event, expected, prev_hash)
    if problem is not None:
        raise FeedGap(event.position, expected, problem)


class SqliteWaker:
    """A connection of its own to the ledger file, polling ``PRAGMA data_version``."""

    def __init__(self, path: str | Path, poll: float = SQLITE_POLL) -> None:
        self._poll = poll
        try:
            # check_same_thread=False: close() may come from the thread that closes the feed.
            self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._conn.execute("PRAGMA busy_timeout=30000")
            self._version = self._data_version()
        except sqlite3.Error as exc:
            raise StoreError(f"change feed: cannot watch {str(path)!r}: {exc}") from exc

    @classmethod
    def factory(cls, path: str | Path) -> Callable[[], Waker]:
        if str(path) in ("", ":memory:"):
            raise StoreError("an in-memory SQLite ledger has no change feed: use a file")
        return lambda: cls(path)

    def _data_version(self) -> int:
        row = self._conn.execute("PRAGMA data_version").fetchone()
        return int(row[0])

    def wait(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        try:
            while True:
                version = self._data_version()
                if version != self._version:
                    self._version = version
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                time.sleep(min(self._poll, left))
        except sqlite3.Error as exc:
            raise StoreError(f"change feed: the ledger file cannot be read: {exc}") from exc

    def close(self) -> None:
        self._conn.close()


class PostgresWaker:
    """An autocommit psycopg connection of its own (not pooled) that ``LISTEN``s on ``CHANNEL``.

    Needs a session that lives as long as the feed: through PgBouncer, session pooling only.
    """

    def __init__(self, connect_kwargs: Mapping[str, Any]) -> None:
        import psycopg

        self._error: type[Exception] = psycopg.Error
        try:
            self._conn = psycopg.connect(**connect_kwargs, autocommit=True)
            # Autocommit: LISTEN is committed before the feed reads, as the PostgreSQL docs ask.
            self._conn.execute(f"LISTEN {CHANNEL}")
        except psycopg.Error as exc:
            raise StoreError(f"change feed: cannot listen: {exc}") from exc

    @classmethod
    def factory(cls, connect_kwargs: Mapping[str, Any]) -> Callable[[], Waker]:
        return lambda: cls(connect_kwargs)

    def wait(self, timeout: float) -> bool:
        try:
            woke = False
            for _ in self._conn.notifies(timeout=timeout, stop_after=1):
                woke = True
            if woke:
                # Take what else has arrived too: one read covers every commit so far.
                for _ in self._conn.notifies(timeout=0):
                    pass
            return woke
        except self._error as exc:
            raise StoreError(f"change feed: the listening connection was lost: {exc}") from exc

    def close(self) -> None:
        self._conn.close()

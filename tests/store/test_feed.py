"""The change feed (``EventStore.subscribe``) on every database the store supports.

Consumers run in threads and hand what they receive to the test through a queue; every wait has a
generous bound so that a regression fails instead of hanging, and no test asserts how fast
anything happened (the machine is shared; benchmarks/feed.py measures).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from diskledger.errors import FeedGap, InvalidInput, StoreError
from diskledger.events import Metadata, NewEvent, RecordedEvent
from diskledger.store import SqlEventStore, open_store
from diskledger.store.feed import Heartbeat, Subscription
from tests.store.test_contract import create_disk, started
from tests.support.postgres import PostgresServer

BOUND = 60.0
"""The longest any wait in these tests may take before it counts as a hang."""


@pytest.fixture
def store(ledger_url: str) -> Iterator[SqlEventStore]:
    store = open_store(ledger_url)
    yield store
    store.close()


def disks(store: SqlEventStore, first: int, count: int) -> None:
    """``count`` new disks, two events each (create started and completed)."""
    for n in range(first, first + count):
        create_disk(store, f"disk:vm-{n}/root", f"op-{n}")


_DONE = object()


class Consumer:
    """Iterates a subscription in a thread of its own, as a real consumer would."""

    def __init__(self, subscription: Subscription[Any]) -> None:
        self.subscription = subscription
        self.items: queue.Queue[object] = queue.Queue()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for item in self.subscription:
                self.items.put(item)
        except BaseException as exc:
            self.error = exc
        finally:
            self.items.put(_DONE)

    def next(self) -> RecordedEvent | Heartbeat:
        item = self.items.get(timeout=BOUND)
        if item is _DONE:
            raise AssertionError(f"the feed ended: {self.error!r}")
        assert isinstance(item, RecordedEvent | Heartbeat)
        return item

    def events_until(self, position: int) -> list[RecordedEvent]:
        received: list[RecordedEvent] = []
        while not received or received[-1].position < position:
            item = self.next()
            if isinstance(item, RecordedEvent):
                received.append(item)
        return received

    def ended(self) -> BaseException | None:
        """Wait for the feed to end; what it raised, if anything."""
        self.thread.join(BOUND)
        assert not self.thread.is_alive(), "the feed did not end"
        return self.error

    def close(self) -> None:
        self.subscription.close()
        assert self.ended() is None


def positions(events: Iterable[RecordedEvent]) -> list[int]:
    return [e.position for e in events]


def break_ledger(store: SqlEventStore, *statements: str) -> None:
    """Tamper with the log the way only someone bypassing diskledger could: drop the
    append-only triggers, then run ``statements``."""
    with store.engine.begin() as conn:
        if store.engine.dialect.name == "postgresql":
            conn.execute(sa.text("DROP TRIGGER events_no_update ON events"))
        else:
            conn.execute(sa.text("DROP TRIGGER events_no_update"))
            conn.execute(sa.text("DROP TRIGGER events_no_delete"))
        for statement in statements:
            conn.execute(sa.text(statement))


# -- catching up and going live --------------------------------------------------------------


def test_the_feed_catches_up_then_delivers_what_a_writer_appends_live(
    store: SqlEventStore,
) -> None:
    disks(store, 0, 3)
    consumer = Consumer(store.subscribe(batch=4))
    assert positions(consumer.events_until(6)) == list(range(1, 7))

    writer = threading.Thread(target=disks, args=(store, 3, 25))
    writer.start()
    live = consumer.events_until(56)
    writer.join(BOUND)
    consumer.close()

    assert positions(live) == list(range(7, 57))
    assert live == list(store.read_all(6))


def test_events_appended_together_come_in_order(store: SqlEventStore) -> None:
    consumer = Consumer(store.subscribe())
    bind = NewEvent("disk.template-bound", {"template": "base"}, Metadata(op_id="op-t"))
    store.append("disk:vm/a", 0, [bind, started("create", "op-t", template="base", size=512)])
    received = consumer.events_until(2)
    consumer.close()
    assert [(e.position, e.type) for e in received] == [
        (1, "disk.template-bound"),
        (2, "disk.create.started"),
    ]


def test_resuming_after_a_position_repeats_nothing_and_misses_nothing(
    store: SqlEventStore,
) -> None:
    disks(store, 0, 4)
    first = Consumer(store.subscribe())
    seen = first.events_until(3)
    first.close()
    checkpoint = seen[-1].position

    disks(store, 4, 2)  # appended while no one was subscribed
    second = Consumer(store.subscribe(after_position=checkpoint))
    rest = second.events_until(12)
    second.close()
    assert positions(seen[:3]) + positions(rest) == list(range(1, 13))


def test_resuming_at_the_head_waits_for_the_next_event(store: SqlEventStore) -> None:
    disks(store, 0, 2)
    consumer = Consumer(store.subscribe(after_position=store.head(), heartbeat=0.05))
    assert consumer.next() == Heartbeat(4)  # nothing new yet
    disks(store, 2, 1)
    assert positions(consumer.events_until(6)) == [5, 6]
    consumer.close()


# -- gaps and breaks -----------------------------------------------------------------------------


def test_a_removed_event_stops_the_feed_with_a_gap(store: SqlEventStore) -> None:
    disks(store, 0, 3)
    break_ledger(store, "DELETE FROM events WHERE position = 3")
    consumer = Consumer(store.subscribe())
    assert positions(consumer.events_until(2)) == [1, 2]
    error = consumer.ended()
    assert isinstance(error, FeedGap)
    assert (error.position, error.expected) == (4, 3)
    assert consumer.items.get_nowait() is _DONE  # nothing past the gap


def test_a_forged_prev_hash_stops_the_feed(store: SqlEventStore) -> None:
    disks(store, 0, 3)
    break_ledger(store, f"UPDATE events SET prev_hash = '{'f' * 64}' WHERE position = 4")
    consumer = Consumer(store.subscribe())
    assert positions(consumer.events_until(3)) == [1, 2, 3]
    error = consumer.ended()
    assert isinstance(error, FeedGap) and (error.position, error.expected) == (4, 4)
    assert "prev_hash" in str(error)


def test_an_edited_event_stops_the_feed(store: SqlEventStore) -> None:
    disks(store, 0, 2)
    break_ledger(store, """UPDATE events SET data = '{"forged": 1}' WHERE position = 2""")
    consumer = Consumer(store.subscribe())
    assert positions(consumer.events_until(1)) == [1]
    error = consumer.ended()
    assert isinstance(error, FeedGap) and error.position == 2
    assert "does not match its hash" in str(error)


def test_a_resumed_feed_checks_the_first_event_against_the_one_it_resumes_after(
    store: SqlEventStore,
) -> None:
    disks(store, 0, 3)
    break_ledger(store, f"UPDATE events SET hash = '{'e' * 64}' WHERE position = 3")
    consumer = Consumer(store.subscribe(after_position=3))
    error = consumer.ended()
    assert isinstance(error, FeedGap) and (error.position, error.expected) == (4, 4)


def test_resuming_after_a_position_the_ledger_does_not_have_is_a_gap(
    store: SqlEventStore,
) -> None:
    disks(store, 0, 1)
    consumer = Consumer(store.subscribe(after_position=9))
    error = consumer.ended()
    assert isinstance(error, FeedGap) and "resuming after position 9" in str(error)


def test_a_gap_that_appears_while_live_stops_the_feed(store: SqlEventStore) -> None:
    disks(store, 0, 1)
    consumer = Consumer(store.subscribe())
    assert positions(consumer.events_until(2)) == [1, 2]
    # A forger writes past the head, leaving positions 3 and 4 out (and, on PostgreSQL, wakes
    # the feed as an append would; without it the feed finds it on its next periodic re-read).
    with store.engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO events (position, stream_id, version, type, schema, data, metadata,"
                " recorded_at, prev_hash, hash) VALUES (5, 'disk:vm-9/root', 1,"
                " 'disk.create.started', 1, '{}', '{}', :at, :prev, :hash)"
            ),
            {"at": "2026-01-01T00:00:00.000000+00:00", "prev": "0" * 64, "hash": "1" * 64},
        )
        if store.engine.dialect.name == "postgresql":
            conn.execute(sa.text("SELECT pg_notify('diskledger', '5')"))
    error = consumer.ended()
    assert isinstance(error, FeedGap) and (error.position, error.expected) == (5, 3)


# -- heartbeats and stopping -----------------------------------------------------------------


def test_heartbeats_carry_the_position_reached_while_idle(store: SqlEventStore) -> None:
    disks(store, 0, 1)
    consumer = Consumer(store.subscribe(heartbeat=0.05))
    assert positions(consumer.events_until(2)) == [1, 2]
    assert consumer.next() == Heartbeat(2)
    assert consumer.next() == Heartbeat(2)  # again for every idle interval
    disks(store, 1, 1)
    assert positions(consumer.events_until(4)) == [3, 4]
    assert consumer.next() == Heartbeat(4)
    consumer.close()


def test_without_heartbeat_an_idle_feed_yields_nothing(store: SqlEventStore) -> None:
    disks(store, 0, 1)
    stop = threading.Event()
    consumer = Consumer(store.subscribe(stop=stop))
    assert positions(consumer.events_until(2)) == [1, 2]
    time.sleep(0.5)  # idle for a while (not a timing assertion: nothing may come at all)
    assert consumer.items.empty()
    stop.set()
    assert consumer.ended() is None


def test_setting_stop_from_another_thread_ends_an_idle_feed(store: SqlEventStore) -> None:
    stop = threading.Event()
    consumer = Consumer(store.subscribe(stop=stop, heartbeat=0.05))
    assert consumer.next() == Heartbeat(0)
    threading.Thread(target=stop.set).start()
    assert consumer.ended() is None


def test_closing_from_another_thread_ends_a_feed_and_close_is_idempotent(
    store: SqlEventStore,
) -> None:
    consumer = Consumer(store.subscribe())
    disks(store, 0, 1)
    consumer.events_until(2)
    closer = threading.Thread(target=consumer.subscription.close)
    closer.start()
    closer.join(BOUND)
    assert consumer.ended() is None
    consumer.subscription.close()


def test_a_subscription_is_a_context_manager(store: SqlEventStore) -> None:
    disks(store, 0, 1)
    with store.subscribe() as feed:
        first = next(feed)
    assert first.position == 1
    assert list(feed) == []  # closed: iteration is over


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"after_position": -1}, "0 or more"),
        ({"heartbeat": 0}, "positive"),
        ({"heartbeat": float("nan")}, "positive"),
        ({"batch": 0}, "at least one"),
    ],
)
def test_bad_arguments_are_refused(
    store: SqlEventStore, kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidInput, match=message):
        store.subscribe(**kwargs)


# -- PostgreSQL: notifications and lost connections ------------------------------------------

LISTENERS = (
    "SELECT pid FROM pg_stat_activity WHERE datname = %s AND query = 'LISTEN diskledger'"
    " ORDER BY pid"
)


def _listeners(server: PostgresServer, dbname: str) -> list[int]:
    with server.connect("postgres", autocommit=True) as admin:
        return [pid for (pid,) in admin.execute(LISTENERS, (dbname,)).fetchall()]


@pytest.mark.postgres
def test_a_postgres_append_notifies_its_new_head_on_commit(
    postgres_server: PostgresServer, postgres_url: str
) -> None:
    store = open_store(postgres_url)
    listener = postgres_server.connect(sa.make_url(postgres_url).database or "", autocommit=True)
    try:
        listener.execute("LISTEN diskledger")
        bind = NewEvent("disk.template-bound", {"template": "base"}, Metadata(op_id="op-t"))
        store.append("disk:vm/a", 0, [bind, started("create", "op-t", template="base", size=1)])
        (notify,) = listener.notifies(timeout=BOUND, stop_after=1)
        assert (notify.channel, notify.payload) == ("diskledger", "2")
    finally:
        listener.close()
        store.close()


@pytest.mark.postgres
def test_a_killed_listener_reconnects_without_gaps_or_duplicates(
    postgres_server: PostgresServer, postgres_url: str
) -> None:
    dbname = sa.make_url(postgres_url).database or ""
    store = open_store(postgres_url)
    try:
        consumer = Consumer(store.subscribe())
        disks(store, 0, 10)
        received = consumer.events_until(20)
        (listener,) = _listeners(postgres_server, dbname)

        with postgres_server.connect("postgres", autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (listener,))
        disks(store, 10, 10)  # while the listener is gone or coming back
        deadline = time.monotonic() + BOUND
        while (now_listening := _listeners(postgres_server, dbname)) in ([], [listener]):
            assert time.monotonic() < deadline, "the feed did not listen again"
            time.sleep(0.05)
        assert listener not in now_listening
        disks(store, 20, 10)  # after it listens again
        received += consumer.events_until(60)
        consumer.close()

        assert positions(received) == list(range(1, 61))
        assert received == list(store.read_all())
        assert _listeners(postgres_server, dbname) == []  # closing released its connection
    finally:
        store.close()


@pytest.mark.postgres
def test_the_listening_connection_is_not_taken_from_the_pool(postgres_url: str) -> None:
    store = open_store(postgres_url)
    try:
        with store.subscribe(heartbeat=0.05) as feed:
            assert next(feed) == Heartbeat(0)
            assert store.engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    finally:
        store.close()


def test_an_in_memory_sqlite_ledger_has_no_feed() -> None:
    store = open_store("sqlite://")
    try:
        with pytest.raises(StoreError, match="in-memory"):
            store.subscribe()
    finally:
        store.close()

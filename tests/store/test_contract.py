"""The EventStore conformance suite: every implementation (SQLite, PostgreSQL) passes it."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from diskledger.errors import ConcurrencyError, IllegalTransition, StoreError
from diskledger.events import Metadata, NewEvent
from diskledger.states import DiskState, TemplateState
from diskledger.store import GENESIS, EventStore, SqlEventStore, event_hash, open_store

DISK = "disk:vm-1/root"


@pytest.fixture
def store(ledger_url: str) -> Iterator[SqlEventStore]:
    store = open_store(ledger_url)
    yield store
    store.close()


def started(op: str, op_id: str, **params: object) -> NewEvent:
    return NewEvent(
        f"disk.{op}.started",
        {"params": params, "artifacts": [{"kind": "file", "location": "/x"}]},
        Metadata(op_id=op_id),
    )


def completed(op: str, op_id: str, **data: object) -> NewEvent:
    return NewEvent(f"disk.{op}.completed", data, Metadata(op_id=op_id))


def create_disk(store: EventStore, stream: str = DISK, op_id: str = "op-create") -> None:
    store.append(stream, 0, [started("create", op_id, size=1024)])
    store.append(stream, 1, [completed("create", op_id, format="raw", size=1024, location="/x")])


def test_store_satisfies_the_protocol(store: SqlEventStore) -> None:
    assert isinstance(store, EventStore)


def test_an_empty_ledger(store: SqlEventStore) -> None:
    assert store.head() == 0
    assert store.read_stream(DISK) == []
    assert list(store.read_all()) == []
    assert store.disk(DISK) is None
    assert store.disks() == [] and store.templates() == [] and store.pending() == []
    assert store.stream_version(DISK) == 0


def test_append_assigns_versions_positions_and_carries_every_field(store: SqlEventStore) -> None:
    meta = Metadata(op_id="op-1", host="h1", pid=42, actor="tester")
    recorded = store.append(
        DISK,
        0,
        [NewEvent("disk.create.started", {"params": {"size": 1}, "artifacts": []}, meta, schema=2)],
    )
    (event,) = recorded
    assert (event.position, event.version, event.stream, event.schema) == (1, 1, DISK, 2)
    assert event.metadata == meta
    assert event.time.tzinfo is not None and event.time.utcoffset().total_seconds() == 0  # type: ignore[union-attr]
    (read,) = store.read_stream(DISK)
    assert read == event


def test_an_append_that_does_not_wait_for_its_sync_is_committed_like_any(
    store: SqlEventStore,
) -> None:
    """``sync=False`` changes when the events reach stable storage, nothing else: they are
    committed, read back, chained and folded, and the appends after them wait as before."""
    before = _sync_setting(store)
    store.append(DISK, 0, [started("create", "op-create", size=1024)])
    outcome = completed("create", "op-create", format="raw", size=1024, location="/x")
    (done,) = store.append(DISK, 1, [outcome], sync=False)
    assert store.read_stream(DISK)[-1] == done
    assert store.disk(DISK).state is DiskState.CREATED  # type: ignore[union-attr]
    assert _sync_setting(store) == before  # each session syncs as before once it is done
    store.append(DISK, 2, [started("resize", "op-2", size=2048)])
    assert [e.version for e in store.read_stream(DISK)] == [1, 2, 3]
    assert store.pending()[0].operation.op_id == "op-2"


def _sync_setting(store: SqlEventStore) -> str:
    with store.engine.connect() as conn:
        sqlite = conn.dialect.name == "sqlite"
        query = "PRAGMA synchronous" if sqlite else "SHOW synchronous_commit"
        return str(conn.exec_driver_sql(query).scalar())


def test_append_with_a_stale_expected_version_is_a_concurrency_error(store: SqlEventStore) -> None:
    create_disk(store)
    for stale in (0, 1, 3, 7):
        with pytest.raises(ConcurrencyError):
            store.append(DISK, stale, [started("resize", "op-2", size=2048)])
    assert store.stream_version(DISK) == 2
    assert store.pending() == []


def test_concurrent_appends_to_one_stream_let_exactly_one_win(store: SqlEventStore) -> None:
    create_disk(store)
    barrier = threading.Barrier(4)
    outcomes: list[str] = []

    def writer(n: int) -> None:
        barrier.wait()
        try:
            store.append(DISK, 2, [started("resize", f"op-{n}", size=4096)])
            outcomes.append("won")
        except ConcurrencyError:
            outcomes.append("conflict")

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["conflict", "conflict", "conflict", "won"]
    assert [e.version for e in store.read_stream(DISK)] == [1, 2, 3]


def test_the_unique_constraint_is_the_gate_even_when_the_check_is_bypassed(
    store: SqlEventStore,
) -> None:
    create_disk(store)
    with store.engine.begin() as conn, pytest.raises(sa.exc.IntegrityError):
        conn.execute(
            sa.text(
                "INSERT INTO events (position, stream_id, version, type, schema, data, metadata, recorded_at, prev_hash, hash) "
                "VALUES (99, :s, 2, 't', 1, '{}', '{}', 'now', 'x', 'y')"
            ),
            {"s": DISK},
        )


def test_an_illegal_event_records_nothing(store: SqlEventStore) -> None:
    with pytest.raises(IllegalTransition):
        store.append(DISK, 0, [started("snapshot", "op-1", snapshot="s1")])
    create_disk(store)
    with pytest.raises(IllegalTransition):
        # the second event is illegal: the whole batch is refused
        store.append(
            DISK, 2, [started("resize", "op-3", size=4096), completed("create", "op-3", size=1)]
        )
    assert store.head() == 2
    assert store.stream_version(DISK) == 2


def test_read_all_orders_every_stream_by_position(store: SqlEventStore) -> None:
    create_disk(store, "disk:a/x", "op-a")
    create_disk(store, "disk:b/y", "op-b")
    store.append("disk:a/x", 2, [started("delete", "op-c")])
    positions = [e.position for e in store.read_all(batch=2)]
    assert positions == [1, 2, 3, 4, 5]
    assert [e.position for e in store.read_all(after_position=3)] == [4, 5]
    assert store.head() == 5


def test_events_are_hash_chained(store: SqlEventStore) -> None:
    create_disk(store, "disk:a/x", "op-a")
    create_disk(store, "disk:b/y", "op-b")
    prev = GENESIS
    from diskledger.store import canonical_json

    for e in store.read_all():
        assert e.prev_hash == prev
        expected = event_hash(
            prev,
            e.position,
            e.stream,
            e.version,
            e.type,
            e.schema,
            canonical_json(e.data),
            canonical_json(e.metadata.to_json()),
            e.time.isoformat(timespec="microseconds"),
        )
        assert e.hash == expected
        prev = e.hash


@pytest.mark.parametrize("statement", ["UPDATE events SET type = 'forged'", "DELETE FROM events"])
def test_the_database_refuses_to_change_or_remove_events(
    store: SqlEventStore, statement: str
) -> None:
    create_disk(store)
    with pytest.raises(sa.exc.DBAPIError, match="append-only"), store.engine.begin() as conn:
        conn.execute(sa.text(statement))
    assert [e.type for e in store.read_stream(DISK)] == [
        "disk.create.started",
        "disk.create.completed",
    ]


def test_read_models_follow_each_append(store: SqlEventStore) -> None:
    store.append(DISK, 0, [started("create", "op-1", size=1024)])
    view = store.disk(DISK)
    assert view is not None and view.state is DiskState.ABSENT and view.pending is not None
    (entry,) = store.pending()
    assert (entry.stream, entry.operation.op, entry.operation.op_id, entry.started_position) == (
        DISK,
        "create",
        "op-1",
        1,
    )
    assert entry.operation.artifacts == ({"kind": "file", "location": "/x"},)
    store.append(DISK, 1, [completed("create", "op-1", format="raw", size=1024, location="/x")])
    view = store.disk(DISK)
    assert (
        view is not None
        and view.state is DiskState.CREATED
        and view.size == 1024
        and view.pending is None
    )
    assert store.pending() == []
    assert [d.disk for d in store.disks()] == ["vm-1/root"]


def test_a_failed_operation_leaves_the_pending_index(store: SqlEventStore) -> None:
    store.append(DISK, 0, [started("create", "op-1", size=1024)])
    store.append(
        DISK,
        1,
        [NewEvent("disk.create.failed", {"error": "boom", "removed": []}, Metadata(op_id="op-1"))],
    )
    assert store.pending() == []
    view = store.disk(DISK)
    assert view is not None and view.state is DiskState.ABSENT


def test_template_streams_and_reference_counts(store: SqlEventStore) -> None:
    tstream = "template:host/base"
    meta = Metadata(op_id="op-t")
    store.append(
        tstream,
        0,
        [NewEvent("template.fetch.started", {"params": {"source": "/src"}, "artifacts": []}, meta)],
    )
    view = store.template(tstream)
    assert view is not None and view.state is TemplateState.FETCHING
    store.append(
        tstream,
        1,
        [
            NewEvent(
                "template.fetch.completed",
                {"format": "qcow2", "virtual_size": 512, "location": "/t"},
                meta,
            )
        ],
    )
    view = store.template(tstream)
    assert view is not None and view.state is TemplateState.CACHED and view.format == "qcow2"
    assert [t.template for t in store.templates()] == ["base"]
    bind = NewEvent("disk.template-bound", {"template": "base"}, Metadata(op_id="op-d"))
    store.append(DISK, 0, [bind, started("create", "op-d", template="base", size=512)])
    assert store.template_users("base") == ["vm-1/root"]


def test_read_models_rebuilt_from_the_log_equal_the_stored_ones(store: SqlEventStore) -> None:
    from diskledger.states import fold
    from diskledger.states.streams import empty_view

    create_disk(store, "disk:a/x", "op-a")
    create_disk(store, "disk:b/y", "op-b")
    store.append("disk:a/x", 2, [started("resize", "op-r", size=4096)])
    for stored in store.disks():
        stream = f"disk:{stored.disk}"
        assert fold(empty_view(stream), store.read_stream(stream)) == stored


def test_reopening_a_ledger_keeps_it_and_does_not_migrate_again(ledger_url: str) -> None:
    first = open_store(ledger_url)
    create_disk(first)
    first.close()
    second = open_store(ledger_url)
    assert second.head() == 2
    second.close()


def test_a_bad_url_is_a_store_error() -> None:
    with pytest.raises(StoreError):
        open_store("not a url")
    with pytest.raises(StoreError, match="unsupported"):
        open_store("mysql+pymysql://u@localhost/x")


def test_read_for_replay_gives_what_the_fold_reads_in_ledger_order(store: SqlEventStore) -> None:
    from diskledger.store import canonical_json

    create_disk(store, "disk:a/x", "op-a")
    create_disk(store, "disk:b/y", "op-b")
    store.append("disk:a/x", 2, [started("delete", "op-c")])
    expected = [
        (e.position, e.stream, e.type, canonical_json(e.data), e.metadata.op_id)
        for e in store.read_all()
    ]
    assert list(store.read_for_replay()) == expected
    assert list(store.read_for_replay(batch=2)) == expected
    assert list(store.read_for_replay(after_position=3, batch=1)) == expected[3:]
    assert list(store.read_for_replay(after_position=5)) == []


def test_read_for_verify_gives_the_stored_text_the_hash_covers(store: SqlEventStore) -> None:
    create_disk(store, "disk:a/x", "op-a")
    store.append("disk:a/x", 2, [started("resize", "op-r", size=4096)])
    events = list(store.read_all())
    rows = list(store.read_for_verify(batch=2))
    assert [row[:5] for row in rows] == list(store.read_for_replay())
    prev = GENESIS
    for event, row in zip(events, rows, strict=True):
        position, stream, type_, data, _, version, schema, metadata, recorded_at = row[:9]
        assert (row[9], row[10]) == (prev, event.hash)
        assert (version, schema) == (event.version, event.schema)
        assert (
            event_hash(prev, position, stream, version, type_, schema, data, metadata, recorded_at)
            == event.hash
        )
        prev = event.hash


def test_replay_of_the_ledger_equals_the_stored_read_models(store: SqlEventStore) -> None:
    from diskledger.states.replay import Replay

    create_disk(store, "disk:a/x", "op-a")
    create_disk(store, "disk:b/y", "op-b")
    store.append("disk:a/x", 2, [started("resize", "op-r", size=4096)])
    replay = Replay()
    assert replay.run(store.read_for_replay(batch=2)) == store.head()
    assert replay.views() == {f"disk:{d.disk}": d for d in store.disks()}

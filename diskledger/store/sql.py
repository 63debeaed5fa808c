"""The SQLAlchemy Core event store, for SQLite (embedded default) and PostgreSQL (psycopg 3)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import chain
from typing import Any, overload

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from diskledger.errors import ConcurrencyError, Conflict, StoreError
from diskledger.events import Metadata, NewEvent, RecordedEvent, loads
from diskledger.states import DiskView, MemberView, TemplateView, evolve
from diskledger.states.disk import PendingOperation
from diskledger.states.streams import DISK, MEMBER, TEMPLATE, empty_view, stream_kind
from diskledger.store import connect, feed, wal
from diskledger.store.contract import MemberRecord, PendingEntry, ReplayRow, VerifyRow
from diskledger.store.hashing import canonical_json, event_hash
from diskledger.store.migrate import migrate
from diskledger.store.schema import (
    disks,
    events,
    ledger_head,
    members,
    pending_operations,
    templates,
)

__all__ = ["SqlEventStore", "open_store"]

log = logging.getLogger(__name__)

_EVENT_COLUMNS = (
    events.c.position,
    events.c.stream_id,
    events.c.version,
    events.c.type,
    events.c.schema,
    events.c.data,
    events.c.metadata,
    events.c.recorded_at,
    events.c.prev_hash,
    events.c.hash,
)


# The append path's statements, built once: constructing SQLAlchemy expressions per call cost
# more than the durable commit itself.
_MOVE_HEAD = (
    ledger_head.update()
    .where(ledger_head.c.id == 1)
    .values(position=sa.bindparam("new_position"), hash=sa.bindparam("new_hash"))
)
_INSERT_EVENT = events.insert()
_INDEX_PENDING = pending_operations.insert()
_QUERIES: dict[str, sa.Executable] = {
    "read_all": sa.select(*_EVENT_COLUMNS)
    .where(events.c.position > sa.bindparam("after"))
    .order_by(events.c.position)
    .limit(sa.bindparam("batch")),
    "read_for_replay": sa.select(
        events.c.position, events.c.stream_id, events.c.type, events.c.data, events.c.op_id
    )
    .where(events.c.position > sa.bindparam("after"))
    .order_by(events.c.position)
    .limit(sa.bindparam("batch")),
    "read_for_verify": sa.select(
        events.c.position,
        events.c.stream_id,
        events.c.type,
        events.c.data,
        events.c.op_id,
        events.c.version,
        events.c.schema,
        events.c.metadata,
        events.c.recorded_at,
        events.c.prev_hash,
        events.c.hash,
    )
    .where(events.c.position > sa.bindparam("after"))
    .order_by(events.c.position)
    .limit(sa.bindparam("batch")),
    "read_stream": sa.select(*_EVENT_COLUMNS)
    .where(events.c.stream_id == sa.bindparam("stream"), events.c.version > sa.bindparam("after"))
    .order_by(events.c.version),
    "read_operation": sa.select(*_EVENT_COLUMNS)
    .where(events.c.op_id == sa.bindparam("op_id"))
    .order_by(events.c.position),
    "head": sa.select(ledger_head.c.position).where(ledger_head.c.id == 1),
    "stream_version": sa.select(sa.func.max(events.c.version)).where(
        events.c.stream_id == sa.bindparam("stream")
    ),
    "disk": sa.select(disks.c.view).where(disks.c.stream_id == sa.bindparam("stream")),
    "disks": sa.select(disks.c.view).order_by(disks.c.disk),
    "template": sa.select(templates.c.view).where(templates.c.stream_id == sa.bindparam("stream")),
    "templates": sa.select(templates.c.view).order_by(templates.c.template),
    "template_users": sa.select(disks.c.disk)
    .where(disks.c.template == sa.bindparam("template"))
    .order_by(disks.c.disk),
    "intent": sa.select(events.c.position, events.c.recorded_at).where(
        events.c.stream_id == sa.bindparam("stream"), events.c.version == sa.bindparam("version")
    ),
    "pending": sa.select(
        pending_operations.c.stream_id,
        pending_operations.c.operation,
        pending_operations.c.started_position,
        pending_operations.c.started_at,
    ).order_by(pending_operations.c.started_position),
}
# PostgreSQL only: a wake-up for change feeds, sent when the append commits (NOTIFY is delivered
# on commit, in commit order). The payload is the new head; feeds re-read by position anyway.
_NOTIFY = sa.select(sa.func.pg_notify(feed.CHANNEL, sa.bindparam("head", type_=sa.String)))
_UNINDEX_PENDING = pending_operations.delete().where(
    pending_operations.c.op_id == sa.bindparam("op")
)


@dataclass(frozen=True)
class _ReadModel:
    lock: sa.Select[Any]
    """Lock the ledger head and read the stream's stored view, in one statement."""
    insert: sa.Insert
    update: sa.Update


def _read_model(table: sa.Table, key: str, *, has_template: bool) -> _ReadModel:
    values: dict[str, Any] = {
        key: sa.bindparam("key"),
        "state": sa.bindparam("state"),
        "version": sa.bindparam("version"),
        "view": sa.bindparam("view"),
    }
    if has_template:
        values["template"] = sa.bindparam("template")
    # Locking the head row serialises appends (on PostgreSQL; SQLite holds the write lock
    # already), which is what keeps positions gap-free and the hash chain linear.
    lock = (
        sa.select(ledger_head.c.position, ledger_head.c.hash, table.c.version, table.c.view)
        .select_from(ledger_head.outerjoin(table, table.c.stream_id == sa.bindparam("stream")))
        .where(ledger_head.c.id == 1)
        .with_for_update(of=ledger_head)
    )
    return _ReadModel(
        lock=lock,
        insert=table.insert().values(stream_id=sa.bindparam("stream"), **values),
        update=table.update().where(table.c.stream_id == sa.bindparam("stream")).values(**values),
    )


_MODELS = {
    DISK: _read_model(disks, "disk", has_template=True),
    TEMPLATE: _read_model(templates, "template", has_template=False),
    MEMBER: _read_model(members, "member", has_template=False),
}

_VIEWS: dict[str, Any] = {DISK: DiskView, TEMPLATE: TemplateView, MEMBER: MemberView}

# The database's clock, in seconds since the Unix epoch: the only clock a lease is judged by, so
# that two hosts' clocks are never compared.
_NOW = {
    "postgresql": "EXTRACT(EPOCH FROM clock_timestamp())::float8",
    "sqlite": "((julianday('now') - 2440587.5) * 86400.0)",
}


def _member_sql(now: str, param: str) -> dict[str, str]:
    """Lease statements for one dialect (``param``: how a named parameter is spelled)."""

    def p(name: str) -> str:
        return param.format(name)

    return {
        "joined": f"UPDATE members SET host = {p('host')}, epoch = {p('epoch')}, "
        f"lease_ttl = {p('ttl')}, expires_at = {now} + {p('ttl')}, renewals = 0 "
        f"WHERE stream_id = {p('stream')}",
        # Zero rows once the lease ran out or a taker began fencing: the member fences itself.
        "renew": f"UPDATE members SET expires_at = {now} + lease_ttl, renewals = renewals + 1 "
        f"WHERE stream_id = {p('stream')} AND state = 'live' AND expires_at > {now}",
        "lapsed": f"SELECT expires_at < {now} FROM members WHERE stream_id = {p('stream')}",
        "members": f"SELECT view, epoch, expires_at - {now}, renewals FROM members "
        "ORDER BY epoch, stream_id",
        "member": f"SELECT view, epoch, expires_at - {now}, renewals FROM members "
        f"WHERE stream_id = {p('stream')}",
    }


@dataclass(frozen=True)
class _Compiled:
    """A Core statement compiled once for the store's dialect, run on the DBAPI cursor.

    The append path and replay run a handful of fixed statements per event; going through
    ``Connection.execute`` cost more than the durable commit itself. The SQL still comes from the
    Core definitions above, compiled by SQLAlchemy for SQLite or PostgreSQL.
    """

    sql: str
    order: tuple[str, ...] | None
    """Parameter names in order for positional paramstyles (SQLite's ``?``); None when named."""
    fixed: Mapping[str, Any]
    """Values the statement itself carries (``ledger_head.id == 1``)."""

    @classmethod
    def of(cls, statement: sa.Executable, dialect: sa.Dialect) -> _Compiled:
        compiled = statement.compile(dialect=dialect)  # type: ignore[attr-defined]
        order = tuple(compiled.positiontup) if dialect.positional else None
        fixed = {k: v for k, v in compiled.params.items() if v is not None}
        return cls(str(compiled), order, fixed)

    def bind(self, params: Mapping[str, Any]) -> Sequence[Any] | Mapping[str, Any]:
        if self.fixed:
            params = {**self.fixed, **params}
        return params if self.order is None else tuple(params[name] for name in self.order)


def open_store(url: str, *, upgrade: bool = True) -> SqlEventStore:
    """Open (and, unless told otherwise, create or upgrade) the ledger at a SQLAlchemy URL."""
    engine = connect.create_engine(url)
    store = SqlEventStore(engine)
    if upgrade:
        try:
            with engine.connect().execution_options(**{connect.WRITE: True}) as conn:
                if engine.dialect.name == "sqlite" and engine.url.database not in (
                    None,
                    "",
                    ":memory:",
                ):
                    # Before this process writes over it: under the write lock, after SQLite
                    # has read the log back (wal.py).
                    conn.exec_driver_sql("SELECT count(*) FROM sqlite_master").all()
                    store.discarded_tail = wal.discarded_tail(str(engine.url.database))
                if engine.dialect.name == "postgresql":
                    # Upgrading a large ledger may rightly take longer than the appends' limit.
                    conn.exec_driver_sql("SET LOCAL statement_timeout = 0")
                migrate(conn)
                conn.commit()
        except SQLAlchemyError as exc:
            engine.dispose()
            raise StoreError(
                f"cannot open ledger {engine.url!r}: {exc.__class__.__name__}: {exc}"
            ) from exc
    return store


class SqlEventStore:
    """``EventStore`` on SQLAlchemy Core. Construct with ``open_store``."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.url = engine.url.render_as_string(hide_password=True)
        self.discarded_tail: wal.DiscardedTail | None = None
        dialect = engine.dialect
        self._dbapi: Any = dialect.loaded_dbapi
        self._sql = {
            name: _Compiled.of(statement, dialect)
            for name, statement in (
                ("insert_event", _INSERT_EVENT),
                ("move_head", _MOVE_HEAD),
                ("index_pending", _INDEX_PENDING),
                ("unindex_pending", _UNINDEX_PENDING),
                *_QUERIES.items(),
            )
        }
        self._notify = _Compiled.of(_NOTIFY, dialect) if dialect.name == "postgresql" else None
        param = "%({})s" if dialect.name == "postgresql" else ":{}"
        self._members = _member_sql(_NOW[dialect.name], param)
        self._models = {
            kind: {
                "lock": _Compiled.of(model.lock, dialect),
                "insert": _Compiled.of(model.insert, dialect),
                "update": _Compiled.of(model.update, dialect),
            }
            for kind, model in _MODELS.items()
        }

    # -- writing -------------------------------------------------------------------------------

    def append(
        self,
        stream: str,
        expected_version: int,
        new_events: Sequence[NewEvent],
        *,
        sync: bool = True,
    ) -> tuple[RecordedEvent, ...]:
        if not new_events:
            return ()
        kind = stream_kind(stream)
        options = {connect.WRITE: True, connect.NO_SYNC: not sync}
        try:
            with (
                self.engine.connect().execution_options(**options) as conn,
                conn.begin(),
                self._cursor(conn) as cursor,
            ):
                if not sync:
                    connect.defer_sync(conn)
                return self._append(cursor, stream, kind, expected_version, new_events)
        except (IntegrityError, self._dbapi.IntegrityError) as exc:
            # The UNIQUE(stream_id, version) gate: another writer took this version first.
            raise ConcurrencyError(stream, expected_version) from exc
        except (SQLAlchemyError, self._dbapi.Error) as exc:
            raise StoreError(f"ledger append to {stream} failed: {exc}") from exc

    def _append(
        self,
        cursor: Any,
        stream: str,
        kind: str,
        expected_version: int,
        new_events: Sequence[NewEvent],
    ) -> tuple[RecordedEvent, ...]:
        model = self._models[kind]
        lock = model["lock"]
        cursor.execute(lock.sql, lock.bind({"stream": stream}))
        position, prev_hash, _, stored_view = cursor.fetchone()
        exists = stored_view is not None
        view: DiskView | TemplateView | MemberView = (
            _VIEWS[kind].from_json(loads(stored_view)) if exists else empty_view(stream)
        )
        if view.version != expected_version:
            raise ConcurrencyError(stream, expected_version, view.version)
        if kind == MEMBER:
            self._check_fencing(cursor, stream, new_events)

        recorded_at = datetime.now(UTC).isoformat(timespec="microseconds")
        time = datetime.fromisoformat(recorded_at)
        recorded: list[RecordedEvent] = []
        rows: list[dict[str, Any]] = []
        pending_before = view.pending
        for new in new_events:
            view = evolve(view, new)  # raises IllegalTransition: nothing is written
            position += 1
            data_json = canonical_json(new.data)
            metadata_json = canonical_json(new.metadata.to_json())
            digest = event_hash(
                prev_hash,
                position,
                stream,
                view.version,
                new.type,
                new.schema,
                data_json,
                metadata_json,
                recorded_at,
            )
            rows.append(
                {
                    "position": position,
                    "stream_id": stream,
                    "version": view.version,
                    "type": new.type,
                    "schema": new.schema,
                    "data": data_json,
                    "metadata": metadata_json,
                    "op_id": new.metadata.op_id,
                    "recorded_at": recorded_at,
                    "prev_hash": prev_hash,
                    "hash": digest,
                }
            )
            recorded.append(
                RecordedEvent(
                    position,
                    stream,
                    view.version,
                    new.type,
                    new.schema,
                    new.data,
                    new.metadata,
                    time,
                    prev_hash,
                    digest,
                )
            )
            prev_hash = digest

        insert = self._sql["insert_event"]
        cursor.executemany(insert.sql, [insert.bind(row) for row in rows])
        move = self._sql["move_head"]
        cursor.execute(move.sql, move.bind({"new_position": position, "new_hash": prev_hash}))
        if self._notify is not None:
            cursor.execute(self._notify.sql, self._notify.bind({"head": str(position)}))
        projected = {
            "stream": stream,
            "key": _key(view),
            "state": view.state.value,
            "version": view.version,
            "template": getattr(view, "template", None),
            "view": canonical_json(view.to_json()),
        }
        project = model["update" if exists else "insert"]
        cursor.execute(project.sql, project.bind(projected))
        if kind == MEMBER:
            self._project_member(cursor, stream, recorded)
        else:
            self._index_pending(cursor, stream, pending_before, view.pending, recorded, recorded_at)
        return tuple(recorded)

    def _check_fencing(self, cursor: Any, stream: str, new_events: Sequence[NewEvent]) -> None:
        """A taker may begin fencing a member for an expired lease only if the lease has expired
        by the database's clock, checked here, under the append's lock: a renewal that commits
        first wins, and one that comes after finds the member ``fencing`` and fails."""
        for new in new_events:
            if new.type == "member.fencing" and new.data.get("reason") == "lease-expired":
                cursor.execute(self._members["lapsed"], {"stream": stream})
                row = cursor.fetchone()
                if row is None or not row[0]:
                    raise Conflict(f"{stream}: its lease has not expired: not fencing it")

    def _project_member(self, cursor: Any, stream: str, recorded: Sequence[RecordedEvent]) -> None:
        for event in recorded:
            if event.type == "member.joined":
                cursor.execute(
                    self._members["joined"],
                    {
                        "stream": stream,
                        "host": event.data["host"],
                        "epoch": event.position,
                        "ttl": float(event.data["lease_ttl"]),
                    },
                )

    def _index_pending(
        self,
        cursor: Any,
        stream: str,
        before: PendingOperation | None,
        after: PendingOperation | None,
        recorded: Sequence[RecordedEvent],
        recorded_at: str,
    ) -> None:
        changed_owner = (
            before is not None
            and after is not None
            and before.op_id == after.op_id
            and before.owner != after.owner
        )
        if before is not None and (after is None or after.op_id != before.op_id or changed_owner):
            unindex = self._sql["unindex_pending"]
            cursor.execute(unindex.sql, unindex.bind({"op": before.op_id}))
        if after is not None and (before is None or before.op_id != after.op_id or changed_owner):
            if changed_owner:
                started_position, started_at = self._intent(cursor, stream, after)
            else:
                started_position = next(
                    e for e in recorded if e.version == after.started_version
                ).position
                started_at = recorded_at
            index = self._sql["index_pending"]
            cursor.execute(
                index.sql,
                index.bind(
                    {
                        "op_id": after.op_id,
                        "stream_id": stream,
                        "op": after.op,
                        "started_position": started_position,
                        "started_at": started_at,
                        "operation": canonical_json(after.to_json()),
                        "owner": after.owner_member,
                    }
                ),
            )

    def _intent(self, cursor: Any, stream: str, op: PendingOperation) -> tuple[int, str]:
        """Where and when ``op``'s intent was recorded (its index row moves to a new owner)."""
        query = self._sql["intent"]
        cursor.execute(query.sql, query.bind({"stream": stream, "version": op.started_version}))
        position, recorded_at = cursor.fetchone()
        return int(position), str(recorded_at)

    # -- members -------------------------------------------------------------------------------

    def renew(self, member_stream: str) -> bool:
        try:
            with (
                self.engine.connect().execution_options(**{connect.WRITE: True}) as conn,
                conn.begin(),
                self._cursor(conn) as cursor,
            ):
                cursor.execute(self._members["renew"], {"stream": member_stream})
                return bool(cursor.rowcount == 1)
        except (SQLAlchemyError, self._dbapi.Error) as exc:
            raise StoreError(f"lease renewal of {member_stream} failed: {exc}") from exc

    def members(self) -> list[MemberRecord]:
        return [_member_record(row) for row in self._fetch_text("members", {})]

    def member(self, member_stream: str) -> MemberRecord | None:
        rows = self._fetch_text("member", {"stream": member_stream})
        return _member_record(rows[0]) if rows else None

    def _fetch_text(self, name: str, params: Mapping[str, Any]) -> Sequence[Any]:
        try:
            with self.engine.connect() as conn, self._cursor(conn) as cursor:
                cursor.execute(self._members[name], params)
                return list(cursor.fetchall())
        except (SQLAlchemyError, self._dbapi.Error) as exc:
            raise StoreError(f"ledger read failed: {exc}") from exc

    # -- reading -------------------------------------------------------------------------------

    def read_stream(self, stream: str, after_version: int = 0) -> list[RecordedEvent]:
        rows = self._fetch("read_stream", {"stream": stream, "after": after_version})
        return [_recorded(row) for row in rows]

    def read_operation(self, op_id: str) -> list[RecordedEvent]:
        return [_recorded(row) for row in self._fetch("read_operation", {"op_id": op_id})]

    def read_all(self, after_position: int = 0, *, batch: int = 1000) -> Iterator[RecordedEvent]:
        while True:
            rows = self._fetch("read_all", {"after": after_position, "batch": batch})
            yield from map(_recorded, rows)
            if len(rows) < batch:
                return
            after_position = rows[-1][0]

    def read_for_replay(
        self, after_position: int = 0, *, batch: int = 10_000
    ) -> Iterator[ReplayRow]:
        return chain.from_iterable(self._batches("read_for_replay", after_position, batch))

    def read_for_verify(
        self, after_position: int = 0, *, batch: int = 10_000
    ) -> Iterator[VerifyRow]:
        return chain.from_iterable(self._batches("read_for_verify", after_position, batch))

    def _batches(self, name: str, after_position: int, batch: int) -> Iterator[Sequence[Any]]:
        """The rows of a query by position, ``batch`` at a time, as the driver returns them
        (chained in C: no generator step per row)."""
        while True:
            rows = self._fetch(name, {"after": after_position, "batch": batch})
            yield rows
            if len(rows) < batch:
                return
            after_position = rows[-1][0]

    def head(self) -> int:
        return int(self._fetch("head", {})[0][0])

    def stream_version(self, stream: str) -> int:
        return int(self._fetch("stream_version", {"stream": stream})[0][0] or 0)

    def disk(self, stream: str) -> DiskView | None:
        rows = self._fetch("disk", {"stream": stream})
        return DiskView.from_json(loads(rows[0][0])) if rows else None

    def disks(self) -> list[DiskView]:
        return [DiskView.from_json(loads(view)) for (view,) in self._fetch("disks", {})]

    def template(self, stream: str) -> TemplateView | None:
        rows = self._fetch("template", {"stream": stream})
        return TemplateView.from_json(loads(rows[0][0])) if rows else None

    def templates(self) -> list[TemplateView]:
        rows = self._fetch("templates", {})
        return [TemplateView.from_json(loads(view)) for (view,) in rows]

    def template_users(self, template: str) -> list[str]:
        return [disk for (disk,) in self._fetch("template_users", {"template": template})]

    def pending(self) -> list[PendingEntry]:
        return [
            PendingEntry(
                stream=stream,
                operation=PendingOperation.from_json(loads(operation)),
                started_position=started_position,
                started_at=started_at,
            )
            for stream, operation, started_position, started_at in self._fetch("pending", {})
        ]

    # -- following -----------------------------------------------------------------------------

    @overload
    def subscribe(
        self,
        after_position: int = 0,
        *,
        heartbeat: None = None,
        stop: threading.Event | None = None,
        batch: int = 1000,
    ) -> feed.Subscription[RecordedEvent]: ...

    @overload
    def subscribe(
        self,
        after_position: int = 0,
        *,
        heartbeat: float,
        stop: threading.Event | None = None,
        batch: int = 1000,
    ) -> feed.Subscription[RecordedEvent | feed.Heartbeat]: ...

    def subscribe(
        self,
        after_position: int = 0,
        *,
        heartbeat: float | None = None,
        stop: threading.Event | None = None,
        batch: int = 1000,
    ) -> feed.Subscription[Any]:
        """See ``EventStore.subscribe``; the feed itself is ``diskledger.store.feed``."""
        url = self.engine.url
        wake: Any
        if self.engine.dialect.name == "postgresql":
            _, kwargs = self.engine.dialect.create_connect_args(url)
            wake = feed.PostgresWaker.factory({**kwargs, **connect.postgres_client_settings(url)})
        else:
            wake = feed.SqliteWaker.factory(url.database or "")
        return feed.subscribe(
            self, wake, after_position, heartbeat=heartbeat, stop=stop, batch=batch
        )

    def close(self) -> None:
        self.engine.dispose()

    def _fetch(self, name: str, params: Mapping[str, Any]) -> Sequence[Any]:
        """Run one of the store's compiled queries; a single statement needs no BEGIN."""
        query = self._sql[name]
        try:
            with self.engine.connect() as conn, self._cursor(conn) as cursor:
                cursor.execute(query.sql, query.bind(params))
                return list(cursor.fetchall())
        except (SQLAlchemyError, self._dbapi.Error) as exc:
            raise StoreError(f"ledger read failed: {exc}") from exc

    @contextmanager
    def _cursor(self, conn: Connection) -> Iterator[Any]:
        """A DB-API cursor on ``conn`` (the hot paths skip SQLAlchemy's statement layer).

        SQLAlchemy cannot see a driver error raised on its own cursor, so a session the server
        ended would go back to the pool, and the pool's reset would log a traceback; the session
        is invalidated here instead, the way SQLAlchemy does for statements it runs.
        """
        dbapi_connection = conn.connection.dbapi_connection
        cursor = dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            yield cursor
        except self._dbapi.Error as exc:
            if self.engine.dialect.is_disconnect(exc, dbapi_connection, cursor):
                conn.invalidate(exc)
            raise
        finally:
            cursor.close()


def _key(view: DiskView | TemplateView | MemberView) -> str:
    if isinstance(view, DiskView):
        return view.disk
    if isinstance(view, MemberView):
        return view.member
    return view.template


def _member_record(row: Sequence[Any]) -> MemberRecord:
    view, epoch, expires_in, renewals = row
    return MemberRecord(
        view=MemberView.from_json(loads(view)),
        epoch=epoch,
        expires_in=None if expires_in is None else float(expires_in),
        renewals=int(renewals),
    )


def _recorded(row: Sequence[Any]) -> RecordedEvent:
    position, stream, version, type_, schema, data, metadata, recorded_at, prev, digest = row
    return RecordedEvent(
        position,
        stream,
        version,
        type_,
        schema,
        loads(data),
        Metadata.from_json(loads(metadata)),
        datetime.fromisoformat(recorded_at),
        prev,
        digest,
    )

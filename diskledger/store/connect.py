"""Connecting to a ledger database: the SQLAlchemy engine for a URL, SQLite made durable and
private, PostgreSQL sessions that give up instead of hanging (keepalives and timeouts)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy import event as sa_event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from diskledger.errors import StoreError
from diskledger.store.writer import WriterQueue

__all__ = ["NO_SYNC", "WRITE", "create_engine", "defer_sync", "postgres_client_settings"]

WRITE: Final = "diskledger_write"
"""The execution option of a connection that will write: on SQLite it begins ``IMMEDIATE``."""
NO_SYNC: Final = "diskledger_no_sync"
"""The execution option of a writing connection whose transaction may commit without waiting
for stable storage (``defer_sync``; SQLite sets its safety level before the transaction begins:
it refuses to change it inside one)."""


def create_engine(url: str) -> Engine:
    """The SQLAlchemy engine for a SQLite or PostgreSQL ledger at ``url``, configured as below;
    ``StoreError`` for any other URL."""
    try:
        sa_url = sa.make_url(url)
    except sa.exc.ArgumentError as exc:
        raise StoreError(f"not a database URL: {url!r}") from exc
    backend = sa_url.get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        raise StoreError(f"unsupported ledger database {backend!r}: use sqlite or postgresql")
    ledger = None
    if backend == "sqlite" and sa_url.database not in (None, "", ":memory:"):
        ledger = Path(sa_url.database)
        _private_file(ledger)
    connect_args = postgres_client_settings(sa_url) if backend == "postgresql" else {}
    try:
        engine = sa.create_engine(sa_url, connect_args=connect_args)
    except (SQLAlchemyError, ImportError) as exc:
        raise StoreError(f"cannot open ledger {sa_url!r}: {exc}") from exc
    if backend == "sqlite":
        _configure_sqlite(engine, WriterQueue(ledger))
    return engine


def _configure_sqlite(engine: Engine, writers: WriterQueue) -> None:
    """WAL + synchronous=FULL, and writers queue (``WriterQueue``) and then take the write lock
    up front (BEGIN IMMEDIATE).

    An intent that is not durable before the effect could leak a disk after a power cut, hence
    FULL. BEGIN IMMEDIATE avoids the deadlock of two readers upgrading to writers at once.
    """

    @sa_event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # let the begin hook below issue BEGIN
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @sa_event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        if not conn.get_execution_options().get(WRITE, False):
            conn.exec_driver_sql("BEGIN")
            return
        writers.acquire()
        try:
            if conn.get_execution_options().get(NO_SYNC, False):
                driver = _driver(conn)
                (level,) = driver.execute("PRAGMA synchronous").fetchone()
                if level > _NORMAL:
                    driver.execute(f"PRAGMA synchronous={_NORMAL}")
                    conn.info[_DEFERRED] = level
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        except BaseException:
            writers.release()
            raise
        conn.info[_QUEUED] = True

    # SQLAlchemy has no event after a commit or a rollback, only before: these end the
    # transaction themselves (the driver's own commit or rollback that follows finds none open
    # and does nothing), then let the next writer in.
    @sa_event.listens_for(engine, "commit")
    def _on_commit(conn: Connection) -> None:
        if conn.info.pop(_QUEUED, False):
            try:
                _driver(conn).commit()
                _restore_sync(_driver(conn), conn.info)
            finally:
                writers.release()

    @sa_event.listens_for(engine, "rollback")
    def _on_rollback(conn: Connection) -> None:
        if conn.info.pop(_QUEUED, False):
            try:
                _driver(conn).rollback()
                _restore_sync(_driver(conn), conn.info)
            finally:
                writers.release()

    @sa_event.listens_for(engine.pool, "checkin")
    def _on_checkin(dbapi_connection: Any, record: Any) -> None:
        # A connection given back with its transaction neither committed nor rolled back (it
        # was invalidated): the pool's reset rolled it back; let the next writer in.
        if dbapi_connection is not None:
            _restore_sync(dbapi_connection, record.info)
        if record.info.pop(_QUEUED, False):
            writers.release()

    @sa_event.listens_for(engine, "engine_disposed")
    def _on_disposed(_engine: Engine) -> None:
        writers.close()


_QUEUED: Final = "diskledger_queued"
"""In a connection's ``info`` while it holds the ``WriterQueue``."""
_DEFERRED: Final = "diskledger_deferred_sync"
"""In a SQLite connection's ``info`` while its transaction commits without a sync: the safety
level to go back to."""
_NORMAL: Final = 1
"""SQLite's ``synchronous=NORMAL``: in WAL mode a commit does not sync; a checkpoint does."""


def defer_sync(conn: Connection) -> None:
    """Let the write transaction open on ``conn`` (opened with ``NO_SYNC``) commit without
    waiting for stable storage: ``EventStore.append(sync=False)``. The commit is atomic and
    visible at once, and the next commit that waits (on SQLite the next ``FULL`` one, which
    syncs the whole write-ahead log; on PostgreSQL any synchronous commit, which flushes the WAL
    up to itself) makes it durable with everything before it, so a power cut leaves a prefix of
    the ledger."""
    if conn.dialect.name == "postgresql":
        cursor = _driver(conn).cursor()
        try:
            cursor.execute("SET LOCAL synchronous_commit TO OFF")  # ends with the transaction
        finally:
            cursor.close()
    else:
        assert conn.get_execution_options().get(NO_SYNC), "SQLite relaxes as it begins"


def _restore_sync(dbapi_connection: Any, info: dict[Any, Any]) -> None:
    level = info.pop(_DEFERRED, None)
    if level is not None:
        dbapi_connection.execute(f"PRAGMA synchronous={int(level)}")


def _driver(conn: Connection) -> Any:
    dbapi_connection = conn.connection.dbapi_connection
    assert dbapi_connection is not None
    return dbapi_connection


def _private_file(path: Path) -> None:
    """Create the SQLite file readable and writable by its owner only (its -wal and -shm files
    inherit the mode): the ledger is an audit trail, not for other users to read or edit."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))
    except OSError as exc:
        raise StoreError(f"cannot create ledger file {str(path)!r}: {exc.strerror}") from exc


_PG_CONNECTION: Final = {
    # libpq keepalives: a ledger server that vanished (or a partition) is noticed in ~11 s
    # instead of the kernel's two hours, so a stuck append or feed fails and can be retried.
    "keepalives": "1",
    "keepalives_idle": "5",
    "keepalives_interval": "2",
    "keepalives_count": "3",
    "connect_timeout": "10",
}
_PG_SESSION: Final = {
    # An append waits at most this long for the ledger_head lock: a writer stalled inside its
    # transaction must not stall every other host (docs/multihost.md, "PostgreSQL settings").
    "lock_timeout": "5s",
    "statement_timeout": "10s",
    # Our own sessions never sit in a transaction; if one does (a frozen process), the server
    # ends it and releases its locks.
    "idle_in_transaction_session_timeout": "10s",
}
_PG_ENVIRONMENT: Final = {"connect_timeout": "PGCONNECT_TIMEOUT"}


def postgres_client_settings(
    url: sa.URL, environ: Mapping[str, str] = os.environ
) -> dict[str, str]:
    """libpq connection parameters for a PostgreSQL ledger: keepalives, ``connect_timeout`` and,
    through ``options``, the session's ``lock_timeout``, ``statement_timeout`` and
    ``idle_in_transaction_session_timeout``.

    Whatever the URL sets explicitly (``?keepalives_idle=30``, ``?options=-c lock_timeout=2s``),
    or libpq's environment (``PGCONNECT_TIMEOUT``, ``PGOPTIONS``), is kept: only what is unset
    gets a default. The user's ``options`` come first in the string passed on.
    """
    given = {key.lower() for key in url.query}
    settings = {
        key: value
        for key, value in _PG_CONNECTION.items()
        if key not in given and _PG_ENVIRONMENT.get(key, "") not in environ
    }
    query_options = url.query.get("options")
    options = (
        (query_options if isinstance(query_options, str) else " ".join(query_options))
        if query_options is not None
        else environ.get("PGOPTIONS", "")
    )
    named = _option_names(options)
    ours = [f"-c {name}={value}" for name, value in _PG_SESSION.items() if name not in named]
    if ours:
        settings["options"] = " ".join(part for part in (options.strip(), *ours) if part)
    return settings


def _option_names(options: str) -> set[str]:
    """The settings a libpq ``options`` string sets (``-c name=value``, ``-cname=value``,
    ``--name=value``; whitespace separates, a backslash escapes)."""
    words: list[str] = []
    word, escaped = "", False
    for char in options:
        if escaped:
            word, escaped = word + char, False
        elif char == "\\":
            escaped = True
        elif char.isspace():
            if word:
                words.append(word)
            word = ""
        else:
            word += char
    if word:
        words.append(word)
    names: set[str] = set()
    for i, item in enumerate(words):
        if item == "-c" and i + 1 < len(words):
            setting = words[i + 1]
        elif item.startswith(("-c", "--")):
            setting = item[2:]
        else:
            continue
        names.add(setting.partition("=")[0].strip().lower().replace("-", "_"))
    return names

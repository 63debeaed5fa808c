"""PostgreSQL hardening: a stalled writer must not stall every other host's appends.

Every append holds the ``ledger_head`` row lock until it commits. A writer that stops between its
``SELECT ... FOR UPDATE`` and its commit (a partitioned host, a frozen process) would make every
other append wait for as long as PostgreSQL keeps its session: about two hours with default
keepalives. The client sets ``lock_timeout`` (and ``statement_timeout``, keepalives) so an append
behind such a lock fails with ``StoreError`` instead of hanging, and the server is configured (as
docs/multihost.md asks) to end a session idle in a transaction, which releases the lock.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa

from diskledger.errors import StoreError
from diskledger.store import SqlEventStore, open_store
from tests.store.test_contract import DISK, create_disk, started
from tests.support.postgres import PostgresServer

pytestmark = pytest.mark.postgres

# Bounds so that a regression fails the test instead of hanging the suite; never a timing claim.
OUTER_BOUND = 60.0


def _session(store: SqlEventStore, setting: str) -> str:
    with store.engine.connect() as conn:
        return str(conn.exec_driver_sql(f"SHOW {setting}").scalar())


def test_an_append_behind_a_stalled_writers_lock_fails_and_the_server_ends_the_stalled_writer(
    postgres_server: PostgresServer, postgres_url: str
) -> None:
    store = open_store(postgres_url)
    try:
        create_disk(store)
        # The stalled writer: a transaction that took the head row lock, as an append does
        # first, and then does nothing more.
        holder = postgres_server.connect(sa.make_url(postgres_url).database or "")
        holder.execute("SELECT position FROM ledger_head WHERE id = 1 FOR UPDATE")
        holder_pid = holder.info.backend_pid

        outcome: dict[str, Any] = {}

        def append() -> None:
            try:
                store.append(DISK, 2, [started("resize", "op-r", size=4096)])
                outcome["result"] = "appended"
            except StoreError as exc:
                outcome["result"] = exc

        writer = threading.Thread(target=append, daemon=True)
        writer.start()
        writer.join(OUTER_BOUND)
        assert not writer.is_alive(), "the append hung behind the stalled writer's lock"
        assert isinstance(outcome["result"], StoreError), outcome
        assert "lock timeout" in str(outcome["result"])
        assert store.stream_version(DISK) == 2  # nothing recorded

        # The server ends the session that sits idle in its transaction, releasing the lock.
        deadline = time.monotonic() + OUTER_BOUND
        with postgres_server.connect("postgres", autocommit=True) as admin:
            while admin.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (holder_pid,)
            ).fetchone() != (0,):
                assert time.monotonic() < deadline, "the server kept the idle transaction open"
                time.sleep(0.2)
        with pytest.raises(psycopg.Error, match="idle-in-transaction timeout"):
            holder.execute("SELECT 1")
        holder.close()

        store.append(DISK, 2, [started("resize", "op-r", size=4096)])
        assert store.stream_version(DISK) == 3
    finally:
        store.close()


def test_the_store_sets_timeouts_and_keepalives_on_its_sessions(postgres_url: str) -> None:
    store = open_store(postgres_url)
    try:
        assert _session(store, "lock_timeout") == "5s"
        assert _session(store, "statement_timeout") == "10s"
        assert _session(store, "idle_in_transaction_session_timeout") == "10s"
        with store.engine.connect() as conn:
            dbapi = conn.connection.dbapi_connection
            assert isinstance(dbapi, psycopg.Connection)
            params = dbapi.info.get_parameters()
        assert {k: params.get(k) for k in ("keepalives", "keepalives_idle")} == {
            "keepalives": "1",
            "keepalives_idle": "5",
        }
        assert (params.get("keepalives_interval"), params.get("keepalives_count")) == ("2", "3")
        assert params.get("connect_timeout") == "10"
    finally:
        store.close()


def test_settings_the_url_gives_win_over_the_defaults(postgres_url: str) -> None:
    url = postgres_url + "&options=-c%20lock_timeout%3D1500ms&keepalives_idle=30&connect_timeout=3"
    store = open_store(url)
    try:
        assert _session(store, "lock_timeout") == "1500ms"
        assert _session(store, "statement_timeout") == "10s"  # the others still apply
        with store.engine.connect() as conn:
            dbapi = conn.connection.dbapi_connection
            assert isinstance(dbapi, psycopg.Connection)
            params = dbapi.info.get_parameters()
        assert (params.get("keepalives_idle"), params.get("keepalives_count")) == ("30", "3")
        assert params.get("connect_timeout") == "3"
    finally:
        store.close()


def test_the_test_server_runs_with_the_settings_the_docs_require(
    postgres_server: PostgresServer,
) -> None:
    # pg_settings shows the tcp_* settings as 0 on a unix-socket session (they apply to TCP
    # sessions only), so read what the server loaded from its configuration files.
    with postgres_server.connect("postgres", autocommit=True) as conn:
        rows = conn.execute(
            "SELECT name, setting FROM pg_file_settings WHERE applied AND name = ANY(%s)",
            (list(REQUIRED_SERVER_SETTINGS),),
        ).fetchall()
        assert dict(rows) == REQUIRED_SERVER_SETTINGS
        # and in effect: a new session gets them
        assert conn.execute("SHOW idle_in_transaction_session_timeout").fetchone() == ("10s",)
        assert conn.execute("SHOW client_connection_check_interval").fetchone() == ("2s",)


REQUIRED_SERVER_SETTINGS = {
    "idle_in_transaction_session_timeout": "10s",
    "tcp_keepalives_idle": "5",
    "tcp_keepalives_interval": "2",
    "tcp_keepalives_count": "3",
    "tcp_user_timeout": "10s",
    "client_connection_check_interval": "2s",
}


@pytest.mark.parametrize(
    "read",
    [
        pytest.param(lambda store: store.members(), id="members (raw cursor)"),
        pytest.param(lambda store: store.renew("member:gone"), id="renew (raw cursor, in BEGIN)"),
        pytest.param(lambda store: store.head(), id="head (compiled query)"),
        pytest.param(
            lambda store: store.append(DISK, 2, [started("resize", "op-x", size=4096)]),
            id="append",
        ),
    ],
)
def test_a_session_the_server_ended_is_dropped_from_the_pool_quietly(
    postgres_server: PostgresServer,
    postgres_url: str,
    read: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A restarted or failed-over server ends every pooled session. The call that meets the
    dead session fails with StoreError; the session is discarded rather than returned to the
    pool (where SQLAlchemy's reset would log a traceback at ERROR that an operator reads as a
    crash), and the next call gets a fresh one."""
    store = open_store(postgres_url)
    try:
        create_disk(store)
        with store.engine.connect() as conn:
            pooled_pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar()
        with postgres_server.connect("postgres", autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pooled_pid,))
        with caplog.at_level("ERROR", logger="sqlalchemy"), pytest.raises(StoreError):
            read(store)
        assert [r.getMessage() for r in caplog.records if r.name.startswith("sqlalchemy")] == []
        assert store.stream_version(DISK) == 2  # nothing recorded by the failed call
        read(store)  # a fresh session
    finally:
        store.close()

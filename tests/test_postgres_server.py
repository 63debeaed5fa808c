"""Self-test of tests/support/postgres.py and tests/support/fixtures.py.

The fixtures ``postgres_server`` and ``postgres_url`` come from tests/conftest.py, which imports
them from tests.support.fixtures; importing them here too would make a second session server.
"""

from __future__ import annotations

import re
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import create_engine, inspect, make_url, text

from tests.support.postgres import (
    DEFAULT_DATABASE,
    PostgresServer,
    PostgresStartError,
    PostgresUnavailable,
    pid_alive,
)

pytestmark = pytest.mark.postgres

_seen_urls: list[str] = []


def _scalar(url: str, query: str) -> object:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(text(query)).scalar_one()
    finally:
        engine.dispose()


def test_sqlalchemy_connects_to_the_server(postgres_server: PostgresServer) -> None:
    version = _scalar(postgres_server.url, "select version()")
    assert isinstance(version, str)
    # 15 with Debian 12's `postgresql`; whatever major version initdb made the cluster with.
    assert version.startswith(f"PostgreSQL {postgres_server.major_version}.")
    assert _scalar(postgres_server.url, "select current_database()") == DEFAULT_DATABASE
    assert _scalar(postgres_server.url, "show fsync") == "off"
    assert _scalar(postgres_server.url, "show listen_addresses") == "127.0.0.1"
    url = make_url(postgres_server.url)
    assert url.query["host"] == str(postgres_server.socket_dir)
    assert url.query["port"] == str(postgres_server.port)


def test_server_listens_on_loopback_tcp(postgres_server: PostgresServer) -> None:
    with psycopg.connect(
        host="127.0.0.1", port=postgres_server.port, user="postgres", dbname=DEFAULT_DATABASE
    ) as conn:
        row = conn.execute("select inet_server_addr()::text").fetchone()
    assert row is not None
    assert row[0] == "127.0.0.1/32"


@pytest.mark.parametrize("round_", [1, 2])
def test_postgres_url_gives_a_fresh_database_per_test(postgres_url: str, round_: int) -> None:
    assert postgres_url not in _seen_urls
    _seen_urls.append(postgres_url)
    dbname = make_url(postgres_url).database
    assert dbname is not None
    assert dbname != DEFAULT_DATABASE
    engine = create_engine(postgres_url)
    try:
        with engine.begin() as conn:
            assert conn.execute(text("select current_database()")).scalar_one() == dbname
            # Empty, although the other round created a table in its own database.
            assert inspect(conn).get_table_names() == []
            conn.execute(text("create table marker (round int)"))
    finally:
        engine.dispose()


def test_fresh_database_recreates_and_validates(postgres_server: PostgresServer) -> None:
    url = postgres_server.fresh_database("recreated_db")
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text("create table leftover (x int)"))
        with engine.connect():  # an open connection does not block the re-creation...
            assert postgres_server.fresh_database("recreated_db") == url
        engine.dispose()  # ...but it (and the rest of the pool) was terminated by it
        with engine.connect() as conn:
            assert inspect(conn).get_table_names() == []
    finally:
        engine.dispose()
    with pytest.raises(ValueError):
        postgres_server.fresh_database("Bad-Name")


def test_stop_removes_data_dir_and_ends_the_server(postgres_server: PostgresServer) -> None:
    # Depends on postgres_server only so that it is skipped (or fails in CI) the same way.
    with PostgresServer() as server:
        assert server.port != postgres_server.port
        tmpdir, data_dir, pid = server.tmpdir, server.data_dir, server.pid
        assert (data_dir / "PG_VERSION").is_file()
        assert pid_alive(pid)
        assert _scalar(server.url, "select 1") == 1
    assert not data_dir.exists()
    assert not tmpdir.exists()
    assert not pid_alive(pid)
    assert not server.running
    server.stop()  # idempotent
    # The session server is untouched.
    assert _scalar(postgres_server.url, "select 1") == 1


def test_missing_binaries_raise_postgres_unavailable(tmp_path: Path) -> None:
    with pytest.raises(PostgresUnavailable, match="postgresql"):
        PostgresServer(bindir=tmp_path).start()


def test_failed_start_reports_the_server_log(postgres_server: PostgresServer) -> None:
    server = PostgresServer(shared_buffers="not-a-size")
    with pytest.raises(PostgresStartError, match="shared_buffers") as excinfo:
        server.start()
    match = re.search(r"last lines of (\S+) ---", str(excinfo.value))
    assert match is not None
    assert not Path(match.group(1)).parent.exists()  # the temp dir was cleaned up
    assert not server.running

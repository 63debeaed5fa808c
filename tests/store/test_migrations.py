"""The schema is Alembic's: migrations build exactly the tables the store's metadata describes."""

from __future__ import annotations

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from diskledger.store import open_store
from diskledger.store.migrate import current_revision, head_revision, migrate
from diskledger.store.schema import metadata


def test_migrations_build_the_schema_the_store_uses(ledger_url: str) -> None:
    store = open_store(ledger_url)
    try:
        with store.engine.connect() as conn:
            assert current_revision(conn) == head_revision()
            diff = compare_metadata(MigrationContext.configure(conn), metadata)
        assert diff == []
    finally:
        store.close()


def test_a_ledger_is_upgraded_from_an_empty_database(ledger_url: str) -> None:
    engine = sa.create_engine(ledger_url)
    try:
        with engine.connect() as conn:
            assert current_revision(conn) is None
            migrate(conn)
            conn.commit()
            assert current_revision(conn) == head_revision()
            migrate(conn)  # already at head: nothing to do
            head = conn.execute(sa.text("SELECT position, hash FROM ledger_head")).one()
            assert head.position == 0 and head.hash == "0" * 64
    finally:
        engine.dispose()


def test_the_head_constant_is_alembics_head() -> None:
    from diskledger.store.migrate import HEAD

    assert head_revision() == HEAD

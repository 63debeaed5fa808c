"""Alembic environment: diskledger always runs migrations on a connection it passes in."""

from __future__ import annotations

from alembic import context

from diskledger.store.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError(
        "diskledger migrations run through diskledger.store.migrate(), not alembic's CLI"
    )

context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()

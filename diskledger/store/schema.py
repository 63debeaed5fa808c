"""The ledger's tables, as SQLAlchemy Core metadata (the Alembic migrations create them)."""

from __future__ import annotations

import sqlalchemy as sa

__all__ = [
    "disks",
    "events",
    "ledger_head",
    "members",
    "metadata",
    "pending_operations",
    "templates",
]

metadata = sa.MetaData()

events = sa.Table(
    "events",
    metadata,
    # Assigned under the ledger_head row lock, so positions have no gaps and follow commit order.
    sa.Column("position", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("stream_id", sa.String(300), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("type", sa.String(100), nullable=False),
    sa.Column("schema", sa.Integer, nullable=False),
    # Canonical JSON text, kept byte for byte: the hash is computed over exactly this text.
    sa.Column("data", sa.Text, nullable=False),
    sa.Column("metadata", sa.Text, nullable=False),
    sa.Column("op_id", sa.String(64), nullable=True, index=True),
    sa.Column("recorded_at", sa.String(40), nullable=False),
    sa.Column("prev_hash", sa.String(64), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
    sa.UniqueConstraint("stream_id", "version", name="uq_events_stream_version"),
)

ledger_head = sa.Table(
    "ledger_head",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("position", sa.BigInteger, nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
)

disks = sa.Table(
    "disks",
    metadata,
    sa.Column("stream_id", sa.String(300), primary_key=True),
    sa.Column("disk", sa.String(200), nullable=False),
    sa.Column("state", sa.String(32), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("template", sa.String(200), nullable=True, index=True),
    sa.Column("view", sa.Text, nullable=False),
)

templates = sa.Table(
    "templates",
    metadata,
    sa.Column("stream_id", sa.String(300), primary_key=True),
    sa.Column("template", sa.String(200), nullable=False),
    sa.Column("state", sa.String(32), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("view", sa.Text, nullable=False),
)

pending_operations = sa.Table(
    "pending_operations",
    metadata,
    sa.Column("op_id", sa.String(64), primary_key=True),
    sa.Column("stream_id", sa.String(300), nullable=False),
    sa.Column("op", sa.String(64), nullable=False),
    sa.Column("started_position", sa.BigInteger, nullable=False),
    sa.Column("started_at", sa.String(40), nullable=False),
    sa.Column("operation", sa.Text, nullable=False),
    # The member that may record the outcome: the intent's writer, or the last to take it over.
    sa.Column("owner", sa.String(200), nullable=True, index=True),
)

members = sa.Table(
    "members",
    metadata,
    sa.Column("stream_id", sa.String(300), primary_key=True),
    sa.Column("member", sa.String(200), nullable=False),
    sa.Column("state", sa.String(32), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("view", sa.Text, nullable=False),
    sa.Column("host", sa.String(200), nullable=True),
    # The ledger position of member.joined: the member's fencing token.
    sa.Column("epoch", sa.BigInteger, nullable=True),
    sa.Column("lease_ttl", sa.Float, nullable=True),
    # Seconds since the epoch on the database's clock; no other clock ever judges a lease.
    sa.Column("expires_at", sa.Float, nullable=True),
    sa.Column("renewals", sa.BigInteger, nullable=False, server_default="0"),
)

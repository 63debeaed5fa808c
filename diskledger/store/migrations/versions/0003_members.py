"""Members and their leases; the pending index knows each operation's owner.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "members",
        sa.Column("stream_id", sa.String(300), primary_key=True),
        sa.Column("member", sa.String(200), nullable=False),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("view", sa.Text, nullable=False),
        sa.Column("host", sa.String(200), nullable=True),
        sa.Column("epoch", sa.BigInteger, nullable=True),
        sa.Column("lease_ttl", sa.Float, nullable=True),
        sa.Column("expires_at", sa.Float, nullable=True),
        sa.Column("renewals", sa.BigInteger, nullable=False, server_default="0"),
    )
    with op.batch_alter_table("pending_operations") as batch:
        batch.add_column(sa.Column("owner", sa.String(200), nullable=True))
        batch.create_index("ix_pending_operations_owner", ["owner"])


def downgrade() -> None:
    with op.batch_alter_table("pending_operations") as batch:
        batch.drop_index("ix_pending_operations_owner")
        batch.drop_column("owner")
    op.drop_table("members")

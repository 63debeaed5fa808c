"""Index events by operation id: idempotency keys look an operation up by it.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_events_op_id", "events", ["op_id"])


def downgrade() -> None:
    op.drop_index("ix_events_op_id", table_name="events")

"""Device conduct and round outcome: a device's latest notice, a round's culprits and survivors.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add ``devices.last_notice(_at)``, ``rounds.culprits`` and ``rounds.survivors``."""
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.add_column(sa.Column("last_notice", sa.String(300), nullable=True))
        batch_op.add_column(sa.Column("last_notice_at", sa.Double(), nullable=True))
    with op.batch_alter_table("rounds", schema=None) as batch_op:
        batch_op.add_column(sa.Column("culprits", sa.String(), nullable=True))
        batch_op.add_column(sa.Column("survivors", sa.String(), nullable=True))


def downgrade() -> None:
    """Drop the conduct columns."""
    with op.batch_alter_table("rounds", schema=None) as batch_op:
        batch_op.drop_column("survivors")
        batch_op.drop_column("culprits")
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.drop_column("last_notice_at")
        batch_op.drop_column("last_notice")

"""Enrollment authority: devices carry their certificate; the server's token table goes away.

Tokens now belong to the enrollment authority (its own key and database). Devices enrolled
before this revision have no certificate, so no peer can verify them: they are revoked and their
client index is moved to ``-1 - index`` (the row stays for the record), which frees the indices
the authority hands out from 0. Those nodes re-enroll with a token from the authority.

Revision ID: 0002
Revises: 0001
"""

import time

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add ``devices.certificate``, retire uncertified devices, drop ``enrollment_tokens``."""
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.add_column(sa.Column("certificate", sa.LargeBinary(), nullable=True))
    devices = sa.table(
        "devices",
        sa.column("client_index", sa.Integer()),
        sa.column("revoked_at", sa.Double()),
        sa.column("certificate", sa.LargeBinary()),
    )
    op.execute(
        devices.update()
        .where(devices.c.certificate.is_(None), devices.c.client_index >= 0)
        .values(
            client_index=-1 - devices.c.client_index,
            revoked_at=sa.func.coalesce(devices.c.revoked_at, time.time()),
        )
    )
    op.drop_table("enrollment_tokens")


def downgrade() -> None:
    """Recreate the (empty) token table and drop the certificates; retired devices stay revoked."""
    op.create_table(
        "enrollment_tokens",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("token_hash", sa.LargeBinary(length=32), nullable=False),
        sa.Column("label", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("expires_at", sa.Double(), nullable=False),
        sa.Column("used_at", sa.Double(), nullable=True),
        sa.Column("revoked_at", sa.Double(), nullable=True),
        sa.Column("device_id", sa.String(length=32), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("token_hash"),
    )
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.drop_column("certificate")

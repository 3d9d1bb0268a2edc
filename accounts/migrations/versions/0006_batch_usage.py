"""batch usage: each batch's token totals, summed as its lines are recorded (Batch.usage)

Revision ID: 0006_batch_usage
Revises: 0005_batches
Create Date: 2026-12-07
"""
from alembic import op
import sqlalchemy as sa

revision = "0006_batch_usage"
down_revision = "0005_batches"
branch_labels = None
depends_on = None

COLUMNS = ("input_tokens", "cached_tokens", "output_tokens", "reasoning_tokens")


def upgrade() -> None:
    with op.batch_alter_table("doka_batches") as t:
        for c in COLUMNS:
            t.add_column(sa.Column(c, sa.BigInteger, nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("doka_batches") as t:
        for c in COLUMNS:
            t.drop_column(c)

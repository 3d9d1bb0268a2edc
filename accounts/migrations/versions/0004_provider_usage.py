"""provider limits: requests and tokens sent to each limited model per window (issue 33)

Revision ID: 0004_provider_usage
Revises: 0003_console_spend_rollup
Create Date: 2026-12-06
"""
from alembic import op
import sqlalchemy as sa

revision = "0004_provider_usage"
down_revision = "0003_console_spend_rollup"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "doka_provider_usage",
        sa.Column("model", sa.String(200), primary_key=True),
        sa.Column("period", sa.String(16), primary_key=True),
        sa.Column("window_start", sa.DateTime(), primary_key=True),
        sa.Column("requests", sa.BigInteger(), nullable=False),
        sa.Column("tokens", sa.BigInteger(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("doka_provider_usage")

"""console: per-day spend rollup (day, key, model), so spend pages do not scan the whole ledger

Revision ID: 0003_console_spend_rollup
Revises: 0002_ledger_ids when that revision is present (branch sec-ledger), else 0001_initial
Create Date: 2026-12-05
"""
from pathlib import Path

from alembic import op
import sqlalchemy as sa

revision = "0003_console_spend_rollup"
# Written beside another branch's 0002: follow it when it is here, so the history stays one line.
down_revision = "0002_ledger_ids" if (Path(__file__).parent / "0002_ledger_ids.py").exists() else "0001_initial"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "doka_spend_daily",
        sa.Column("day", sa.String(10), primary_key=True),
        sa.Column("key_id", sa.String(32), primary_key=True),  # "" for rows without a key
        sa.Column("model", sa.String(200), primary_key=True),  # "" for rows without a model
        sa.Column("requests", sa.BigInteger(), nullable=False),
        sa.Column("prompt_tokens", sa.BigInteger(), nullable=False),
        sa.Column("completion_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cost_usd", sa.Float(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("doka_spend_daily")

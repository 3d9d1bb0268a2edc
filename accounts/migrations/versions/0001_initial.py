"""initial schema: keys and ledger

Revision ID: 0001_initial
Revises:
Create Date: 2025-01-01
"""
from alembic import op
import sqlalchemy as sa

revision = "0001_initial"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "doka_keys",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column("key_hint", sa.String(32), nullable=False),
        sa.Column("alias", sa.String(200)),
        sa.Column("team", sa.String(200)),
        sa.Column("user", sa.String(200)),
        sa.Column("metadata", sa.JSON()),
        sa.Column("models", sa.JSON()),
        sa.Column("tokens_per_day", sa.BigInteger()),
        sa.Column("tokens_per_month", sa.BigInteger()),
        sa.Column("max_budget", sa.Float()),
        sa.Column("budget_period", sa.String(16)),
        sa.Column("rpm_limit", sa.Integer()),
        sa.Column("tpm_limit", sa.Integer()),
        sa.Column("expires_at", sa.DateTime()),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.Column("revoked_at", sa.DateTime()),
    )
    op.create_index("ix_doka_keys_key_hash", "doka_keys", ["key_hash"], unique=True)
    op.create_index("ix_doka_keys_team", "doka_keys", ["team"])
    op.create_index("ix_doka_keys_user", "doka_keys", ["user"])

    op.create_table(
        "doka_ledger",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("request_id", sa.String(100)),
        sa.Column("key_id", sa.String(32)),
        sa.Column("model_requested", sa.String(200)),
        sa.Column("model", sa.String(200)),
        sa.Column("prompt_tokens", sa.Integer(), nullable=False),
        sa.Column("completion_tokens", sa.Integer(), nullable=False),
        sa.Column("cost_usd", sa.Float(), nullable=False),
        sa.Column("latency_ms", sa.Float()),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("route_reason", sa.Text()),
        sa.Column("stream", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("day", sa.String(10), nullable=False),
    )
    op.create_index("ix_doka_ledger_request_id", "doka_ledger", ["request_id"])
    op.create_index("ix_doka_ledger_key_created", "doka_ledger", ["key_id", "created_at"])
    op.create_index("ix_doka_ledger_day", "doka_ledger", ["day"])


def downgrade() -> None:
    op.drop_table("doka_ledger")
    op.drop_table("doka_keys")

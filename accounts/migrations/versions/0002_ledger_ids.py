"""ledger: the client's correlation id beside doka's request id; a unique row id for replays

Revision ID: 0002_ledger_ids
Revises: 0001_initial
Create Date: 2026-12-05
"""
from alembic import op
import sqlalchemy as sa

revision = "0002_ledger_ids"
down_revision = "0001_initial"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("doka_ledger") as batch:
        batch.add_column(sa.Column("client_request_id", sa.String(128)))
        batch.add_column(sa.Column("row_uid", sa.String(32)))
    op.create_index("ux_doka_ledger_row_uid", "doka_ledger", ["row_uid"], unique=True)


def downgrade() -> None:
    op.drop_index("ux_doka_ledger_row_uid", table_name="doka_ledger")
    with op.batch_alter_table("doka_ledger") as batch:
        batch.drop_column("row_uid")
        batch.drop_column("client_request_id")

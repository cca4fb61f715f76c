"""Partial indexes for open balances and paid-this-month.

Revision ID: 0002
Revises: 0001
"""
from alembic import op
import sqlalchemy as sa

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("invoices", schema=None) as batch_op:
        batch_op.create_index("ix_invoices_open_tenant", ["tenant_id"], unique=False,
                              postgresql_where=sa.text("status = 'open'"), sqlite_where=sa.text("status = 'open'"))
        batch_op.create_index("ix_invoices_paid_at", ["paid_at"], unique=False,
                              postgresql_where=sa.text("status = 'paid'"), sqlite_where=sa.text("status = 'paid'"))


def downgrade():
    with op.batch_alter_table("invoices", schema=None) as batch_op:
        batch_op.drop_index("ix_invoices_paid_at", postgresql_where=sa.text("status = 'paid'"),
                            sqlite_where=sa.text("status = 'paid'"))
        batch_op.drop_index("ix_invoices_open_tenant", postgresql_where=sa.text("status = 'open'"),
                            sqlite_where=sa.text("status = 'open'"))

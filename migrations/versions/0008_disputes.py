"""Disputes, refunds and Stripe's own invoice number/PDF on invoices (issue 15).

Revision ID: 0008
Revises: 0007
"""
from alembic import op
import sqlalchemy as sa

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("invoices", schema=None) as batch_op:
        batch_op.add_column(sa.Column("stripe_dispute_id", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("dispute_status", sa.String(length=40), nullable=True))
        batch_op.add_column(sa.Column("amount_refunded", sa.BigInteger(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("stripe_number", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("invoice_pdf_url", sa.Text(), nullable=True))


def downgrade():
    with op.batch_alter_table("invoices", schema=None) as batch_op:
        batch_op.drop_column("invoice_pdf_url")
        batch_op.drop_column("stripe_number")
        batch_op.drop_column("amount_refunded")
        batch_op.drop_column("dispute_status")
        batch_op.drop_column("stripe_dispute_id")

"""Billing run outcomes: how many tenants of a run ended with each result and reason (issue 12).

Revision ID: 0007
Revises: 0006
"""
from alembic import op
import sqlalchemy as sa

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "billing_run_outcomes",
        sa.Column("run_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("result", sa.String(length=20), nullable=False),
        sa.Column("reason", sa.String(length=40), nullable=False),
        sa.Column("tenants", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["billing_runs.id"], ondelete="CASCADE",
                                name=op.f("fk_billing_run_outcomes_run_id_billing_runs")),
        sa.PrimaryKeyConstraint("run_id", "result", "reason", name=op.f("pk_billing_run_outcomes")),
    )


def downgrade():
    op.drop_table("billing_run_outcomes")

"""Plan changes, credit notes, and what credits change on invoices (issue 17).

Revision ID: 0013
Revises: 0012
"""
from alembic import op
import sqlalchemy as sa

import app.models.base  # noqa: F401  (UTCDateTime columns)

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

BIGINT = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
UTC = app.models.base.UTCDateTime(timezone=True)
PENDING = "status = 'pending'"


def upgrade():
    with op.batch_alter_table("invoices", schema=None) as batch_op:
        batch_op.add_column(sa.Column("amount_credited", sa.BigInteger(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("balance_applied", sa.BigInteger(), server_default="0", nullable=False))
        batch_op.create_check_constraint(op.f("ck_invoices_credited_within_due"),
                                         "amount_credited >= 0 AND amount_credited <= amount_due")
        batch_op.create_check_constraint(op.f("ck_invoices_balance_applied_nonneg"), "balance_applied >= 0")

    op.create_table(
        "plan_changes",
        sa.Column("id", BIGINT, nullable=False),
        sa.Column("tenant_id", BIGINT, nullable=False),
        sa.Column("from_plan", sa.String(length=40), nullable=False),
        sa.Column("to_plan", sa.String(length=40), nullable=False),
        sa.Column("effective_on", sa.Date(), nullable=False),
        sa.Column("created_at", UTC, nullable=False),
        sa.Column("actor_user_id", BIGINT, nullable=True),
        sa.Column("source", sa.String(length=20), nullable=False),
        sa.CheckConstraint("from_plan <> to_plan", name=op.f("ck_plan_changes_changes_plan")),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], name=op.f("fk_plan_changes_tenant_id_tenants"),
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["from_plan"], ["plans.code"], name=op.f("fk_plan_changes_from_plan_plans"),
                                onupdate="CASCADE"),
        sa.ForeignKeyConstraint(["to_plan"], ["plans.code"], name=op.f("fk_plan_changes_to_plan_plans"),
                                onupdate="CASCADE"),
        sa.ForeignKeyConstraint(["actor_user_id"], ["users.id"], name=op.f("fk_plan_changes_actor_user_id_users"),
                                ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_plan_changes")),
        sa.UniqueConstraint("tenant_id", "effective_on", name=op.f("uq_plan_changes_tenant_id_effective_on")),
    )
    with op.batch_alter_table("plan_changes", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_plan_changes_tenant_id"), ["tenant_id"], unique=False)

    op.create_table(
        "credit_notes",
        sa.Column("id", BIGINT, nullable=False),
        sa.Column("tenant_id", BIGINT, nullable=False),
        sa.Column("invoice_id", BIGINT, nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("stripe_credit_note_id", sa.String(length=64), nullable=True),
        sa.Column("stripe_refund_id", sa.String(length=64), nullable=True),
        sa.Column("number", sa.String(length=64), nullable=True),
        sa.Column("request_key", sa.String(length=80), nullable=True),
        sa.Column("actor_user_id", BIGINT, nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", UTC, nullable=False),
        sa.Column("issued_at", UTC, nullable=True),
        sa.CheckConstraint("amount > 0", name=op.f("ck_credit_notes_amount_positive")),
        sa.CheckConstraint("kind in ('reduce','refund','account_credit')", name=op.f("ck_credit_notes_kind_known")),
        sa.CheckConstraint("status in ('pending','issued','failed')", name=op.f("ck_credit_notes_status_known")),
        sa.CheckConstraint("length(trim(reason)) > 0", name=op.f("ck_credit_notes_reason_given")),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], name=op.f("fk_credit_notes_tenant_id_tenants"),
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["invoice_id"], ["invoices.id"], name=op.f("fk_credit_notes_invoice_id_invoices"),
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["actor_user_id"], ["users.id"], name=op.f("fk_credit_notes_actor_user_id_users"),
                                ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_credit_notes")),
        sa.UniqueConstraint("stripe_credit_note_id", name=op.f("uq_credit_notes_stripe_credit_note_id")),
        sa.UniqueConstraint("request_key", name=op.f("uq_credit_notes_request_key")),
    )
    with op.batch_alter_table("credit_notes", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_credit_notes_tenant_id"), ["tenant_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_credit_notes_invoice_id"), ["invoice_id"], unique=False)
        batch_op.create_index("ix_credit_notes_pending", ["invoice_id"], unique=False,
                              postgresql_where=sa.text(PENDING), sqlite_where=sa.text(PENDING))


def downgrade():
    with op.batch_alter_table("credit_notes", schema=None) as batch_op:
        batch_op.drop_index("ix_credit_notes_pending", postgresql_where=sa.text(PENDING),
                            sqlite_where=sa.text(PENDING))
        batch_op.drop_index(batch_op.f("ix_credit_notes_invoice_id"))
        batch_op.drop_index(batch_op.f("ix_credit_notes_tenant_id"))
    op.drop_table("credit_notes")
    with op.batch_alter_table("plan_changes", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_plan_changes_tenant_id"))
    op.drop_table("plan_changes")
    with op.batch_alter_table("invoices", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("ck_invoices_credited_within_due"), type_="check")
        batch_op.drop_constraint(op.f("ck_invoices_balance_applied_nonneg"), type_="check")
        batch_op.drop_column("balance_applied")
        batch_op.drop_column("amount_credited")

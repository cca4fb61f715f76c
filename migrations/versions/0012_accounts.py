"""Account tokens (issue 14): single-use emailed links for password resets and team invitations.

Revision ID: 0012
Revises: 0011
"""
from alembic import op
import sqlalchemy as sa

import app.models.base  # noqa: F401  (UTCDateTime columns)

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

BIGINT = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
OPEN_INVITATION = "purpose = 'invitation' AND used_at IS NULL AND cancelled_at IS NULL"


def upgrade():
    op.create_table(
        "account_tokens",
        sa.Column("id", BIGINT, nullable=False),
        sa.Column("purpose", sa.String(length=20), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("tenant_id", BIGINT, nullable=True),
        sa.Column("user_id", BIGINT, nullable=True),
        sa.Column("email", sa.String(length=254), nullable=False),
        sa.Column("created_by_user_id", BIGINT, nullable=True),
        sa.Column("created_at", app.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("expires_at", app.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("used_at", app.models.base.UTCDateTime(timezone=True), nullable=True),
        sa.Column("cancelled_at", app.models.base.UTCDateTime(timezone=True), nullable=True),
        sa.CheckConstraint("purpose in ('password_reset','invitation')",
                           name=op.f("ck_account_tokens_purpose_known")),
        sa.CheckConstraint("purpose <> 'password_reset' OR user_id IS NOT NULL",
                           name=op.f("ck_account_tokens_reset_has_user")),
        sa.CheckConstraint("purpose <> 'invitation' OR tenant_id IS NOT NULL",
                           name=op.f("ck_account_tokens_invitation_has_tenant")),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], name=op.f("fk_account_tokens_tenant_id_tenants"),
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_account_tokens_user_id_users"),
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["created_by_user_id"], ["users.id"],
                                name=op.f("fk_account_tokens_created_by_user_id_users"), ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_account_tokens")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_account_tokens_token_hash")),
    )
    with op.batch_alter_table("account_tokens", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_account_tokens_tenant_id"), ["tenant_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_account_tokens_user_id"), ["user_id"], unique=False)
        batch_op.create_index("uq_account_tokens_open_invitation", ["tenant_id", "email"], unique=True,
                              postgresql_where=sa.text(OPEN_INVITATION), sqlite_where=sa.text(OPEN_INVITATION))


def downgrade():
    with op.batch_alter_table("account_tokens", schema=None) as batch_op:
        batch_op.drop_index("uq_account_tokens_open_invitation", postgresql_where=sa.text(OPEN_INVITATION),
                            sqlite_where=sa.text(OPEN_INVITATION))
        batch_op.drop_index(batch_op.f("ix_account_tokens_user_id"))
        batch_op.drop_index(batch_op.f("ix_account_tokens_tenant_id"))
    op.drop_table("account_tokens")

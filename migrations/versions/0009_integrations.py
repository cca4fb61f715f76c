"""Integrations (issue 16): service tokens, push endpoints, the entitlements outbox, tenants' entitlements state.

Revision ID: 0009
Revises: 0008
"""
from alembic import op
import sqlalchemy as sa

import app.models.base  # noqa: F401  (UTCDateTime columns)

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
STALE = "entitlements_state <> (status || ':' || dunning_stage)"


def _ts(name: str, nullable: bool = True) -> sa.Column:
    return sa.Column(name, app.models.base.UTCDateTime(timezone=True), nullable=nullable)


def upgrade():
    # SQLite cannot ADD COLUMN with a CURRENT_TIMESTAMP default: rebuild the table there (batch mode).
    recreate = "always" if op.get_bind().dialect.name == "sqlite" else "auto"
    with op.batch_alter_table("tenants", schema=None, recreate=recreate) as batch_op:
        batch_op.add_column(sa.Column("entitlements_state", sa.String(length=60), server_default="active:ok",
                                      nullable=False))
        batch_op.add_column(sa.Column("entitlements_updated_at", app.models.base.UTCDateTime(timezone=True),
                                      server_default=sa.text("CURRENT_TIMESTAMP"), nullable=False))
    # Existing tenants start as announced (no event for a state nobody changed), dated by their last stage move.
    op.execute("UPDATE tenants SET entitlements_state = status || ':' || dunning_stage, "
               "entitlements_updated_at = COALESCE(dunning_stage_since, created_at)")
    with op.batch_alter_table("tenants", schema=None) as batch_op:
        batch_op.create_index("ix_tenants_entitlements_stale", ["id"], unique=False,
                              postgresql_where=sa.text(STALE), sqlite_where=sa.text(STALE))
        batch_op.create_index("ix_tenants_entitlements_updated_at", ["entitlements_updated_at", "id"], unique=False)

    op.create_table(
        "service_tokens",
        sa.Column("id", ID, nullable=False),
        sa.Column("name", sa.String(length=120), nullable=False),
        sa.Column("scopes", sa.String(length=200), nullable=False),
        sa.Column("prefix", sa.String(length=16), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("created_by_user_id", ID, nullable=True),
        _ts("created_at", nullable=False),
        _ts("revoked_at"),
        _ts("last_used_at"),
        sa.ForeignKeyConstraint(["created_by_user_id"], ["users.id"], ondelete="SET NULL",
                                name=op.f("fk_service_tokens_created_by_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_service_tokens")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_service_tokens_token_hash")),
    )
    op.create_table(
        "integration_endpoints",
        sa.Column("id", ID, nullable=False),
        sa.Column("url", sa.String(length=2000), nullable=False),
        sa.Column("secret", sa.String(length=200), nullable=False),
        sa.Column("created_by_user_id", ID, nullable=True),
        _ts("created_at", nullable=False),
        _ts("disabled_at"),
        _ts("lease_until"),
        sa.ForeignKeyConstraint(["created_by_user_id"], ["users.id"], ondelete="SET NULL",
                                name=op.f("fk_integration_endpoints_created_by_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_integration_endpoints")),
    )
    op.create_table(
        "entitlement_events",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("tenant_id", ID, nullable=False),
        sa.Column("type", sa.String(length=60), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        _ts("created_at", nullable=False),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], ondelete="CASCADE",
                                name=op.f("fk_entitlement_events_tenant_id_tenants")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_entitlement_events")),
    )
    with op.batch_alter_table("entitlement_events", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_entitlement_events_tenant_id"), ["tenant_id"], unique=False)
    op.create_table(
        "integration_deliveries",
        sa.Column("id", ID, nullable=False),
        sa.Column("event_id", sa.String(length=40), nullable=False),
        sa.Column("endpoint_id", ID, nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        _ts("next_attempt_at", nullable=False),
        _ts("last_attempt_at"),
        sa.Column("last_status_code", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        _ts("delivered_at"),
        _ts("created_at", nullable=False),
        sa.ForeignKeyConstraint(["event_id"], ["entitlement_events.id"], ondelete="CASCADE",
                                name=op.f("fk_integration_deliveries_event_id_entitlement_events")),
        sa.ForeignKeyConstraint(["endpoint_id"], ["integration_endpoints.id"], ondelete="CASCADE",
                                name=op.f("fk_integration_deliveries_endpoint_id_integration_endpoints")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_integration_deliveries")),
        sa.UniqueConstraint("event_id", "endpoint_id", name=op.f("uq_integration_deliveries_event_id_endpoint_id")),
    )
    with op.batch_alter_table("integration_deliveries", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_integration_deliveries_event_id"), ["event_id"], unique=False)
        batch_op.create_index("ix_integration_deliveries_pending", ["endpoint_id", "id"], unique=False,
                              postgresql_where=sa.text("status = 'pending'"),
                              sqlite_where=sa.text("status = 'pending'"))


def downgrade():
    with op.batch_alter_table("integration_deliveries", schema=None) as batch_op:
        batch_op.drop_index("ix_integration_deliveries_pending")
        batch_op.drop_index(batch_op.f("ix_integration_deliveries_event_id"))
    op.drop_table("integration_deliveries")
    with op.batch_alter_table("entitlement_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_entitlement_events_tenant_id"))
    op.drop_table("entitlement_events")
    op.drop_table("integration_endpoints")
    op.drop_table("service_tokens")
    with op.batch_alter_table("tenants", schema=None) as batch_op:
        batch_op.drop_index("ix_tenants_entitlements_updated_at")
        batch_op.drop_index("ix_tenants_entitlements_stale")
        batch_op.drop_column("entitlements_updated_at")
        batch_op.drop_column("entitlements_state")

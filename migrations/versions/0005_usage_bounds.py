"""Usage ingestion bounds (issue 20): no schema change.

The bounds (quantity 1..10^9, billable dates, conflicting ids) are checked where events arrive, not by CHECK
constraints: rows stored before them (quantity 0, up to 10^12) must stay valid, and the rollup copes with
them (app/services/usage.py). The revision stays so that 0006 keeps its parent.

Revision ID: 0005
Revises: 0004
"""
from alembic import op  # noqa: F401
import sqlalchemy as sa  # noqa: F401

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade():
    pass


def downgrade():
    pass

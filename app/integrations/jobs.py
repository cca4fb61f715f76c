"""Thin RQ entry points for entitlements push (queue "default")."""
from __future__ import annotations

from app.jobs import job


@job
def deliver_entitlement_events() -> int:
    """Woken after a commit that queued events: deliver until nothing new was queued meanwhile."""
    from app.services.integrations import deliver_until_idle

    return deliver_until_idle()


@job
def sweep_entitlements() -> dict:
    """Periodic: announce changes made behind the ORM's back, then retry whatever is due."""
    from app.extensions import db
    from app.services.entitlements import publish_changes
    from app.services.integrations import deliver_due

    announced = publish_changes()
    db.session.commit()
    run = deliver_due()
    return {"announced": announced, "delivered": run.delivered, "failed": run.failed}

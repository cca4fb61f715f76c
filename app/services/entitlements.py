"""What a tenant may use right now — the one place telephony, SMS and the admin UI ask."""
from __future__ import annotations

from dataclasses import asdict, dataclass

from app.models import DunningStage, Tenant, TenantStatus


@dataclass(frozen=True)
class Entitlements:
    telephony: bool
    sms_outbound: bool
    admin_access: str  # "full" | "billing_only"

    def as_dict(self) -> dict:
        return asdict(self)


def entitlements_for(tenant: Tenant) -> Entitlements:
    """Compute a tenant's entitlements from its status and dunning stage."""
    if tenant.status != TenantStatus.ACTIVE:
        return Entitlements(telephony=False, sms_outbound=False, admin_access="billing_only")
    stage = tenant.dunning_stage
    suspended = stage in (DunningStage.SUSPENDED, DunningStage.RESTRICTED)
    return Entitlements(
        telephony=not suspended,
        sms_outbound=not suspended,
        admin_access="billing_only" if stage == DunningStage.RESTRICTED else "full",
    )

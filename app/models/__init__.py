"""All models, importable from one place (Alembic autogenerate sees every table through this)."""
from app.models.accounts import AccountToken, TokenPurpose
from app.models.base import TenantScoped, utcnow
from app.models.credits import CreditKind, CreditNote, CreditNoteStatus, PlanChange, owed  # issue 17
from app.models.billing import (AttemptStatus, BillingRun, BillingRunOutcome, Invoice, InvoiceLine, InvoiceSequence,
                                InvoiceStatus, PaymentAttempt)
from app.models.events import AuditLog, DunningEvent, OutboxEmail, WebhookEvent
from app.models.integrations import (DeliveryStatus, EntitlementEvent, IntegrationDelivery, IntegrationEndpoint,
                                     ServiceToken)
from app.models.tenancy import (ApiKey, DunningStage, Plan, PlanPrice, Role, Tenant, TenantStatus, User,
                                UserSession)
from app.models.usage import UsageEvent, UsageRollupDaily

__all__ = [
    "AccountToken", "TokenPurpose",
    "CreditKind", "CreditNote", "CreditNoteStatus", "PlanChange", "owed",  # issue 17
    "ApiKey", "AttemptStatus", "AuditLog", "BillingRun", "BillingRunOutcome", "DunningEvent", "DunningStage",
    "DeliveryStatus", "EntitlementEvent", "IntegrationDelivery", "IntegrationEndpoint", "ServiceToken",
    "Invoice", "InvoiceLine", "InvoiceSequence", "InvoiceStatus", "OutboxEmail", "PaymentAttempt", "Plan",
    "PlanPrice", "Role", "Tenant",
    "TenantScoped", "TenantStatus", "UsageEvent", "UsageRollupDaily", "User", "UserSession", "WebhookEvent", "utcnow",
]

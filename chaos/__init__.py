"""The month-end chaos run: invoices for many tenants while workers die, Redis restarts and Stripe misbehaves."""

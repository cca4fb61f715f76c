"""The business: one module per domain, functions named by verb."""

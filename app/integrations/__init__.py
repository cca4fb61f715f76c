"""Blueprint package: the root Integrations page, its CLI group and the deliverer's jobs."""

"""Blueprint package: the root admin's revenue report and the invoice exports (issue 18)."""

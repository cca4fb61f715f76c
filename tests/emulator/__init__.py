"""Tests of the local Stripe emulator (stripe_emulator package)."""

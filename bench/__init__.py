"""Benchmarks: `python -m bench` (or `make bench`) runs each one and prints `BENCH <name> <value> <unit>` lines."""

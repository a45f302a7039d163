"""Benchmarks: `make bench` (python -m tests.bench) runs every bench_*.py module's `run()`; not collected by pytest."""

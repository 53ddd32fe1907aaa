"""Benchmarks: ``python -m ssd_jax.benchmarks.<name>``; each prints a table and writes JSON."""

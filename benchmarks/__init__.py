"""Benchmarks, run from the repository root: ``python -m benchmarks.<name>``; each prints
a table and writes a JSON report (:func:`benchmarks.common.write_report`)."""

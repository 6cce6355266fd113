"""Benchmarks for Metronome; run one with ``python -m benchmarks.<name>`` (see README.md).

Not tests: pytest never collects this package (``testpaths`` is ``tests/``).
"""

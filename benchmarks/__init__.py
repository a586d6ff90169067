"""Throughput benchmarks: `python -m benchmarks [NAME ...] [--list] [--json F]`.

Every `benchmarks/bench_*.py` module defines `BENCHMARKS`, a list of
`benchmarks.harness.Benchmark`; the harness discovers them, so adding a
benchmark never touches this package's other files.
"""

"""Fixtures for tests and benchmarks (synthetic inputs, message round trips, tiny checkpoints).

Not product code: reachable for tests and benches, never imported by the nodes or tools.
"""

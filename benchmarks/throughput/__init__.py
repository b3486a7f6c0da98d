"""Throughput benchmark: the limit, the seed prototype's design, TorchServe (stock and ours), the full stack.

Run it with ``make bench`` (or ``make bench-quick``); see :mod:`benchmarks.throughput.__main__`.
"""

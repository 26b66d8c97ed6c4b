"""Benchmarks: `python -m bench.throughput` (pipeline vs raw aiokafka pass-through)."""

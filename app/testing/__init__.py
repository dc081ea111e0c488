"""Tiny random checkpoints for tests, benchmarks and the offline trial."""

"""Benchmarks: scripts that print numbers (never timed assertions). Run ``python -m benchmarks --help``."""

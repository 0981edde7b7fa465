"""Benchmarks: each prints both sides of a comparison and their ratio. Never run as tests."""

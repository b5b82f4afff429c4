"""Benchmarks: each script records its results under benchmarks/results/."""

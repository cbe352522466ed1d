"""Benchmark tooling: the experiment matrix, hyper-parameter search, tables, figures and vector export."""

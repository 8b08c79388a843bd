"""Benchmarks for securemail (not part of the installed package; run from the repo root)."""

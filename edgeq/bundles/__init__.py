"""Bundles: writer and checks, archives, and the payloads shipped inside (run.py, C++ runner, schema)."""

"""Codec tests: per-adapter edge cases, differential tests against the reference libraries."""

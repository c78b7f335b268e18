"""Benchmark suites behind ``qflare bench`` (JSON results, floors measured in the same process)."""

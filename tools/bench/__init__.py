"""Benchmark sections; each module exposes ``run(quick: bool) -> list[dict]`` for tools/benchmark.py."""

"""Benchmark subcommands of tools/benchmark.py; each module has `add_arguments(parser)` and `run(args)`."""

#!/usr/bin/env python
"""Benchmarks: `python tools/benchmark.py SUBCOMMAND [options]`, one per entry of SUBCOMMANDS below.

Each subcommand prints absolute figures with the machine and thread count, and ratios against a baseline
measured in the same run (never compare absolute times across runs). Subcommands live in tools/benchmarks/.
"""
import argparse
import importlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

SUBCOMMANDS = {
    "model": "action-model CPU forward time and GFLOP/s against a same-run GEMM",
    "video": "decode-and-sample throughput against bare PyAV decoding; peak RSS vs video length",
    "detector": "seconds per 720p keyframe for each torchvision person detector",
    "pipeline": "end-to-end seconds per keyframe against the models' compute alone, per stage",
    "eval": "ava-eval wall time and peak RSS against the official ActivityNet evaluator",
    "batch": "videos/s with 1 vs 2 local workers and with the Ray engine",
    "memory": "resident memory of a worker after building an ActionDetector (fast / eager), peak",
    "train": "ava-train s/iteration (data wait vs compute) and peak memory for R50 vs a bare step; data clips/s",
}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in SUBCOMMANDS:
        listing = "\n".join(f"  {name:9s} {text}" for name, text in SUBCOMMANDS.items())
        print(f"usage: benchmark.py {{{','.join(SUBCOMMANDS)}}} [options]\n\n{listing}", file=sys.stderr)
        return 0 if argv[:1] in (["-h"], ["--help"]) else 2
    name = argv[0]
    module = importlib.import_module(f"benchmarks.{name}")  # only the chosen one: each has its own dependencies
    parser = argparse.ArgumentParser(prog=f"benchmark.py {name}", description=module.__doc__)
    module.add_arguments(parser)
    module.run(parser.parse_args(argv[1:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Benchmarks: `python tools/benchmark.py {model,video,detector,pipeline,eval,batch} [options]`.

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
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    for name, help_text in SUBCOMMANDS.items():
        module = importlib.import_module(f"benchmarks.{name}")
        sub = commands.add_parser(name, help=help_text, description=module.__doc__)
        module.add_arguments(sub)
        sub.set_defaults(run=module.run)
    args = parser.parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main()

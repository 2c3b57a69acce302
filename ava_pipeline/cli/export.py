"""ava-export: write the action model (or, with --detector, the torchvision person detector) as ONNX.

The action model file has inputs ``slow``, ``fast`` (SlowFast only) and ``boxes`` (K, 5) ``[batch_index, x1,
y1, x2, y2]`` in input pixels, and output ``probs`` (K, C) sigmoid probabilities; batch, height, width and
box count are dynamic, and the metadata carries the config, class ids and names and the preprocessing.
After writing, the file is run once by onnxruntime (when installed) on sample inputs and compared with torch.

Exit status: 0 written, 2 usage error (bad option, unusable model / weights, missing onnx package).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from ..errors import AvaPipelineError
from .common import OneLineParser, UsageError, parse_and_run, refuse_overwriting_inputs

PROG = "ava-export"


def opset_number(text: str) -> int:
    from ..export import MAX_OPSET, MIN_OPSET

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if not MIN_OPSET <= value <= MAX_OPSET:
        raise argparse.ArgumentTypeError(f"opset {value} is not supported; use {MIN_OPSET}..{MAX_OPSET}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from ..export import DEFAULT_OPSET

    parser = OneLineParser(prog=PROG, description=__doc__.split("\n\n")[0],
                     epilog="Exit status: 0 written, 2 usage error.")
    model = parser.add_mutually_exclusive_group()
    model.add_argument("--model", metavar="NAME", help="zoo model name (default: the best zoo model)")
    model.add_argument("--config", metavar="YAML", help="model config: ours or PySlowFast's AVA YAML unchanged")
    parser.add_argument("--weights", metavar="FILE", help="local checkpoint (.pyth/.pkl/.pt) instead of the config's "
                        "weights; with --detector: the detector's state dict (default: its COCO weights)")
    parser.add_argument("--detector", action="store_true",
                        help="export the torchvision person detector instead of the action model")
    parser.add_argument("--detector-model", metavar="NAME", help="torchvision detector to export with --detector "
                        "(default fasterrcnn_resnet50_fpn_v2)")
    parser.add_argument("--out", required=True, type=Path, metavar="FILE", help="the .onnx file to write")
    parser.add_argument("--opset", type=opset_number, default=DEFAULT_OPSET, metavar="N",
                        help=f"ONNX opset (default {DEFAULT_OPSET})")
    parser.add_argument("--no-check", action="store_true",
                        help="do not compare onnxruntime with torch on sample inputs after writing")
    parser.add_argument("--quiet", action="store_true", help="no summary line")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser


def _check_usage(args: argparse.Namespace) -> None:
    if args.detector and (args.model or args.config):
        raise UsageError("--detector exports the person detector: drop --model / --config (choose the detector "
                         "with --detector-model)")
    if args.detector_model and not args.detector:
        raise UsageError("--detector-model is only used with --detector")
    if args.weights is not None and not Path(args.weights).is_file():
        from ..weights import ZOO

        if args.detector or args.weights not in ZOO:
            raise UsageError(f"--weights {args.weights}: file not found")
    if args.out.is_dir():
        raise UsageError(f"--out {args.out}: is a folder; give the .onnx file to write")
    if not args.out.parent.is_dir():
        raise UsageError(f"--out {args.out}: the folder {args.out.parent} does not exist")
    inputs = [(f"the --{name} file {getattr(args, name)}", getattr(args, name)) for name in ("config", "weights")
              if getattr(args, name) is not None]
    refuse_overwriting_inputs([("--out", args.out)], inputs)


def _export_action_model(args) -> str:
    from ..api import load_action_model
    from ..export import export_action_model, require
    from ..weights import DEFAULT_MODEL

    require("onnx", "ava-export")
    model = load_action_model(args.config or args.model or DEFAULT_MODEL, weights=args.weights)
    export_action_model(model, model.config, args.out, opset=args.opset, weights_sha256=model.weights_sha256)
    summary = f"{PROG}: wrote {args.out} ({model.config.name}, {model.config.model.arch}, opset {args.opset})"
    if not args.no_check:
        summary += f"; {_check_action_model(model, args.out)}"
    return summary


def _check_action_model(model, path: Path) -> str:
    """Run the file with onnxruntime at two sizes and compare with torch; raise when they disagree."""
    import importlib.util

    import torch

    from ..export import sample_action_inputs
    from ..models.onnx_runtime import OnnxActionModel

    if importlib.util.find_spec("onnxruntime") is None:
        return "not checked (onnxruntime is not installed)"
    runtime = OnnxActionModel(path)
    worst = 0.0
    for size, boxes in (((64, 96), 3), ((96, 64), 5)):
        sample = sample_action_inputs(model.config.model, height=size[0], width=size[1], boxes=boxes, seed=1)
        pathways = [sample[name] for name in runtime.input_names[:-1]]
        with torch.no_grad():
            expected = model(pathways, sample["boxes"])
        worst = max(worst, (runtime(pathways, sample["boxes"]) - expected).abs().max().item())
    if worst > 1e-4:
        raise AvaPipelineError(f"{path}: onnxruntime differs from torch by {worst:.2e} on sample inputs (more than "
                           "1e-4); the export is not faithful, please report this with the config")
    return f"onnxruntime matches torch (max |diff| {worst:.1e} on two sample sizes)"


def _export_detector(args) -> str:
    from ..detector import DEFAULT_TORCHVISION_MODEL, build_torchvision_detector
    from ..export import export_person_detector, require

    require("onnx", "ava-export --detector")
    name = args.detector_model or DEFAULT_TORCHVISION_MODEL
    detector = build_torchvision_detector(name, weights=args.weights, fast=False)  # the eager model exports
    export_person_detector(detector, args.out, opset=args.opset)
    return f"{PROG}: wrote {args.out} (person detector {name}, opset {args.opset})"


def run(args: argparse.Namespace) -> int:
    _check_usage(args)
    summary = _export_detector(args) if args.detector else _export_action_model(args)
    if not args.quiet:
        print(summary, file=sys.stderr)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console entry point of ``ava-export``; returns the exit status (see module docstring)."""
    return parse_and_run(build_parser(), run, PROG, argv)


if __name__ == "__main__":
    sys.exit(main())

"""Resident memory of a worker holding an ActionDetector: RSS after building it (fast and eager), and the peak.

Each figure comes from a fresh Python process that builds ``ActionDetector(config=..., weights=..., boxes=...)``
for the packaged R101 config (SLOWFAST_32x2_R101_50_50) with seeded random weights written here in PySlowFast's
layout, and precomputed boxes (no person detector in memory; ``--detector``: the torchvision v2 detector with
seeded random weights instead), then reads VmRSS / VmHWM from /proc/self/status.
``--compare PATH`` also measures another checkout of the package (e.g. a worktree of an older commit) in the same
run, so that before/after are measured on one machine state.
"""
import os
import tempfile
from pathlib import Path

from .common import machine_line, python_json

_PROBE = r"""
import json, sys
import torch, torchvision
from ava_pipeline.pipeline import ActionDetector

def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith(key + ":"))

base = status("VmRSS")
config, weights, boxes, fast, detector_weights = sys.argv[1:6]
person_detector = dict(boxes=boxes) if boxes != "-" else dict(
    detector="torchvision", detector_options={"model": "fasterrcnn_resnet50_fpn_v2", "weights": detector_weights})
detector = ActionDetector(config=config, weights=weights, fast=fast == "fast", **person_detector)
print(json.dumps({"rss_mb": status("VmRSS"), "peak_mb": status("VmHWM"), "imports_mb": base,
                  "package": __import__("ava_pipeline").__file__}))
"""


def add_arguments(parser):
    parser.add_argument("--compare", metavar="PATH", help="root of another ava-pipeline checkout to measure too")
    parser.add_argument("--config", default="SLOWFAST_32x2_R101_50_50", help="packaged config (default R101)")
    parser.add_argument("--detector", action="store_true", help="with the torchvision person detector "
                        "(fasterrcnn_resnet50_fpn_v2, random weights) instead of precomputed boxes")


def _weights(config_name: str, folder: Path) -> Path:
    import torch

    from ava_pipeline.config import load_config
    from ava_pipeline.models import build_action_model

    torch.manual_seed(0)
    model = build_action_model(load_config(config_name).model)
    path = folder / "weights.pyth"
    torch.save({"model_state": model.state_dict(), "epoch": 1}, path)
    return path


def _measure(root: str, args: list[str]) -> dict:
    env = {**os.environ, "PYTHONPATH": root}
    return python_json(_PROBE, *args, env=env, cwd=tempfile.gettempdir())


def run(args):
    print(machine_line())
    this = str(Path(__file__).resolve().parents[2])
    with tempfile.TemporaryDirectory() as folder:
        weights = _weights(args.config, Path(folder))
        boxes = Path(folder) / "boxes.csv"
        boxes.write_text("movie,1,0.1,0.1,0.5,0.9,,0.99\n")
        detector_weights = "-"
        if args.detector:
            import torch

            from ava_pipeline.detector.torchvision import build_torchvision_model

            torch.manual_seed(0)
            detector_weights = Path(folder) / "detector.pth"
            torch.save(build_torchvision_model("fasterrcnn_resnet50_fpn_v2").state_dict(), detector_weights)
            boxes = "-"
        print(f"{args.config}: checkpoint {weights.stat().st_size / 2**20:.0f} MB"
              + (f"; detector fasterrcnn_resnet50_fpn_v2 {detector_weights.stat().st_size / 2**20:.0f} MB"
                 if args.detector else "; precomputed boxes"))
        checkouts = [("this checkout", this)] + ([("--compare", args.compare)] if args.compare else [])
        for label, root in checkouts:
            for mode in ("fast", "eager"):
                figures = _measure(root, [args.config, str(weights), str(boxes), mode, str(detector_weights)])
                print(f"{label:14s} {mode:5s}: RSS {figures['rss_mb']:5.0f} MB after building, of which "
                      f"{figures['rss_mb'] - figures['imports_mb']:4.0f} MB beyond importing torch; peak "
                      f"{figures['peak_mb']:5.0f} MB ({Path(figures['package']).parent})")

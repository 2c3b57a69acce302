"""Seconds per 720p keyframe for each torchvision person detector on this machine's CPU (or --device): the eager
torchvision model against the fast inference path (ava_pipeline/detector/fast.py), in the same run.

The models get random weights (no download needed): the compute is fixed by the architecture and the input size;
only the NMS steps depend on the weights, and their inputs are capped (top 1000 proposals). Eager and fast calls
alternate, --repeats of each after --warmup calls of each; figures are medians, the speedup the median of the
per-repeat ratios (robust to a change of machine load between repeats). The last column compares each model's
fast time with the default model's eager time. --batch N times calls with N keyframes (seconds are per keyframe).
"""
import argparse
import statistics
import time

import numpy as np

from .common import machine_line


def add_arguments(parser):
    from ava_pipeline.detector import TORCHVISION_MODELS

    parser.add_argument("--models", nargs="+", choices=list(TORCHVISION_MODELS), default=list(TORCHVISION_MODELS),
                        help="torchvision detectors to time (default: all)")
    parser.add_argument("--size", default="1280x720", metavar="WxH", help="keyframe size (default 1280x720)")
    parser.add_argument("--detector-size", type=int, metavar="SHORT_SIDE",
                        help="detector input short side (default: each model's own, 800 or 320)")
    parser.add_argument("--batch", type=int, default=1, help="keyframes per detect call (default 1)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls of each path per model (default 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls of each path first (default 1)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    parser.add_argument("--precision", choices=("fp32", "fp16", "bf16"), default="fp32",
                        help="fast path's autocast precision (fp16/bf16 for GPUs; default fp32)")
    parser.add_argument("--eager", action=argparse.BooleanOptionalAction, default=True,
                        help="also time the eager model (default; --no-eager times the fast path alone)")


def _timed(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def run(args):
    import torch

    from ava_pipeline.detector import DEFAULT_TORCHVISION_MODEL, TorchvisionPersonDetector, build_torchvision_model

    if args.threads:
        torch.set_num_threads(args.threads)
    width, height = (int(v) for v in args.size.lower().split("x"))
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(args.batch)]
    print(machine_line(torch.get_num_threads()))
    print(f"keyframes {width}x{height} uint8 RGB, {args.batch} per call, device {args.device}, random weights "
          f"(timing only), fast path {args.precision}; eager and fast calls alternate, medians of {args.repeats} "
          f"after {args.warmup} warm-up call(s) of each")
    rows = {}
    for name in args.models:
        torch.manual_seed(0)
        network = build_torchvision_model(name, input_min_size=args.detector_size)
        paths = {"fast": TorchvisionPersonDetector(network, name=name, weights="random", weights_sha256=None,
                                                   device=args.device, precision=args.precision)}
        if args.eager:
            paths["eager"] = TorchvisionPersonDetector(network, name=name, weights="random", weights_sha256=None,
                                                       device=args.device, fast=False)
        transform = paths["fast"].model.transform

        def call(detector):
            found = detector.detect(images)
            if detector.device.type == "cuda":
                torch.cuda.synchronize(detector.device)
            return found

        for _ in range(args.warmup):
            for detector in paths.values():
                call(detector)
        times = {path: [] for path in paths}
        for _ in range(args.repeats):
            for path, detector in paths.items():
                times[path].append(_timed(lambda: call(detector))[0] / args.batch)
        rows[name] = times
        line = f"{name:38s} input {transform.min_size[0]}/{transform.max_size}"
        for path in ("eager", "fast"):
            if path in times:
                line += f"  {path} {statistics.median(times[path]):7.3f} s/keyframe"
        if "eager" in times:
            line += f"  speedup {statistics.median(e / f for e, f in zip(times['eager'], times['fast'])):.2f}x"
        print(line + f"  (fast runs: {', '.join(f'{t:.2f}' for t in times['fast'])})", flush=True)
    baseline = DEFAULT_TORCHVISION_MODEL if DEFAULT_TORCHVISION_MODEL in rows else next(iter(rows))
    reference = statistics.median(rows[baseline].get("eager", rows[baseline]["fast"]))
    label = "eager" if "eager" in rows[baseline] else "fast"
    print(f"fast time relative to {baseline} {label} ({reference:.3f} s): "
          + ", ".join(f"{name} {statistics.median(t['fast']) / reference:.2f}x" for name, t in rows.items()))

"""Seconds per 720p keyframe for each torchvision person detector on this machine's CPU (or --device).

The models get random weights (no download needed): the compute is fixed by the architecture and the input size;
only the NMS steps depend on the weights, and their inputs are capped (top 1000 proposals). Each figure is
the median of --repeats single-image calls after --warmup calls; the ratio is against the default model
measured in the same run.
"""
import numpy as np

from .common import machine_line, median_time


def add_arguments(parser):
    from ava_pipeline.detector import TORCHVISION_MODELS

    parser.add_argument("--models", nargs="+", choices=list(TORCHVISION_MODELS), default=list(TORCHVISION_MODELS),
                        help="torchvision detectors to time (default: all)")
    parser.add_argument("--size", default="1280x720", metavar="WxH", help="keyframe size (default 1280x720)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per model (default 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls first (default 1)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")


def run(args):
    import torch

    from ava_pipeline.detector import (DEFAULT_TORCHVISION_MODEL, TorchvisionPersonDetector,
                                       build_torchvision_model)

    if args.threads:
        torch.set_num_threads(args.threads)
    width, height = (int(v) for v in args.size.lower().split("x"))
    image = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    print(machine_line(torch.get_num_threads()))
    print(f"keyframe {width}x{height} uint8 RGB, device {args.device}, random weights (timing only), "
          f"median of {args.repeats} after {args.warmup} warm-up")
    seconds = {}
    for name in args.models:
        torch.manual_seed(0)
        detector = TorchvisionPersonDetector(build_torchvision_model(name), name=name, weights="random",
                                             weights_sha256=None, device=args.device)
        transform = detector.model.transform

        def call():
            detector.detect([image])
            if detector.device.type == "cuda":
                torch.cuda.synchronize(detector.device)

        seconds[name] = median_time(call, repeats=args.repeats, warmup=args.warmup)
        print(f"{name:40s} input {transform.min_size[0]}/{transform.max_size}  "
              f"{seconds[name]:7.3f} s/keyframe  {1 / seconds[name]:6.2f} keyframes/s", flush=True)
    baseline = DEFAULT_TORCHVISION_MODEL if DEFAULT_TORCHVISION_MODEL in seconds else next(iter(seconds))
    print(f"time relative to {baseline}: "
          + ", ".join(f"{name} {value / seconds[baseline]:.2f}x" for name, value in seconds.items()))

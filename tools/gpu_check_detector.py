#!/usr/bin/env python
"""GPU check of the torchvision detector's fast path: eager vs fast agreement and timings on CUDA (< 2 minutes).

    python tools/gpu_check_detector.py [--model fasterrcnn_resnet50_fpn_v2] [--device cuda] [--cpu-threads 2]

Builds the model with seeded random weights (no download) whose person scores spread over (0, 1) on the
check's synthetic 1280x720 frames (random norm statistics; the classifier's person row set along the main
direction of variation of the box features), then on the device:

* agreement: the persons of the eager torchvision model against the fast path in float32 (the bar: same
  persons, boxes within 0.05 px, scores within 1e-4) and under fp16 / bf16 autocast (reported, not judged:
  reduced precision moves boxes by more than rounding);
* timings: seconds per keyframe of each path, one keyframe per call and --batch keyframes per call.

With --cpu-threads N it also times eager vs fast float32 on the CPU with N threads (one keyframe per call).
Prints one line per figure. Random weights give many overlapping persons with near-equal scores, so NMS meets
near-ties that float rounding decides (eager torchvision on 1 vs 2 CPU threads already keeps other boxes for a
tenth of them); the check therefore prints that noise floor too (eager on the CPU vs eager on the device) and
exits 1 only when the float32 fast path matches clearly fewer persons than the floor (and fewer than 99%).
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BOX_PX, SCORE = 0.05, 1e-4


def frames(count, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        coarse = rng.integers(0, 256, (90, 160, 3)).repeat(8, 0).repeat(8, 1)
        out.append(np.clip(coarse + rng.integers(-40, 40, (720, 1280, 3)), 0, 255).astype(np.uint8))
    return out


def spread_out_model(name, images):
    import torch
    from torch import nn
    from torchvision.ops import FrozenBatchNorm2d

    from ava_pipeline.detector import build_torchvision_model

    torch.manual_seed(0)
    model = build_torchvision_model(name)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.BatchNorm2d, FrozenBatchNorm2d)):
                for tensor, low, high in ((module.weight, 0.5, 1.5), (module.bias, -0.2, 0.2),
                                          (module.running_mean, -0.2, 0.2), (module.running_var, 0.5, 2.0)):
                    tensor.copy_(torch.empty_like(tensor).uniform_(low, high, generator=generator))
            if "mobilenet" in name and isinstance(module, nn.Conv2d) and module.groups == 1:
                nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu", generator=generator)
        captured = []
        hook = model.roi_heads.box_predictor.register_forward_pre_hook(lambda _, args: captured.append(args[0]))
        model.eval()(tensors(images, "cpu"))
        hook.remove()
        features = torch.cat(captured).flatten(1)
        classifier = model.roi_heads.box_predictor.cls_score
        others = classifier(features)
        others[:, 1] = -torch.inf
        direction = torch.linalg.svd(features - features.mean(0), full_matrices=False).Vh[0]
        projection = features @ direction
        scale = 1.0 / projection.std()
        classifier.weight[1] = direction * scale
        classifier.bias[1] = (torch.logsumexp(others, 1) - projection * scale).mean()
    model.roi_heads.score_thresh = 0.3
    model.roi_heads.detections_per_img = 100_000
    return model


def tensors(images, device):
    import torch

    return [torch.from_numpy(image).to(device).permute(2, 0, 1).float() / 255 for image in images]


def persons(model, images, device):
    import torch

    with torch.inference_mode():
        outputs = model(tensors(images, device))
    return [(o["boxes"][o["labels"] == 1].float().cpu().numpy(), o["scores"][o["labels"] == 1].float().cpu().numpy())
            for o in outputs]


def agreement(found, expected):
    """(persons found, persons expected, expected persons matched one-to-one by a found person within the bar:
    box within 0.05 px and score within 1e-4, max box difference px and max score difference of those)."""
    counts, matched, box_diff, score_diff = [0, 0], 0, 0.0, 0.0
    for (boxes, scores), (want_boxes, want_scores) in zip(found, expected):
        counts[0] += len(scores)
        counts[1] += len(want_scores)
        unused = np.ones(len(scores), bool)
        for box, score in zip(want_boxes, want_scores):
            box_gap, score_gap = np.abs(boxes - box).max(1), np.abs(scores - score)
            close = unused & (box_gap <= BOX_PX) & (score_gap <= SCORE)
            if close.any():
                best = int(np.flatnonzero(close)[np.argmin(box_gap[close])])
                unused[best] = False
                matched += 1
                box_diff, score_diff = max(box_diff, float(box_gap[best])), max(score_diff, float(score_gap[best]))
    return counts[0], counts[1], matched, box_diff, score_diff


def describe(result):
    found, expected, matched, box_diff, score_diff = result
    return (f"{found} persons vs eager's {expected}, {matched} matched within 0.05 px / 1e-4 (max box diff "
            f"{box_diff:.4f} px, max score diff {score_diff:.2e} among them)")


def seconds(fn, device, repeats, warmup=1):
    import torch

    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="fasterrcnn_resnet50_fpn_v2")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch", type=int, default=4, help="keyframes per call in the batched timing")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cpu-threads", type=int, help="also time eager vs fast on the CPU with N threads")
    args = parser.parse_args()

    import torch

    from ava_pipeline.detector.fast import optimize_detector

    images = frames(args.batch)
    model = spread_out_model(args.model, images[:2])
    print(f"{args.model}, 1280x720 frames, torch {torch.__version__}, device {args.device}"
          + (f" ({torch.cuda.get_device_name(args.device)})" if args.device.startswith("cuda") else ""), flush=True)
    failed = False
    if args.device != "cpu":
        import copy

        model_on_cpu = copy.deepcopy(model)
        eager = model.to(args.device)
        expected = persons(eager, images, args.device)
        count = sum(len(s) for _, s in expected)
        print(f"eager: {count} persons on {len(images)} frames (score >= 0.3)")
        reference = agreement(persons(model_on_cpu, images, "cpu"), expected)
        print(f"noise floor, eager on CPU vs eager on {args.device}: {describe(reference)}", flush=True)
        paths = {"eager": eager}
        for label, dtype in (("fast fp32", None), ("fast fp16", torch.float16), ("fast bf16", torch.bfloat16)):
            paths[label] = optimize_detector(eager, device=args.device, dtype=dtype)
            result = agreement(persons(paths[label], images, args.device), expected)
            if dtype is None:  # fails when clearly worse than the noise floor
                failed |= result[2] < min(0.99 * result[1], reference[2] - 0.05 * reference[1])
            print(f"{label}: {describe(result)}", flush=True)
        for label, path in paths.items():
            single = seconds(lambda: path(tensors(images[:1], args.device)), args.device, args.repeats)
            batched = seconds(lambda: path(tensors(images, args.device)), args.device, args.repeats) / len(images)
            print(f"{label:10s} {single * 1000:8.1f} ms/keyframe one per call, {batched * 1000:8.1f} ms/keyframe "
                  f"{len(images)} per call", flush=True)
        model = model.to("cpu")
    if args.cpu_threads:
        torch.set_num_threads(args.cpu_threads)
        fast = optimize_detector(model)
        expected = persons(model, images[:1], "cpu")
        print(f"CPU fast fp32: {describe(agreement(persons(fast, images[:1], 'cpu'), expected))}")
        ratios, eager_times, fast_times = [], [], []
        for _ in range(max(2, args.repeats // 2)):  # alternating: a change of load hits both
            eager_times.append(seconds(lambda: model(tensors(images[:1], "cpu")), "cpu", 1, warmup=0))
            fast_times.append(seconds(lambda: fast(tensors(images[:1], "cpu")), "cpu", 1, warmup=0))
            ratios.append(eager_times[-1] / fast_times[-1])
        print(f"CPU {args.cpu_threads} threads: eager {statistics.median(eager_times):.3f} s/keyframe, fast "
              f"{statistics.median(fast_times):.3f} s/keyframe, speedup {statistics.median(ratios):.2f}x", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""Action-model CPU forward time: plain eager model (PySlowFast's structure) against
`optimize_for_inference`, on the same random weights and input, with the achieved GFLOP/s against a GEMM
(`torch.mm`, float32) measured in the same run.

Models: R50 = SLOWFAST_32x2_R50_SHORT architecture (fusion kernel 7); R101 = c2 SLOWFAST_32x2_R101_50_50
(fusion kernel 5, non-local blocks after slow res4 blocks 6, 13, 20). Input: slow (B,3,8,H,W), fast
(B,3,32,H,W), three person boxes per clip. Eager and optimized runs alternate so that a change of machine load
hits both; times are medians after one warm-up run. BatchNorm weights and statistics are randomised (a freshly
built model has zero-initialised final BNs, which would hide folding errors). GFLOP/s are effective figures:
the FLOPs of direct convolution over the time taken (the optimized model's Winograd layers do fewer
multiplications, so it can exceed the GEMM rate).

`--runtime onnx` compares onnxruntime (CPU, the model exported by `ava_pipeline.export` from the same weights)
with the torch fast path instead, alternating the two per repeat with the same thread count for both.
"""
import statistics
import time

from .common import machine_line

GEMM_SIZE = 2048
R101_NONLOCAL = dict(fusion_kernel_size=5, aligned=False,
                     nonlocal_location=(((), ()), ((), ()), ((6, 13, 20), ()), ((), ())),
                     nonlocal_pool=(((2, 2, 2), (2, 2, 2)),) * 4)


def add_arguments(parser):
    parser.add_argument("--depth", type=int, nargs="+", choices=(50, 101), default=[50, 101])
    parser.add_argument("--size", default="256x455", type=_size, help="input HxW (default 256x455)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of each model after a warm-up")
    parser.add_argument("--batch", type=int, default=1, help="clips (keyframes) per forward")
    parser.add_argument("--runtime", choices=("torch", "onnx"), default="torch",
                        help="torch: eager vs optimized (default); onnx: onnxruntime vs the optimized torch path")


def _size(text):
    import argparse
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--size {text!r}: expected HxW, e.g. 256x455") from None
    if height < 32 or width < 32:
        raise argparse.ArgumentTypeError(f"--size {text!r}: both sides must be at least 32 pixels")
    return height, width


def build_random_model(depth, seed=0):
    """SlowFast R50 / R101 (see module docstring) in eval mode with seeded random BatchNorm parameters."""
    import torch
    from ava_pipeline.config import ModelConfig
    from ava_pipeline.models import build_action_model

    options = R101_NONLOCAL if depth == 101 else dict(fusion_kernel_size=7, aligned=True)
    torch.manual_seed(seed)
    model = build_action_model(ModelConfig(arch="slowfast", depth=depth, **options)).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm3d):
                module.weight.uniform_(0.5, 1.5, generator=generator)
                module.bias.uniform_(-0.2, 0.2, generator=generator)
                module.running_mean.uniform_(-0.2, 0.2, generator=generator)
                module.running_var.uniform_(0.5, 2.0, generator=generator)
    return model


def make_inputs(batch, height, width, seed=0):
    """[slow (B,3,8,H,W), fast (B,3,32,H,W)] standard-normal clips and (3B, 5) boxes in input pixels."""
    import torch
    generator = torch.Generator().manual_seed(seed)
    slow = torch.randn(batch, 3, 8, height, width, generator=generator)
    fast = torch.randn(batch, 3, 32, height, width, generator=generator)
    boxes = []
    for index in range(batch):
        for x1, y1, x2, y2 in ((0.1, 0.1, 0.4, 0.9), (0.35, 0.2, 0.7, 0.95), (0.6, 0.05, 0.98, 0.8)):
            boxes.append([index, x1 * (width - 1), y1 * (height - 1), x2 * (width - 1), y2 * (height - 1)])
    return [slow, fast], torch.tensor(boxes)


def gemm_seconds(a, b):
    """Wall time of one float32 ``torch.mm(a, b)``."""
    import torch
    start = time.perf_counter()
    torch.mm(a, b)
    return time.perf_counter() - start


def _timed(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def _alternated(reference, candidate, repeats: int, between=None) -> tuple[list, list, float]:
    """Seconds of ``reference()`` and ``candidate()`` run in turn ``repeats`` times (``between()`` after each
    pair), and the largest absolute difference of their outputs."""
    reference_times, candidate_times, max_diff = [], [], 0.0
    for _ in range(repeats):
        seconds, expected = _timed(reference)
        reference_times.append(seconds)
        seconds, got = _timed(candidate)
        candidate_times.append(seconds)
        if between is not None:
            between()
        max_diff = max(max_diff, (got - expected).abs().max().item())
    return reference_times, candidate_times, max_diff


def run(args):
    if args.runtime == "onnx":
        return run_onnx(args)
    import torch
    from ava_pipeline.models.flops import count_flops
    from ava_pipeline.models.inference import optimize_for_inference

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    height, width = args.size
    print(machine_line(threads=torch.get_num_threads()))
    print(f"input: batch {args.batch}, slow (B,3,8,{height},{width}), fast (B,3,32,{height},{width}), "
          f"{3 * args.batch} boxes; float32. Each repeat runs eager, optimized, then a GEMM (torch.mm "
          f"{GEMM_SIZE}x{GEMM_SIZE}); medians of {args.repeats} repeats after 1 warm-up; ratios are medians of "
          "the per-repeat ratios (robust to a change of machine load between repeats)")
    gemm_a, gemm_b = torch.randn(GEMM_SIZE, GEMM_SIZE), torch.randn(GEMM_SIZE, GEMM_SIZE)
    gemm_flops = 2 * GEMM_SIZE ** 3
    for depth in args.depth:
        model = build_random_model(depth)
        inputs, boxes = make_inputs(args.batch, height, width)
        fast = optimize_for_inference(model)
        flops = count_flops(model, inputs, boxes)  # doubles as the eager warm-up
        gemm_times = []
        with torch.inference_mode():
            fast(inputs, boxes)
            gemm_seconds(gemm_a, gemm_b)
            eager_times, fast_times, max_diff = _alternated(
                lambda: model(inputs, boxes), lambda: fast(inputs, boxes), args.repeats,
                between=lambda: gemm_times.append(gemm_seconds(gemm_a, gemm_b)))
        eager, optimized, gemm = (statistics.median(t) for t in (eager_times, fast_times, gemm_times))
        speedup = statistics.median(e / f for e, f in zip(eager_times, fast_times))
        of_gemm = statistics.median((flops.total / f) / (gemm_flops / g) for f, g in zip(fast_times, gemm_times))
        print(f"R{depth}: {flops.total / 1e9:.1f} GFLOPs (2 x MACs; "
              + ", ".join(f"{kind} {value / 1e9:.2f}" for kind, value in flops.by_kind.items()) + ")")
        for label, seconds, times in (("eager", eager, eager_times), ("optimized", optimized, fast_times)):
            print(f"  {label:9s} {seconds:7.3f} s/forward {flops.total / seconds / 1e9:6.1f} GFLOP/s  "
                  f"(runs: {', '.join(f'{t:.2f}' for t in times)})")
        print(f"  GEMM      {gemm_flops / gemm / 1e9:6.1f} GFLOP/s  (runs: "
              f"{', '.join(f'{gemm_flops / t / 1e9:.1f}' for t in gemm_times)})")
        print(f"  speedup {speedup:.2f}x; optimized {optimized / args.batch:.3f} s/keyframe at "
              f"{100 * of_gemm:.0f}% of GEMM GFLOP/s (effective); max |p_optimized - p_eager| = {max_diff:.2e}")


def run_onnx(args):
    """onnxruntime against ``optimize_for_inference`` on the same weights and inputs, same thread count."""
    import tempfile
    from pathlib import Path

    import onnxruntime
    import torch
    from ava_pipeline.config import ActionModelConfig, ModelConfig
    from ava_pipeline.export import export_action_model
    from ava_pipeline.models.inference import optimize_for_inference
    from ava_pipeline.models.onnx_runtime import OnnxActionModel

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    height, width = args.size
    print(machine_line(threads=threads) + f", onnxruntime {onnxruntime.__version__}")
    print(f"input: batch {args.batch}, slow (B,3,8,{height},{width}), fast (B,3,32,{height},{width}), "
          f"{3 * args.batch} boxes; float32. Each repeat runs the torch fast path then onnxruntime ({threads} "
          f"intra-op threads each); medians of {args.repeats} repeats after 1 warm-up; the ratio is the median of "
          "the per-repeat ratios")
    for depth in args.depth:
        model = build_random_model(depth)
        options = R101_NONLOCAL if depth == 101 else dict(fusion_kernel_size=7, aligned=True)
        config = ActionModelConfig(name=f"random SlowFast R{depth}", model=ModelConfig(depth=depth, **options))
        inputs, boxes = make_inputs(args.batch, height, width)
        fast = optimize_for_inference(model)
        with tempfile.TemporaryDirectory() as folder:
            seconds, path = _timed(lambda: export_action_model(model, config, Path(folder) / "model.onnx"))
            print(f"R{depth}: exported in {seconds:.1f} s ({path.stat().st_size / 1e6:.0f} MB)")
            runtime = OnnxActionModel(path, threads=threads)
            with torch.inference_mode():
                fast(inputs, boxes)
                runtime(inputs, boxes)
                torch_times, onnx_times, max_diff = _alternated(
                    lambda: fast(inputs, boxes), lambda: runtime(inputs, boxes), args.repeats)
        ratio = statistics.median(o / t for o, t in zip(onnx_times, torch_times))
        for label, times in (("torch fast path", torch_times), ("onnxruntime", onnx_times)):
            print(f"  {label:15s} {statistics.median(times):7.3f} s/forward  (runs: "
                  f"{', '.join(f'{t:.2f}' for t in times)})")
        verdict = ("within 2%: no clear winner" if abs(ratio - 1) < 0.02 else
                   f"torch fast path {ratio:.2f}x faster" if ratio > 1 else f"onnxruntime {1 / ratio:.2f}x faster")
        print(f"  onnxruntime / torch fast path = {ratio:.3f}x time ({verdict}); "
              f"max |p_onnx - p_torch| = {max_diff:.2e}")

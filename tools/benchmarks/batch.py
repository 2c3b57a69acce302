"""videos/s of an `ava-detect` batch: local engine with 1 and 2 workers, Ray engine on a local cluster.

Default input: ``--count`` synthetic videos of ``--seconds`` each (320x240, 30 fps), two precomputed person
boxes per second and a small SlowFast (random weights, ``--width`` channels per group), so the figures
measure the engines with decoding and a real (small) model; ``--videos DIR`` with ``--config``,
``--weights`` and ``--boxes`` measures real data instead. Each configuration writes into a fresh folder.
The local engine's fork server and the Ray cluster (``--ray-cpus``, default all cores) are started before
the timed runs and their start-up times printed separately (Ray actors still start their own processes
inside the timed run); the overhead compares Ray with the local engine at the same number of workers.
"""
from __future__ import annotations

import os
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

from .common import machine_line


def add_arguments(parser):
    parser.add_argument("--count", type=int, default=4, help="synthetic videos (default 4)")
    parser.add_argument("--seconds", type=int, default=120, help="length of each synthetic video (default 120)")
    parser.add_argument("--width", type=int, default=8, help="SlowFast width per group of the synthetic model")
    parser.add_argument("--crop", type=int, default=160, help="short side fed to the synthetic model")
    parser.add_argument("--videos", type=Path, help="a folder of real videos instead of synthetic ones")
    parser.add_argument("--config", help="model config for --videos (packaged name or YAML)")
    parser.add_argument("--weights", help="checkpoint for --videos")
    parser.add_argument("--boxes", help="precomputed person boxes (AVA CSV) for --videos")
    parser.add_argument("--workers", type=int, default=2, help="workers of the parallel runs (default 2)")
    parser.add_argument("--ray-cpus", type=int, help="CPUs of the local Ray cluster (default: all cores)")
    parser.add_argument("--skip-ray", action="store_true", help="local engine only")


def write_synthetic_video(path: Path, seconds: int, seed: int, size=(320, 240), fps=30) -> None:
    """A drifting random texture, MPEG-4 part 2 (decodes at a realistic cost)."""
    import av

    width, height = size
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (height, width * 2, 3), dtype=np.uint8)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.bit_rate = 1_000_000
        for index in range(seconds * fps):
            shift = index % width
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(base[:, shift:shift + width]), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def write_synthetic_inputs(folder: Path, args) -> dict:
    """Videos, box file, config and random weights under ``folder``; returns ActionDetector settings."""
    import torch

    from ava_pipeline.config import ActionModelConfig, DataConfig, ModelConfig, dump_config
    from ava_pipeline.models import build_action_model

    movies = folder / "movies"
    movies.mkdir(parents=True)
    rows = []
    for index in range(args.count):
        write_synthetic_video(movies / f"video{index:02d}.mp4", args.seconds, seed=index)
        for second in range(1, args.seconds):
            rows.append(f"video{index:02d},{second},0.100,0.150,0.450,0.950,,0.95\n")
            rows.append(f"video{index:02d},{second},0.500,0.100,0.900,0.900,,0.90\n")
    (folder / "boxes.csv").write_text("".join(rows))
    model = ModelConfig(num_frames=8, sampling_rate=8, width_per_group=args.width, dropout_rate=0.0, aligned=False)
    config = ActionModelConfig(name=f"bench-width{args.width}", model=model,
                               data=DataConfig(test_crop_size=args.crop), box_thresh=0.5)
    (folder / "model.yaml").write_text(dump_config(config))
    torch.manual_seed(0)
    torch.save({"model_state": build_action_model(model).state_dict(), "epoch": 1}, folder / "model.pyth")
    return {"movies": movies, "settings": dict(config=str(folder / "model.yaml"), weights=str(folder / "model.pyth"),
                                               boxes=str(folder / "boxes.csv"), device="cpu")}


def _timed_batch(videos, out: Path, settings: dict, **engine) -> tuple[float, object]:
    from ava_pipeline.batch import run_batch

    start = time.perf_counter()
    summary = run_batch(videos, out, detector_settings=settings, quiet=True, **engine)
    seconds = time.perf_counter() - start
    if summary.failed:
        raise SystemExit(f"{summary.failed} video(s) failed; see {out / 'manifest.json'}")
    return seconds, summary


def run(args):
    from ava_pipeline.batch import available_cpus
    from ava_pipeline.batch.local import worker_context
    from ava_pipeline.cli.detect import find_videos

    print(machine_line())
    with tempfile.TemporaryDirectory(prefix="ava-bench-batch-") as tmp:
        tmp = Path(tmp)
        if args.videos is not None:
            movies, settings = args.videos, dict(config=args.config, weights=args.weights, boxes=args.boxes,
                                                 device="cpu")
            described = f"{args.videos}"
        else:
            start = time.perf_counter()
            inputs = write_synthetic_inputs(tmp, args)
            movies, settings = inputs["movies"], inputs["settings"]
            described = (f"{args.count} synthetic videos x {args.seconds} s (320x240 MPEG-4, 2 persons per second), "
                         f"SlowFast 8x8 R50 width {args.width} at {args.crop} px, random weights "
                         f"(written in {time.perf_counter() - start:.1f} s)")
        videos = find_videos([movies])
        print(f"input: {described}")
        cores = available_cpus()
        start = time.perf_counter()
        warm_up = worker_context().Process(target=os.getpid)  # the fork server's imports: once per ava-detect run
        warm_up.start()
        warm_up.join()
        print(f"worker fork server start: {time.perf_counter() - start:.1f} s (not counted below)")
        results = {}
        for workers in (1, args.workers):
            seconds, summary = _timed_batch(videos, tmp / f"local{workers}", settings, engine="local",
                                            workers=workers)
            results[("local", workers)] = seconds
            print(f"local engine, {workers} worker(s) x {max(1, cores // workers)} thread(s): "
                  f"{len(videos) / seconds:.3f} videos/s ({seconds:.1f} s, {summary.keyframes} keyframes)")
        speed_up = results[("local", 1)] / results[("local", args.workers)]
        print(f"local speed-up {args.workers} vs 1 worker: {speed_up:.2f}x")
        if args.skip_ray:
            return
        import ray

        start = time.perf_counter()
        ray.init(num_cpus=args.ray_cpus or cores, include_dashboard=False, log_to_driver=False,
                 configure_logging=False)
        started = time.perf_counter() - start
        try:
            seconds, _ = _timed_batch(videos, tmp / "ray", settings, engine="ray", workers=args.workers)
        finally:
            ray.shutdown()
        local = results[("local", args.workers)]
        print(f"ray engine, {args.workers} actor(s) on a local cluster of {args.ray_cpus or cores} CPUs: "
              f"{len(videos) / seconds:.3f} videos/s ({seconds:.1f} s; cluster start {started:.1f} s not counted)")
        print(f"ray overhead vs local engine with {args.workers} workers: {100 * (seconds / local - 1):+.1f}% "
              f"({100 * ((seconds + started) / local - 1):+.1f}% counting the cluster start; goal < 10% on 2-minute "
              "videos)")

"""Shared helpers for the benchmarks: machine description, robust timing, peak RSS, measuring subprocesses."""
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time


def python_json(code: str, *args, env=None, cwd=None) -> dict:
    """Run ``python -c code args...`` in a fresh process (its own memory and thread state) and return the JSON
    object on the last line of its output; a failure raises ``RuntimeError`` with the end of its stderr."""
    result = subprocess.run([sys.executable, "-c", code, *map(str, args)], env=env, cwd=cwd, capture_output=True,
                            text=True)
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-2000:])
    return json.loads(result.stdout.strip().splitlines()[-1])


def machine_line(threads=None):
    """One line naming the CPU, core count, thread count and library versions."""
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    parts = [f"machine: {cpu}", f"{os.cpu_count()} cores"]
    if threads is not None:
        parts.append(f"{threads} threads")
    try:
        import torch
        parts.append(f"torch {torch.__version__}")
    except ImportError:
        pass
    parts.append(f"python {platform.python_version()}")
    return ", ".join(parts)


def median_time(fn, repeats=5, warmup=1):
    """Median wall time in seconds of ``fn()`` over ``repeats`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_rss_mb_of_children():
    """Peak resident set size (MB) over all waited-for child processes."""
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def peak_rss_mb():
    """Peak resident set size (MB) of this process."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


TRAINING_DATASET = r"""
from ava_pipeline.config import load_config
from ava_pipeline.training.dataset import AvaClipDataset, collate
from ava_pipeline.training.samples import find_videos, read_training_samples


def training_dataset(annotations, videos, store, config, full_resolution_frames=False, uint8_batches=False,
                     augment=True):
    # ava-train's dataset of ``config`` with PySlowFast's AVA augmentation (jitter 256-320, crop 224)
    cfg = load_config(config)
    samples = read_training_samples(annotations, class_ids=range(1, 81))
    return AvaClipDataset(samples, find_videos(videos, samples.video_ids()), num_frames=cfg.model.num_frames,
                          sampling_rate=cfg.model.sampling_rate, alpha=cfg.model.alpha, fps=cfg.data.fps,
                          mean=cfg.data.mean, std=cfg.data.std, test_crop_size=cfg.data.test_crop_size,
                          train_jitter_scales=(256, 320), train_crop_size=224, augment=augment, seed=0, cache_dir=store,
                          full_resolution_frames=full_resolution_frames, uint8_batches=uint8_batches)
"""
"""Source prefix of the benchmarks' measuring subprocesses that read training clips."""

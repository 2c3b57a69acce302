"""`benchmark.py train --loader`: ava-train's data path on 720p H.264, clips in random order.

A synthetic 1280x720 30 fps H.264 movie (libx264, its default keyframe interval: 250 frames) annotated every
second with 2 boxes; SLOWFAST_32x2_R50_SHORT's clips (32 frames x 2) and its AVA train transform (short side
jittered in 256-320, 224 crop, flip). For 1 and 2 DataLoader workers, each with an empty frame store:

* first epoch = preparing the frame store (one sequential decoding pass per video, what ava-train does before
  epoch 1) + one epoch in a shuffled order; later epochs = the order of epochs 2 and 3;
* baseline, measured in the same run: one sequential decode of the annotated spans (`video.iter_clips` over the
  keyframes, no storing, no transform): the issue's bar for the first epoch;
* disk: the store's bytes per hour of video (it keeps the used grid frames as raw RGB at the source resolution).

The issue's goal after the first epoch: >= 20 clips/s per CPU core with augmentation on.
"""
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import TRAINING_DATASET, machine_line

ROOT = Path(__file__).resolve().parents[2]
CONFIG = "SLOWFAST_32x2_R50_SHORT"

MEASURE = TRAINING_DATASET + r"""
import json, sys, time, torch
from ava_pipeline.training.sampling import EpochSampler
annotations, videos, store, workers, config = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
dataset = training_dataset(annotations, videos, store, config)
start = time.perf_counter()
report = dataset.prepare(workers=workers)
prepare_s = time.perf_counter() - start
sampler = EpochSampler(len(dataset), seed=0, shuffle=True)
epochs = []
for epoch in range(3):
    dataset.set_epoch(epoch)
    sampler.set_epoch(epoch)
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, sampler=sampler, drop_last=True, num_workers=workers,
                                         collate_fn=collate)
    start, clips = time.perf_counter(), 0
    for batch in loader:
        clips += len(batch.indices)
    epochs.append({"clips": clips, "seconds": time.perf_counter() - start})
print(json.dumps({"prepare_s": prepare_s, "epochs": epochs, "disk_bytes": report.disk_bytes}))
"""

SEQUENTIAL = r"""
import json, sys, time
from ava_pipeline.video import iter_clips
start, clips = time.perf_counter(), 0
for clip in iter_clips(sys.argv[1], keyframes=[int(s) for s in sys.argv[2].split(",")], num_frames=32,
                       sampling_rate=2, fps=30):
    clips += 1
print(json.dumps({"clips": clips, "seconds": time.perf_counter() - start}))
"""


def _movie(folder: Path, seconds: int) -> tuple[Path, list[int]]:
    """The 720p movie and its annotations (2 boxes at every second from 2 to seconds - 2)."""
    import av
    import numpy as np

    videos = folder / "videos"
    videos.mkdir()
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (720 // 16, 1280 // 16, 3), dtype=np.uint8).repeat(16, 0).repeat(16, 1)
    with av.open(str(videos / "movie720.mp4"), "w") as container:
        stream = container.add_stream("libx264", rate=30, options={"preset": "veryfast"})
        stream.width, stream.height, stream.pix_fmt = 1280, 720, "yuv420p"
        for index in range(seconds * 30):
            image = np.roll(base, 4 * index, axis=1)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    keyframes = list(range(2, seconds - 1))
    rows = [f"movie720,{s},0.1,0.1,0.5,0.9,{1 + s % 80},0\nmovie720,{s},0.5,0.2,0.9,0.95,12,1" for s in keyframes]
    (folder / "train.csv").write_text("\n".join(rows) + "\n")
    return videos, keyframes


def _python(code, *args, env):
    result = subprocess.run([sys.executable, "-c", code, *map(str, args)], env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-2000:])
    return json.loads(result.stdout.strip().splitlines()[-1])


def run_loader(args):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    print(machine_line(os.cpu_count()))
    print(f"load average at start: {os.getloadavg()[0]:.1f} (the machine may be shared: compare ratios)")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        start = time.perf_counter()
        videos, keyframes = _movie(folder, args.loader_seconds)
        print(f"movie: {args.loader_seconds} s of 1280x720 30 fps H.264 written in "
              f"{time.perf_counter() - start:.0f} s; {len(keyframes)} keyframes, clips of 32 frames x 2 "
              "(SlowFast 32x2), batch 4, augmentation on")
        sequential = _python(SEQUENTIAL, videos / "movie720.mp4", ",".join(map(str, keyframes)), env=env)
        baseline = sequential["clips"] / sequential["seconds"]
        print(f"baseline: one sequential decode of the annotated spans {sequential['seconds']:.1f} s "
              f"({baseline:.1f} clips/s)")
        for workers in args.loader_workers:
            result = _python(MEASURE, folder / "train.csv", videos, folder / f"store{workers}", workers, CONFIG,
                             env=env)
            first, later = result["epochs"][0], result["epochs"][1:]
            first_s = result["prepare_s"] + first["seconds"]
            later_rate = sum(e["clips"] for e in later) / sum(e["seconds"] for e in later)
            cores = max(workers, 1)
            hour = result["disk_bytes"] / args.loader_seconds * 3600 / 2 ** 30
            print(f"{workers} worker(s): first epoch {first_s:.1f} s = frame store {result['prepare_s']:.1f} s + "
                  f"{first['seconds']:.1f} s of training order ({first['clips'] / first_s:.1f} clips/s; "
                  f"{first_s / sequential['seconds']:.2f}x the sequential decode); later epochs {later_rate:.1f} "
                  f"clips/s = {later_rate / cores:.1f} clips/s per worker core (goal >= 20); store "
                  f"{result['disk_bytes'] / 2 ** 20:.0f} MiB = {hour:.0f} GiB per hour of 720p video")

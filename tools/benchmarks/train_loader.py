"""`benchmark.py train --loader`: ava-train's data path on 720p H.264, clips in random order.

A synthetic 1280x720 30 fps H.264 movie (libx264, its default keyframe interval: 250 frames), copied to
``--loader-movies`` files, annotated every second with 2 boxes; SLOWFAST_32x2_R50_SHORT's clips (32 frames x 2)
and PySlowFast's AVA train transform (short side jittered in 256-320, 224 crop, flip), batch 4, through ava-train's
own DataLoader (``training.loop.training_loader``). For 1 and 2 DataLoader workers, each with an empty frame store:

* first epoch = preparing the frame store (one sequential decoding pass per movie, what ava-train does before
  epoch 1) + one epoch in a shuffled order; later epochs = the order of epochs 2 to 4;
* three layouts: the training-resolution store with float batches made in the workers (ava-train on a CPU); the
  same with uint8 batches (ava-train on a GPU: the frames are normalised on the GPU, which this CPU benchmark
  leaves out); the source-resolution store (``full_resolution_frames``, the store's former and only layout)
  with float batches: the ratios show what each step buys;
* baseline, measured in the same run: one sequential decode of the annotated spans (`video.iter_clips` over each
  movie's keyframes, no storing, no transform), the fastest of 3: the issue's bar for the first epoch;
* disk: the store's bytes per hour of video;
* CPU: the store's CPU-seconds and the epochs' CPU per clip (workers and the training process), and from them
  the first epoch's floor on this machine (all of its work spread over every core with no idle moment).

The issue's goal after the first epoch: >= 20 clips/s per CPU core with augmentation on.
"""
import os
import shutil
import tempfile
import time
from pathlib import Path

from benchmarks.common import TRAINING_DATASET, machine_line, python_json

ROOT = Path(__file__).resolve().parents[2]
CONFIG = "SLOWFAST_32x2_R50_SHORT"
LATER_EPOCHS = 3

MEASURE = TRAINING_DATASET + r"""
import json, resource, sys, time, torch
from ava_pipeline.training.loop import training_loader
from ava_pipeline.training.sampling import EpochSampler
annotations, videos, store, workers, config, layout = sys.argv[1:7]
workers, later = int(workers), int(sys.argv[7])
dataset = training_dataset(annotations, videos, store, config, full_resolution_frames=layout == "source",
                           uint8_batches=layout == "uint8")
start, cpu = time.perf_counter(), time.process_time()
report = dataset.prepare(workers=workers)
prepare_s, prepare_cpu_s = time.perf_counter() - start, time.process_time() - cpu
main_cpu = time.process_time()
sampler = EpochSampler(len(dataset), seed=0, shuffle=True)
loader = training_loader(dataset, sampler, collate, batch_size=4, workers=workers)
epochs = []
for epoch in range(1 + later):
    dataset.set_epoch(epoch)
    sampler.set_epoch(epoch)
    start, clips = time.perf_counter(), 0
    for batch in loader:
        clips += len(batch.indices)
    epochs.append({"clips": clips, "seconds": time.perf_counter() - start})
main_cpu = time.process_time() - main_cpu
del loader  # its workers exit and are waited for: their CPU time is counted below
children = resource.getrusage(resource.RUSAGE_CHILDREN)
epochs_cpu_s = main_cpu + children.ru_utime + children.ru_stime
print(json.dumps({"prepare_s": prepare_s, "prepare_cpu_s": prepare_cpu_s, "epochs": epochs,
                  "epochs_cpu_s": epochs_cpu_s, "disk_bytes": report.disk_bytes}))
"""

SEQUENTIAL = r"""
import json, sys, time
from pathlib import Path
from ava_pipeline.video import iter_clips
keyframes = [int(s) for s in sys.argv[2].split(",")]
start, cpu, clips = time.perf_counter(), time.process_time(), 0
for movie in sorted(Path(sys.argv[1]).iterdir()):
    for clip in iter_clips(movie, keyframes=keyframes, num_frames=32, sampling_rate=2, fps=30):
        clips += 1
print(json.dumps({"clips": clips, "seconds": time.perf_counter() - start, "cpu_s": time.process_time() - cpu}))
"""


def _movies(folder: Path, seconds: int, copies: int) -> tuple[Path, list[int]]:
    """``copies`` files of the 720p movie and their annotations (2 boxes at every second from 2 to seconds - 2)."""
    import av
    import numpy as np

    videos = folder / "videos"
    videos.mkdir()
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (720 // 16, 1280 // 16, 3), dtype=np.uint8).repeat(16, 0).repeat(16, 1)
    first = videos / "movie0.mp4"
    with av.open(str(first), "w") as container:
        stream = container.add_stream("libx264", rate=30, options={"preset": "veryfast"})
        stream.width, stream.height, stream.pix_fmt = 1280, 720, "yuv420p"
        for index in range(seconds * 30):
            image = np.roll(base, 4 * index, axis=1)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    for copy in range(1, copies):
        shutil.copyfile(first, videos / f"movie{copy}.mp4")
    keyframes = list(range(2, seconds - 1))
    rows = [f"movie{c},{s},0.1,0.1,0.5,0.9,{1 + s % 80},0\nmovie{c},{s},0.5,0.2,0.9,0.95,12,1"
            for c in range(copies) for s in keyframes]
    (folder / "train.csv").write_text("\n".join(rows) + "\n")
    return videos, keyframes


LAYOUTS = {"float": "training-resolution store, float batches (CPU training)",
           "uint8": "training-resolution store, uint8 batches (GPU training)",
           "source": "source-resolution store, float batches"}


def _measure(folder: Path, videos: Path, workers: int, layout: str, env) -> dict:
    name = f"store{workers}-{layout}"
    result = python_json(MEASURE, folder / "train.csv", videos, folder / name, workers, CONFIG, layout, LATER_EPOCHS,
                     env=env)
    shutil.rmtree(folder / name)
    first, later = result["epochs"][0], result["epochs"][1:]
    result["first_s"] = result["prepare_s"] + first["seconds"]
    result["first_epoch_s"] = first["seconds"]
    result["later_rate"] = sum(e["clips"] for e in later) / sum(e["seconds"] for e in later)
    result["cpu_ms_per_clip"] = 1000 * result["epochs_cpu_s"] / sum(e["clips"] for e in result["epochs"])
    return result


def run_loader(args):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    print(machine_line(os.cpu_count()))
    print(f"load average at start: {os.getloadavg()[0]:.1f} (the machine may be shared: compare ratios)")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        start = time.perf_counter()
        videos, keyframes = _movies(folder, args.loader_seconds, args.loader_movies)
        movie_seconds = args.loader_seconds * args.loader_movies
        print(f"movies: {args.loader_movies} x {args.loader_seconds} s of 1280x720 30 fps H.264 (written in "
              f"{time.perf_counter() - start:.0f} s); {len(keyframes) * args.loader_movies} keyframes, clips of 32 "
              "frames x 2 (SlowFast 32x2), batch 4, augmentation on (jitter 256-320, crop 224, flip)")
        decodes = [python_json(SEQUENTIAL, videos, ",".join(map(str, keyframes)), env=env) for _ in range(3)]
        sequential = min(decodes, key=lambda decode: decode["seconds"])  # the fastest: the strictest bar
        times = ", ".join(f"{decode['seconds']:.1f}" for decode in decodes)
        print(f"baseline: one sequential decode of the annotated spans {sequential['seconds']:.1f} s, the fastest "
              f"of {times} s ({sequential['clips'] / sequential['seconds']:.1f} "
              f"clips/s; {sequential['cpu_s']:.1f} CPU-s, "
              f"{sequential['cpu_s'] / sequential['seconds']:.1f} cores busy)")
        cores = os.cpu_count()
        for workers in args.loader_workers:
            for layout, label in LAYOUTS.items():
                result = _measure(folder, videos, workers, layout, env)
                hour = result["disk_bytes"] / movie_seconds * 3600 / 2 ** 30
                print(f"{workers} worker(s), {label}: first epoch {result['first_s']:.1f} s = store "
                      f"{result['prepare_s']:.1f} s + {result['first_epoch_s']:.1f} s of training order "
                      f"({result['first_s'] / sequential['seconds']:.2f}x the sequential decode); later epochs "
                      f"{result['later_rate']:.1f} clips/s = {result['later_rate'] / max(workers, 1):.1f} clips/s "
                      f"per worker core (goal >= 20); store {result['disk_bytes'] / 2 ** 20:.0f} MiB = {hour:.1f} GiB "
                      "per hour of 720p video")
                # all the first epoch's work on every core with no idle moment: what no schedule can beat here
                floor = (result["prepare_cpu_s"] + sequential["clips"] * result["cpu_ms_per_clip"] / 1000) / cores
                print(f"  CPU: store {result['prepare_cpu_s']:.1f} CPU-s, epochs {result['cpu_ms_per_clip']:.0f} "
                      f"CPU-ms per clip (workers and the training process); first-epoch floor on {cores} cores "
                      f"{floor:.1f} s = {floor / sequential['seconds']:.2f}x the sequential decode")

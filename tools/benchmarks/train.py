"""ava-train on CPU: seconds per iteration split into data wait and compute, and peak memory, for R50 (the
SLOWFAST_32x2_R50_SHORT config) at batch 2-3 on 224 x 298 clips of a synthetic 4:3 movie, against a bare
PySlowFast-style step (forward, BCE, backward, SGD step on random tensors of the same shapes) measured in the
same run; then the data path alone (frame store + PySlowFast's AVA train transform + collate) in clips/s.
``--head-only``: the head-only phase of ``ava-train --head-only`` (benchmarks/train_head.py); ``--loader``: the
data path on 720p H.264 in random order (benchmarks/train_loader.py).

Each measurement runs in a fresh process, so its peak RSS is its own. The issue quotes PySlowFast on this machine
at 25-100 s per 2 iterations and 7.5 GB peak RSS for R50 at batch 3 on 224 x 298.
"""
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import TRAINING_DATASET, machine_line, python_json

ROOT = Path(__file__).resolve().parents[2]
CONFIG = "SLOWFAST_32x2_R50_SHORT"

BARE_STEP = r"""
import json, resource, sys, time, torch
from ava_pipeline.config import load_config
from ava_pipeline.training.init import build_training_model
from ava_pipeline.training.loop import train_step
from ava_pipeline.training.optim import build_optimizer
from ava_pipeline.training.settings import SolverSettings
batch, iterations, height, width = map(int, sys.argv[1:5])
cfg = load_config(sys.argv[5]).model
model = build_training_model(cfg, seed=0)
optimizer = build_optimizer(model, SolverSettings())
fast = torch.randn(batch, 3, cfg.num_frames, height, width)
slow = fast[:, :, torch.linspace(0, cfg.num_frames - 1, cfg.num_frames // cfg.alpha).long()].contiguous()
boxes = torch.tensor([[i, 20.0, 30.0, 120.0, 200.0] for i in range(batch)])
labels = (torch.rand(batch, cfg.num_classes) < 0.05).float()
times = []
for _ in range(iterations):
    start = time.perf_counter()
    train_step(model, optimizer, [slow, fast], boxes, labels, 0.01)
    times.append(time.perf_counter() - start)
print(json.dumps({"compute_s": times, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

DATA_PATH = TRAINING_DATASET + r"""
import json, sys, time
annotations, videos, cache, batch = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
dataset = training_dataset(annotations, videos, cache, sys.argv[5])
start = time.perf_counter()
report = dataset.prepare()
prepare_s = time.perf_counter() - start
clips, start = 0, time.perf_counter()
for epoch in range(2):
    dataset.set_epoch(epoch)
    for first in range(0, len(dataset) - batch + 1, batch):
        collate([dataset[i] for i in range(first, first + batch)])
        clips += batch
print(json.dumps({"prepare_s": prepare_s, "clips": clips, "seconds": time.perf_counter() - start,
                  "disk_bytes": report.disk_bytes}))
"""


def add_arguments(parser):
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[2, 3])
    parser.add_argument("--iterations", type=int, default=2, help="training iterations per measurement")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    parser.add_argument("--head-only", action="store_true", help="only the head-only phase of --head-only: 100 "
                        "epochs over 3,600 cached R50 box features (benchmarks/train_head.py)")
    parser.add_argument("--head-batch-sizes", type=int, nargs="+", default=[16, 64],
                        help="keyframes per iteration for --head-only")
    parser.add_argument("--head-extraction-seconds", type=int, default=12, metavar="S",
                        help="--head-only: also time feature extraction against the fast inference path over the "
                        "keyframes of an S-second movie (0: skip)")
    parser.add_argument("--loader", action="store_true", help="only the training data path on a 720p H.264 movie "
                        "in random order: first and later epochs, 1 and 2 workers, disk (benchmarks/train_loader.py)")
    parser.add_argument("--loader-seconds", type=int, default=20, help="length of the --loader movie")
    parser.add_argument("--loader-movies", type=int, default=4, help="copies of the --loader movie (videos)")
    parser.add_argument("--loader-workers", type=int, nargs="+", default=[1, 2], help="DataLoader workers to measure")


def _run_measured(command, env, log: Path):
    """Run ``command``; returns (exit status, its own peak RSS in MB, its stderr)."""
    with open(log, "w+") as stderr:
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        stderr.seek(0)
        return process.returncode, usage.ru_maxrss / 1024, stderr.read()


def _write_movie(folder: Path, seconds: int) -> Path:
    """A 320 x 240 (4:3) 30 fps movie of moving noise blocks and its AVA annotations at seconds 2 .. seconds-2."""
    import av
    import numpy as np

    videos = folder / "videos"
    videos.mkdir()
    rng = np.random.default_rng(0)
    with av.open(str(videos / "movie.mp4"), "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
        base = rng.integers(0, 255, (240 // 8, 320 // 8, 3), dtype=np.uint8)
        for index in range(seconds * 30):
            image = np.roll(base, index, axis=1).repeat(8, 0).repeat(8, 1)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    rows = [f"movie,{second},0.1,0.1,0.5,0.9,{1 + second % 80},0\nmovie,{second},0.5,0.2,0.9,0.95,12,1"
            for second in range(2, seconds - 1)]
    (folder / "train.csv").write_text("\n".join(rows) + "\n")
    return videos


def run(args):
    if args.head_only:
        from benchmarks.train_head import run_head_only
        return run_head_only(args)
    if args.loader:
        from benchmarks.train_loader import run_loader
        return run_loader(args)
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if args.threads:
        env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    print(machine_line(args.threads or os.cpu_count()))
    print(f"load average at start: {os.getloadavg()[0]:.1f} (the machine may be shared: compare ratios)")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        videos = _write_movie(folder, seconds=12)
        for batch in args.batch_sizes:
            bare = python_json(BARE_STEP, batch, args.iterations, 224, 298, CONFIG, env=env)
            # an epoch of exactly args.iterations iterations: batch * iterations keyframes
            rows = (folder / "train.csv").read_text().splitlines()
            keyframes = sorted({row.split(",")[1] for row in rows}, key=int)[:batch * args.iterations]
            subset = folder / f"train_b{batch}.csv"
            subset.write_text("\n".join(r for r in rows if r.split(",")[1] in keyframes) + "\n")
            out = folder / f"run_b{batch}"
            command = [sys.executable, "-m", "ava_pipeline.cli.train", "--config", CONFIG, "--videos", str(videos),
                       "--annotations", str(subset), "--out", str(out), "--epochs", "1", "--batch-size", str(batch),
                       "--no-augment", "--no-shuffle", "--quiet"]
            start = time.perf_counter()
            status, peak, stderr = _run_measured(command, env, folder / f"log_b{batch}.txt")
            wall = time.perf_counter() - start
            if status != 0:
                print(f"batch {batch}: ava-train failed: {stderr.strip().splitlines()[-1:]}")
                continue
            steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()
                     if '"type": "iteration"' in line]
            data_s = [s["data_s"] for s in steps]
            compute_s = [s["compute_s"] for s in steps]
            bare_s = bare["compute_s"]
            split = ", ".join(f"{d:.2f} s data + {c:.1f} s compute" for d, c in zip(data_s, compute_s))
            print(f"R50 batch {batch} at 224x298, {len(steps)} iterations: ava-train "
                  f"{sum(data_s) + sum(compute_s):.1f} s ({split}); "
                  f"peak RSS {peak / 1024:.2f} GB (whole command, {wall:.0f} s with frame preparation)")
            print(f"  bare step on random tensors: {sum(bare_s):.1f} s ({', '.join(f'{s:.1f}' for s in bare_s)}); peak "
                  f"RSS {bare['peak_rss_mb'] / 1024:.2f} GB; ratio ava-train/bare: time "
                  f"{(sum(data_s) + sum(compute_s)) / sum(bare_s):.2f}x, compute {sum(compute_s) / sum(bare_s):.2f}x, "
                  f"memory {peak / bare['peak_rss_mb']:.2f}x")
        data = python_json(DATA_PATH, folder / "train.csv", videos, folder / "store", 3, CONFIG, env=env)
        print(f"data path alone (frame store + AVA train transform at 256-320 jitter, 224 crop + collate): "
              f"{data['clips'] / data['seconds']:.1f} clips/s ({data['clips']} clips of 32 frames); "
              f"frame preparation {data['prepare_s']:.1f} s for a 12 s movie, {data['disk_bytes'] / 2 ** 20:.0f} MiB "
              "store")

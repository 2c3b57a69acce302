#!/usr/bin/env python
"""ava-train on CUDA, checked in under two minutes on a machine with one or more GPUs.

    python tools/gpu_check_train.py [--keep DIR]

Writes a synthetic movie and a tiny SlowFast config (width 8, 8-frame clips, MODEL.FROZEN_BN, dropout 0 so
that runs are comparable), then runs, each as its own process:

1. ``ava-train --device cuda`` (one process): a few iterations, a checkpoint that ``load_action_model`` reads,
   a finite loss, the val mAP logged, and the GPU's peak memory;
2. ``torchrun --standalone --nproc_per_node=G ava-train --device cuda`` with G = min(2, visible GPUs) (NCCL;
   G = 1 on a one-GPU machine still goes through the process group and DDP) on the same global batch: the
   checkpoint equals run 1's within GPU float noise (cuDNN's backward is not bit-deterministic);
3. with G >= 2 also ``BN.NORM_TYPE: sync_batchnorm`` (``BN.GLOBAL_SYNC``) with train-mode BN: it trains and
   writes a checkpoint with the plain BatchNorm key names.
4. with augmentation and ``--workers 2``: uint8 batches assembled in the workers' shared memory, pinned by the
   DataLoader (``TrainingBatch.pin_memory``), copied asynchronously and normalised on the GPU: it trains to a
   finite loss, and the GPU's normalisation equals the CPU's bit for bit.

Prints one line per verified fact and exits non-zero at the first failure.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEVICE = "cuda"  # --device cpu rehearses the script without a GPU (gloo instead of NCCL)
sys.path.insert(0, str(ROOT))

MODEL = {"arch": "slowfast", "depth": 50, "num_frames": 8, "sampling_rate": 2, "alpha": 4, "beta_inv": 4,
         "fusion_kernel_size": 5, "width_per_group": 8, "dropout_rate": 0.0, "aligned": True, "num_classes": 3}


def write_data(folder: Path) -> dict:
    """Two 6 s 128x96 30 fps H.264 movies, two boxes on each of 8 keyframes, a 3-class label map, a config."""
    import av
    import numpy as np
    import yaml

    from ava_pipeline.labels import write_label_map

    videos = folder / "videos"
    videos.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("movie_a", "movie_b"):
        with av.open(str(videos / f"{name}.mp4"), "w") as container:
            stream = container.add_stream("libx264", rate=30)
            stream.width, stream.height, stream.pix_fmt = 128, 96, "yuv420p"
            base = rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)
            for index in range(6 * 30):
                image = np.roll(base, index // 3, axis=1).repeat(8, 0).repeat(8, 1)
                for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
    rows = []
    for name in ("movie_a", "movie_b"):
        for second in (1, 2, 3, 4):
            rows.append(f"{name},{second},0.05,0.1,0.45,0.9,{1 + second % 3},0")
            rows.append(f"{name},{second},0.55,0.1,0.95,0.9,{1 + (second + 1) % 3},1")
    (folder / "train.csv").write_text("\n".join(rows) + "\n")
    write_label_map({1: "one", 2: "two", 3: "three"}, folder / "labelmap.pbtxt")
    # zero-initialised residual branches and a small head keep the probabilities away from 0 and 1
    train = {"batch_size": 4, "eval_period": 2, "checkpoint_period": 1, "seed": 0, "frozen_bn": True,
             "zero_init_final_bn": True, "fc_init_std": 1.0e-4,
             "augmentation": {"train_jitter_scales": [64, 80], "train_crop_size": 64},
             "solver": {"base_lr": 0.01, "lr_policy": "cosine", "max_epoch": 2, "warmup_epochs": 0.0}}
    config = {"name": "gpu-check", "model": MODEL, "data": {"test_crop_size": 64},
              "label_map": str(folder / "labelmap.pbtxt"), "train": train}
    (folder / "tiny.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    sync = dict(config, train=dict(train, frozen_bn=False, norm_type="sync_batchnorm", global_sync=True))
    (folder / "sync.yaml").write_text(yaml.safe_dump(sync, sort_keys=False))
    return {"videos": videos, "annotations": folder / "train.csv", "labelmap": folder / "labelmap.pbtxt"}


def train_arguments(folder: Path, data: dict, config: str, out: Path) -> list:
    return ["-m", "ava_pipeline.cli.train", "--config", str(folder / config), "--videos", str(data["videos"]),
            "--annotations", str(data["annotations"]), "--labelmap", str(data["labelmap"]), "--val-annotations",
            str(data["annotations"]), "--out", str(out), "--device", DEVICE, "--no-augment", "--no-shuffle",
            "--quiet"]


def run(command: list, what: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    start = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        print(f"FAILED: {what} (exit {result.returncode}):\n{result.stderr[-4000:]}")
        sys.exit(1)
    print(f"ok: {what} ({time.perf_counter() - start:.1f} s)")
    return result


def check(condition: bool, fact: str) -> None:
    if not condition:
        print(f"FAILED: {fact}")
        sys.exit(1)
    print(f"ok: {fact}")


def records(out: Path, kind: str) -> list:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()
            if f'"type": "{kind}"' in line]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", type=Path, help="write the data and runs here (default: a temporary folder)")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"],
                        help="cpu rehearses the checks without a GPU (gloo, 2 processes)")
    args = parser.parse_args()
    import torch

    global DEVICE
    DEVICE = args.device
    if DEVICE == "cuda":
        check(torch.cuda.is_available(), f"CUDA available (torch {torch.__version__}, {torch.cuda.device_count()} "
              f"GPU(s): {torch.cuda.get_device_name(0) if torch.cuda.is_available() else '-'})")
    gpus = torch.cuda.device_count() if DEVICE == "cuda" else 0
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or Path(tmp)
        data = write_data(folder)

        one = folder / "one"
        run([sys.executable] + train_arguments(folder, data, "tiny.yaml", one), f"1 process, --device {DEVICE}")
        steps = records(one, "iteration")
        check(len(steps) == 4 and all(s["loss"] == s["loss"] and s["loss"] < 100 for s in steps),
              f"4 iterations with finite losses {[round(s['loss'], 4) for s in steps]}")
        start = records(one, "start")[0]
        check(start["device"].startswith(DEVICE), f"trained on {start['device']}")
        evaluation = records(one, "eval")[-1]
        check(evaluation["mAP"] is not None, f"val frame-mAP logged ({evaluation['mAP']:.3f})")
        from ava_pipeline.api import load_action_model
        final = "checkpoints/checkpoint_epoch_00002.pyth"
        model = load_action_model(one / "config.yaml", weights=one / final, device=DEVICE)
        check(model is not None, "the checkpoint loads with RUN/config.yaml through load_action_model (ava-detect)")

        processes = min(2, gpus) if DEVICE == "cuda" else 2
        two = folder / "ddp"
        result = run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                      str(processes)] + train_arguments(folder, data, "tiny.yaml", two),
                     f"torchrun --nproc_per_node={processes} ({'NCCL' if DEVICE == 'cuda' else 'gloo'}), "
                     f"--device {DEVICE}")
        check(f"data-parallel: {processes} processes" in result.stderr, f"{processes} process(es) joined the job")
        expected = torch.load(one / final, weights_only=True)["model_state"]
        actual = torch.load(two / final, weights_only=True)["model_state"]
        # differences relative to each tensor's scale (at least 0.01: zero-initialised BN weights stay tiny)
        worst = max(((actual[k].double() - v.double()).abs().max() / max(v.double().abs().max(), 1e-2)).item()
                    for k, v in expected.items() if v.is_floating_point())
        check(worst < 5e-3, f"torchrun checkpoint = 1-process checkpoint (FROZEN_BN), worst difference {worst:.2e} "
              "of the tensor's scale")
        ddp_losses = [s["loss"] for s in records(two, "iteration")]
        check(all(abs(a - s["loss"]) < 1e-3 * max(1.0, abs(s["loss"])) for a, s in zip(ddp_losses, steps)),
              f"logged losses equal ({[round(v, 4) for v in ddp_losses]})")

        if gpus >= 2 and DEVICE == "cuda":
            sync = folder / "sync"
            run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
                + train_arguments(folder, data, "sync.yaml", sync), "torchrun 2 GPUs with BN.NORM_TYPE sync_batchnorm")
            state = torch.load(sync / final, weights_only=True)["model_state"]
            check(int(state["s1.pathway0_stem.bn.num_batches_tracked"]) == 4 and "module." not in " ".join(state),
                  "SyncBatchNorm trained (statistics updated) and saved under BatchNorm key names")
        else:
            print("skipped: SyncBatchNorm across GPUs (one GPU visible)")
        workers = folder / "workers"
        command = [a for a in train_arguments(folder, data, "tiny.yaml", workers) if a != "--no-augment"]
        run([sys.executable] + command + ["--workers", "2"], f"augmented, --workers 2, --device {DEVICE}")
        losses = [s["loss"] for s in records(workers, "iteration")]
        check(len(losses) == 4 and all(v == v and v < 100 for v in losses),
              f"augmented clips from 2 workers train: losses {[round(v, 4) for v in losses]}")
        if DEVICE == "cuda":
            from ava_pipeline.training.dataset import TrainingBatch
            pixels = torch.randint(0, 256, (2, 8, 6, 6, 3), dtype=torch.uint8)
            batch = TrainingBatch([], torch.zeros(1, 5), torch.zeros(1, 2), torch.zeros(1, 4), [], [], pixels=pixels,
                                  normalisation=((0.45, 0.45, 0.45), (0.225, 0.225, 0.225), 4))
            pinned = batch.pin_memory()
            check(pinned.pixels.is_pinned(), "TrainingBatch.pin_memory pins the uint8 frames")
            check(all(torch.equal(a.cpu(), b) for a, b in zip(pinned.model_inputs("cuda"), batch.model_inputs("cpu"))),
                  "uint8 frames normalised on the GPU equal the CPU's, bit for bit")
        print(f"done: all checks passed on {DEVICE} ({gpus} GPU(s) visible)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A tiny training setup written by the tests: index-coded videos, AVA CSVs, label maps and a tiny model config.

The model is a SlowFast R50 of width 8 on 8-frame clips of 64x48 videos (short side 48): a training step takes a
fraction of a second on a CPU. ``TINY_MODEL`` is the ``model:`` section of our YAML for it.
"""
from pathlib import Path

import yaml

from ava_pipeline.labels import write_label_map
from tests.videos import write_index_video

TINY_MODEL = {"arch": "slowfast", "depth": 50, "num_frames": 8, "sampling_rate": 2, "alpha": 4, "beta_inv": 4,
              "fusion_kernel_size": 5, "width_per_group": 8, "dropout_rate": 0.5, "aligned": True}
TINY_DATA = {"test_crop_size": 48}


def write_config(path: Path, *, num_classes: int = 80, train: dict = None, label_map: str = None) -> Path:
    """Our YAML for the tiny model with a ``train:`` section (PySlowFast's defaults where ``train`` is silent)."""
    values = {"name": "tiny", "model": dict(TINY_MODEL, num_classes=num_classes), "data": TINY_DATA}
    if label_map is not None:
        values["label_map"] = label_map
    values["train"] = {"batch_size": 2, "eval_period": 1, "checkpoint_period": 1, "seed": 0,
                       "augmentation": {"train_jitter_scales": [48, 56], "train_crop_size": 48},
                       "solver": {"base_lr": 0.05, "lr_policy": "cosine", "max_epoch": 2, "warmup_epochs": 0.0,
                                  "weight_decay": 1e-4},
                       **(train or {})}
    path.write_text(yaml.safe_dump(values, sort_keys=False), encoding="utf-8")
    return path


# (video, second) -> [(x1, y1, x2, y2, [action ids])]
ANNOTATIONS = {
    ("clip_a", 1): [("0.05", "0.1", "0.45", "0.9", [11]), ("0.55", "0.1", "0.95", "0.9", [12, 14])],
    ("clip_a", 2): [("0.05", "0.1", "0.45", "0.9", [11]), ("0.55", "0.1", "0.95", "0.9", [12])],
    ("clip_a", 3): [("0.1", "0.2", "0.5", "0.8", [14])],
    ("clip_b", 1): [("0.3", "0.1", "0.7", "0.9", [12])],
    ("clip_b", 2): [("0.05", "0.1", "0.45", "0.9", [14, 11]), ("0.6", "0.2", "0.9", "0.8", [12])],
    ("clip_b", 3): [("0.2", "0.1", "0.6", "0.9", [11])],
}
SUBSET = {11: "sit", 12: "stand", 14: "walk"}


def write_dataset(folder: Path, annotations: dict = None) -> dict:
    """Videos (``folder/videos/clip_a.mkv``, ``clip_b.mkv``: 4 s at 30 fps, 64x48), ``train.csv`` (GT rows with
    person ids) and the sit/stand/walk label map; returns their paths."""
    annotations = ANNOTATIONS if annotations is None else annotations
    videos = folder / "videos"
    videos.mkdir(parents=True, exist_ok=True)
    for video_id in sorted({video for video, _ in annotations}):
        write_index_video(videos / f"{video_id}.mkv", 120, fps=30)
    rows = []
    for (video_id, second), boxes in annotations.items():
        for person, (x1, y1, x2, y2, actions) in enumerate(boxes):
            rows += [f"{video_id},{second},{x1},{y1},{x2},{y2},{action},{person}" for action in actions]
    (folder / "train.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    write_label_map(SUBSET, folder / "subset.pbtxt")
    return {"videos": videos, "annotations": folder / "train.csv", "labelmap": folder / "subset.pbtxt"}

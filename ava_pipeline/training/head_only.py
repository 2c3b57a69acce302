"""Head-only fine-tuning (``ava-train --head-only``): a frozen backbone, cached RoI features, only the head trains.

For a CPU: the backbone and the RoI pooling run once per training (and validation) keyframe, through the fast
inference path (:func:`~ava_pipeline.models.inference.optimize_for_inference`), with the test-time transform
(short side to ``DATA.TEST_CROP_SIZE``, no crop, no flip). What the head's projection receives is kept: per box
the pooled feature vector (D = 2304 for SlowFast R50/R101: the temporal mean, RoIAlign and spatial max of every
pathway, concatenated). With ``views`` V > 1, each training keyframe also gets V - 1 augmented views (PySlowFast's
train transform, view ``v`` drawn as epoch ``v`` of the augmented dataset), and each epoch trains every keyframe
on one of its V views, drawn from ``(seed, epoch, index)``. The vectors are cached in
``RUN/head_features/{train,val}.pt`` under a key of the backbone's weights, the samples and boxes, the data
settings, the views and the video files, so a resumed or repeated run reuses them. Then only the head trains,
epoch after epoch, through the ordinary loop (same sampler, LR policy, SGD, BCE on probabilities, metrics,
evaluation and checkpoints):

    features (K, D) -> dropout -> projection (Linear D -> C) -> sigmoid -> (K, C) probabilities

The checkpoints hold the whole model (the frozen backbone and the trained head) in PySlowFast's layout, so
``ava-detect`` loads them like any other; the optimizer state covers the head's two tensors.
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch import nn

from ava_pipeline.models.inference import optimize_for_inference
from ava_pipeline.preprocess import batch_boxes
from ava_pipeline.training.dataset import TrainingBatch
from ava_pipeline.training.frames import FrameStoreError
from ava_pipeline.training.samples import seconds_text
from ava_pipeline.writers import atomic_output

CACHE_VERSION = 2
EXTRACTION_BATCH = 4  # clips per forward while extracting: the memory of inference, not of the training batch


def freeze_backbone(model: nn.Module) -> None:
    """Stop gradients to every parameter outside ``model.head`` (call before building the optimizer, so that it
    holds the head's parameters alone)."""
    for name, parameter in model.named_parameters():
        if not name.startswith("head."):
            parameter.requires_grad_(False)


class HeadOnlyModel(nn.Module):
    """The trainable end of the RoI head, on cached features: ``forward([features (K, D)], boxes) -> (K, C)``
    probabilities (``boxes`` unused: the features are already pooled per box). Shares its modules with the full
    model's head, so training it trains the full model."""

    def __init__(self, head: nn.Module):
        super().__init__()
        self.head = head

    def forward(self, inputs: Sequence[torch.Tensor], boxes: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.head.act(self.head.projection(self.head.dropout(inputs[0])))


class FeatureSet(torch.utils.data.Dataset):
    """Cached pooled features of a dataset's keyframes, one item per keyframe, in the dataset's order.

    ``features`` float32 (V, sum K, D): view 0 of the test-time transform, views 1.. augmented; ``labels`` float32
    (sum K, C), ``counts`` int64 (N,) boxes per keyframe, ``keys`` ``[(video_id, time), ...]``. Item ``(epoch,
    index)`` (or ``index``: epoch 0) has the :class:`~.dataset.AvaClipDataset` fields the loop and the evaluation
    use: ``"inputs"`` ``[features (K, D)]`` of the view drawn from ``(seed, epoch, index)`` (view 0 when V = 1),
    ``"labels"`` (K, C), ``"video_id"``, ``"time"``, ``"index"``.
    """

    def __init__(self, features: torch.Tensor, labels: torch.Tensor, counts: torch.Tensor, keys: list, *,
                 seed: int = 0):
        self.features, self.labels, self.counts, self.keys, self.seed = features, labels, counts, keys, seed
        self.offsets = [0] + torch.cumsum(counts, 0).tolist()

    @property
    def views(self) -> int:
        return int(self.features.shape[0])

    def view(self, epoch: int, index: int) -> int:
        """The view keyframe ``index`` trains on in ``epoch``: a pure function of ``(seed, epoch, index)``."""
        if self.views == 1:
            return 0
        return int(np.random.Generator(np.random.PCG64(np.random.SeedSequence(
            [self.seed, epoch, index, 0x7E1D]))).integers(self.views))

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, index) -> dict:
        epoch, index = index if isinstance(index, tuple) else (0, index)
        first, last = self.offsets[index], self.offsets[index + 1]
        video_id, time_value = self.keys[index]
        features = self.features[self.view(epoch, index), first:last]
        return {"inputs": [features], "labels": self.labels[first:last], "video_id": video_id, "time": time_value,
                "index": index}

    @property
    def boxes(self) -> int:
        return int(self.counts.sum())


def feature_collate(items: Sequence[dict]) -> TrainingBatch:
    """Concatenate the boxes of ``items`` into a :class:`~.dataset.TrainingBatch` whose ``inputs`` are
    ``[features (K, D)]`` and ``boxes`` (K, 5) carry the clip index (coordinates zero: the pooling is done)."""
    features = torch.cat([item["inputs"][0] for item in items])
    boxes = batch_boxes([torch.zeros(len(item["labels"]), 4) for item in items])
    return TrainingBatch(inputs=[features], boxes=boxes, labels=torch.cat([item["labels"] for item in items]),
                         ori_boxes=torch.zeros(len(boxes), 4, dtype=torch.float64),
                         keys=[(item["video_id"], item["time"]) for item in items],
                         indices=[item["index"] for item in items])


def feature_extractor(model: nn.Module, device: torch.device) -> nn.Module:
    """The fast inference copy of ``model`` returning, per box, the input of the head's projection:
    ``([slow, fast], boxes (K, 5) input pixels) -> (K, D)`` float32."""
    fast = optimize_for_inference(model, device=device)
    fast.model.head.projection = nn.Identity()
    fast.model.head.act = nn.Identity()
    return fast


def cache_key(model: nn.Module, dataset, augmented=None, views: int = 1) -> str:
    """What the features depend on: the backbone's tensors, the keyframes and their boxes, the clip and
    normalisation settings, the video files (path, size, modification time) and, with augmented views, their
    number and the augmentation settings."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        if not name.startswith("head.projection."):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    settings = {"version": CACHE_VERSION, "clip": {k: str(v) for k, v in dataset.clip_settings.items()},
                "alpha": dataset.alpha, "normalisation": dataset.normalisation, "size": dataset.test_crop_size,
                "videos": {}, "views": views}
    if views > 1:
        settings["augmentation"] = {"seed": augmented.seed, "store": augmented.store_short_side,
                                    **augmented.augmentation, **augmented.pca}
    for sample in dataset.samples:
        digest.update(f"{sample.video_id}|{seconds_text(sample.time)}|".encode())
        digest.update(sample.boxes.tobytes())
        if sample.video_id not in settings["videos"]:
            stat = Path(dataset.videos[sample.video_id]).stat()
            settings["videos"][sample.video_id] = [str(Path(dataset.videos[sample.video_id]).resolve()),
                                                   stat.st_size, stat.st_mtime_ns]
    digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def cached_features(model: nn.Module, dataset, path: Path, *, device: torch.device, augmented=None,
                    views: int = 1, batch_size: int = EXTRACTION_BATCH,
                    say: Callable[[str], None] = lambda line: None) -> FeatureSet:
    """The pooled features of every keyframe of ``dataset`` (an :class:`~.dataset.AvaClipDataset` without
    augmentation, prepared), from the cache file ``path`` when its key matches, else computed with the fast
    inference path, ``batch_size`` clips per forward, and written there atomically. ``views`` > 1 adds
    ``views - 1`` augmented views per keyframe, view ``v`` being item ``(v, index)`` of ``augmented`` (the same
    samples with augmentation, prepared); draws come from ``augmented.seed``."""
    from ava_pipeline.training.validation import predict

    if views > 1:
        if augmented is None or not augmented.augment:
            raise ValueError("augmented views need an augmented dataset of the same samples (augment=True)")
        keys, augmented_keys = ([(s.video_id, s.time) for s in d.samples] for d in (dataset, augmented))
        if keys != augmented_keys:
            differing = sorted(set(keys) ^ set(augmented_keys))[:5]
            raise FrameStoreError(f"the frame stores of the test-time view and of the augmented views serve "
                                  f"different keyframes ({', '.join(f'{v} at {seconds_text(t)} s' for v, t in differing)}"
                                  "): a video changed while ava-train prepared them; run the command again")
    key = cache_key(model, dataset, augmented, views)
    if path.is_file():
        try:
            stored = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - a damaged cache is recomputed
            stored = None
        if isinstance(stored, dict) and stored.get("key") == key:
            say(f"head-only: features of {int(stored['counts'].sum())} boxes reused from {path} ({views} view(s))")
            return FeatureSet(stored["features"], stored["labels"], stored["counts"],
                              [(video_id, dataset.samples[i].time) for i, (video_id, _) in enumerate(stored["keys"])],
                              seed=dataset.seed)
    extractor = feature_extractor(model, device)
    started = time.perf_counter()
    sources = [dataset] + [_View(augmented, view) for view in range(1, views)]
    pooled_views, labels, counts, keys = [], [], [], []
    for number, source in enumerate(sources):
        pooled_view = []
        for item, pooled in predict(extractor, source, batch_size=batch_size, device=device):
            pooled_view.append(torch.from_numpy(pooled))
            if number == 0:  # the views share their keyframes, boxes and labels
                labels.append(item["labels"])
                counts.append(len(pooled))
                keys.append((item["video_id"], item["time"]))
        pooled_views.append(torch.cat(pooled_view))
    seconds = time.perf_counter() - started
    result = FeatureSet(torch.stack(pooled_views), torch.cat(labels), torch.tensor(counts, dtype=torch.int64), keys,
                        seed=dataset.seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as temporary:
        torch.save({"key": key, "features": result.features, "labels": result.labels, "counts": result.counts,
                    "keys": [[video_id, seconds_text(t)] for video_id, t in keys]}, temporary)
    say(f"head-only: features of {result.boxes} boxes in {len(keys)} keyframes extracted in {seconds:.1f} s "
        f"({views} view(s), {len(keys) * views / max(seconds, 1e-9):.2f} clips/s), cached in {path}")
    return result


class _View(torch.utils.data.Dataset):
    """Augmented view ``view`` of every item of an augmented dataset: item ``i`` is ``dataset[(view, i)]``."""

    def __init__(self, dataset, view: int):
        self.dataset, self.view = dataset, view

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index) -> dict:
        return self.dataset[(self.view, index)]


@torch.no_grad()
def head_predictions(head: HeadOnlyModel, features: FeatureSet, device: torch.device) -> list:
    """``(item, probs (K, C) numpy)`` per keyframe of ``features`` in order, in eval mode (what
    :func:`~ava_pipeline.training.validation.validate` takes as ``predictions``)."""
    was_training = head.training
    head.eval()
    probs = head([features.features[0].to(device)]).float().cpu().numpy()
    head.train(was_training)
    return [({"video_id": features.keys[i][0], "time": features.keys[i][1], "index": i},
             probs[features.offsets[i]:features.offsets[i + 1]]) for i in range(len(features))]

"""Evaluation during training: the model's scores on the validation boxes, scored by our frame-mAP evaluator.

The boxes scored are the ``--val-proposals`` boxes with score >= the config's ``box_thresh`` (PySlowFast's
``TEST_PREDICT_BOX_LISTS``), or the ground-truth boxes of ``--val-annotations`` when no proposals are given (then
the mAP measures classification alone). Clips get the inference transform (short side to ``test_crop_size``, no
crop), as ``ava-detect`` feeds the model. Every val keyframe is used (PySlowFast keeps only seconds divisible by 4
of AVA's 15-minute window; our videos are any length). The detections are written as an AVA CSV
(``RUN/eval/epoch_NNNNN.csv``, action ids of the label map) and scored with ``ava_pipeline.evaluation.evaluate``
(official 2019 protocol) over the label map's classes, excluding ``--val-exclusions`` keyframes.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np
import torch
from torch import nn

from ava_pipeline.detector import read_person_boxes
from ava_pipeline.evaluation import evaluate
from ava_pipeline.training.dataset import collate
from ava_pipeline.training.samples import TrainingSample, read_training_samples
from ava_pipeline.writers import atomic_output, keyframe_rows


@dataclass
class ValidationSet:
    """Keyframes to score: samples (labels unused) and, per (video_id, time), the coordinate texts of the boxes
    to write (the box file's own text for proposals)."""

    samples: list
    box_texts: dict
    annotations: Path
    exclusions: Optional[Path]
    summary: str


def read_validation_set(annotations: str | Path, *, class_ids: Sequence[int], proposals: Sequence[str | Path] = (),
                        exclusions: Optional[str | Path] = None, score_thresh: float) -> ValidationSet:
    """The keyframes and boxes to score (module docstring). The ground truth is read either way, so a bad row
    is reported before training starts."""
    truth = read_training_samples(annotations, class_ids=class_ids, exclusions=exclusions)
    if not proposals:
        texts = {(s.video_id, s.time): [tuple(repr(float(v)) for v in box) for box in s.boxes]
                 for s in truth.samples}
        return ValidationSet(truth.samples, texts, Path(annotations), Path(exclusions) if exclusions else None,
                             f"{truth.summary()} (ground-truth boxes scored)")
    merged: dict = {}
    for path in proposals:
        for video_id, times in read_person_boxes(path, score_thresh=score_thresh).items():
            for time, persons in times.items():
                if len(persons.boxes):
                    merged.setdefault((video_id, Fraction(time)), {}).update(
                        {tuple(texts): None for texts in persons.original})
    samples, texts = [], {}
    for (video_id, time), boxes in merged.items():
        box_texts = list(boxes)
        samples.append(TrainingSample(video_id, time, np.array([[float(v) for v in t] for t in box_texts]),
                                      np.zeros((len(box_texts), len(class_ids)), np.float32)))
        texts[(video_id, time)] = box_texts
    boxes = sum(len(s.boxes) for s in samples)
    return ValidationSet(samples, texts, Path(annotations), Path(exclusions) if exclusions else None,
                         f"{len(samples)} keyframes with {boxes} proposal boxes (score >= {score_thresh}) in "
                         f"{len({s.video_id for s in samples})} videos")


@torch.no_grad()
def predict(model: nn.Module, dataset, *, batch_size: int, device: torch.device):
    """Yield ``(item, probs (K, C) numpy)`` for every item of ``dataset`` in order, in eval mode; consecutive
    clips of one size share a forward pass of up to ``batch_size`` clips."""
    model.eval()
    pending: list = []

    def flush():
        batch = collate(pending)
        probs = model(batch.model_inputs(device), batch.boxes.to(device)).float().cpu().numpy()
        offset = 0
        for item in pending:
            yield item, probs[offset:offset + len(item["boxes"])]
            offset += len(item["boxes"])

    for index in range(len(dataset)):
        item = dataset[index]
        if pending and (len(pending) == batch_size or item["inputs"][-1].shape != pending[0]["inputs"][-1].shape):
            yield from flush()
            pending = []
        pending.append(item)
    if pending:
        yield from flush()


def validate(model: nn.Module, dataset, validation: ValidationSet, *, class_ids: Sequence[int], labelmap: Path,
             out_csv: Path, batch_size: int, device: torch.device, predictions: Optional[Iterable] = None) -> dict:
    """Score ``dataset`` (built from ``validation.samples``) and evaluate; returns the metrics record
    ``{"mAP", "per_class": {id: AP}, "detections": path, "keyframes"}``. ``predictions``: the ``(item, probs)``
    pairs of :func:`predict` computed elsewhere (a sharded validation), in dataset order."""
    with atomic_output(out_csv) as temporary, open(temporary, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        keyframes = 0
        if predictions is None:
            predictions = predict(model, dataset, batch_size=batch_size, device=device)
        for item, probs in predictions:
            keyframes += 1
            texts = validation.box_texts[(item["video_id"], item["time"])]
            writer.writerows(keyframe_rows(item["video_id"], item["time"], texts, probs, class_ids))
    result = evaluate(validation.annotations, out_csv, labelmap, exclusions=validation.exclusions)
    return {"mAP": _number(result.mAP), "per_class": {str(k): _number(v) for k, v in result.per_class.items()},
            "keyframes": keyframes, "detections": str(out_csv)}


def _number(value: float) -> Optional[float]:
    """A float for JSON (NaN, a class without ground truth, becomes null)."""
    return None if value != value else float(value)

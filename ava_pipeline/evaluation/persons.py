"""Person-detector quality against AVA ground-truth boxes: COCO-style AP (IoU 0.5:0.95) and AP50 (pycocotools).

Ground truth: the unique ``(video, timestamp, box)`` of an AVA ground-truth CSV (action and person columns are
ignored). Detections: rows ``video_id,timestamp,x1,y1,x2,y2[,label][,score]`` (score 1.0 when absent); a box listed
once per action is counted once, with its highest score. One image per ``(video, timestamp)`` (timestamps compared
as numbers, ``"0902"`` == ``"902"``). Normalized boxes are scaled to a notional 1000 x 1000 image: AP does not depend
on the scale except through COCO's small/medium/large area ranges, so only overall AP and AP50 are reported. COCO
keeps at most 100 detections per image.
"""
from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np

from ..ava_csv import csv_rows
from ..errors import DependencyMissingError, InputFormatError
from .io import key_2020

NOTIONAL_IMAGE_SIZE = 1000
"""Normalized boxes are multiplied by this many pixels (width and height) before COCO evaluation."""


def read_person_boxes(path, *, with_scores: bool):
    """``{(video, timestamp_key): {box (x1, y1, x2, y2): score}}`` of an AVA CSV; ground-truth files
    (``with_scores=False``) take 7 or 8 columns, box files 6, 7 or 8 (the 8th is the score)."""
    path = Path(path)
    images: dict = {}
    allowed = (6, 7, 8) if with_scores else (7, 8)
    for line, row in csv_rows(path):
        if len(row) not in allowed:
            raise InputFormatError(f"{path}:{line}: expected {' or '.join(map(str, allowed))} columns "
                                   f"(video_id,timestamp,x1,y1,x2,y2,...), got {len(row)}")
        try:
            key = key_2020(row[0], row[1])
        except ValueError:
            raise InputFormatError(f"{path}:{line}: timestamp {row[1]!r} is not a number") from None
        try:
            box = tuple(float(v) for v in row[2:6])
            score = float(row[7]) if with_scores and len(row) == 8 else 1.0
        except ValueError:
            raise InputFormatError(f"{path}:{line}: box and score must be numbers, got {row[2:]}") from None
        boxes = images.setdefault(key, {})
        boxes[box] = max(score, boxes.get(box, -np.inf))
    return images


def person_detection_ap(gt, det) -> dict:
    """COCO AP (mean over IoU 0.5:0.95) and AP50 of person boxes ``det`` against the boxes of ``gt`` (paths).

    Returns ``{"AP", "AP50", "images", "gt_boxes", "detections"}``; AP is 0.0 when there is no detection.
    """
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError:
        raise DependencyMissingError("ava-eval persons needs pycocotools: pip install pycocotools") from None
    gt_images = read_person_boxes(gt, with_scores=False)
    det_images = read_person_boxes(det, with_scores=True)
    image_ids = {key: i + 1 for i, key in enumerate(sorted(set(gt_images) | set(det_images)))}
    size = NOTIONAL_IMAGE_SIZE

    def xywh(box):
        x1, y1, x2, y2 = (v * size for v in box)
        return [x1, y1, x2 - x1, y2 - y1]

    annotations = []
    for key, boxes in gt_images.items():
        for box in boxes:
            x, y, w, h = xywh(box)
            annotations.append({"id": len(annotations) + 1, "image_id": image_ids[key], "category_id": 1,
                                "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
    detections = [{"image_id": image_ids[key], "category_id": 1, "bbox": xywh(box), "score": score}
                  for key, boxes in det_images.items() for box, score in boxes.items()]
    summary = {"images": len(image_ids), "gt_boxes": len(annotations), "detections": len(detections)}
    if not detections or not annotations:
        return {"AP": 0.0, "AP50": 0.0, **summary}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco_gt = COCO()
        coco_gt.dataset = {"images": [{"id": i, "width": size, "height": size} for i in image_ids.values()],
                           "annotations": annotations, "categories": [{"id": 1, "name": "person"}]}
        coco_gt.createIndex()
        coco_det = coco_gt.loadRes(detections)
        evaluator = COCOeval(coco_gt, coco_det, iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {"AP": float(evaluator.stats[0]), "AP50": float(evaluator.stats[1]), **summary}

"""``build_detector``: one of the backends by name, from plain settings."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

from ..errors import ConfigError
from .base import DEFAULT_MAX_DETECTIONS, DEFAULT_SCORE_THRESH, PersonDetector
from .detectron2 import DEFAULT_DETECTRON2_MODEL, build_detectron2_detector
from .precomputed import build_precomputed_detector
from .torchvision import DEFAULT_TORCHVISION_MODEL, build_torchvision_detector

BACKENDS = ("torchvision", "detectron2", "precomputed")
"""Detector backends by name (``ava-detect --detector``)."""


def build_detector(backend: str = "torchvision", *, model: Optional[str] = None,
                   weights: Union[str, Path, None] = None, boxes_csv: Union[str, Path, None] = None,
                   score_thresh: float = DEFAULT_SCORE_THRESH, min_box_size: float = 0.0,
                   max_detections: Optional[int] = None, device: str = "cpu",
                   input_min_size: Optional[int] = None, input_max_size: Optional[int] = None,
                   fast: bool = True, precision: str = "fp32") -> PersonDetector:
    """The person detector ``backend`` (one of :data:`BACKENDS`) from plain settings.

    * ``model``: torchvision model name (:data:`TORCHVISION_MODELS`, default ``fasterrcnn_resnet50_fpn_v2``)
      or detectron2 config (zoo name or YAML file, default ``COCO-Detection/faster_rcnn_R_50_FPN_3x``).
    * ``weights``: local weights file; None: the model's default COCO weights (downloaded once, hash checked).
    * ``boxes_csv``: the box file of the ``precomputed`` backend (required there, refused elsewhere).
    * ``score_thresh``: keep persons scored at least this. ``min_box_size``: image backends keep boxes whose
      width and height are both at least this many pixels of the original image. ``max_detections``: image
      backends keep at most this many persons per image, best first (default 100).
    * ``input_min_size`` / ``input_max_size``: override the image models' resize (short side, long-side cap).
    * ``fast``: torchvision runs its fast inference copy (:mod:`.fast`; the same detections within float32
      rounding); ``False`` runs the eager model. The other backends have no fast path and ignore it.
    * ``precision``: ``"fp32"``, or ``"fp16"`` / ``"bf16"`` autocast of torchvision's fast path (for GPUs).
    """
    if backend not in BACKENDS:
        raise ConfigError(f"unknown detector backend {backend!r}; use one of {list(BACKENDS)}")
    if not 0.0 <= score_thresh <= 1.0:
        raise ConfigError(f"score_thresh must be in [0, 1], got {score_thresh}")
    if precision != "fp32" and backend != "torchvision":
        raise ConfigError(f"precision={precision!r} applies to the torchvision detector only, not to {backend}; "
                          "drop it")
    if backend == "precomputed":
        if boxes_csv is None:
            raise ConfigError("the precomputed detector needs a box CSV (boxes_csv=... / --boxes)")
        image_options = {"model": model, "weights": weights, "max_detections": max_detections,
                         "input_min_size": input_min_size, "input_max_size": input_max_size,
                         "min_box_size": min_box_size or None}
        given = {key: value for key, value in image_options.items() if value is not None}
        if given:
            raise ConfigError(f"{given} only apply to image detectors, not to precomputed boxes from {boxes_csv}; "
                              "drop them")
        return build_precomputed_detector(boxes_csv, score_thresh=score_thresh)
    if boxes_csv is not None:
        raise ConfigError(f"boxes_csv={str(boxes_csv)!r} (--boxes) gives precomputed boxes but detector={backend!r} "
                          "(--detector); drop one of them")
    if min_box_size < 0:
        raise ConfigError(f"min_box_size must be >= 0 pixels, got {min_box_size}")
    max_detections = DEFAULT_MAX_DETECTIONS if max_detections is None else max_detections
    if max_detections < 1:
        raise ConfigError(f"max_detections must be at least 1, got {max_detections}")
    options = dict(weights=weights, score_thresh=score_thresh, min_box_size=min_box_size,
                   max_detections=max_detections, device=device, input_min_size=input_min_size,
                   input_max_size=input_max_size)
    if backend == "torchvision":
        return build_torchvision_detector(model or DEFAULT_TORCHVISION_MODEL, fast=fast, precision=precision,
                                          **options)
    return build_detectron2_detector(model or DEFAULT_DETECTRON2_MODEL, **options)

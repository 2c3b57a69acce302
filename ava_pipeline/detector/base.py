"""What every person detector shares: the per-image result, the protocol the pipeline relies on, raw-output filtering.

Data flow::

    keyframe images, uint8 (H, W, 3) RGB, original size
        ──► PersonDetector.detect(images, video_id=..., timestamps=...)
        ──► one PersonBoxes per image: boxes float32 (K, 4) normalized x1, y1, x2, y2 in [0, 1]
            (top-left origin), scores float32 (K,) descending for image backends

Every backend keeps a box when its score is at least ``score_thresh`` (PySlowFast's rule for box files).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Protocol, Sequence

import numpy as np

DEFAULT_SCORE_THRESH = 0.8
"""Person score threshold of the released AVA box files as SlowFast uses them."""
DEFAULT_MAX_DETECTIONS = 100
"""Person boxes kept per image by the image backends (highest scores first)."""
NO_MODEL_CAP = 100_000
"""Per-image cap handed to the models: detections of other classes must never crowd persons out."""


@dataclass
class PersonBoxes:
    """Person boxes of one keyframe image.

    ``boxes`` float32 (K, 4): normalized ``x1, y1, x2, y2`` in [0, 1] of the image, top-left origin.
    ``scores`` float32 (K,): detector scores. ``original``: for boxes read from a file, the 4 coordinate
    texts per box exactly as written there (so that outputs can repeat them verbatim), else None.
    """

    boxes: np.ndarray
    scores: np.ndarray
    original: Optional[list[tuple[str, str, str, str]]] = field(default=None)

    def __len__(self) -> int:
        return len(self.boxes)

    @classmethod
    def empty(cls, *, from_file: bool = False) -> "PersonBoxes":
        return cls(np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), [] if from_file else None)


class PersonDetector(Protocol):
    """What the pipeline needs of a person detector (see the module docstring for the data contract).

    Only :meth:`detect` is required of an object passed to ``ActionDetector(detector=...)``; the pipeline reads
    the other members when present: ``description`` (default: the class name), ``needs_pixels`` (default True),
    ``fingerprint()`` (default: the class name only, so batch manifests cannot tell two configurations apart),
    ``to(device)`` and ``timestamps_for(video_id)``.
    """

    description: str
    """One human-readable line: backend, model, weights, thresholds."""
    needs_pixels: bool
    """False when boxes are looked up by video id and time (a box file): the pipeline then asks for them while
    decoding and skips preprocessing keyframes without persons."""

    def detect(self, images: Sequence[np.ndarray], *, video_id: Optional[str] = None,
               timestamps: Optional[Sequence] = None) -> list[PersonBoxes]:
        """Person boxes for each keyframe. ``images``: uint8 (H, W, 3) RGB arrays; ``timestamps``: seconds
        from the video start, one per image. Image backends ignore ``video_id`` and ``timestamps``; the
        precomputed backend ignores the pixels."""

    def fingerprint(self) -> dict:
        """JSON-ready record of everything that determines the boxes (recorded in batch manifests)."""

    def to(self, device: Any) -> "PersonDetector":
        """Move the model to ``device`` (no-op without a model); returns self."""

    def timestamps_for(self, video_id: str) -> list:
        """The keyframe times the detector knows boxes for (a box file's), ascending; ``[]`` when none. Only
        detectors with ``needs_pixels = False`` have it; the pipeline uses it as the default schedule."""


def strictly_below(threshold: float) -> float:
    """The largest float32 below ``threshold``: models that keep ``score > t`` then keep ``score >= threshold``."""
    return float(np.nextafter(np.float32(threshold), np.float32(-np.inf)))


def select_persons(boxes_px: np.ndarray, scores: np.ndarray, labels: np.ndarray, *, person_label: int,
                   image_size: tuple[int, int], score_thresh: float, min_box_size: float,
                   max_detections: int) -> PersonBoxes:
    """Person boxes of one image from a detector's raw outputs.

    ``boxes_px`` float (N, 4) ``x1, y1, x2, y2`` in pixels of the original image of ``image_size``
    (width, height), ``scores`` (N,), ``labels`` (N,) class ids. Keeps label
    ``person_label`` with score ``>= score_thresh`` and both sides ``>= min_box_size`` pixels, the
    ``max_detections`` best of them (descending score), normalized by the image size and clipped to [0, 1].
    """
    scores = np.asarray(scores, np.float32).reshape(-1)
    order = np.argsort(-scores, kind="stable")
    boxes_px, scores = np.asarray(boxes_px, np.float32).reshape(-1, 4)[order], scores[order]
    labels = np.asarray(labels).reshape(-1)[order]
    width, height = image_size
    keep = (labels == person_label) & (scores >= np.float32(score_thresh))
    keep &= (boxes_px[:, 2] - boxes_px[:, 0] >= min_box_size) & (boxes_px[:, 3] - boxes_px[:, 1] >= min_box_size)
    chosen = np.flatnonzero(keep)[:max_detections]
    normalized = boxes_px[chosen] / np.array([width, height, width, height], np.float32)
    return PersonBoxes(np.clip(normalized, 0.0, 1.0).astype(np.float32), scores[chosen].copy())


def check_images(images: Sequence[np.ndarray]) -> None:
    for index, image in enumerate(images):
        if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3
                and image.shape[2] == 3):
            described = (f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__)
            raise ValueError(f"image {index}: expected a uint8 (H, W, 3) RGB array, got {described}")


class ImageDetector:
    """What the image backends share: the model's identity (``name``, ``weights`` label, ``weights_sha256``) and
    the person selection applied to its raw outputs (:func:`select_persons` with ``person_label``,
    ``score_thresh``, ``min_box_size``, ``max_detections``)."""

    backend = "image"
    needs_pixels = True

    def __init__(self, *, name: str, weights: str, weights_sha256: Optional[str], score_thresh: float,
                 min_box_size: float, max_detections: int, person_label: int):
        self.name = name
        self.weights = weights
        self.weights_sha256 = weights_sha256
        self.score_thresh = float(score_thresh)
        self.min_box_size = float(min_box_size)
        self.max_detections = int(max_detections)
        self.person_label = person_label

    def _describe(self, details: str) -> str:
        """``<backend> <name> (<weights>, <hash>), <details>, <selection>``: the one-line description."""
        digest = f"sha256 {self.weights_sha256[:12]}" if self.weights_sha256 else "no hash"
        return (f"{self.backend} {self.name} ({self.weights}, {digest}), {details}, person score >= "
                f"{self.score_thresh}, boxes >= {self.min_box_size:g} px, <= {self.max_detections} per image")

    def _fingerprint(self, **details) -> dict:
        return {"backend": self.backend, "model": self.name, "weights": self.weights,
                "weights_sha256": self.weights_sha256, "score_thresh": self.score_thresh,
                "min_box_size": self.min_box_size, "max_detections": self.max_detections, **details}

    def _persons(self, boxes_px, scores, labels, image: np.ndarray) -> PersonBoxes:
        """The persons among one image's raw detections (pixels of ``image``)."""
        return select_persons(boxes_px, scores, labels, person_label=self.person_label,
                              image_size=(image.shape[1], image.shape[0]), score_thresh=self.score_thresh,
                              min_box_size=self.min_box_size, max_detections=self.max_detections)

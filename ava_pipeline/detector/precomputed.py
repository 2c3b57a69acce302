"""Precomputed person boxes: an AVA box CSV looked up by video id and keyframe time (pixels unused)."""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np

from ..ava_csv import BOX_CSV_FORMAT, box_file_rows, exact_seconds, parse_box_row, plain_seconds
from ..checksums import file_sha256
from ..errors import InputFormatError
from .base import DEFAULT_SCORE_THRESH, PersonBoxes


def read_person_boxes(path: Union[str, Path], *, score_thresh: float = DEFAULT_SCORE_THRESH
                      ) -> dict[str, dict[Fraction, PersonBoxes]]:
    """Person boxes of an AVA box CSV, ``{video_id: {time: PersonBoxes}}`` in file order.

    Rows ``video_id,timestamp,x1,y1,x2,y2[,label[,score]]`` without header (a pandas-style header line
    starting ``video_id,timestamp`` is skipped): coordinates normalized in [0, 1]; a missing score counts
    as 1.0; the label column is ignored. Rows scored below ``score_thresh`` are dropped; rows with identical
    coordinate text at one keyframe are one box, scored by the highest of its rows (files of ``ava-detect``,
    one row per box and action, thus give each box its best action score). Every keyframe of the file is
    listed, even when none of its boxes passes the threshold. ``PersonBoxes.original`` keeps the coordinate
    text. A malformed row raises :class:`InputFormatError` naming file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise InputFormatError(f"{path}: box file not found; pass an AVA box CSV ({BOX_CSV_FORMAT})")
    # {video: {time: {coordinate texts: [x1, y1, x2, y2, score]}}}
    found: dict[str, dict[Fraction, dict[tuple, list]]] = {}
    for line_number, fields in box_file_rows(path):
        video_id, time, texts, score = parse_box_row(fields, f"{path}:{line_number}")
        boxes = found.setdefault(video_id, {}).setdefault(time, {})
        if score < score_thresh:
            continue
        if texts in boxes:
            boxes[texts][4] = max(boxes[texts][4], score)
        else:
            boxes[texts] = [float(value) for value in texts] + [score]
    return {video_id: {time: PersonBoxes(np.array([v[:4] for v in boxes.values()], np.float32).reshape(-1, 4),
                                         np.array([v[4] for v in boxes.values()], np.float32),
                                         list(boxes))
                       for time, boxes in times.items()}
            for video_id, times in found.items()}


class PrecomputedPersonDetector:
    """Person boxes looked up in a box file by video id and keyframe time; the pixels are not used.

    ``boxes``: ``{video_id: {time (Fraction seconds): PersonBoxes}}`` as :func:`read_person_boxes` gives;
    ``source`` / ``source_sha256`` name the file for the fingerprint. A keyframe absent from the file has
    no persons.
    """

    backend = "precomputed"
    needs_pixels = False

    def __init__(self, boxes: dict[str, dict[Fraction, PersonBoxes]], *, source: str, source_sha256: str,
                 score_thresh: float):
        self.boxes = boxes
        self.source = source
        self.source_sha256 = source_sha256
        self.score_thresh = float(score_thresh)

    @property
    def description(self) -> str:
        keyframes = sum(len(times) for times in self.boxes.values())
        return (f"precomputed boxes from {self.source} ({len(self.boxes)} videos, {keyframes} keyframes), "
                f"person score >= {self.score_thresh}")

    def fingerprint(self) -> dict:
        return {"backend": self.backend, "boxes": Path(self.source).name, "boxes_sha256": self.source_sha256,
                "score_thresh": self.score_thresh}

    def to(self, device: Any) -> "PrecomputedPersonDetector":
        return self

    def timestamps_for(self, video_id: str) -> list:
        """Ascending keyframe times of ``video_id`` in the file (int for whole seconds, else Fraction)."""
        return [plain_seconds(time) for time in sorted(self.boxes.get(video_id, {}))]

    def detect(self, images: Sequence[np.ndarray] = (), *, video_id: Optional[str] = None,
               timestamps: Optional[Sequence] = None) -> list[PersonBoxes]:
        """The file's boxes of ``video_id`` at each of ``timestamps`` (``images``, if given, only fix the
        count: one per timestamp)."""
        if video_id is None or timestamps is None:
            raise ValueError("precomputed boxes are looked up by video_id and timestamps; pass both")
        if images and len(images) != len(timestamps):
            raise ValueError(f"{len(images)} images but {len(timestamps)} timestamps")
        times = self.boxes.get(video_id, {})
        return [times.get(exact_seconds(t)) or PersonBoxes.empty(from_file=True) for t in timestamps]


def build_precomputed_detector(boxes_csv: Union[str, Path], *, score_thresh: float = DEFAULT_SCORE_THRESH
                               ) -> PrecomputedPersonDetector:
    """Person boxes from the AVA box CSV ``boxes_csv`` (see :func:`read_person_boxes`)."""
    boxes = read_person_boxes(boxes_csv, score_thresh=score_thresh)
    return PrecomputedPersonDetector(boxes, source=str(boxes_csv), source_sha256=file_sha256(boxes_csv),
                                     score_thresh=score_thresh)

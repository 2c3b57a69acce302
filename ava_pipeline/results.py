"""What the pipeline yields per keyframe, and how a damaged video's partial results are kept and reported.

Consumed by the writers, the batch engines, tracking and the command line; nothing here imports torch.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

import numpy as np

from .labels import AVA_ACTIONS, action_id_of_column


@dataclass
class KeyframeResult:
    """Detections at one keyframe of one video.

    ``boxes`` float32 (K, 4) are normalized ``x1, y1, x2, y2`` in [0, 1] of the keyframe image (top-left
    origin), as the detector gave them; ``box_strings`` holds the box file's original coordinate text per box
    for precomputed boxes (written verbatim to the CSV), else None. ``box_scores`` float32 (K,) are the
    detector scores. ``probs`` float32 (K, C): column ``c`` is the probability of action id ``action_ids[c]``,
    named ``action_names[c]`` (AVA's 80 actions: ``c + 1`` and AVA's names; a model trained on its own label map:
    that map's ids and names in file order); :meth:`action_id` / :meth:`action_name` read them.
    ``keyframe_image`` uint8 (H, W, 3) RGB is the frame at the keyframe on the fps grid (for rendering).
    ``person_id`` int64 (K,): with tracking (``ActionDetector(tracks=True)``), each box's person, stable across
    the video's keyframes while the person stays in view (:mod:`ava_pipeline.tracking`); else None.
    ``features`` float32 (K, D): the action head's pooled RoI features, set only between the action model and
    the tracking stage (None in the results a stream yields).
    """

    video_id: str
    timestamp: Any  # seconds from the start of the video (int, Fraction or float, as scheduled)
    index: int  # position of this keyframe in the video's schedule (0-based)
    num_keyframes: int  # keyframes scheduled for the video (estimated from the header for the default schedule)
    pts: Optional[int]  # presentation timestamp of the keyframe's source frame, in its stream's time base
    pts_time: float  # the same in seconds
    image_size: tuple[int, int]  # (width, height) of the keyframe image in pixels
    boxes: np.ndarray
    box_strings: Optional[list[tuple[str, str, str, str]]]
    box_scores: np.ndarray
    probs: np.ndarray
    keyframe_image: np.ndarray = field(repr=False)
    action_ids: tuple[int, ...] = ()  # action id of each probs column; empty: column c is id c + 1
    action_names: tuple[str, ...] = ()  # name of each probs column; empty: AVA's name of its id
    person_id: Optional[np.ndarray] = None
    features: Optional[np.ndarray] = field(default=None, repr=False)

    @property
    def num_persons(self) -> int:
        return len(self.boxes)

    def action_id(self, column: int) -> int:
        """Action id of probs column ``column`` (the model's label map's; AVA: ``column + 1``)."""
        return self.action_ids[column] if self.action_ids else action_id_of_column(column)

    def action_name(self, column: int) -> str:
        """Name of probs column ``column`` (the model's label map's; else AVA's, "" for an id AVA lacks)."""
        return self.action_names[column] if self.action_names else AVA_ACTIONS.get(self.action_id(column), "")


class KeptBeforeDamage:
    """Iterate a video's results, ending quietly at a damage once keyframes were yielded.

    A :class:`~ava_pipeline.video.VideoTruncatedError` (damaged or truncated file, keyframes past its end)
    after at least one keyframe ends the iteration and is kept in :attr:`error`, so that the caller writes
    the keyframes decoded before the damage and then reports the loss; before the first keyframe, and for
    any other error, it propagates.
    """

    def __init__(self, results: Iterable[KeyframeResult]):
        self._results = results
        self.error: Optional[Exception] = None

    def __iter__(self) -> Iterator[KeyframeResult]:
        from .video import VideoTruncatedError

        yielded = False
        try:
            for result in self._results:
                yielded = True
                yield result
        except VideoTruncatedError as error:
            if not yielded:
                raise
            self.error = error


def damage_note(keyframes: int, output: str | Path) -> str:
    """The end of the error line of a video whose keyframes were only partly produced: where those went."""
    return f"the {keyframes} keyframe(s) it could produce are written to {Path(output).absolute()}"

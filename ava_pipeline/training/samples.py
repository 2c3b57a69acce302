"""Training samples: AVA ground truth + person proposals + exclusions + label map -> one sample per keyframe.

PySlowFast's merge rules (``TRAIN_SPEC.md`` section 1), generalised to any video and any label ids:

* Files are read in order: the ground-truth files, then the proposal files, whose rows scored below
  ``score_thresh`` are dropped (``score < thresh``, as PySlowFast's ``float(row[7]) < thresh``).
* At each keyframe ``(video_id, time)`` boxes are keyed by the exact text of their four coordinates
  (``"0.15"`` and ``"0.150"`` are two boxes; no numeric or IoU matching); box order = first appearance over
  the files. Every row adds its action to its box; an empty action column or ``-1`` adds nothing, so a box
  seen only in such rows (an unlabelled proposal) is a pure negative with an all-zero target, and is trained.
* Labels: column ``j`` of the target is the ``j``-th class id of the label map (label-map order, any ids).
  A row whose action is not in the map is skipped entirely (counted per action id), or is an error with
  ``strict_labels``.
* Excluded keyframes (``video_id,timestamp`` rows) are dropped with all their rows (counted).
* Blank lines and a header line starting ``video_id,timestamp`` are skipped.
* Keyframes are any time in seconds (``902``, ``3``, ``12.5``, ``1805/2``), exact (Fraction): no 902-1798
  window, no 30 fps assumption. Samples are ordered by video (order of first appearance) then time.

Every malformed input is an :class:`~ava_pipeline.errors.InputFormatError` naming file and line.
"""
from __future__ import annotations

import decimal
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Mapping, Optional, Sequence, Union

import numpy as np

from ..errors import InputFormatError
from ..ava_csv import csv_rows, parse_keyframe_box, parse_seconds
from ..video import VideoMetadata, VideoReader

PathLike = Union[str, Path]
NO_ACTION = -1
"""The action of a row that names a box but no action (empty column or ``-1``): the box is a negative."""
GT_FORMAT = "video_id,timestamp,x1,y1,x2,y2,action_id[,person_id]"
PROPOSAL_FORMAT = "video_id,timestamp,x1,y1,x2,y2[,action_id[,score]]"


@dataclass(frozen=True)
class TrainingSample:
    """One keyframe to train on.

    ``time``: seconds from the video start (exact). ``boxes``: float64 (K, 4) normalised ``x1, y1, x2, y2``
    in [0, 1], top-left origin, as ``float()`` parses the file's text (before any clipping). ``labels``:
    float32 (K, C) multi-hot, column ``j`` = the ``j``-th class of the label map; an all-zero row is a
    negative box. ``source``: ``file:line`` of the keyframe's first row. Samples compare (and hash) by video,
    time and source.
    """

    video_id: str
    time: Fraction
    boxes: np.ndarray = field(repr=False, compare=False)
    labels: np.ndarray = field(repr=False, compare=False)
    source: str = ""


@dataclass
class SampleSet:
    """The samples of a training (or validation) set and what reading them skipped.

    ``samples``: video order of first appearance, then time ascending. ``class_ids``: the label map's ids in
    column order. ``skipped``: row counts ``rows_not_in_label_map``, ``rows_excluded``,
    ``proposals_below_threshold``; ``not_in_label_map_by_action``: ``{action_id: rows}`` of the first.
    """

    samples: list
    class_ids: tuple
    skipped: dict
    not_in_label_map_by_action: dict
    _first_rows: dict = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.samples)

    def video_ids(self) -> list:
        """The videos the samples use, in sample order."""
        return list(dict.fromkeys(sample.video_id for sample in self.samples))

    def first_rows(self) -> dict:
        """``{video_id: "file:line"}`` of each video's first annotation row (for messages)."""
        return dict(self._first_rows)

    def summary(self) -> str:
        """One line: samples, boxes, negatives, videos, and every kind of skipped row with its count."""
        boxes = sum(len(sample.boxes) for sample in self.samples)
        negatives = sum(int((~sample.labels.any(axis=1)).sum()) for sample in self.samples)
        text = (f"{len(self.samples)} keyframes with {boxes} boxes ({negatives} unlabelled) in "
                f"{len(self.video_ids())} videos, {len(self.class_ids)} classes")
        skipped = []
        if self.skipped.get("rows_not_in_label_map"):
            actions = sorted(self.not_in_label_map_by_action.items(), key=lambda item: (-item[1], item[0]))
            shown = ", ".join(f"{action} ({rows})" for action, rows in actions[:8])
            more = f", ... ({len(actions)} ids)" if len(actions) > 8 else ""
            skipped.append(f"{self.skipped['rows_not_in_label_map']} rows whose action is not in the label map: "
                           f"{shown}{more}")
        if self.skipped.get("rows_excluded"):
            skipped.append(f"{self.skipped['rows_excluded']} rows at excluded keyframes")
        if self.skipped.get("proposals_below_threshold"):
            skipped.append(f"{self.skipped['proposals_below_threshold']} proposal rows below the score threshold")
        return text + ("; skipped " + "; ".join(skipped) if skipped else "")


class _Keyframe:
    """Boxes of one keyframe under construction: coordinate text -> (box, set of actions)."""

    __slots__ = ("boxes", "source")

    def __init__(self, source: str):
        self.boxes: dict[tuple, tuple[list, set]] = {}
        self.source = source


def read_training_samples(annotations: Union[PathLike, Sequence[PathLike]], *, class_ids: Iterable[int],
                          proposals: Sequence[PathLike] = (), exclusions: Optional[PathLike] = None,
                          score_thresh: float = 0.8, strict_labels: bool = False) -> SampleSet:
    """Merge AVA ground-truth and proposal box files into training samples (see the module docstring).

    Args:
        annotations: ground-truth CSV(s) ``video_id,timestamp,x1,y1,x2,y2,action_id[,person_id]``.
        class_ids: the label map's action ids, in column order (e.g. ``list(read_label_map(path))``).
        proposals: person-box CSVs ``video_id,timestamp,x1,y1,x2,y2[,action_id[,score]]`` (no score = 1.0).
        exclusions: CSV of ``video_id,timestamp`` keyframes to leave out.
        score_thresh: proposal rows with ``score < score_thresh`` are dropped.
        strict_labels: a row whose action is not in ``class_ids`` is an error instead of being skipped.

    Raises:
        InputFormatError: naming file and line, for a missing file, a wrong column count, a field that is not
            a number, a box outside [0, 1] or with x2 < x1 or y2 < y1, a negative time, a proposal score
            outside [0, 1], an action outside the map (``strict_labels``), or when no sample remains.
    """
    class_ids = tuple(int(c) for c in class_ids)
    if not class_ids:
        raise InputFormatError("the label map has no classes; pass a label map with at least one class")
    if len(set(class_ids)) != len(class_ids):
        duplicate = next(c for c, n in Counter(class_ids).items() if n > 1)
        raise InputFormatError(f"the label map lists class id {duplicate} twice")
    column_of = {class_id: column for column, class_id in enumerate(class_ids)}
    if isinstance(annotations, (str, os.PathLike)):
        annotations = [annotations]
    if not annotations:
        raise InputFormatError("no annotation file given; pass an AVA ground-truth CSV (" + GT_FORMAT + ")")
    excluded = _read_exclusions(Path(exclusions)) if exclusions is not None else frozenset()
    keyframes: dict[str, dict[Fraction, _Keyframe]] = {}
    first_rows: dict[str, str] = {}
    skipped = Counter()
    not_in_map = Counter()
    sources = [(Path(p), True) for p in annotations] + [(Path(p), False) for p in proposals]
    for path, is_gt in sources:
        for line, row in csv_rows(path, encoding="utf-8-sig"):
            where = f"{path}:{line}"
            if not any(value.strip() for value in row):
                continue
            if line == 1 and [value.strip() for value in row[:2]] == ["video_id", "timestamp"]:
                continue  # a pandas-style header line
            video_id, time, texts, box, action, score = _parse_row(row, where, is_gt)
            if not is_gt and score < score_thresh:
                skipped["proposals_below_threshold"] += 1
                continue
            if (video_id, time) in excluded:
                skipped["rows_excluded"] += 1
                continue
            if action != NO_ACTION and action not in column_of:
                if strict_labels:
                    raise InputFormatError(
                        f"{where}: action {action} is not in the label map (ids {_ids_text(class_ids)}); fix the "
                        "row, or pass the label map that defines it")
                skipped["rows_not_in_label_map"] += 1
                not_in_map[action] += 1
                continue
            first_rows.setdefault(video_id, where)
            keyframe = keyframes.setdefault(video_id, {}).get(time)
            if keyframe is None:
                keyframe = keyframes[video_id][time] = _Keyframe(where)
            entry = keyframe.boxes.get(texts)
            if entry is None:
                entry = keyframe.boxes[texts] = (box, set())
            if action != NO_ACTION:
                entry[1].add(column_of[action])
    samples = []
    for video_id, times in keyframes.items():
        for time in sorted(times):
            keyframe = times[time]
            boxes = np.array([box for box, _ in keyframe.boxes.values()], dtype=np.float64).reshape(-1, 4)
            labels = np.zeros((len(boxes), len(class_ids)), dtype=np.float32)
            for row, (_, columns) in enumerate(keyframe.boxes.values()):
                labels[row, sorted(columns)] = 1.0
            samples.append(TrainingSample(video_id, time, boxes, labels, keyframe.source))
    result = SampleSet(samples, class_ids, {name: skipped[name] for name in
                                            ("rows_not_in_label_map", "rows_excluded", "proposals_below_threshold")},
                       dict(not_in_map), first_rows)
    if not samples:
        files = ", ".join(str(path) for path, _ in sources)
        raise InputFormatError(f"{files}: no training samples ({result.summary()}); check that the annotations' "
                               "action ids are those of the label map")
    return result


def _ids_text(class_ids: Sequence[int]) -> str:
    if len(class_ids) > 12:
        return f"{', '.join(map(str, class_ids[:10]))}, ... {class_ids[-1]}"
    return ", ".join(map(str, class_ids))


def _parse_row(row: list, where: str, is_gt: bool):
    """(video_id, time, coordinate texts, box floats, action or NO_ACTION, score) of one CSV row."""
    if is_gt and len(row) not in (7, 8):
        raise InputFormatError(f"{where}: expected 7 or 8 columns ({GT_FORMAT}), got {len(row)}: {','.join(row)!r}")
    if not is_gt and len(row) not in (6, 7, 8):
        raise InputFormatError(f"{where}: expected 6 to 8 columns ({PROPOSAL_FORMAT}), got {len(row)}: "
                               f"{','.join(row)!r}")
    video_id, time, texts, box = parse_keyframe_box(row, where)
    if time < 0:
        raise InputFormatError(f"{where}: timestamp {row[1]} is negative; times are seconds from the video start")
    box = list(box)
    action = NO_ACTION
    if len(row) > 6 and row[6].strip() not in ("", "-1"):
        try:
            action = int(row[6])
        except ValueError:
            raise InputFormatError(f"{where}: action_id must be an integer, got {row[6]!r}") from None
    score = 1.0
    if not is_gt and len(row) == 8:
        try:
            score = float(row[7])
        except ValueError:
            raise InputFormatError(f"{where}: score {row[7]!r} is not a number") from None
        if not 0.0 <= score <= 1.0:
            raise InputFormatError(f"{where}: score {row[7]} is outside [0, 1]; the 8th column of a proposal file "
                                   "is a detection score (pass ground-truth files, whose 8th column is a person id, "
                                   "as annotations)")
    return video_id, time, texts, box, action, score


def _read_exclusions(path: Path) -> frozenset:
    """``{(video_id, time)}`` of an excluded-timestamps CSV (rows ``video_id,timestamp``)."""
    excluded = set()
    for line, row in csv_rows(path, encoding="utf-8-sig"):
        if not any(value.strip() for value in row):
            continue
        if len(row) != 2:
            raise InputFormatError(f"{path}:{line}: expected 2 columns (video_id,timestamp), got {len(row)}: "
                                   f"{','.join(row)!r}")
        try:
            time = parse_seconds(row[1])
        except ValueError:
            raise InputFormatError(f"{path}:{line}: timestamp {row[1]!r} is not a number of seconds") from None
        excluded.add((row[0].strip(), time))
    return frozenset(excluded)


NON_VIDEO_SUFFIXES = frozenset({".csv", ".json", ".jsonl", ".txt", ".pbtxt", ".yaml", ".yml", ".md", ".part",
                                ".tmp", ".pkl", ".pyth", ".pt", ".pth", ".npy", ".npz", ".png", ".jpg", ".jpeg",
                                ".srt", ".vtt", ".log"})
"""Suffixes of files that sit beside videos but are not videos (detections, labels, subtitles, frames)."""


def find_videos(directory: PathLike, video_ids: Iterable[str], *,
                rows: Optional[Mapping[str, str]] = None) -> dict:
    """``{video_id: path}`` of the videos under ``directory`` that ``video_ids`` name.

    A video's id is its path relative to ``directory`` without the suffix (``season1/ep02``) or its file
    stem (``ep02``), in any container PyAV reads; hidden files and folders and files with a
    :data:`NON_VIDEO_SUFFIXES` suffix are ignored. ``rows`` (``{video_id: "file:line"}``, e.g.
    :meth:`SampleSet.first_rows`) lets the error name the annotation row that uses a missing id.

    Raises:
        InputFormatError: ``directory`` is not a folder, an id matches no file, or two files.
    """
    root = Path(directory)
    if not root.is_dir():
        raise InputFormatError(f"{root}: no such folder; pass the folder that holds the videos")
    by_name: dict[str, list] = {}
    for current, folders, files in os.walk(root):
        folders[:] = sorted(f for f in folders if not f.startswith("."))
        for name in sorted(files):
            path = Path(current) / name
            if name.startswith(".") or path.suffix.lower() in NON_VIDEO_SUFFIXES:
                continue
            relative = path.relative_to(root).with_suffix("").as_posix()
            for key in dict.fromkeys((relative, path.stem)):
                by_name.setdefault(key, []).append(path)
    found, missing = {}, []
    for video_id in dict.fromkeys(video_ids):
        candidates = by_name.get(video_id, [])
        exact = [path for path in candidates if path.relative_to(root).with_suffix("").as_posix() == video_id]
        candidates = exact or candidates
        if len(candidates) > 1:
            raise InputFormatError(f"{root}: video id {video_id!r} matches several files "
                                   f"({', '.join(str(p) for p in candidates)}); keep one of them in the folder")
        if candidates:
            found[video_id] = candidates[0]
        else:
            missing.append(video_id)
    if missing:
        first = missing[0]
        where = f"{rows[first]}: " if rows and first in rows else ""
        more = f" (and {len(missing) - 1} more: {', '.join(missing[1:6])}{', ...' if len(missing) > 6 else ''})" \
            if len(missing) > 1 else ""
        raise InputFormatError(f"{where}video {first!r}{more} not found under {root}; the video id is the file "
                               "name without its suffix: add the video or fix the id")
    return found


def check_videos(samples: Iterable[TrainingSample], videos: Mapping[str, PathLike], *, fps, num_frames: int,
                 sampling_rate: int) -> dict:
    """Up-front checks of the videos the samples use, from their headers (each file is opened and its first
    frame decoded; nothing more), so that gross mistakes stop a run before the frame pass. Returns
    ``{video_id: VideoMetadata}``.

    Raises:
        VideoDecodeError: a video cannot be opened or its first frame decoded (message names the file).
        InputFormatError: naming the annotation row, a keyframe lies more than one second past the last clip the
            header promises (the centre grid frame ``round(t * fps)`` beyond the last frame plus half a clip, the
            most that clamping covers). Smaller overruns, and damage found while decoding, are left to the frame
            pass, which drops those keyframes with a warning.
    """
    fps = Fraction(str(fps))
    half = num_frames * sampling_rate // 2
    latest: dict[str, TrainingSample] = {}
    for sample in samples:
        if sample.video_id not in latest or sample.time > latest[sample.video_id].time:
            latest[sample.video_id] = sample
    found: dict[str, VideoMetadata] = {}
    for video_id, sample in latest.items():
        with VideoReader(videos[video_id], fps=fps) as reader:
            found[video_id] = reader.metadata
            declared = reader.declared_duration_s(video_only=True)
        if not declared:
            continue  # the header does not say: the frame pass finds out
        last = round(declared * fps) - 1
        centre = math.floor(sample.time * fps + Fraction(1, 2))
        if centre > last + half + fps:
            raise InputFormatError(f"{sample.source}: keyframe {seconds_text(sample.time)} s of video {video_id!r} "
                                   f"lies past the end of {videos[video_id]} ({float(declared):.3f} s long); fix the "
                                   "timestamp (seconds from the video start) or the video id")
    return found


def seconds_text(time: Fraction) -> str:
    """``time`` as annotation files write it: ``3``, ``5.5``; ``1/3`` when no decimal (of up to 9 places) is exact."""
    scaled = time * 10 ** 9
    if scaled.denominator != 1:
        return str(time)
    return format(decimal.Decimal(scaled.numerator).scaleb(-9).normalize(), "f")

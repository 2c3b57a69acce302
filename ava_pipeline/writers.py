"""Output writers: AVA detections CSV and one JSON line per keyframe (pictures: :mod:`ava_pipeline.render`).

Every writer consumes an iterable of keyframe results (:class:`ava_pipeline.results.KeyframeResult`, read
only through its attributes: ``video_id``, ``timestamp``, ``pts``, ``pts_time``, ``image_size`` (width,
height), ``boxes`` float32 (K, 4) normalized ``x1, y1, x2, y2`` in [0, 1] with a top-left origin,
``box_strings`` (the box file's original coordinate text per box, or None), ``box_scores`` float32 (K,),
``probs`` float32 (K, C) where column ``c`` is action ``result.action_id(c)`` named ``result.action_name(c)``
(``c + 1`` and AVA's names for AVA's 80), and ``keyframe_image`` uint8 (H, W, 3) RGB) and streams.

Files appear atomically: they are written under a temporary name in the destination folder and renamed
into place, so an interrupted run never leaves a truncated file that looks complete.

With person tracks, JSONL persons carry their ``person_id`` and :func:`write_segments` writes the action
segments CSV (:mod:`ava_pipeline.tracking`).

CSV rows are ``video_id,timestamp,x1,y1,x2,y2,action_id,score`` without header (the AVA format that the
official evaluator reads): the timestamp is an integer for whole seconds, boxes are written exactly as the
detector gave them (the shortest text that reads back to the same float32, or a box file's original text
verbatim), scores with 6 decimals.
"""
from __future__ import annotations

import contextlib
import csv
import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator, Optional, Sequence

import numpy as np

from .ava_csv import format_seconds, seconds_value

if TYPE_CHECKING:  # pragma: no cover
    import pandas

    from .results import KeyframeResult
    from .tracking import ActionSegment

DETECTION_COLUMNS = ("video_id", "timestamp", "x1", "y1", "x2", "y2", "action_id", "score")
"""Columns of the detections CSV (no header in the file) and of :meth:`ActionDetector.__call__`'s frame."""

OUTPUT_SUFFIXES = {"csv": ".csv", "jsonl": ".jsonl", "proposals": ".csv"}
"""File suffix of each ``--format`` (``proposals``: person boxes only, the AVA box-file rows of ``--boxes``)."""


# ------------------------------------------------------------------------------------------- atomic files

@contextlib.contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it onto ``path``, on error delete it.

    The temporary name keeps the suffix (``.name.<random>.tmp.mp4``) so that writers choosing a format by
    extension still work. Parent folders are created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}.tmp{path.suffix}")
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


# -------------------------------------------------------------------------------------------- formatting

def format_coordinate(value) -> str:
    """Shortest decimal text that reads back to the same float32 (``0.25``, ``1``, ``0.12345679``)."""
    return np.format_float_positional(np.float32(value), unique=True, trim="-")


def box_texts(result: "KeyframeResult") -> list[tuple[str, str, str, str]]:
    """Per box the 4 coordinate texts written to the CSV: the box file's own text when there is one."""
    if result.box_strings is not None:
        return [tuple(texts) for texts in result.box_strings]
    return [tuple(format_coordinate(v) for v in box) for box in result.boxes]


def _kept_columns(scores: np.ndarray, min_score: Optional[float]) -> np.ndarray:
    """Indices of the action columns (0-based) whose score is kept."""
    if min_score is None:
        return np.arange(scores.shape[0])
    return np.flatnonzero(scores >= min_score)


# --------------------------------------------------------------------------------------------------- CSV

def detection_rows(result: "KeyframeResult", min_score: Optional[float] = None) -> Iterator[list[str]]:
    """CSV rows of one keyframe: per person box and action (all of the model's unless below ``min_score``)."""
    columns = result.probs.shape[1] if result.probs.ndim == 2 else 0
    ids = [result.action_id(column) for column in range(columns)]
    return keyframe_rows(result.video_id, result.timestamp, box_texts(result), result.probs, ids, min_score)


def keyframe_rows(video_id: str, timestamp, texts: Sequence[Sequence[str]], probs, action_ids: Sequence[int],
                  min_score: Optional[float] = None) -> Iterator[list[str]]:
    """Rows ``video_id,timestamp,x1,y1,x2,y2,action_id,score`` of one keyframe: per box (its 4 coordinate texts)
    and action column ``c`` of ``probs`` (K, C), whose id is ``action_ids[c]``, unless scored below ``min_score``."""
    timestamp = format_seconds(timestamp)
    for box, scores in zip(texts, probs):
        for column in _kept_columns(scores, min_score):
            yield [video_id, timestamp, *box, str(action_ids[column]), f"{float(scores[column]):.6f}"]


def proposal_rows(result: "KeyframeResult") -> Iterator[list[str]]:
    """AVA box-file rows of one keyframe, one per person box: ``video_id,timestamp,x1,y1,x2,y2,,score`` (the
    format ``--boxes`` and ``ava-train --proposals`` read; the action column stays empty)."""
    timestamp = format_seconds(result.timestamp)
    for texts, score in zip(box_texts(result), result.box_scores):
        yield [result.video_id, timestamp, *texts, "", f"{float(score):.6f}"]


def write_csv(results: Iterable["KeyframeResult"], path: str | Path, *,
              min_score: Optional[float] = None) -> "OutputStats":
    """Write the AVA detections CSV of ``results`` to ``path`` atomically; returns what was written."""
    return _write_all(CsvSink(path, min_score=min_score), results)


def detections_dataframe(results: Iterable["KeyframeResult"], *,
                         min_score: Optional[float] = None) -> "pandas.DataFrame":
    """The rows of :func:`write_csv` as a DataFrame (columns :data:`DETECTION_COLUMNS`).

    ``timestamp`` is int64 when every keyframe is a whole second, else float64; box coordinates are the
    written values as float64; ``action_id`` is int64 (1..80); ``score`` the unrounded probability.
    """
    import pandas

    columns: dict[str, list] = {name: [] for name in DETECTION_COLUMNS}
    for result in results:
        timestamp = seconds_value(result.timestamp)
        for texts, scores in zip(box_texts(result), result.probs):
            kept = _kept_columns(scores, min_score)
            count = len(kept)
            columns["video_id"].extend([result.video_id] * count)
            columns["timestamp"].extend([timestamp] * count)
            for name, text in zip(("x1", "y1", "x2", "y2"), texts):
                columns[name].extend([float(text)] * count)
            columns["action_id"].extend(result.action_id(int(c)) for c in kept)
            columns["score"].extend(scores[kept].astype(np.float64).tolist())
    frame = pandas.DataFrame(columns, columns=list(DETECTION_COLUMNS))
    return frame.astype({"video_id": str, "x1": float, "y1": float, "x2": float, "y2": float,
                         "action_id": "int64", "score": float})


# ------------------------------------------------------------------------------------------------- JSONL

def _number(value) -> float:
    """A float32 value as the float64 whose text is the float32's shortest text."""
    return float(format_coordinate(value))


def keyframe_record(result: "KeyframeResult", *, min_score: Optional[float] = None) -> dict:
    """One JSON object for a keyframe: time, frame pts, image size and per person the normalized and
    pixel box, the detector score and the actions sorted by decreasing score (pruned by ``min_score``);
    with tracking, each person's ``person_id`` comes first."""
    width, height = result.image_size
    persons = []
    for box, texts, box_score, scores in zip(result.boxes, box_texts(result), result.box_scores, result.probs):
        normalized = [float(text) for text in texts]
        pixels = [round(float(v) * size, 2) for v, size in zip(box, (width, height, width, height))]
        kept = _kept_columns(scores, min_score)
        ordered = kept[np.argsort(-scores[kept], kind="stable")]
        actions = [{"id": result.action_id(int(c)), "name": result.action_name(int(c)),
                    "score": round(float(scores[c]), 6)} for c in ordered]
        persons.append({"box": normalized, "box_px": pixels, "detector_score": round(float(box_score), 6),
                        "actions": actions})
    if result.person_id is not None:  # tracked: the person's id first, beside its box
        persons = [{"person_id": int(person_id), **person} for person_id, person in zip(result.person_id, persons)]
    return {"video_id": result.video_id, "time": seconds_value(result.timestamp), "pts": result.pts,
            "pts_time": round(float(result.pts_time), 6), "width": width, "height": height, "persons": persons}


def write_jsonl(results: Iterable["KeyframeResult"], path: str | Path, *,
                min_score: Optional[float] = None) -> "OutputStats":
    """Write one JSON object per keyframe (:func:`keyframe_record`) to ``path`` atomically."""
    return _write_all(JsonlSink(path, min_score=min_score), results)


def _write_all(sink: "_FileSink", results: Iterable["KeyframeResult"]) -> "OutputStats":
    """Add every result to ``sink``, close it (the file appears) and return what was written."""
    with sink:
        for result in results:
            sink.add(result)
    return sink.stats


# ----------------------------------------------------------------------------------------------- sinks

@dataclass
class OutputStats:
    """What one video's outputs hold."""

    keyframes: int = 0
    persons: int = 0
    rows: int = 0


class _FileSink:
    """Streams results into a text file written atomically; use as a context manager."""

    def __init__(self, path: str | Path, *, min_score: Optional[float] = None):
        self.path = Path(path)
        self.min_score = min_score
        self.stats = OutputStats()
        self._stack = contextlib.ExitStack()

    def __enter__(self):
        temporary = self._stack.enter_context(atomic_output(self.path))
        self._file = self._stack.enter_context(open(temporary, "w", encoding="utf-8", newline=""))
        return self

    def __exit__(self, *exc_info):
        return self._stack.__exit__(*exc_info)

    def add(self, result: "KeyframeResult") -> None:
        self.stats.keyframes += 1
        self.stats.persons += len(result.boxes)
        self.stats.rows += self._write(result)


class CsvSink(_FileSink):
    """AVA detections CSV (see module docstring)."""

    def __enter__(self):
        super().__enter__()
        self._writer = csv.writer(self._file, lineterminator="\n")
        return self

    def _write(self, result) -> int:
        rows = list(detection_rows(result, self.min_score))
        self._writer.writerows(rows)
        return len(rows)


class ProposalsSink(CsvSink):
    """Person-box CSV (see :func:`proposal_rows`); ``min_score`` does not apply (the rows carry no actions)."""

    def _write(self, result) -> int:
        rows = list(proposal_rows(result))
        self._writer.writerows(rows)
        return len(rows)


class JsonlSink(_FileSink):
    """One JSON object per keyframe (see :func:`keyframe_record`)."""

    def _write(self, result) -> int:
        self._file.write(json.dumps(keyframe_record(result, min_score=self.min_score)) + "\n")
        return 1


def open_output_sink(path: str | Path, output_format: str, *, min_score: Optional[float] = None) -> _FileSink:
    """The sink writing ``output_format`` (one of :data:`OUTPUT_SUFFIXES`) to ``path``."""
    sinks = {"csv": CsvSink, "jsonl": JsonlSink, "proposals": ProposalsSink}
    if output_format not in sinks:
        raise ValueError(f"unknown output format {output_format!r}; use one of {sorted(sinks)}")
    return sinks[output_format](path, min_score=min_score)


# ---------------------------------------------------------------------------------------------- segments

def segment_rows(segments: Iterable["ActionSegment"]) -> Iterator[list[str]]:
    """Rows of the segments CSV (:data:`ava_pipeline.tracking.SEGMENT_COLUMNS`): times as in the detections
    CSV, scores with 6 decimals, the action's name from the model's label map."""
    for segment in segments:
        yield [segment.video_id, str(segment.person_id), str(segment.action_id), segment.action_name,
               format_seconds(segment.start), format_seconds(segment.end), f"{segment.peak_score:.6f}",
               f"{segment.mean_score:.6f}"]


def write_segments(segments: Iterable["ActionSegment"], path: str | Path) -> int:
    """Write the segments CSV (header row, then :func:`segment_rows`) to ``path`` atomically; returns the
    number of segments."""
    from .tracking import SEGMENT_COLUMNS

    with atomic_output(path) as temporary, open(temporary, "w", encoding="utf-8", newline="") as file:
        writer = csv.writer(file, lineterminator="\n")
        writer.writerow(SEGMENT_COLUMNS)
        rows = list(segment_rows(segments))
        writer.writerows(rows)
    return len(rows)

"""Output writers: AVA detections CSV, one JSON line per keyframe, annotated mp4 + keyframe PNGs.

Every writer consumes an iterable of keyframe results (:class:`ava_pipeline.pipeline.KeyframeResult`, read
only through its attributes: ``video_id``, ``timestamp``, ``pts``, ``pts_time``, ``image_size`` (width,
height), ``boxes`` float32 (K, 4) normalized ``x1, y1, x2, y2`` in [0, 1] with a top-left origin,
``box_strings`` (the box file's original coordinate text per box, or None), ``box_scores`` float32 (K,),
``probs`` float32 (K, C) where column ``c`` is action id ``action_ids[c]`` (``c + 1`` for AVA's 80), and
``keyframe_image`` uint8 (H, W, 3) RGB) and streams: nothing but the rendering annotations (boxes and top
actions) is kept per keyframe.

Files appear atomically: they are written under a temporary name in the destination folder and renamed
into place, so an interrupted run never leaves a truncated file that looks complete.

CSV rows are ``video_id,timestamp,x1,y1,x2,y2,action_id,score`` without header (the AVA format that the
official evaluator reads): the timestamp is an integer for whole seconds, boxes are written exactly as the
detector gave them (the shortest text that reads back to the same float32, or a box file's original text
verbatim), scores with 6 decimals.
"""
from __future__ import annotations

import bisect
import contextlib
import csv
import json
import os
import re
import uuid
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator, Optional, Sequence

import numpy as np

from .errors import VideoDecodeError
from .labels import AVA_ACTIONS, action_id_of_column

if TYPE_CHECKING:  # pragma: no cover
    import pandas

    from .pipeline import KeyframeResult

DETECTION_COLUMNS = ("video_id", "timestamp", "x1", "y1", "x2", "y2", "action_id", "score")
"""Columns of the detections CSV (no header in the file) and of :meth:`ActionDetector.__call__`'s frame."""

OUTPUT_SUFFIXES = {"csv": ".csv", "jsonl": ".jsonl"}
"""File suffix of each ``--format``."""


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

def format_timestamp(seconds) -> str:
    """``902`` for whole seconds (int, float or Fraction), else up to 6 decimals (``902.5``)."""
    value = Fraction(seconds)
    if value.denominator == 1:
        return str(value.numerator)
    return f"{float(value):.6f}".rstrip("0").rstrip(".")


def timestamp_value(seconds) -> int | float:
    """The timestamp as a Python number: int for whole seconds, else float."""
    value = Fraction(seconds)
    return value.numerator if value.denominator == 1 else float(value)


def format_coordinate(value) -> str:
    """Shortest decimal text that reads back to the same float32 (``0.25``, ``1``, ``0.12345679``)."""
    return np.format_float_positional(np.float32(value), unique=True, trim="-")


def box_texts(result: "KeyframeResult") -> list[tuple[str, str, str, str]]:
    """Per box the 4 coordinate texts written to the CSV: the box file's own text when there is one."""
    if result.box_strings is not None:
        return [tuple(texts) for texts in result.box_strings]
    return [tuple(format_coordinate(v) for v in box) for box in result.boxes]


def action_id(result: "KeyframeResult", column: int) -> int:
    """Action id of output column ``column`` of ``result``'s model (its label map's; AVA: ``column + 1``)."""
    ids = getattr(result, "action_ids", ())
    return ids[column] if ids else action_id_of_column(column)


def _kept_columns(scores: np.ndarray, min_score: Optional[float]) -> np.ndarray:
    """Indices of the action columns (0-based) whose score is kept."""
    if min_score is None:
        return np.arange(scores.shape[0])
    return np.flatnonzero(scores >= min_score)


# --------------------------------------------------------------------------------------------------- CSV

def detection_rows(result: "KeyframeResult", min_score: Optional[float] = None) -> Iterator[list[str]]:
    """CSV rows of one keyframe: per person box and action (all 80 unless below ``min_score``)."""
    timestamp = format_timestamp(result.timestamp)
    for texts, scores in zip(box_texts(result), result.probs):
        for column in _kept_columns(scores, min_score):
            yield [result.video_id, timestamp, *texts, str(action_id(result, int(column))),
                   f"{float(scores[column]):.6f}"]


def write_csv(results: Iterable["KeyframeResult"], path: str | Path, *,
              min_score: Optional[float] = None) -> "OutputStats":
    """Write the AVA detections CSV of ``results`` to ``path`` atomically; returns what was written."""
    with CsvSink(path, min_score=min_score) as sink:
        for result in results:
            sink.add(result)
    return sink.stats


def detections_dataframe(results: Iterable["KeyframeResult"], *,
                         min_score: Optional[float] = None) -> "pandas.DataFrame":
    """The rows of :func:`write_csv` as a DataFrame (columns :data:`DETECTION_COLUMNS`).

    ``timestamp`` is int64 when every keyframe is a whole second, else float64; box coordinates are the
    written values as float64; ``action_id`` is int64 (1..80); ``score`` the unrounded probability.
    """
    import pandas

    columns: dict[str, list] = {name: [] for name in DETECTION_COLUMNS}
    for result in results:
        timestamp = timestamp_value(result.timestamp)
        for texts, scores in zip(box_texts(result), result.probs):
            kept = _kept_columns(scores, min_score)
            count = len(kept)
            columns["video_id"].extend([result.video_id] * count)
            columns["timestamp"].extend([timestamp] * count)
            for name, text in zip(("x1", "y1", "x2", "y2"), texts):
                columns[name].extend([float(text)] * count)
            columns["action_id"].extend(action_id(result, int(c)) for c in kept)
            columns["score"].extend(scores[kept].astype(np.float64).tolist())
    frame = pandas.DataFrame(columns, columns=list(DETECTION_COLUMNS))
    return frame.astype({"video_id": str, "x1": float, "y1": float, "x2": float, "y2": float,
                         "action_id": "int64", "score": float})


# ------------------------------------------------------------------------------------------------- JSONL

def _number(value) -> float:
    """A float32 value as the float64 whose text is the float32's shortest text."""
    return float(format_coordinate(value))


def keyframe_record(result: "KeyframeResult", *, min_score: Optional[float] = None,
                    labels: dict[int, str] = AVA_ACTIONS) -> dict:
    """One JSON object for a keyframe: time, frame pts, image size and per person the normalized and
    pixel box, the detector score and the actions sorted by decreasing score (pruned by ``min_score``)."""
    width, height = result.image_size
    persons = []
    for box, texts, box_score, scores in zip(result.boxes, box_texts(result), result.box_scores, result.probs):
        normalized = [float(text) for text in texts]
        pixels = [round(float(v) * size, 2) for v, size in zip(box, (width, height, width, height))]
        kept = _kept_columns(scores, min_score)
        ordered = kept[np.argsort(-scores[kept], kind="stable")]
        actions = [{"id": action_id(result, int(c)), "name": labels.get(action_id(result, int(c)), ""),
                    "score": round(float(scores[c]), 6)} for c in ordered]
        persons.append({"box": normalized, "box_px": pixels, "detector_score": round(float(box_score), 6),
                        "actions": actions})
    return {"video_id": result.video_id, "time": timestamp_value(result.timestamp), "pts": result.pts,
            "pts_time": round(float(result.pts_time), 6), "width": width, "height": height, "persons": persons}


def write_jsonl(results: Iterable["KeyframeResult"], path: str | Path, *,
                min_score: Optional[float] = None) -> "OutputStats":
    """Write one JSON object per keyframe (:func:`keyframe_record`) to ``path`` atomically."""
    with JsonlSink(path, min_score=min_score) as sink:
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


class JsonlSink(_FileSink):
    """One JSON object per keyframe (see :func:`keyframe_record`)."""

    def _write(self, result) -> int:
        self._file.write(json.dumps(keyframe_record(result, min_score=self.min_score)) + "\n")
        return 1


def open_output_sink(path: str | Path, output_format: str, *, min_score: Optional[float] = None) -> _FileSink:
    """The sink writing ``output_format`` (``csv`` or ``jsonl``) to ``path``."""
    sinks = {"csv": CsvSink, "jsonl": JsonlSink}
    if output_format not in sinks:
        raise ValueError(f"unknown output format {output_format!r}; use one of {sorted(sinks)}")
    return sinks[output_format](path, min_score=min_score)


# -------------------------------------------------------------------------------------------- rendering

_PALETTE = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
            (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128)]  # RGB, distinct at a glance


def short_action_name(name: str) -> str:
    """Action name without its ``(e.g., ...)`` examples: ``talk to (e.g., self, ...)`` -> ``talk to``."""
    return re.sub(r"\s*\(e\.g\.,[^)]*\)", "", name).strip()


@dataclass
class _Annotation:
    """What is drawn for one keyframe: boxes (K, 4) normalized and per box its caption lines."""

    seconds: float
    boxes: np.ndarray
    captions: list[list[str]] = field(default_factory=list)


def _annotation(result: "KeyframeResult", top_k: int, labels: dict[int, str]) -> _Annotation:
    captions = []
    for scores in result.probs:
        best = np.argsort(-scores, kind="stable")[:top_k]
        captions.append([f"{short_action_name(labels.get(action_id(result, int(c)), str(action_id(result, int(c)))))} "
                         f"{float(scores[c]):.2f}" for c in best])
    return _Annotation(float(Fraction(result.timestamp)), np.asarray(result.boxes, dtype=np.float32), captions)


def draw_annotation(image: np.ndarray, boxes: np.ndarray, captions: Sequence[Sequence[str]]) -> np.ndarray:
    """Draw person boxes (normalized x1y1x2y2) with caption lines on a copy of ``image`` (H, W, 3) uint8 RGB.

    Line widths and font scale follow the frame's short side so that 240p and 4K frames read alike. A
    caption sits above its box, or inside the box's top, or below it, whichever first overlaps no caption
    drawn before and fits in the frame. Boxes are drawn first, captions on top of every box.
    """
    import cv2

    canvas = np.ascontiguousarray(image).copy()
    height, width = canvas.shape[:2]
    short = min(height, width)
    font = cv2.FONT_HERSHEY_SIMPLEX
    font_scale = max(0.35, short / 900)
    text_thickness = max(1, round(short / 500))
    line_thickness = max(2, round(short / 240))
    (_, text_height), baseline = cv2.getTextSize("Ag", font, font_scale, text_thickness)
    step = text_height + baseline + 2
    corners = [tuple(int(round(float(v) * size)) for v, size in zip(box, (width, height, width, height)))
               for box in boxes]
    for index, (x1, y1, x2, y2) in enumerate(corners):
        cv2.rectangle(canvas, (x1, y1), (x2, y2), _PALETTE[index % len(_PALETTE)], line_thickness)
    taken: list[tuple[int, int, int, int]] = []
    for index, ((x1, y1, x2, y2), lines) in enumerate(zip(corners, captions)):
        color = _PALETTE[index % len(_PALETTE)]
        widths = [cv2.getTextSize(line, font, font_scale, text_thickness)[0][0] + 4 for line in lines]
        block_width, block_height = max(widths, default=0), step * len(lines)
        left = min(max(0, x1), max(0, width - block_width))
        candidates = [y1 - block_height, y1 + line_thickness, y2 + line_thickness]
        fitting = [top for top in candidates if 0 <= top <= height - block_height] or [max(0, y1 - block_height)]
        top = next((top for top in fitting if not any(
            left < r and l < left + block_width and top < b and t < top + block_height for l, t, r, b in taken)),
            fitting[0])
        taken.append((left, top, left + block_width, top + block_height))
        luminance = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]
        ink = (0, 0, 0) if luminance > 140 else (255, 255, 255)
        for number, (line, line_width) in enumerate(zip(lines, widths)):
            row_top = top + number * step
            cv2.rectangle(canvas, (left, row_top), (left + line_width, row_top + step), color, cv2.FILLED)
            cv2.putText(canvas, line, (left + 2, row_top + text_height + 1), font, font_scale, ink,
                        text_thickness, cv2.LINE_AA)
    return canvas


def keyframe_png_name(video_id: str, timestamp) -> str:
    """``<video_id>_<seconds>.png`` with the whole seconds zero-padded to 5 digits, so names sort by time."""
    text = format_timestamp(timestamp)
    whole, _, fraction = text.partition(".")
    return f"{video_id}_{int(whole):05d}{'.' + fraction if fraction else ''}.png"


class RenderSink:
    """Annotated keyframe PNGs (written as results arrive) and, on close, an annotated mp4 of ``video_path``.

    The mp4 holds every decoded frame of the source (same frame count and rate, rotation applied like the
    pipeline's reader); each frame shows the annotations of the nearest keyframe within half the keyframe
    spacing (0.5 s for one keyframe per second). Encoded with libx264 (yuv420p, CRF 23) when PyAV has it,
    else MPEG-4 part 2.
    """

    def __init__(self, video_path: str | Path, mp4_path: str | Path, png_dir: str | Path, *, top_k: int = 3,
                 labels: dict[int, str] = AVA_ACTIONS):
        self.video_path = Path(video_path)
        self.mp4_path = Path(mp4_path)
        self.png_dir = Path(png_dir)
        self.top_k = top_k
        self.labels = labels
        self._annotations: list[_Annotation] = []

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, traceback):
        if exc_type is None:
            self.write_video()
        return False

    def add(self, result: "KeyframeResult") -> None:
        import cv2

        annotation = _annotation(result, self.top_k, self.labels)
        self._annotations.append(annotation)
        picture = draw_annotation(result.keyframe_image, annotation.boxes, annotation.captions)
        png_path = self.png_dir / keyframe_png_name(result.video_id, result.timestamp)
        with atomic_output(png_path) as temporary:
            if not cv2.imwrite(str(temporary), cv2.cvtColor(picture, cv2.COLOR_RGB2BGR)):
                raise OSError(f"{png_path}: cannot write PNG; check the folder is writable")

    def _annotation_at(self, seconds: float, times: list[float], reach: float) -> Optional[_Annotation]:
        position = bisect.bisect_left(times, seconds)
        candidates = [i for i in (position - 1, position) if 0 <= i < len(times)]
        if not candidates:
            return None
        nearest = min(candidates, key=lambda i: abs(times[i] - seconds))
        return self._annotations[nearest] if abs(times[nearest] - seconds) <= reach + 1e-9 else None

    def write_video(self) -> int:
        """Decode the source, draw, encode ``mp4_path`` atomically; returns the number of frames written."""
        import av

        self._annotations.sort(key=lambda a: a.seconds)
        times = [a.seconds for a in self._annotations]
        spacing = float(np.median(np.diff(times))) if len(times) > 1 else 1.0
        reach = max(spacing, 1e-3) / 2
        with atomic_output(self.mp4_path) as temporary:
            try:
                source = av.open(str(self.video_path))
            except (av.FFmpegError, OSError) as exc:
                raise VideoDecodeError(f"{self.video_path}: cannot open for rendering ({exc})") from exc
            with source, av.open(str(temporary), mode="w", format="mp4") as target:
                return self._transcode(source, target, times, reach)

    def _transcode(self, source, target, times, reach) -> int:
        import av

        video = source.streams.video[0]
        rate = video.average_rate or video.guessed_rate or Fraction(30)
        codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
        origin = source.start_time / 1_000_000 if source.start_time is not None else 0.0  # keyframe time 0
        stream = None
        written = 0
        try:
            for frame in source.decode(video):
                image = _upright(frame)
                seconds = float(frame.time) - origin if frame.time is not None else written / float(rate)
                annotation = self._annotation_at(seconds, times, reach)
                if annotation is not None:
                    image = draw_annotation(image, annotation.boxes, annotation.captions)
                image = _pad_to_even(image)
                if stream is None:
                    stream = target.add_stream(codec, rate=Fraction(rate))
                    stream.width, stream.height = image.shape[1], image.shape[0]
                    stream.pix_fmt = "yuv420p"
                    if codec == "libx264":
                        stream.options = {"crf": "23", "preset": "veryfast"}
                    else:
                        stream.bit_rate = 4_000_000
                out = av.VideoFrame.from_ndarray(image, format="rgb24")
                out.pts = written
                out.time_base = 1 / Fraction(rate)
                target.mux(stream.encode(out))
                written += 1
        except av.FFmpegError as exc:
            raise VideoDecodeError(f"{self.video_path}: decoding failed while rendering after {written} frames "
                                   f"({exc})") from exc
        if stream is None:
            raise VideoDecodeError(f"{self.video_path}: no frame decoded; nothing to render")
        target.mux(stream.encode(None))
        return written


def _upright(frame) -> np.ndarray:
    """A decoded frame as uint8 (H, W, 3) RGB, turned upright by its display matrix (as the reader does)."""
    image = frame.to_ndarray(format="rgb24")
    counter_clockwise = round(frame.rotation or 0)
    quarter = round(counter_clockwise / 90)
    turns = quarter % 4 if abs(counter_clockwise - 90 * quarter) <= 2 else 0  # odd angles stay as stored
    return np.ascontiguousarray(np.rot90(image, turns)) if turns else image


def _pad_to_even(image: np.ndarray) -> np.ndarray:
    """yuv420p needs even sides: repeat the last row / column when a side is odd."""
    height, width = image.shape[:2]
    if height % 2 or width % 2:
        image = np.pad(image, ((0, height % 2), (0, width % 2), (0, 0)), mode="edge")
    return image


def render_video(results: Iterable["KeyframeResult"], video_path: str | Path, mp4_path: str | Path,
                 png_dir: str | Path, *, top_k: int = 3) -> OutputStats:
    """Write the keyframe PNGs into ``png_dir`` and the annotated ``mp4_path`` for ``video_path``."""
    stats = OutputStats()
    with RenderSink(video_path, mp4_path, png_dir, top_k=top_k) as sink:
        for result in results:
            sink.add(result)
            stats.keyframes += 1
            stats.persons += len(result.boxes)
    return stats


def render_paths(render_dir: str | Path, name: str) -> tuple[Path, Path]:
    """Where the rendering of output ``name`` (e.g. ``movies/clip1``) goes: ``<dir>/<name>.mp4`` and the
    keyframe PNGs in ``<dir>/<name>_keyframes/``."""
    render_dir = Path(render_dir)
    return render_dir / f"{name}.mp4", render_dir / f"{name}_keyframes"


def write_video_outputs(results: Iterable["KeyframeResult"], out_path: str | Path, *, output_format: str = "csv",
                        min_score: Optional[float] = None, render_dir: str | Path | None = None,
                        render_name: Optional[str] = None, video_path: str | Path | None = None,
                        on_keyframe=None) -> OutputStats:
    """Stream one video's results into its detections file and, with ``render_dir``, its rendering.

    ``render_name`` (default: the output file's stem) places the rendering (:func:`render_paths`);
    ``video_path`` is the source to re-decode for the mp4. ``on_keyframe(result)`` is called after each
    keyframe is written (progress bars). Nothing is left at ``out_path`` when ``results`` raises.
    """
    out_path = Path(out_path)
    with contextlib.ExitStack() as stack:
        sink = stack.enter_context(open_output_sink(out_path, output_format, min_score=min_score))
        renderer = None
        if render_dir is not None:
            if video_path is None:
                raise ValueError("rendering needs video_path, the source video to draw on")
            mp4_path, png_dir = render_paths(render_dir, render_name or out_path.stem)
            renderer = stack.enter_context(RenderSink(video_path, mp4_path, png_dir))
        for result in results:
            sink.add(result)
            if renderer is not None:
                renderer.add(result)
            if on_keyframe is not None:
                on_keyframe(result)
    return sink.stats

"""Pictures of the detections: annotated keyframe PNGs and an annotated copy of the video.

:class:`RenderSink` draws each keyframe result's boxes with their top actions on the keyframe image (PNG) and,
on close, re-decodes the source through :class:`~ava_pipeline.video.VideoReader` (the same display rotation as
the pipeline) to write an mp4 in which every frame shows the nearest keyframe's annotations.
:func:`write_video_outputs` streams one video's results into its detections file and, optionally, its rendering.
"""
from __future__ import annotations

import bisect
import contextlib
import re
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Optional, Sequence

import numpy as np

from .ava_csv import exact_seconds, format_seconds
from .tracking import SEGMENT_GAP, SEGMENT_THRESH
from .errors import VideoDecodeError
from .writers import OutputStats, atomic_output, open_output_sink

if TYPE_CHECKING:  # pragma: no cover
    from .results import KeyframeResult


_PALETTE = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
            (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128)]  # RGB, distinct at a glance


def short_action_name(name: str) -> str:
    """Action name without its ``(e.g., ...)`` examples: ``talk to (e.g., self, ...)`` -> ``talk to``."""
    return re.sub(r"\s*\(e\.g\.,[^)]*\)", "", name).strip()


@dataclass
class _Annotation:
    """What is drawn for one keyframe: boxes (K, 4) normalized, per box its caption lines and its colour
    index (the person id with tracking, else the box's position)."""

    seconds: float
    boxes: np.ndarray
    captions: list[list[str]] = field(default_factory=list)
    colors: Optional[list[int]] = None


def _annotation(result: "KeyframeResult", top_k: int) -> _Annotation:
    captions = []
    for scores in result.probs:
        best = np.argsort(-scores, kind="stable")[:top_k]
        captions.append([f"{short_action_name(result.action_name(int(c)) or str(result.action_id(int(c))))} "
                         f"{float(scores[c]):.2f}" for c in best])
    colors = None
    if result.person_id is not None:  # tracked: a person keeps its colour, its id heads its caption
        colors = [int(person_id) - 1 for person_id in result.person_id]
        captions = [[f"person {int(person_id)}", *lines] for person_id, lines in zip(result.person_id, captions)]
    return _Annotation(float(exact_seconds(result.timestamp)), np.asarray(result.boxes, dtype=np.float32), captions,
                       colors)


def draw_annotation(image: np.ndarray, boxes: np.ndarray, captions: Sequence[Sequence[str]],
                    colors: Optional[Sequence[int]] = None) -> np.ndarray:
    """Draw person boxes (normalized x1y1x2y2) with caption lines on a copy of ``image`` (H, W, 3) uint8 RGB.

    Line widths and font scale follow the frame's short side so that 240p and 4K frames read alike. A
    caption sits above its box, or inside the box's top, or below it, whichever first overlaps no caption
    drawn before and fits in the frame. Boxes are drawn first, captions on top of every box. ``colors``:
    per box an index into the palette (e.g. person id - 1, so a person keeps its colour); default the box's
    position in ``boxes``.
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
    palette_index = list(range(len(corners))) if colors is None else [int(c) for c in colors]
    for index, (x1, y1, x2, y2) in enumerate(corners):
        cv2.rectangle(canvas, (x1, y1), (x2, y2), _PALETTE[palette_index[index] % len(_PALETTE)], line_thickness)
    taken: list[tuple[int, int, int, int]] = []
    for index, ((x1, y1, x2, y2), lines) in enumerate(zip(corners, captions)):
        color = _PALETTE[palette_index[index] % len(_PALETTE)]
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
    text = format_seconds(timestamp)
    whole, _, fraction = text.partition(".")
    return f"{video_id}_{int(whole):05d}{'.' + fraction if fraction else ''}.png"


class RenderSink:
    """Annotated keyframe PNGs (written as results arrive) and, on close, an annotated mp4 of ``video_path``.

    The mp4 holds every decoded frame of the source (same frame count and rate, rotation applied like the
    pipeline's reader); each frame shows the annotations of the nearest keyframe within half the keyframe
    spacing (0.5 s for one keyframe per second). Encoded with libx264 (yuv420p, CRF 23) when PyAV has it,
    else MPEG-4 part 2.
    """

    def __init__(self, video_path: str | Path, mp4_path: str | Path, png_dir: str | Path, *, top_k: int = 3):
        self.video_path = Path(video_path)
        self.mp4_path = Path(mp4_path)
        self.png_dir = Path(png_dir)
        self.top_k = top_k
        self._annotations: list[_Annotation] = []

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, traceback):
        if exc_type is None:
            self.write_video()
        return False

    def add(self, result: "KeyframeResult") -> None:
        import cv2

        annotation = _annotation(result, self.top_k)
        self._annotations.append(annotation)
        picture = draw_annotation(result.keyframe_image, annotation.boxes, annotation.captions, annotation.colors)
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
        from .video import VideoReader

        self._annotations.sort(key=lambda a: a.seconds)
        times = [a.seconds for a in self._annotations]
        spacing = float(np.median(np.diff(times))) if len(times) > 1 else 1.0
        reach = max(spacing, 1e-3) / 2
        with atomic_output(self.mp4_path) as temporary, VideoReader(self.video_path) as reader:
            import av

            with av.open(str(temporary), mode="w", format="mp4") as target:
                return self._transcode(reader, target, times, reach)

    def _transcode(self, reader, target, times, reach) -> int:
        import av

        rate = reader.metadata.fps or Fraction(30)
        codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
        stream = None
        written = 0
        try:
            for seconds, image in reader.source_frames():
                annotation = self._annotation_at(seconds, times, reach)
                if annotation is not None:
                    image = draw_annotation(image, annotation.boxes, annotation.captions, annotation.colors)
                image = _pad_to_even(image)
                if stream is None:
                    stream = target.add_stream(codec, rate=Fraction(rate))
                    stream.width, stream.height = image.shape[1], image.shape[0]
                    stream.pix_fmt = "yuv420p"
                    if codec == "libx264":
                        stream.options = {"crf": "23", "preset": "veryfast"}
                    else:
                        stream.bit_rate = 4_000_000
                out = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
                out.pts = written
                out.time_base = 1 / Fraction(rate)
                target.mux(stream.encode(out))
                written += 1
        except VideoDecodeError as exc:
            raise VideoDecodeError(f"{self.video_path}: rendering stopped after {written} frames ({exc})") from exc
        if stream is None:
            raise VideoDecodeError(f"{self.video_path}: no frame decoded; nothing to render")
        target.mux(stream.encode(None))
        return written


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
                        on_keyframe=None, segments_path: str | Path | None = None,
                        segment_thresh: float = SEGMENT_THRESH, segment_gap: int = SEGMENT_GAP) -> OutputStats:
    """Stream one video's results into its detections file and, with ``render_dir``, its rendering.

    ``render_name`` (default: the output file's stem) places the rendering (:func:`render_paths`);
    ``video_path`` is the source to re-decode for the mp4. ``on_keyframe(result)`` is called after each
    keyframe is written (progress bars). ``segments_path``: also the action segments CSV of the tracked
    results (:class:`~ava_pipeline.tracking.SegmentBuilder` with ``segment_thresh`` and ``segment_gap``),
    written before the detections file is put in place. Nothing is left at ``out_path`` when ``results``
    raises.
    """
    from .tracking import SegmentBuilder
    from .writers import write_segments

    out_path = Path(out_path)
    segments = None if segments_path is None else SegmentBuilder(thresh=segment_thresh, max_gap=segment_gap)
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
            if segments is not None:
                segments.add(result)
            if on_keyframe is not None:
                on_keyframe(result)
        if segments is not None:
            write_segments(segments.segments(), segments_path)
    return sink.stats

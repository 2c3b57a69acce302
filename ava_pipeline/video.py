"""Video input: decode a movie once, map its frames onto AVA's 30 fps grid, assemble keyframe clips.

:class:`VideoReader` reproduces the frames ``ffmpeg -i movie -r 30 frame_%06d.jpg`` writes (AVA's extraction)
straight from the movie: grid time 0 is the container start, frames are duplicated or dropped by FFmpeg's
constant-frame-rate rule, rotated upright by their display matrix, converted to RGB exactly as swscale does.
:func:`iter_clips` streams through the video once with bounded memory and yields one :class:`Clip` per keyframe
as PySlowFast's AVA test loader cuts it (centre ``round(t * fps)``, ``T`` frames ``tau`` apart, edges repeated).
Damage ends the stream after the clips before it, then :class:`VideoTruncatedError` names what was lost.
The rules, their FFmpeg versions and the measurements behind the design are in ``docs/internals.md``.
"""
from __future__ import annotations

import itertools
import logging
import math
import os
import re
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

import numpy as np

from .ava_csv import Seconds, exact_seconds, parse_seconds, plain_seconds
from .errors import VideoDecodeError

AV_TIME_BASE = 1_000_000  # FFmpeg's microsecond unit of container start times and durations
# Threads converting the frames clips will use to RGB while decoding goes on (a 720p H.264 frame: ~0.3 ms
# to convert, ~0.6 ms of CPU to decode); counted from the CPUs this process may use, as FFmpeg's decoder does.
_USABLE_CPUS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 2)
_CONVERTER_THREADS = max(1, min(4, _USABLE_CPUS // 2))


def decoder_version() -> str:
    """``"PyAV x.y.z / FFmpeg n libavcodec a.b.c"``: the decoder stack, for recording with results."""
    import av

    libavcodec = ".".join(str(part) for part in av.library_versions["libavcodec"])
    return f"PyAV {av.__version__} / FFmpeg {getattr(av, 'ffmpeg_version_info', '?')} libavcodec {libavcodec}"


@dataclass(frozen=True)
class VideoMetadata:
    """What the header says about a video (and its first frame, for rotation).

    ``fps``: native average frame rate; ``grid_fps``: the rate clips are sampled at; ``duration_s``: grid
    time from 0 to the declared end of the video stream (the file's end when the stream does not say);
    ``num_grid_frames``: ``round(duration_s * grid_fps)``, an estimate (decoding finds the true count);
    ``width``/``height``: pixels of upright frames; ``rotation``: clockwise degrees applied to make them
    upright (the legacy ``rotate`` tag: 90 for a typical portrait phone video).
    """

    path: str
    fps: Fraction
    grid_fps: Fraction
    duration_s: float
    num_grid_frames: int
    width: int
    height: int
    rotation: int
    codec: str
    decoder: str

    def as_dict(self) -> dict:
        """JSON-friendly fields (rates as strings like ``"30000/1001"``)."""
        record = asdict(self)
        record["fps"], record["grid_fps"] = str(self.fps), str(self.grid_fps)
        return record


@dataclass
class GridFrame:
    """The decoded frame shown at grid slot ``index`` (time ``index / grid_fps`` from the video start).

    ``pts`` is the source frame's timestamp in the stream's ``time_base``; copies of one source frame
    share one object, so the RGB conversion runs once.
    """

    index: int
    pts: int
    time_base: Fraction
    _source: "_SourceFrame" = field(repr=False)

    @property
    def pts_time(self) -> Fraction:
        """The source frame's timestamp in seconds, as stored in the file."""
        return self.pts * self.time_base

    def rgb(self) -> np.ndarray:
        """The frame upright, uint8 (H, W, 3) RGB, C-contiguous, read-only (shared between copies)."""
        return self._source.rgb()

    def prefetch(self, executor, convert) -> None:
        """Start ``convert(frame, quarter_turns)`` (e.g. :func:`_upright_rgb`) in ``executor`` so that
        :meth:`rgb` finds the frame converted."""
        self._source.prefetch(executor, convert)

    @property
    def converted(self) -> bool:
        """Whether :meth:`rgb` returns without converting or waiting for a conversion."""
        return self._source.converted


class _SourceFrame:
    """A decoded frame and its upright RGB array, converted once: on demand or ahead, in a worker thread."""

    __slots__ = ("frame", "quarter_turns", "_rgb", "_pending")

    def __init__(self, frame, quarter_turns):
        self.frame, self.quarter_turns, self._rgb, self._pending = frame, quarter_turns, None, None

    def prefetch(self, executor, convert):
        """Start ``convert(frame, quarter_turns)`` in ``executor`` (FFmpeg converts without holding the GIL);
        the decoded frame is released as soon as it is converted, so the decoder can reuse its buffer."""
        if self._rgb is None and self._pending is None:
            self._pending = executor.submit(convert, self.frame, self.quarter_turns)
            self.frame = None

    @property
    def converted(self):
        return self._rgb is not None or (self._pending is not None and self._pending.done())

    def rgb(self):
        if self._rgb is None:
            if self._pending is not None:
                self._rgb = self._pending.result()
            else:
                self._rgb = _upright_rgb(self.frame, self.quarter_turns)
            self.frame = self._pending = None
        return self._rgb


def _upright_rgb(frame, quarter_turns) -> np.ndarray:
    """``frame`` as uint8 (H, W, 3) RGB, C-contiguous, read-only, turned ``quarter_turns`` x 90 degrees
    counter-clockwise (``np.rot90``'s sense): swscale's rgb24 conversion, ``frame.to_ndarray(format="rgb24")``
    (single-threaded: by default swscale starts and stops a thread per core for every frame)."""
    return _upright(frame.to_ndarray(format="rgb24", threads=1), quarter_turns)


class _PooledRgbConverter:
    """Converts like :func:`_upright_rgb` (same pixels), into pooled buffers instead of a freshly allocated
    array per frame (2.7 MB at 720p, paged in and given back to the system over and over): iter_clips
    used 2-5% less time this way on 720p H.264 with 2 cores.

    Each calling thread gets an FFmpeg filter graph ``buffer -> scale (swscale, PyAV's default bilinear
    flags, one thread) -> rgb24 sink``, rebuilt when the frame size, pixel format or colour tags change; the
    sink's frames come from a buffer pool that takes them back once their arrays are released. The graphs
    and their pools are freed with the converter: use one per :func:`iter_clips` run.
    """

    def __init__(self):
        self._per_thread = threading.local()

    def __call__(self, frame, quarter_turns) -> np.ndarray:
        state = self._per_thread
        key = (frame.width, frame.height, frame.format.name, frame.colorspace, frame.color_range)
        if getattr(state, "key", None) != key:
            state.key, state.graph = key, _rgb24_graph(*key[:3])
        if state.graph is None:
            return _upright_rgb(frame, quarter_turns)
        state.graph.push(frame)
        return _upright(state.graph.pull().to_ndarray(), quarter_turns)


def _rgb24_graph(width: int, height: int, pix_fmt: str):
    """A configured ``buffer -> scale -> format=rgb24 -> buffersink`` graph, or None where FFmpeg has none."""
    import av

    graph = av.filter.Graph()
    graph.threads = 1
    try:
        chain = [graph.add("buffer", width=str(width), height=str(height), pix_fmt=pix_fmt, time_base="1/1",
                           pixel_aspect="1/1"),
                 graph.add("scale", "flags=bilinear:threads=1"), graph.add("format", "rgb24"), graph.add("buffersink")]
        for upstream, downstream in zip(chain, chain[1:]):
            upstream.link_to(downstream)
        graph.configure()
    except (av.FFmpegError, ValueError):
        return None
    return graph


def _upright(image, quarter_turns) -> np.ndarray:
    """``image`` (H, W, 3) turned ``quarter_turns`` x 90 degrees counter-clockwise, C-contiguous, read-only."""
    if quarter_turns:
        import cv2

        turn = (cv2.ROTATE_90_COUNTERCLOCKWISE, cv2.ROTATE_180, cv2.ROTATE_90_CLOCKWISE)[quarter_turns - 1]
        image = cv2.rotate(image, turn)  # ~10x faster than copying np.rot90
    elif not image.flags.c_contiguous:  # rows padded for alignment
        image = np.ascontiguousarray(image)
    image.setflags(write=False)  # shared by every grid slot and clip that shows this frame
    return image


class _NeededFrames:
    """Answers, for grid indices in increasing order, whether some clip will use that grid frame.

    ``centres`` is an ascending iterable of keyframe grid indices; ``offsets`` the clip's frame offsets.
    """

    def __init__(self, centres, offsets: range):
        self._centres, self._offsets = iter(centres), offsets
        self._offset_set = frozenset(offsets)
        self._window: deque = deque()
        self._next = next(self._centres, None)

    def __call__(self, index: int) -> bool:
        offsets = self._offsets
        while self._next is not None and self._next + offsets[0] <= index:
            self._window.append(self._next)
            self._next = next(self._centres, None)
        while self._window and self._window[0] + offsets[-1] < index and self._window[0] < index:
            self._window.popleft()
        return any(index == centre or index - centre in self._offset_set or (index == 0 and centre + offsets[0] < 0)
                   for centre in self._window)


@dataclass
class Clip:
    """The frames of one keyframe's clip.

    ``frame_list`` holds T uint8 (H, W, 3) RGB read-only arrays, grid frames ``frame_indices`` (clamped
    to the video); arrays are shared with neighbouring clips, not copied. ``frames`` stacks them into one
    uint8 (T, H, W, 3) array on first use. ``keyframe_image`` (read-only uint8 (H, W, 3) RGB) is grid frame
    ``center_index``; ``keyframe_pts`` is its source frame's timestamp (stream time base) and
    ``keyframe_pts_time`` the same in seconds.
    """

    keyframe_s: Seconds
    center_index: int
    frame_indices: list
    frame_list: list = field(repr=False)
    keyframe_image: np.ndarray = field(repr=False)
    keyframe_pts: int
    keyframe_pts_time: Fraction
    _stacked: Optional[np.ndarray] = field(default=None, init=False, repr=False, compare=False)

    @property
    def frames(self) -> np.ndarray:
        """uint8 (T, H, W, 3) RGB, the clip's frames stacked (a copy made once per clip)."""
        if self._stacked is None:
            self._stacked = np.stack(self.frame_list)
        return self._stacked


class VideoTruncatedError(VideoDecodeError):
    """Some keyframes could not be produced: the video is damaged or ends before them.

    ``produced`` and ``lost`` list the keyframes (seconds, as requested) that were and were not yielded.
    """

    def __init__(self, message, produced, lost):
        super().__init__(message)
        self.produced, self.lost = list(produced), list(lost)


class _Damaged(VideoDecodeError):
    """Decoding stopped partway through the video; ``reason`` says why."""

    def __init__(self, path, reason):
        super().__init__(f"{path}: {reason}; the file is damaged: re-encode or re-download it")
        self.reason = reason


def _rescale(value: int, source: Fraction, target: Fraction) -> int:
    """``value * source / target`` rounded to nearest, halves away from zero (FFmpeg's av_rescale_q)."""
    numerator = value * source.numerator * target.denominator
    denominator = source.denominator * target.numerator
    rounded = (2 * abs(numerator) + denominator) // (2 * denominator)
    return rounded if numerator >= 0 else -rounded


def _float32_rint(value: float) -> int:
    """C's ``llrintf``: round to float32, then to the nearest integer, halves to even."""
    return int(np.rint(np.float32(value)))


class _CfrSync:
    """FFmpeg's ``-r`` constant-frame-rate conversion (fftools ``do_video_out``, vsync cfr).

    Feed frames in presentation order to :meth:`place`; it answers how many grid slots the previous frame
    and the current frame fill next. ``native_rate`` is the stream's guessed frame rate.
    """

    def __init__(self, grid_fps: Fraction, time_base: Fraction, native_rate: Optional[Fraction]):
        self.grid_tb = 1 / grid_fps
        self.time_base = time_base
        extra_bits = min(max(29 - (self.grid_tb.denominator.bit_length() - 1), 0), 16)
        self.fine_tb = Fraction(self.grid_tb.numerator, self.grid_tb.denominator << extra_bits)
        self.fine_scale = 1 << extra_bits
        self.default_duration = 1.0
        if native_rate:
            self.default_duration = min(1 / (float(native_rate) * float(self.grid_tb)), 1.0)
        self._time_base_s, self._grid_tb_s = float(time_base), float(self.grid_tb)  # FFmpeg's av_q2d
        self.next_index = 0
        self.prev_history = [0, 0, 0]

    def place(self, pts: int, packet_duration: int) -> tuple[int, int]:
        """(slots for the previous frame, slots in all) from the next grid index; ``pts`` already offset."""
        sync = _rescale(pts, self.time_base, self.fine_tb) / self.fine_scale
        if sync != round(sync):
            sync += math.copysign(1.0 / (1 << 17), sync)
        duration = self.default_duration
        rounded = _float32_rint(packet_duration * self._time_base_s / self._grid_tb_s)
        if rounded > 0:
            duration = float(rounded)
        drift = sync - self.next_index
        delta = drift + duration
        previous, total = 0, 1
        if drift < 0 < delta:
            duration += drift
            drift = 0.0
            delta = duration
        if delta < -1.1:
            total = 0
        elif delta > 1.1:
            total = _float32_rint(delta)
            if drift > 1.1:
                previous = round(drift - 0.6)
        self.prev_history = [previous] + self.prev_history[:2]
        self.next_index += total
        return previous, total

    def place_end(self) -> int:
        """Extra copies of the last frame at the end of the stream (median of recent duplications)."""
        return sorted(self.prev_history)[1]


class VideoReader:
    """One pass over a video file's frames on a fixed fps grid.

    ``with VideoReader(path, fps=30) as reader:`` opens and checks the file (raising
    :class:`~ava_pipeline.errors.VideoDecodeError` for a missing, empty, unreadable or video-less file, or
    an undecodable first frame) and fills :attr:`metadata`; :meth:`grid_frames` then streams the grid once.
    ``ring_frames``: the window of grid frames :func:`iter_clips` keeps (default and minimum: one clip span).
    """

    def __init__(self, path, fps: Seconds = 30, ring_frames: Optional[int] = None):
        self.path = Path(path)
        self.grid_fps = exact_seconds(fps)
        if self.grid_fps <= 0:
            raise ValueError(f"fps must be positive, got {fps!r}")
        self.ring_frames = ring_frames
        self._container = None
        self._started = False
        self._open()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        if self._container is not None:
            self._container.close()
            self._container = None

    def _fail(self, what: str, todo: str = "check that the file is a complete, playable video") -> VideoDecodeError:
        return VideoDecodeError(f"{self.path}: {what}; {todo}")

    def _open(self):
        import av

        if not self.path.is_file():
            raise self._fail("no such file", "check the path")
        if self.path.stat().st_size == 0:
            raise self._fail("the file is empty (0 bytes)", "re-download or re-export the video")
        try:
            self._container = av.open(str(self.path), mode="r")
        except av.FFmpegError as error:
            raise self._fail(f"not a readable video container ({_describe(error)})") from None
        try:
            self._prepare()
        except BaseException:
            self.close()
            raise

    def _prepare(self):
        import av

        container = self._container
        if not container.streams.video:
            kinds = ", ".join(sorted({s.type for s in container.streams})) or "no streams"
            raise self._fail(f"the file has no video stream ({kinds})", "pass a file that contains video")
        stream = container.streams.video[0]
        codec_context = stream.codec_context
        if codec_context is None:
            raise self._fail(f"unsupported video codec (codec id {_codec_name(stream)}): this FFmpeg build "
                             f"({decoder_version()}) has no decoder for it", "re-encode the video, e.g. to H.264")
        stream.thread_type = "AUTO"
        self._stream = stream
        self._time_base = stream.time_base
        self._start_offset = 0
        if container.start_time is not None:
            self._start_offset = _rescale(-container.start_time, Fraction(1, AV_TIME_BASE), stream.time_base)
        self._frames = container.decode(stream)
        try:
            first = next(self._frames)
        except StopIteration:
            raise self._fail("the video stream has no decodable frames") from None
        except av.FFmpegError as error:
            raise self._fail(f"the first video frame cannot be decoded ({_describe(error)})") from None
        self._first = first
        # FFmpeg 3.x-6.0's MP4 demuxer gives no packet durations to streams with composition offsets
        # (B-frames); the rate conversion then falls back to the stream's frame rate.
        self._use_packet_durations = not ("mov" in container.format.name and codec_context.has_b_frames)
        ccw = round(first.rotation or 0)
        if abs(ccw - 90 * round(ccw / 90)) > 2:
            ccw = 0  # FFmpeg does not autorotate odd angles either
        self._quarter_turns = round(ccw / 90) % 4
        width, height = first.width, first.height
        if self._quarter_turns % 2:
            width, height = height, width
        native = stream.average_rate or stream.guessed_rate or Fraction(0)
        duration = self.declared_duration_s() or Fraction(0)
        self.metadata = VideoMetadata(
            path=str(self.path), fps=Fraction(native), grid_fps=self.grid_fps, duration_s=float(duration),
            num_grid_frames=round(duration * self.grid_fps),
            width=width, height=height, rotation=(-90 * self._quarter_turns) % 360,
            codec=codec_context.name, decoder=decoder_version())

    def declared_duration_s(self, *, video_only: bool = False) -> Optional[Fraction]:
        """Seconds of grid time the header promises, from grid time 0 to the end of the last video frame.

        From the video stream's duration (counted from its first timestamp) or its Matroska ``DURATION``
        tag (counted from timestamp 0); else, unless ``video_only``, the file's duration (which may include a
        longer audio track). None when the header does not say.
        """
        stream, time_base = self._stream, self._time_base
        tag = re.fullmatch(r"(\d+):(\d+):(\d+(?:\.\d+)?)", (stream.metadata or {}).get("DURATION", ""))
        if stream.duration:
            end = ((stream.start_time or 0) + stream.duration) * time_base
        elif tag:
            hours, minutes, seconds = tag.groups()
            end = int(hours) * 3600 + int(minutes) * 60 + Fraction(seconds)
        elif self._container.duration and not video_only:
            end = Fraction(self._container.duration, AV_TIME_BASE)
        else:
            return None
        return max(Fraction(0), end + self._start_offset * time_base)

    def grid_frames(self) -> Iterator[GridFrame]:
        """Yield the grid frames in order (index 0, 1, 2, ...), each exactly once; one pass per reader.

        Raises :class:`~ava_pipeline.errors.VideoDecodeError` when decoding fails partway (after yielding
        the frames before the damage).
        """
        import av

        if self._started:
            raise RuntimeError(f"{self.path}: a VideoReader streams its video once; open a new reader")
        self._started = True
        stream = self._stream
        sync = _CfrSync(self.grid_fps, self._time_base, stream.guessed_rate)
        index = 0
        previous: Optional[tuple[int, _SourceFrame]] = None
        frames = self._frames
        frame = self._first
        self._first = None
        rate = stream.guessed_rate
        decoded = 0
        size = None if frame is None else (frame.width, frame.height)
        while frame is not None:
            if (frame.width, frame.height) != size:  # clips and boxes need one frame size
                raise _Damaged(self.path, f"the frame size changes from {size[0]}x{size[1]} to {frame.width}x"
                                          f"{frame.height} after {self._time_s(previous)}; to use the whole video, "
                                          f"scale it to one size first (ffmpeg -vf scale={size[0]}:{size[1]})")
            pts = frame.pts if frame.pts is not None else frame.dts
            if pts is None and rate:  # raw elementary streams carry no timestamps: time frames at the rate
                pts = round(decoded / (rate * self._time_base))
            if pts is None:
                raise _Damaged(self.path, f"a frame after {self._time_s(previous)} has no timestamp")
            decoded += 1
            source = _SourceFrame(frame, self._quarter_turns)
            duration = (frame.duration or 0) if self._use_packet_durations else 0
            copies_of_previous, copies = sync.place(pts + self._start_offset, duration)
            for copy in range(copies):
                shown = previous if copy < copies_of_previous and previous is not None else (pts, source)
                yield GridFrame(index, shown[0], self._time_base, shown[1])
                index += 1
            previous = (pts, source)
            try:
                frame = next(frames)
            except StopIteration:
                frame = None
            except av.FFmpegError as error:
                raise _Damaged(self.path, f"decoding failed after the frame at {self._time_s(previous)} "
                                          f"({_describe(error)})") from None
        if previous is not None:
            for _ in range(sync.place_end()):
                yield GridFrame(index, previous[0], self._time_base, previous[1])
                index += 1

    def source_frames(self) -> Iterator[tuple[float, np.ndarray]]:
        """Yield ``(seconds, image)`` for every decoded frame of the stream, in order and without the grid's
        duplication: ``seconds`` on the grid's clock (0 = the container's start), ``image`` uint8 (H, W, 3)
        RGB turned upright like the grid frames. For rendering; one pass per reader, like :meth:`grid_frames`.
        """
        import av

        if self._started:
            raise RuntimeError(f"{self.path}: a VideoReader streams its video once; open a new reader")
        self._started = True
        rate = self._stream.guessed_rate or self._stream.average_rate or Fraction(30)
        frame, frames, decoded = self._first, self._frames, 0
        self._first = None
        while frame is not None:
            pts = frame.pts if frame.pts is not None else frame.dts
            seconds = (float((pts + self._start_offset) * self._time_base) if pts is not None
                       else decoded / float(rate))
            yield seconds, _upright_rgb(frame, self._quarter_turns)
            decoded += 1
            try:
                frame = next(frames)
            except StopIteration:
                frame = None
            except av.FFmpegError as error:
                raise _Damaged(self.path, f"decoding failed after {decoded} frames ({_describe(error)})") from None

    def _time_s(self, shown) -> str:
        if shown is None:
            return "the start"
        return f"{float((shown[0] + self._start_offset) * self._time_base):.3f} s"


def _center_index(keyframe_s: Seconds, fps: Fraction) -> int:
    """Grid index of a keyframe: ``t * fps`` rounded to nearest, halves up."""
    return math.floor(exact_seconds(keyframe_s) * fps + Fraction(1, 2))


def _describe(error) -> str:
    return str(error).strip() or type(error).__name__


def _codec_name(stream) -> str:
    try:
        return stream.codec.name
    except Exception:  # the codec id has no entry in this FFmpeg build
        return "unknown"


MAX_KEYFRAMES = 1_000_000
"""Most keyframes a ``START:END:STEP`` spec may name (a day of video at 10 keyframes per second is 864,000)."""


def keyframe_schedule(spec: Union[None, str, Sequence[Seconds]], duration_s: float) -> list:
    """Keyframe times (seconds from the video start, ascending, unique).

    * ``None``: every whole second ``0, 1, ...`` before ``duration_s`` (each keyframe's frame is shown
      inside the video; clips at the two ends repeat edge frames, as PySlowFast does).
    * ``"START:END[:STEP]"``: ``START, START+STEP, ... <= END`` (END inclusive, so AVA's ``"902:1798"`` is
      its 897 keyframes); numbers may be decimals or fractions like ``1/2``; STEP defaults to 1.
    * a sequence of times (e.g. the timestamps of a box file): sorted, duplicates removed.
    """
    if spec is None:
        return list(range(0, max(math.ceil(duration_s), 0)))
    if isinstance(spec, str):
        parts = spec.split(":")
        try:
            if len(parts) not in (2, 3):
                raise ValueError
            start, end = parse_seconds(parts[0]), parse_seconds(parts[1])
            step = parse_seconds(parts[2]) if len(parts) == 3 else Fraction(1)
        except ValueError:
            raise ValueError(f"keyframes {spec!r}: expected START:END[:STEP] in seconds, e.g. 902:1798") from None
        if step <= 0 or end < start or start < 0:
            raise ValueError(f"keyframes {spec!r}: need 0 <= START <= END and STEP > 0")
        count = math.floor((end - start) / step) + 1
        if count > MAX_KEYFRAMES:
            raise ValueError(f"keyframes {spec!r}: names {count} keyframes, more than {MAX_KEYFRAMES:,}; use a "
                             "larger STEP or a shorter range")
        return [plain_seconds(start + i * step) for i in range(count)]
    return sorted(set(spec), key=exact_seconds)


def keyframes_from_boxes(rows) -> list:
    """Unique keyframe times of box-file rows ``(video_id, timestamp, ...)`` or plain timestamps, ascending."""
    times = [row[1] if isinstance(row, (tuple, list)) else row for row in rows]
    return keyframe_schedule([plain_seconds(exact_seconds(t)) for t in times], 0.0)


def iter_clips(reader_or_path, keyframes: Optional[Sequence[Seconds]] = None, num_frames: int = 32,
               sampling_rate: int = 2, fps: Seconds = 30) -> Iterator[Clip]:
    """Yield a :class:`Clip` per keyframe (ascending), decoding the video once, front to back.

    ``keyframes``: seconds from the video start; ``None`` = every whole second whose grid frame exists
    (resolved while decoding, so exact). Clip ``k`` holds grid frames ``range(c - T*tau/2, c + T*tau/2,
    tau)`` (``c = round(t * fps)``, ``T = num_frames``, ``tau = sampling_rate``) clamped to the video.
    A keyframe whose centre lies more than ``T*tau/2`` grid frames past the last frame is not produced.

    Raises :class:`~ava_pipeline.errors.VideoDecodeError` for a video shorter than one clip
    (``T*tau`` grid frames), and :class:`VideoTruncatedError` (a ``VideoDecodeError``) after the last clip
    it could yield when keyframes are lost because decoding failed midway, the file ends well before its header
    says, or they lie past the end; its ``produced`` / ``lost`` say which keyframes were and were not yielded.
    Damage that costs none of the requested keyframes is logged as a warning.
    """
    if isinstance(reader_or_path, VideoReader):
        if exact_seconds(fps) != reader_or_path.grid_fps:
            raise ValueError(f"fps={fps} differs from the reader's grid fps {reader_or_path.grid_fps}")
        yield from _clips(reader_or_path, keyframes, num_frames, sampling_rate)
        return
    with VideoReader(reader_or_path, fps=fps) as reader:
        yield from _clips(reader, keyframes, num_frames, sampling_rate)


def _clips(reader: VideoReader, keyframes, num_frames: int, sampling_rate: int) -> Iterator[Clip]:
    converter = ThreadPoolExecutor(max_workers=_CONVERTER_THREADS, thread_name_prefix="ava-pipeline-rgb")
    try:
        yield from _clip_stream(reader, keyframes, num_frames, sampling_rate, converter, _PooledRgbConverter())
    finally:
        converter.shutdown(wait=False, cancel_futures=True)


def _clip_stream(reader: VideoReader, keyframes, num_frames: int, sampling_rate: int, converter, convert
                 ) -> Iterator[Clip]:
    if num_frames < 1 or sampling_rate < 1:
        raise ValueError(f"num_frames and sampling_rate must be >= 1, got {num_frames} and {sampling_rate}")
    span = num_frames * sampling_rate
    half = span // 2
    offsets = range(-half, span - half, sampling_rate)
    capacity = reader.ring_frames or span
    if capacity < span:
        raise ValueError(f"ring_frames={capacity} is smaller than one clip ({span} grid frames)")
    fps = reader.grid_fps
    every_second = keyframes is None
    if every_second:
        pending = deque()
    else:
        pending = deque((t, _center_index(t, fps)) for t in keyframe_schedule(keyframes, 0.0))
    produced, lost = [], []
    while pending and pending[0][1] < 0:
        lost.append(pending.popleft()[0])
    ring: dict[int, GridFrame] = {}  # the grid frames of the last ``capacity`` that clips use
    latest: Optional[GridFrame] = None
    next_second, next_center = 0, 0
    last = -1
    damage = None
    needed = _NeededFrames((_center_index(s, fps) for s in itertools.count()) if every_second
                           else [centre for _, centre in pending], offsets)

    def frame_at(index):
        return latest if index == latest.index else ring[index]

    def clip_indices(center, last_index):
        return [min(max(center + offset, 0), last_index) for offset in offsets]

    def clip_of(keyframe, center, last_index):
        indices = clip_indices(center, last_index)
        key = frame_at(min(center, last_index))
        produced.append(keyframe)
        return Clip(keyframe_s=keyframe, center_index=center, frame_indices=indices,
                    frame_list=[frame_at(i).rgb() for i in indices], keyframe_image=key.rgb(),
                    keyframe_pts=key.pts, keyframe_pts_time=key.pts_time)

    def next_clip():
        """The first pending clip; the ring then drops the frames no later clip uses (the clip holds its own)."""
        clip = clip_of(*pending.popleft(), last)
        if pending or every_second:
            first_used = (pending[0][1] if pending else next_center) + offsets[0]
            for index in [index for index in ring if index < first_used]:
                del ring[index]
        else:
            ring.clear()
        return clip

    try:
        for grid_frame in reader.grid_frames():
            last, latest = grid_frame.index, grid_frame
            if needed(last):  # frames no clip uses are not kept: the decoder reuses their buffers
                ring[last] = grid_frame
                grid_frame.prefetch(converter, convert)
            ring.pop(last - capacity, None)
            while every_second and next_center <= last:
                pending.append((next_second, next_center))
                next_second += 1
                next_center = _center_index(next_second, fps)
            if last + 1 < span:
                continue  # a video shorter than one clip yields nothing
            while pending and pending[0][1] + offsets[-1] <= last:
                center = pending[0][1]
                uses = clip_indices(center, last) + [min(center, last)]
                if uses[0] > last + 1 - capacity and not all(frame_at(i).converted for i in uses):
                    break  # decode on while the converter finishes; the clip's frames stay in the ring
                yield next_clip()
    except _Damaged as error:
        damage = error.reason
    if last + 1 >= span:  # clips whose frames have all been decoded (and wait for their conversion)
        while pending and pending[0][1] + offsets[-1] <= last:
            yield next_clip()

    if damage is None and last + 1 < span:
        raise VideoDecodeError(f"{reader.path}: the video lasts {float((last + 1) / fps):.3f} s ({last + 1} frames "
                               f"at {fps} fps), shorter than one clip ({span} frames = {float(span / fps):.3f} s); "
                               "use a longer video or a model with a shorter clip")
    declared = reader.declared_duration_s(video_only=True)
    declared_end = declared - 1 / fps if declared is not None else None  # time of the last promised frame
    if damage is None and declared_end is not None and declared_end - last / fps > 1:
        damage = (f"the video stops at {float(last / fps):.3f} s but its header declares frames up to "
                  f"{float(declared_end):.3f} s (truncated file?)")
    if damage is None:
        while pending and pending[0][1] <= last + half:
            yield clip_of(*pending.popleft(), last)
        reason = f"they lie outside the video (grid frames 0 to {last}, {float(last / fps):.3f} s)"
    else:
        if every_second and declared_end is not None:
            pending.extend((s, _center_index(s, fps)) for s in range(next_second, math.floor(declared_end) + 1))
        reason = f"decoding stopped early: {damage}"
    lost.extend(keyframe for keyframe, _ in pending)
    if not lost and damage is not None:  # every requested keyframe was produced: the damage costs nothing
        logging.getLogger(__name__).warning("%s: %s; all %d requested keyframes were produced", reader.path,
                                            reason, len(produced))
    if lost:
        raise VideoTruncatedError(f"{reader.path}: {len(lost)} keyframes ({_seconds_list(lost)}) were not produced, "
                                  f"{len(produced)} were: {reason}. Re-encode or re-download the video, or drop "
                                  "those keyframes", produced, lost)


def _seconds_list(times) -> str:
    shown = ", ".join(str(t) for t in times[:5])
    if len(times) > 5:
        shown += f", ... {times[-1]} ({len(times)} in all)"
    return shown

"""Synthetic index-coded videos for tests.

Every frame written by :func:`write_index_video` shows its own 0-based index as a 4x4 grid of black/white
blocks (16 bits, most significant bit top-left), so the index survives lossy codecs, chroma subsampling and
colour conversion; :func:`read_index` decodes it back from an RGB frame of any size. Frame timing is fully
controlled (constant rate, variable-rate patterns, a non-zero first timestamp, a leading audio stream), which
lets tests check frame selection exactly.
"""
import shutil
import subprocess
import tempfile
from fractions import Fraction
from itertools import cycle
from pathlib import Path

import av
import cv2
import numpy as np

INDEX_BITS = 16
_GRID = 4  # 4 x 4 blocks = 16 bits


def index_image(index, width=64, height=48):
    """RGB uint8 image (height, width, 3) that encodes ``index`` (0 <= index < 2**16) in black/white blocks."""
    if not 0 <= index < 2 ** INDEX_BITS:
        raise ValueError(f"frame index {index} does not fit in {INDEX_BITS} bits")
    image = np.zeros((height, width, 3), np.uint8)
    for bit in range(INDEX_BITS):
        if index >> (INDEX_BITS - 1 - bit) & 1:
            row, col = divmod(bit, _GRID)
            image[row * height // _GRID:(row + 1) * height // _GRID,
                  col * width // _GRID:(col + 1) * width // _GRID] = 255
    return image


def read_index(frame):
    """The index shown by an RGB or BGR uint8 frame (H, W, 3) written by :func:`write_index_video`."""
    frame = np.asarray(frame)
    height, width = frame.shape[:2]
    index = 0
    for bit in range(INDEX_BITS):
        row, col = divmod(bit, _GRID)
        y = (2 * row + 1) * height // (2 * _GRID)
        x = (2 * col + 1) * width // (2 * _GRID)
        index = index << 1 | int(frame[y, x].mean() > 127)
    return index


def frame_times(num_frames, fps=30, start_s=0, vfr_pattern=None):
    """Presentation times (Fractions of a second) of the frames :func:`write_index_video` writes.

    Frame 0 is at ``start_s``; each frame lasts ``1/fps`` or, with ``vfr_pattern``, the pattern's durations
    (seconds, cycled).
    """
    durations = cycle([Fraction(d) for d in vfr_pattern]) if vfr_pattern else cycle([1 / Fraction(fps)])
    times, t = [], Fraction(start_s)
    for _ in range(num_frames):
        times.append(t)
        t += next(durations)
    return times


def write_index_video(path, num_frames, fps=30, size=(64, 48), start_s=0, vfr_pattern=None, *,
                      codec="ffv1", pix_fmt="yuv420p", time_base=None, rotation=0, audio_from_s=None):
    """Write a video whose frame ``i`` shows index ``i``; return the stored presentation times (Fractions of
    a second, in frame order) as the file reports them.

    ``size`` is (width, height) as stored (before any ``rotation``, which is written as a display matrix:
    degrees counter-clockwise, as FFmpeg's ``display_rotation``). The container follows the suffix
    (``.mkv`` stores milliseconds; ``.mov``/``.mp4`` store ``time_base``, default ``1/(fps*1000)``).
    ``audio_from_s`` adds a silent audio track starting at that time (a movie whose audio starts before its
    first video frame).
    """
    path = Path(path)
    times = frame_times(num_frames, fps, start_s, vfr_pattern)
    width, height = size
    time_base = Fraction(time_base) if time_base else 1 / (Fraction(fps) * 1000)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        stream.time_base = stream.codec_context.time_base = time_base
        if rotation:
            stream.set_display_rotation(rotation)
        if audio_from_s is not None:
            audio = container.add_stream("pcm_s16le", rate=8000, layout="mono")
            _write_silence(container, audio, Fraction(audio_from_s), times[-1] + 1 / Fraction(fps))
        for index, t in enumerate(times):
            frame = av.VideoFrame.from_ndarray(index_image(index, width, height), format="rgb24")
            frame.pts = round(t / time_base)
            frame.time_base = time_base
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    with av.open(str(path)) as container:
        stored = container.streams.video[0]
        return sorted(packet.pts * stored.time_base for packet in container.demux(stored) if packet.pts is not None)


def _write_silence(container, audio, start_s, end_s):
    chunk, rate = 800, audio.sample_rate
    for offset in range(round(start_s * rate), round(end_s * rate), chunk):
        frame = av.AudioFrame.from_ndarray(np.zeros((1, chunk), np.int16), format="s16", layout="mono")
        frame.sample_rate = rate
        frame.pts = offset
        frame.time_base = Fraction(1, rate)
        for packet in audio.encode(frame):
            container.mux(packet)
    for packet in audio.encode():
        container.mux(packet)


def ffmpeg_available():
    """Whether an ``ffmpeg`` program is on PATH (tests that compare with it skip otherwise)."""
    return shutil.which("ffmpeg") is not None


def ffmpeg_grid_indices(path, fps=30):
    """Indices shown by the frames ``ffmpeg -i path -r fps frame_%06d.png`` writes (AVA's extraction)."""
    with tempfile.TemporaryDirectory() as folder:
        subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(path), "-r", str(fps),
                        str(Path(folder) / "frame_%06d.png")], check=True)
        return [read_index(cv2.imread(str(image))) for image in sorted(Path(folder).glob("frame_*.png"))]

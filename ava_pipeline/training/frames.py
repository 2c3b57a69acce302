"""Frame store: the clip frames training needs, decoded once per video at training resolution, read back in any
order.

:mod:`ava_pipeline.video` decodes front to back only, while training visits keyframes in random order. So
:meth:`FrameStore.prepare` runs :func:`~ava_pipeline.video.iter_clips` once over a video (the frames the
inference path gives: same fps grid, same clip indices and clamping, same RGB conversion) and appends
every grid frame some requested clip uses, once, as raw uint8 RGB to a file; :meth:`VideoFrames.clip`
then returns any keyframe's T frames as views of a memory map. With ``short_side``, frames whose short side is
larger are stored downscaled to it by the transforms' own resize (``cv2.resize`` INTER_LINEAR on uint8, to
:func:`~ava_pipeline.preprocess.resized_size`), never upscaled: at the test size these are exactly the resized
frames of the inference transform, so test-time tensors stay bit-exact (given the entry's ``source_size``); at
the largest jitter scale they are the training frames' compact source. Memory stays bounded by the decoder's
window of one clip; the disk holds ``h * w * 3`` bytes per distinct grid frame used (a 32x2 clip every
second uses every other grid frame: 15 frames a second at 30 fps).

An entry is keyed by the video file (absolute path, size, modification time), the decoder version and the
clip settings (fps, frames, sampling rate, stored short side), and holds the clips of a set of keyframes. A
request is served by an entry that has all its keyframes; otherwise one decoding pass stores a new entry with the
requested keyframes and those of the video's entries with the same key (so datasets with the same settings, e.g.
training and validation without augmentation, share one entry per video, and an edited annotation file does not
leave old entries behind). Entries superseded that way, entries of an older version of the file (size or time
differ) and entries this code cannot use (another store format or decoder version) are removed unless a live
dataset of this process uses them (then at a later prepare). Entries are written under a temporary name and
renamed when complete, so an interrupted run leaves no entry that looks valid. A damaged video's entry records
which keyframes decoding could not produce and why, so a reuse reports them again.
:meth:`FrameStore.missing_bytes` estimates an entry's size from the video's header, so that a run can check
the free disk space (:meth:`FrameStore.check_space`) before it decodes anything.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import uuid
import weakref
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Optional, Sequence

import cv2
import numpy as np

from ..errors import AvaPipelineError, VideoDecodeError
from ..preprocess import resized_size
from ..video import VideoReader, VideoTruncatedError, decoder_version, iter_clips

STORE_VERSION = 2
_INDEX = "index.json"
_FRAMES = "frames.u8"


class FrameStoreError(AvaPipelineError):
    """The frame store cannot be written or read (disk full, no permission); the message names the folder."""


@dataclass(eq=False)
class VideoFrames:
    """The stored clips of one video: ``clip(time)`` -> T uint8 (h, w, 3) RGB frames (read-only views).

    ``shape``: ``(h, w, 3)`` of a stored frame; ``source_size``: ``(W, H)`` of the video's (upright) frames, of
    which the stored ones are a downscaled copy when the two differ; ``clips``: ``{time: rows}`` (the T stored
    frames of each keyframe); ``lost``: ``{time: reason}`` of keyframes that decoding did not produce;
    ``reused``: the entry existed before this prepare. Picklable (for DataLoader workers): the memory map is
    opened on first use in each process.
    """

    directory: Path
    shape: tuple
    source_size: tuple
    clips: dict
    lost: dict
    reused: bool
    _frames: Optional[np.ndarray] = field(default=None, repr=False, compare=False)

    @property
    def known_times(self) -> set:
        """The keyframes this entry answers for: stored clips and lost keyframes."""
        return set(self.clips) | set(self.lost)

    @property
    def disk_bytes(self) -> int:
        """Bytes of stored frames."""
        return int(np.prod(self.shape)) * self.frame_count

    @property
    def frame_count(self) -> int:
        """Distinct grid frames stored."""
        return max((int(rows.max()) + 1 for rows in self.clips.values() if len(rows)), default=0)

    def clip(self, time: Fraction) -> list:
        """The clip of keyframe ``time`` (a requested keyframe not in :attr:`lost`): T uint8 (h, w, 3) RGB frames,
        views of the memory map (no copy)."""
        if self._frames is None:
            count = self.frame_count
            self._frames = np.memmap(self.directory / _FRAMES, dtype=np.uint8, mode="r",
                                     shape=(count, *self.shape)) if count else np.zeros((0, *self.shape), np.uint8)
        return [self._frames[row] for row in self.clips[Fraction(time)]]

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_frames"] = None
        return state


class FrameStore:
    """Stored clip frames under ``cache_dir`` (see the module docstring)."""

    def __init__(self, cache_dir):
        self.cache_dir = Path(cache_dir)

    def prepare(self, video_id: str, video_path, times: Sequence[Fraction], *, fps, num_frames: int,
                sampling_rate: int, short_side: Optional[int] = None) -> VideoFrames:
        """The clips of keyframes ``times`` (seconds) of ``video_path``, frames downscaled to ``short_side``
        where larger (None: as decoded): a valid stored entry that has them all, or one decoding pass that stores
        them together with the keyframes of the video's other entries (which the new entry supersedes).

        Keyframes lost to damage or lying past the end are in the result's ``lost``; a video that cannot be
        decoded at all raises :class:`~ava_pipeline.errors.VideoDecodeError` (nothing is stored).
        """
        video_path, times, key, prefix = self._key(video_id, video_path, times, fps, num_frames, sampling_rate,
                                                   short_side)
        try:
            entries = self._entries(prefix, key)
            covering = [frames for frames in entries if set(times) <= frames.known_times]
            if covering:
                stored = max(covering, key=lambda frames: len(frames.known_times))  # the others are its subsets
                self._remove_superseded(entries, stored)
                _HANDED_OUT.add(stored)
                return stored
            wanted = sorted(set(times).union(*(frames.known_times for frames in entries)))
            digest = hashlib.sha256(json.dumps([key, [str(t) for t in wanted]], sort_keys=True).encode())
            entry = self.cache_dir / f"{prefix}-{digest.hexdigest()[:20]}"
            temporary = self.cache_dir / f".{entry.name}.{uuid.uuid4().hex[:8]}.tmp"
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(entry, ignore_errors=True)  # damaged: complete entries are found above
            temporary.mkdir()
            try:
                index = _decode(video_path, temporary, wanted, Fraction(fps), num_frames, sampling_rate, short_side)
                index["key"] = key
                (temporary / _INDEX).write_text(json.dumps(index), encoding="utf-8")
                try:
                    temporary.rename(entry)
                except OSError:
                    if _load(entry, key) is None:  # else another process stored the same entry meanwhile
                        raise
            finally:
                shutil.rmtree(temporary, ignore_errors=True)
        except OSError as error:
            raise FrameStoreError(f"{self.cache_dir}: cannot store the frames of {video_path} "
                                  f"({error.strerror or error}); free disk space there or choose another cache "
                                  "folder") from None
        stored = _load(entry, key)
        if stored is None:
            raise FrameStoreError(f"{entry}: the frame store entry just written cannot be read back; check the "
                                  f"disk holding {self.cache_dir}")
        stored.reused = False
        self._remove_superseded(entries, stored)
        _HANDED_OUT.add(stored)
        return stored

    def missing_bytes(self, video_id: str, video_path, times: Sequence[Fraction], *, fps, num_frames: int,
                      sampling_rate: int, short_side: Optional[int] = None) -> int:
        """About how many bytes :meth:`prepare` would store for these arguments: 0 when a stored entry has these
        keyframes, else the distinct grid frames of the clips to store (clamped to the frame count the header
        promises) times the stored frame's ``w * h * 3``. Raises :class:`~ava_pipeline.errors.VideoDecodeError`
        for an unreadable video."""
        video_path, times, key, prefix = self._key(video_id, video_path, times, fps, num_frames, sampling_rate,
                                                   short_side)
        entries = self._entries(prefix, key, remove_stale=False)
        if any(set(times) <= frames.known_times for frames in entries):
            return 0
        times = set(times).union(*(frames.known_times for frames in entries))
        with VideoReader(video_path, fps=fps) as reader:
            metadata = reader.metadata
        last = max(metadata.num_grid_frames - 1, 0)
        span = num_frames * sampling_rate
        offsets = range(-(span // 2), span - span // 2, sampling_rate)
        centres = {math.floor(t * Fraction(fps) + Fraction(1, 2)) for t in times}  # round(t * fps), as iter_clips
        used = {min(max(centre + offset, 0), last) for centre in centres for offset in offsets}
        width, height = _stored_size(metadata.width, metadata.height, short_side)
        return len(used) * width * height * 3

    def check_space(self, needed_bytes: int) -> None:
        """Raise :class:`FrameStoreError` when the cache folder's disk has less than ``needed_bytes`` free."""
        folder = self.cache_dir
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        free = shutil.disk_usage(folder).free
        if needed_bytes > free:
            raise FrameStoreError(f"{self.cache_dir}: the training frames need about {needed_bytes / 2 ** 30:.1f} GiB "
                                  f"and only {free / 2 ** 30:.1f} GiB are free there; free disk space or choose a "
                                  "cache folder on a larger disk")

    def _key(self, video_id, video_path, times, fps, num_frames, sampling_rate, short_side):
        """(absolute path, sorted unique times, entry key, entry-name prefix) of a video's entries."""
        video_path = Path(os.path.abspath(video_path))
        times = sorted({Fraction(t) for t in times})
        try:
            stat = video_path.stat()
        except OSError as error:
            raise VideoDecodeError(f"{video_path}: cannot be read ({error.strerror or error}); check the "
                                   "path") from None
        identity = {"path": str(video_path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        settings = {"version": STORE_VERSION, "decoder": decoder_version(), "fps": str(Fraction(fps)),
                    "num_frames": num_frames, "sampling_rate": sampling_rate, "short_side": short_side}
        prefix = re.sub(r"[^A-Za-z0-9_.-]", "_", video_id)[:80]
        return video_path, times, {"identity": identity, "settings": settings}, prefix

    def _entries(self, prefix: str, key: dict, *, remove_stale: bool = True) -> list:
        """The complete entries of this video file and settings; with ``remove_stale``, entries of an older
        version of the file (size or time differ) or of another store format or decoder are removed, unless this
        process uses them."""
        entries = []
        for entry in sorted(self.cache_dir.glob(f"{_glob_escape(prefix)}-*")):
            try:
                entry_key = json.loads((entry / _INDEX).read_text(encoding="utf-8"))["key"]
                same_file = entry_key["identity"]["path"] == key["identity"]["path"]
                unreadable = any(entry_key["settings"].get(name) != key["settings"][name]
                                 for name in ("version", "decoder"))
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                continue
            if entry_key == key:
                frames = _load(entry, key)
                if frames is not None:
                    entries.append(frames)
            elif (remove_stale and same_file and (entry_key["identity"] != key["identity"] or unreadable)
                  and not _in_use(entry)):
                shutil.rmtree(entry, ignore_errors=True)
        return entries

    @staticmethod
    def _remove_superseded(entries: list, kept: VideoFrames) -> None:
        """Remove the entries whose keyframes ``kept`` also holds, unless this process uses them."""
        for frames in entries:
            if (frames.directory != kept.directory and frames.known_times <= kept.known_times
                    and not _in_use(frames.directory)):
                shutil.rmtree(frames.directory, ignore_errors=True)


_HANDED_OUT = weakref.WeakSet()
"""The :class:`VideoFrames` that :meth:`FrameStore.prepare` returned and that are still alive (datasets read
their entries): those entries are not removed."""


def _in_use(directory: Path) -> bool:
    return any(frames.directory == directory for frames in list(_HANDED_OUT))


def _glob_escape(text: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", text)


def _load(entry: Path, key: dict) -> Optional[VideoFrames]:
    """The entry's frames when it is complete and made with ``key``; else None."""
    try:
        index = json.loads((entry / _INDEX).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if index.get("key") != key:
        return None
    clips = {Fraction(t): np.asarray(rows, dtype=np.int64) for t, rows in index["clips"].items()}
    lost = {Fraction(t): reason for t, reason in index["lost"].items()}
    frames = VideoFrames(entry, tuple(index["shape"]), tuple(index["source_size"]), clips, lost, reused=True)
    try:
        complete = (entry / _FRAMES).stat().st_size == frames.disk_bytes
    except OSError:
        complete = False
    return frames if complete else None


def _stored_size(width: int, height: int, short_side: Optional[int]) -> tuple[int, int]:
    """(w, h) of a stored frame of a ``width`` x ``height`` video: downscaled to ``short_side``, never upscaled."""
    if short_side is None or min(width, height) <= short_side:
        return width, height
    return resized_size(width, height, short_side)


def _decode(video_path: Path, directory: Path, times: list, fps: Fraction, num_frames: int,
            sampling_rate: int, short_side: Optional[int]) -> dict:
    """One decoding pass writing the clips' distinct grid frames (downscaled to ``short_side`` where larger) to
    ``directory``; returns the index."""
    rows: dict[int, int] = {}
    clips: dict[str, list] = {}
    lost: dict[str, str] = {}
    shape = source_size = None
    with open(directory / _FRAMES, "wb") as output:
        try:
            for clip in iter_clips(video_path, times, num_frames=num_frames, sampling_rate=sampling_rate, fps=fps):
                clip_rows = []
                for grid_index, image in zip(clip.frame_indices, clip.frame_list):
                    if grid_index not in rows:
                        if source_size is None:
                            source_size = [image.shape[1], image.shape[0]]
                            stored = _stored_size(*source_size, short_side)
                        if stored != tuple(source_size):
                            image = cv2.resize(image, stored, interpolation=cv2.INTER_LINEAR)
                        shape = shape or list(image.shape)
                        rows[grid_index] = len(rows)
                        output.write(np.ascontiguousarray(image).data)
                    clip_rows.append(rows[grid_index])
                clips[str(Fraction(clip.keyframe_s))] = clip_rows
        except VideoTruncatedError as error:
            lost = {str(Fraction(t)): str(error) for t in error.lost}
    return {"shape": shape or [0, 0, 3], "source_size": source_size or [0, 0], "clips": clips, "lost": lost}

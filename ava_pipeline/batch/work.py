"""The per-video work that both engines run: a picklable recipe, built once per worker, called per video.

:class:`DetectionWork` travels to each worker (a spawned process or a Ray actor) and is opened there once
into a :class:`VideoProcessor`, which holds the :class:`~ava_pipeline.pipeline.ActionDetector` (models loaded
once) and turns a :class:`VideoTask` into a :class:`VideoOutcome`. Outcomes carry the keyframe results back
to the driver, which alone writes the detection files and the manifest. A video's own failure (corrupt
file, no boxes for it, ...) is an outcome, never an exception: only a dead worker is retried.
"""
from __future__ import annotations

import copy
import dataclasses
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..errors import ConfigError

_NO_IMAGE = np.zeros((0, 0, 3), dtype=np.uint8)


@dataclass(frozen=True)
class VideoTask:
    """One video to process: ``name`` is its output name relative to the output folder, without suffix
    (``season1/ep02``); ``path`` its absolute path; ``size`` bytes on disk (longest first); ``attempt``
    counts from 1 and grows when a worker died while holding the video."""

    name: str
    path: str
    size: int
    attempt: int = 1


@dataclass
class VideoOutcome:
    """What a worker returns for one task.

    ``results`` are the video's :class:`~ava_pipeline.results.KeyframeResult` in time order with their
    ``keyframe_image`` dropped (empty (0, 0, 3) uint8) to keep the message small; when ``error`` is set, the
    keyframes decoded before the damage of a damaged video, else None.
    ``error`` is one line naming the video file; ``timings`` seconds per stage (``process`` is the wall time
    in the worker); ``started`` / ``finished`` are Unix times; ``worker`` is ``host:pid``.
    """

    task: VideoTask
    results: Optional[list] = None
    error: Optional[str] = None
    error_type: Optional[str] = None
    fingerprint: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    started: float = 0.0
    finished: float = 0.0
    worker: str = ""

    @property
    def ok(self) -> bool:
        return self.error is None


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def error_line(path: str, exc: BaseException) -> str:
    """``exc`` as one line that names ``path`` (added when the message does not already)."""
    message = " ".join(str(exc).split()) or type(exc).__name__
    return message if path in message else f"{path}: {type(exc).__name__}: {message}"


class DetectionWork:
    """Recipe of the per-video work: :class:`ActionDetector` keyword arguments plus per-batch options.

    ``detector_settings``: keyword arguments of :class:`~ava_pipeline.pipeline.ActionDetector` (plain values);
    ``keyframes``: the ``START:END[:STEP]`` spec passed to every stream (None: the detector's default);
    ``render_dir``: where workers write the annotated mp4 and keyframe PNGs (a folder every worker can
    reach). ``expected_fingerprint``, set by the driver, makes a worker refuse to start when its models differ
    (e.g. other weights at the same path on a Ray node).
    """

    def __init__(self, detector_settings: dict, *, keyframes: Optional[str] = None,
                 render_dir: Optional[str | Path] = None, expected_fingerprint: Optional[dict] = None):
        self.detector_settings = dict(detector_settings)
        self.keyframes = keyframes
        self.render_dir = None if render_dir is None else str(render_dir)
        self.expected_fingerprint = expected_fingerprint

    def with_fingerprint(self, fingerprint: dict) -> "DetectionWork":
        """A copy (same class) that workers check against ``fingerprint``."""
        work = copy.copy(self)
        work.expected_fingerprint = fingerprint
        return work

    def fingerprint(self) -> dict:
        """The detector's fingerprint, computed in this process with the models on CPU (then released)."""
        from ..pipeline import ActionDetector

        detector = ActionDetector(**{**self.detector_settings, "device": "cpu"})
        return detector.fingerprint()

    def open(self, *, device: Optional[str] = None, threads: Optional[int] = None) -> "VideoProcessor":
        """Build the detector in this worker (``device`` overrides the settings' device, ``threads`` sets
        torch's intra-op threads) and check it against :attr:`expected_fingerprint`."""
        import torch

        from ..pipeline import ActionDetector

        if threads is not None:
            torch.set_num_threads(max(1, threads))
        settings = dict(self.detector_settings)
        if device is not None:
            settings["device"] = device
        detector = ActionDetector(**settings)
        fingerprint = detector.fingerprint()
        if self.expected_fingerprint is not None and fingerprint != self.expected_fingerprint:
            differing = sorted(k for k in set(fingerprint) | set(self.expected_fingerprint)
                               if fingerprint.get(k) != self.expected_fingerprint.get(k))
            raise ConfigError(f"worker {worker_id()}: its model differs from the driver's in {differing} "
                              f"(worker {[fingerprint.get(k) for k in differing]}, driver "
                              f"{[self.expected_fingerprint.get(k) for k in differing]}); install the same "
                              "ava-pipeline, weights and box files at the same paths on every machine")
        return VideoProcessor(detector, fingerprint, keyframes=self.keyframes, render_dir=self.render_dir)


class VideoProcessor:
    """Runs one video at a time through a built detector; see :class:`DetectionWork`."""

    def __init__(self, detector: Any, fingerprint: dict, *, keyframes: Optional[str] = None,
                 render_dir: Optional[str] = None):
        self.detector = detector
        self.fingerprint = fingerprint
        self.keyframes = keyframes
        self.render_dir = render_dir

    def __call__(self, task: VideoTask) -> VideoOutcome:
        from ..pipeline import StageTimings

        outcome = VideoOutcome(task=task, fingerprint=self.fingerprint, worker=worker_id(), started=time.time())
        stages = StageTimings()
        start = time.perf_counter()
        try:
            outcome.results, damage = self._results(task, stages)
        except Exception as exc:  # the video's own failure: recorded, not retried
            outcome.error, outcome.error_type = error_line(task.path, exc), type(exc).__name__
        else:
            if damage is not None:
                outcome.error, outcome.error_type = error_line(task.path, damage), type(damage).__name__
        outcome.timings = {"process": time.perf_counter() - start,
                           **{k: stages.as_dict()[k] for k in ("decode", "detect", "preprocess", "action_model")}}
        outcome.finished = time.time()
        return outcome

    def _results(self, task: VideoTask, stages) -> tuple[list, Optional[Exception]]:
        """The video's results, and the damage that ended them early (None for a whole video)."""
        from ..results import KeptBeforeDamage
        from ..render import RenderSink, render_paths

        stream = KeptBeforeDamage(self.detector.stream(task.path, self.keyframes, timings=stages))
        results = []
        if self.render_dir is None:
            for result in stream:
                results.append(dataclasses.replace(result, keyframe_image=_NO_IMAGE))
            return results, stream.error
        mp4_path, png_dir = render_paths(self.render_dir, task.name)
        with RenderSink(task.path, mp4_path, png_dir) as renderer:
            for result in stream:
                renderer.add(result)
                results.append(dataclasses.replace(result, keyframe_image=_NO_IMAGE))
        return results, stream.error


def read_ahead(path: str, limit_bytes: int = 256 << 20) -> threading.Thread:
    """Start reading the first ``limit_bytes`` of ``path`` in a daemon thread, so that the next video's
    file is in the page cache (local disk, NFS, object-store mounts) when its decoding starts."""

    def read():
        try:
            with open(path, "rb", buffering=0) as file:
                remaining = limit_bytes
                while remaining > 0 and (chunk := file.read(min(remaining, 8 << 20))):
                    remaining -= len(chunk)
        except OSError:
            pass  # the video's own processing reports unreadable files

    thread = threading.Thread(target=read, name="ava-read-ahead", daemon=True)
    thread.start()
    return thread

"""ActionDetector: video -> keyframe clips -> person boxes -> action scores, the stages wired together.

Data flow for one video::

    background thread:  VideoReader ──► iter_clips ──► [precomputed boxes] ──► preprocess frames
                              │  bounded queue of ``prefetch`` prepared clips
    caller's thread:    [image detector on the keyframe] ──► no person: result without boxes, no model
                              ──► persons: boxes to input pixels ──► batches of ``batch_size`` keyframes
                              ──► action model ──► probabilities (K, 80) ──► results in time order

Decoding and preprocessing of the next clips overlap the detector and the action model (PyAV, cv2 and
torch release the GIL). Clips of one video share their size after preprocessing, so keyframes are stacked
into one forward pass; each box carries the index of its clip in the batch. A keyframe that the box file
leaves without persons is not even preprocessed; with an image detector, frames are preprocessed ahead
while the detector runs, and unused when it finds nobody.
"""
from __future__ import annotations

import itertools
import queue
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional

import numpy as np

from .errors import ConfigError, InputFormatError
from .results import KeptBeforeDamage, KeyframeResult, damage_note

DETECTOR_BACKENDS = ("torchvision", "detectron2", "precomputed")
PRECISIONS = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
"""Action-model precisions: name -> torch dtype (fp16 / bf16 run under autocast)."""


@dataclass
class StageTimings:
    """Seconds spent per stage and what was processed; ``decode`` runs in a background thread, overlapped."""

    decode: float = 0.0
    detect: float = 0.0
    preprocess: float = 0.0
    action_model: float = 0.0
    tracking: float = 0.0  # person tracks and score smoothing (tracks=True)
    total: float = 0.0  # wall time of the streams, from opening the video to the last keyframe
    videos: int = 0
    keyframes: int = 0
    persons: int = 0
    model_batches: int = 0

    def add(self, other: "StageTimings") -> None:
        for name, value in asdict(other).items():
            setattr(self, name, getattr(self, name) + value)

    @property
    def seconds_per_keyframe(self) -> float:
        return self.total / self.keyframes if self.keyframes else 0.0

    def as_dict(self) -> dict:
        return {**asdict(self), "seconds_per_keyframe": self.seconds_per_keyframe}


class _StopDecoding(Exception):
    """Raised inside the decoding thread when the consumer went away."""


class _Prefetcher:
    """Iterates ``make_items()`` in a background thread through a queue of at most ``depth`` items.

    Exceptions of the producer (e.g. :class:`VideoDecodeError` on a corrupt tail) are re-raised in the
    consumer after the items produced before them. :meth:`close` stops the thread and waits for it.
    """

    _END = object()

    def __init__(self, make_items: Callable[[], Iterable], depth: int):
        self._make_items = make_items
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, name="ava-clip-decoder", daemon=True)

    def _put(self, item) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue
        raise _StopDecoding

    def _produce(self) -> None:
        try:
            for item in self._make_items():
                self._put(item)
            self._put(self._END)
        except _StopDecoding:
            return
        except BaseException as exc:  # handed to the consumer, which re-raises it
            try:
                self._put(exc)
            except _StopDecoding:
                return

    def __iter__(self):
        self._thread.start()
        while True:
            item = self._queue.get()
            if item is self._END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        self._stop.set()
        while self._thread.is_alive():
            try:
                self._queue.get_nowait()
            except queue.Empty:
                self._thread.join(timeout=0.05)


@dataclass
class _PreparedClip:
    """A keyframe after the background thread's work (the clip's frames are not kept).

    ``keyframe_image`` uint8 (H, W, 3) RGB; ``persons``: the precomputed detector's boxes (looked up in the
    background), or None when the image detector runs later on the keyframe image. ``inputs``: ``[slow,
    fast]`` float32 model inputs with batch dim 1 (``[fast]`` for Slow-only), None when the keyframe is known
    to have no person.
    """

    keyframe_s: Any
    keyframe_pts: Optional[int]
    keyframe_pts_time: Any
    keyframe_image: np.ndarray
    persons: Any
    inputs: Optional[list]


@dataclass
class _Pending:
    """A keyframe waiting for its batch: result fields, and the model inputs when it has persons."""

    result: KeyframeResult
    inputs: Optional[list] = None  # [slow, fast] float32 tensors with batch dim 1 ([fast] for Slow-only)
    boxes_px: Any = None  # float32 (K, 4) x1, y1, x2, y2 in input pixels


class ActionDetector:
    """Spatiotemporal action detection for videos: person boxes at keyframes and AVA's 80 action scores.

    Built from a zoo name (``model``) or a config (``config``: packaged name, our YAML or PySlowFast's AVA
    YAML) plus optional local ``weights`` (any supported checkpoint format), and a person detector
    (``torchvision``, ``detectron2`` or ``precomputed`` boxes from an AVA-format CSV given as ``boxes``, which
    implies ``precomputed``). ``box_thresh`` drops person boxes scored below it (default: the model config's
    threshold). ``detector_options`` are passed to :func:`ava_pipeline.detector.build_detector` (e.g.
    ``model``, ``min_box_size``). ``keyframes`` is the default schedule of :meth:`stream`. Up to
    ``batch_size`` keyframes with persons go through the action model together; ``prefetch`` clips are
    decoded ahead. The action model runs through :func:`ava_pipeline.models.inference.optimize_for_inference`
    (BatchNorm folded, fused oneDNN convolutions on CPU; equal to the eager model within float32 rounding)
    unless ``fast=False``; ``precision`` ``"fp16"`` / ``"bf16"`` runs it under autocast (for GPUs: bf16 is
    very slow on CPUs without native support). ``tracks=True`` (or a dict of
    :class:`~ava_pipeline.tracking.TrackingSettings` options, e.g. ``{"smooth_scores": 3, "max_missed": 2}``)
    gives every box a ``person_id`` stable across the video's keyframes (:mod:`ava_pipeline.tracking`).

    Every argument is a plain picklable value; :attr:`settings` returns them, and ``ActionDetector(**settings)``
    (what pickling does) rebuilds an equal detector, e.g. in a worker process.

    >>> detector = ActionDetector("SLOWFAST_32x2_R101_50_50", detector="torchvision")  # doctest: +SKIP
    >>> frame = detector("movie.mp4", keyframes="902:905")  # doctest: +SKIP
    """

    def __init__(self, model: Optional[str] = None, *, config: Optional[str] = None, weights: Optional[str] = None,
                 detector: Optional[str] = None, boxes: Optional[str] = None, box_thresh: Optional[float] = None,
                 detector_options: Optional[dict] = None, keyframes=None, device: str = "cpu",
                 batch_size: int = 8, prefetch: int = 2, fast: bool = True, precision: str = "fp32",
                 tracks=False):
        from .tracking import TrackingSettings

        self._settings = dict(model=model, config=config, weights=weights, detector=detector, boxes=boxes,
                              box_thresh=box_thresh, detector_options=dict(detector_options or {}),
                              keyframes=keyframes, device=device, batch_size=batch_size, prefetch=prefetch,
                              fast=fast, precision=precision, tracks=tracks)
        self.tracking = TrackingSettings.from_value(tracks)
        """Tracking settings (:class:`~ava_pipeline.tracking.TrackingSettings`), or None without tracks."""
        if model is not None and config is not None:
            raise ConfigError(f"give a zoo model name or a config, not both (model={model!r}, config={config!r})")
        if boxes is not None and detector not in (None, "precomputed"):
            raise ConfigError(f"boxes={str(boxes)!r} are precomputed person boxes, but detector={detector!r}; "
                              "drop one of them")
        backend = "precomputed" if boxes is not None else (detector or "torchvision")
        if backend not in DETECTOR_BACKENDS:
            raise ConfigError(f"unknown detector {backend!r}; use one of {list(DETECTOR_BACKENDS)}")
        if backend == "precomputed" and boxes is None:
            raise ConfigError("the precomputed detector needs a box CSV (boxes=... / --boxes)")
        if precision not in PRECISIONS:
            raise ConfigError(f"unknown precision {precision!r}; use one of {list(PRECISIONS)}")
        if precision != "fp32" and not fast:
            raise ConfigError(f"precision={precision!r} runs through the fast inference path; drop fast=False")
        if batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
        if box_thresh is not None and not 0.0 <= box_thresh <= 1.0:
            raise ConfigError(f"box_thresh must be in [0, 1], got {box_thresh}")
        if keyframes is not None:
            _keyframe_list(keyframes)

        import torch

        from .api import load_action_model
        from .detector import build_detector
        from .models.inference import optimize_for_inference
        from .weights import DEFAULT_MODEL

        self.model_source = str(config if config is not None else (model or DEFAULT_MODEL))
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.prefetch = prefetch
        self.keyframes = keyframes
        self.model = load_action_model(self.model_source, weights=weights, device=self.device)
        self.config = self.model.config
        dtype = getattr(torch, PRECISIONS[precision])
        self.runtime_model = (optimize_for_inference(self.model, device=self.device, dtype=dtype) if fast
                              else self.model)
        """What :meth:`stream` runs: the fast inference copy of :attr:`model`, or :attr:`model` itself."""
        self.box_thresh = self.config.box_thresh if box_thresh is None else float(box_thresh)
        self.detector_backend = backend
        self.detector = build_detector(backend, boxes_csv=boxes, score_thresh=self.box_thresh, device=str(self.device),
                                       **self._settings["detector_options"])
        self.timings = StageTimings()
        """Cumulative over every stream of this detector."""

    # ------------------------------------------------------------------------------------------ identity

    @property
    def settings(self) -> dict:
        """The constructor's keyword arguments (plain values): ``ActionDetector(**settings)`` rebuilds it."""
        return {**self._settings, "detector_options": dict(self._settings["detector_options"])}

    def __reduce__(self):
        return (_rebuild, (self.settings,))

    def fingerprint(self) -> dict:
        """What determines the outputs: model name, config and weights hashes, detector, decoder, data settings.

        Paths, device and batch size are left out on purpose: moving files or changing the device does not
        change the detections (beyond float noise).
        """
        from . import __version__
        from .checksums import text_sha256
        from .config import dump_config
        from .video import decoder_version

        data = self.config.data
        return {
            "ava_pipeline": __version__,
            "model": self.config.name,
            "config_sha256": text_sha256(dump_config(replace(self.config, weights=None))),
            "weights_sha256": getattr(self.model, "weights_sha256", None),
            "detector": self.detector.fingerprint(),
            "decoder": decoder_version(),
            "settings": {"keyframes": _plain(self.keyframes), "box_thresh": self.box_thresh,
                         "precision": self._settings["precision"],
                         "num_frames": self.config.model.num_frames,
                         "sampling_rate": self.config.model.sampling_rate, "alpha": self.config.model.alpha,
                         "fps": data.fps, "test_crop_size": data.test_crop_size, "mean": list(data.mean),
                         "std": list(data.std), "bgr": data.bgr,
                         **({"tracks": self.tracking.as_dict()} if self.tracking is not None else {})},
        }

    # --------------------------------------------------------------------------------------------- running

    def __call__(self, path: str | Path, keyframes=None, *, min_score: Optional[float] = None):
        """Detections of one video as a pandas DataFrame with columns
        ``video_id, timestamp, x1, y1, x2, y2, action_id, score`` (one row per person box and action,
        all 80 actions unless ``min_score`` prunes; boxes normalized as in the CSV)."""
        from .writers import detections_dataframe

        return detections_dataframe(self.stream(path, keyframes), min_score=min_score)

    def keyframes_of(self, path: str | Path, keyframes=None) -> list:
        """The keyframe times (seconds) :meth:`stream` will visit in ``path`` (for the default schedule,
        as far as the header's duration tells)."""
        from .video import VideoReader, keyframe_schedule

        with VideoReader(path, fps=self.config.data.fps) as reader:
            times = self._schedule(Path(path), keyframes)
            return times if times is not None else keyframe_schedule(None, reader.metadata.duration_s)

    def _schedule(self, path: Path, keyframes) -> Optional[list]:
        """Keyframe times for ``path``, or None for every whole second of the video (resolved while decoding)."""
        keyframes = self.keyframes if keyframes is None else keyframes
        if keyframes is not None:
            return _keyframe_list(keyframes)
        if self.detector_backend == "precomputed":
            times = list(self.detector.timestamps_for(path.stem))
            if not times:
                raise InputFormatError(f"{self._settings['boxes']}: no person boxes for video id {path.stem!r} "
                                       f"(the file stem of {path}); the box file's first column must name the "
                                       "video by its file stem, or pass keyframes")
            return times
        return None

    def stream(self, path: str | Path, keyframes=None, *, timings: Optional[StageTimings] = None
               ) -> Iterator[KeyframeResult]:
        """Yield a :class:`KeyframeResult` per scheduled keyframe of ``path``, in time order.

        ``keyframes``: a ``START:END[:STEP]`` spec (seconds) or a list of times; default: the detector's
        ``keyframes`` setting, else the box file's keyframes for precomputed boxes, else the reader's default
        schedule. Stage timings of this stream are added to ``timings`` when given and always to
        :attr:`timings`. Raises
        :class:`~ava_pipeline.errors.VideoDecodeError` on a corrupt video, after yielding the keyframes
        decoded before the damage.
        """
        from .video import VideoReader, iter_clips, keyframe_schedule

        path = Path(path)
        local = StageTimings(videos=1)
        started = time.perf_counter()
        try:
            with VideoReader(path, fps=self.config.data.fps) as reader:
                schedule = self._schedule(path, keyframes)
                expected = len(schedule if schedule is not None
                               else keyframe_schedule(None, reader.metadata.duration_s))
                model_cfg = self.config.model
                clips = iter_clips(reader, schedule, num_frames=model_cfg.num_frames,
                                   sampling_rate=model_cfg.sampling_rate, fps=self.config.data.fps)
                prepared = _Prefetcher(lambda: self._prepare_clips(clips, path.stem, local), depth=self.prefetch)
                try:
                    results = self._detect_actions(prepared, path.stem, expected, local)
                    if self.tracking is not None:
                        from .tracking import track_results

                        results = track_results(results, self.tracking, timings=local)
                    yield from results
                finally:
                    prepared.close()
        finally:
            local.total = time.perf_counter() - started
            self.timings.add(local)
            if timings is not None:
                timings.add(local)

    def _prepare_clips(self, clips: Iterable, video_id: str, timings: StageTimings) -> Iterator[_PreparedClip]:
        """Background-thread work per keyframe: decode, look up precomputed boxes, preprocess the frames.

        Frames are preprocessed without boxes (the transform of the pixels does not depend on them);
        boxes are mapped to input pixels later, once the detector has run. A keyframe whose precomputed
        boxes are empty is not preprocessed.
        """
        from .preprocess import FrameReuse, preprocess_clip

        data, model_cfg = self.config.data, self.config.model
        clips, reuse = iter(clips), FrameReuse()
        while True:
            start = time.perf_counter()
            try:
                clip = next(clips)
            except StopIteration:
                return
            finally:
                timings.decode += time.perf_counter() - start
            persons = None
            if self.detector_backend == "precomputed":
                start = time.perf_counter()
                persons = self.detector.detect([clip.keyframe_image], video_id=video_id,
                                               timestamps=[clip.keyframe_s])[0]
                timings.detect += time.perf_counter() - start
            inputs = None
            if persons is None or len(persons.boxes):
                start = time.perf_counter()
                inputs, _ = preprocess_clip(clip.frame_list, np.zeros((0, 4), np.float32),
                                            test_size=data.test_crop_size, mean=data.mean, std=data.std,
                                            alpha=model_cfg.alpha if model_cfg.arch == "slowfast" else None,
                                            bgr=data.bgr, frame_ids=clip.frame_indices, reuse=reuse)
                timings.preprocess += time.perf_counter() - start
            yield _PreparedClip(clip.keyframe_s, clip.keyframe_pts, clip.keyframe_pts_time, clip.keyframe_image,
                                persons, inputs)
            del clip

    def _detect_actions(self, prepared_clips: Iterable[_PreparedClip], video_id: str, expected: int,
                        timings: StageTimings) -> Iterator[KeyframeResult]:
        """Detect persons where still needed, batch keyframes with persons, yield results in time order."""
        from .preprocess import boxes_to_input_pixels

        test_size = self.config.data.test_crop_size
        pending: list[_Pending] = []
        waiting_persons = 0
        prepared_clips = iter(prepared_clips)
        for index in itertools.count():
            try:
                prepared = next(prepared_clips)
            except StopIteration:
                break
            except Exception:  # a damaged video: finish the keyframes decoded before the damage, then fail
                yield from self._flush(pending, timings)
                raise
            persons = prepared.persons
            if persons is None:
                start = time.perf_counter()
                persons = self.detector.detect([prepared.keyframe_image], video_id=video_id,
                                               timestamps=[prepared.keyframe_s])[0]
                timings.detect += time.perf_counter() - start
            boxes = np.asarray(persons.boxes, dtype=np.float32).reshape(-1, 4)
            height, width = prepared.keyframe_image.shape[:2]
            item = _Pending(KeyframeResult(
                video_id=video_id, timestamp=prepared.keyframe_s, index=index,
                num_keyframes=max(expected, index + 1), pts=prepared.keyframe_pts,
                pts_time=float(prepared.keyframe_pts_time), image_size=(width, height),
                boxes=boxes, box_strings=_box_strings(persons),
                box_scores=np.asarray(persons.scores, dtype=np.float32).reshape(-1),
                probs=np.zeros((0, self.config.model.num_classes), dtype=np.float32),
                keyframe_image=prepared.keyframe_image))
            if len(boxes):
                item.inputs = prepared.inputs
                item.boxes_px = boxes_to_input_pixels(boxes, width, height, test_size)
                waiting_persons += 1
            pending.append(item)
            timings.keyframes += 1
            timings.persons += len(boxes)
            del prepared
            if waiting_persons >= self.batch_size:
                yield from self._flush(pending, timings)
                pending, waiting_persons = [], 0
        yield from self._flush(pending, timings)

    def _flush(self, pending: list[_Pending], timings: StageTimings) -> Iterator[KeyframeResult]:
        """Run the action model once on every pending keyframe with persons, then yield all in order."""
        import torch

        batch = [item for item in pending if item.inputs is not None]
        if batch:
            start = time.perf_counter()
            pathways = [torch.cat([item.inputs[p] for item in batch]).to(self.device)
                        for p in range(len(batch[0].inputs))]
            boxes = torch.cat([
                torch.cat([torch.full((len(item.boxes_px), 1), float(i)), torch.as_tensor(item.boxes_px).float()], 1)
                for i, item in enumerate(batch)]).to(self.device)
            features = None
            with torch.inference_mode():
                if self.tracking is None:
                    probs = self.runtime_model(pathways, boxes).float().cpu().numpy()
                else:  # the tracker's appearance: the head's pooled RoI features
                    probs, features = (x.float().cpu().numpy()
                                       for x in self.runtime_model(pathways, boxes, with_features=True))
            timings.action_model += time.perf_counter() - start
            timings.model_batches += 1
            offset = 0
            for item in batch:
                count = len(item.boxes_px)
                item.result.probs = probs[offset:offset + count]
                if features is not None:
                    item.result.features = features[offset:offset + count]
                offset += count
                item.inputs = item.boxes_px = None
        for item in pending:
            yield item.result


def _keyframe_list(keyframes) -> list:
    """The times of a ``START:END[:STEP]`` spec or a sequence of seconds; ConfigError when it is neither."""
    from .video import keyframe_schedule

    try:
        return list(keyframe_schedule(keyframes, 0.0))
    except (TypeError, ValueError) as exc:
        if str(exc).startswith("keyframes"):  # keyframe_schedule's own message about the spec
            raise ConfigError(str(exc)) from None
        raise ConfigError(f"keyframes={keyframes!r}: {exc}; use a START:END[:STEP] spec in seconds or a list of "
                          "seconds") from None


def _box_strings(persons) -> Optional[list[tuple[str, str, str, str]]]:
    """The box file's original coordinate text per box, when the detector read boxes from a file."""
    strings = getattr(persons, "original", None)
    if strings is None:
        return None
    return [tuple(str(v) for v in row) for row in strings]


def _plain(keyframes):
    """A keyframe spec as JSON-friendly data (a string, or a list of seconds as strings)."""
    if keyframes is None or isinstance(keyframes, str):
        return keyframes
    return [str(t) for t in keyframes]


def _rebuild(settings: dict) -> ActionDetector:
    return ActionDetector(**settings)


__all__ = ["ActionDetector", "KeptBeforeDamage", "KeyframeResult", "StageTimings", "damage_note"]

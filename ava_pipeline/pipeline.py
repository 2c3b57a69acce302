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
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Optional

import numpy as np

from .errors import ConfigError, InputFormatError
from .results import KeptBeforeDamage, KeyframeResult, damage_note

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from .detector import PersonDetector

PRECISIONS = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
"""Action-model precisions: name -> torch dtype (fp16 / bf16 run under autocast)."""
RUNTIMES = ("torch", "onnx")
"""What runs the action model: torch (the fast path), or onnxruntime on a file written by ava-export."""


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

    The action model is a zoo name (``model``), a config (``config``: packaged name, our YAML or PySlowFast's AVA
    YAML) plus optional local ``weights`` (any supported checkpoint format), or an already loaded model
    (``model=load_action_model(...)``, or its fast copy). The person detector is a backend name (``torchvision``,
    ``detectron2``, ``precomputed`` boxes from an AVA-format CSV given as ``boxes``, which implies
    ``precomputed``) or any object with the :class:`~ava_pipeline.detector.PersonDetector` ``detect`` method.
    ``box_thresh`` drops person boxes scored below it (default: the model config's threshold; named detectors
    only). ``detector_options`` are passed to :func:`ava_pipeline.detector.build_detector` (e.g. ``model``,
    ``min_box_size``). ``keyframes`` is the default schedule of :meth:`stream`. Up to ``batch_size`` keyframes
    with persons go through the action model together; ``prefetch`` clips are decoded ahead. The action model
    runs through :func:`ava_pipeline.models.inference.optimize_for_inference` (BatchNorm folded, fused oneDNN
    convolutions on CPU; equal to the eager model within float32 rounding) unless ``fast=False``; only that
    copy is kept. ``precision`` ``"fp16"`` / ``"bf16"`` runs it under autocast (for GPUs: bf16 is very slow on
    CPUs without native support). ``persons_only=True`` runs the person detector alone (no action model is
    loaded; only the keyframes are decoded): results carry boxes and box scores with no action columns.
    ``runtime="onnx"`` runs the action model through onnxruntime on the file ``onnx`` written by ``ava-export``
    instead (config and weights come from the file; a given ``model`` / ``config`` / ``weights`` must be the
    ones it was exported from).
    ``tracks=True`` (or a dict of :class:`~ava_pipeline.tracking.TrackingSettings` options, e.g.
    ``{"smooth_scores": 3, "max_missed": 2}``) gives every box a ``person_id`` stable across the video's
    keyframes (:mod:`ava_pipeline.tracking`).

    :attr:`settings` returns the constructor's arguments and :meth:`from_settings` rebuilds an equal detector
    from them (what pickling does, e.g. for a worker process): names and paths travel as they are, objects as
    pickles.

    >>> detector = ActionDetector("SLOWFAST_32x2_R101_50_50", detector="torchvision")  # doctest: +SKIP
    >>> frame = detector("movie.mp4", keyframes="902:905")  # doctest: +SKIP
    """

    def __init__(self, model: "str | torch.nn.Module | None" = None, *, config: Optional[str | Path] = None,
                 weights: Optional[str | Path] = None, detector: "str | PersonDetector | None" = None,
                 boxes: Optional[str | Path] = None, box_thresh: Optional[float] = None,
                 detector_options: Optional[dict] = None, keyframes: Any = None, device: str = "cpu",
                 batch_size: int = 8, prefetch: int = 2, fast: bool = True, precision: str = "fp32",
                 persons_only: bool = False, runtime: str = "torch", onnx: Optional[str | Path] = None,
                 tracks: Any = False):
        from .tracking import TrackingSettings

        self._settings = dict(model=model, config=config, weights=weights, detector=detector, boxes=boxes,
                              box_thresh=box_thresh, detector_options=dict(detector_options or {}),
                              keyframes=keyframes, device=device, batch_size=batch_size, prefetch=prefetch,
                              fast=fast, precision=precision, persons_only=persons_only,
                              runtime=runtime, onnx=onnx, tracks=tracks)
        self.tracking = TrackingSettings.from_value(tracks)
        """Tracking settings (:class:`~ava_pipeline.tracking.TrackingSettings`), or None without tracks."""
        if self.tracking is not None and (runtime == "onnx" or persons_only):
            raise ConfigError("tracks use the action model's RoI features, which "
                              + ("the onnx runtime does not return; use runtime='torch'" if runtime == "onnx"
                                 else "persons_only does not compute; drop one of them"))
        if precision not in PRECISIONS:
            raise ConfigError(f"unknown precision {precision!r}; use one of {list(PRECISIONS)}")
        if precision != "fp32" and not fast:
            raise ConfigError(f"precision={precision!r} runs through the fast inference path; drop fast=False")
        if runtime not in RUNTIMES:
            raise ConfigError(f"unknown runtime {runtime!r}; use one of {list(RUNTIMES)}")
        if (runtime == "onnx") != (onnx is not None):
            raise ConfigError("runtime='onnx' needs the exported file (onnx=PATH / --onnx FILE)" if onnx is None
                              else f"onnx={str(onnx)!r} is only used with runtime='onnx' (--runtime onnx)")
        if runtime == "onnx" and precision != "fp32":
            raise ConfigError(f"precision={precision!r} is a torch setting; the onnx runtime runs the file's float32")
        if batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
        if box_thresh is not None and not 0.0 <= box_thresh <= 1.0:
            raise ConfigError(f"box_thresh must be in [0, 1], got {box_thresh}")
        if keyframes is not None:
            _keyframe_list(keyframes)
        if persons_only and (weights is not None or boxes is not None):
            raise ConfigError(f"persons_only runs the person detector alone; drop {'weights' if weights else 'boxes'}="
                              f"{str(weights or boxes)!r} (precomputed boxes are proposals already)")

        import torch

        self.device = torch.device(device)
        self.batch_size = batch_size
        self.prefetch = prefetch
        self.keyframes = keyframes
        self.model_source, self.config, load = self._action_model_source(model, config, weights, runtime, onnx)
        from .config import model_actions

        self.action_ids, self.action_names = model_actions(self.config)
        """Action id and name of each output column of the model (its config's label map)."""
        self.box_thresh = self.config.box_thresh if box_thresh is None else float(box_thresh)
        self.detector = self._person_detector(detector, boxes, box_thresh, self._settings["detector_options"])
        self.detector_backend = getattr(self.detector, "backend", type(self.detector).__name__)
        self.persons_only = persons_only
        self.model = None if persons_only else load(fast, getattr(torch, PRECISIONS[precision]))
        """The action model :meth:`stream` runs: the fast inference copy (``fast=True``) or the eager model
        (None with ``persons_only``)."""
        _return_freed_memory()
        self.timings = StageTimings()
        """Cumulative over every stream of this detector."""

    def _action_model_source(self, model, config, weights, runtime: str, onnx) -> tuple[str, Any, Callable]:
        """(name for messages, ActionModelConfig, ``load(fast, dtype) -> model``) without loading weights yet,
        so that a bad detector argument fails before the model is read."""
        if runtime == "onnx":  # the file carries config and weights; a given config / weights must be its own
            from .models.onnx_runtime import open_onnx_action_model

            session = open_onnx_action_model(onnx, model=model, config=config, weights=weights, device=self.device)
            return str(config if config is not None else (model or onnx)), session.config, lambda fast, dtype: session
        from torch import nn

        from .config import ActionModelConfig
        from .models.inference import InferenceModel, optimize_for_inference
        from .weights import DEFAULT_MODEL, model_config

        if isinstance(model, nn.Module):
            if config is not None or weights is not None:
                raise ConfigError(f"model is an already loaded {type(model).__name__}; drop config={config!r} and "
                                  f"weights={weights!r}")
            cfg = getattr(model, "config", None)
            if not isinstance(cfg, ActionModelConfig):
                raise ConfigError(f"model is a {type(model).__name__} without an ActionModelConfig in .config; "
                                  "pass a model from ava_pipeline.load_action_model (or its fast copy)")

            def load_given(fast: bool, dtype):
                if isinstance(model, InferenceModel) or not fast:
                    return model.to(self.device).eval()
                return optimize_for_inference(model, device=self.device, dtype=dtype)
            return f"{cfg.name} (a loaded model)", cfg, load_given
        if model is not None and config is not None:
            raise ConfigError(f"give a zoo model name or a config, not both (model={model!r}, config={config!r})")
        source = str(config if config is not None else (model or DEFAULT_MODEL))
        cfg = model_config(source)

        def load_named(fast: bool, dtype):
            from .api import load_action_model

            eager = load_action_model(source, weights=weights, device=self.device)
            if not fast:
                return eager
            return optimize_for_inference(eager, device=self.device, dtype=dtype, copy=False)
        return source, cfg, load_named

    def _person_detector(self, detector, boxes, box_thresh, options: dict):
        """The detector object: ``detector`` itself, or built by name (the builder checks the arguments)."""
        from .detector import build_detector

        if detector is not None and not isinstance(detector, str):
            given = {name: value for name, value in (("boxes", boxes), ("box_thresh", box_thresh),
                                                     ("detector_options", options or None)) if value is not None}
            if given:
                raise ConfigError(f"detector is a {type(detector).__name__} object; {sorted(given)} only apply to "
                                  "detectors built by name: set them on the object instead")
            if not callable(getattr(detector, "detect", None)):
                raise ConfigError(f"detector={detector!r} has no detect(images, video_id=, timestamps=) method; "
                                  "pass a backend name or a PersonDetector")
            if callable(getattr(detector, "to", None)):
                detector.to(self.device)
            return detector
        backend = detector or ("precomputed" if boxes is not None else "torchvision")
        return build_detector(backend, boxes_csv=boxes, score_thresh=self.box_thresh, device=str(self.device),
                              **options)

    @property
    def _detector_needs_pixels(self) -> bool:
        return bool(getattr(self.detector, "needs_pixels", True))

    @property
    def runtime_model(self):
        """The model :meth:`stream` runs (:attr:`model`; the name of earlier versions)."""
        return self.model

    @classmethod
    def from_settings(cls, settings: dict) -> "ActionDetector":
        """An ActionDetector equal to the one whose :attr:`settings` these are."""
        return cls(**settings)

    # ------------------------------------------------------------------------------------------ identity

    @property
    def settings(self) -> dict:
        """The constructor's keyword arguments: :meth:`from_settings` rebuilds the detector from them."""
        return {**self._settings, "detector_options": dict(self._settings["detector_options"])}

    def __reduce__(self):
        return (ActionDetector.from_settings, (self.settings,))

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
            "detector": _detector_fingerprint(self.detector),
            "decoder": decoder_version(),
            "settings": {"keyframes": _plain(self.keyframes), "box_thresh": self.box_thresh,
                         "persons_only": self.persons_only,
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
        if not self._detector_needs_pixels and callable(getattr(self.detector, "timestamps_for", None)):
            times = list(self.detector.timestamps_for(path.stem))
            if not times:
                source = getattr(self.detector, "source", None) or _detector_description(self.detector)
                raise InputFormatError(f"{source}: no person boxes for video id {path.stem!r} "
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
                # persons only: the keyframe and the frame before it, the smallest clip iter_clips cuts
                num_frames, sampling_rate = (2, 1) if self.persons_only else (model_cfg.num_frames,
                                                                             model_cfg.sampling_rate)
                clips = iter_clips(reader, schedule, num_frames=num_frames, sampling_rate=sampling_rate,
                                   fps=self.config.data.fps)
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
            if not self._detector_needs_pixels:
                start = time.perf_counter()
                persons = self.detector.detect([clip.keyframe_image], video_id=video_id,
                                               timestamps=[clip.keyframe_s])[0]
                timings.detect += time.perf_counter() - start
            inputs = None
            if not self.persons_only and (persons is None or len(persons.boxes)):
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
                probs=np.zeros((len(boxes) if self.persons_only else 0,
                                0 if self.persons_only else self.config.model.num_classes), dtype=np.float32),
                keyframe_image=prepared.keyframe_image, action_ids=self.action_ids,
                action_names=self.action_names))
            if len(boxes) and not self.persons_only:
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

        from .preprocess import batch_boxes

        batch = [item for item in pending if item.inputs is not None]
        if batch:
            start = time.perf_counter()
            pathways = [torch.cat([item.inputs[p] for item in batch]).to(self.device)
                        for p in range(len(batch[0].inputs))]
            boxes = batch_boxes([item.boxes_px for item in batch]).to(self.device)
            features = None
            with torch.inference_mode():
                if self.tracking is None:
                    probs = self.model(pathways, boxes).float().cpu().numpy()
                else:  # the tracker's appearance: the head's pooled RoI features
                    probs, features = (x.float().cpu().numpy()
                                       for x in self.model(pathways, boxes, with_features=True))
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


def _return_freed_memory() -> None:
    """Give the checkpoint's and the eager model's freed heap back to the system (glibc keeps it otherwise: a
    worker holding R101 stayed ~140 MB larger). A no-op where the C library is not glibc."""
    import ctypes
    import ctypes.util
    import gc

    gc.collect()
    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _detector_description(detector) -> str:
    """The detector's one-line description (its class name for objects without one)."""
    return str(getattr(detector, "description", None) or type(detector).__name__)


def _detector_fingerprint(detector) -> dict:
    """The detector's fingerprint record; for objects without one, their class (which cannot tell settings apart)."""
    if callable(getattr(detector, "fingerprint", None)):
        return detector.fingerprint()
    return {"backend": "custom", "class": f"{type(detector).__module__}.{type(detector).__qualname__}"}


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


__all__ = ["ActionDetector", "KeptBeforeDamage", "KeyframeResult", "StageTimings", "damage_note"]

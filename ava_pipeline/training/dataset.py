"""The training dataset: samples -> stored clip frames -> transform -> model inputs, and the batch collation.

:class:`AvaClipDataset` serves one keyframe per index: its clip from the :class:`~.frames.FrameStore`
(filled by :meth:`AvaClipDataset.prepare`, one decoding pass per video), transformed by PySlowFast's AVA
train transform with draws that are a pure function of ``(seed, epoch, index)`` (so results do not depend
on DataLoader workers or on resuming), or, with ``augment=False``, by the inference transform.
:func:`collate` stacks items into a :class:`TrainingBatch` (PySlowFast's ``detection_collate``).
"""
from __future__ import annotations

import logging
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from fractions import Fraction
from typing import Callable, Mapping, Optional, Sequence

import torch
from torch.utils.data import default_collate

from ..errors import VideoDecodeError
from ..preprocess import batch_boxes, slow_indices
from .frames import FrameStore
from .samples import SampleSet, TrainingSample, seconds_text
from .transforms import (PCA_EIGVAL, PCA_EIGVEC, augmentation_rng, draw_train_augmentation, inference_transform,
                         train_pixels, train_transform)

logger = logging.getLogger(__name__)


@dataclass
class PrepareReport:
    """What :meth:`AvaClipDataset.prepare` did: videos ``decoded`` and ``reused`` from the store, the store's
    ``disk_bytes`` for these videos, samples ``dropped`` as ``(video_id, time, reason)``, and
    ``failed_videos`` ``{video_id: message}`` (videos that could not be decoded at all)."""

    samples: int = 0
    served: int = 0
    decoded: int = 0
    reused: int = 0
    disk_bytes: int = 0
    dropped: list = field(default_factory=list)
    failed_videos: dict = field(default_factory=dict)

    def summary(self) -> str:
        """One line for the log."""
        text = (f"frames of {self.decoded + self.reused} videos ready ({self.decoded} decoded, {self.reused} "
                f"reused; {self.disk_bytes / 2 ** 30:.2f} GiB on disk); {self.served} of {self.samples} keyframes")
        if self.dropped:
            videos = sorted({video_id for video_id, _, _ in self.dropped})
            text += (f"; {len(self.dropped)} keyframes dropped for data errors in {len(videos)} videos "
                     f"({', '.join(videos[:5])}{', ...' if len(videos) > 5 else ''})")
        return text

    def as_dict(self) -> dict:
        """JSON-friendly record (times as strings like ``"2.5"``) for ``metrics.jsonl``."""
        return {"samples": self.samples, "served": self.served, "decoded_videos": self.decoded,
                "reused_videos": self.reused, "disk_bytes": self.disk_bytes,
                "dropped": [{"video_id": v, "time": seconds_text(t), "reason": r} for v, t, r in self.dropped],
                "failed_videos": dict(self.failed_videos)}


class AvaClipDataset(torch.utils.data.Dataset):
    """Keyframe clips for training, one item per sample (see the module docstring).

    Args:
        samples: a :class:`~.samples.SampleSet` or a sequence of :class:`~.samples.TrainingSample`.
        videos: ``{video_id: path}`` (:func:`~.samples.find_videos`).
        num_frames, sampling_rate, alpha: the clip (``T``, ``tau``) and SlowFast's ratio (None: Slow-only).
        fps: the frame grid (``DATA`` fps of the config; keyframe ``t`` -> grid frame ``round(t * fps)``).
        mean, std, bgr: normalisation per output channel ([0, 1] scale), channel order.
        test_crop_size: short side without augmentation (``DATA.TEST_CROP_SIZE``).
        train_jitter_scales, train_crop_size, random_flip: ``DATA.TRAIN_JITTER_SCALES`` / ``TRAIN_CROP_SIZE`` /
            ``RANDOM_FLIP``.
        colour_jitter, pca_jitter_only, pca_eigval, pca_eigvec: ``AVA.TRAIN_USE_COLOR_AUGMENTATION``,
            ``AVA.TRAIN_PCA_JITTER_ONLY``, ``DATA.TRAIN_PCA_EIGVAL`` / ``EIGVEC``.
        augment: False = the inference transform (short side to ``test_crop_size``, no crop, no flip).
        seed: >= 0; augmentation draws of item ``i`` in epoch ``e`` come from ``(seed, e, i)``.
        cache_dir: folder of the frame store. Frames are stored downscaled to the largest jitter scale (with
            ``augment``) or to ``test_crop_size`` (without: the inference transform's own resized frames, so the
            items stay bit-exact), never upscaled. The augmented items are then PySlowFast's transform with the
            pixels resized from the stored copy (boxes, sizes, crops and arithmetic exact); with
            ``full_resolution_frames`` the store keeps the decoded frames and they are PySlowFast's transform of
            them, bit for bit, at several times the disk and read cost.
        uint8_batches: batches (:meth:`__getitems__`, what the DataLoader asks for) carry augmented clips as uint8
            frames, normalised by :meth:`TrainingBatch.model_inputs` where the model runs: for GPU training, a fifth
            of the bytes of both float pathways through shared memory, pinning and the bus, and a third of the
            workers' CPU time.
            Default: float pathways made in the workers (for CPU training, whose own cores run the model).
            Clips with colour jitter are always float.

    Items (``dataset[i]``, or ``dataset[(epoch, i)]`` to name the epoch explicitly): ``"inputs"`` list of
    float32 ``(3, T_p, H, W)`` (Slow, Fast; Fast alone for Slow-only), ``"boxes"`` float32 (K, 4) ``x1, y1,
    x2, y2`` input pixels, ``"labels"`` float32 (K, C), ``"ori_boxes"`` float64 (K, 4) normalised as read,
    ``"video_id"``, ``"time"`` (Fraction seconds), ``"index"``.
    """

    def __init__(self, samples, videos: Mapping, *, num_frames: int, sampling_rate: int, alpha: Optional[int],
                 fps, mean: Sequence[float], std: Sequence[float], bgr: bool = False, test_crop_size: int,
                 train_jitter_scales: Sequence[int] = (256, 320), train_crop_size: int = 224,
                 random_flip: bool = True, colour_jitter: bool = False, pca_jitter_only: bool = True,
                 pca_eigval: Sequence[float] = PCA_EIGVAL, pca_eigvec=PCA_EIGVEC, augment: bool = True,
                 seed: int = 0, cache_dir, full_resolution_frames: bool = False, uint8_batches: bool = False):
        self._all = list(samples.samples if isinstance(samples, SampleSet) else samples)
        missing = sorted({s.video_id for s in self._all} - set(videos))
        if missing:
            raise ValueError(f"no video path for video ids {missing[:5]}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        if augment and min(train_jitter_scales) < train_crop_size:
            raise ValueError(f"TRAIN_JITTER_SCALES {list(train_jitter_scales)} go below TRAIN_CROP_SIZE "
                             f"{train_crop_size}; the crop must fit the jittered frames")
        if augment and train_jitter_scales[0] > train_jitter_scales[1]:
            raise ValueError(f"TRAIN_JITTER_SCALES {list(train_jitter_scales)}: expected [min, max]")
        self.videos = dict(videos)
        self.clip_settings = dict(num_frames=num_frames, sampling_rate=sampling_rate, fps=Fraction(str(fps)))
        self.alpha = alpha
        self.normalisation = dict(mean=tuple(mean), std=tuple(std), bgr=bgr)
        self.test_crop_size = test_crop_size
        self.augmentation = dict(jitter_scales=tuple(train_jitter_scales), crop_size=train_crop_size,
                                 random_flip=random_flip, colour_jitter=colour_jitter,
                                 pca_jitter_only=pca_jitter_only)
        self.pca = dict(pca_eigval=tuple(pca_eigval), pca_eigvec=tuple(tuple(row) for row in pca_eigvec))
        self.augment = augment
        self.seed = seed
        self.epoch = 0
        self.store = FrameStore(cache_dir)
        self.uint8_batches = uint8_batches
        self.store_short_side = (None if augment and full_resolution_frames
                                 else max(train_jitter_scales) if augment else test_crop_size)
        self._frames: dict = {}
        self._served: Optional[list] = None

    @property
    def samples(self) -> list:
        """The samples served, in index order (after :meth:`prepare`: without the dropped ones)."""
        return list(self._served if self._served is not None else self._all)

    def prepare(self, workers: int = 0, progress: Optional[Callable[[int, int, str], None]] = None
                ) -> PrepareReport:
        """Decode (or reuse from the store) the frames every sample needs, one pass per video; drop, with a
        warning, the samples whose frames cannot be had (a video that does not decode, keyframes lost to damage
        or past the end). Raises :class:`~.frames.FrameStoreError`, before decoding anything, when the store's
        disk lacks the space the new frames need (estimated from the videos' headers). ``workers`` > 1 prepares
        that many videos at once; ``progress(done, total, video_id)`` is called after each video."""
        by_video: dict[str, list] = {}
        for sample in self._all:
            by_video.setdefault(sample.video_id, []).append(sample.time)
        report = PrepareReport(samples=len(self._all))
        needed = 0
        for video_id, times in by_video.items():
            try:
                needed += self.store.missing_bytes(video_id, self.videos[video_id], times, **self.clip_settings,
                                                   short_side=self.store_short_side)
            except VideoDecodeError:
                pass  # reported by its prepare below
        self.store.check_space(needed)  # before hours of decoding, not after

        def prepare_one(video_id):
            try:
                return video_id, self.store.prepare(video_id, self.videos[video_id], by_video[video_id],
                                                    **self.clip_settings, short_side=self.store_short_side), None
            except VideoDecodeError as error:
                return video_id, None, str(error)

        done = 0
        if workers > 1:
            pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ava-train-prepare")
            results = pool.map(prepare_one, by_video)
        else:
            pool, results = None, map(prepare_one, by_video)
        try:
            for video_id, frames, failure in results:
                done += 1
                if failure is not None:
                    report.failed_videos[video_id] = failure
                    logger.warning("dropping all %d keyframes of video %s: %s", len(by_video[video_id]), video_id,
                                   failure)
                else:
                    self._frames[video_id] = frames
                    report.decoded += not frames.reused
                    report.reused += frames.reused
                    report.disk_bytes += frames.disk_bytes
                    if frames.lost:
                        lost = sorted(frames.lost)
                        shown = ", ".join(seconds_text(t) for t in lost[:5]) + (", ..." if len(lost) > 5 else "")
                        logger.warning("dropping %d keyframes of video %s (%s): %s", len(lost), video_id, shown,
                                       frames.lost[lost[0]])
                if progress is not None:
                    progress(done, len(by_video), video_id)
        finally:
            if pool is not None:
                pool.shutdown()
        served = []
        for sample in self._all:
            frames = self._frames.get(sample.video_id)
            if frames is None:
                report.dropped.append((sample.video_id, sample.time, report.failed_videos[sample.video_id]))
            elif sample.time in frames.lost:
                report.dropped.append((sample.video_id, sample.time, frames.lost[sample.time]))
            else:
                served.append(sample)
        self._served = served
        report.served = len(served)
        return report

    def set_epoch(self, epoch: int) -> None:
        """Use the augmentation draws of ``epoch`` (>= 0) from now on."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self._require_prepared())

    def _require_prepared(self) -> list:
        if self._served is None:
            raise RuntimeError("call AvaClipDataset.prepare() before reading items")
        return self._served

    def __getitem__(self, index) -> dict:
        return self._item(index)

    def _item(self, index, out: Optional[list] = None, pixels: Optional[torch.Tensor] = None) -> dict:
        """Item ``index`` (or ``(epoch, index)``); ``out``: tensors to write the augmented pathways into;
        ``pixels``: a uint8 (T, S, S, 3) tensor to write the augmented frames into instead, not normalised (the
        item's ``"inputs"`` is then empty)."""
        epoch = self.epoch
        if isinstance(index, tuple):
            epoch, index = index
        epoch, index = int(epoch), int(index)
        served = self._require_prepared()
        if not 0 <= index < len(served):
            raise IndexError(f"index {index} outside the dataset's {len(served)} samples")
        sample: TrainingSample = served[index]
        stored = self._frames[sample.video_id]
        frames, source_size = stored.clip(sample.time), stored.source_size
        if self.augment:
            draw = draw_train_augmentation(augmentation_rng(self.seed, epoch, index), *source_size,
                                           **self.augmentation)
            if pixels is not None:
                _, boxes = train_pixels(frames, sample.boxes, draw, crop_size=self.augmentation["crop_size"],
                                        bgr=self.normalisation["bgr"], source_size=source_size, out=pixels.numpy())
                inputs = []
            else:
                inputs, boxes = train_transform(frames, sample.boxes, draw, crop_size=self.augmentation["crop_size"],
                                                alpha=self.alpha, source_size=source_size, out=out,
                                                **self.normalisation, **self.pca)
        else:
            inputs, boxes = inference_transform(frames, sample.boxes, test_size=self.test_crop_size, alpha=self.alpha,
                                                source_size=source_size, **self.normalisation)
        return {"inputs": inputs, "boxes": torch.from_numpy(boxes), "labels": torch.from_numpy(sample.labels),
                "ori_boxes": torch.from_numpy(sample.boxes), "video_id": sample.video_id, "time": sample.time,
                "index": index}

    def __getitems__(self, indices: Sequence) -> TrainingBatch:
        """``collate([self[i] for i in indices])`` as the DataLoader asks for it (each batch's indices), with
        augmentation computed in place: each clip is transformed straight into its slot of the batch's tensors,
        which inside a DataLoader worker are allocated in shared memory (as torch's ``default_collate`` does), so a
        batch reaches the training process with no copy. With ``uint8_batches`` (and no colour jitter) the batch
        carries the augmented frames as uint8 ``pixels``, normalised where the model runs by
        :meth:`TrainingBatch.model_inputs` with the float32 operations of the items."""
        if not self.augment:
            return collate([self[index] for index in indices])
        size, frames = self.augmentation["crop_size"], self.clip_settings["num_frames"]
        if self.uint8_batches and not self.augmentation["colour_jitter"]:
            pixels = _batch_tensor((len(indices), frames, size, size, 3), torch.uint8)
            items = [self._item(index, pixels=pixels[slot]) for slot, index in enumerate(indices)]
            normalisation = (self.normalisation["mean"], self.normalisation["std"], self.alpha)
            return _assemble(items, [], pixels=pixels, normalisation=normalisation)
        lengths = [frames] if self.alpha is None else [frames // self.alpha, frames]
        inputs = [_batch_tensor((len(indices), 3, length, size, size), torch.float32) for length in lengths]
        items = [self._item(index, out=[pathway[slot] for pathway in inputs])
                 for slot, index in enumerate(indices)]
        return _assemble(items, inputs)


@dataclass
class TrainingBatch:
    """A batch of N clips with K boxes in all.

    ``inputs``: list of float32 ``(N, 3, T_p, H, W)`` (Slow, Fast), or empty when the batch carries ``pixels``
    uint8 (N, T, H, W, 3) (channels in output order) and their ``normalisation`` ``(mean, std, alpha)`` instead:
    :meth:`model_inputs` gives the pathways either way. ``boxes``: float32 (K, 5) ``batch_index, x1, y1, x2, y2``
    in input pixels; ``labels``: float32 (K, C); ``ori_boxes``: float64 (K, 4) normalised as read; ``keys``:
    ``(video_id, time)`` per clip (box ``k`` belongs to clip ``int(boxes[k, 0])``); ``indices``: dataset index
    per clip.
    """

    inputs: list
    boxes: torch.Tensor
    labels: torch.Tensor
    ori_boxes: torch.Tensor
    keys: list
    indices: list
    pixels: Optional[torch.Tensor] = None
    normalisation: Optional[tuple] = None

    def model_inputs(self, device) -> list:
        """The model's pathways on ``device``: float32 ``(N, 3, T_p, H, W)`` (Slow, Fast; Fast alone for
        Slow-only). ``pixels`` travel as uint8 and are normalised there: ``(v / 255 - mean) / std``, the float32
        operations of the transforms' table (:func:`~ava_pipeline.preprocess.normalization_table`). Every operand
        is a tensor on the device: CUDA would replace a division by a Python number with a multiplication by its
        reciprocal, one bit off for half of the 256 values."""
        if self.pixels is None:
            return [tensor.to(device, non_blocking=True) for tensor in self.inputs]
        mean, std, alpha = self.normalisation
        frames = self.pixels.to(device, non_blocking=True).float()

        def operand(values):
            return torch.tensor(values, dtype=torch.float32, device=frames.device)

        frames.div_(operand(255.0)).sub_(operand(mean)).div_(operand(std))
        fast = frames.permute(0, 4, 1, 2, 3).contiguous()
        if alpha is None:
            return [fast]
        return [fast.index_select(2, slow_indices(fast.shape[2], alpha).to(fast.device)), fast]

    def pin_memory(self) -> "TrainingBatch":
        """The batch with its tensors in page-locked memory (the DataLoader's ``pin_memory`` thread calls this for
        CUDA training, so that the copies to the GPU run asynchronously)."""
        return replace(self, inputs=[tensor.pin_memory() for tensor in self.inputs], boxes=self.boxes.pin_memory(),
                       labels=self.labels.pin_memory(),
                       pixels=None if self.pixels is None else self.pixels.pin_memory())


def collate(items: Sequence[dict]) -> TrainingBatch:
    """Stack dataset items into a :class:`TrainingBatch` (clips must share one frame size); a batch that
    :meth:`AvaClipDataset.__getitems__` already assembled passes through. Inside a DataLoader worker the input
    tensors are allocated in shared memory (``default_collate``)."""
    if isinstance(items, TrainingBatch):
        return items
    if not items:
        raise ValueError("cannot collate an empty batch")
    shapes = {tuple(item["inputs"][-1].shape) for item in items}
    if len(shapes) > 1:
        raise ValueError(f"clips of different sizes {sorted(shapes)} cannot share a batch (without augmentation "
                         "the frame size follows each video's aspect ratio): use batch size 1, or augmentation")
    inputs = [default_collate([item["inputs"][p] for item in items]) for p in range(len(items[0]["inputs"]))]
    return _assemble(items, inputs)


def _assemble(items: Sequence[dict], inputs: list, **frames) -> TrainingBatch:
    """The batch of ``items`` whose clips are already stacked in ``inputs`` (or in ``frames``' pixels)."""
    return TrainingBatch(inputs=inputs, boxes=batch_boxes([item["boxes"] for item in items]), labels=torch.cat([item["labels"] for item in items]),
                         ori_boxes=torch.cat([item["ori_boxes"] for item in items]),
                         keys=[(item["video_id"], item["time"]) for item in items],
                         indices=[item["index"] for item in items], **frames)


def _batch_tensor(shape: tuple, dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised contiguous tensor; inside a DataLoader worker in shared memory (the storage
    ``default_collate`` allocates there), so that sending the batch to the training process copies nothing."""
    if torch.utils.data.get_worker_info() is None:
        return torch.empty(shape, dtype=dtype)
    storage = torch.UntypedStorage._new_shared(math.prod(shape) * dtype.itemsize)
    return torch.empty(0, dtype=dtype).set_(storage, 0, shape)

"""Per-clip transforms for training: PySlowFast's AVA train transform (cv2 backend) and the test transform.

Train (``TRAIN_SPEC.md`` section 2), for one clip of T uint8 (H, W, 3) RGB frames and its K boxes:

1. boxes: normalised ``x1, y1, x2, y2`` (float64) times ``(W, H, W, H)``, clipped to ``[0, W-1] x [0, H-1]``;
2. short-side jitter: ``s = int(round(1 / U(1/max, 1/min)))``; unless the short side already is ``s``,
   the short side becomes ``s`` and the long side ``floor(long * s / short)`` (``cv2.resize`` INTER_LINEAR on
   uint8), and the boxes are multiplied by ONE factor, ``new_long / long``;
3. random square crop of ``crop_size``: ``y0`` uniform in ``[0, H' - crop_size)`` (upper bound exclusive,
   as PySlowFast's ``randint``; 0 when ``H' == crop_size``), ``x0`` likewise; skipped when the frame
   already is ``crop_size`` square; boxes shifted, not clipped or dropped;
4. horizontal flip with probability 0.5 (if ``random_flip``): ``x1' = W' - 1 - x2``, ``x2' = W' - 1 - x1``;
5. pixels ``/ 255`` (float32 after a resize, float64 then float32 without); optional colour jitter
   (brightness, contrast, saturation 0.4 each, in random order, unless ``pca_jitter_only``) then PCA
   lighting (``alphastd`` 0.1): PySlowFast's arithmetic, channels in RGB terms;
6. ``(x - mean) / std`` per output channel (RGB, or BGR with ``bgr``), float32;
7. boxes clipped to the output frame; a box outside the crop becomes a degenerate edge box (kept);
8. Fast pathway = all T frames, Slow = frames ``linspace(0, T-1, T // alpha).long()``.

Test (augmentation off): :func:`ava_pipeline.preprocess.preprocess_clip` itself, so training without
augmentation sees exactly the tensors inference feeds the model.

Randomness: every draw comes from the ``numpy.random.Generator`` passed in (see :func:`augmentation_rng`),
never from global RNG state; :func:`draw_train_augmentation` makes all of a clip's draws up front, in the
order scale, crop y, crop x, flip, colour order and factors, PCA.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import cv2
import numpy as np
import torch

from ..preprocess import clip_boxes, normalization_table, preprocess_clip, resized_size, slow_indices

PCA_EIGVAL = (0.225, 0.224, 0.229)
"""PySlowFast's ``DATA.TRAIN_PCA_EIGVAL`` default (``slowfast/config/defaults.py``)."""
PCA_EIGVEC = ((-0.5675, 0.7192, 0.4009), (-0.5808, -0.0045, -0.8140), (-0.5836, -0.6948, 0.4203))
"""PySlowFast's ``DATA.TRAIN_PCA_EIGVEC`` default."""
COLOUR_JITTER = 0.4  # brightness, contrast and saturation ratio (fixed in PySlowFast's AVA dataset)
PCA_ALPHASTD = 0.1
_COLOUR_OPS = ("brightness", "contrast", "saturation")


def augmentation_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator of sample ``index``'s draws in ``epoch``: a pure function of the three (all >= 0)."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, epoch, index])))


@dataclass(frozen=True)
class TrainDraw:
    """A clip's random choices: jittered ``short_side``; crop offsets (0 without crop); ``flip``; the colour
    ops applied in order with their factors (empty without colour jitter); ``pca_alpha`` (3,) or None."""

    short_side: int
    crop_y: int
    crop_x: int
    flip: bool
    colour_ops: tuple = ()
    colour_factors: tuple = ()
    pca_alpha: Optional[tuple] = None


def draw_train_augmentation(rng: np.random.Generator, width: int, height: int, *, jitter_scales: Sequence[int],
                            crop_size: int, random_flip: bool = True, colour_jitter: bool = False,
                            pca_jitter_only: bool = True) -> TrainDraw:
    """Draw the augmentation of one clip whose frames are ``width`` x ``height`` (see the module docstring)."""
    low, high = jitter_scales
    short_side = int(round(1.0 / rng.uniform(1.0 / high, 1.0 / low)))
    new_width, new_height = resized_size(width, height, short_side)
    if min(new_width, new_height) < crop_size:
        raise ValueError(f"the jittered short side {short_side} is smaller than the crop size {crop_size}; the "
                         "smallest jitter scale must be at least the train crop size")
    crop_y = crop_x = 0
    if not (new_height == crop_size and new_width == crop_size):
        crop_y = int(rng.integers(0, new_height - crop_size)) if new_height > crop_size else 0
        crop_x = int(rng.integers(0, new_width - crop_size)) if new_width > crop_size else 0
    flip = bool(random_flip and rng.uniform() < 0.5)
    ops, factors, pca = (), (), None
    if colour_jitter:
        if not pca_jitter_only:
            ops = tuple(_COLOUR_OPS[i] for i in rng.permutation(len(_COLOUR_OPS)))
            factors = tuple(1.0 + rng.uniform(-COLOUR_JITTER, COLOUR_JITTER) for _ in ops)
        pca = tuple(float(a) for a in rng.normal(0.0, PCA_ALPHASTD, size=3))
    return TrainDraw(short_side, crop_y, crop_x, flip, ops, factors, pca)


def train_pixels(frames, boxes_normalized, draw: TrainDraw, *, crop_size: int, bgr: bool = False,
                 source_size: Optional[tuple[int, int]] = None, out: Optional[np.ndarray] = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Steps 1-4 of PySlowFast's AVA train transform (boxes; short-side jitter, crop, flip) on one clip.

    Args:
        frames: uint8 (T, H, W, 3) RGB (array or sequence of T frames).
        boxes_normalized: (K, 4) ``x1, y1, x2, y2`` in [0, 1] of the frame, top-left origin.
        draw: from :func:`draw_train_augmentation` for the source frame size.
        crop_size, bgr: ``TRAIN_CROP_SIZE``; ``AVA.BGR`` (channels of the result in BGR order).
        source_size: ``(W, H)`` of the video frames when ``frames`` are a downscaled copy of them (the frame
            store's training resolution): the boxes, the jittered size and the crop follow the source exactly;
            only the pixels are resized from the copy. None: ``frames`` are the source.
        out: a uint8 (T, S, S, 3) array to write the frames into (a slot of a batch).

    Returns:
        ``(pixels, boxes_px)``: uint8 (T, S, S, 3) frames, ``S = crop_size``; float32 (K, 4) ``x1, y1, x2, y2``
        in pixels of the output frame, clipped to it.
    """
    first = np.asarray(frames[0])
    width, height = source_size or (first.shape[1], first.shape[0])
    new_width, new_height = resized_size(width, height, draw.short_side)
    resized = (new_width, new_height) != (width, height)
    resize_pixels = (new_width, new_height) != (first.shape[1], first.shape[0])
    cropped = not (new_height == crop_size and new_width == crop_size)
    out_height, out_width = (crop_size, crop_size) if cropped else (new_height, new_width)

    boxes = np.array(boxes_normalized, dtype=np.float64).reshape(-1, 4)
    boxes[:, [0, 2]] *= width
    boxes[:, [1, 3]] *= height
    clip_boxes(boxes, width, height)
    if resized:
        boxes *= float(new_height) / height if width < height else float(new_width) / width
    if cropped:
        boxes[:, [0, 2]] -= draw.crop_x
        boxes[:, [1, 3]] -= draw.crop_y
    if draw.flip:
        boxes[:, [0, 2]] = out_width - 1 - boxes[:, [2, 0]]
    clip_boxes(boxes, out_width, out_height)

    shape = (len(frames), out_height, out_width, 3)
    pixels = out if out is not None else np.empty(shape, np.uint8)
    if pixels.shape != shape or pixels.dtype != np.uint8:
        raise ValueError(f"out must be uint8 {shape}, got {pixels.dtype} {pixels.shape}")
    for index in range(len(frames)):
        image = np.asarray(frames[index])
        if resize_pixels:
            image = cv2.resize(image, (new_width, new_height), interpolation=cv2.INTER_LINEAR)
        if cropped:
            image = image[draw.crop_y:draw.crop_y + crop_size, draw.crop_x:draw.crop_x + crop_size]
        if draw.flip and not bgr:
            cv2.flip(image, 1, dst=pixels[index])  # about the vertical axis: image[:, ::-1], one contiguous pass
            continue
        if draw.flip:
            image = cv2.flip(image, 1)
        pixels[index] = image[:, :, ::-1] if bgr else image
    return pixels, boxes.astype(np.float32)


def train_transform(frames, boxes_normalized, draw: TrainDraw, *, crop_size: int, mean: Sequence[float],
                    std: Sequence[float], alpha: Optional[int], bgr: bool = False,
                    pca_eigval: Sequence[float] = PCA_EIGVAL, pca_eigvec=PCA_EIGVEC,
                    source_size: Optional[tuple[int, int]] = None, out: Optional[Sequence[torch.Tensor]] = None
                    ) -> tuple[list, np.ndarray]:
    """PySlowFast's AVA train transform of one clip with the choices ``draw``: :func:`train_pixels`, then colour
    and PCA jitter if drawn, normalisation and the pathways.

    Args:
        frames, boxes_normalized, draw, crop_size, bgr, source_size: as for :func:`train_pixels`.
        mean, std, alpha: ``DATA.MEAN`` / ``STD`` (per output channel, [0, 1] scale), SlowFast's alpha (None:
            Slow-only).
        out: contiguous float32 tensors shaped as the returned pathways to write them into (slots of a batch).

    Returns:
        ``([slow (3, T // alpha, S, S), fast (3, T, S, S)], boxes_px)`` (``[fast]`` alone when ``alpha`` is None),
        float32 tensors, ``S = crop_size``; ``boxes_px`` float32 (K, 4) ``x1, y1, x2, y2`` in pixels of the
        output frame, clipped to it.
    """
    colour = bool(draw.colour_ops) or draw.pca_alpha is not None
    pixels, boxes = train_pixels(frames, boxes_normalized, draw, crop_size=crop_size, bgr=bgr and not colour,
                                 source_size=source_size)
    count, out_height, out_width = pixels.shape[:3]
    shapes = [(3, count, out_height, out_width)] if alpha is None else [
        (3, count // alpha, out_height, out_width), (3, count, out_height, out_width)]
    if out is not None and ([tuple(t.shape) for t in out] != shapes or not all(t.is_contiguous() for t in out)
                            or any(t.dtype != torch.float32 for t in out)):
        raise ValueError(f"out must be contiguous float32 tensors of shapes {shapes}; got "
                         f"{[(tuple(t.shape), t.dtype) for t in out]}")
    clip = out[-1] if out is not None else torch.empty(shapes[-1], dtype=torch.float32)
    planes = clip.numpy()
    if colour:  # scaled and jittered for the whole clip at once
        interleaved = pixels.astype(np.float32)
        _colour_augment(interleaved, draw, eigval=pca_eigval, eigvec=pca_eigvec)
        if bgr:
            interleaved = interleaved[..., ::-1]
        mean32, std32 = np.asarray(mean, np.float32), np.asarray(std, np.float32)
        np.subtract(interleaved, mean32, out=planes.transpose(1, 2, 3, 0))
        np.divide(planes, std32[:, None, None, None], out=planes)
    else:
        lut = normalization_table(mean, std)
        normalised = np.empty((out_height, out_width, 3), np.float32)
        for index in range(count):
            cv2.LUT(pixels[index], lut, dst=normalised)
            cv2.mixChannels([normalised], [planes[0, index], planes[1, index], planes[2, index]],
                            [0, 0, 1, 1, 2, 2])  # (H, W, 3) -> the three (H, W) planes of frame ``index``
    if alpha is None:
        return [clip], boxes
    slow = torch.index_select(clip, 1, slow_indices(count, alpha), **({"out": out[0]} if out else {}))
    return [slow, clip], boxes


def _colour_augment(clip: np.ndarray, draw: TrainDraw, *, eigval, eigvec) -> None:
    """In place on float32 (T, H, W, 3) RGB pixel values 0..255: ``/ 255`` then PySlowFast's colour jitter and
    PCA lighting, with its float32 / float64 arithmetic (NumPy 2 promotion rules; its float64 division of an
    unresized image rounds to the same float32 values)."""
    np.divide(clip, np.float32(255.0), out=clip)
    for op, factor in zip(draw.colour_ops, draw.colour_factors):
        for frame in clip:
            if op == "brightness":
                other = np.zeros_like(frame)
            else:
                gray = _gray(frame)
                if op == "contrast":
                    other = np.full_like(frame, np.mean(gray))
                else:
                    other = np.repeat(gray[:, :, None], 3, axis=2)
            frame[...] = frame * factor + other * (1 - factor)
    if draw.pca_alpha is not None:
        eig_vec = np.asarray(eigvec, dtype=np.float32)
        eig_val = np.asarray(eigval, dtype=np.float32).reshape(1, 3)
        alpha = np.asarray(draw.pca_alpha, dtype=np.float64).reshape(1, 3)
        shift = np.sum(eig_vec * np.repeat(alpha, 3, axis=0) * np.repeat(eig_val, 3, axis=0), axis=1)
        for channel in range(3):  # float32 + float64 scalar computes in float64, stored as float32
            clip[..., channel] = clip[..., channel] + shift[channel]


def _gray(frame: np.ndarray) -> np.ndarray:
    """float32 (H, W) ``0.299 R + 0.587 G + 0.114 B`` of a float32 (H, W, 3) RGB frame (PySlowFast's order)."""
    return np.ascontiguousarray(0.299 * frame[:, :, 0] + 0.587 * frame[:, :, 1] + 0.114 * frame[:, :, 2])


def inference_transform(frames, boxes_normalized, *, test_size: int, mean: Sequence[float], std: Sequence[float],
                        alpha: Optional[int], bgr: bool = False, source_size: Optional[tuple[int, int]] = None
                        ) -> tuple[list, np.ndarray]:
    """The inference transform (short side to ``test_size``, no crop, no flip): the tensors of
    :func:`~ava_pipeline.preprocess.preprocess_clip` without the batch dimension, ``(3, T_p, H', W')`` float32,
    and the (K, 4) float32 boxes in input pixels. ``source_size``: as in ``preprocess_clip``."""
    inputs, boxes_px = preprocess_clip(frames, boxes_normalized, test_size=test_size, mean=mean, std=std,
                                       alpha=alpha, bgr=bgr, source_size=source_size)
    return [tensor[0] for tensor in inputs], boxes_px

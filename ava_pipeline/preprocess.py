"""Clip -> model inputs: PySlowFast's AVA test-time transform, reproduced bit for bit.

For one clip of T frames (all the same size W x H) and the K person boxes at its keyframe:

1. boxes: normalized ``x1, y1, x2, y2`` times ``(W, H, W, H)``, clipped to ``[0, W-1]`` / ``[0, H-1]``;
2. frames: the short side is resized to ``test_size`` and the long side to ``floor(long / short * test_size)``
   with ``cv2.resize(INTER_LINEAR)`` on uint8 (the result is uint8 again); a frame whose short side already
   equals ``test_size`` is left as is;
3. boxes times ONE factor, ``new_long / long`` (both axes), unless the frame was left as is;
4. pixels ``/ 255``, minus ``mean``, divided by ``std`` per channel, float32;
5. boxes clipped again, to the resized image;
6. Fast pathway = all T frames, Slow pathway = frames ``torch.linspace(0, T-1, T // alpha).long()``
   (``[0, 4, 8, 13, 17, 22, 26, 31]`` for T=32, alpha=4: not every alpha-th frame).

Float arithmetic follows PySlowFast's (float64 boxes, float32 pixels), so the tensors equal the reference's
exactly. (PySlowFast divides an unresized uint8 image by 255 in float64 and a resized one in float32; rounded to
float32 the two agree on all 256 values, so one table serves both.) PySlowFast resizes BGR images; a uint8 resize
treats channels independently, so resizing RGB gives the same pixels. Step 4 is a 256-entry table per
channel built with that arithmetic, so each frame costs one ``cv2.resize`` and one ``cv2.LUT`` that writes
straight into the output tensor.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import cv2
import numpy as np
import torch


def resized_size(width: int, height: int, test_size: int) -> tuple[int, int]:
    """(new_width, new_height) after the short side is scaled to ``test_size``; unchanged if it already is."""
    if (width <= height and width == test_size) or (height <= width and height == test_size):
        return width, height
    if width < height:
        return test_size, int(math.floor(float(height) / width * test_size))
    return int(math.floor(float(width) / height * test_size)), test_size


def boxes_to_input_pixels(boxes_normalized, width: int, height: int, test_size: int) -> np.ndarray:
    """Normalized ``x1, y1, x2, y2`` boxes (K, 4) -> float32 (K, 4) pixels of the resized input image.

    Clipped to the original image, scaled by one factor, clipped to the resized image (PySlowFast's order).
    """
    boxes = np.array(boxes_normalized, dtype=np.float64).reshape(-1, 4)
    boxes[:, [0, 2]] *= width
    boxes[:, [1, 3]] *= height
    clip_boxes(boxes, width, height)
    new_width, new_height = resized_size(width, height, test_size)
    if (new_width, new_height) != (width, height):
        boxes *= float(new_height) / height if width < height else float(new_width) / width
    clip_boxes(boxes, new_width, new_height)
    return boxes.astype(np.float32)


def clip_boxes(boxes: np.ndarray, width: int, height: int) -> None:
    """Clip pixel boxes (K, 4) ``x1, y1, x2, y2`` in place to ``[0, width - 1] x [0, height - 1]``."""
    boxes[:, [0, 2]] = np.minimum(width - 1.0, np.maximum(0.0, boxes[:, [0, 2]]))
    boxes[:, [1, 3]] = np.minimum(height - 1.0, np.maximum(0.0, boxes[:, [1, 3]]))


def batch_boxes(boxes_per_clip: Sequence) -> torch.Tensor:
    """float32 (K, 5) ``[clip index, x1, y1, x2, y2]``: the (K_i, 4) boxes (arrays or tensors) of each clip of a
    batch, in clip order, as the models' RoI heads take them."""
    return torch.cat([torch.cat([torch.full((len(boxes), 1), float(index)), torch.as_tensor(boxes).float()], 1)
                      for index, boxes in enumerate(boxes_per_clip)])


def normalization_table(mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """float32 (256, 1, 3) table: uint8 value -> ``(v / 255 - mean) / std`` per output channel, in float32 as
    PySlowFast computes it."""
    values = torch.arange(256, dtype=torch.float32).div(255.0)
    mean_t = torch.tensor(list(mean), dtype=torch.float32)
    std_t = torch.tensor(list(std), dtype=torch.float32)
    table = (values[:, None] - mean_t[None, :]) / std_t[None, :]
    return np.ascontiguousarray(table.numpy().reshape(256, 1, 3))


def slow_indices(num_frames: int, alpha: int) -> torch.Tensor:
    """Indices (int64) of the Fast frames that form the Slow pathway: ``linspace(0, T-1, T // alpha).long()``."""
    return torch.linspace(0, num_frames - 1, num_frames // alpha).long()


class FrameReuse:
    """The previous clip's normalized frames by frame id, so that the overlapping clips of one video resize
    and normalize each frame once (32x2 clips a second apart share half their frames).

    One per video, passed with ``frame_ids`` (e.g. ``Clip.frame_indices``) to every ``preprocess_clip`` call;
    it holds views of the last clip's input tensor and forgets them when the transform settings change.
    """

    def __init__(self):
        self._settings, self._frames = None, {}

    def frames(self, settings) -> dict:
        return self._frames if settings == self._settings else {}

    def remember(self, settings, frames: dict) -> None:
        self._settings, self._frames = settings, frames


def preprocess_clip(frames: np.ndarray | Sequence[np.ndarray], boxes_normalized, *, test_size: int,
                    mean: Sequence[float], std: Sequence[float], alpha: Optional[int], bgr: bool = False,
                    frame_ids: Optional[Sequence[int]] = None, reuse: Optional[FrameReuse] = None,
                    source_size: Optional[tuple[int, int]] = None) -> tuple[list[torch.Tensor], np.ndarray]:
    """Model inputs for one clip.

    Args:
        frames: uint8 (T, H, W, 3) RGB, one clip, as an array or a sequence of T (H, W, 3) arrays (e.g.
            ``Clip.frame_list``, which avoids stacking a copy).
        boxes_normalized: (K, 4) ``x1, y1, x2, y2`` in [0, 1] of the frame, top-left origin.
        test_size: short side of the model input in pixels (``TEST_CROP_SIZE``: 256, or 224 for ``*_SHORT``).
        mean, std: 3 values each on the [0, 1] scale, in the order of the output channels (PySlowFast
            applies them to BGR channels before its flip to RGB; the same for its equal AVA values).
        alpha: SlowFast's frame-rate ratio; ``None`` for single-pathway (Slow-only) models.
        bgr: emit channels in BGR order (PySlowFast's ``AVA.BGR``); default RGB.
        frame_ids, reuse: with both, frames whose id the previous call on ``reuse`` (or this clip) already
            normalized are copied from there instead of transformed again (the same values).
        source_size: ``(W, H)`` of the video frames when ``frames`` are those frames already resized (the
            training frame store's frames at ``test_size``): boxes, the output size and the float arithmetic
            follow the source, so the result equals that of the source frames; None: ``frames`` are the source.

    Returns:
        ``([slow (1, 3, T // alpha, H', W'), fast (1, 3, T, H', W')], boxes_px)`` (``[fast]`` alone when
        ``alpha`` is None), float32 CPU tensors in channels-last 3D memory (``(1, T, H', W', 3)`` storage, the
        layout the fast path computes in: no conversion before the first convolution); ``boxes_px`` float32
        (K, 4) ``x1, y1, x2, y2`` in pixels of the H' x W' input (clipped to it).
    """
    if test_size < 1:
        raise ValueError(f"test_size must be a positive number of pixels, got {test_size}")
    first = np.asarray(frames[0]) if len(frames) else np.zeros(0)
    if first.dtype != np.uint8 or first.ndim != 3 or first.shape[2] != 3:
        raise ValueError(f"frames must be T >= 1 uint8 (H, W, 3) images, got {first.dtype} {first.shape}")
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(f"mean and std need 3 values each, got {list(mean)} and {list(std)}")
    num_frames = len(frames)
    width, height = source_size or (first.shape[1], first.shape[0])
    new_width, new_height = resized_size(width, height, test_size)
    resize_pixels = (new_width, new_height) != (first.shape[1], first.shape[0])
    lut = normalization_table(mean, std)
    clip = torch.empty((1, num_frames, new_height, new_width, 3), dtype=torch.float32)  # channels-last memory
    clip_frames = clip.numpy()[0]
    settings = (first.shape, (width, height), test_size, tuple(mean), tuple(std), bgr)
    reusing = frame_ids is not None and reuse is not None
    previous, done = (reuse.frames(settings) if reusing else {}), {}
    for index in range(num_frames):
        image = np.asarray(frames[index])
        if image.shape != first.shape or image.dtype != np.uint8:
            raise ValueError(f"frame {index} is {image.dtype} {image.shape}, frame 0 {first.dtype} {first.shape}")
        key = frame_ids[index] if reusing else None
        normalized = done.get(key, previous.get(key)) if reusing else None
        if normalized is not None:
            np.copyto(clip_frames[index], normalized)
        else:
            if resize_pixels:
                image = cv2.resize(image, (new_width, new_height), interpolation=cv2.INTER_LINEAR)
            if bgr:
                image = image[:, :, ::-1]
            cv2.LUT(np.ascontiguousarray(image), lut, dst=clip_frames[index])  # float32 (H', W', 3), in place
        if reusing:
            done[key] = clip_frames[index]
    if reusing:
        reuse.remember(settings, done)
    boxes_px = boxes_to_input_pixels(boxes_normalized, width, height, test_size)
    fast = clip.permute(0, 4, 1, 2, 3)
    if alpha is None:
        return [fast], boxes_px
    slow = clip.index_select(1, slow_indices(num_frames, alpha)).permute(0, 4, 1, 2, 3)
    return [slow, fast], boxes_px

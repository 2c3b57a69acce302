"""ava_pipeline.preprocess: PySlowFast's AVA test-time transform, bit for bit.

``reference_transform`` below walks PySlowFast's documented steps one frame at a time, in its order and
dtypes (BGR frames as cv2.imdecode gives them, float64 boxes, per-frame resize and normalisation, channel
flip at the end); preprocess_clip must give identical tensors.
"""
import math

import cv2
import numpy as np
import pytest
import torch

from ava_pipeline.preprocess import (FrameReuse, boxes_to_input_pixels, preprocess_clip, resized_size,
                                     slow_indices)
from ava_pipeline.video import iter_clips
from tests.videos import index_image, write_index_video

MEAN, STD = [0.45, 0.45, 0.45], [0.225, 0.225, 0.225]


def reference_transform(frames_rgb, boxes_normalized, size, mean, std, alpha, use_bgr=False):
    """SLOWFAST_SPEC.md section 4, steps 1-8, literally."""
    images = [frame[:, :, ::-1].copy() for frame in frames_rgb]  # cv2.imdecode gives BGR
    height, width = images[0].shape[:2]
    boxes = np.array(boxes_normalized, dtype=np.float64).reshape(-1, 4)
    boxes[:, [0, 2]] *= width
    boxes[:, [1, 3]] *= height
    boxes[:, [0, 2]] = np.minimum(width - 1.0, np.maximum(0.0, boxes[:, [0, 2]]))
    boxes[:, [1, 3]] = np.minimum(height - 1.0, np.maximum(0.0, boxes[:, [1, 3]]))
    short_is_size = (width <= height and width == size) or (height <= width and height == size)
    if not short_is_size:
        if width < height:
            new_w, new_h = size, int(math.floor(float(height) / width * size))
            boxes *= float(new_h) / height
        else:
            new_w, new_h = int(math.floor(float(width) / height * size)), size
            boxes *= float(new_w) / width
        images = [cv2.resize(img, (new_w, new_h), interpolation=cv2.INTER_LINEAR).astype(np.float32)
                  for img in images]
    chw = [np.ascontiguousarray(img.transpose(2, 0, 1)) / 255.0 for img in images]
    chw = [img.astype(np.float32) for img in chw]
    for img in chw:  # mean/std indexed by the channels of the (BGR) image
        for c in range(3):
            img[c] = img[c] - np.float32(mean[c])
            img[c] = img[c] / np.float32(std[c])
    clip = np.concatenate([img[:, None] for img in chw], axis=1)  # (C, T, H, W)
    if not use_bgr:
        clip = clip[::-1]
    clip = torch.from_numpy(np.ascontiguousarray(clip))
    out_h, out_w = clip.shape[2], clip.shape[3]
    boxes[:, [0, 2]] = np.minimum(out_w - 1.0, np.maximum(0.0, boxes[:, [0, 2]]))
    boxes[:, [1, 3]] = np.minimum(out_h - 1.0, np.maximum(0.0, boxes[:, [1, 3]]))
    if alpha is None:
        pathways = [clip]
    else:
        index = torch.linspace(0, clip.shape[1] - 1, clip.shape[1] // alpha).long()
        pathways = [torch.index_select(clip, 1, index), clip]
    return [p.unsqueeze(0) for p in pathways], boxes.astype(np.float32)


def random_clip(num_frames, height, width, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (num_frames, height, width, 3), dtype=np.uint8)
    ramp = np.linspace(0, 255, width, dtype=np.float32)[None, None, :, None]
    return np.where(rng.random(base.shape) < 0.5, base, ramp.astype(np.uint8))  # noise and smooth areas


BOXES = np.array([[0.1, 0.2, 0.5, 0.9], [-0.05, 0.0, 1.2, 1.0], [0.333, 0.25, 0.334, 0.26]], np.float32)


@pytest.mark.parametrize("height, width, size, alpha, bgr", [
    (72, 128, 32, 4, False),     # landscape, downscale
    (128, 72, 32, 4, False),     # portrait
    (40, 50, 64, 4, False),      # upscale
    (48, 80, 48, 4, False),      # short side already == size: no resize (float64 division path)
    (45, 61, 30, None, False),   # odd sizes, slow-only model
    (72, 128, 32, 4, True),      # BGR model input
])
def test_matches_pyslowfast_steps_exactly(height, width, size, alpha, bgr):
    frames = random_clip(8, height, width)
    mean, std = [0.40, 0.45, 0.50], [0.20, 0.225, 0.25]
    # PySlowFast normalises BGR channels in mean/std order; ours follow the output channel order.
    reference_mean = mean if bgr else mean[::-1]
    reference_std = std if bgr else std[::-1]
    expected, expected_boxes = reference_transform(frames, BOXES, size, reference_mean, reference_std, alpha, bgr)
    pathways, boxes_px = preprocess_clip(frames, BOXES, test_size=size, mean=mean, std=std, alpha=alpha, bgr=bgr)
    assert len(pathways) == len(expected)
    for got, want in zip(pathways, expected):
        assert got.dtype == torch.float32 and got.is_contiguous(memory_format=torch.channels_last_3d)
        assert got.shape == want.shape
        assert torch.equal(got, want)
    assert boxes_px.dtype == np.float32
    np.testing.assert_array_equal(boxes_px, expected_boxes)


def test_slow_pathway_is_linspace_not_every_alpha_th_frame():
    assert slow_indices(32, 4).tolist() == [0, 4, 8, 13, 17, 22, 26, 31]
    assert slow_indices(64, 4).tolist()[-3:] == [54, 58, 63]
    frames = np.stack([np.full((8, 8, 3), 7 * t, np.uint8) for t in range(32)])
    (slow, fast), _ = preprocess_clip(frames, np.zeros((0, 4)), test_size=8, mean=MEAN, std=STD, alpha=4)
    assert slow.shape == (1, 3, 8, 8, 8) and fast.shape == (1, 3, 32, 8, 8)
    values = slow[0, 0, :, 0, 0] * 0.225 + 0.45
    assert torch.allclose(values * 255 / 7, torch.tensor([0, 4, 8, 13, 17, 22, 26, 31.0]), atol=1e-3)


def test_overlapping_clips_reuse_normalized_frames_with_the_same_values():
    """Frames already normalized for the previous clip (same id) are copied, not transformed again."""
    video = random_clip(12, 36, 64)
    first_ids, second_ids = [0, 0, 2, 4, 6, 8], [4, 6, 8, 10, 11, 11]  # clamped edges repeat an id
    kwargs = dict(test_size=16, mean=[0.4, 0.45, 0.5], std=[0.2, 0.225, 0.25], alpha=2)
    reuse = FrameReuse()
    expected = [preprocess_clip(video[ids], BOXES, **kwargs)[0] for ids in (first_ids, second_ids)]
    got_first, _ = preprocess_clip(video[first_ids], BOXES, frame_ids=first_ids, reuse=reuse, **kwargs)
    # frames 4, 6, 8 come from the first clip: blank pixels passed for them must not matter
    second_frames = video[second_ids].copy()
    second_frames[:3] = 0
    got_second, _ = preprocess_clip(second_frames, BOXES, frame_ids=second_ids, reuse=reuse, **kwargs)
    for got, want in zip(got_first + got_second, expected[0] + expected[1]):
        assert torch.equal(got, want)
    # other settings: nothing is reused
    changed, _ = preprocess_clip(second_frames, BOXES, frame_ids=second_ids, reuse=reuse,
                                 **{**kwargs, "test_size": 20})
    assert (changed[1][0, :, :3] == changed[1][0, :, :3].flatten()[0]).all()  # the blank frames, normalized


def test_boxes_use_one_scale_factor_and_are_clipped_twice():
    assert resized_size(1280, 720, 256) == (455, 256)
    assert resized_size(720, 1280, 256) == (256, 455)
    assert resized_size(455, 256, 256) == (455, 256)
    boxes = boxes_to_input_pixels([[0.5, 0.5, 1.0, 1.0], [-0.1, -0.1, 0.2, 0.2]], 1280, 720, 256)
    factor = 455 / 1280  # the long side's ratio, for x and y alike (256/720 would differ)
    np.testing.assert_allclose(boxes[0], [640 * factor, 360 * factor, 454, 255], rtol=1e-6)  # 719*factor > 255
    np.testing.assert_allclose(boxes[1], [0, 0, 256 * factor, 144 * factor], rtol=1e-6)
    assert boxes_to_input_pixels(np.zeros((0, 4)), 1280, 720, 256).shape == (0, 4)


def test_rejects_frames_that_are_not_uint8_clips():
    with pytest.raises(ValueError, match="uint8"):
        preprocess_clip(np.zeros((4, 8, 8, 3), np.float32), BOXES, test_size=8, mean=MEAN, std=STD, alpha=4)
    with pytest.raises(ValueError, match="frame 1"):
        preprocess_clip([np.zeros((8, 8, 3), np.uint8), np.zeros((8, 9, 3), np.uint8)], BOXES, test_size=8,
                        mean=MEAN, std=STD, alpha=None)
    with pytest.raises(ValueError, match="3 values"):
        preprocess_clip(np.zeros((4, 8, 8, 3), np.uint8), BOXES, test_size=8, mean=[0.5], std=STD, alpha=4)


def test_clip_from_a_video_gives_the_transform_of_its_frames(tmp_path):
    """End to end: the tensors of a decoded clip equal the reference transform of the frames it names."""
    path = tmp_path / "clip.mov"
    write_index_video(path, 80, size=(96, 64), codec="png", pix_fmt="rgb24")
    clip, = iter_clips(path, [1], num_frames=8, sampling_rate=2)
    frames = np.stack([index_image(i, 96, 64) for i in range(22, 38, 2)])  # grid frame = frame index at 30 fps
    np.testing.assert_array_equal(clip.frames, frames)
    expected, expected_boxes = reference_transform(frames, BOXES, 40, MEAN, STD, 4)
    for frames_argument in (clip.frames, clip.frame_list):  # stacked array or the shared frames
        pathways, boxes_px = preprocess_clip(frames_argument, BOXES, test_size=40, mean=MEAN, std=STD, alpha=4)
        assert all(torch.equal(got, want) for got, want in zip(pathways, expected))
        np.testing.assert_array_equal(boxes_px, expected_boxes)

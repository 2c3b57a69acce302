"""PySlowFast's AVA train transform against hand-computed cases; the draws; the test transform."""
import cv2
import numpy as np
import pytest
import torch

from ava_pipeline.preprocess import preprocess_clip
from ava_pipeline.training.transforms import (PCA_EIGVAL, PCA_EIGVEC, TrainDraw, augmentation_rng,
                                              draw_train_augmentation, inference_transform, train_transform)

MEAN, STD = (0.45, 0.45, 0.45), (0.225, 0.225, 0.225)


def random_frames(count, width, height, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (count, height, width, 3), dtype=np.uint8)


def normalised(image_uint8, *, resized):
    """PySlowFast's ``/ 255`` (float32 after a resize, float64 of uint8 otherwise) then ``(x - mean) / std``."""
    scaled = (image_uint8.astype(np.float32) / np.float32(255.0) if resized
              else (image_uint8 / 255.0).astype(np.float32))
    return (scaled - np.float32(0.45)) / np.float32(0.225)


def test_resize_crop_flip_and_box_arithmetic_by_hand():
    frames = random_frames(4, 40, 30)  # W=40, H=30
    draw = TrainDraw(short_side=20, crop_y=2, crop_x=5, flip=True)
    inputs, boxes = train_transform(frames, [[0.25, 0.5, 0.75, 1.0], [0.9, 0.0, 1.0, 0.1]], draw, crop_size=16,
                                    mean=MEAN, std=STD, alpha=None)
    # short side 30 -> 20, long side floor(40 * 20 / 30) = 26; ONE factor for both axes: 26 / 40 = 0.65.
    # box 1: (10, 15, 30, 30) px -> clipped to y <= 29 -> x0.65 = (6.5, 9.75, 19.5, 18.85) -> crop (-5, -2)
    # = (1.5, 7.75, 14.5, 16.85) -> flip in width 16: x1' = 15 - 14.5, x2' = 15 - 1.5 -> clip y2 to 15.
    # box 2: (36, 0, 39, 3) after clipping x2 to 39 -> (23.4, 0, 25.35, 1.95) -> (18.4, -2, 20.35, -0.05)
    # -> flip (-5.35, -2, -3.4, -0.05) -> clipped to a degenerate box at the corner, kept.
    np.testing.assert_allclose(boxes, [[0.5, 7.75, 13.5, 15.0], [0.0, 0.0, 0.0, 0.0]], rtol=0, atol=1e-5)
    assert boxes.dtype == np.float32
    (fast,) = inputs
    assert fast.shape == (3, 4, 16, 16)
    for t in range(4):
        resized = cv2.resize(frames[t], (26, 20), interpolation=cv2.INTER_LINEAR)
        expected = normalised(resized[2:18, 5:21][:, ::-1], resized=True)
        assert torch.equal(fast[:, t], torch.from_numpy(np.ascontiguousarray(expected.transpose(2, 0, 1))))


def test_no_flip_keeps_the_order_and_portrait_frames_scale_by_the_height_ratio():
    frames = random_frames(2, 30, 40)  # portrait: W=30, H=40
    draw = TrainDraw(short_side=20, crop_y=3, crop_x=1, flip=False)
    inputs, boxes = train_transform(frames, [[0.5, 0.25, 1.0, 0.75]], draw, crop_size=18, mean=MEAN, std=STD,
                                    alpha=None)
    # W 30 -> 20, H floor(40 * 20 / 30) = 26; factor 26 / 40 = 0.65: (15, 10, 29, 30) -> (9.75, 6.5, 18.85,
    # 19.5) -> crop (-1, -3) -> (8.75, 3.5, 17.85, 16.5) -> clip x2 to 17
    np.testing.assert_allclose(boxes, [[8.75, 3.5, 17.0, 16.5]], rtol=0, atol=1e-5)
    resized = cv2.resize(frames[1], (20, 26), interpolation=cv2.INTER_LINEAR)
    expected = normalised(resized[3:21, 1:19], resized=True)
    assert torch.equal(inputs[0][:, 1], torch.from_numpy(np.ascontiguousarray(expected.transpose(2, 0, 1))))


def test_frames_already_at_the_short_side_are_not_resized_and_divided_in_float64():
    frames = random_frames(2, 30, 20)
    draw = TrainDraw(short_side=20, crop_y=0, crop_x=7, flip=False)
    inputs, boxes = train_transform(frames, [[0.5, 0.5, 1.0, 1.0]], draw, crop_size=20, mean=MEAN, std=STD,
                                    alpha=None)
    # no resize, no factor: (15, 10, 29, 19) -> crop x -7 -> (8, 10, 22 -> clipped 19, 19)
    np.testing.assert_allclose(boxes, [[8.0, 10.0, 19.0, 19.0]], rtol=0, atol=1e-6)
    expected = normalised(frames[0][:, 7:27], resized=False)
    assert torch.equal(inputs[0][:, 0], torch.from_numpy(np.ascontiguousarray(expected.transpose(2, 0, 1))))


def test_slow_pathway_takes_linspace_indices_not_every_alpha_th_frame():
    frames = np.stack([np.full((24, 24, 3), 5 * t, np.uint8) for t in range(32)])
    inputs, _ = train_transform(frames, np.zeros((0, 4)), TrainDraw(24, 0, 0, False), crop_size=24, mean=MEAN,
                                std=STD, alpha=4)
    slow, fast = inputs
    assert slow.shape == (3, 8, 24, 24) and fast.shape == (3, 32, 24, 24)
    picked = [int(round((v * 0.225 + 0.45) * 255 / 5)) for v in slow[0, :, 0, 0].tolist()]
    assert picked == [0, 4, 8, 13, 17, 22, 26, 31]


def test_brightness_and_pca_lighting_by_hand():
    frames = random_frames(2, 20, 20, seed=3)
    draw = TrainDraw(20, 0, 0, False, colour_ops=("brightness",), colour_factors=(1.25,), pca_alpha=(0.1, -0.2, 0.05))
    inputs, _ = train_transform(frames, np.zeros((0, 4)), draw, crop_size=20, mean=MEAN, std=STD, alpha=None)
    eigvec, eigval = np.array(PCA_EIGVEC, np.float32), np.array(PCA_EIGVAL, np.float32)
    shift = [sum(float(eigvec[c, j]) * a * float(eigval[j]) for j, a in enumerate((0.1, -0.2, 0.05)))
             for c in range(3)]  # channel c (RGB) gets sum_j eigvec[c, j] * alpha_j * eigval_j
    scaled = (frames[1] / 255.0).astype(np.float32) * 1.25
    expected = (scaled + np.array(shift)).astype(np.float32)
    expected = (expected - np.float32(0.45)) / np.float32(0.225)
    np.testing.assert_allclose(inputs[0][:, 1].permute(1, 2, 0).numpy(), expected, rtol=0, atol=2e-6)


def test_contrast_and_saturation_blend_with_the_grey_image():
    frames = random_frames(1, 8, 8, seed=4)
    x = (frames[0] / 255.0).astype(np.float64)
    grey = 0.299 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2]
    for op, other in (("contrast", np.full_like(x, grey.mean())), ("saturation", np.repeat(grey[..., None], 3, 2))):
        draw = TrainDraw(8, 0, 0, False, colour_ops=(op,), colour_factors=(0.7,))
        inputs, _ = train_transform(frames, np.zeros((0, 4)), draw, crop_size=8, mean=MEAN, std=STD, alpha=None)
        expected = ((x * 0.7 + other * 0.3) - 0.45) / 0.225
        np.testing.assert_allclose(inputs[0][:, 0].permute(1, 2, 0).numpy(), expected, rtol=0, atol=1e-5)


def test_draws_follow_pyslowfast_ranges():
    rng = np.random.default_rng(0)
    draws = [draw_train_augmentation(rng, 40, 30, jitter_scales=(20, 26), crop_size=16) for _ in range(3000)]
    sides = {d.short_side for d in draws}
    assert sides == set(range(20, 27))  # int(round(1 / U(1/26, 1/20)))
    # the new height is the short side s; y0 < s - 16 (exclusive upper bound), and reaches s - 17
    assert all(0 <= d.crop_y < d.short_side - 16 for d in draws)
    assert max(d.crop_y for d in draws if d.short_side == 26) == 26 - 17
    assert {d.flip for d in draws} == {True, False}
    assert not any(d.flip for d in (draw_train_augmentation(rng, 40, 30, jitter_scales=(20, 26), crop_size=16,
                                                            random_flip=False) for _ in range(50)))
    # the frame equals the crop: no crop draw at all; the height equals it: y0 = 0
    square = draw_train_augmentation(rng, 16, 16, jitter_scales=(16, 16), crop_size=16)
    assert (square.short_side, square.crop_y, square.crop_x) == (16, 0, 0)
    wide = [draw_train_augmentation(rng, 40, 16, jitter_scales=(16, 16), crop_size=16) for _ in range(50)]
    assert {d.crop_y for d in wide} == {0} and len({d.crop_x for d in wide}) > 1
    with pytest.raises(ValueError, match="smaller than the crop size"):
        draw_train_augmentation(rng, 40, 30, jitter_scales=(10, 12), crop_size=16)
    colour = draw_train_augmentation(rng, 40, 30, jitter_scales=(20, 26), crop_size=16, colour_jitter=True,
                                     pca_jitter_only=False)
    assert sorted(colour.colour_ops) == ["brightness", "contrast", "saturation"]
    assert all(0.6 <= f <= 1.4 for f in colour.colour_factors) and len(colour.pca_alpha) == 3
    pca_only = draw_train_augmentation(rng, 40, 30, jitter_scales=(20, 26), crop_size=16, colour_jitter=True)
    assert pca_only.colour_ops == () and pca_only.pca_alpha is not None


def test_draws_are_a_pure_function_of_seed_epoch_and_index():
    def draw(seed, epoch, index):
        return draw_train_augmentation(augmentation_rng(seed, epoch, index), 64, 48, jitter_scales=(32, 48),
                                       crop_size=32, colour_jitter=True, pca_jitter_only=False)

    assert draw(3, 1, 7) == draw(3, 1, 7)
    others = {draw(3, 2, 7), draw(3, 1, 8), draw(4, 1, 7)}
    assert draw(3, 1, 7) not in others and len(others) == 3
    state = np.random.get_state()
    draw(0, 0, 0)
    assert all(np.array_equal(a, b) if isinstance(a, np.ndarray) else a == b
               for a, b in zip(state, np.random.get_state()))  # the global RNG is not touched


def test_test_transform_is_the_inference_transform():
    frames = random_frames(8, 40, 30, seed=5)
    boxes = [[0.1, 0.2, 0.6, 0.9]]
    inputs, boxes_px = inference_transform(frames, boxes, test_size=24, mean=MEAN, std=STD, alpha=4)
    reference, reference_boxes = preprocess_clip(frames, boxes, test_size=24, mean=MEAN, std=STD, alpha=4)
    assert [t.shape for t in inputs] == [(3, 2, 24, 32), (3, 8, 24, 32)]
    assert all(torch.equal(a, b[0]) for a, b in zip(inputs, reference))
    np.testing.assert_array_equal(boxes_px, reference_boxes)


def test_pathways_are_written_into_given_tensors_and_the_source_size_rules_the_geometry():
    frames = random_frames(8, 40, 30, seed=3)
    draw = TrainDraw(short_side=20, crop_y=1, crop_x=3, flip=False)
    boxes = [[0.2, 0.1, 0.8, 0.9]]
    expected, expected_boxes = train_transform(frames, boxes, draw, crop_size=16, mean=MEAN, std=STD, alpha=4)
    out = [torch.full((3, 2, 16, 16), -1.0), torch.full((3, 8, 16, 16), -1.0)]
    inputs, boxes_px = train_transform(frames, boxes, draw, crop_size=16, mean=MEAN, std=STD, alpha=4, out=out)
    assert [t.data_ptr() for t in inputs] == [t.data_ptr() for t in out]
    assert all(torch.equal(a, b) for a, b in zip(out, expected)) and np.array_equal(boxes_px, expected_boxes)
    with pytest.raises(ValueError, match=r"out must be contiguous float32 tensors of shapes \[\(3, 2, 16, 16\)"):
        train_transform(frames, boxes, draw, crop_size=16, mean=MEAN, std=STD, alpha=4, out=out[1:])
    with pytest.raises(ValueError, match="out must be contiguous float32"):  # a slow buffer of the wrong length
        train_transform(frames, boxes, draw, crop_size=16, mean=MEAN, std=STD, alpha=4,
                        out=[torch.empty(3, 3, 16, 16), out[1]])
    # frames already at the jittered size of a 80 x 60 source: boxes and arithmetic of the source, no resize
    half = np.stack([cv2.resize(f, (26, 20), interpolation=cv2.INTER_LINEAR) for f in random_frames(8, 80, 60)])
    inputs, boxes_px = train_transform(half, boxes, TrainDraw(short_side=20, crop_y=1, crop_x=3, flip=False),
                                       crop_size=16, mean=MEAN, std=STD, alpha=None, source_size=(80, 60))
    expected = normalised(half[:, 1:17, 3:19], resized=True)  # float32 division: the source was resized
    assert torch.equal(inputs[0], torch.from_numpy(np.ascontiguousarray(expected.transpose(3, 0, 1, 2))))
    # 80 x 60 -> 26 x 20 is a factor 26 / 80 (the source's rule, not 26 / 40 of the given frames)
    np.testing.assert_allclose(boxes_px, [[16 * 26 / 80 - 3, 6 * 26 / 80 - 1, 15, 15]], atol=1e-5)


def test_pyslowfasts_float32_and_float64_divisions_by_255_agree_on_every_uint8_value():
    # why one normalisation table serves resized (float32 division) and unresized (float64) frames alike
    values = np.arange(256, dtype=np.uint8)
    assert np.array_equal(values.astype(np.float32) / np.float32(255.0), (values / 255.0).astype(np.float32))


def test_pca_defaults_are_pyslowfasts_and_the_settings_use_them():
    from ava_pipeline.training.settings import AugmentationSettings

    assert PCA_EIGVAL == (0.225, 0.224, 0.229)  # slowfast/config/defaults.py DATA.TRAIN_PCA_EIGVAL
    assert AugmentationSettings().pca_eigval == PCA_EIGVAL and AugmentationSettings().pca_eigvec == PCA_EIGVEC

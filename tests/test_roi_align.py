"""RoIAlign in plain torch: torchvision's roi_align(sampling_ratio=0) values, on every box shape the head meets."""
import pytest
import torch

from ava_pipeline.models.roi_align import roi_align


def boxes_of_every_kind(seed: int) -> torch.Tensor:
    """(K, 5) [batch_index, x1, y1, x2, y2] for a 3-clip batch of 208x144 input pixels (13x9 feature cells
    at 1/16): random boxes reaching past every edge, plus empty, thin, outside and exactly cell-aligned ones."""
    generator = torch.Generator().manual_seed(seed)
    corner = torch.rand(60, 2, generator=generator) * 260 - 40
    size = torch.rand(60, 2, generator=generator) * 200
    index = (torch.arange(60) % 3).float()[:, None]
    special = torch.tensor([[0, 0, 0, 0, 0], [1, 10, 10, 10, 12], [2, -100, -100, -50, -50], [0, 0, 0, 208, 144],
                            [1, 190, 130, 230, 170], [0, 0, 0, 112, 112], [2, 208, 144, 300, 300]], dtype=torch.float32)
    return torch.cat([torch.cat([index, corner, corner + size], dim=1), special])


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("channels_last", [False, True])
def test_equals_torchvision_roi_align(aligned, channels_last):
    torchvision = pytest.importorskip("torchvision")
    features = torch.randn(3, 5, 9, 13, generator=torch.Generator().manual_seed(1))
    if channels_last:
        features = features.contiguous(memory_format=torch.channels_last)
    boxes = boxes_of_every_kind(seed=2)
    expected = torchvision.ops.roi_align(features, boxes, (7, 7), 1 / 16, sampling_ratio=0, aligned=aligned)
    got = roi_align(features, boxes, 7, 1 / 16, aligned=aligned)
    assert got.shape == expected.shape == (len(boxes), 5, 7, 7)
    assert (got - expected).abs().max().item() < 1e-5
    assert got.abs().max().item() > 1.0  # the comparison is not between two zero tensors


def test_one_cell_per_bin_reads_the_cells_and_outside_boxes_read_zeros():
    features = torch.arange(2 * 8 * 8, dtype=torch.float32).view(1, 2, 8, 8)
    # aligned: a 112-pixel box from the origin at 1/16 samples the centres of cells 0..6, one sample per bin
    inside = roi_align(features, torch.tensor([[0.0, 0.0, 0.0, 112.0, 112.0]]), 7, 1 / 16, aligned=True)
    assert torch.equal(inside[0], features[0, :, :7, :7])
    outside = roi_align(features, torch.tensor([[0.0, -400.0, -400.0, -300.0, -300.0]]), 7, 1 / 16, aligned=True)
    assert torch.equal(outside, torch.zeros(1, 2, 7, 7))


def test_keeps_the_dtype_and_gradients_reach_the_features():
    features = torch.randn(2, 4, 6, 6, dtype=torch.float64, requires_grad=True)
    boxes = torch.tensor([[1.0, 8.0, 4.0, 80.0, 90.0]], dtype=torch.float64)
    pooled = roi_align(features, boxes, 3, 1 / 16, aligned=False)
    assert pooled.dtype == torch.float64 and pooled.shape == (1, 4, 3, 3)
    pooled.sum().backward()
    assert features.grad[1].abs().sum() > 0 and features.grad[0].abs().sum() == 0  # only clip 1 is pooled
    assert roi_align(features.detach().bfloat16(), boxes, 3, 1 / 16, aligned=False).dtype == torch.bfloat16

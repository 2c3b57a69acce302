"""Winograd F(4x4, 3x3) 1x3x3 convolutions: same values as direct convolution, used where the rule says."""
import threading

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ava_pipeline.models import winograd
from ava_pipeline.models.folded import FoldedConv


def channels_last(x):
    return x.contiguous(memory_format=torch.channels_last_3d)


@pytest.mark.parametrize("shape, out_channels, relu, with_bias, dilation", [
    ((2, 5, 3, 9, 13), 7, True, True, 1),     # tiles cut at both edges, batch and frames folded together
    ((1, 4, 1, 8, 8), 6, False, True, 1),     # whole tiles
    ((1, 3, 2, 1, 2), 5, True, False, 1),     # smaller than one tile
    ((1, 16, 2, 16, 29), 16, True, True, 1),  # the res4 shape of R50/R101 at 256x455, fewer channels
    ((1, 16, 2, 16, 29), 8, True, True, 2),   # res5: dilation 2, odd width
    ((2, 4, 1, 11, 7), 5, False, False, 3),   # sides not multiples of the dilation
])
def test_winograd_equals_direct_convolution(shape, out_channels, relu, with_bias, dilation):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=generator)
    weight = torch.randn(out_channels, shape[1], 1, 3, 3, generator=generator)
    bias = torch.randn(out_channels, generator=generator) if with_bias else None
    expected = F.conv3d(x.double(), weight.double(), None if bias is None else bias.double(),
                        padding=(0, dilation, dilation), dilation=(1, dilation, dilation))
    if relu:
        expected = expected.relu()
    got = winograd.conv1x3x3(channels_last(x), winograd.transform_weight(weight), bias, relu, dilation)
    assert got.shape == expected.shape and got.dtype == torch.float32
    assert got.is_contiguous(memory_format=torch.channels_last_3d)
    assert (got.double() - expected).abs().max().item() < 1e-4 * max(1.0, expected.abs().max().item())


def test_rule_takes_only_wide_stride_one_1x3x3_convolutions():
    assert winograd.applies((256, 256, 1, 3, 3), [1, 1, 1], [0, 1, 1], [1, 1, 1], 1)
    assert not winograd.applies((128, 128, 1, 3, 3), [1, 1, 1], [0, 1, 1], [1, 1, 1], 1)       # too narrow
    assert not winograd.applies((256, 256, 1, 3, 3), [1, 2, 2], [0, 1, 1], [1, 1, 1], 1)       # strided
    assert winograd.applies((512, 512, 1, 3, 3), [1, 1, 1], [0, 2, 2], [1, 2, 2], 1)           # res5, dilated
    assert not winograd.applies((512, 512, 1, 3, 3), [1, 1, 1], [0, 1, 1], [1, 2, 2], 1)       # padding != dilation
    assert not winograd.applies((256, 256, 3, 1, 1), [1, 1, 1], [1, 0, 0], [1, 1, 1], 1)       # temporal
    assert not winograd.applies((256, 256, 1, 3, 3), [1, 1, 1], [0, 1, 1], [1, 1, 1], 32)      # grouped


def test_folded_conv_uses_winograd_for_res4_b_and_gives_the_same_values():
    torch.manual_seed(0)
    conv, bn = nn.Conv3d(256, 256, (1, 3, 3), padding=(0, 1, 1), bias=False), nn.BatchNorm3d(256).eval()
    with torch.no_grad():
        bn.running_mean.uniform_(-0.3, 0.3)
        bn.running_var.uniform_(0.5, 2.0)
    folded = FoldedConv(conv, bn, activation="relu", use_onednn=True)
    direct = FoldedConv(conv, bn, activation="relu", use_onednn=False)
    assert folded.winograd and not direct.winograd
    x = torch.randn(1, 256, 2, 6, 7)
    with torch.inference_mode():
        got, expected = folded(x), direct(x)
        assert (got - expected).abs().max().item() < 1e-4
        # new weights from load_state_dict are transformed again, not served from the cache
        folded.load_state_dict({name: -value if name == "weight" else value
                                for name, value in folded.state_dict().items()})
        flipped = F.relu(F.conv3d(x, -direct.weight, direct.bias, padding=(0, 1, 1)))
        assert (folded(x) - flipped).abs().max().item() < 1e-4


def test_float32_even_when_the_default_dtype_is_float64():
    weight, x = torch.randn(4, 3, 1, 3, 3), channels_last(torch.randn(1, 3, 2, 40, 40))
    results = []

    def run():  # a fresh thread: its workspace is created now, under the float64 default
        results.append(winograd.conv1x3x3(x, winograd.transform_weight(weight), None, False))

    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        thread = threading.Thread(target=run)
        thread.start()
        thread.join()
    finally:
        torch.set_default_dtype(previous)
    assert len(results) == 1, "the convolution raised in its thread"
    got = results[0]
    assert got.dtype == torch.float32
    assert (got - F.conv3d(x, weight, padding=(0, 1, 1))).abs().max().item() < 1e-4


def test_workspace_serves_calls_inside_and_outside_inference_mode():
    weight, x = torch.randn(4, 3, 1, 3, 3), channels_last(torch.randn(1, 3, 2, 5, 6))
    transformed = winograd.transform_weight(weight)
    results = []

    def run():  # a fresh thread: its workspace is created by the call inside inference mode
        with torch.inference_mode():
            results.append(winograd.conv1x3x3(x, transformed, None, False))
        results.append(winograd.conv1x3x3(x, transformed, None, False))

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert len(results) == 2, "a convolution raised in its thread"
    assert torch.equal(results[0], results[1])

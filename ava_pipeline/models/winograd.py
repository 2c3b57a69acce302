"""Winograd F(4x4, 3x3): the fast path's 1x3x3 convolutions with 2.25x fewer multiplications (CPU float32).

A 1x3x3 convolution (stride 1, padding 1) of each frame is computed on 6x6 input tiles taken every 4
pixels; with spatial dilation r (and padding r, as in res5 of the AVA models) on each of the r*r phase
images ``image[y % r, x % r]``, which a dilated convolution never mixes. Per tile and channel pair, with
the 3x3 kernel ``g`` and the 6x6 input tile ``t``::

    Y (4x4) = A^T [ (G g G^T)  *  (B^T t B) ] A        (* elementwise, summed over input channels)

so the channel sums become 36 independent GEMMs ``(tiles, C_in) x (C_in, C_out)``, one per tile element
(Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2016; interpolation points 0, +-1, +-2).
The transforms are applied as small matrix products: the 2-D transform of a tile is its flattened 36 values
times ``kron(B^T, B^T)``. Kernel transforms are computed in float64. Rounding differs from direct convolution
by about 1e-5 relative per layer; end to end the R101 probabilities move by less than 2e-7.

Worth it where the GEMMs are large: on the 2-core development machine a 256-channel layer at 8x16x29 runs
about 1.4x faster than oneDNN's direct convolution and a 512-channel one 1.9x; at 128 channels the two tie,
at 64 Winograd is slower.
"""
import itertools
import math
import threading
from typing import Optional

import torch

_B_T = torch.tensor([[4, 0, -5, 0, 1, 0],
                     [0, -4, -4, 1, 1, 0],
                     [0, 4, -4, -1, 1, 0],
                     [0, -2, -1, 2, 1, 0],
                     [0, 2, -1, -2, 1, 0],
                     [0, 4, 0, -5, 0, 1]], dtype=torch.float64)
_G = torch.tensor([[1 / 4, 0, 0],
                   [-1 / 6, -1 / 6, -1 / 6],
                   [-1 / 6, 1 / 6, -1 / 6],
                   [1 / 24, 1 / 12, 1 / 6],
                   [1 / 24, -1 / 12, 1 / 6],
                   [0, 0, 1]], dtype=torch.float64)
_A_T = torch.tensor([[1, 1, 1, 1, 1, 0],
                     [0, 1, -1, 2, -2, 0],
                     [0, 1, 1, 4, 4, 0],
                     [0, 1, -1, 8, -8, 1]], dtype=torch.float64)
_INPUT_TRANSFORM = torch.kron(_B_T, _B_T).float()    # (36, 36): flattened tile -> transformed tile
_OUTPUT_TRANSFORM = torch.kron(_A_T, _A_T).float()   # (16, 36): transformed product -> flattened 4x4 output

TILE, STEP = 6, 4
MIN_CHANNELS = 256
"""Smallest input and output channel count for which the fast path uses Winograd (see the module docstring)."""


def applies(weight_shape, stride, padding, dilation, groups) -> bool:
    """Whether a convolution with these settings is a 1x3x3 convolution (spatial padding = dilation, e.g. 1
    or res5's 2) worth computing with Winograd."""
    out_channels, in_channels = weight_shape[0], weight_shape[1]
    spatial_dilation = list(dilation)[1]
    return (tuple(weight_shape[2:]) == (1, 3, 3) and list(stride) == [1, 1, 1] and list(dilation)[0] == 1
            and list(dilation)[2] == spatial_dilation and list(padding) == [0, spatial_dilation, spatial_dilation]
            and groups == 1 and min(in_channels, out_channels) >= MIN_CHANNELS)


@torch.no_grad()
def transform_weight(weight: torch.Tensor) -> torch.Tensor:
    """(C_out, C_in, 1, 3, 3) kernels -> (36, C_in, C_out) float32 ``G g G^T``, computed in float64."""
    kernels = weight[:, :, 0].double()
    transformed = torch.einsum("ai,oqij,bj->abqo", _G, kernels, _G)
    return transformed.reshape(36, kernels.shape[1], kernels.shape[0]).float().contiguous()


def conv1x3x3(x: torch.Tensor, transformed_weight: torch.Tensor, bias: Optional[torch.Tensor], relu: bool,
              dilation: int = 1) -> torch.Tensor:
    """``relu?(conv3d(x, w, bias, padding=(0, d, d), dilation=(1, d, d)))`` for ``transformed_weight =
    transform_weight(w)``; ``d = dilation``.

    ``x`` (N, C_in, T, H, W) float32 channels-last 3D -> (N, C_out, T, H, W) float32 channels-last 3D.
    A dilated convolution is d*d plain ones: the pixels of each phase ``(y % d, x % d)`` only meet each other.
    """
    n, channels, frames, height, width = x.shape
    out_channels = transformed_weight.shape[2]
    d = dilation
    phase_height, phase_width = -(-height // d), -(-width // d)
    rows, columns = -(-phase_height // STEP), -(-phase_width // STEP)  # output tiles per phase image
    images = n * frames * d * d
    tiles = images * rows * columns
    padded, tile_values, transformed, products, outputs = _workspace(
        # zero border of one pixel before, enough after for whole tiles; phases side by side in dim 1
        padded=(n * frames, d * d, STEP * rows + 2, STEP * columns + 2, channels),
        tile_values=(TILE * TILE, tiles * channels), transformed=(TILE * TILE, tiles, channels),
        products=(TILE * TILE, tiles, out_channels), outputs=(STEP * STEP, tiles * out_channels))
    source = x.permute(0, 2, 3, 4, 1).reshape(n * frames, height, width, channels)  # (NT, H, W, C) view
    for phase, (dy, dx) in enumerate(itertools.product(range(d), repeat=2)):
        part = source[:, dy::d, dx::d]
        padded[:, phase, 1:part.shape[1] + 1, 1:part.shape[2] + 1].copy_(part)
    windows = padded.view(images, *padded.shape[2:]).unfold(1, TILE, STEP).unfold(2, TILE, STEP)
    tile_values.view(TILE, TILE, images, rows, columns, channels).copy_(windows.permute(4, 5, 0, 1, 2, 3))
    torch.mm(_INPUT_TRANSFORM, tile_values, out=transformed.view(TILE * TILE, -1))
    torch.bmm(transformed, transformed_weight, out=products)
    torch.mm(_OUTPUT_TRANSFORM, products.view(TILE * TILE, -1), out=outputs)
    blocks = outputs.view(STEP, STEP, n * frames, d * d, rows, columns, out_channels).permute(2, 3, 4, 0, 5, 1, 6)
    blocks = blocks.reshape(n * frames, d * d, STEP * rows, STEP * columns, out_channels)
    y = torch.empty((n, frames, height, width, out_channels), dtype=x.dtype)
    destination = y.view(n * frames, height, width, out_channels)
    for phase, (dy, dx) in enumerate(itertools.product(range(d), repeat=2)):
        part = destination[:, dy::d, dx::d]
        values = blocks[:, phase, :part.shape[1], :part.shape[2]]
        if bias is None:
            part.copy_(values)
        else:
            torch.add(values, bias, out=part)
    if relu:
        y.relu_()
    return y.permute(0, 4, 1, 2, 3)


_per_thread = threading.local()


def _workspace(*, padded, tile_values, transformed, products, outputs) -> list[torch.Tensor]:
    """float32 scratch tensors of these shapes, ``padded`` zero-filled, as views of one buffer per thread.

    The buffer grows to the largest layer (tens of MB per clip in a batch at 256x455) and is kept for the
    thread's life, reused by every call: freshly allocated, these tensors cost page faults on every call,
    which took a third of Winograd's gain in a full forward. ``products`` shares memory with
    ``tile_values`` and ``outputs`` with ``transformed`` (each pair is never live together).
    """
    shapes = {"padded": padded, "tile_values": tile_values, "transformed": transformed, "products": products,
              "outputs": outputs}
    sizes = {name: math.prod(shape) for name, shape in shapes.items()}
    first = max(sizes["tile_values"], sizes["products"])
    second = max(sizes["transformed"], sizes["outputs"])
    buffer = getattr(_per_thread, "buffer", None)
    if buffer is None or buffer.numel() < first + second + sizes["padded"]:
        with torch.inference_mode(False):  # a normal tensor: writable inside and outside inference mode
            buffer = _per_thread.buffer = torch.empty(first + second + sizes["padded"], dtype=torch.float32)
    offsets = {"tile_values": 0, "products": 0, "transformed": first, "outputs": first,
               "padded": first + second}
    views = {name: buffer[offsets[name]:offsets[name] + sizes[name]].view(shape) for name, shape in shapes.items()}
    views["padded"].zero_()
    return [views[name] for name in ("padded", "tile_values", "transformed", "products", "outputs")]

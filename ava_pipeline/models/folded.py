"""Convolutions with their norm folded in and their post-ops fused: the building blocks of both fast paths.

:class:`FoldedConv` is a Conv2d or Conv3d whose norm (a BatchNorm in eval mode, or torchvision's
FrozenBatchNorm2d) is folded into its weight and bias, followed by an optional residual addition and activation.
On CPU in float32 (``use_onednn``) the whole expression is one oneDNN primitive on channels-last activations,
with the weight reordered once per input shape into oneDNN's blocked layout; wide 1x3x3 3-D convolutions run as
Winograd F(4x4, 3x3) (:mod:`ava_pipeline.models.winograd`). Elsewhere it is ``F.conv2d`` / ``F.conv3d`` followed
by the add and the activation. :class:`FusedBottleneck` is a ResNet bottleneck made of three of them.

Used by the action model's fast path (:mod:`ava_pipeline.models.inference`, 3-D) and the person detector's
(:mod:`ava_pipeline.detector.fast`, 2-D).
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ava_pipeline.errors import ConfigError
from ava_pipeline.models import winograd

ACTIVATIONS = ("none", "relu", "hardswish")
"""Activations a :class:`FoldedConv` fuses (oneDNN post-op names)."""
MAX_PACKED_SHAPES = 8
"""Input shapes per convolution whose packed weight is kept (the detector's RPN head sees 5 FPN levels)."""


@torch.no_grad()
def fold_batchnorm(conv: nn.Module, bn: Optional[nn.Module]) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Weight and bias of ``bn(conv(x))`` as one convolution (folded in float64, returned in conv's dtype).

    ``conv``: a Conv2d or Conv3d; ``bn``: a BatchNorm in eval mode or torchvision's FrozenBatchNorm2d (both keep
    weight, bias, running_mean, running_var, eps), or None (the convolution's own weight and bias, copied).
    ``w' = w * gamma / sqrt(var + eps)`` per output channel, ``b' = beta + (b - mean) * gamma / sqrt(var + eps)``.
    """
    if bn is None:
        return conv.weight.detach().clone(), None if conv.bias is None else conv.bias.detach().clone()
    dtype = conv.weight.dtype
    scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
    weight = conv.weight.double() * scale.view(-1, *[1] * (conv.weight.dim() - 1))
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
    bias = bn.bias.double() + (bias - bn.running_mean.double()) * scale
    return weight.to(dtype), bias.to(dtype)


class FoldedConv(nn.Module):
    """A Conv2d / Conv3d (norm folded in) with an optional fused residual addition and activation.

    ``forward(x, residual=None)`` computes ``act(conv(x) + residual?)`` for ``x`` (N, C_in, H, W) or (N, C_in,
    T, H, W) float; ``residual`` has the output's shape; ``activation`` is one of :data:`ACTIVATIONS`. The output
    is channels-last (2-D or 3-D). With ``use_onednn`` (for float32), on CPU inputs the expression is one oneDNN
    primitive that accumulates into ``residual`` in place (its values are overwritten with the output); on other
    devices (the module moved there) it is the plain convolution.
    """

    def __init__(self, conv: nn.Module, norm: Optional[nn.Module], *, activation: str = "none", use_onednn: bool):
        super().__init__()
        if not isinstance(conv, (nn.Conv2d, nn.Conv3d)):
            raise ConfigError(f"FoldedConv: expected a Conv2d or Conv3d, got {type(conv).__name__}")
        if activation not in ACTIVATIONS:
            raise ConfigError(f"FoldedConv: unsupported activation {activation!r}; one of {ACTIVATIONS}")
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ConfigError(f"FoldedConv: padding {conv.padding!r} / {conv.padding_mode!r} is not supported")
        weight, bias = fold_batchnorm(conv, norm)
        # oneDNN reorders an NC(D)HW weight to N(D)HWC on every call for channels-last inputs: store it so.
        self.register_buffer("weight", weight.contiguous(memory_format=_channels_last(weight)))
        self.register_buffer("bias", bias)
        self.stride, self.padding = list(conv.stride), list(conv.padding)
        self.dilation, self.groups = list(conv.dilation), conv.groups
        self.activation, self.use_onednn = activation, use_onednn
        self.winograd = (use_onednn and weight.dim() == 5 and activation != "hardswish"
                         and winograd.applies(weight.shape, self.stride, self.padding, self.dilation, self.groups))
        self._packed: dict = {}  # input shape -> weight in oneDNN's blocked layout for that shape
        self._winograd_weight = None  # winograd.transform_weight(weight), made on first use

    def extra_repr(self) -> str:
        return (f"{self.weight.shape[1] * self.groups}, {self.weight.shape[0]}, kernel={tuple(self.weight.shape[2:])}, "
                f"stride={tuple(self.stride)}, groups={self.groups}, activation={self.activation}, "
                f"onednn={self.use_onednn}, winograd={self.winograd}")

    def forward(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None) -> torch.Tensor:
        memory_format = _channels_last(self.weight)
        x = x.contiguous(memory_format=memory_format)
        onednn = self.use_onednn and x.device.type == "cpu"
        if onednn and self.winograd and residual is None:
            if self._winograd_weight is None:
                self._winograd_weight = winograd.transform_weight(self.weight)
            return winograd.conv1x3x3(x, self._winograd_weight, self.bias, self.activation == "relu",
                                      self.dilation[1])
        if onednn:
            weight = self._packed_weight(x.shape)
            if residual is None:
                return torch.ops.mkldnn._convolution_pointwise(
                    x, weight, self.bias, self.padding, self.stride, self.dilation, self.groups, self.activation,
                    [None], "")
            # In place: oneDNN's sum post-op accumulates into the residual's memory (its out-of-place binary
            # post-op reads the residual as a separate source and writes a fresh tensor, 1.3-2.5x slower).
            # oneDNN fuses only a ReLU after the sum.
            y = torch.ops.mkldnn._convolution_pointwise_.binary(
                residual.contiguous(memory_format=memory_format), x, weight, self.bias, self.padding, self.stride,
                self.dilation, self.groups, "add", 1.0, "relu" if self.activation == "relu" else None, [], "")
            return F.hardswish(y, inplace=True) if self.activation == "hardswish" else y
        convolution = F.conv2d if self.weight.dim() == 4 else F.conv3d
        y = convolution(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
        if residual is not None:
            y = y + residual
        if self.activation == "relu":
            return F.relu(y)
        return F.hardswish(y) if self.activation == "hardswish" else y

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_packed"] = {}  # oneDNN's opaque tensors cannot be copied or pickled; repacked on use
        return state

    def _packed_weight(self, input_shape: torch.Size) -> torch.Tensor:
        """The weight reordered once into the blocked layout oneDNN picks for inputs of ``input_shape``
        (otherwise oneDNN reorders it on every call); the last :data:`MAX_PACKED_SHAPES` shapes are kept."""
        packed = self._packed.get(input_shape)
        if packed is None:
            if len(self._packed) >= MAX_PACKED_SHAPES:
                self._packed.clear()
            reorder = (torch._C._nn.mkldnn_reorder_conv2d_weight if self.weight.dim() == 4
                       else torch._C._nn.mkldnn_reorder_conv3d_weight)
            packed = reorder(self.weight.contiguous().to_mkldnn(), self.padding, self.stride, self.dilation,
                             self.groups, list(input_shape))
            self._packed[input_shape] = packed
        return packed

    def _apply(self, fn, *args, **kwargs):
        self._packed, self._winograd_weight = {}, None  # moved or cast: the derived copies are stale
        return super()._apply(fn, *args, **kwargs)

    def _load_from_state_dict(self, *args, **kwargs):
        self._packed, self._winograd_weight = {}, None  # new weights: the derived copies are stale
        super()._load_from_state_dict(*args, **kwargs)


class FusedBottleneck(nn.Module):
    """A ResNet bottleneck ``relu(shortcut(x) + conv3(relu(conv2(relu(conv1(x))))))`` of folded convolutions
    (``conv3`` carries the final ReLU and takes the shortcut as its fused residual).

    ``x`` (N, C_in, [T,] H, W) -> (N, C_out, [T,] H/s, W/s), channels-last. ``shortcut`` is the folded
    projection, or None for the identity; on CPU float32 the output is accumulated into the shortcut's memory,
    so with the identity shortcut ``x`` is overwritten (in a ResNet stage nothing reads a block's input after
    the block; each stage's first block has a projection, so the features a stage hands on survive).
    """

    def __init__(self, conv1: FoldedConv, conv2: FoldedConv, conv3: FoldedConv, shortcut: Optional[FoldedConv]):
        super().__init__()
        self.conv1, self.conv2, self.conv3, self.shortcut = conv1, conv2, conv3, shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.shortcut is None else self.shortcut(x)
        return self.conv3(self.conv2(self.conv1(x)), residual=shortcut)


def _channels_last(tensor: torch.Tensor) -> torch.memory_format:
    """The channels-last memory format of a 4-D (2-D convolution) or 5-D (3-D) tensor."""
    return torch.channels_last if tensor.dim() == 4 else torch.channels_last_3d

"""Inference-only rewrite of torchvision's Faster R-CNN person detectors: same detections, less time.

``optimize_detector(model)`` returns a copy (or, with ``copy=False``, the model itself, rewritten) of a torchvision
``FasterRCNN`` (the models of
:data:`~ava_pipeline.detector.torchvision.TORCHVISION_MODELS`) in which only the heavy compute modules are
replaced; everything else is torchvision's own code, untouched::

    images ─► transform (torchvision: normalise, resize, pad)                     unchanged
           ─► backbone body + FPN ─► features {level: (N, 256, H_l, W_l)}          rewritten
           ─► RPN head (3x3 conv(s) + objectness / box-delta 1x1 convs)            rewritten
           ─► RPN anchors, box decoding, top-k, NMS (torchvision)                  unchanged
           ─► MultiScaleRoIAlign (torchvision) ─► (R, 256, 7, 7)                   unchanged
           ─► box head (v2: four 3x3 convs + FC; v1/MobileNet: two FCs)            rewritten (v2's convs)
           ─► box predictor, per-class decoding, score threshold, NMS, resize back  unchanged

The rewrite, as in the action model's fast path (:mod:`ava_pipeline.models.inference`):

* Every BatchNorm2d (v2) and FrozenBatchNorm2d (v1, MobileNet) is folded into the convolution before it.
* On CPU in float32 the convolutions run through oneDNN on channels-last (NHWC) activations, with the
  following ReLU / Hardswish fused, and in ResNet bottlenecks the residual addition fused too (accumulated in
  place into the shortcut's memory). Each weight is reordered once per input shape into oneDNN's blocked
  layout and kept (the RPN head's convolutions see one shape per FPN level).
* No Winograd here: measured on the 2-core development machine (2 threads, float32), the action model's
  Winograd F(4x4, 3x3) (:mod:`ava_pipeline.models.winograd`) was slower than oneDNN's direct convolution for
  every 256-channel 3x3 shape of these detectors: v2's box head over 1,000 RoIs of 7x7 (1.43 s vs 0.83 s per
  layer; the 7x7 maps waste 15 of 64 tile outputs and the tile copies dominate), the FPN / RPN maps at
  200x360 (2.00 vs 1.59 s), 100x180 (0.57 vs 0.44 s) and 50x90 (0.37 vs 0.11 s). (Heavily loaded machine;
  the ranking was the same for every shape.)
* v2's box-head FC reads the channels-last convolution output directly (its weight is permuted once to
  (H, W, C) order) instead of copying the activations back to (C, H, W) order for ``flatten``.

Numbers: the same as the eager model within float32 rounding. On the tests' random weights (whose box
features are much alike, which magnifies rounding) fast and eager differ by as much as eager torchvision on 1
and on 2 threads: boxes by under 0.01 px, scores by under 1e-4 (``tests/test_detector_fast.py``). Thresholds and
NMS decide differently only where two candidates tie within that rounding.

On other devices, and with ``dtype`` (float16 / bfloat16 autocast, for GPUs), the folded convolutions run as
plain ``F.conv2d`` on channels-last activations; with a ``dtype``, the backbone, RPN head, box head and box
predictor each run under ``torch.autocast`` and hand float32 to torchvision's post-processing (box decoding in
half precision would round pixel coordinates).
"""
from __future__ import annotations

from collections import OrderedDict
from copy import deepcopy
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..models.folded import FoldedConv, FusedBottleneck
from ..models.inference import onednn_usable

CHANNELS_LAST = torch.channels_last
ACTIVATIONS = {nn.ReLU: "relu", nn.Hardswish: "hardswish"}
"""Activations that follow a convolution and run fused into it (oneDNN post-op names)."""

__all__ = ["ChannelsLastLinear", "optimize_detector"]


def _is_norm(module: nn.Module) -> bool:
    from torchvision.ops import FrozenBatchNorm2d

    return isinstance(module, (nn.BatchNorm2d, FrozenBatchNorm2d))


class ChannelsLastLinear(nn.Module):
    """``act(linear(flatten(x)))`` for the FC after v2's box-head convolutions: ``x`` (R, C, H, W) -> (R, out).

    A channels-last ``x`` is read in its memory order, (H, W, C), with the weight's input dimension permuted to
    match once per feature shape (the same products, summed in another order); other inputs are flattened
    as torchvision does.
    """

    def __init__(self, linear: nn.Linear, *, relu: bool):
        super().__init__()
        self.register_buffer("weight", linear.weight.detach().clone())
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())
        self.relu = relu
        self._permuted = (None, None)  # ((C, H, W), weight with its input dimension in (H, W, C) order)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight
        if x.dim() == 4 and x.is_contiguous(memory_format=CHANNELS_LAST) and not x.is_contiguous():
            n, c, h, w = x.shape
            shape, permuted = self._permuted
            if shape != (c, h, w) or permuted.device != weight.device:
                permuted = weight.view(-1, c, h, w).permute(0, 2, 3, 1).reshape(weight.shape[0], -1).contiguous()
                self._permuted = ((c, h, w), permuted)
            x, weight = x.permute(0, 2, 3, 1).reshape(n, -1), permuted
        else:
            x = x.flatten(1)
        y = F.linear(x, weight, self.bias)
        return F.relu_(y) if self.relu else y

    def _apply(self, fn, *args, **kwargs):
        self._permuted = (None, None)
        return super()._apply(fn, *args, **kwargs)


class _Autocast(nn.Module):
    """Runs ``module`` under ``torch.autocast(device type of its inputs, dtype)`` and returns its tensors as
    float32 (a tensor, or a list / tuple / dict of them, as the Faster R-CNN modules take and return)."""

    def __init__(self, module: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.module, self.dtype = module, dtype

    def forward(self, *args):
        with torch.autocast(_first_tensor(args).device.type, dtype=self.dtype):
            return _to_float(self.module(*args))


def _first_tensor(value) -> torch.Tensor:
    """The first tensor in ``value`` (a tensor, or nested lists / tuples / dicts of them)."""
    if isinstance(value, torch.Tensor):
        return value
    items = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else ()
    for item in items:
        found = _first_tensor(item)
        if found is not None:
            return found
    return None


def _to_float(value):
    if isinstance(value, torch.Tensor):
        return value.float()
    if isinstance(value, OrderedDict):
        return OrderedDict((key, _to_float(item)) for key, item in value.items())
    if isinstance(value, dict):
        return {key: _to_float(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_float(item) for item in value)
    return value


# ------------------------------------------------------------------------------------------------ rewriting

def _conv_norm_activation(sequence: nn.Module) -> Optional[tuple]:
    """``(conv, norm or None, activation name)`` when ``sequence`` is a Sequential (e.g. torchvision's
    Conv2dNormActivation) of exactly a Conv2d, optionally a norm, optionally a ReLU / Hardswish."""
    if not isinstance(sequence, nn.Sequential):
        return None
    parts = list(sequence.children())
    if not parts or type(parts[0]) is not nn.Conv2d:
        return None
    conv, rest = parts[0], parts[1:]
    norm = rest.pop(0) if rest and _is_norm(rest[0]) else None
    activation = ACTIVATIONS.get(type(rest.pop(0))) if rest and type(rest[0]) in ACTIVATIONS else "none"
    return (conv, norm, activation) if not rest else None


def _rewrite(module: nn.Module, use_onednn: bool) -> None:
    """Replace, in place, every child of ``module`` that matches a known torchvision pattern."""
    from torchvision.models.resnet import Bottleneck
    from torchvision.ops.misc import SqueezeExcitation

    fold = lambda conv, norm, activation: FoldedConv(conv, norm, activation=activation,  # noqa: E731
                                                     use_onednn=use_onednn)
    children = list(module.named_children())
    stem = ({"conv1", "bn1", "relu", "maxpool"} <= {name for name, _ in children}
            and type(module.conv1) is nn.Conv2d and _is_norm(module.bn1))
    if stem:
        # ResNet stem (torchvision's IntermediateLayerGetter runs the children in order): the norm and the
        # ReLU move into the convolution.
        module.conv1 = fold(module.conv1, module.bn1, "relu")
        module.bn1, module.relu = nn.Identity(), nn.Identity()
    flattened = None
    for name, child in children:
        if stem and name in ("conv1", "bn1", "relu"):
            continue
        pattern = _conv_norm_activation(child)
        if isinstance(child, Bottleneck):
            downsample = _conv_norm_activation(child.downsample) if child.downsample is not None else None
            if child.downsample is not None and downsample is None:
                raise ConfigError("optimize_detector: a Bottleneck's downsample is not conv + norm")
            setattr(module, name, FusedBottleneck(fold(child.conv1, child.bn1, "relu"),
                                                  fold(child.conv2, child.bn2, "relu"),
                                                  fold(child.conv3, child.bn3, "relu"),
                                                  None if downsample is None else fold(*downsample)))
        elif pattern is not None:
            setattr(module, name, fold(*pattern))
        elif type(child) is nn.Conv2d:  # e.g. the RPN head's objectness and box-delta convolutions
            setattr(module, name, fold(child, None, "none"))
        elif isinstance(child, nn.Flatten) and isinstance(module, nn.Sequential):
            flattened = name  # v2 box head: Flatten, Linear, ReLU at the end of the Sequential
        elif isinstance(child, SqueezeExcitation):
            continue  # MobileNet's squeeze-excitation works on (N, C, 1, 1): nothing to gain
        else:
            _rewrite(child, use_onednn)
    if flattened is not None:
        _fuse_flatten_linear(module, flattened)


def _fuse_flatten_linear(sequence: nn.Sequential, flatten_name: str) -> None:
    """Flatten, Linear[, ReLU] in ``sequence`` -> Identity, ChannelsLastLinear, Identity."""
    names = [name for name, _ in sequence.named_children()]
    position = names.index(flatten_name)
    following = [getattr(sequence, name) for name in names[position + 1:position + 3]]
    if not following or type(following[0]) is not nn.Linear:
        return
    relu = len(following) > 1 and type(following[1]) is nn.ReLU
    setattr(sequence, flatten_name, nn.Identity())
    setattr(sequence, names[position + 1], ChannelsLastLinear(following[0], relu=relu))
    if relu:
        setattr(sequence, names[position + 2], nn.Identity())


def optimize_detector(model: nn.Module, *, device="cpu", dtype: Optional[torch.dtype] = None,
                      copy: bool = True) -> nn.Module:
    """A faster inference copy of a torchvision ``FasterRCNN`` (see the module docstring).

    ``model`` is left untouched (the rewrite works on a deep copy, in eval mode) unless ``copy=False``, which
    rewrites ``model`` itself (no second set of weights; the eager model is gone); its thresholds
    (``roi_heads.score_thresh`` ...) and transform are kept as they are. ``device`` is where the copy runs (it may
    be moved later: the oneDNN path then applies on CPU only); ``dtype`` (``torch.float16`` / ``torch.bfloat16``)
    runs the heavy modules under autocast, ``None`` keeps float32, which on CPU uses the fused oneDNN path. The
    copy is called like the model:
    ``copy(list of (3, H, W) float [0, 1] images) -> list of {"boxes" (K, 4) x1, y1, x2, y2 original pixels,
    "labels" (K,), "scores" (K,)}`` (call it under ``torch.inference_mode``). Raises ``ConfigError`` for a
    structure it does not know (a norm it cannot fold).
    """
    device = torch.device(device)
    if dtype not in (None, torch.float32, torch.float16, torch.bfloat16):
        raise ConfigError(f"optimize_detector: dtype={dtype} is not supported; "
                          "use None (float32), torch.float16 or torch.bfloat16")
    dtype = None if dtype == torch.float32 else dtype
    for part in ("backbone", "rpn", "roi_heads", "transform"):
        if not isinstance(getattr(model, part, None), nn.Module):
            raise ConfigError(f"optimize_detector: expected a torchvision FasterRCNN, got {type(model).__name__} "
                              f"without .{part}")
    use_onednn = device.type == "cpu" and dtype is None and onednn_usable()
    fast = (deepcopy(model) if copy else model).eval()
    for part in (fast.backbone, fast.rpn.head, fast.roi_heads.box_head):
        _rewrite(part, use_onednn)
    unfolded = [name for name, m in fast.named_modules() if _is_norm(m)]
    if unfolded:
        raise ConfigError(f"optimize_detector: cannot fold norm layer(s) {', '.join(unfolded[:5])} (not after a "
                          "known torchvision convolution); use the eager model (fast=False)")
    for p in fast.parameters():
        p.requires_grad_(False)
    if dtype is not None:
        fast.backbone = _Autocast(fast.backbone, dtype)
        fast.rpn.head = _Autocast(fast.rpn.head, dtype)
        fast.roi_heads.box_head = _Autocast(fast.roi_heads.box_head, dtype)
        fast.roi_heads.box_predictor = _Autocast(fast.roi_heads.box_predictor, dtype)
    return fast.to(device)

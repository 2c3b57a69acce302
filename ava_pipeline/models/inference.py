"""Inference-only rewrite of a SlowFast / Slow-only AVA model: same numbers, less time.

``optimize_for_inference(model)`` returns a model with the same forward, ``([slow, fast], boxes (K,5)) ->
(K, num_classes)`` probabilities, equal within float32 rounding: BatchNorm folded into the convolutions; on CPU
in float32, oneDNN convolutions on channels-last (NDHWC) activations with ReLU and the residual addition fused
(in place), weights packed once per input shape, Winograd F(4x4, 3x3) for wide 1x3x3 convolutions
(``models/winograd.py``) and 2-D stem pools; on other devices and precisions, plain folded convolutions under
autocast. The layer policy and the measurements behind it are in ``docs/internals.md``.
"""
import contextlib
import copy as copy_module
import logging
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ava_pipeline.errors import ConfigError
from ava_pipeline.models.folded import FoldedConv, FusedBottleneck

CHANNELS_LAST = torch.channels_last_3d

log = logging.getLogger(__name__)

__all__ = ["FrameMaxPool", "FusedNonLocal", "InferenceModel", "onednn_usable", "optimize_for_inference"]


class FusedNonLocal(nn.Module):
    """Non-local block ``x + bn(conv_out(attention(x)))`` with ``bn`` folded and the addition fused.

    Dot-product attention divides by the number of pooled positions P; softmax attention scales by
    ``C_inner ** -0.5`` and normalises over P. ``x`` (N, C, T, H, W) -> same shape, channels-last 3D; on CPU
    float32 the output is accumulated into ``x``'s memory (overwritten, as in ``FusedBottleneck``).
    """

    def __init__(self, theta: FoldedConv, phi: FoldedConv, g: FoldedConv, out: FoldedConv,
                 pool: Optional[nn.Module], instantiation: str):
        super().__init__()
        if instantiation not in ("dot_product", "softmax"):
            raise ConfigError(f"non-local instantiation {instantiation!r} is not supported; "
                              "use 'dot_product' or 'softmax'")
        self.theta, self.phi, self.g, self.out = theta, phi, g, out
        self.pool = pool if pool is not None else nn.Identity()
        self.instantiation = instantiation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, t, h, w = x.shape
        theta = self.theta(x)
        pooled = self.pool(x)
        phi, g = self.phi(pooled), self.g(pooled)
        inner = theta.shape[1]
        # Channels-last tensors permuted to (N, T, H, W, C) are contiguous: these are views.
        theta = theta.permute(0, 2, 3, 4, 1).reshape(n, t * h * w, inner)
        phi = phi.permute(0, 2, 3, 4, 1).reshape(n, -1, inner)
        g = g.permute(0, 2, 3, 4, 1).reshape(n, -1, inner)
        affinity = torch.bmm(theta, phi.transpose(1, 2))  # (N, THW, P)
        if self.instantiation == "softmax":
            affinity = torch.softmax(affinity * inner ** -0.5, dim=2)
        else:
            affinity = affinity / affinity.shape[2]
        y = torch.bmm(affinity, g).view(n, t, h, w, inner).permute(0, 4, 1, 2, 3)
        return self.out(y, residual=x)


class FrameMaxPool(nn.Module):
    """A MaxPool3d whose temporal kernel and stride are 1, run as a 2-D max-pool over the N*T frames.

    (N, C, T, H, W) channels-last 3D -> (N, C, T, H', W') channels-last 3D, the same values as the 3-D pool.
    The channels-last tensor viewed as (N*T, C, H, W) is channels-last 2D, where PyTorch's pooling kernel is
    about 3x faster than its 3-D one on the Slow stem's output.
    """

    def __init__(self, pool: nn.MaxPool3d):
        super().__init__()
        self.kernel_size, self.stride, self.padding = (_triple(pool.kernel_size)[1:], _triple(pool.stride)[1:],
                                                       _triple(pool.padding)[1:])
        self.ceil_mode = pool.ceil_mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, t, h, w = x.shape
        frames = x.contiguous(memory_format=CHANNELS_LAST).permute(0, 2, 1, 3, 4).reshape(n * t, c, h, w)
        y = F.max_pool2d(frames, self.kernel_size, self.stride, self.padding, ceil_mode=self.ceil_mode)
        return y.view(n, t, c, y.shape[2], y.shape[3]).permute(0, 2, 1, 3, 4)

    @staticmethod
    def applies_to(pool: nn.Module) -> bool:
        return (isinstance(pool, nn.MaxPool3d) and not pool.return_indices and _triple(pool.dilation) == (1, 1, 1)
                and _triple(pool.kernel_size)[0] == 1 and _triple(pool.stride)[0] == 1
                and _triple(pool.padding)[0] == 0)


def _triple(value) -> tuple:
    """A pooling size given as an int or a 3-sequence, as a 3-tuple."""
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value, value)


class InferenceModel(nn.Module):
    """Runs the rewritten model under ``torch.inference_mode`` (and autocast when a dtype is set).

    ``forward([slow (N,3,T_slow,H,W), fast (N,3,T_fast,H,W)], boxes (K,5) float [batch_index, x1, y1, x2, y2]
    in input pixels) -> (K, num_classes)`` float32 probabilities on ``device`` (``with_features=True``: also
    the head's pooled RoI features, as the eager model).
    """

    def __init__(self, model: nn.Module, *, device: torch.device, dtype: Optional[torch.dtype]):
        super().__init__()
        self.model, self.device, self.dtype = model, device, dtype

    def forward(self, inputs: list[torch.Tensor], boxes: torch.Tensor, *, with_features: bool = False):
        """With ``with_features`` returns ``(probabilities, pooled RoI features (K, sum C_p))``, both float32."""
        autocast = (torch.autocast(self.device.type, dtype=self.dtype) if self.dtype is not None
                    else contextlib.nullcontext())
        with torch.inference_mode(), autocast:
            inputs = [x.to(self.device, non_blocking=True).contiguous(memory_format=CHANNELS_LAST) for x in inputs]
            outputs = self.model(inputs, boxes.to(self.device, non_blocking=True), with_features=with_features)
            return tuple(x.float() for x in outputs) if with_features else outputs.float()


def _has(module: nn.Module, *names: str) -> bool:
    return all(isinstance(getattr(module, name, None), nn.Module) for name in names)


def _fold(conv: nn.Module, bn: Optional[nn.Module], name: str, *, relu: bool, use_onednn: bool) -> FoldedConv:
    if not isinstance(conv, nn.Conv3d) or not (bn is None or isinstance(bn, nn.BatchNorm3d)):
        raise ConfigError(f"optimize_for_inference: {name} is {type(conv).__name__} + {type(bn).__name__}, "
                          "expected Conv3d + BatchNorm3d (PySlowFast structure); use the eager model instead")
    return FoldedConv(conv, bn, activation="relu" if relu else "none", use_onednn=use_onednn)


def _rewrite(module: nn.Module, prefix: str, use_onednn: bool) -> None:
    """Replace, in place, every child of ``module`` that matches a known PySlowFast pattern."""
    for child_name, child in list(module.named_children()):
        name = f"{prefix}{child_name}"
        if _has(child, "branch2") and _has(child.branch2, "a", "a_bn", "b", "b_bn", "c", "c_bn"):
            branch2 = child.branch2
            shortcut = (_fold(child.branch1, child.branch1_bn, f"{name}.branch1", relu=False, use_onednn=use_onednn)
                        if _has(child, "branch1") else None)
            setattr(module, child_name, FusedBottleneck(
                _fold(branch2.a, branch2.a_bn, f"{name}.branch2.a", relu=True, use_onednn=use_onednn),
                _fold(branch2.b, branch2.b_bn, f"{name}.branch2.b", relu=True, use_onednn=use_onednn),
                _fold(branch2.c, branch2.c_bn, f"{name}.branch2.c", relu=True, use_onednn=use_onednn),
                shortcut))
        elif _has(child, "conv_theta", "conv_phi", "conv_g", "conv_out", "bn"):
            setattr(module, child_name, FusedNonLocal(
                _fold(child.conv_theta, None, f"{name}.conv_theta", relu=False, use_onednn=use_onednn),
                _fold(child.conv_phi, None, f"{name}.conv_phi", relu=False, use_onednn=use_onednn),
                _fold(child.conv_g, None, f"{name}.conv_g", relu=False, use_onednn=use_onednn),
                _fold(child.conv_out, child.bn, f"{name}.conv_out", relu=False, use_onednn=use_onednn),
                getattr(child, "pool", None), getattr(child, "instantiation", "dot_product")))
        elif _has(child, "bn", "relu") and (_has(child, "conv") or _has(child, "conv_f2s")):
            # Stem (conv -> bn -> relu -> pool) and fusion (conv_f2s -> bn -> relu): the ReLU moves into the conv.
            conv_name = "conv" if _has(child, "conv") else "conv_f2s"
            setattr(child, conv_name, _fold(getattr(child, conv_name), child.bn, f"{name}.{conv_name}",
                                            relu=True, use_onednn=use_onednn))
            child.bn, child.relu = nn.Identity(), nn.Identity()
            if use_onednn and FrameMaxPool.applies_to(getattr(child, "pool_layer", None)):
                child.pool_layer = FrameMaxPool(child.pool_layer)
        else:
            _rewrite(child, f"{name}.", use_onednn)


_onednn_usable: Optional[bool] = None  # onednn_usable()'s answer, once per process


def onednn_usable() -> bool:
    """Whether this torch has the private oneDNN ops ``FoldedConv`` calls on CPU float32 and they give
    ``F.conv3d``'s values on a tiny case (with ReLU, with and without the in-place residual).

    Probed once per process. When they are missing or differ, one warning is logged and the fast paths (this
    one, and the person detector's in ``detector/fast.py``) run plain ``F.conv3d`` / ``F.conv2d`` instead
    (norms still folded; no Winograd).
    """
    global _onednn_usable
    if _onednn_usable is None:
        problem = _onednn_problem()
        if problem:
            log.warning("fast inference path: torch %s %s; using F.conv3d instead of oneDNN (slower on CPU, "
                        "same values)", torch.__version__, problem)
        _onednn_usable = problem is None
    return _onednn_usable


@torch.no_grad()
def _onednn_problem() -> Optional[str]:
    """None when the oneDNN path equals the plain path on a tiny convolution, else what went wrong."""
    if not torch.backends.mkldnn.is_available():
        return "is built without oneDNN"
    generator = torch.Generator().manual_seed(0)
    conv = nn.Conv3d(3, 4, (1, 3, 3), padding=(0, 1, 1))
    for tensor in conv.parameters():
        tensor.copy_(torch.randn(tensor.shape, generator=generator))
    x = torch.randn(1, 3, 2, 5, 6, generator=generator)
    residual = torch.randn(1, 4, 2, 5, 6, generator=generator).contiguous(memory_format=CHANNELS_LAST)
    onednn = FoldedConv(conv, None, activation="relu", use_onednn=True)
    plain = FoldedConv(conv, None, activation="relu", use_onednn=False)
    try:
        got = [onednn(x), onednn(x, residual=residual.clone())]
    except Exception as error:  # a private op renamed, removed or with another signature
        return f"cannot run the private oneDNN convolution ops ({type(error).__name__}: {error})"
    expected = [plain(x), plain(x, residual=residual.clone())]
    if not all(a.shape == b.shape and torch.allclose(a, b, rtol=1e-4, atol=1e-5) for a, b in zip(got, expected)):
        return "gives other values from the private oneDNN convolution ops than from F.conv3d"
    return None


def optimize_for_inference(model: nn.Module, *, device: str | torch.device = "cpu",
                           dtype: Optional[torch.dtype] = None, copy: bool = True) -> InferenceModel:
    """A faster inference copy of a PySlowFast-structured SlowFast / Slow-only AVA model.

    ``model`` is left untouched (the rewrite works on a deep copy, put in eval mode) unless ``copy=False``, which
    rewrites ``model`` itself (it is then only usable through the result: no second copy of the weights).
    The result keeps ``model.config`` and ``model.weights_sha256`` when those exist. ``device`` is where the
    copy runs; ``dtype`` (``torch.float16`` / ``torch.bfloat16``) enables autocast, ``None`` keeps float32,
    which on CPU uses the fused oneDNN path (when ``onednn_usable()``; else ``F.conv3d``). Returns an
    ``InferenceModel`` with the model's forward signature ``([slow, fast], boxes (K,5)) -> (K, num_classes)``;
    its float32 CPU outputs equal the eager model's within float32 rounding. Raises ``ConfigError`` when a
    BatchNorm3d cannot be folded (unknown structure).
    """
    device = torch.device(device)
    if dtype not in (None, torch.float32, torch.float16, torch.bfloat16):
        raise ConfigError(f"optimize_for_inference: dtype={dtype} is not supported; "
                          "use None (float32), torch.float16 or torch.bfloat16")
    dtype = None if dtype == torch.float32 else dtype
    use_onednn = device.type == "cpu" and dtype is None and onednn_usable()
    fast = (copy_module.deepcopy(model) if copy else model).eval()
    _rewrite(fast, "", use_onednn)
    unfolded = [name for name, m in fast.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if unfolded:
        raise ConfigError(f"optimize_for_inference: cannot fold BatchNorm layer(s) {', '.join(unfolded[:5])} "
                          "(not after a known PySlowFast convolution); use the eager model instead")
    for p in fast.parameters():
        p.requires_grad_(False)
    result = InferenceModel(fast.to(device), device=device, dtype=dtype)
    for name in ("config", "weights_sha256"):
        if hasattr(model, name):
            setattr(result, name, getattr(model, name))
    return result

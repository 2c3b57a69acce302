"""Analytic FLOP count of a model's forward: 2 x multiply-accumulates of every Conv3d, Linear and the
non-local attention matrix products, read from the shapes seen by forward hooks in one forward pass.

Element-wise work (BatchNorm, ReLU, additions, pooling, RoIAlign) is not counted, as is the convention for
the GFLOPs quoted for SlowFast models, so ``flops / seconds`` is the rate of the matrix arithmetic.
"""
from dataclasses import dataclass, field
from math import prod

import torch
from torch import nn


@dataclass
class FlopCount:
    """FLOPs (2 x MACs) of one forward pass, in total and per kind of layer (``"Conv3d"``, ``"Linear"``,
    ``"non-local matmul"``)."""

    total: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)

    def add(self, kind: str, flops: int) -> None:
        self.total += flops
        self.by_kind[kind] = self.by_kind.get(kind, 0) + flops


def _is_nonlocal(module: nn.Module) -> bool:
    return all(isinstance(getattr(module, name, None), nn.Conv3d) for name in ("conv_theta", "conv_phi", "conv_g"))


def count_flops(model: nn.Module, *inputs) -> FlopCount:
    """Run ``model(*inputs)`` once under ``torch.inference_mode`` and count its FLOPs analytically.

    Conv3d: ``2 * out.numel() * (C_in / groups) * kT * kH * kW``; Linear: ``2 * out.numel() * in_features``;
    non-local block (``conv_theta``/``conv_phi``/``conv_g``): its two attention products
    ``2 * 2 * N * (T*H*W) * P * C_inner`` with P the pooled positions. Biases are not counted.
    """
    count = FlopCount()
    output_shapes: dict[nn.Module, torch.Size] = {}
    nonlocal_blocks = [m for m in model.modules() if _is_nonlocal(m)]
    watched = {m for block in nonlocal_blocks for m in (block.conv_theta, block.conv_phi)}

    def on_conv(module: nn.Conv3d, args, output: torch.Tensor) -> None:
        count.add("Conv3d", 2 * output.numel() * (module.in_channels // module.groups) * prod(module.kernel_size))
        if module in watched:
            output_shapes[module] = output.shape

    def on_linear(module: nn.Linear, args, output: torch.Tensor) -> None:
        count.add("Linear", 2 * output.numel() * module.in_features)

    def on_nonlocal(module: nn.Module, args, output: torch.Tensor) -> None:
        theta, phi = output_shapes[module.conv_theta], output_shapes[module.conv_phi]
        batch, inner = theta[0], theta[1]
        count.add("non-local matmul", 2 * 2 * batch * prod(theta[2:]) * prod(phi[2:]) * inner)

    handles = []
    for module in model.modules():
        if isinstance(module, nn.Conv3d):
            handles.append(module.register_forward_hook(on_conv))
        elif isinstance(module, nn.Linear):
            handles.append(module.register_forward_hook(on_linear))
    handles += [block.register_forward_hook(on_nonlocal) for block in nonlocal_blocks]
    try:
        with torch.inference_mode():
            model(*inputs)
    finally:
        for handle in handles:
            handle.remove()
    return count

"""SlowFast and Slow-only 3D ResNets (R50 / R101) with the AVA RoI head, laid out like PySlowFast.

Module and attribute names reproduce PySlowFast's state-dict keys exactly (``s1.pathway0_stem.conv.weight``,
``s1_fuse.conv_f2s.weight``, ``s2.pathway0_res0.branch2.a_bn.running_var``, ``s4.pathway0_nonlocal6.conv_g.bias``,
``head.projection.weight`` ...), so its checkpoints load without renaming. Pathway 0 is Slow, pathway 1 Fast.

Data flow (SlowFast; a Slow-only model has pathway 0 only and no fusions)::

    [slow (N,3,T/alpha,H,W), fast (N,3,T,H,W)]
      s1   stems: conv 7x7 stride 2, max-pool stride 2          -> H/4
      s1_fuse: Fast -> Slow lateral (time-strided conv by alpha), concatenated after the Slow channels
      s2   bottleneck stage (+ s2_fuse)                          -> H/4
      s3   bottleneck stage, stride 2 (+ s3_fuse)                -> H/8
      s4   bottleneck stage, stride 2, optional non-local blocks (+ s4_fuse)  -> H/16
      s5   bottleneck stage, stride 1, dilation 2                -> H/16
      head RoI head (``roi_head.RoIHead``) with boxes (K,5)      -> (K, num_classes) probabilities

Channels with ``w = width_per_group`` and ``beta_inv``: Slow stem w, stages 4w, 8w, 16w, 32w (bottleneck inner
``num_groups * w`` times 1, 2, 4, 8); Fast everything divided by ``beta_inv``; a fusion adds
``fusion_conv_channel_ratio`` times the Fast channels to the Slow input of the next stage. All convolutions are
bias-free except the non-local ones; every BatchNorm has eps 1e-5. PySlowFast's ``pathway{p}_pool`` after
s2 is a 1x1x1 max-pool (the identity, no parameters) for these architectures and is left out.
"""
import torch
from torch import nn

from ava_pipeline.config import BLOCKS_PER_STAGE
from ava_pipeline.errors import ConfigError, InputFormatError
from ava_pipeline.models.roi_head import RoIHead


# Temporal kernel size of the stem and of conv ``a`` in res2..res5, per pathway (PySlowFast's kernel basis).
TEMPORAL_KERNELS = {
    "slowfast": ((1, 5), (1, 3), (1, 3), (3, 3), (3, 3)),
    "slow": ((1,), (1,), (1,), (3,), (3,)),
}

BN_EPS = 1e-5


def _batchnorm(channels: int) -> nn.BatchNorm3d:
    return nn.BatchNorm3d(channels, eps=BN_EPS, momentum=0.1)


class BasicStem(nn.Module):
    """Conv ``[kt,7,7]`` stride ``[1,2,2]`` -> BN -> ReLU -> MaxPool ``[1,3,3]`` stride ``[1,2,2]``.

    (N, C_in, T, H, W) -> (N, C_out, T, ceil(H/4), ceil(W/4)).
    """

    def __init__(self, in_channels: int, out_channels: int, temporal_kernel: int):
        super().__init__()
        self.conv = nn.Conv3d(in_channels, out_channels, (temporal_kernel, 7, 7), stride=(1, 2, 2),
                              padding=(temporal_kernel // 2, 3, 3), bias=False)
        self.bn = _batchnorm(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.pool_layer = nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool_layer(self.relu(self.bn(self.conv(x))))


class PathwayStems(nn.Module):
    """One ``BasicStem`` per pathway (``pathway{p}_stem``); list of tensors in, list out."""

    def __init__(self, in_channels: int, out_channels: tuple[int, ...], temporal_kernels: tuple[int, ...]):
        super().__init__()
        self.num_pathways = len(out_channels)
        for p, (channels, kernel) in enumerate(zip(out_channels, temporal_kernels)):
            self.add_module(f"pathway{p}_stem", BasicStem(in_channels, channels, kernel))

    def forward(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        return [getattr(self, f"pathway{p}_stem")(x) for p, x in enumerate(inputs)]


class FastToSlowFusion(nn.Module):
    """Lateral connection: ``[slow, fast] -> [cat(slow, relu(bn(conv_f2s(fast)))), fast]``.

    ``conv_f2s`` has kernel ``[kernel_size,1,1]`` and temporal stride ``alpha``, so Fast's T frames become
    T/alpha; its ``fast_channels * channel_ratio`` outputs are appended after Slow's channels.
    """

    def __init__(self, fast_channels: int, channel_ratio: int, kernel_size: int, alpha: int):
        super().__init__()
        out_channels = fast_channels * channel_ratio
        self.conv_f2s = nn.Conv3d(fast_channels, out_channels, (kernel_size, 1, 1), stride=(alpha, 1, 1),
                                  padding=(kernel_size // 2, 0, 0), bias=False)
        self.bn = _batchnorm(out_channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        slow, fast = inputs
        fused = self.relu(self.bn(self.conv_f2s(fast)))
        return [torch.cat([slow, fused], dim=1), fast]


class BottleneckTransform(nn.Module):
    """``a`` conv ``[kt,1,1]`` -> BN -> ReLU -> ``b`` conv ``[1,3,3]`` (spatial stride, dilation, groups) -> BN
    -> ReLU -> ``c`` conv 1x1x1 -> BN (no ReLU: it follows the residual addition)."""

    def __init__(self, in_channels: int, out_channels: int, inner_channels: int, temporal_kernel: int,
                 stride: int, dilation: int, num_groups: int):
        super().__init__()
        self.a = nn.Conv3d(in_channels, inner_channels, (temporal_kernel, 1, 1),
                           padding=(temporal_kernel // 2, 0, 0), bias=False)
        self.a_bn = _batchnorm(inner_channels)
        self.a_relu = nn.ReLU(inplace=True)
        self.b = nn.Conv3d(inner_channels, inner_channels, (1, 3, 3), stride=(1, stride, stride),
                           padding=(0, dilation, dilation), dilation=(1, dilation, dilation), groups=num_groups,
                           bias=False)
        self.b_bn = _batchnorm(inner_channels)
        self.b_relu = nn.ReLU(inplace=True)
        self.c = nn.Conv3d(inner_channels, out_channels, 1, bias=False)
        self.c_bn = _batchnorm(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.a_relu(self.a_bn(self.a(x)))
        x = self.b_relu(self.b_bn(self.b(x)))
        return self.c_bn(self.c(x))


class ResBlock(nn.Module):
    """Residual bottleneck block ``relu(shortcut(x) + branch2(x))``.

    The shortcut is a projection (``branch1`` 1x1x1 conv with spatial stride, ``branch1_bn``) when the
    channels or the stride change, else the identity. (N, C_in, T, H, W) -> (N, C_out, T, H/stride, W/stride).
    """

    def __init__(self, in_channels: int, out_channels: int, inner_channels: int, temporal_kernel: int,
                 stride: int, dilation: int, num_groups: int):
        super().__init__()
        if in_channels != out_channels or stride != 1:
            self.branch1 = nn.Conv3d(in_channels, out_channels, 1, stride=(1, stride, stride), bias=False)
            self.branch1_bn = _batchnorm(out_channels)
        self.branch2 = BottleneckTransform(in_channels, out_channels, inner_channels, temporal_kernel, stride,
                                           dilation, num_groups)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.branch1_bn(self.branch1(x)) if hasattr(self, "branch1") else x
        return self.relu(shortcut + self.branch2(x))


class NonLocal(nn.Module):
    """Non-local block (Wang et al. 2018): ``x + bn(conv_out(attention(x)))``, shape-preserving.

    ``theta`` comes from every position of x (N, C, T, H, W); ``phi`` and ``g`` from x max-pooled by ``pool_size``
    (P positions). Affinity ``theta^T phi`` (N, THW, P) is divided by P (``"dot_product"``) or scaled by
    ``inner_channels ** -0.5`` and softmax-normalised over P (``"softmax"``). 1x1x1 convolutions with bias.
    """

    def __init__(self, channels: int, inner_channels: int, pool_size: tuple[int, int, int], instantiation: str):
        super().__init__()
        if instantiation not in ("dot_product", "softmax"):
            raise ConfigError(f"non-local instantiation must be 'dot_product' or 'softmax', got {instantiation!r}")
        self.inner_channels = inner_channels
        self.instantiation = instantiation
        self.conv_theta = nn.Conv3d(channels, inner_channels, 1)
        self.conv_phi = nn.Conv3d(channels, inner_channels, 1)
        self.conv_g = nn.Conv3d(channels, inner_channels, 1)
        self.conv_out = nn.Conv3d(inner_channels, channels, 1)
        self.bn = _batchnorm(channels)
        pooled = any(size > 1 for size in pool_size)
        self.pool = nn.MaxPool3d(pool_size, stride=pool_size) if pooled else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, t, h, w = x.shape
        theta = self.conv_theta(x).view(n, self.inner_channels, -1)
        pooled = self.pool(x)
        phi = self.conv_phi(pooled).view(n, self.inner_channels, -1)
        g = self.conv_g(pooled).view(n, self.inner_channels, -1)
        affinity = torch.einsum("nct,ncp->ntp", theta, phi)
        if self.instantiation == "softmax":
            affinity = torch.softmax(affinity * self.inner_channels ** -0.5, dim=2)
        else:
            affinity = affinity / affinity.shape[2]
        y = torch.einsum("ntp,ncp->nct", affinity, g).view(n, self.inner_channels, t, h, w)
        return x + self.bn(self.conv_out(y))


class ResStage(nn.Module):
    """One ResNet stage for every pathway: blocks ``pathway{p}_res{i}``, each optionally followed by a
    non-local block ``pathway{p}_nonlocal{i}``. All arguments are per pathway (tuples of length P), except
    ``num_blocks``, ``nonlocal_instantiation`` and ``num_groups``.

    Block 0 carries the spatial stride; every block has the stage's dilation; the first
    ``num_block_temp_kernel[p]`` blocks use ``temporal_kernel[p]`` for conv ``a``, the others 1.
    """

    def __init__(self, *, in_channels: tuple[int, ...], out_channels: tuple[int, ...],
                 inner_channels: tuple[int, ...], num_blocks: int, temporal_kernel: tuple[int, ...],
                 num_block_temp_kernel: tuple[int, ...], stride: tuple[int, ...], dilation: tuple[int, ...],
                 nonlocal_after: tuple[tuple[int, ...], ...], nonlocal_pool: tuple[tuple[int, int, int], ...],
                 nonlocal_instantiation: str, num_groups: int):
        super().__init__()
        self.num_pathways = len(in_channels)
        self.num_blocks = num_blocks
        for p in range(self.num_pathways):
            for i in range(num_blocks):
                kernel = temporal_kernel[p] if i < num_block_temp_kernel[p] else 1
                block = ResBlock(in_channels[p] if i == 0 else out_channels[p], out_channels[p], inner_channels[p],
                                 kernel, stride[p] if i == 0 else 1, dilation[p], num_groups)
                self.add_module(f"pathway{p}_res{i}", block)
                if i in nonlocal_after[p]:
                    self.add_module(f"pathway{p}_nonlocal{i}", NonLocal(
                        out_channels[p], out_channels[p] // 2, nonlocal_pool[p], nonlocal_instantiation))

    def forward(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        outputs = []
        for p, x in enumerate(inputs):
            for i in range(self.num_blocks):
                x = getattr(self, f"pathway{p}_res{i}")(x)
                if hasattr(self, f"pathway{p}_nonlocal{i}"):
                    x = getattr(self, f"pathway{p}_nonlocal{i}")(x)
            outputs.append(x)
        return outputs


class SlowFast(nn.Module):
    """SlowFast (``arch="slowfast"``) or Slow-only (``arch="slow"``) ResNet-50/101 with the AVA RoI head.

    ``forward([slow, fast], boxes)``: ``slow`` (N, 3, T/alpha, H, W) and ``fast`` (N, 3, T, H, W) float32,
    normalised RGB (a Slow-only model takes ``[slow]``); ``boxes`` (K, 5) float ``[batch_index, x1, y1, x2, y2]``
    in input pixels. Returns (K, num_classes) float probabilities; column ``c`` is AVA action id ``c + 1``.

    Per-stage arguments have 4 entries (res2..res5) of one value per pathway, as PySlowFast's
    ``NUM_BLOCK_TEMP_KERNEL``, ``SPATIAL_STRIDES``, ``SPATIAL_DILATIONS``, ``NONLOCAL.LOCATION``/``POOL``.
    ``spatial_scale_factor`` is the backbone's total stride (16), so RoIAlign scales boxes by its inverse.
    """

    def __init__(self, *, arch: str, depth: int, alpha: int, beta_inv: int, fusion_conv_channel_ratio: int,
                 fusion_kernel_size: int, width_per_group: int, num_groups: int,
                 num_block_temp_kernel: tuple[tuple[int, ...], ...],
                 spatial_strides: tuple[tuple[int, ...], ...], spatial_dilations: tuple[tuple[int, ...], ...],
                 nonlocal_location: tuple[tuple[tuple[int, ...], ...], ...],
                 nonlocal_pool: tuple[tuple[tuple[int, int, int], ...], ...], nonlocal_instantiation: str,
                 num_classes: int, dropout_rate: float, roi_resolution: int, spatial_scale_factor: int,
                 aligned: bool):
        super().__init__()
        if arch not in TEMPORAL_KERNELS:
            raise ConfigError(f"arch must be one of {sorted(TEMPORAL_KERNELS)}, got {arch!r}")
        if depth not in BLOCKS_PER_STAGE:
            raise ConfigError(f"depth must be one of {sorted(BLOCKS_PER_STAGE)}, got {depth}")
        self.arch = arch
        self.alpha = alpha
        kernels = TEMPORAL_KERNELS[arch]
        self.num_pathways = len(kernels[0])
        divisors = (1, beta_inv)[:self.num_pathways]  # Slow, Fast channel divisors

        def per_pathway(channels: int) -> tuple[int, ...]:
            return tuple(channels // d for d in divisors)

        stem_out = per_pathway(width_per_group)
        self.s1 = PathwayStems(3, stem_out, kernels[0])
        stage_in = stem_out
        inner = num_groups * width_per_group
        for stage in range(4):
            if self.num_pathways == 2:
                fast_in = stage_in[1]
                self.add_module(f"s{stage + 1}_fuse", FastToSlowFusion(fast_in, fusion_conv_channel_ratio,
                                                                 fusion_kernel_size, alpha))
                stage_in = (stage_in[0] + fast_in * fusion_conv_channel_ratio, fast_in)
            stage_out = per_pathway(4 * width_per_group * 2 ** stage)
            self.add_module(f"s{stage + 2}", ResStage(
                in_channels=stage_in, out_channels=stage_out, inner_channels=per_pathway(inner * 2 ** stage),
                num_blocks=BLOCKS_PER_STAGE[depth][stage], temporal_kernel=kernels[stage + 1],
                num_block_temp_kernel=num_block_temp_kernel[stage], stride=spatial_strides[stage],
                dilation=spatial_dilations[stage], nonlocal_after=nonlocal_location[stage],
                nonlocal_pool=nonlocal_pool[stage], nonlocal_instantiation=nonlocal_instantiation,
                num_groups=num_groups))
            stage_in = stage_out
        self.head = RoIHead(in_channels=stage_in, num_classes=num_classes, roi_resolution=roi_resolution,
                            spatial_scale=1.0 / spatial_scale_factor, aligned=aligned, dropout_rate=dropout_rate)

    def forward(self, inputs: list[torch.Tensor], boxes: torch.Tensor, *, with_features: bool = False):
        """See the class docstring: ``([slow, fast] or [slow], boxes (K,5)) -> (K, num_classes)``; with
        ``with_features`` also the head's pooled RoI features (K, sum C_p) (see ``roi_head.RoIHead``)."""
        if len(inputs) != self.num_pathways:
            expected = "[slow, fast]" if self.num_pathways == 2 else "[slow]"
            raise InputFormatError(f"{self.arch} model: expected {expected} input tensors, got {len(inputs)}")
        if self.num_pathways == 2 and inputs[0].shape[2] * self.alpha != inputs[1].shape[2]:
            raise InputFormatError(f"slowfast model: the Slow pathway needs T_fast/alpha frames, got T_slow="
                                   f"{inputs[0].shape[2]}, T_fast={inputs[1].shape[2]}, alpha={self.alpha}")
        x = self.s1(list(inputs))
        for stage in range(1, 5):
            if self.num_pathways == 2:
                x = getattr(self, f"s{stage}_fuse")(x)
            x = getattr(self, f"s{stage + 1}")(x)
        return self.head(x, boxes, with_features=with_features)

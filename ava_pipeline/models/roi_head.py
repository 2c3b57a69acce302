"""The AVA RoI head of SlowFast: per-box action probabilities from the backbone's last feature maps.

Data flow, per pathway p (slow p=0, fast p=1), then joined::

    features[p] (N, C_p, T_p, H/16, W/16)
        -> temporal mean over all T_p            (N, C_p, H/16, W/16)
        -> RoIAlign R x R (boxes, 1/16, aligned) (K, C_p, R, R)
        -> spatial max over the R x R cells      (K, C_p)
    concat over pathways                         (K, sum C_p)      (2048 + 256 = 2304 for SlowFast R50/R101)
                                                 = the pooled RoI features, returned too on request
                                                   (person tracking uses them for appearance)
        -> dropout (identity in eval mode)
        -> projection (Linear)                   (K, num_classes)
        -> sigmoid                               (K, num_classes)  probabilities in [0, 1]

Boxes are ``(K, 5)`` float ``[batch_index, x1, y1, x2, y2]`` in pixels of the network input (the resized
frames), top-left origin; ``batch_index`` selects the clip in the batch. ``aligned`` is RoIAlign's half-pixel
offset: PySlowFast's ``*_SHORT`` configs use ``True``, all of its ``c2/`` configs and released AVA checkpoints
``False``; the same weights give different numbers under the other setting.
"""
import torch
from torch import nn

from ava_pipeline.errors import InputFormatError
from ava_pipeline.models.roi_align import roi_align


class RoIHead(nn.Module):
    """Pools each box from every pathway's features and classifies it (PySlowFast ``ResNetRoIHead``).

    Args:
        in_channels: channels of each pathway's features, e.g. ``(2048, 256)``; ``(2048,)`` for Slow-only.
        num_classes: outputs per box; column ``c`` is AVA action id ``c + 1``.
        roi_resolution: RoIAlign output size R (7 in PySlowFast).
        spatial_scale: feature-map size / input size (``1 / 16``).
        aligned: RoIAlign half-pixel offset (see the module docstring).
        dropout_rate: dropout before the projection (training only); 0 disables it.

    The only parameters are ``projection.weight`` ``(num_classes, sum(in_channels))`` and ``projection.bias``.
    """

    def __init__(self, *, in_channels: tuple[int, ...], num_classes: int, roi_resolution: int,
                 spatial_scale: float, aligned: bool, dropout_rate: float):
        super().__init__()
        self.roi_resolution = roi_resolution
        self.spatial_scale = spatial_scale
        self.aligned = aligned
        self.dropout = nn.Dropout(dropout_rate)
        self.projection = nn.Linear(sum(in_channels), num_classes)
        self.act = nn.Sigmoid()

    def extra_repr(self) -> str:
        return f"roi_resolution={self.roi_resolution}, spatial_scale={self.spatial_scale}, aligned={self.aligned}"

    def forward(self, features: list[torch.Tensor], boxes: torch.Tensor, *, with_features: bool = False):
        """``features[p]`` (N, C_p, T_p, h, w) float; ``boxes`` (K, 5) float ``[batch_index, x1, y1, x2, y2]``
        in input pixels. Returns (K, num_classes) float probabilities; with ``with_features`` the pair
        ``(probabilities, pooled)`` where ``pooled`` (K, sum C_p) are the pooled RoI features the projection
        reads (non-negative after the backbone's ReLU)."""
        if boxes.dim() != 2 or boxes.shape[1] != 5:
            raise InputFormatError(f"RoIHead: boxes must have shape (K, 5) = [batch_index, x1, y1, x2, y2] in "
                                   f"input pixels, got {tuple(boxes.shape)}; prepend the clip index to each box")
        pooled = []
        for x in features:
            x = _temporal_mean(x)
            x = roi_align(x, boxes, self.roi_resolution, self.spatial_scale, aligned=self.aligned)
            pooled.append(x.amax(dim=(2, 3)))
        x = torch.cat(pooled, dim=1)
        probs = self.act(self.projection(self.dropout(x)))
        return (probs, x) if with_features else probs

def _temporal_mean(x: torch.Tensor) -> torch.Tensor:
    """(N, C, T, h, w) -> (N, C, h, w) mean over T. A channels-last 3D input is averaged as its contiguous
    (N, T, h, w, C) view, about 30x faster than ``x.mean(dim=2)`` on it (the result is channels-last 2D)."""
    if x.dim() == 5 and x.is_contiguous(memory_format=torch.channels_last_3d) and not x.is_contiguous():
        return x.permute(0, 2, 3, 4, 1).mean(dim=1).permute(0, 3, 1, 2)
    return x.mean(dim=2)

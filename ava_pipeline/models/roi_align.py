"""RoIAlign in plain torch, with torchvision's ``roi_align(..., sampling_ratio=0)`` semantics.

Each output cell averages ``g_h x g_w`` bilinear samples taken at the centres of a regular grid over its bin
(``g = ceil(box size / resolution)`` per box and axis); a sample more than one cell outside the feature map
counts as 0, one less than that outside is clamped to the border. Bilinear sampling is separable, so the
pooled cells of one box are ``A_y @ features @ A_x^T`` with ``A_y`` (R, h) and ``A_x`` (R, w) the averaged
interpolation weights: a few small matrix products per box, differentiable, on any device, and no
dependency on torchvision's compiled ops (which exist only for the torch build a torchvision wheel was
made for). ONNX export alone goes through torchvision's op, whose symbolic is ONNX ``RoiAlign``.
"""
import torch


def roi_align(features: torch.Tensor, boxes: torch.Tensor, resolution: int, spatial_scale: float, *,
              aligned: bool) -> torch.Tensor:
    """Pool each box from its clip's feature map into ``resolution x resolution`` cells.

    ``features`` (N, C, h, w) float, any memory format; ``boxes`` (K, 5) ``[batch_index, x1, y1, x2, y2]`` in
    input pixels (``spatial_scale`` = feature size / input size, e.g. 1/16); ``aligned`` shifts the box by
    half a feature cell (torchvision's ``aligned=True``; ``False`` also widens boxes to at least one cell).
    Returns (K, C, resolution, resolution) in ``features``' dtype, channels-last; computed in at least float32,
    outside autocast.
    """
    if torch.onnx.is_in_onnx_export():  # torchvision's op carries the ONNX symbolic (RoiAlign), same semantics
        from torchvision.ops import roi_align as exportable

        return exportable(features, boxes, resolution, spatial_scale, sampling_ratio=0, aligned=aligned)
    dtype = features.dtype
    # Box geometry in float32 with torchvision's order of operations, so that the sample grid (its size is a
    # ceil) and the sample positions are the same as its kernel's.
    geometry = boxes.detach().to("cpu", torch.float32)
    offset = 0.5 if aligned else 0.0
    starts = geometry[:, 1:3] * spatial_scale - offset               # (K, 2) x, y
    sizes = (geometry[:, 3:5] * spatial_scale - offset) - starts
    if not aligned:
        sizes = sizes.clamp(min=1.0)
    with torch.autocast(features.device.type, enabled=False):
        # (N, h, w, C) contiguous (free for channels-last input), so that both products below are GEMMs
        maps = features.to(torch.promote_types(dtype, torch.float32)).permute(0, 2, 3, 1).contiguous()
        _, height, width, channels = maps.shape
        pooled = maps.new_empty((boxes.shape[0], resolution, resolution, channels))
        for k, index in enumerate(geometry[:, 0].long().tolist()):
            rows, (top, bottom) = _axis_weights(starts[k, 1], sizes[k, 1], resolution, height)
            columns, (left, right) = _axis_weights(starts[k, 0], sizes[k, 0], resolution, width)
            window = maps[index, top:bottom, left:right]                              # the cells the box samples
            across = torch.matmul(columns[:, left:right].to(maps), window)            # (h', R, C)
            down = rows[:, top:bottom].to(maps) @ across.reshape(bottom - top, resolution * channels)
            pooled[k] = down.view(resolution, resolution, channels)
    return pooled.permute(0, 3, 1, 2).to(dtype)


def _axis_weights(start: torch.Tensor, size: torch.Tensor, resolution: int,
                  length: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """(resolution, length) float32 weights, row r averaging the bilinear weights of bin r's samples along one
    axis, and the range ``[first, end)`` of cells with a nonzero weight. ``start``, ``size``: float32 scalars
    in feature cells."""
    step = size / resolution
    samples = int(torch.ceil(step))
    weights = torch.zeros((resolution, max(samples, 1), length))
    if samples > 0:
        bins = torch.arange(resolution, dtype=torch.float32)[:, None]
        offsets = torch.arange(samples, dtype=torch.float32)[None, :] + 0.5
        position = start + bins * step + offsets * step / samples        # (resolution, samples)
        inside = ((position >= -1.0) & (position <= length)).float()
        position = position.clamp(min=0.0)
        low = position.long()
        at_end = low >= length - 1
        low = torch.where(at_end, length - 1, low)
        high = torch.where(at_end, length - 1, low + 1)
        fraction = torch.where(at_end, 0.0, position - low)
        weights.scatter_add_(2, low[..., None], ((1.0 - fraction) * inside)[..., None])
        weights.scatter_add_(2, high[..., None], (fraction * inside)[..., None])
    weights = weights.sum(dim=1) / max(samples, 1)
    used = weights.ne(0).any(dim=0).nonzero().flatten().tolist()
    return weights, ((used[0], used[-1] + 1) if used else (0, 0))

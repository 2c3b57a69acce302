"""Deterministic weights, inputs and configs for action-model tests (shared by test modules).

``random_state_dict`` and ``random_clips`` are the recipe behind ``tests/data/model_parity.npz``: PySlowFast's
own model computed those probabilities from exactly these weights and inputs (see ``PARITY_CASES``), so a test
can check our model against PySlowFast without running it. Changing the recipe invalidates that file.
"""
import math
from pathlib import Path
from typing import Mapping

import torch

from ava_pipeline.config import ActionModelConfig, DataConfig, ModelConfig, dump_config
from ava_pipeline.models import build_action_model

R101_NONLOCAL = dict(
    depth=101, fusion_kernel_size=5,
    nonlocal_location=(((), ()), ((), ()), ((6, 13, 20), ()), ((), ())),
    nonlocal_pool=(((2, 2, 2), (2, 2, 2)),) * 4)
SLOW_ONLY = dict(
    arch="slow", num_frames=4, sampling_rate=16, num_block_temp_kernel=((3,), (4,), (6,), (3,)),
    spatial_strides=((1,), (2,), (2,), (1,)), spatial_dilations=((1,), (1,), (1,), (2,)),
    nonlocal_location=(((),),) * 4, nonlocal_pool=(((1, 2, 2),),) * 4, nonlocal_instantiation="softmax")

# name -> (model config, clip height, clip width). The first three are PySlowFast's configs/AVA YAMLs as
# ``load_config`` reads them; the last is a tiny R101 whose non-local blocks use the softmax instantiation.
PARITY_CASES = {
    "SLOWFAST_32x2_R50_SHORT": (ModelConfig(aligned=True), 64, 96),
    "c2/SLOWFAST_32x2_R101_50_50": (ModelConfig(aligned=False, **R101_NONLOCAL), 64, 96),
    "c2/SLOW_8x8_R50": (ModelConfig(aligned=False, **SLOW_ONLY), 64, 96),
    "tiny_R101_softmax_nonlocal": (ModelConfig(aligned=False, width_per_group=8, num_frames=8,
                                               nonlocal_instantiation="softmax",
                                               **dict(R101_NONLOCAL, nonlocal_pool=(((1, 2, 2), (1, 2, 2)),) * 4)),
                                   48, 64),
}
PARITY_SEED = 0


def random_state_dict(state_dict: Mapping[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """Seeded random values for every entry of a SlowFast state dict (ours or PySlowFast's: same keys).

    Entries are drawn one after another in sorted key order from one ``torch.Generator``: convolution and
    linear weights ~ N(0, 1/fan_in) (non-local ``conv_theta`` / ``conv_phi``: divided further by
    inner_channels^(1/4)), their biases ~ N(0, 0.1^2); BatchNorm weight ~ U(0.5, 1), bias, running
    mean ~ U(-0.2, 0.2), running_var ~ U(0.5, 2) (positive, not 1: inference statistics matter);
    ``num_batches_tracked`` = 1. float32 tensors of the entries' shapes.
    """
    generator = torch.Generator().manual_seed(seed)
    batchnorms = {key.rsplit(".", 1)[0] for key in state_dict if key.endswith(".running_var")}

    values = {}
    for key in sorted(state_dict):
        shape = tuple(state_dict[key].shape)
        module, name = key.rsplit(".", 1)
        if name == "num_batches_tracked":
            values[key] = torch.tensor(1, dtype=torch.long)
        elif module in batchnorms:
            low, high = {"weight": (0.5, 1.0), "running_var": (0.5, 2.0)}.get(name, (-0.2, 0.2))
            values[key] = torch.rand(shape, generator=generator) * (high - low) + low
        elif name == "weight":
            scale = 1 / math.sqrt(math.prod(shape[1:]))
            if module.endswith((".conv_theta", ".conv_phi")):
                scale /= shape[0] ** 0.25  # keeps the non-local affinity theta^T phi of order 1
            values[key] = torch.randn(shape, generator=generator) * scale
        else:
            values[key] = torch.randn(shape, generator=generator) * 0.1
    return values


def random_clips(model_cfg: ModelConfig, height: int, width: int, seed: int, batch: int = 2):
    """Seeded normalised clips for every pathway and boxes on every clip.

    Returns ``([slow (B,3,T/alpha,H,W), fast (B,3,T,H,W)] or [slow (B,3,T,H,W)], boxes (2B, 5))``: float32 clips
    ~ N(0, 1), Slow taken from Fast at ``linspace(0, T-1, T/alpha)`` like PySlowFast; two boxes per clip,
    ``[batch_index, x1, y1, x2, y2]`` in input pixels (one of them with fractional corners).
    """
    generator = torch.Generator().manual_seed(seed)
    t = model_cfg.num_frames
    fast = torch.randn(batch, 3, t, height, width, generator=generator)
    if model_cfg.arch == "slowfast":
        slow_index = torch.linspace(0, t - 1, t // model_cfg.alpha).long()
        clips = [fast[:, :, slow_index].contiguous(), fast]
    else:
        clips = [fast]
    boxes = []
    for index in range(batch):
        boxes.append([index, 2.0 + 5 * index, 3.0, width * 0.55, height - 1.0])
        boxes.append([index, width * 0.3 + 0.37, height * 0.2 + 0.61, width - 4.5, height * 0.8 - 0.25])
    return clips, torch.tensor(boxes, dtype=torch.float32)


def write_model(folder: Path, name: str, model_cfg: ModelConfig, seed: int = 0) -> tuple[Path, Path]:
    """Our YAML config and a PySlowFast-format checkpoint ``{"model_state", "epoch"}`` with seeded weights."""
    folder.mkdir(parents=True, exist_ok=True)
    config = ActionModelConfig(name=name, model=model_cfg, data=DataConfig(test_crop_size=64, bgr=True))
    config_path, weights_path = folder / f"{name}.yaml", folder / f"{name}.pyth"
    config_path.write_text(dump_config(config))
    with torch.device("meta"):
        keys = build_action_model(model_cfg).state_dict()
    torch.save({"model_state": random_state_dict(keys, seed), "epoch": 1}, weights_path)
    return config_path, weights_path

"""Public model loading: ``load_action_model(name_or_config, weights=...)``."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from ava_pipeline.checksums import file_sha256
from ava_pipeline.config import ActionModelConfig
from ava_pipeline.errors import WeightsError
from ava_pipeline.models import build_action_model
from ava_pipeline.weights import ZOO, ZooModel, download, load_state_dict_into, model_config, read_checkpoint

log = logging.getLogger(__name__)


def _zoo_file(record: ZooModel) -> Path:
    path = download(record.url, record.sha256)
    if record.sha256 is None:
        log.warning("%s: no sha256 is recorded for zoo model %s yet; the file is checked only by its format and "
                    "its keys and shapes (sha256 %s)", path, record.name, file_sha256(path))
    return path


def _resolve_weights(weights: Optional[str | Path], record: Optional[ZooModel], config: ActionModelConfig,
                     source: str) -> tuple[Path, Optional[ZooModel]]:
    if weights is not None:
        if str(weights) in ZOO:
            return _zoo_file(ZOO[str(weights)]), ZOO[str(weights)]
        path = Path(weights)
        if not path.is_file():
            raise WeightsError(f"{path}: no such checkpoint file (and not a zoo name: {', '.join(ZOO)})")
        return path, None
    if record is not None:
        return _zoo_file(record), record
    if config.weights:
        path = Path(config.weights)
        if not path.is_file():
            raise WeightsError(f"{path}: checkpoint named by config {source} does not exist; pass weights=FILE "
                               "(--weights FILE)")
        return path, None
    raise WeightsError(f"config {source} names no weights; pass weights=FILE (--weights FILE) or use a zoo model "
                       f"name ({', '.join(ZOO)})")


def load_action_model(config: str | Path, *, weights: Optional[str | Path] = None,
                      device: str | torch.device = "cpu", strict: bool = True) -> nn.Module:
    """An AVA action model with weights, in eval mode on ``device``.

    Args:
        config: a zoo name (``SLOWFAST_32x2_R101_50_50``), a packaged config name, or a YAML path (ours or
            PySlowFast's AVA config).
        weights: a checkpoint path in any supported format, or a zoo name. ``None``: the zoo record's cached
            download for zoo names, else the config's own ``weights`` (PySlowFast ``TEST.CHECKPOINT_FILE_PATH``).
        device: where the model goes.
        strict: missing or mis-shaped weights are an error (``WeightsError``) unless False.

    The model takes ``([slow (N,3,T/alpha,H,W), fast (N,3,T,H,W)], boxes (K,5))`` with boxes
    ``[batch_index, x1, y1, x2, y2]`` in input pixels, and returns (K, num_classes) float probabilities (column
    c = action id ``config.model_actions(model.config)[0][c]``: AVA's c+1, or the ids of a model's own label
    map). ``model.config`` is the ``ActionModelConfig``; ``model.weights_sha256`` the sha256 of the checkpoint
    file.
    """
    record = ZOO.get(str(config))
    cfg = model_config(config)
    path, weights_record = _resolve_weights(weights, record, cfg, str(config))
    checkpoint = read_checkpoint(path)
    if weights_record is not None and checkpoint.file_format != weights_record.file_format:
        log.warning("%s: zoo model %s is recorded as %s but the file is %s", path, weights_record.name,
                    weights_record.file_format, checkpoint.file_format)
    model = build_action_model(cfg.model)
    load_state_dict_into(model, checkpoint.state_dict, strict=strict, source=str(path))
    model.config = cfg
    model.weights_sha256 = file_sha256(path)
    return model.to(device).eval()


__all__ = ["load_action_model"]

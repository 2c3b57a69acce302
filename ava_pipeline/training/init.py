"""The model a training run starts from: PySlowFast's random initialisation, then optionally ``--weights``.

Random initialisation (PySlowFast ``init_weights``, after seeding torch with ``RNG_SEED`` before the model is
built, so the same seed gives PySlowFast's very tensors): every Conv3d ``kaiming_normal_(fan_out, relu)`` with bias
0; every BatchNorm weight 1 and bias 0, except, with ``zero_init_final_bn``, weight 0 for the last BatchNorm of
each bottleneck and of each non-local block; the head's Linear ``N(0, fc_init_std)`` with bias 0.

``--weights`` is an initialisation, loaded as weights only in any format ``weights.read_checkpoint`` reads
(PySlowFast .pyth/.pkl, Caffe2 .pkl, PyTorchVideo .pyth, our own run checkpoints): epoch and optimizer state in
the file are ignored. Every backbone entry must be in the file with the model's shape (else ``WeightsError``:
the file is of another architecture). The head's projection is the one part that may differ:

* same shape: loaded;
* an 80-row AVA head while the label map is a subset of AVA's actions (same ids and names): the rows of the
  map's ids are kept, in label-map order;
* otherwise (Kinetics-400 classifier, another class count, no head in the file): left at its random
  initialisation.

:class:`InitReport` says what happened in one readable block (logged and written to ``metrics.jsonl``).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional

import torch
from torch import nn

from ava_pipeline.config import ModelConfig
from ava_pipeline.errors import WeightsError
from ava_pipeline.labels import AVA_ACTIONS
from ava_pipeline.models import build_action_model
from ava_pipeline.models.slowfast import BottleneckTransform, NonLocal
from ava_pipeline.checksums import file_sha256
from ava_pipeline.weights import read_checkpoint
from ava_pipeline.weights.loading import check_state_dict, summarize_keys

log = logging.getLogger(__name__)

HEAD_KEYS = ("head.projection.weight", "head.projection.bias")


def build_training_model(model_cfg: ModelConfig, *, seed: int, fc_init_std: float = 0.01,
                         zero_init_final_bn: bool = False) -> nn.Module:
    """The action model of ``model_cfg`` with PySlowFast's random initialisation for ``seed``, in train mode.

    ``torch.manual_seed(seed)`` precedes construction as in PySlowFast's ``train()``; construction consumes the
    generator like PySlowFast's (same modules in the same order), so the tensors equal PySlowFast's.
    """
    torch.manual_seed(seed)
    model = build_action_model(model_cfg)
    initialise_weights(model, fc_init_std=fc_init_std, zero_init_final_bn=zero_init_final_bn)
    return model.train()


@torch.no_grad()
def initialise_weights(model: nn.Module, *, fc_init_std: float, zero_init_final_bn: bool) -> None:
    """PySlowFast's ResNet initialisation of every module of ``model``, in module order (module docstring)."""
    final_batchnorms = set()
    for module in model.modules():
        if isinstance(module, BottleneckTransform):
            final_batchnorms.add(module.c_bn)
        elif isinstance(module, NonLocal):
            final_batchnorms.add(module.bn)
    for module in model.modules():
        if isinstance(module, nn.Conv3d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.constant_(module.bias, 0)
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.weight.fill_(0.0 if zero_init_final_bn and module in final_batchnorms else 1.0)
            module.bias.zero_()
        if isinstance(module, nn.Linear):
            module.weight.normal_(mean=0.0, std=fc_init_std)
            if module.bias is not None:
                module.bias.zero_()


@dataclass
class InitReport:
    """What ``--weights`` did to the model (``lines()`` is the readable block)."""

    source: str
    sha256: str
    file_format: str
    layout: str
    loaded: int = 0  # state-dict entries copied from the file
    head: str = ""  # what happened to head.projection
    kept_rows: tuple[int, ...] = ()  # action ids whose head rows came from the file
    not_in_model: list[str] = field(default_factory=list)  # file entries the model does not have
    not_weights: list[str] = field(default_factory=list)  # file entries that are not model weights

    def lines(self) -> list[str]:
        lines = [f"initialised from {self.source} ({self.layout} layout, {self.file_format}, sha256 "
                 f"{self.sha256[:12]}): weights only, training starts at epoch 1 with a fresh optimizer",
                 f"  loaded: {self.loaded} entries", f"  head.projection: {self.head}"]
        if self.not_in_model:
            lines.append(f"  skipped, not in the model ({len(self.not_in_model)}): "
                         + "; ".join(summarize_keys(self.not_in_model)))
        if self.not_weights:
            lines.append(f"  skipped, not model weights ({len(self.not_weights)}): "
                         + "; ".join(summarize_keys(self.not_weights)))
        return lines

    def as_dict(self) -> dict:
        return {"weights": self.source, "sha256": self.sha256, "format": self.file_format, "layout": self.layout,
                "loaded": self.loaded, "head": self.head, "kept_head_rows": list(self.kept_rows),
                "not_in_model": self.not_in_model, "not_weights": self.not_weights}


def _is_ava_subset(label_map: Mapping[int, str]) -> bool:
    """True when every class of ``label_map`` is the AVA action of the same id (names compared loosely)."""
    def norm(name: str) -> str:
        return " ".join(name.lower().split())
    return all(norm(AVA_ACTIONS.get(action_id, "")) == norm(name) for action_id, name in label_map.items())


@torch.no_grad()
def load_initial_weights(model: nn.Module, path: str | Path, label_map: Mapping[int, str], *,
                         sha256: Optional[str] = None) -> InitReport:
    """Copy the weights of checkpoint ``path`` into ``model`` as an initialisation (module docstring).

    ``label_map`` ``{action_id: name}`` in column order is what the model's head predicts; ``sha256``: the file's,
    when the caller has it already (else computed). Raises ``WeightsError`` (naming the file) when the backbone
    does not fit.
    """
    path = Path(path)
    checkpoint = read_checkpoint(path)
    state = dict(checkpoint.state_dict)
    head_state = {key: state.pop(key) for key in HEAD_KEYS if key in state}
    fitting, report = check_state_dict(model, state)
    missing = [key for key in report.missing if key not in HEAD_KEYS]
    if missing or report.mismatched:
        problems = []
        if missing:
            problems.append(f"{len(missing)} model entries missing from the file: " + "; ".join(
                summarize_keys(missing)[:6]))
        if report.mismatched:
            problems.append(f"{len(report.mismatched)} shape mismatches, e.g. " + "; ".join(
                f"{key} file {list(a)} vs model {list(b)}" for key, a, b in report.mismatched[:3]))
        raise WeightsError(f"{path}: not an initialisation for this model ({'. '.join(problems)}); the checkpoint "
                           "is of another architecture: pass the --config it was trained with")
    model.load_state_dict(fitting, strict=False)
    result = InitReport(str(path), sha256 or file_sha256(path), checkpoint.file_format, checkpoint.layout, loaded=len(fitting),
                        not_in_model=list(report.unexpected), not_weights=list(checkpoint.dropped_keys))
    result.head = _initialise_head(model, head_state, label_map, result)
    return result


def _initialise_head(model: nn.Module, head_state: dict, label_map: Mapping[int, str], report: InitReport) -> str:
    projection = model.head.projection
    weight, bias = head_state.get(HEAD_KEYS[0]), head_state.get(HEAD_KEYS[1])
    shape = tuple(projection.weight.shape)
    if weight is None or bias is None:
        return f"not in the file: random initialisation for {shape[0]} classes"
    if tuple(weight.shape) == shape and tuple(bias.shape) == (shape[0],):
        projection.weight.copy_(weight)
        projection.bias.copy_(bias)
        report.loaded += 2
        return f"loaded ({shape[0]} classes)"
    ids = list(label_map)
    if tuple(weight.shape) == (len(AVA_ACTIONS), shape[1]) and bias.shape == (len(AVA_ACTIONS),) \
            and _is_ava_subset(label_map):
        rows = torch.tensor([action_id - 1 for action_id in ids])
        projection.weight.copy_(weight[rows])
        projection.bias.copy_(bias[rows])
        report.kept_rows = tuple(ids)
        report.loaded += 2
        return (f"rows of the {len(ids)} label-map actions kept from the file's 80-class AVA head "
                f"(ids {', '.join(map(str, ids))})")
    return (f"re-initialised (file {list(weight.shape)} vs model {list(shape)}: "
            f"{'another class count' if weight.shape[1:] == shape[1:] else 'another head'}; random N(0, std) "
            "initialisation)")


def describe_parameters(model: nn.Module) -> str:
    """``N parameters in M tensors`` of ``model``, for the run summary."""
    params = list(model.parameters())
    return f"{sum(p.numel() for p in params):,} parameters in {len(params)} tensors"


__all__ = ["HEAD_KEYS", "InitReport", "build_training_model", "describe_parameters", "initialise_weights",
           "load_initial_weights"]

"""SGD with PySlowFast's parameter groups, and its learning-rate policy per iteration with linear warmup.

Parameter groups (PySlowFast ``construct_optimizer`` with ``SOLVER.LAYER_DECAY`` 1.0), in module order:

1. weight and bias of every BatchNorm: ``bn_weight_decay`` (PySlowFast ``BN.WEIGHT_DECAY``, default 0);
2. every other trainable parameter (convolutions, the head's projection weight and bias): ``weight_decay``;
3. with ``zero_wd_1d_param`` only: other 1-D parameters and biases, no decay.

Empty groups are left out. Each group also carries PySlowFast's ``layer_decay`` (1.0) and ``apply_LARS`` (False)
entries, so the optimizer state loads into PySlowFast's own optimizer. The update is ``torch.optim.SGD`` with
coupled L2 decay: ``g = grad + wd * p``; ``buf = g`` on the first step, else ``momentum * buf + (1 - dampening) *
g``; Nesterov ``step = g + momentum * buf``; ``p -= lr * step``.

Learning rate at fractional epoch ``e = epoch + iteration / iterations_per_epoch`` (set before each forward):
``steps_with_relative_lrs``: ``base_lr * lrs[i]`` with ``i`` the last index where ``steps[i] <= e`` (``max_epoch``
closes the list); ``cosine``: ``end + (base - end) * (cos(pi * (e - off) / (max_epoch - off)) + 1) / 2`` with
``off = warmup_epochs`` if ``cosine_after_warmup`` else 0. While ``e < warmup_epochs`` (strictly) the rate is
``e * ((policy(warmup_epochs) - warmup_start_lr) / warmup_epochs) + warmup_start_lr`` instead.
"""
from __future__ import annotations

import bisect
import math

import torch
from torch import nn

from ava_pipeline.training.settings import SolverSettings


def parameter_groups(model: nn.Module, solver: SolverSettings) -> list[dict]:
    """PySlowFast's parameter groups of ``model`` (see the module docstring), empty ones dropped."""
    batchnorm, decayed, not_decayed = [], [], []
    for module_name, module in model.named_modules():
        is_batchnorm = isinstance(module, nn.modules.batchnorm._NormBase)
        for name, parameter in module.named_parameters(recurse=False):
            if not parameter.requires_grad:
                continue
            if is_batchnorm:
                batchnorm.append(parameter)
            elif solver.zero_wd_1d_param and (parameter.dim() == 1 or name == "bias"):
                not_decayed.append(parameter)
            else:
                decayed.append(parameter)
    groups = [(batchnorm, solver.bn_weight_decay), (decayed, solver.weight_decay), (not_decayed, 0.0)]
    return [{"params": params, "weight_decay": decay, "layer_decay": 1.0, "apply_LARS": False}
            for params, decay in groups if params]


def build_optimizer(model: nn.Module, solver: SolverSettings) -> torch.optim.SGD:
    """``torch.optim.SGD`` over :func:`parameter_groups` with the solver's momentum, dampening and Nesterov;
    the learning rate is set per iteration by :func:`set_learning_rate`."""
    return torch.optim.SGD(parameter_groups(model, solver), lr=solver.base_lr, momentum=solver.momentum,
                           dampening=solver.dampening, nesterov=solver.nesterov, weight_decay=solver.weight_decay)


def _policy_rate(solver: SolverSettings, epoch: float) -> float:
    if solver.lr_policy == "cosine":
        offset = solver.warmup_epochs if solver.cosine_after_warmup else 0.0
        return (solver.cosine_end_lr + (solver.base_lr - solver.cosine_end_lr)
                * (math.cos(math.pi * (epoch - offset) / (solver.max_epoch - offset)) + 1.0) * 0.5)
    if solver.lr_policy == "steps_with_relative_lrs":
        index = bisect.bisect_right(list(solver.steps), epoch) - 1  # last step <= epoch (steps[0] is 0)
        return solver.lrs[max(index, 0)] * solver.base_lr
    raise ValueError(f"unknown learning-rate policy {solver.lr_policy!r}")


def learning_rate(solver: SolverSettings, epoch: float) -> float:
    """The learning rate at fractional epoch ``epoch`` (policy, then warmup; see the module docstring)."""
    if epoch < solver.warmup_epochs:
        slope = (_policy_rate(solver, solver.warmup_epochs) - solver.warmup_start_lr) / solver.warmup_epochs
        return epoch * slope + solver.warmup_start_lr  # PySlowFast's order of operations, to the last bit
    return _policy_rate(solver, epoch)


def set_learning_rate(optimizer: torch.optim.Optimizer, rate: float) -> None:
    """Give every parameter group ``rate`` times its ``layer_decay``."""
    for group in optimizer.param_groups:
        group["lr"] = rate * group.get("layer_decay", 1.0)

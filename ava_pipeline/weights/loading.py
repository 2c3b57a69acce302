"""Copying a state dict into a model, with incompatibilities reported grouped and readable.

Missing keys and shape mismatches are errors by default: a model that silently runs with random weights is
the worst outcome. Keys the model does not have are logged and ignored, and ``num_batches_tracked`` (never
stored by Caffe2 and unused at inference) may be absent.
"""
from __future__ import annotations

import logging
import re
from collections import defaultdict
from dataclasses import dataclass

import torch
from torch import nn

from ava_pipeline.errors import WeightsError

log = logging.getLogger(__name__)

_BN_ENTRIES = {"weight", "bias", "running_mean", "running_var", "num_batches_tracked"}
_SHOWN_MISMATCHES = 8


@dataclass(frozen=True)
class LoadReport:
    """What ``load_state_dict_into`` found: keys missing from the checkpoint, keys the model lacks, and
    ``(key, checkpoint shape, model shape)`` for entries whose shapes differ."""

    missing: tuple[str, ...]
    unexpected: tuple[str, ...]
    mismatched: tuple[tuple[str, tuple[int, ...], tuple[int, ...]], ...]


def _ranges(numbers: set[int]) -> str:
    ordered = sorted(numbers)
    if len(ordered) == 1:
        return str(ordered[0])
    if ordered == list(range(ordered[0], ordered[-1] + 1)):
        return f"{{{ordered[0]}..{ordered[-1]}}}"
    return "{" + ",".join(map(str, ordered)) + "}"


def summarize_keys(keys) -> list[str]:
    """Compress state-dict keys into readable patterns, e.g. ``s4.pathway0_res{6..22}.branch2.a_bn.*``.

    Entries of one module are merged (``.*`` when they are a BatchNorm's set, else ``.{weight,bias}``); then
    modules whose names differ in one number are merged into a ``{first..last}`` range.
    """
    by_module: dict[str, set[str]] = defaultdict(set)
    for key in keys:
        module, _, entry = key.rpartition(".")
        by_module[module or key].add(entry if module else "")
    leaves = {}
    for module, entries in by_module.items():
        if len(entries) == 1:
            entry = next(iter(entries))
            leaves[module] = f".{entry}" if entry else ""
        elif entries <= _BN_ENTRIES and "running_mean" in entries:
            leaves[module] = ".*"
        else:
            leaves[module] = ".{" + ",".join(sorted(entries)) + "}"
    # item: (text pieces between numbers, leaf, one set of numbers per number position)
    items = {}
    for module, leaf in leaves.items():
        parts = re.split(r"(\d+)", module)
        items.setdefault((tuple(parts[::2]), leaf, tuple(frozenset({int(n)}) for n in parts[1::2])), None)
    longest = max((len(numbers) for _, _, numbers in items), default=0)
    for position in range(longest - 1, -1, -1):  # merge the innermost numbers first
        merged: dict[tuple, list] = {}
        for texts, leaf, numbers in items:
            if position >= len(numbers):
                merged.setdefault((texts, leaf, numbers, None), [texts, leaf, list(numbers)])
                continue
            key = (texts, leaf, numbers[:position] + numbers[position + 1:], position)
            if key in merged:
                merged[key][2][position] = merged[key][2][position] | numbers[position]
            else:
                merged[key] = [texts, leaf, list(numbers)]
        items = {(texts, leaf, tuple(numbers)): None for texts, leaf, numbers in merged.values()}
    lines = []
    for texts, leaf, numbers in items:
        pieces = [texts[0]]
        for values, text in zip(numbers, texts[1:]):
            pieces += [_ranges(set(values)), text]
        lines.append("".join(pieces) + leaf)
    return lines


def _fit_shape(value: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Caffe2 may store a blob with fewer dimensions than the model (trailing 1s dropped): restore them."""
    if value.shape != shape and value.numel() == shape.numel() and tuple(shape[:value.dim()]) == tuple(value.shape) \
            and all(s == 1 for s in shape[value.dim():]):
        return value.reshape(shape)
    return value


def check_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> tuple[dict, LoadReport]:
    """Compare ``state_dict`` with ``model``'s; returns (entries that fit, report). Nothing is copied."""
    own = model.state_dict()
    fitting, mismatched = {}, []
    for key, value in state_dict.items():
        if key not in own:
            continue
        value = _fit_shape(value, own[key].shape)
        if value.shape != own[key].shape:
            mismatched.append((key, tuple(value.shape), tuple(own[key].shape)))
        else:
            fitting[key] = value
    missing = tuple(k for k in own if k not in state_dict and not k.endswith("num_batches_tracked"))
    unexpected = tuple(k for k in state_dict if k not in own)
    return fitting, LoadReport(missing, unexpected, tuple(mismatched))


def describe(report: LoadReport) -> str:
    """One readable paragraph about the incompatibilities in ``report``."""
    parts = []
    if report.missing:
        parts.append(f"{len(report.missing)} model entries missing from the checkpoint: "
                     + "; ".join(summarize_keys(report.missing)))
    if report.mismatched:
        shown = [f"{key} checkpoint {list(a)} vs model {list(b)}"
                 for key, a, b in report.mismatched[:_SHOWN_MISMATCHES]]
        more = len(report.mismatched) - len(shown)
        parts.append(f"{len(report.mismatched)} shape mismatches: " + "; ".join(shown)
                     + (f"; and {more} more" if more else ""))
    if report.unexpected:
        parts.append(f"{len(report.unexpected)} checkpoint entries not in the model: "
                     + "; ".join(summarize_keys(report.unexpected)))
    return ". ".join(parts)


def load_state_dict_into(model: nn.Module, state_dict: dict[str, torch.Tensor], *, strict: bool = True,
                         source: str = "checkpoint") -> LoadReport:
    """Copy ``state_dict`` (PySlowFast keys) into ``model`` in place; ``source`` names the file in messages.

    Raises ``WeightsError`` when model entries are missing or have another shape, unless ``strict=False``
    (then the fitting entries are loaded and a warning is logged). Entries the model lacks are logged.
    """
    fitting, report = check_state_dict(model, state_dict)
    if report.missing or report.mismatched:
        message = (f"{source}: the checkpoint does not fit the model: {describe(report)}. The checkpoint was "
                   "probably made for another architecture: pass the config that matches it (--config, e.g. the "
                   "zoo config it was released with)")
        if strict:
            raise WeightsError(message)
        log.warning("%s; loading the %d entries that fit because strict=False", message, len(fitting))
    elif report.unexpected:
        log.info("%s: ignoring %s", source, describe(report))
    model.load_state_dict(fitting, strict=False)
    return report

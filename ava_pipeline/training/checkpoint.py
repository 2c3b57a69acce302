"""Training checkpoints in PySlowFast's layout, written atomically, and exact resume from them.

``RUN/checkpoints/checkpoint_epoch_{N:05d}.pyth`` after the N-th epoch (1-based) holds, as PySlowFast's
``save_checkpoint``::

    {"epoch": N - 1,                      # 0-based, as PySlowFast stores it
     "model_state": model.state_dict(),   # PySlowFast's key names (no "module." prefix)
     "optimizer_state": optimizer.state_dict(),
     "cfg": "<the run's config.yaml as a YAML string>",
     "rng_state": {"torch": ByteTensor, "cuda": ByteTensor}}   # ours: what exact resume needs

Every value is a tensor or plain data, so ``torch.load(path, weights_only=True)`` reads it, and so does
PySlowFast's ``load_checkpoint`` (it ignores ``rng_state``). The file is serialised in memory, written under a
temporary name in the same folder, flushed to disk and renamed into place: a run killed at any moment leaves
either the previous set of checkpoints or the new one, never a truncated file under a checkpoint name.

Resume = PySlowFast's ``TRAIN.AUTO_RESUME``: the lexicographically last ``checkpoint_epoch_*.pyth`` in the
folder is loaded (model, optimizer, random-number state) and training continues with the next epoch. Data order
and augmentation draws are functions of (seed, epoch), so the resumed run ends with the same bytes as an
uninterrupted one.
"""
from __future__ import annotations

import io
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from ava_pipeline.errors import WeightsError
from ava_pipeline.writers import atomic_output

CHECKPOINT_PATTERN = re.compile(r"checkpoint_epoch_(\d{5})\.pyth")


def checkpoint_name(epoch_number: int) -> str:
    """File name of the checkpoint after the ``epoch_number``-th epoch (1-based)."""
    return f"checkpoint_epoch_{epoch_number:05d}.pyth"


def rng_state(device: torch.device) -> dict:
    """The random-number state that the rest of a run draws from (dropout): torch's CPU generator, and the
    generator of the training GPU (only that one: the processes of a torchrun job, one per GPU, draw the same
    numbers, so rank 0's GPU generator is every process's, and no process touches another's GPU)."""
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def save_checkpoint(folder: str | Path, epoch_number: int, model: nn.Module, optimizer: torch.optim.Optimizer,
                    cfg_yaml: str, device: torch.device) -> Path:
    """Write the checkpoint of epoch ``epoch_number`` (1-based) into ``folder`` atomically; returns its path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {"epoch": epoch_number - 1, "model_state": _to_cpu(model.state_dict()),
             "optimizer_state": _to_cpu(optimizer.state_dict()), "cfg": cfg_yaml, "rng_state": rng_state(device)}
    buffer = io.BytesIO()  # in memory: torch names the archive's records after a file's name, not a buffer's
    torch.save(state, buffer)
    path = folder / checkpoint_name(epoch_number)
    with atomic_output(path) as temporary, open(temporary, "wb") as f:
        f.write(buffer.getbuffer())
        f.flush()
        os.fsync(f.fileno())  # on disk before it is renamed into place
    return path


def _to_cpu(value):
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {key: _to_cpu(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_to_cpu(item) for item in value]
    return value


def latest_checkpoint(folder: str | Path) -> Optional[Path]:
    """The lexicographically last ``checkpoint_epoch_*.pyth`` of ``folder`` (PySlowFast's choice), or None."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    names = sorted(p.name for p in folder.iterdir() if CHECKPOINT_PATTERN.fullmatch(p.name))
    return folder / names[-1] if names else None


@dataclass(frozen=True)
class Resumed:
    """What :func:`resume` restored: the next epoch to train (0-based) and the file."""

    next_epoch: int
    path: Path


def resume(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device) -> Resumed:
    """Load model, optimizer and random-number state from run checkpoint ``path``. Raises ``WeightsError`` for a
    file that is not a complete checkpoint of this run's model."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds for a damaged file
        raise WeightsError(f"{path}: cannot read the run's checkpoint ({type(exc).__name__}: "
                           f"{str(exc).splitlines()[0] if str(exc) else ''}); delete it to resume from the one "
                           "before, or start a new run in another --out folder") from exc
    needed = ("epoch", "model_state", "optimizer_state", "rng_state")
    if not isinstance(state, dict) or any(key not in state for key in needed):
        raise WeightsError(f"{path}: not a checkpoint written by ava-train (needs {', '.join(needed)}); move it out "
                           "of the run's checkpoints folder or use another --out folder")
    try:
        model.load_state_dict(state["model_state"], strict=True)
        optimizer.load_state_dict(state["optimizer_state"])
    except (RuntimeError, ValueError, KeyError) as exc:
        raise WeightsError(f"{path}: the checkpoint does not fit this run's model or optimizer ({str(exc)[:300]}); "
                           "the run folder belongs to another configuration: use another --out folder") from exc
    set_rng_state(state["rng_state"], device)
    return Resumed(next_epoch=int(state["epoch"]) + 1, path=path)

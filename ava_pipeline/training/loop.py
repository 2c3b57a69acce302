"""The training loop: PySlowFast's ``train_epoch`` for AVA, epoch by epoch, with evaluation and checkpoints.

Per iteration (PySlowFast's order): learning rate for ``epoch + iteration / iterations_per_epoch`` set on every
parameter group; forward in train mode (batch-statistics BatchNorm, dropout) giving per-box probabilities;
``BCELoss(reduction="mean")`` over all K x C entries of the batch; a NaN/inf loss stops the run
(``TrainingDivergedError``); zero_grad, backward, SGD step. With ``MODEL.FROZEN_BN`` every BatchNorm is put
in eval mode at the start of each epoch (PySlowFast's ``frozen_bn_stats``). Epochs hold
``floor(samples / batch_size)`` iterations (``drop_last``). After every ``eval_period``-th epoch and the last
one the model is evaluated on the validation set; after every ``checkpoint_period``-th epoch and the last one a
checkpoint is written (after the evaluation, so a run that resumes from a checkpoint also has its evaluation).

Determinism: the data order of epoch ``e`` is a permutation drawn from ``(seed, e)`` (or the sample order without
shuffling), the dataset's augmentation draws come from ``(seed, e, index)``, and the loader never touches torch's
global generator, which only dropout draws from and which the checkpoints save. So a resumed run repeats the
uninterrupted one bit for bit, whatever the number of DataLoader workers.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ava_pipeline.errors import AvaPipelineError
from ava_pipeline.training.optim import learning_rate, set_learning_rate
from ava_pipeline.training.sampling import EpochSampler, ShardedEpochSampler, epoch_seed
from ava_pipeline.training.settings import TrainSettings

log = logging.getLogger(__name__)


class TrainingDivergedError(AvaPipelineError):
    """The loss became NaN or infinite (PySlowFast stops the same way)."""


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, inputs: list[torch.Tensor], boxes: torch.Tensor,
               labels: torch.Tensor, lr: float) -> float:
    """One PySlowFast training iteration on tensors already on the model's device; returns ``loss.item()``.

    ``inputs``: ``[slow (N,3,T/alpha,H,W), fast (N,3,T,H,W)]`` float32; ``boxes``: (K, 5) float32
    ``[batch_index, x1, y1, x2, y2]`` in input pixels; ``labels``: (K, C) float32 multi-hot.
    """
    set_learning_rate(optimizer, lr)
    probs = model(inputs, boxes)
    loss = F.binary_cross_entropy(probs, labels, reduction="mean")
    value = loss.item()
    if not np.isfinite(value):
        raise TrainingDivergedError(f"the training loss became {value} at lr {lr:g}; lower --lr (SOLVER.BASE_LR) "
                                    "or lengthen the warmup (SOLVER.WARMUP_EPOCHS)")
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return value


def is_due(epoch: int, period: int, last_epoch: int) -> bool:
    """Whether 0-based ``epoch`` ends with a checkpoint / evaluation (every ``period``-th and the last one)."""
    return (epoch + 1) % period == 0 or epoch + 1 == last_epoch


@dataclass
class LoopHooks:
    """What the loop calls out to: ``evaluate(epoch_number) -> record or None``, ``save(epoch_number)``,
    ``log(record_type, **values)``, ``progress`` (a tqdm-like bar or None) and ``say(line)``."""

    evaluate: Callable[[int], Optional[dict]]
    save: Callable[[int], None]
    log: Callable[..., None]
    say: Callable[[str], None]
    progress: Optional[object] = None


def freeze_batchnorm(model: nn.Module) -> None:
    """PySlowFast's ``MODEL.FROZEN_BN``: every BatchNorm in eval mode (running statistics used and left
    unchanged); their affine weights still train."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()


def training_loader(dataset, sampler, collate, *, batch_size: int, workers: int, pin_memory: bool = False,
                    seed: int = 0) -> torch.utils.data.DataLoader:
    """The run's DataLoader: batches of ``batch_size`` (last partial one dropped) in ``sampler``'s order, from
    ``workers`` processes that persist across epochs (the sampler hands them the epoch with each index; a dataset
    with ``__getitems__`` assembles each batch in the worker, in shared memory)."""
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=True,
                                       num_workers=workers, collate_fn=collate, pin_memory=pin_memory,
                                       persistent_workers=workers > 0,
                                       generator=torch.Generator().manual_seed(epoch_seed(seed, 0) + 1))


def fit(model: nn.Module, optimizer: torch.optim.Optimizer, dataset, collate, settings: TrainSettings, *,
        start_epoch: int, device: torch.device, workers: int, hooks: LoopHooks, job=None) -> None:
    """Train epochs ``start_epoch .. max_epoch - 1`` (0-based) on ``dataset`` (module docstring). ``job``: this
    process's :class:`~ava_pipeline.training.distributed.Distributed` place when ``model`` is the DDP module of a
    torchrun job (each process then trains its share of every global batch and logs the mean loss)."""
    solver = settings.solver
    if job is None:
        sampler, per_process = EpochSampler(len(dataset), seed=settings.seed, shuffle=settings.shuffle), None
    else:
        sampler = ShardedEpochSampler(len(dataset), seed=settings.seed, shuffle=settings.shuffle,
                                      batch_size=settings.batch_size, job=job)
        per_process = sampler.per_process
    iterations = len(dataset) // settings.batch_size
    step = start_epoch * iterations
    loader = training_loader(dataset, sampler, collate, batch_size=per_process or settings.batch_size,
                             workers=workers, pin_memory=device.type == "cuda", seed=settings.seed)
    for epoch in range(start_epoch, solver.max_epoch):
        sampler.set_epoch(epoch)  # the sampler hands the dataset its epoch with every index
        model.train()
        if settings.frozen_bn:
            freeze_batchnorm(model)
        losses = []
        started = waited_from = time.perf_counter()
        for iteration, batch in enumerate(loader):
            data_s = time.perf_counter() - waited_from
            computed_from = time.perf_counter()
            inputs = batch.model_inputs(device)
            lr = learning_rate(solver, epoch + float(iteration) / iterations)
            loss = train_step(model, optimizer, inputs, batch.boxes.to(device), batch.labels.to(device), lr)
            boxes = int(batch.boxes.shape[0])
            if job is not None:  # the logged figures are the job's: mean loss, boxes of the global batch
                loss, boxes = job.mean(loss, device), sum(job.all_gather_int(boxes, device))
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            compute_s = time.perf_counter() - computed_from
            step += 1
            losses.append(loss)
            hooks.log("iteration", epoch=epoch + 1, iteration=iteration + 1, step=step, lr=lr, loss=loss,
                      boxes=boxes, data_s=round(data_s, 6), compute_s=round(compute_s, 6))
            if hooks.progress is not None:
                hooks.progress.set_postfix_str(f"epoch {epoch + 1}/{solver.max_epoch} loss {loss:.4f} lr {lr:.3g}",
                                               refresh=False)
                hooks.progress.update(1)
            waited_from = time.perf_counter()
        seconds = time.perf_counter() - started
        mean_loss = float(np.mean(losses)) if losses else float("nan")
        hooks.log("epoch", epoch=epoch + 1, loss=mean_loss, iterations=len(losses), seconds=round(seconds, 3))
        hooks.say(f"epoch {epoch + 1}/{solver.max_epoch}: mean loss {mean_loss:.4f} over {len(losses)} iterations "
                  f"in {seconds:.1f} s")
        if is_due(epoch, settings.eval_period, solver.max_epoch):
            record = hooks.evaluate(epoch + 1)
            if record is not None:
                hooks.log("eval", epoch=epoch + 1, **record)
                hooks.say(f"epoch {epoch + 1}: val frame-mAP@0.5 {100 * (record['mAP'] or 0.0):.2f}% on "
                          f"{record['keyframes']} keyframes")
        if is_due(epoch, settings.checkpoint_period, solver.max_epoch):
            hooks.save(epoch + 1)

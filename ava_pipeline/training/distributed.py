"""Data-parallel training across processes and machines with ``torch.distributed`` (launched by ``torchrun``).

``torchrun --nproc_per_node=G [--nnodes=N --rdzv_backend=c10d --rdzv_endpoint=HOST:PORT] $(which ava-train) ...``
starts one process per GPU (or CPU share); each finds its place in the job from torchrun's environment
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``/``MASTER_PORT``) and joins one
process group: NCCL on GPUs, gloo on CPUs. What follows PySlowFast's multi-GPU training:

* ``TRAIN.BATCH_SIZE`` is the global batch: each of the W processes trains ``BATCH_SIZE / W`` clips per
  iteration (W must divide it). Iteration ``i`` of an epoch uses the same clips as on one process (positions
  ``i * B .. (i + 1) * B - 1`` of the epoch's order, drawn from ``(seed, epoch)``), process ``r`` the ``r``-th
  block of ``B / W`` of them (:class:`ShardedEpochSampler`).
* DistributedDataParallel averages the gradients: the effective loss is the mean over processes of each
  process's own box-mean (equal to the global box-mean when every process has as many boxes). The logged loss
  is the mean over processes. BatchNorm statistics are per process (``BN.NORM_TYPE: batchnorm``) unless
  ``sync_batchnorm`` groups them (torch's ``SyncBatchNorm``, GPUs only).
* Dropout draws the mask of the whole global batch in every process and applies the process's rows
  (:class:`GlobalBatchDropout`), so every process keeps the same random-number state and a run on W processes
  draws what a run on one process draws.
* Only rank 0 writes the run folder (config, checkpoints, metrics, curves, evaluation); every process resumes
  from the same checkpoint. Validation is sharded over the processes and gathered on rank 0.
"""
from __future__ import annotations

import atexit
import datetime
import logging
import os
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist
from torch import nn

from ava_pipeline.errors import ConfigError

log = logging.getLogger(__name__)

# Preparing the frames of a large training set in rank 0 can take hours while the others wait at a barrier.
PROCESS_GROUP_TIMEOUT = datetime.timedelta(hours=12)


@dataclass(frozen=True)
class Distributed:
    """This process's place in a data-parallel job (torchrun's environment)."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes the run folder."""
        return self.rank == 0

    def barrier(self) -> None:
        dist.barrier()

    def mean(self, value: float, device: torch.device) -> float:
        """The mean of ``value`` over the processes."""
        tensor = torch.tensor([value], dtype=torch.float64, device=device)
        dist.all_reduce(tensor)
        return float(tensor.item()) / self.world_size

    def all_gather_int(self, value: int, device: torch.device) -> list[int]:
        """``value`` of every process, by rank."""
        local = torch.tensor([value], dtype=torch.int64, device=device)
        gathered = [torch.empty_like(local) for _ in range(self.world_size)]
        dist.all_gather(gathered, local)
        return [int(t.item()) for t in gathered]

    def gather_to_main(self, value) -> Optional[list]:
        """Every process's picklable ``value``, by rank, on rank 0; None elsewhere."""
        gathered = [None] * self.world_size if self.is_main else None
        dist.gather_object(value, gathered, dst=0)
        return gathered


def from_environment() -> Optional[Distributed]:
    """The job described by torchrun's environment variables, or None outside torchrun."""
    if "WORLD_SIZE" not in os.environ or "RANK" not in os.environ:
        return None
    try:
        world_size, rank = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"])
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
        local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
    except ValueError as exc:
        raise ConfigError(f"torchrun's environment is malformed ({exc}); launch ava-train with torchrun or "
                          "without the RANK/WORLD_SIZE variables") from None
    return Distributed(rank=rank, world_size=world_size, local_rank=local_rank, local_world_size=local_world_size)


def process_device(name: str, job: Optional[Distributed]) -> torch.device:
    """The device this process trains on: ``--device cuda`` in a job of several processes per machine means
    ``cuda:LOCAL_RANK``; an explicit ``cuda:N`` is only valid with one process per machine."""
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    if job is None or device.type != "cuda":
        return device
    if device.index is not None and job.local_world_size > 1:
        raise ConfigError(f"--device {name} with {job.local_world_size} processes per machine would put them all "
                          "on one GPU; pass --device cuda (each process takes the GPU of its LOCAL_RANK)")
    index = device.index if device.index is not None else job.local_rank
    if index >= torch.cuda.device_count():
        raise ConfigError(f"process {job.rank} (local rank {job.local_rank}) needs GPU {index} but this machine "
                          f"has {torch.cuda.device_count()}; lower torchrun's --nproc_per_node")
    return torch.device("cuda", index)


def start(job: Distributed, device: torch.device) -> None:
    """Join the job's process group: NCCL on a GPU, gloo on the CPU (left again at exit, or by :func:`stop`)."""
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", rank=job.rank, world_size=job.world_size, timeout=PROCESS_GROUP_TIMEOUT,
                                device_id=device)
    else:
        dist.init_process_group("gloo", rank=job.rank, world_size=job.world_size, timeout=PROCESS_GROUP_TIMEOUT)
    atexit.register(stop)


def stop(*, barrier: bool = False) -> None:
    """Leave the process group (if joined); with ``barrier`` (the normal end of a run) only once every process
    has got there, so that none tears its connections down while another still uses them."""
    if dist.is_available() and dist.is_initialized():
        if barrier:
            dist.barrier()
        dist.destroy_process_group()


def check_same_start(job: Distributed, start_epoch: int, device: torch.device, checkpoints) -> None:
    """Raise ``ConfigError`` (in every process) unless every process resumes at the same epoch: the run folder
    must be one that every machine sees."""
    starts = job.all_gather_int(start_epoch, device)
    if len(set(starts)) > 1:
        raise ConfigError(f"the processes of this job found different checkpoints in {checkpoints} (epochs to start "
                          f"at, by rank: {starts}); put --out on a filesystem that every machine of the job sees")


class GlobalBatchDropout(nn.Module):
    """Dropout whose mask is drawn for the whole global batch, identically in every process, of which each
    process applies its own rows (its boxes' offset comes from the box counts of all processes).

    Input (K, D) float, the boxes of this process; in training mode the mask is a (sum of K over processes, D)
    Bernoulli(1 - p) draw from the device's default generator, as ``torch.nn.Dropout`` draws it for the whole
    batch on the CPU, scaled by 1 / (1 - p). Every process calls it once per training forward (a collective).
    """

    def __init__(self, p: float, job: Distributed):
        super().__init__()
        self.p, self.job = p, job

    def extra_repr(self) -> str:
        return f"p={self.p}, processes={self.job.world_size}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        counts = self.job.all_gather_int(x.shape[0], x.device)
        offset = sum(counts[:self.job.rank])
        noise = torch.empty((sum(counts), *x.shape[1:]), dtype=x.dtype, device=x.device).bernoulli_(1 - self.p)
        noise = noise[offset:offset + x.shape[0]].div_(1 - self.p)
        return x * noise


def prepare_model(model: nn.Module, job: Distributed, device: torch.device, *, norm_type: str,
                  num_sync_devices: int, global_sync: bool, frozen_bn: bool) -> nn.Module:
    """Make ``model`` (on ``device``) ready for data-parallel training, in place where it can: SyncBatchNorm for
    ``norm_type == "sync_batchnorm"`` over groups of ``num_sync_devices`` consecutive ranks (all of them with
    ``global_sync``), :class:`GlobalBatchDropout` in the head. Returns the model itself (whose ``state_dict``
    keys are unchanged); :func:`wrap` gives the DDP module for the training forward. Call before building the
    optimizer."""
    group_size = job.world_size if global_sync else num_sync_devices
    if norm_type == "sync_batchnorm" and group_size > 1:
        if device.type == "cpu" and not frozen_bn:
            raise ConfigError("BN.NORM_TYPE sync_batchnorm needs GPUs (torch's SyncBatchNorm does not run on the "
                              "CPU); use batchnorm on CPUs")
        if job.world_size % group_size:
            raise ConfigError(f"BN.NUM_SYNC_DEVICES {group_size} must divide the {job.world_size} processes")
        groups = [dist.new_group(list(range(first, first + group_size)))
                  for first in range(0, job.world_size, group_size)]  # every process creates every group
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model, groups[job.rank // group_size])
    elif norm_type == "sync_batchnorm":
        log.warning("BN.NORM_TYPE sync_batchnorm with BN.NUM_SYNC_DEVICES 1 and BN.GLOBAL_SYNC False synchronises "
                    "nothing (as in PySlowFast); set BN.NUM_SYNC_DEVICES or BN.GLOBAL_SYNC: True")
    head = getattr(model, "head", None)
    if head is not None and isinstance(getattr(head, "dropout", None), nn.Dropout):
        head.dropout = GlobalBatchDropout(head.dropout.p, job)
    return model.to(device)


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """The DistributedDataParallel module for the training forward (gradients averaged over the processes)."""
    return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def sharded_predictions(model: nn.Module, dataset, job: Distributed, *, batch_size: int,
                        device: torch.device) -> Optional[list]:
    """The model's validation predictions, computed a 1/W share per process and gathered: on rank 0 a list of
    ``(item, probs (K, C) numpy)`` in dataset order (items with ``video_id``, ``time`` and ``index``), as
    :func:`~ava_pipeline.training.validation.predict` gives them; None in the other processes."""
    from ava_pipeline.training.validation import predict

    mine = [({"video_id": item["video_id"], "time": item["time"], "index": item["index"]}, probs)
            for item, probs in predict(model, torch.utils.data.Subset(dataset, range(job.rank, len(dataset), job.world_size)), batch_size=max(1, batch_size // job.world_size),
                                       device=device)]
    gathered = job.gather_to_main(mine)
    if gathered is None:
        return None
    return sorted((pair for share in gathered for pair in share), key=lambda pair: pair[0]["index"])


def prepare_in_turn(dataset, job: Optional[Distributed], *, workers: int):
    """``dataset.prepare(workers)`` with one decoding pass per machine: local rank 0 fills the frame store first,
    the other processes of the machine then reuse its entries. Returns this process's prepare report."""
    if job is None:
        return dataset.prepare(workers=workers)
    report = dataset.prepare(workers=workers) if job.local_rank == 0 else None
    job.barrier()
    return report if report is not None else dataset.prepare(workers=workers)

"""Training settings: what PySlowFast's TRAIN / SOLVER / BN / DATA / AVA / MODEL keys say about training.

Read from the same file as the model (``config.load_config``): either our YAML, whose ``train:`` section mirrors
:class:`TrainSettings` (lower-case keys, strict: an unknown key is an error that suggests the closest name)::

    train:
      batch_size: 3
      eval_period: 1
      solver: {base_lr: 0.1, lr_policy: steps_with_relative_lrs, steps: [0, 10, 15, 20], lrs: [1, 0.1, 0.01, 0.001],
               max_epoch: 20, warmup_epochs: 5.0, warmup_start_lr: 0.000125, weight_decay: 1.0e-7}
      augmentation: {train_jitter_scales: [256, 320], train_crop_size: 224}

or PySlowFast's AVA YAML unchanged, whose values are decoded as its yacs decodes them (``WEIGHT_DECAY: 1e-4``
is a float). Keys default to PySlowFast's defaults (``slowfast/config/defaults.py``), not to the AVA config's.
``NUM_GPUS`` / ``NUM_SHARDS`` describe the machines the file was written for and are ignored: the device comes
from ``--device``. Options whose PySlowFast meaning is not implemented here (another optimizer or loss, gradient
clipping, mixed precision, precise BN, layer decay) are errors when set to anything but the value
that means "off", so a file never trains differently from what it says.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ava_pipeline.config import TRAIN_SECTION, from_mapping, plain_values, read_config_mapping, yacs_value
from ava_pipeline.errors import ConfigError
from ava_pipeline.training.transforms import PCA_EIGVAL, PCA_EIGVEC

log = logging.getLogger(__name__)

LR_POLICIES = ("cosine", "steps_with_relative_lrs")
NORM_TYPES = ("batchnorm", "sync_batchnorm")


@dataclass(frozen=True)
class SolverSettings:
    """SGD and the learning-rate policy (PySlowFast ``SOLVER.*`` and ``BN.WEIGHT_DECAY``); epochs may be
    fractional in ``steps`` and ``warmup_epochs``."""

    base_lr: float = 0.1
    lr_policy: str = "cosine"  # "cosine" | "steps_with_relative_lrs"
    steps: tuple[float, ...] = ()  # steps_with_relative_lrs: epochs where lrs[i] starts (steps[0] == 0)
    lrs: tuple[float, ...] = ()  # ... and the multipliers of base_lr
    max_epoch: int = 300
    cosine_end_lr: float = 0.0
    cosine_after_warmup: bool = False
    warmup_epochs: float = 0.0
    warmup_start_lr: float = 0.01
    momentum: float = 0.9
    dampening: float = 0.0
    nesterov: bool = True
    weight_decay: float = 1e-4  # every parameter but the BatchNorm ones
    bn_weight_decay: float = 0.0  # BatchNorm weight and bias (PySlowFast BN.WEIGHT_DECAY)
    zero_wd_1d_param: bool = False  # no decay for other 1-D parameters and biases either


@dataclass(frozen=True)
class AugmentationSettings:
    """PySlowFast's AVA training transforms (cv2 backend): short-side jitter, square crop, flip, colour/PCA."""

    train_jitter_scales: tuple[int, int] = (256, 320)  # short side drawn as round(1 / U(1/max, 1/min))
    train_crop_size: int = 224
    random_flip: bool = True
    colour_jitter: bool = False  # AVA.TRAIN_USE_COLOR_AUGMENTATION
    pca_jitter_only: bool = True  # AVA.TRAIN_PCA_JITTER_ONLY
    pca_eigval: tuple[float, float, float] = PCA_EIGVAL
    pca_eigvec: tuple[tuple[float, float, float], ...] = PCA_EIGVEC
    # with augmentation, the frame store keeps decoded frames as they are (PySlowFast's resize of them, bit for
    # bit) instead of downscaled to the largest jitter scale (5x less disk and 1.3x faster epochs for 720p; the
    # pixels of a clip jittered below it are resized twice)
    full_resolution_frames: bool = False


@dataclass(frozen=True)
class TrainSettings:
    """Everything about a training run that is not the model itself (see the module docstring)."""

    batch_size: int = 64  # clips per iteration (PySlowFast TRAIN.BATCH_SIZE on one process)
    eval_period: int = 10  # evaluate after every eval_period-th epoch and the last one
    checkpoint_period: int = 10  # checkpoint after every checkpoint_period-th epoch and the last one
    auto_resume: bool = True  # continue from RUN/checkpoints when it holds checkpoints
    seed: int = 1  # PySlowFast RNG_SEED: initialisation, data order, augmentation draws, dropout
    augment: bool = True  # False: the test-time transform (short side to test_crop_size, no crop, no flip)
    shuffle: bool = True  # False: samples in video / time order every epoch
    fc_init_std: float = 0.01  # std of the head's random initialisation (MODEL.FC_INIT_STD)
    zero_init_final_bn: bool = False  # last BatchNorm of every bottleneck starts at weight 0
    init_weights: Optional[str] = None  # TRAIN.CHECKPOINT_FILE_PATH: initialisation when --weights is not given
    frozen_bn: bool = False  # MODEL.FROZEN_BN: BatchNorm in eval mode while training (fixed statistics)
    norm_type: str = "batchnorm"  # BN.NORM_TYPE: "batchnorm" (per process) | "sync_batchnorm" (GPUs, torchrun)
    num_sync_devices: int = 1  # BN.NUM_SYNC_DEVICES: processes per SyncBatchNorm group
    global_sync: bool = False  # BN.GLOBAL_SYNC: one SyncBatchNorm group of all processes
    solver: SolverSettings = field(default_factory=SolverSettings)
    augmentation: AugmentationSettings = field(default_factory=AugmentationSettings)


# PySlowFast SECTION.KEY -> our dotted field (section "solver"/"augmentation" or top level)
_PYSLOWFAST_KEYS = {
    "TRAIN.BATCH_SIZE": "batch_size", "TRAIN.EVAL_PERIOD": "eval_period",
    "TRAIN.CHECKPOINT_PERIOD": "checkpoint_period", "TRAIN.AUTO_RESUME": "auto_resume",
    "TRAIN.CHECKPOINT_FILE_PATH": "init_weights", "RNG_SEED": "seed", "MODEL.FC_INIT_STD": "fc_init_std",
    "RESNET.ZERO_INIT_FINAL_BN": "zero_init_final_bn", "MODEL.FROZEN_BN": "frozen_bn",
    "BN.NORM_TYPE": "norm_type", "BN.NUM_SYNC_DEVICES": "num_sync_devices", "BN.GLOBAL_SYNC": "global_sync",
    **{f"SOLVER.{f.name.upper()}": f"solver.{f.name}" for f in dataclasses.fields(SolverSettings)
       if f.name != "bn_weight_decay"},
    "BN.WEIGHT_DECAY": "solver.bn_weight_decay",
    "DATA.TRAIN_JITTER_SCALES": "augmentation.train_jitter_scales",
    "DATA.TRAIN_CROP_SIZE": "augmentation.train_crop_size", "DATA.RANDOM_FLIP": "augmentation.random_flip",
    "AVA.TRAIN_USE_COLOR_AUGMENTATION": "augmentation.colour_jitter",
    "AVA.TRAIN_PCA_JITTER_ONLY": "augmentation.pca_jitter_only",
    "DATA.TRAIN_PCA_EIGVAL": "augmentation.pca_eigval", "DATA.TRAIN_PCA_EIGVEC": "augmentation.pca_eigvec",
}

# PySlowFast options this trainer implements only in their "off" state: SECTION.KEY -> the accepted values
_PYSLOWFAST_ONLY = {
    "SOLVER.OPTIMIZING_METHOD": ("sgd",), "MODEL.LOSS_FUNC": ("bce",), "SOLVER.LAYER_DECAY": (1.0,),
    "SOLVER.CLIP_GRAD_VAL": (None,), "SOLVER.CLIP_GRAD_L2NORM": (None,), "SOLVER.LARS_ON": (False,),
    "SOLVER.BASE_LR_SCALE_NUM_SHARDS": (False,), "TRAIN.MIXED_PRECISION": (False,),
    "BN.USE_PRECISE_STATS": (False,), "RESNET.ZERO_INIT_FINAL_CONV": (False,),
    "TRAIN.CHECKPOINT_INFLATE": (False,), "AVA.IMG_PROC_BACKEND": ("cv2",),
}


def _pyslowfast_values(raw: dict, source: str) -> dict:
    """The nested mapping of our field names for the training keys of a PySlowFast YAML."""
    values: dict[str, Any] = {"solver": {}, "augmentation": {}}
    for section, body in yacs_value(raw).items():
        items = body.items() if isinstance(body, dict) else [(None, body)]
        for key, value in items:
            name = f"{section}.{key}" if key is not None else section
            if name in _PYSLOWFAST_ONLY and value not in _PYSLOWFAST_ONLY[name]:
                allowed = " or ".join(repr(v) for v in _PYSLOWFAST_ONLY[name])
                raise ConfigError(f"{source}: {name}={value!r} is not supported by ava-train (only {allowed}); "
                                  "remove the key or set it to that value")
            ours = _PYSLOWFAST_KEYS.get(name)
            if ours is None:
                continue
            if ours == "init_weights":
                value = value or None
            target = values
            *sections, leaf = ours.split(".")
            for part in sections:
                target = target[part]
            target[leaf] = value
    return values


def _check(settings: TrainSettings, source: str) -> TrainSettings:
    """Reject values that cannot train, naming ``source`` and the key."""
    solver, augmentation = settings.solver, settings.augmentation
    problems = []
    for name in ("batch_size", "eval_period", "checkpoint_period"):
        if getattr(settings, name) < 1:
            problems.append(f"train.{name}={getattr(settings, name)} must be at least 1")
    if settings.norm_type not in NORM_TYPES:
        problems.append(f"train.norm_type={settings.norm_type!r} is not supported; use one of {list(NORM_TYPES)}")
    if settings.num_sync_devices < 1:
        problems.append(f"train.num_sync_devices={settings.num_sync_devices} must be at least 1")
    if settings.seed < 0:
        problems.append(f"train.seed={settings.seed} must be >= 0")
    if solver.max_epoch < 1:
        problems.append(f"train.solver.max_epoch={solver.max_epoch} must be at least 1")
    if solver.lr_policy not in LR_POLICIES:
        problems.append(f"train.solver.lr_policy={solver.lr_policy!r} is not supported; use one of "
                        f"{list(LR_POLICIES)}")
    if solver.lr_policy == "steps_with_relative_lrs" and (
            not solver.steps or len(solver.steps) != len(solver.lrs) or solver.steps[0] != 0
            or list(solver.steps) != sorted(solver.steps)):
        problems.append(f"train.solver.steps={list(solver.steps)} and lrs={list(solver.lrs)} must be lists of equal "
                        "length with ascending steps starting at epoch 0")
    if solver.lr_policy == "cosine" and not solver.cosine_end_lr < solver.base_lr:
        problems.append(f"train.solver.cosine_end_lr={solver.cosine_end_lr} must be below base_lr={solver.base_lr}")
    for name in ("base_lr", "weight_decay", "bn_weight_decay", "warmup_epochs", "warmup_start_lr", "dampening"):
        if getattr(solver, name) < 0:
            problems.append(f"train.solver.{name}={getattr(solver, name)} must be >= 0")
    if not 0 <= solver.momentum < 1:
        problems.append(f"train.solver.momentum={solver.momentum} must be in [0, 1)")
    if solver.nesterov and (solver.momentum <= 0 or solver.dampening != 0):
        problems.append("train.solver.nesterov needs momentum > 0 and dampening 0 (as torch.optim.SGD)")
    low, high = augmentation.train_jitter_scales
    if not 0 < low <= high:
        problems.append(f"train.augmentation.train_jitter_scales={[low, high]} must be [min, max] with 0 < min <= max")
    if not 0 < augmentation.train_crop_size <= low:
        problems.append(f"train.augmentation.train_crop_size={augmentation.train_crop_size} must be positive and "
                        f"at most the smallest jitter scale {low}")
    if problems:
        raise ConfigError(f"{source}: {problems[0]}")
    return settings


def load_train_settings(source: str | Path) -> TrainSettings:
    """The training settings in a YAML config (ours or PySlowFast's) or a packaged config name; defaults when it
    has none. Raises ``ConfigError`` naming the file and the key."""
    path, raw, pyslowfast = read_config_mapping(source)
    if pyslowfast:
        ignored = [key for key in ("NUM_GPUS", "NUM_SHARDS") if key in raw]
        if ignored:
            log.info("%s: %s describe the run the file was written for; ignored (ava-train uses --device)", path,
                     " and ".join(ignored))
        values = _pyslowfast_values(raw, str(path))
    else:
        values = raw.get(TRAIN_SECTION) or {}
    try:
        settings = from_mapping(TrainSettings, values, "train" if not pyslowfast else "")
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return _check(settings, str(path))


def with_overrides(settings: TrainSettings, *, epochs: Optional[int] = None, batch_size: Optional[int] = None,
                   lr: Optional[float] = None, seed: Optional[int] = None, augment: Optional[bool] = None,
                   shuffle: Optional[bool] = None, full_resolution_frames: Optional[bool] = None,
                   source: str = "command line") -> TrainSettings:
    """``settings`` with command-line values put in: ``epochs`` = SOLVER.MAX_EPOCH, ``batch_size`` =
    TRAIN.BATCH_SIZE, ``lr`` = SOLVER.BASE_LR, ``seed`` = RNG_SEED, ``full_resolution_frames`` =
    ``augmentation.full_resolution_frames``; None keeps the file's value."""
    solver = settings.solver
    if full_resolution_frames is not None:
        settings = dataclasses.replace(settings, augmentation=dataclasses.replace(
            settings.augmentation, full_resolution_frames=full_resolution_frames))
    if epochs is not None:
        solver = dataclasses.replace(solver, max_epoch=epochs)
    if lr is not None:
        solver = dataclasses.replace(solver, base_lr=lr)
    changes = {name: value for name, value in (("batch_size", batch_size), ("seed", seed), ("augment", augment),
                                                ("shuffle", shuffle)) if value is not None}
    return _check(dataclasses.replace(settings, solver=solver, **changes), source)


def settings_mapping(settings: TrainSettings) -> dict:
    """``settings`` as the YAML mapping of a ``train:`` section (read back by :func:`load_train_settings`)."""
    return plain_values(settings)

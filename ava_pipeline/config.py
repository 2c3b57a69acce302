"""Typed configuration of an action model, read from our YAML or from PySlowFast's AVA YAML unchanged.

This module is the single configuration boundary: builders read these dataclasses, modules take plain
arguments. Values are converted by declared type; an unknown key is an error that suggests the closest name; a
value the model or the data path cannot use (a zero stride, a dropout of 2) is an error
naming the file and the key.

Our YAML (``configs/*.yaml``) mirrors the dataclasses::

    name: SLOWFAST_32x2_R101_50_50
    model: {arch: slowfast, depth: 101, num_frames: 32, sampling_rate: 2, aligned: false, ...}
    data: {test_crop_size: 256}
    box_thresh: 0.8

A PySlowFast config is recognised by its upper-case sections (``MODEL``, ``DATA``, ``RESNET`` ...). The keys
that define the model and the test-time data path are translated; training, solver, logging and demo keys are
listed in ``PYSLOWFAST_IGNORED`` and skipped on purpose; anything else is an error, as in PySlowFast.
"""
from __future__ import annotations

import ast
import dataclasses
import difflib
import math
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Optional

import yaml

from .errors import ConfigError
from .labels import PACKAGED_LABEL_MAPS, read_label_map

PerPathway = tuple[int, ...]
"""One value per pathway: ``(slow, fast)`` for SlowFast, ``(slow,)`` for Slow-only."""


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a SlowFast / Slow-only ResNet with the AVA RoI head (PySlowFast's option names).

    Per-stage tuples have 4 entries (res2..res5), each with one value per pathway.
    """

    arch: str = "slowfast"  # "slowfast" | "slow"
    depth: int = 50  # 50 | 101
    num_frames: int = 32  # T: frames in the (fast) clip
    sampling_rate: int = 2  # tau: grid frames between two clip frames
    alpha: int = 4  # fast/slow frame-rate ratio
    beta_inv: int = 8  # slow/fast channel ratio
    fusion_conv_channel_ratio: int = 2
    fusion_kernel_size: int = 7
    width_per_group: int = 64
    num_groups: int = 1
    num_block_temp_kernel: tuple[PerPathway, ...] = ((3, 3), (4, 4), (6, 6), (3, 3))
    spatial_strides: tuple[PerPathway, ...] = ((1, 1), (2, 2), (2, 2), (1, 1))
    spatial_dilations: tuple[PerPathway, ...] = ((1, 1), (1, 1), (1, 1), (2, 2))
    nonlocal_location: tuple[tuple[tuple[int, ...], ...], ...] = (((), ()), ((), ()), ((), ()), ((), ()))
    nonlocal_pool: tuple[tuple[tuple[int, ...], ...], ...] = (
        ((1, 2, 2), (1, 2, 2)), ((1, 2, 2), (1, 2, 2)), ((1, 2, 2), (1, 2, 2)), ((1, 2, 2), (1, 2, 2)))
    nonlocal_instantiation: str = "dot_product"  # "dot_product" | "softmax"
    num_classes: int = 80
    dropout_rate: float = 0.5
    head_act: str = "sigmoid"
    roi_resolution: int = 7
    spatial_scale_factor: int = 16  # total spatial stride of the backbone
    aligned: bool = True  # RoIAlign half-pixel offset (False for every released PySlowFast AVA checkpoint)

    @property
    def num_pathways(self) -> int:
        return 2 if self.arch == "slowfast" else 1


@dataclass(frozen=True)
class DataConfig:
    """Test-time data path: frame grid, resize and normalisation."""

    fps: int = 30  # frame grid of AVA (`ffmpeg -r 30`)
    test_crop_size: int = 256  # short side after resizing (no crop at test time)
    mean: tuple[float, ...] = (0.45, 0.45, 0.45)  # RGB, on [0, 1] values
    std: tuple[float, ...] = (0.225, 0.225, 0.225)
    bgr: bool = False  # feed BGR instead of RGB


@dataclass(frozen=True)
class ActionModelConfig:
    """Everything needed to build an action model and feed it."""

    name: str = "custom"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    box_thresh: float = 0.8  # person-box score threshold the model was evaluated with
    label_map: str = "v2.2"  # names of the model's output classes (packaged name or pbtxt path)
    eval_label_map: str = "v2.2-eval"  # classes scored by evaluation
    weights: Optional[str] = None  # checkpoint path named by the config (PySlowFast TEST/TRAIN.CHECKPOINT_FILE_PATH)


BLOCKS_PER_STAGE = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
"""Bottleneck blocks in res2..res5 per supported ``model.depth``."""

_SUPPORTED = {
    ("model", "arch"): ("slowfast", "slow"),
    ("model", "depth"): tuple(BLOCKS_PER_STAGE),
    ("model", "nonlocal_instantiation"): ("dot_product", "softmax"),
    ("model", "head_act"): ("sigmoid",),
}


def _leaves(value: Any) -> list:
    """The scalars of a nested tuple, in order (a scalar is its own only leaf)."""
    return [leaf for item in value for leaf in _leaves(item)] if isinstance(value, tuple) else [value]


_POSITIVE = (lambda v: v > 0, "a positive integer")
_ALL_POSITIVE = (lambda v: all(x > 0 for x in _leaves(v)), "positive integers for every stage and pathway")

# (section or None for top level, key) -> (test of the value, what to use instead); checked in this order,
# after the value types and the per-stage shapes.
_VALID = {
    **{("model", key): _POSITIVE for key in (
        "num_frames", "sampling_rate", "alpha", "beta_inv", "fusion_conv_channel_ratio", "width_per_group",
        "num_groups", "num_classes", "roi_resolution", "spatial_scale_factor")},
    ("model", "fusion_kernel_size"): (lambda v: v > 0 and v % 2 == 1,
                                      "a positive odd integer (an even kernel changes the fused frame count)"),
    ("model", "dropout_rate"): (lambda v: 0 <= v < 1, "a probability in [0, 1)"),
    ("model", "spatial_strides"): _ALL_POSITIVE,
    ("model", "spatial_dilations"): _ALL_POSITIVE,
    ("model", "nonlocal_pool"): (lambda v: all(len(pool) == 3 for stage in v for pool in stage)
                                 and all(x > 0 for x in _leaves(v)),
                                 "a [t, h, w] kernel of positive integers for every stage and pathway"),
    ("data", "fps"): _POSITIVE,
    ("data", "test_crop_size"): _POSITIVE,
    ("data", "mean"): (lambda v: len(v) == 3 and all(math.isfinite(x) for x in v), "3 finite numbers (RGB)"),
    ("data", "std"): (lambda v: len(v) == 3 and all(math.isfinite(x) and x > 0 for x in v),
                      "3 positive finite numbers (RGB)"),
    (None, "box_thresh"): (lambda v: 0 <= v <= 1, "a score in [0, 1]"),
}

# Per-stage options bounded by the stage's block count: key -> (test of one entry against the count, what to use)
_WITHIN_STAGE = {
    "num_block_temp_kernel": (lambda n, blocks: 0 <= n <= blocks, "block counts from 0 to {blocks}"),
    "nonlocal_location": (lambda i, blocks: 0 <= i < blocks, "block indices from 0 to {last}"),
}


# ----------------------------------------------------------------------------------------------- conversion

def _suggest(name: str, choices, list_all: bool = True) -> str:
    """``"; did you mean 'X'?"`` for the closest choice, else the list of valid keys (or nothing)."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    if close:
        return f"; did you mean {close[0]!r}?"
    return f"; valid keys: {', '.join(sorted(choices))}" if list_all else ""


def _convert(value: Any, hint: Any, where: str) -> Any:
    """Convert a YAML value to the declared type ``hint``; ``where`` names the key for error messages."""
    origin = typing.get_origin(hint)
    if origin is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return None if value is None else _convert(value, args[0], where)
    if origin is tuple:
        args = typing.get_args(hint)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}")
        return tuple(_convert(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {hint!r} at {where}")


def _build(cls, values: Any, where: str):
    """Instantiate dataclass ``cls`` from a mapping, strictly."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping of keys, got {values!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in names:
            raise ConfigError(f"{where + ': ' if where else ''}unknown key {key!r}{_suggest(str(key), names)}")
        kwargs[key] = _convert(value, hints[key], f"{where}.{key}" if where else key)
    return cls(**kwargs)


def from_mapping(cls, values: Any, where: str = ""):
    """Instantiate dataclass ``cls`` from a YAML mapping, strictly: values converted by declared type, an unknown
    key is a ``ConfigError`` that suggests the closest name (``where`` prefixes the keys in messages)."""
    return _build(cls, values, where)


def plain_values(value: Any) -> Any:
    """A dataclass or nested tuples as YAML-ready dicts and lists."""
    if dataclasses.is_dataclass(value):
        return {f.name: plain_values(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (tuple, list)):
        return [plain_values(v) for v in value]
    return value


def _validate(cfg: ActionModelConfig, source: str, pyslowfast_names: Optional[dict[str, str]] = None, *,
              exact_pathways: bool = True) -> ActionModelConfig:
    """Reject values the model or the data path cannot use, naming ``source`` and the key (with its PySlowFast
    name when ``pyslowfast_names`` maps ``section.key`` to it). ``exact_pathways=False`` accepts per-stage options
    with more pathway values than the architecture uses (the model reads the first ones)."""
    def fail(name: str, value: Any, problem: str) -> typing.NoReturn:
        original = (pyslowfast_names or {}).get(name.split("[")[0])
        raise ConfigError(f"{source}: {name}{f' ({original})' if original else ''}={value!r} {problem}")

    def dotted(section: Optional[str], key: str) -> str:
        return f"{section}.{key}" if section else key

    for (section, key), allowed in _SUPPORTED.items():
        value = getattr(getattr(cfg, section), key)
        if value not in allowed:
            fail(dotted(section, key), value, f"is not supported; use one of {list(allowed)}")
    model = cfg.model
    for key in ("num_block_temp_kernel", "spatial_strides", "spatial_dilations", "nonlocal_location",
                "nonlocal_pool"):
        option = getattr(model, key)
        if len(option) != 4 or any(len(stage) != model.num_pathways if exact_pathways else
                                   len(stage) < model.num_pathways for stage in option):
            fail(f"model.{key}", option, f"has the wrong shape; per-stage options need 4 stages of "
                                         f"{model.num_pathways} pathway value(s) for arch {model.arch!r}")
    for (section, key), (is_valid, use) in _VALID.items():
        value = getattr(getattr(cfg, section) if section else cfg, key)
        if not is_valid(value):
            fail(dotted(section, key), value, f"is not valid; use {use}")
    for key, (is_valid, use) in _WITHIN_STAGE.items():
        for stage, (per_pathway, blocks) in enumerate(zip(getattr(model, key), BLOCKS_PER_STAGE[model.depth])):
            if not all(is_valid(entry, blocks) for entry in _leaves(per_pathway)):
                fail(f"model.{key}[{stage}]", per_pathway,
                     f"is not valid; use {use.format(blocks=blocks, last=blocks - 1)} "
                     f"(stage res{stage + 2} has {blocks} blocks at depth {model.depth})")
    if model.arch == "slowfast" and model.width_per_group < model.beta_inv:
        fail("model.width_per_group", model.width_per_group,
             f"leaves the Fast pathway no channels; use at least beta_inv={model.beta_inv}")
    if model.arch == "slowfast" and model.num_frames % model.alpha:
        fail("model.num_frames", model.num_frames, f"must be a multiple of alpha={model.alpha}")
    return cfg


def check_model_config(model_cfg: ModelConfig) -> None:
    """ConfigError for a ``ModelConfig`` built in code (not read from a YAML) that the model cannot use."""
    _validate(ActionModelConfig(model=model_cfg), "model config", exact_pathways=False)


# ------------------------------------------------------------------------------------------ PySlowFast YAML

# (SECTION, KEY) of PySlowFast -> (our section or None for top level, our key, converter)
_PYSLOWFAST_KEYS = {
    ("MODEL", "ARCH"): ("model", "arch", None),
    ("MODEL", "NUM_CLASSES"): ("model", "num_classes", None),
    ("MODEL", "DROPOUT_RATE"): ("model", "dropout_rate", None),
    ("MODEL", "HEAD_ACT"): ("model", "head_act", None),
    ("RESNET", "DEPTH"): ("model", "depth", None),
    ("RESNET", "WIDTH_PER_GROUP"): ("model", "width_per_group", None),
    ("RESNET", "NUM_GROUPS"): ("model", "num_groups", None),
    ("RESNET", "NUM_BLOCK_TEMP_KERNEL"): ("model", "num_block_temp_kernel", None),
    ("RESNET", "SPATIAL_STRIDES"): ("model", "spatial_strides", None),
    ("RESNET", "SPATIAL_DILATIONS"): ("model", "spatial_dilations", None),
    ("SLOWFAST", "ALPHA"): ("model", "alpha", None),
    ("SLOWFAST", "BETA_INV"): ("model", "beta_inv", None),
    ("SLOWFAST", "FUSION_CONV_CHANNEL_RATIO"): ("model", "fusion_conv_channel_ratio", None),
    ("SLOWFAST", "FUSION_KERNEL_SZ"): ("model", "fusion_kernel_size", None),
    ("NONLOCAL", "LOCATION"): ("model", "nonlocal_location", None),
    ("NONLOCAL", "POOL"): ("model", "nonlocal_pool", None),
    ("NONLOCAL", "INSTANTIATION"): ("model", "nonlocal_instantiation", None),
    ("DATA", "NUM_FRAMES"): ("model", "num_frames", None),
    ("DATA", "SAMPLING_RATE"): ("model", "sampling_rate", None),
    ("DATA", "TEST_CROP_SIZE"): ("data", "test_crop_size", None),
    ("DATA", "MEAN"): ("data", "mean", None),
    ("DATA", "STD"): ("data", "std", None),
    ("DETECTION", "ALIGNED"): ("model", "aligned", None),
    ("DETECTION", "ROI_XFORM_RESOLUTION"): ("model", "roi_resolution", None),
    ("DETECTION", "SPATIAL_SCALE_FACTOR"): ("model", "spatial_scale_factor", None),
    ("AVA", "BGR"): ("data", "bgr", None),
    ("AVA", "DETECTION_SCORE_THRESH"): (None, "box_thresh", None),
    ("AVA", "LABEL_MAP_FILE"): (None, "eval_label_map", "label_map"),
    ("TEST", "CHECKPOINT_FILE_PATH"): (None, "weights", "path"),
}

# our ``section.key`` (or top-level ``key``) -> the PySlowFast ``SECTION.KEY`` it is read from, for messages
_PYSLOWFAST_NAMES = {(f"{ours}.{key}" if ours else key): f"{section}.{name}"
                     for (section, name), (ours, key, _) in _PYSLOWFAST_KEYS.items()}

# Keys whose value must be what our implementation does (anything else would silently change the model).
_PYSLOWFAST_REQUIRED = {
    ("RESNET", "TRANS_FUNC"): "bottleneck_transform",
    ("RESNET", "STRIDE_1X1"): False,
    ("DETECTION", "ENABLE"): True,
    ("AVA", "TEST_FORCE_FLIP"): False,
    ("AVA", "IMG_PROC_BACKEND"): "cv2",
    ("BN", "NORM_TYPE"): "batchnorm",
}

PYSLOWFAST_IGNORED = {
    # whole sections that concern training, logging, hardware or the demo UI
    "SOLVER", "DATA_LOADER", "TENSORBOARD", "DEMO", "BN", "MULTIGRID", "MIXUP", "AUG", "BENCHMARK",
    "CONTRASTIVE", "MASK", "TASK", "LOG_PERIOD", "LOG_MODEL_INFO", "DIST_BACKEND", "NUM_GPUS", "NUM_SHARDS",
    "SHARD_ID", "RNG_SEED", "OUTPUT_DIR", "NONLOCAL.GROUP", "NONLOCAL.NORM_TYPE",
    "TRAIN", "TEST.ENABLE", "TEST.DATASET", "TEST.BATCH_SIZE", "TEST.CHECKPOINT_TYPE", "TEST.NUM_ENSEMBLE_VIEWS",
    "TEST.NUM_SPATIAL_CROPS", "TEST.SAVE_RESULTS_PATH",
    "MODEL.MODEL_NAME", "MODEL.LOSS_FUNC", "MODEL.FC_INIT_STD", "MODEL.SINGLE_PATHWAY_ARCH",
    "MODEL.MULTI_PATHWAY_ARCH",
    "RESNET.ZERO_INIT_FINAL_BN", "RESNET.INPLACE_RELU",
    "DATA.TRAIN_JITTER_SCALES", "DATA.TRAIN_CROP_SIZE", "DATA.INPUT_CHANNEL_NUM", "DATA.PATH_TO_DATA_DIR",
    "DATA.PATH_PREFIX", "DATA.RANDOM_FLIP", "DATA.MULTI_LABEL", "DATA.ENSEMBLE_METHOD", "DATA.REVERSE_INPUT_CHANNEL",
    "DATA.DECODING_BACKEND", "DATA.TARGET_FPS",
    "AVA.TRAIN_PREDICT_BOX_LISTS", "AVA.TEST_PREDICT_BOX_LISTS", "AVA.TRAIN_GT_BOX_LISTS", "AVA.FRAME_DIR",
    "AVA.FRAME_LIST_DIR", "AVA.ANNOTATION_DIR", "AVA.TRAIN_LISTS", "AVA.TEST_LISTS", "AVA.EXCLUSION_FILE",
    "AVA.GROUNDTRUTH_FILE", "AVA.TRAIN_USE_COLOR_AUGMENTATION", "AVA.TRAIN_PCA_JITTER_ONLY", "AVA.FULL_TEST_ON_VAL",
    # read by the training settings (ava_pipeline.training.settings)
    "DATA.TRAIN_PCA_EIGVAL", "DATA.TRAIN_PCA_EIGVEC", "MODEL.FROZEN_BN", "RESNET.ZERO_INIT_FINAL_CONV",
}

TRAIN_SECTION = "train"
"""Top-level key of our YAML holding the training settings (read by ``ava_pipeline.training.settings``; model
loading skips it, so a training run's ``config.yaml`` is also an inference config)."""


def yacs_value(value: Any) -> Any:
    """A PySlowFast YAML value as PySlowFast's yacs reads it: a string that is a Python literal becomes that
    literal (``1e-4`` is a float there, a string to plain YAML), mappings are decoded key by key."""
    if isinstance(value, dict):
        return {key: yacs_value(item) for key, item in value.items()}
    if isinstance(value, str):
        try:
            return ast.literal_eval(value)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            return value
    return value


def _is_ignored(section: str, key: Optional[str]) -> bool:
    return section in PYSLOWFAST_IGNORED or (key is not None and f"{section}.{key}" in PYSLOWFAST_IGNORED)


def _from_pyslowfast(raw: dict, source: str, name: str) -> ActionModelConfig:
    raw = yacs_value(raw)
    sections: dict[Optional[str], dict] = {None: {"name": name}, "model": {}, "data": {}}
    known_sections = {s for s, _ in _PYSLOWFAST_KEYS} | {s for s, _ in _PYSLOWFAST_REQUIRED}
    classes = {None: ActionModelConfig, "model": ModelConfig, "data": DataConfig}
    for section, body in raw.items():
        if _is_ignored(section, None):
            continue
        if not isinstance(body, dict):
            if section in known_sections:
                raise ConfigError(f"{source}: PySlowFast section {section} must be a mapping of keys, got "
                                  f"{body!r}; fill in its keys or remove it")
            raise ConfigError(f"{source}: unknown PySlowFast key {section!r}"
                              f"{_suggest(str(section), known_sections | PYSLOWFAST_IGNORED)}")
        for key, value in body.items():
            if _is_ignored(section, key):
                continue
            if (section, key) in _PYSLOWFAST_REQUIRED:
                expected = _PYSLOWFAST_REQUIRED[(section, key)]
                if value != expected:
                    raise ConfigError(f"{source}: {section}.{key}={value!r} is not supported (only {expected!r})")
                continue
            if (section, key) not in _PYSLOWFAST_KEYS:
                choices = [f"{s}.{k}" for s, k in _PYSLOWFAST_KEYS] + sorted(PYSLOWFAST_IGNORED)
                raise ConfigError(f"{source}: unknown PySlowFast key {section}.{key}"
                                  f"{_suggest(f'{section}.{key}', choices)}")
            ours, our_key, kind = _PYSLOWFAST_KEYS[(section, key)]
            value = _convert((value or None) if kind == "path" else value,
                             typing.get_type_hints(classes[ours])[our_key], f"{section}.{key}")
            sections[ours][our_key] = _pyslowfast_label_map(value) if kind == "label_map" else value
    values = dict(sections[None], model=sections["model"], data=sections["data"])
    if values["model"].get("arch") == "slow":
        values["model"].setdefault("nonlocal_pool", (((1, 2, 2),),) * 4)
    values.setdefault("box_thresh", 0.9)  # PySlowFast's default AVA.DETECTION_SCORE_THRESH
    return _build(ActionModelConfig, values, "")


def _pyslowfast_label_map(filename: str) -> str:
    """Map PySlowFast's AVA.LABEL_MAP_FILE (a file name relative to its annotation dir) to a packaged map."""
    known = {"ava_action_list_v2.2_for_activitynet_2019.pbtxt": "v2.2-eval",
             "ava_action_list_v2.1_for_activitynet_2018.pbtxt": "v2.1-eval",
             "ava_action_list_v2.2.pbtxt": "v2.2"}
    return known.get(Path(filename).name, filename)


# ------------------------------------------------------------------------------------------------- loading

def packaged_config_names() -> list[str]:
    """Names of the YAML configs shipped in ``ava_pipeline/configs``."""
    return sorted(p.name[:-5] for p in resources.files("ava_pipeline").joinpath("configs").iterdir()
                  if p.name.endswith(".yaml"))


def _resolve(source: str | Path) -> Path:
    path = Path(source)
    if path.is_file():
        return path
    packaged = resources.files("ava_pipeline").joinpath("configs", f"{source}.yaml")
    if packaged.is_file():
        return Path(str(packaged))
    names = packaged_config_names()
    raise ConfigError(f"config {str(source)!r} is neither a YAML file nor a packaged config"
                      f"{_suggest(str(source), names, list_all=False)} (packaged: {', '.join(names)})")


def read_config_mapping(source: str | Path) -> tuple[Path, dict, bool]:
    """``(path, raw mapping, is_pyslowfast)`` of a YAML config path or packaged config name, unconverted."""
    path = _resolve(source)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read YAML ({exc})") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a YAML mapping at top level")
    return path, raw, any(isinstance(k, str) and k.isupper() for k in raw)


def _next_to(path: Path, label_map: str) -> str:
    """A relative label-map path that names a file next to the config ``path`` becomes that file's path (a
    training run's ``config.yaml`` names its ``labelmap.pbtxt`` so, and the run folder can move)."""
    if label_map in PACKAGED_LABEL_MAPS or Path(label_map).is_absolute():
        return label_map
    beside = path.parent / label_map
    return str(beside) if beside.is_file() else label_map


def load_config(source: str | Path) -> ActionModelConfig:
    """Load a config from a YAML path (ours or PySlowFast's) or a packaged config name."""
    path, raw, pyslowfast = read_config_mapping(source)
    try:
        if pyslowfast:
            cfg = _from_pyslowfast(raw, str(path), name=path.stem)
        else:
            cfg = _build(ActionModelConfig, {k: v for k, v in raw.items() if k != TRAIN_SECTION}, "")
    except ConfigError as exc:
        message = str(exc)
        raise ConfigError(message if message.startswith(str(path)) else f"{path}: {message}") from None
    cfg = dataclasses.replace(cfg, label_map=_next_to(path, cfg.label_map),
                              eval_label_map=_next_to(path, cfg.eval_label_map))
    cfg = _validate(cfg, str(path), _PYSLOWFAST_NAMES if pyslowfast else None)
    if cfg.label_map != ActionModelConfig.label_map:
        classes = len(read_label_map(cfg.label_map))
        if classes != cfg.model.num_classes:
            raise ConfigError(f"{path}: model.num_classes={cfg.model.num_classes} contradicts label_map "
                              f"{cfg.label_map} ({classes} classes); the model has one output per class of its "
                              "label map: fix one of them")
    return cfg


def model_actions(cfg: ActionModelConfig) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """(id, name) of each output column of the model, as two tuples: the entries of ``cfg.label_map`` in file
    order when it has ``num_classes`` of them (a model trained on one's own label map), else ids ``column + 1``
    with AVA's names ("" past AVA's 80)."""
    label_map = read_label_map(cfg.label_map)
    if len(label_map) == cfg.model.num_classes:
        return tuple(label_map), tuple(label_map.values())
    ava = read_label_map(ActionModelConfig.label_map)
    ids = tuple(range(1, cfg.model.num_classes + 1))
    return ids, tuple(ava.get(action_id, "") for action_id in ids)


def dump_config(cfg: ActionModelConfig) -> str:
    """Serialise a config as our YAML (tuples as lists)."""
    return yaml.safe_dump(plain_values(cfg), sort_keys=False)


def parse_config(text: str, source: str) -> ActionModelConfig:
    """The inverse of :func:`dump_config`: a config from our YAML text (``source`` names it in errors)."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: cannot read YAML ({exc})") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a YAML mapping at top level")
    return _validate(_build(ActionModelConfig, raw, ""), source)

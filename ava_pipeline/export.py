"""ONNX export: a loaded action model (or torchvision person detector) -> one self-describing ``.onnx`` file.

Action model graph (SlowFast / Slow-only backbone + RoI head, sigmoid included)::

    slow  float32 (N, 3, T/alpha, H, W)  normalised frames  ┐
    fast  float32 (N, 3, T, H, W)        (SlowFast only)     ├─► probs float32 (K, C) in [0, 1]
    boxes float32 (K, 5) [batch_index, x1, y1, x2, y2]       ┘   column c = AVA action id c + 1
          in input pixels (the resized frames), top-left origin

N, H, W and K are dynamic; T is fixed by the config. RoIAlign becomes ONNX ``RoiAlign`` (opset >= 16, whose
``coordinate_transformation_mode`` expresses both ``aligned=True``, ``half_pixel``, and ``aligned=False``,
``output_half_pixel``), so onnxruntime pools exactly what torchvision pools.

Person detector graph (torchvision Faster R-CNN, its resize and normalisation inside)::

    image float32 (3, H, W) RGB in [0, 1]  ─►  boxes float32 (D, 4) x1, y1, x2, y2 in image pixels,
                                                scores float32 (D,), labels int64 (D,) COCO category index

Every file carries metadata (``metadata_props``, read back by :func:`read_onnx_metadata`, no torch needed):
``kind`` (``action_model`` | ``person_detector``), ``config_name``, ``class_ids`` and ``class_names`` (JSON
lists, one entry per output column), ``preprocessing`` (JSON: mean, std, short side, frames, sampling rate,
alpha, BGR, fps, input layout), ``config`` (the full config as our YAML) and ``weights_sha256``.

Both graphs are traced with PyTorch's TorchScript-based ONNX exporter: ``torch.export`` (the dynamo
exporter) cannot trace the detector (torchvision's NMS branches on the data-dependent number of boxes), and
for the action model it exports the same graph about 5x slower.
"""
from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from .errors import ConfigError, DependencyMissingError, InputFormatError

DEFAULT_OPSET = 17
MIN_OPSET = 16  # RoiAlign's coordinate_transformation_mode (aligned=True) needs opset 16
MAX_OPSET = 20  # the newest opset PyTorch's TorchScript-based exporter writes

ACTION_INPUTS = {"slowfast": ("slow", "fast", "boxes"), "slow": ("slow", "boxes")}
ACTION_OUTPUT = "probs"
DETECTOR_INPUT = "image"
DETECTOR_OUTPUTS = ("boxes", "scores", "labels")
INSTALL_HINT = "install it with the onnx extra: pip install 'ava-pipeline[onnx]'"


def require(module_name: str, purpose: str):
    """Import ``module_name`` (``onnx``, ``onnxruntime``) or raise :class:`DependencyMissingError` saying
    what needed it and how to install it."""
    import importlib

    try:
        return importlib.import_module(module_name)
    except ImportError:
        raise DependencyMissingError(f"{purpose} needs the optional package {module_name!r}, which is not "
                                     f"installed; {INSTALL_HINT}") from None


# ---------------------------------------------------------------------------------------------- metadata

@dataclass(frozen=True)
class OnnxMetadata:
    """What an exported file says about itself (see the module docstring for the keys)."""

    kind: str  # "action_model" | "person_detector"
    config_name: str
    class_ids: list[int]  # one per output column (action model) / category index (detector)
    class_names: list[str]
    preprocessing: dict[str, Any]
    weights_sha256: Optional[str]
    config: Optional[str] = None  # the action model's full config, our YAML
    ava_pipeline_version: Optional[str] = None

    def to_properties(self) -> dict[str, str]:
        properties = {"kind": self.kind, "config_name": self.config_name, "class_ids": json.dumps(self.class_ids),
                      "class_names": json.dumps(self.class_names),
                      "preprocessing": json.dumps(self.preprocessing, sort_keys=True),
                      "weights_sha256": self.weights_sha256 or "", "config": self.config or "",
                      "ava_pipeline_version": self.ava_pipeline_version or ""}
        return properties

    @classmethod
    def from_properties(cls, properties: dict[str, str], source: str) -> "OnnxMetadata":
        missing = [key for key in ("kind", "config_name", "class_ids", "class_names", "preprocessing")
                   if key not in properties]
        if missing:
            raise InputFormatError(f"{source}: not an ava-pipeline ONNX export (metadata lacks "
                                   f"{', '.join(missing)}); export the model with ava-export")
        try:
            lists = json.loads(properties["class_ids"]), json.loads(properties["class_names"])
            preprocessing = json.loads(properties["preprocessing"])
        except json.JSONDecodeError as exc:
            raise InputFormatError(f"{source}: damaged ONNX metadata ({exc}); export the model again") from None
        return cls(kind=properties["kind"], config_name=properties["config_name"], class_ids=lists[0],
                   class_names=lists[1], preprocessing=preprocessing,
                   weights_sha256=properties.get("weights_sha256") or None, config=properties.get("config") or None,
                   ava_pipeline_version=properties.get("ava_pipeline_version") or None)

    def action_config(self, source: str):
        """The action model's ``ActionModelConfig`` rebuilt from the embedded YAML."""
        from .config import parse_config

        if self.kind != "action_model" or not self.config:
            raise InputFormatError(f"{source}: holds a {self.kind}, not an action model; pass the file "
                                   "ava-export wrote without --detector")
        return parse_config(self.config, f"{source} (embedded config)")


def read_onnx_metadata(path: str | Path) -> OnnxMetadata:
    """The metadata of an exported file (needs the ``onnx`` package, not torch)."""
    onnx = require("onnx", "reading ONNX metadata")
    path = Path(path)
    if not path.is_file():
        raise InputFormatError(f"{path}: no such ONNX file; export one with ava-export")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError and others for a file of another format
        raise InputFormatError(f"{path}: not a readable ONNX file ({type(exc).__name__}: {exc}); export the model "
                               "again with ava-export") from None
    return OnnxMetadata.from_properties({p.key: p.value for p in model.metadata_props}, str(path))


def action_metadata(config, weights_sha256: Optional[str]) -> OnnxMetadata:
    """Metadata of an action model exported from ``config`` (an ``ActionModelConfig``)."""
    from . import __version__
    from .config import dump_config, model_actions

    ids, names = model_actions(config)
    model_cfg, data = config.model, config.data
    preprocessing = {
        "mean": list(data.mean), "std": list(data.std), "short_side": data.test_crop_size, "bgr": data.bgr,
        "fps": data.fps, "num_frames": model_cfg.num_frames, "sampling_rate": model_cfg.sampling_rate,
        "alpha": model_cfg.alpha, "arch": model_cfg.arch, "inputs": list(ACTION_INPUTS[model_cfg.arch]),
        "layout": "(N, 3, T, H, W) float32 RGB (BGR if bgr) frames scaled to [0, 1], then (x - mean) / std; "
                  "resized so the short side is short_side; fast: num_frames frames sampling_rate apart on the "
                  "fps grid around the keyframe; slow: num_frames // alpha of them, at indices "
                  "floor(linspace(0, num_frames - 1, num_frames // alpha)); boxes (K, 5) [batch_index, x1, y1, "
                  "x2, y2] in input pixels"}
    return OnnxMetadata(kind="action_model", config_name=config.name, class_ids=list(ids),
                        class_names=[name or f"action {i}" for i, name in zip(ids, names)], preprocessing=preprocessing,
                        weights_sha256=weights_sha256, config=dump_config(config), ava_pipeline_version=__version__)


# ----------------------------------------------------------------------------------------------- graphs

def _graph_module(model, arch: str):
    """``model`` with one positional argument per ONNX input: ``(slow, fast, boxes)`` or ``(slow, boxes)``."""
    from torch import nn

    class SlowFastGraph(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, slow, fast, boxes):
            return self.model([slow, fast], boxes)

    class SlowGraph(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, slow, boxes):
            return self.model([slow], boxes)

    return (SlowFastGraph if arch == "slowfast" else SlowGraph)().eval()


def sample_action_inputs(model_cfg, *, batch: int = 2, height: int = 64, width: int = 96, boxes: int = 3,
                         seed: int = 0):
    """Seeded inputs for tracing / checking an export: ``{name: tensor}`` in the graph's input order."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    fast = torch.randn(batch, 3, model_cfg.num_frames, height, width, generator=generator)
    inputs = {"slow": fast[:, :, ::model_cfg.alpha].contiguous(), "fast": fast} if model_cfg.arch == "slowfast" \
        else {"slow": fast}
    corners = torch.rand(boxes, 4, generator=generator) * torch.tensor([width, height, width, height]) / 2
    corners[:, 2:] += corners[:, :2] + 4.0
    index = torch.arange(boxes, dtype=torch.float32).remainder(batch).unsqueeze(1)
    inputs["boxes"] = torch.cat([index, corners], 1)
    return inputs


def _check_opset(opset: int) -> None:
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ConfigError(f"opset {opset} is not supported: use {MIN_OPSET}..{MAX_OPSET} (RoiAlign with "
                          f"half-pixel alignment needs {MIN_OPSET}; default {DEFAULT_OPSET})")


def _trace_to_onnx(module, args: tuple, out: Path, *, input_names, output_names, dynamic_axes, opset: int,
                   metadata: OnnxMetadata) -> Path:
    """Export with the TorchScript-based exporter, add ``metadata``, write ``out`` atomically."""
    import torch
    import torchvision.ops  # noqa: F401  (RoIAlign's ONNX symbolic; importing it inside the trace would trace ops)

    onnx = require("onnx", "ONNX export")
    out = Path(out)
    partial = out.with_name(out.name + ".part")
    try:
        with warnings.catch_warnings():
            # The tracer's notes on Python-level shape checks (constant for a fixed T) and the exporter's
            # deprecation notice are not actionable for the user of ava-export.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            warnings.filterwarnings("ignore", message=".*advanced indexing.*")
            warnings.filterwarnings("ignore", message="To copy construct from a tensor")  # torchvision's tracing
            with torch.no_grad():
                torch.onnx.export(module, args, str(partial), input_names=list(input_names),
                                  output_names=list(output_names), dynamic_axes=dynamic_axes, opset_version=opset,
                                  dynamo=False)
        graph = onnx.load(str(partial))
        for key, value in metadata.to_properties().items():
            entry = graph.metadata_props.add()
            entry.key, entry.value = key, value
        graph.doc_string = f"ava-pipeline {metadata.kind} {metadata.config_name}"
        onnx.save(graph, str(partial))
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
    return out


def export_action_model(model, config, out: str | Path, *, opset: int = DEFAULT_OPSET,
                        weights_sha256: Optional[str] = None) -> Path:
    """Write the action model ``model`` (eager ``SlowFast`` as built by ``build_action_model``, eval mode) with
    config ``config`` (``ActionModelConfig``) to ``out`` as ONNX; see the module docstring for the graph.

    Returns ``out``. Raises :class:`ConfigError` for an unsupported opset, :class:`DependencyMissingError`
    without the ``onnx`` package.
    """
    _check_opset(opset)
    arch = config.model.arch
    names = ACTION_INPUTS[arch]
    dynamic_axes = {name: {0: "batch", 3: "height", 4: "width"} for name in names if name != "boxes"}
    dynamic_axes.update(boxes={0: "num_boxes"}, probs={0: "num_boxes"})
    sample = sample_action_inputs(config.model)
    graph = _graph_module(model.eval(), arch)
    return _trace_to_onnx(graph, tuple(sample[name] for name in names), Path(out), input_names=names,
                          output_names=[ACTION_OUTPUT], dynamic_axes=dynamic_axes, opset=opset,
                          metadata=action_metadata(config, weights_sha256))


def export_person_detector(detector, out: str | Path, *, opset: int = DEFAULT_OPSET) -> Path:
    """Write a torchvision person detector (``detector.TorchvisionPersonDetector``) to ``out`` as ONNX.

    onnxruntime reproduces torchvision's boxes and scores for images whose short side is already the model's
    input size; for other sizes the exported resize (torchvision's traced ``interpolate``) can produce an image
    one pixel smaller than torchvision's, which moves the boxes slightly. The graph keeps every COCO class with the detector's score threshold (the model's
    ``roi_heads.score_thresh``); selecting persons (``labels == person label``), the minimum box size and
    the per-image cap stay with the caller, as recorded in ``preprocessing``. Returns ``out``.
    """
    import torch
    from torch import nn

    _check_opset(opset)
    if getattr(detector, "backend", None) != "torchvision":
        raise ConfigError(f"only the torchvision person detector can be exported to ONNX, not "
                          f"{getattr(detector, 'backend', type(detector).__name__)!r}")
    if detector.fast:
        raise ConfigError("the detector runs its fast inference model, which ONNX cannot express (fused oneDNN "
                          "convolutions); build it with fast=False to export it")
    network = detector.model.eval()

    class DetectorGraph(nn.Module):
        def __init__(self):
            super().__init__()
            self.network = network

        def forward(self, image):
            found = self.network([image])[0]
            return found["boxes"], found["scores"], found["labels"]

    transform = network.transform
    categories = _coco_categories(detector.name)
    preprocessing = {
        "input": "image (3, H, W) float32 RGB in [0, 1]; resize and normalisation happen inside the graph, but "
                 "the graph's resize can come out one pixel short of torchvision's (e.g. 150x100 -> 239x159, not "
                 "240x160): for torchvision's exact results pass images already resized so that the short side "
                 "is input_min_size (long side <= input_max_size)",
        "input_min_size": int(transform.min_size[0]), "input_max_size": int(transform.max_size),
        "image_mean": list(transform.image_mean), "image_std": list(transform.image_std),
        "score_thresh": detector.score_thresh, "person_label": detector.person_label,
        "min_box_size": detector.min_box_size, "max_detections": detector.max_detections,
        "outputs": "boxes (D, 4) x1, y1, x2, y2 in image pixels; scores (D,); labels (D,) int64, all classes"}
    from . import __version__

    metadata = OnnxMetadata(kind="person_detector", config_name=detector.name,
                            class_ids=list(range(len(categories))), class_names=categories,
                            preprocessing=preprocessing, weights_sha256=detector.weights_sha256,
                            ava_pipeline_version=__version__)
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(3, 240, 320, generator=generator)
    axes = {"image": {1: "height", 2: "width"}, **{name: {0: "detections"} for name in DETECTOR_OUTPUTS}}
    return _trace_to_onnx(DetectorGraph().eval(), (image,), Path(out), input_names=[DETECTOR_INPUT],
                          output_names=list(DETECTOR_OUTPUTS), dynamic_axes=axes, opset=opset, metadata=metadata)


def _coco_categories(name: str) -> list[str]:
    import torchvision

    return list(torchvision.models.get_model_weights(name).DEFAULT.meta["categories"])

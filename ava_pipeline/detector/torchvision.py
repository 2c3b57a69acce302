"""torchvision's COCO Faster R-CNNs as person detectors: model structure, safe weight loading, cached downloads."""
from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence, Union

import numpy as np

from ..checksums import file_sha256
from ..errors import ConfigError, WeightsError
from .base import (DEFAULT_MAX_DETECTIONS, DEFAULT_SCORE_THRESH, NO_MODEL_CAP, ImageDetector, PersonBoxes,
                   check_images, strictly_below)

if TYPE_CHECKING:  # pragma: no cover
    import torch

TORCHVISION_MODELS = {
    # name: eps of the frozen batch norms of the backbone in torchvision's COCO model (None: plain BatchNorm2d)
    "fasterrcnn_resnet50_fpn_v2": None,  # COCO box AP 46.7
    "fasterrcnn_resnet50_fpn": 0.0,  # 37.0; weights converted from Detectron, hence eps 0
    "fasterrcnn_mobilenet_v3_large_fpn": 1e-5,  # 32.8, the fast CPU option
    "fasterrcnn_mobilenet_v3_large_320_fpn": 1e-5,  # 22.8, faster still (input short side 320)
}
"""torchvision person detectors. torchvision builds its COCO models with FrozenBatchNorm2d in the backbone
(v1: with eps 0) and randomly initialised ones with BatchNorm2d; we build the COCO structure so that any
state dict of the COCO model, or of one fine-tuned from it, gives torchvision's numbers."""
DEFAULT_TORCHVISION_MODEL = "fasterrcnn_resnet50_fpn_v2"
DETECTOR_PRECISIONS = {"fp32": None, "fp16": "float16", "bf16": "bfloat16"}
"""Detector precisions of the fast path: name -> torch dtype of its autocast (None: float32)."""

class TorchvisionPersonDetector(ImageDetector):
    """A torchvision Faster R-CNN (91 COCO classes) keeping the person class.

    ``model``: a finished, loaded ``torchvision.models.detection.FasterRCNN``; its own transform converts
    each image (float [0, 1] RGB, CHW) to the network's input (normalisation, resize so the short side is
    ``transform.min_size`` and the long side at most ``transform.max_size``) and maps boxes back to original
    pixels. ``name`` and ``weights`` / ``weights_sha256`` describe the model for the fingerprint.
    The model's own score threshold is set just below ``score_thresh`` and its per-image cap lifted (other
    classes must not crowd persons out); ``max_detections`` then caps the persons. Images are run as one
    batch per :meth:`detect` call.

    With ``fast`` (the default) ``model`` is rewritten in place by
    :func:`~ava_pipeline.detector.fast.optimize_detector` (norms folded, fused oneDNN convolutions on CPU; the
    same detections within float32 rounding; one set of weights in memory): :attr:`model` is then the fast
    model. ``fast=False`` keeps the eager torchvision model (what ONNX export needs). ``precision`` ``"fp16"`` /
    ``"bf16"`` runs the fast model's networks under autocast (for GPUs; boxes then differ by more than rounding).
    """

    backend = "torchvision"

    def __init__(self, model: "torch.nn.Module", *, name: str, weights: str, weights_sha256: Optional[str],
                 score_thresh: float = DEFAULT_SCORE_THRESH, min_box_size: float = 0.0,
                 max_detections: int = DEFAULT_MAX_DETECTIONS, person_label: int = 1, device: Any = "cpu",
                 fast: bool = True, precision: str = "fp32"):
        import torch

        if precision not in DETECTOR_PRECISIONS:
            raise ConfigError(f"unknown detector precision {precision!r}; use one of {list(DETECTOR_PRECISIONS)}")
        if precision != "fp32" and not fast:
            raise ConfigError(f"detector precision={precision!r} runs through the fast path; drop fast=False")

        super().__init__(name=name, weights=weights, weights_sha256=weights_sha256, score_thresh=score_thresh,
                         min_box_size=min_box_size, max_detections=max_detections, person_label=person_label)
        model.roi_heads.score_thresh = strictly_below(score_thresh)
        model.roi_heads.detections_per_img = NO_MODEL_CAP
        self.fast = bool(fast)
        self.precision = precision
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)
        """What :meth:`detect` runs: the fast model (``model`` rewritten in place), or the eager one."""
        if self.fast:
            from .fast import optimize_detector

            dtype = DETECTOR_PRECISIONS[self.precision]
            self.model = optimize_detector(self.model, device=self.device, dtype=dtype and getattr(torch, dtype),
                                           copy=False)

    @property
    def description(self) -> str:
        transform = self.model.transform
        return (self._describe(f"input short side {transform.min_size[0]} (long <= {transform.max_size})")
                + ("" if self.fast else ", eager") + ("" if self.precision == "fp32" else f", {self.precision}"))

    def fingerprint(self) -> dict:
        import torchvision

        transform = self.model.transform
        # fast or not gives the same boxes up to rounding: left out, so that manifests stay valid
        return self._fingerprint(torchvision=torchvision.__version__, input_min_size=int(transform.min_size[0]),
                                 input_max_size=int(transform.max_size),
                                 **({} if self.precision == "fp32" else {"precision": self.precision}))

    def to(self, device: Any) -> "TorchvisionPersonDetector":
        import torch

        self.device = torch.device(device)
        self.model.to(self.device)  # the fast model's oneDNN path applies on CPU only
        return self

    def detect(self, images: Sequence[np.ndarray], *, video_id: Optional[str] = None,
               timestamps: Optional[Sequence] = None) -> list[PersonBoxes]:
        """Person boxes per image (see :class:`PersonBoxes`); ``video_id`` / ``timestamps`` are ignored.

        The images go through the model as one batch, padded to a common size: images of different sizes
        can get slightly other boxes than one at a time (keyframes of one video share their size)."""
        import torch

        check_images(images)
        if not images:
            return []
        with torch.inference_mode():
            # a copy: keyframe images may be read-only views of the decoder's frames, or BGR->RGB views
            tensors = [torch.tensor(np.ascontiguousarray(image), device=self.device).permute(2, 0, 1).float() / 255
                       for image in images]
            outputs = self.model(tensors)
        return [self._persons(out["boxes"].cpu().numpy(), out["scores"].cpu().numpy(), out["labels"].cpu().numpy(),
                              image) for image, out in zip(images, outputs)]


def build_torchvision_model(name: str = DEFAULT_TORCHVISION_MODEL, *, input_min_size: Optional[int] = None,
                            input_max_size: Optional[int] = None) -> "torch.nn.Module":
    """An untrained torchvision Faster R-CNN ``name`` with the layer structure of its COCO model.

    Nothing is downloaded. ``input_min_size`` / ``input_max_size`` override the model's resize (short side /
    long-side cap; torchvision's defaults: 800 / 1333, 320 / 640 for the 320 variant).
    """
    import torch
    import torchvision
    from torchvision.ops import FrozenBatchNorm2d

    if name not in TORCHVISION_MODELS:
        raise ConfigError(f"unknown torchvision detector {name!r}; use one of {list(TORCHVISION_MODELS)}")
    options = {"min_size": input_min_size, "max_size": input_max_size}
    builder = torchvision.models.get_model_builder(name)
    model = builder(weights=None, weights_backbone=None, num_classes=91,
                    **{key: value for key, value in options.items() if value is not None})
    frozen_eps = TORCHVISION_MODELS[name]
    if frozen_eps is not None:
        _freeze_batch_norms(model.backbone.body, frozen_eps, torch.nn.BatchNorm2d, FrozenBatchNorm2d)
    return model.eval()


def _freeze_batch_norms(module, eps: float, batch_norm_type, frozen_type) -> None:
    for child_name, child in module.named_children():
        if isinstance(child, batch_norm_type):
            setattr(module, child_name, frozen_type(child.num_features, eps=eps))
        else:
            _freeze_batch_norms(child, eps, batch_norm_type, frozen_type)


def load_detector_state_dict(model: "torch.nn.Module", path: Union[str, Path], *, name: str) -> str:
    """Load a state dict file (``torch.save(model.state_dict(), path)``, or a training checkpoint with the
    state dict under ``"model"``) into ``model`` safely (``weights_only``); returns the file's sha256.

    Every parameter and buffer of ``model`` must be present with its shape (batch-norm
    ``num_batches_tracked`` counters excepted); otherwise :class:`WeightsError` lists what does not fit.
    """
    import torch

    from ..weights.formats import safe_torch_load
    from ..weights.loading import check_state_dict, describe

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: detector weights file not found; pass an existing state dict file")
    state = safe_torch_load(path, "detector weights",
                            convert_hint="save the weights with torch.save(model.state_dict(), path)")
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not (isinstance(state, dict) and state and all(isinstance(v, torch.Tensor) for v in state.values())):
        raise WeightsError(f"{path}: expected a state dict (parameter name -> tensor) of {name}, got "
                           f"{type(state).__name__}; save the weights with torch.save(model.state_dict(), path)")
    fitting, report = check_state_dict(model, state)
    unexpected = [key for key in report.unexpected if not key.endswith("num_batches_tracked")]
    if report.missing or report.mismatched or unexpected:
        raise WeightsError(f"{path}: weights do not fit {name}: {describe(report)}; pass the weights of this model, "
                           f"or choose the model they belong to (one of {list(TORCHVISION_MODELS)})")
    model.load_state_dict(fitting, strict=False)
    return file_sha256(path)


def fetch_torchvision_weights(url: str, directory: Union[str, Path, None] = None, *,
                              progress: Optional[bool] = None) -> Path:
    """Path of torchvision's weight file ``url`` in the torch hub cache, downloaded when absent.

    The file name carries a sha256 prefix (``name-<hex>.pth``) that is checked on every call, not only after
    a download. ``directory``: default ``$TORCH_HOME/hub/checkpoints``.
    """
    import torch

    directory = Path(directory) if directory is not None else Path(torch.hub.get_dir()) / "checkpoints"
    filename = url.rsplit("/", 1)[-1]
    path = directory / filename
    found = re.search(r"-([a-f0-9]+)\.", filename)
    if not path.is_file():
        directory.mkdir(parents=True, exist_ok=True)
        try:  # writes a temporary file in `directory` and renames it, so no truncated file is left behind
            torch.hub.download_url_to_file(url, str(path), progress=sys.stderr.isatty() if progress is None
                                           else progress)
        except Exception as exc:
            raise WeightsError(
                f"cannot download detector weights {url} ({exc}); fetch that file on a machine with network "
                f"access and pass it with weights=FILE (ava-detect: --detector-weights FILE), or put it at "
                f"{path}") from None
    if found and not file_sha256(path).startswith(found.group(1)):
        raise WeightsError(f"{path}: sha256 does not start with {found.group(1)} as its name says; the file is "
                           "damaged or incomplete, delete it to download it again")
    return path


def build_torchvision_detector(model: str = DEFAULT_TORCHVISION_MODEL, *, weights: Union[str, Path, None] = None,
                               score_thresh: float = DEFAULT_SCORE_THRESH, min_box_size: float = 0.0,
                               max_detections: int = DEFAULT_MAX_DETECTIONS, device: str = "cpu",
                               input_min_size: Optional[int] = None, input_max_size: Optional[int] = None,
                               fast: bool = True, precision: str = "fp32") -> TorchvisionPersonDetector:
    """Torchvision person detector with COCO weights (``weights=None``: torchvision's default weights for
    ``model``, downloaded once to the torch hub cache) or a local state dict file ``weights``; ``fast`` /
    ``precision`` as in :class:`TorchvisionPersonDetector`."""
    import torchvision

    network = build_torchvision_model(model, input_min_size=input_min_size, input_max_size=input_max_size)
    default = torchvision.models.get_model_weights(model).DEFAULT
    if weights is None:
        path, label = fetch_torchvision_weights(default.url), f"torchvision {default}"
    else:
        path, label = Path(weights), Path(weights).name
    sha256 = load_detector_state_dict(network, path, name=model)
    return TorchvisionPersonDetector(network, name=model, weights=label, weights_sha256=sha256,
                                     score_thresh=score_thresh, min_box_size=min_box_size,
                                     max_detections=max_detections,
                                     person_label=default.meta["categories"].index("person"), device=device,
                                     fast=fast, precision=precision)

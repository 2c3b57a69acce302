"""Person detection at keyframes: images in, normalized person boxes out.

Data flow::

    keyframe images, uint8 (H, W, 3) RGB, original size
        ──► PersonDetector.detect(images, video_id=..., timestamps=...)
        ──► one PersonBoxes per image: boxes float32 (K, 4) normalized x1, y1, x2, y2 in [0, 1]
            (top-left origin), scores float32 (K,) descending for image backends

Backends (:func:`build_detector` picks one by name):

* ``torchvision`` (default): a COCO Faster R-CNN from torchvision, person class only;
  ``fasterrcnn_resnet50_fpn_v2`` (COCO box AP 46.7) by default.
* ``detectron2``: any detectron2 config and weights, when detectron2 is installed (it is not on PyPI).
* ``precomputed``: person boxes read from an AVA box CSV (e.g. the released
  ``ava_detection_val_boxes_and_labels.csv``); pixels are ignored, boxes are looked up by video id and time.

Every backend keeps a box when its score is at least ``score_thresh`` (PySlowFast's rule for box files).
"""
from __future__ import annotations

import hashlib
import re
import sys
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Protocol, Sequence, Union

import numpy as np

from .errors import ConfigError, DependencyMissingError, InputFormatError, WeightsError
from .evaluation.io import csv_rows
from .video import parse_seconds

if TYPE_CHECKING:  # pragma: no cover
    import torch

BACKENDS = ("torchvision", "detectron2", "precomputed")
DEFAULT_SCORE_THRESH = 0.8
"""Person score threshold of the released AVA box files as SlowFast uses them."""
DEFAULT_MAX_DETECTIONS = 100
"""Person boxes kept per image by the image backends (highest scores first)."""

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

DEFAULT_DETECTRON2_MODEL = "COCO-Detection/faster_rcnn_R_50_FPN_3x"
"""The person detector of PySlowFast's demo (COCO box AP 40.2)."""
DETECTRON2_INSTALL = "pip install 'git+https://github.com/facebookresearch/detectron2.git'"

_NO_MODEL_CAP = 100_000
"""Per-image cap handed to the models: detections of other classes must never crowd persons out."""


# ------------------------------------------------------------------------------------------------ interface

@dataclass
class PersonBoxes:
    """Person boxes of one keyframe image.

    ``boxes`` float32 (K, 4): normalized ``x1, y1, x2, y2`` in [0, 1] of the image, top-left origin.
    ``scores`` float32 (K,): detector scores. ``original``: for boxes read from a file, the 4 coordinate
    texts per box exactly as written there (so that outputs can repeat them verbatim), else None.
    """

    boxes: np.ndarray
    scores: np.ndarray
    original: Optional[list[tuple[str, str, str, str]]] = field(default=None)

    def __len__(self) -> int:
        return len(self.boxes)

    @classmethod
    def empty(cls, *, from_file: bool = False) -> "PersonBoxes":
        return cls(np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), [] if from_file else None)


class PersonDetector(Protocol):
    """What the pipeline needs of a person detector (see the module docstring for the data contract)."""

    description: str
    """One human-readable line: backend, model, weights, thresholds."""

    def detect(self, images: Sequence[np.ndarray], *, video_id: Optional[str] = None,
               timestamps: Optional[Sequence] = None) -> list[PersonBoxes]:
        """Person boxes for each keyframe. ``images``: uint8 (H, W, 3) RGB arrays; ``timestamps``: seconds
        from the video start, one per image. Image backends ignore ``video_id`` and ``timestamps``; the
        precomputed backend ignores the pixels."""

    def fingerprint(self) -> dict:
        """JSON-ready record of everything that determines the boxes (recorded in batch manifests)."""

    def to(self, device: Any) -> "PersonDetector":
        """Move the model to ``device`` (no-op without a model); returns self."""


def _strictly_below(threshold: float) -> float:
    """The largest float32 below ``threshold``: models that keep ``score > t`` then keep ``score >= threshold``."""
    return float(np.nextafter(np.float32(threshold), np.float32(-np.inf)))


def select_persons(boxes_px: np.ndarray, scores: np.ndarray, labels: np.ndarray, *, person_label: int,
                   image_size: tuple[int, int], score_thresh: float, min_box_size: float,
                   max_detections: int) -> PersonBoxes:
    """Person boxes of one image from a detector's raw outputs.

    ``boxes_px`` float (N, 4) ``x1, y1, x2, y2`` in pixels of the original image of ``image_size``
    (width, height), ``scores`` (N,), ``labels`` (N,) class ids. Keeps label
    ``person_label`` with score ``>= score_thresh`` and both sides ``>= min_box_size`` pixels, the
    ``max_detections`` best of them (descending score), normalized by the image size and clipped to [0, 1].
    """
    scores = np.asarray(scores, np.float32).reshape(-1)
    order = np.argsort(-scores, kind="stable")
    boxes_px, scores = np.asarray(boxes_px, np.float32).reshape(-1, 4)[order], scores[order]
    labels = np.asarray(labels).reshape(-1)[order]
    width, height = image_size
    keep = (labels == person_label) & (scores >= np.float32(score_thresh))
    keep &= (boxes_px[:, 2] - boxes_px[:, 0] >= min_box_size) & (boxes_px[:, 3] - boxes_px[:, 1] >= min_box_size)
    chosen = np.flatnonzero(keep)[:max_detections]
    normalized = boxes_px[chosen] / np.array([width, height, width, height], np.float32)
    return PersonBoxes(np.clip(normalized, 0.0, 1.0).astype(np.float32), scores[chosen].copy())


def _check_images(images: Sequence[np.ndarray]) -> None:
    for index, image in enumerate(images):
        if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3
                and image.shape[2] == 3):
            described = (f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__)
            raise ValueError(f"image {index}: expected a uint8 (H, W, 3) RGB array, got {described}")


def file_sha256(path: Union[str, Path]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------- torchvision

class TorchvisionPersonDetector:
    """A torchvision Faster R-CNN (91 COCO classes) keeping the person class.

    ``model``: a finished, loaded ``torchvision.models.detection.FasterRCNN``; its own transform converts
    each image (float [0, 1] RGB, CHW) to the network's input (normalisation, resize so the short side is
    ``transform.min_size`` and the long side at most ``transform.max_size``) and maps boxes back to original
    pixels. ``name`` and ``weights`` / ``weights_sha256`` describe the model for the fingerprint.
    The model's own score threshold is set just below ``score_thresh`` and its per-image cap lifted (other
    classes must not crowd persons out); ``max_detections`` then caps the persons. Images are run as one
    batch per :meth:`detect` call.
    """

    backend = "torchvision"

    def __init__(self, model: "torch.nn.Module", *, name: str, weights: str, weights_sha256: Optional[str],
                 score_thresh: float = DEFAULT_SCORE_THRESH, min_box_size: float = 0.0,
                 max_detections: int = DEFAULT_MAX_DETECTIONS, person_label: int = 1, device: Any = "cpu"):
        import torch

        self.model = model.eval()
        self.model.roi_heads.score_thresh = _strictly_below(score_thresh)
        self.model.roi_heads.detections_per_img = _NO_MODEL_CAP
        self.name = name
        self.weights = weights
        self.weights_sha256 = weights_sha256
        self.score_thresh = float(score_thresh)
        self.min_box_size = float(min_box_size)
        self.max_detections = int(max_detections)
        self.person_label = person_label
        self.device = torch.device(device)
        self.model.to(self.device)

    @property
    def description(self) -> str:
        transform = self.model.transform
        digest = f"sha256 {self.weights_sha256[:12]}" if self.weights_sha256 else "no hash"
        return (f"torchvision {self.name} ({self.weights}, {digest}), input short side {transform.min_size[0]} "
                f"(long <= {transform.max_size}), person score >= {self.score_thresh}, "
                f"boxes >= {self.min_box_size:g} px, <= {self.max_detections} per image")

    def fingerprint(self) -> dict:
        import torchvision

        transform = self.model.transform
        return {"backend": self.backend, "model": self.name, "weights": self.weights,
                "weights_sha256": self.weights_sha256, "torchvision": torchvision.__version__,
                "score_thresh": self.score_thresh, "min_box_size": self.min_box_size,
                "max_detections": self.max_detections, "input_min_size": int(transform.min_size[0]),
                "input_max_size": int(transform.max_size)}

    def to(self, device: Any) -> "TorchvisionPersonDetector":
        import torch

        self.device = torch.device(device)
        self.model.to(self.device)
        return self

    def detect(self, images: Sequence[np.ndarray], *, video_id: Optional[str] = None,
               timestamps: Optional[Sequence] = None) -> list[PersonBoxes]:
        """Person boxes per image (see :class:`PersonBoxes`); ``video_id`` / ``timestamps`` are ignored.

        The images go through the model as one batch, padded to a common size: images of different sizes
        can get slightly other boxes than one at a time (keyframes of one video share their size)."""
        import torch

        _check_images(images)
        if not images:
            return []
        with torch.inference_mode():
            # a copy: keyframe images may be read-only views of the decoder's frames, or BGR->RGB views
            tensors = [torch.tensor(np.ascontiguousarray(image), device=self.device).permute(2, 0, 1).float() / 255
                       for image in images]
            outputs = self.model(tensors)
        return [select_persons(out["boxes"].cpu().numpy(), out["scores"].cpu().numpy(), out["labels"].cpu().numpy(),
                               person_label=self.person_label, image_size=(image.shape[1], image.shape[0]),
                               score_thresh=self.score_thresh, min_box_size=self.min_box_size,
                               max_detections=self.max_detections)
                for image, out in zip(images, outputs)]


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
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: detector weights file not found; pass an existing state dict file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        refused = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        if refused:
            raise WeightsError(f"{path}: not a plain tensor state dict (it holds {refused.group(1)} objects, which "
                               "safe loading refuses); save the weights with torch.save(model.state_dict(), path)"
                               ) from None
        raise WeightsError(f"{path}: cannot read detector weights (not a file torch.save wrote); the file is "
                           "damaged or of another format, download it again") from None
    except Exception as exc:  # torch raises RuntimeError, EOFError, zipfile errors... for damaged files
        raise WeightsError(f"{path}: cannot read detector weights ({type(exc).__name__}: {exc}); the file is "
                           "damaged or not a PyTorch file, download it again") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not (isinstance(state, dict) and state and all(isinstance(v, torch.Tensor) for v in state.values())):
        raise WeightsError(f"{path}: expected a state dict (parameter name -> tensor) of {name}, got "
                           f"{type(state).__name__}; save the weights with torch.save(model.state_dict(), path)")
    expected = model.state_dict()

    def counter(key: str) -> bool:
        return key.endswith("num_batches_tracked")

    missing = [key for key in expected if key not in state and not counter(key)]
    unexpected = [key for key in state if key not in expected and not counter(key)]
    mismatched = [f"{key} {tuple(state[key].shape)} vs {tuple(value.shape)}" for key, value in expected.items()
                  if key in state and state[key].shape != value.shape]
    if missing or unexpected or mismatched:
        groups = [(f"{len(keys)} {title}", keys) for title, keys in
                  (("missing", missing), ("unexpected", unexpected), ("of another shape (file vs model)", mismatched))
                  if keys]
        details = "; ".join(f"{label}: {', '.join(keys[:4])}{', ...' if len(keys) > 4 else ''}"
                            for label, keys in groups)
        raise WeightsError(f"{path}: weights do not fit {name} ({details}); pass the weights of this model, "
                           f"or choose the model they belong to (one of {list(TORCHVISION_MODELS)})")
    model.load_state_dict({key: value for key, value in state.items() if key in expected}, strict=False)
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
                               input_min_size: Optional[int] = None, input_max_size: Optional[int] = None
                               ) -> TorchvisionPersonDetector:
    """Torchvision person detector with COCO weights (``weights=None``: torchvision's default weights for
    ``model``, downloaded once to the torch hub cache) or a local state dict file ``weights``."""
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
                                     person_label=default.meta["categories"].index("person"), device=device)


# ---------------------------------------------------------------------------------------------- detectron2

class Detectron2PersonDetector:
    """A detectron2 detector (any meta-architecture returning ``instances``) keeping the person class.

    ``model``: a finished detectron2 model in eval mode; ``input_format`` ``"BGR"`` or ``"RGB"`` (the
    config's ``INPUT.FORMAT``: RGB images are flipped to BGR for BGR models, as detectron2's
    ``DefaultPredictor`` does for its BGR input); ``resize``: detectron2's ``ResizeShortestEdge`` of the
    config's test sizes. The model maps boxes back to original pixels itself.
    """

    backend = "detectron2"

    def __init__(self, model, *, input_format: str, resize, person_label: int, name: str, weights: str,
                 weights_sha256: Optional[str], score_thresh: float = DEFAULT_SCORE_THRESH,
                 min_box_size: float = 0.0, max_detections: int = DEFAULT_MAX_DETECTIONS):
        if input_format not in ("BGR", "RGB"):
            raise ConfigError(f"detectron2 INPUT.FORMAT {input_format!r} is not supported; use BGR or RGB")
        self.model = model.eval()
        self.input_format = input_format
        self.resize = resize
        self.person_label = person_label
        self.name = name
        self.weights = weights
        self.weights_sha256 = weights_sha256
        self.score_thresh = float(score_thresh)
        self.min_box_size = float(min_box_size)
        self.max_detections = int(max_detections)

    @property
    def description(self) -> str:
        digest = f"sha256 {self.weights_sha256[:12]}" if self.weights_sha256 else "no hash"
        return (f"detectron2 {self.name} ({self.weights}, {digest}), {self.input_format} input, "
                f"person score >= {self.score_thresh}, boxes >= {self.min_box_size:g} px, "
                f"<= {self.max_detections} per image")

    def fingerprint(self) -> dict:
        import detectron2

        return {"backend": self.backend, "model": self.name, "weights": self.weights,
                "weights_sha256": self.weights_sha256, "detectron2": detectron2.__version__,
                "input_format": self.input_format, "score_thresh": self.score_thresh,
                "min_box_size": self.min_box_size, "max_detections": self.max_detections,
                "input_min_size": int(self.resize.short_edge_length[0]), "input_max_size": int(self.resize.max_size)}

    def to(self, device: Any) -> "Detectron2PersonDetector":
        self.model.to(device)
        return self

    def detect(self, images: Sequence[np.ndarray], *, video_id: Optional[str] = None,
               timestamps: Optional[Sequence] = None) -> list[PersonBoxes]:
        """Person boxes per image (see :class:`PersonBoxes`); ``video_id`` / ``timestamps`` are ignored.
        One batch, padded to a common size, as in :meth:`TorchvisionPersonDetector.detect`."""
        import torch

        _check_images(images)
        if not images:
            return []
        inputs = []
        for image in images:
            pixels = image[:, :, ::-1] if self.input_format == "BGR" else image
            resized = self.resize.get_transform(pixels).apply_image(pixels)
            inputs.append({"image": torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1)),
                                                    dtype=torch.float32),
                           "height": image.shape[0], "width": image.shape[1]})
        with torch.inference_mode():
            outputs = self.model(inputs)
        results = []
        for image, output in zip(images, outputs):
            instances = output["instances"].to("cpu")
            results.append(select_persons(
                instances.pred_boxes.tensor.numpy(), instances.scores.numpy(), instances.pred_classes.numpy(),
                person_label=self.person_label, image_size=(image.shape[1], image.shape[0]),
                score_thresh=self.score_thresh, min_box_size=self.min_box_size,
                max_detections=self.max_detections))
        return results


def build_detectron2_detector(model: str = DEFAULT_DETECTRON2_MODEL, *, weights: Union[str, Path, None] = None,
                              score_thresh: float = DEFAULT_SCORE_THRESH, min_box_size: float = 0.0,
                              max_detections: int = DEFAULT_MAX_DETECTIONS, device: str = "cpu",
                              input_min_size: Optional[int] = None, input_max_size: Optional[int] = None
                              ) -> Detectron2PersonDetector:
    """Detectron2 person detector. ``model``: a model-zoo config name (``COCO-Detection/faster_rcnn_R_50_FPN_3x``,
    ``.yaml`` optional) or a local YAML file; ``weights``: a local or detectron2-readable weights path/URL
    (default: the zoo checkpoint of a zoo config, else the config's ``MODEL.WEIGHTS``)."""
    try:
        from detectron2 import model_zoo
        from detectron2.checkpoint import DetectionCheckpointer
        from detectron2.config import get_cfg
        from detectron2.data import MetadataCatalog
        from detectron2.data import transforms as T
        from detectron2.modeling import build_model
        from detectron2.utils.file_io import PathManager
    except ImportError:
        raise DependencyMissingError("the detectron2 person detector needs detectron2, which is not on PyPI; "
                                     f"install it with: {DETECTRON2_INSTALL}") from None

    cfg = get_cfg()
    local = Path(model)
    zoo_weights = None
    if local.suffix in (".yaml", ".yml") and local.is_file():
        cfg.merge_from_file(str(local))
    else:
        zoo_name = model if model.endswith(".yaml") else f"{model}.yaml"
        try:
            cfg.merge_from_file(model_zoo.get_config_file(zoo_name))
        except RuntimeError:
            raise ConfigError(f"{model!r} is neither a YAML file nor a detectron2 model-zoo config; use e.g. "
                              f"{DEFAULT_DETECTRON2_MODEL!r} or a path to a config file") from None
        if weights is None:
            try:
                zoo_weights = model_zoo.get_checkpoint_url(zoo_name)
            except RuntimeError:
                raise WeightsError(f"{model}: the detectron2 model zoo has no weights for this config; pass "
                                   "weights=FILE") from None
    source = str(weights) if weights is not None else (zoo_weights or cfg.MODEL.WEIGHTS)
    if not source:
        raise WeightsError(f"{model}: the config names no weights (MODEL.WEIGHTS is empty); pass weights=FILE")
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = _strictly_below(score_thresh)  # two-stage models
    cfg.MODEL.RETINANET.SCORE_THRESH_TEST = _strictly_below(score_thresh)  # one-stage models
    cfg.TEST.DETECTIONS_PER_IMAGE = _NO_MODEL_CAP
    if input_min_size is not None:
        cfg.INPUT.MIN_SIZE_TEST = input_min_size
    if input_max_size is not None:
        cfg.INPUT.MAX_SIZE_TEST = input_max_size
    cfg.MODEL.DEVICE = str(device)
    network = build_model(cfg)
    try:  # detectron2 logs weights that do not fit the config (and keeps their initial values)
        path = PathManager.get_local_path(source)
        DetectionCheckpointer(network).load(path)
    except Exception as exc:  # detectron2 raises many kinds for unreadable, missing or unreachable files
        raise WeightsError(f"{source}: cannot load detectron2 weights ({type(exc).__name__}: {exc}); download "
                           "the file where there is network access and pass it with weights=FILE") from None
    thing_classes = MetadataCatalog.get(cfg.DATASETS.TEST[0]).get("thing_classes", None) if cfg.DATASETS.TEST else None
    if thing_classes is not None and "person" not in thing_classes:
        raise ConfigError(f"{model}: the model's classes ({cfg.DATASETS.TEST[0]}) have no 'person'")
    person_label = thing_classes.index("person") if thing_classes is not None else 0
    return Detectron2PersonDetector(
        network, input_format=cfg.INPUT.FORMAT,
        resize=T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MIN_SIZE_TEST], cfg.INPUT.MAX_SIZE_TEST),
        person_label=person_label, name=model, weights=Path(source).name if weights is not None else source,
        weights_sha256=file_sha256(path), score_thresh=score_thresh, min_box_size=min_box_size,
        max_detections=max_detections)


# --------------------------------------------------------------------------------------------- precomputed

BOX_CSV_FORMAT = "video_id,timestamp,x1,y1,x2,y2[,label[,score]]"


def _time_key(seconds) -> Fraction:
    """Exact time of ``seconds`` (int, Fraction, decimal text like ``"0902"`` or ``"902.5"``, or float)."""
    if isinstance(seconds, float):
        return Fraction(seconds).limit_denominator(1_000_000)
    return Fraction(seconds)


def _plain_time(key: Fraction):
    return key.numerator if key.denominator == 1 else key


def read_person_boxes(path: Union[str, Path], *, score_thresh: float = DEFAULT_SCORE_THRESH
                      ) -> dict[str, dict[Fraction, PersonBoxes]]:
    """Person boxes of an AVA box CSV, ``{video_id: {time: PersonBoxes}}`` in file order.

    Rows ``video_id,timestamp,x1,y1,x2,y2[,label[,score]]`` without header (a pandas-style header line
    starting ``video_id,timestamp`` is skipped): coordinates normalized in [0, 1]; a missing score counts
    as 1.0; the label column is ignored. Rows scored below ``score_thresh`` are dropped; rows with identical
    coordinate text at one keyframe are one box, scored by the highest of its rows (files of ``ava-detect``,
    one row per box and action, thus give each box its best action score). Every keyframe of the file is
    listed, even when none of its boxes passes the threshold. ``PersonBoxes.original`` keeps the coordinate
    text. A malformed row raises :class:`InputFormatError` naming file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise InputFormatError(f"{path}: box file not found; pass an AVA box CSV ({BOX_CSV_FORMAT})")
    # {video: {time: {coordinate texts: [x1, y1, x2, y2, score]}}}
    found: dict[str, dict[Fraction, dict[tuple, list]]] = {}
    for line_number, row in csv_rows(path, encoding="utf-8-sig"):  # Excel's "CSV UTF-8" too
        fields = [value.strip() for value in row]
        if not any(fields):
            continue
        if line_number == 1 and fields[:2] == ["video_id", "timestamp"]:
            continue
        video_id, time, texts, score = _parse_box_row(fields, f"{path}:{line_number}")
        boxes = found.setdefault(video_id, {}).setdefault(time, {})
        if score < score_thresh:
            continue
        if texts in boxes:
            boxes[texts][4] = max(boxes[texts][4], score)
        else:
            boxes[texts] = [float(value) for value in texts] + [score]
    return {video_id: {time: PersonBoxes(np.array([v[:4] for v in boxes.values()], np.float32).reshape(-1, 4),
                                         np.array([v[4] for v in boxes.values()], np.float32),
                                         list(boxes))
                       for time, boxes in times.items()}
            for video_id, times in found.items()}


def _parse_box_row(fields: list[str], where: str) -> tuple[str, Fraction, tuple, float]:
    """(video id, exact time, the four coordinate texts, score) of one stripped CSV row; ``where`` is
    ``file:line`` for the error messages."""
    if len(fields) not in (6, 7, 8):
        raise InputFormatError(f"{where}: expected 6 to 8 comma-separated fields ({BOX_CSV_FORMAT}), "
                               f"got {len(fields)}")
    video_id = fields[0]
    if not video_id:
        raise InputFormatError(f"{where}: empty video id; the first field names the video by its file stem")
    try:
        time = parse_seconds(fields[1])
    except ValueError:
        raise InputFormatError(f"{where}: timestamp {fields[1]!r} is not a number of seconds") from None
    texts = tuple(fields[2:6])
    try:
        x1, y1, x2, y2 = (float(value) for value in texts)
    except ValueError:
        raise InputFormatError(f"{where}: box {','.join(texts)!r} has a coordinate that is not a number") from None
    if not all(0.0 <= value <= 1.0 for value in (x1, y1, x2, y2)):
        raise InputFormatError(f"{where}: box {','.join(texts)} is not normalized to [0, 1] (pixel "
                               "coordinates?); divide x by the frame width and y by its height")
    if x2 < x1 or y2 < y1:
        raise InputFormatError(f"{where}: box {','.join(texts)} has x2 < x1 or y2 < y1; the order is x1,y1,x2,y2")
    score = 1.0
    if len(fields) == 8:
        try:
            score = float(fields[7])
        except ValueError:
            raise InputFormatError(f"{where}: score {fields[7]!r} is not a number") from None
        if not 0.0 <= score <= 1.0:  # also rejects NaN
            raise InputFormatError(f"{where}: score {fields[7]} is outside [0, 1]; the 8th field is a detection "
                                   "score (a ground-truth file's person ids are not scores)")
    return video_id, time, texts, score


class PrecomputedPersonDetector:
    """Person boxes looked up in a box file by video id and keyframe time; the pixels are not used.

    ``boxes``: ``{video_id: {time (Fraction seconds): PersonBoxes}}`` as :func:`read_person_boxes` gives;
    ``source`` / ``source_sha256`` name the file for the fingerprint. A keyframe absent from the file has
    no persons.
    """

    backend = "precomputed"

    def __init__(self, boxes: dict[str, dict[Fraction, PersonBoxes]], *, source: str, source_sha256: str,
                 score_thresh: float):
        self.boxes = boxes
        self.source = source
        self.source_sha256 = source_sha256
        self.score_thresh = float(score_thresh)

    @property
    def description(self) -> str:
        keyframes = sum(len(times) for times in self.boxes.values())
        return (f"precomputed boxes from {self.source} ({len(self.boxes)} videos, {keyframes} keyframes), "
                f"person score >= {self.score_thresh}")

    def fingerprint(self) -> dict:
        return {"backend": self.backend, "boxes": Path(self.source).name, "boxes_sha256": self.source_sha256,
                "score_thresh": self.score_thresh}

    def to(self, device: Any) -> "PrecomputedPersonDetector":
        return self

    def timestamps_for(self, video_id: str) -> list:
        """Ascending keyframe times of ``video_id`` in the file (int for whole seconds, else Fraction)."""
        return [_plain_time(time) for time in sorted(self.boxes.get(video_id, {}))]

    def detect(self, images: Sequence[np.ndarray] = (), *, video_id: Optional[str] = None,
               timestamps: Optional[Sequence] = None) -> list[PersonBoxes]:
        """The file's boxes of ``video_id`` at each of ``timestamps`` (``images``, if given, only fix the
        count: one per timestamp)."""
        if video_id is None or timestamps is None:
            raise ValueError("precomputed boxes are looked up by video_id and timestamps; pass both")
        if images and len(images) != len(timestamps):
            raise ValueError(f"{len(images)} images but {len(timestamps)} timestamps")
        times = self.boxes.get(video_id, {})
        return [times.get(_time_key(t)) or PersonBoxes.empty(from_file=True) for t in timestamps]


def build_precomputed_detector(boxes_csv: Union[str, Path], *, score_thresh: float = DEFAULT_SCORE_THRESH
                               ) -> PrecomputedPersonDetector:
    """Person boxes from the AVA box CSV ``boxes_csv`` (see :func:`read_person_boxes`)."""
    boxes = read_person_boxes(boxes_csv, score_thresh=score_thresh)
    return PrecomputedPersonDetector(boxes, source=str(boxes_csv), source_sha256=file_sha256(boxes_csv),
                                     score_thresh=score_thresh)


# ------------------------------------------------------------------------------------------------- builder

def build_detector(backend: str = "torchvision", *, model: Optional[str] = None,
                   weights: Union[str, Path, None] = None, boxes_csv: Union[str, Path, None] = None,
                   score_thresh: float = DEFAULT_SCORE_THRESH, min_box_size: float = 0.0,
                   max_detections: Optional[int] = None, device: str = "cpu",
                   input_min_size: Optional[int] = None, input_max_size: Optional[int] = None) -> PersonDetector:
    """The person detector ``backend`` (one of :data:`BACKENDS`) from plain settings.

    * ``model``: torchvision model name (:data:`TORCHVISION_MODELS`, default ``fasterrcnn_resnet50_fpn_v2``)
      or detectron2 config (zoo name or YAML file, default ``COCO-Detection/faster_rcnn_R_50_FPN_3x``).
    * ``weights``: local weights file; None: the model's default COCO weights (downloaded once, hash checked).
    * ``boxes_csv``: the box file of the ``precomputed`` backend (required there, refused elsewhere).
    * ``score_thresh``: keep persons scored at least this. ``min_box_size``: image backends keep boxes whose
      width and height are both at least this many pixels of the original image. ``max_detections``: image
      backends keep at most this many persons per image, best first (default 100).
    * ``input_min_size`` / ``input_max_size``: override the image models' resize (short side, long-side cap).
    """
    if backend not in BACKENDS:
        raise ConfigError(f"unknown detector backend {backend!r}; use one of {list(BACKENDS)}")
    if not 0.0 <= score_thresh <= 1.0:
        raise ConfigError(f"score_thresh must be in [0, 1], got {score_thresh}")
    if backend == "precomputed":
        if boxes_csv is None:
            raise ConfigError("the precomputed detector needs a box CSV (boxes_csv=... / --boxes)")
        image_options = {"model": model, "weights": weights, "max_detections": max_detections,
                         "input_min_size": input_min_size, "input_max_size": input_max_size,
                         "min_box_size": min_box_size or None}
        given = {key: value for key, value in image_options.items() if value is not None}
        if given:
            raise ConfigError(f"{given} only apply to image detectors, not to precomputed boxes from {boxes_csv}; "
                              "drop them")
        return build_precomputed_detector(boxes_csv, score_thresh=score_thresh)
    if boxes_csv is not None:
        raise ConfigError(f"boxes_csv={str(boxes_csv)!r} gives precomputed boxes but backend={backend!r}; "
                          "drop one of them")
    if min_box_size < 0:
        raise ConfigError(f"min_box_size must be >= 0 pixels, got {min_box_size}")
    max_detections = DEFAULT_MAX_DETECTIONS if max_detections is None else max_detections
    if max_detections < 1:
        raise ConfigError(f"max_detections must be at least 1, got {max_detections}")
    build = build_torchvision_detector if backend == "torchvision" else build_detectron2_detector
    default_model = DEFAULT_TORCHVISION_MODEL if backend == "torchvision" else DEFAULT_DETECTRON2_MODEL
    return build(model or default_model, weights=weights, score_thresh=score_thresh, min_box_size=min_box_size,
                 max_detections=max_detections, device=device, input_min_size=input_min_size,
                 input_max_size=input_max_size)

"""detectron2 models as person detectors (detectron2 is optional and not on PyPI)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np

from ..checksums import file_sha256
from ..errors import ConfigError, DependencyMissingError, WeightsError
from .base import (DEFAULT_MAX_DETECTIONS, DEFAULT_SCORE_THRESH, NO_MODEL_CAP, ImageDetector, PersonBoxes,
                   check_images, strictly_below)

DEFAULT_DETECTRON2_MODEL = "COCO-Detection/faster_rcnn_R_50_FPN_3x"
"""The person detector of PySlowFast's demo (COCO box AP 40.2)."""
DETECTRON2_INSTALL = "pip install 'git+https://github.com/facebookresearch/detectron2.git'"

class Detectron2PersonDetector(ImageDetector):
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
        super().__init__(name=name, weights=weights, weights_sha256=weights_sha256, score_thresh=score_thresh,
                         min_box_size=min_box_size, max_detections=max_detections, person_label=person_label)
        self.model = model.eval()
        self.input_format = input_format
        self.resize = resize

    @property
    def description(self) -> str:
        return self._describe(f"{self.input_format} input")

    def fingerprint(self) -> dict:
        import detectron2

        return self._fingerprint(detectron2=detectron2.__version__, input_format=self.input_format,
                                 input_min_size=int(self.resize.short_edge_length[0]),
                                 input_max_size=int(self.resize.max_size))

    def to(self, device: Any) -> "Detectron2PersonDetector":
        self.model.to(device)
        return self

    def detect(self, images: Sequence[np.ndarray], *, video_id: Optional[str] = None,
               timestamps: Optional[Sequence] = None) -> list[PersonBoxes]:
        """Person boxes per image (see :class:`PersonBoxes`); ``video_id`` / ``timestamps`` are ignored.
        One batch, padded to a common size, as in :meth:`TorchvisionPersonDetector.detect`."""
        import torch

        check_images(images)
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
            results.append(self._persons(instances.pred_boxes.tensor.numpy(), instances.scores.numpy(),
                                         instances.pred_classes.numpy(), image))
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
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = strictly_below(score_thresh)  # two-stage models
    cfg.MODEL.RETINANET.SCORE_THRESH_TEST = strictly_below(score_thresh)  # one-stage models
    cfg.TEST.DETECTIONS_PER_IMAGE = NO_MODEL_CAP
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

"""Person detection at keyframes: images in, normalized person boxes out (see :mod:`.base` for the contract).

Backends, one module each (:func:`build_detector` picks one by name):

* ``torchvision`` (default): a COCO Faster R-CNN from torchvision, person class only;
  ``fasterrcnn_resnet50_fpn_v2`` (COCO box AP 46.7) by default; runs through the inference rewrite of
  :mod:`.fast` (same detections within float32 rounding) unless ``fast=False``.
* ``detectron2``: any detectron2 config and weights, when detectron2 is installed (it is not on PyPI).
* ``precomputed``: person boxes read from an AVA box CSV (e.g. the released
  ``ava_detection_val_boxes_and_labels.csv``); pixels are ignored, boxes are looked up by video id and time.

Any object with a ``detect`` method of the :class:`PersonDetector` protocol can stand in for them.
"""
from .base import DEFAULT_MAX_DETECTIONS, DEFAULT_SCORE_THRESH, PersonBoxes, PersonDetector, select_persons
from .builder import BACKENDS, build_detector
from .detectron2 import (DEFAULT_DETECTRON2_MODEL, DETECTRON2_INSTALL, Detectron2PersonDetector,
                         build_detectron2_detector)
from .precomputed import PrecomputedPersonDetector, build_precomputed_detector, read_person_boxes
from .torchvision import (DEFAULT_TORCHVISION_MODEL, TORCHVISION_MODELS, TorchvisionPersonDetector,
                          build_torchvision_detector, build_torchvision_model, fetch_torchvision_weights,
                          load_detector_state_dict)

__all__ = ["BACKENDS", "DEFAULT_DETECTRON2_MODEL", "DEFAULT_MAX_DETECTIONS", "DEFAULT_SCORE_THRESH",
           "DEFAULT_TORCHVISION_MODEL", "DETECTRON2_INSTALL", "Detectron2PersonDetector", "PersonBoxes",
           "PersonDetector", "PrecomputedPersonDetector", "TORCHVISION_MODELS", "TorchvisionPersonDetector",
           "build_detector", "build_detectron2_detector", "build_precomputed_detector", "build_torchvision_detector",
           "build_torchvision_model", "fetch_torchvision_weights", "load_detector_state_dict", "read_person_boxes",
           "select_persons"]

"""The evaluation protocols ``ava-eval --protocol`` offers: the official ones and two widely used deviations.

Each protocol is a record of the rules that differ between implementations (``EVAL_SPEC.md`` sections 0, 4, 8);
:mod:`ava_pipeline.evaluation.frame_map` reads nothing else from it.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError
from .io import KeyFunction, key_2019, key_2020


@dataclass(frozen=True)
class Protocol:
    """Rules of one AVA frame-mAP implementation.

    ``detections_per_keyframe``: the per-keyframe cap across all classes (0: none).
    ``detection_order`` / ``ground_truth_order``: the order of rows inside a keyframe, ``"heap"`` (official: stable
    sort by descending score of the capped heap's array), ``"score"`` (stable sort by descending score of the file
    order) or ``"file"`` (file order, no sort).
    ``detections_on``: which detection keyframes are evaluated, ``"all"`` (every non-excluded one; those without
    ground truth are all false positives), ``"annotated"`` (only keys present in the ground-truth file) or
    ``"ground_truth"`` (only non-excluded keyframes with evaluated ground-truth boxes).
    ``float32``: boxes and scores rounded to float32 before matching. ``drop_invalid_detections``: drop boxes with
    ``x1 >= x2`` or ``y1 >= y2`` (else an inverted box is an error, as it crashes that tool).
    ``count_excluded_ground_truth``: ground-truth rows of excluded keyframes still count in ``num_gt``.
    ``average_over``: mAP over classes with ground truth (``"ground_truth"``) or only over those that also got a
    detection (``"detected"``).
    """

    name: str
    summary: str
    key_function: KeyFunction
    accepts_exclusions: bool
    key_only_rows: bool
    detections_per_keyframe: int
    detection_order: str
    ground_truth_order: str
    detections_on: str
    float32: bool = False
    drop_invalid_detections: bool = True
    count_excluded_ground_truth: bool = False
    average_over: str = "ground_truth"


PROTOCOLS = {
    p.name: p for p in (
        Protocol("activitynet2019", "official AVA v2.1/v2.2 evaluator (ActivityNet 3fee089): 50 detections per "
                 "keyframe, excluded timestamps", key_2019, True, False, 50, "heap", "heap", "all"),
        Protocol("activitynet2020", "official AVA-Kinetics evaluator (ActivityNet HEAD): no exclusions, 2-column "
                 "empty-keyframe rows, sub-second timestamps, detections off the ground-truth keys ignored",
                 key_2020, False, True, 50, "heap", "heap", "annotated"),
        Protocol("pyslowfast", "PySlowFast ava_eval_helper: no cap, keyframe rows matched in file order, "
                 "ground-truth person ids ignored", key_2019, True, False, 0, "file", "file", "all"),
        Protocol("mmaction2", "MMAction2 ava_eval: no cap, float32 boxes and scores, only ground-truth keyframes, "
                 "num_gt includes excluded keyframes, mAP over detected classes, inverted boxes are an error",
                 key_2019, True, False, 0, "score", "score", "ground_truth", float32=True,
                 drop_invalid_detections=False, count_excluded_ground_truth=True, average_over="detected"),
    )
}


def get_protocol(name) -> Protocol:
    """The protocol called ``name`` (a :class:`Protocol` is returned as is); an unknown name is a
    :class:`ConfigError` listing the known ones."""
    if isinstance(name, Protocol):
        return name
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise ConfigError(f"unknown evaluation protocol {name!r}; choose one of {', '.join(PROTOCOLS)}") from None

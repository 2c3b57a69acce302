"""ava-pipeline: spatiotemporal action detection on AVA's 80 action classes.

The heavy entry points are imported lazily so that ``ava_pipeline.evaluation`` and ``ava-eval`` start
without importing torch; ``dir(ava_pipeline)`` and type checkers still see them.
"""
from importlib import import_module
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_LAZY = {
    "load_action_model": "ava_pipeline.api",
    "ActionDetector": "ava_pipeline.pipeline",
    "KeyframeResult": "ava_pipeline.results",
    "build_detector": "ava_pipeline.detector",
    "evaluate": "ava_pipeline.evaluation",
}

__all__ = sorted(_LAZY) + ["__version__"]

if TYPE_CHECKING:  # pragma: no cover
    from ava_pipeline.api import load_action_model
    from ava_pipeline.detector import build_detector
    from ava_pipeline.evaluation import evaluate
    from ava_pipeline.pipeline import ActionDetector
    from ava_pipeline.results import KeyframeResult


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ava_pipeline' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))

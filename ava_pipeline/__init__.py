"""ava-pipeline: spatiotemporal action detection on AVA's 80 action classes.

The heavy entry points are imported lazily so that ``ava_pipeline.evaluation`` and ``ava-eval`` start
without importing torch.
"""
from importlib import import_module

__version__ = "0.1.0"

_LAZY = {
    "load_action_model": "ava_pipeline.api",
    "ActionDetector": "ava_pipeline.pipeline",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ava_pipeline' has no attribute {name!r}")

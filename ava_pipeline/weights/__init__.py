"""Checkpoints: the model zoo, cached downloads, safe reading of every released format, and loading into a model.

* ``zoo``: ``ZooModel`` records (url, sha256, config, label maps, mAP, format, source) and ``DEFAULT_MODEL``;
* ``download``: the cache (``$AVA_PIPELINE_HOME`` / XDG) with ``.part`` + rename and sha256 checks;
* ``formats``: content-based format detection and safe reading (PySlowFast ``.pyth``, legacy torch ``.pkl``,
  Caffe2 ``.pkl``, PyTorchVideo ``.pyth``), with keys renamed to PySlowFast's by ``keymaps``;
* ``loading``: ``load_state_dict_into`` with grouped reports of missing / unexpected / mis-shaped keys.

The zoo and the download cache are torch-free and imported at once; the torch parts are imported on first use,
so that the zoo (e.g. for ``--help``) is readable without importing torch.
"""
from importlib import import_module
from typing import TYPE_CHECKING

from ava_pipeline.weights.download import cache_dir, download  # binds the function over the submodule's name
from ava_pipeline.weights.zoo import DEFAULT_MODEL, ZOO, ZooModel, get_zoo_model, model_config, zoo_names

_LAZY = {
    "Checkpoint": "formats", "detect_format": "formats", "read_checkpoint": "formats",
    "caffe2_to_pyslowfast": "keymaps", "pytorchvideo_to_pyslowfast": "keymaps",
    "LoadReport": "loading", "check_state_dict": "loading", "load_state_dict_into": "loading",
    "summarize_keys": "loading",
}

__all__ = sorted([*_LAZY, "sha256_of", "cache_dir", "download", "DEFAULT_MODEL", "ZOO", "ZooModel", "get_zoo_model",
                  "model_config", "zoo_names"])

if TYPE_CHECKING:  # pragma: no cover
    from ava_pipeline.weights.formats import Checkpoint, detect_format, read_checkpoint
    from ava_pipeline.weights.keymaps import caffe2_to_pyslowfast, pytorchvideo_to_pyslowfast
    from ava_pipeline.weights.loading import LoadReport, check_state_dict, load_state_dict_into, summarize_keys


def __getattr__(name: str):
    if name == "sha256_of":  # the name this package had before ava_pipeline.checksums
        return import_module("ava_pipeline.checksums").file_sha256
    if name in _LAZY:
        return getattr(import_module(f"ava_pipeline.weights.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'ava_pipeline.weights' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

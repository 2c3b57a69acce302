"""Checkpoints: the model zoo, cached downloads, safe reading of every released format, and loading into a model.

* ``zoo``: ``ZooModel`` records (url, sha256, config, label maps, mAP, format, source) and ``DEFAULT_MODEL``;
* ``download``: the cache (``$AVA_PIPELINE_HOME`` / XDG) with ``.part`` + rename and sha256 checks;
* ``formats``: content-based format detection and safe reading (PySlowFast ``.pyth``, legacy torch ``.pkl``,
  Caffe2 ``.pkl``, PyTorchVideo ``.pyth``), with keys renamed to PySlowFast's by ``keymaps``;
* ``loading``: ``load_state_dict_into`` with grouped reports of missing / unexpected / mis-shaped keys.
"""
from ava_pipeline.checksums import file_sha256 as sha256_of  # the name this package had before checksums
from ava_pipeline.weights.download import cache_dir, download
from ava_pipeline.weights.formats import Checkpoint, detect_format, read_checkpoint
from ava_pipeline.weights.keymaps import caffe2_to_pyslowfast, pytorchvideo_to_pyslowfast
from ava_pipeline.weights.loading import LoadReport, check_state_dict, load_state_dict_into, summarize_keys
from ava_pipeline.weights.zoo import DEFAULT_MODEL, ZOO, ZooModel, get_zoo_model, zoo_names

__all__ = ["Checkpoint", "DEFAULT_MODEL", "LoadReport", "ZOO", "ZooModel", "caffe2_to_pyslowfast", "cache_dir",
           "check_state_dict", "detect_format", "download", "get_zoo_model", "load_state_dict_into",
           "pytorchvideo_to_pyslowfast", "read_checkpoint", "sha256_of", "summarize_keys", "zoo_names"]

"""The model zoo: one frozen record per released AVA checkpoint (data, like torchvision's ``Weights``).

No sha256 is recorded yet for any file: they could not be downloaded where this table was written. Until a
hash is filled in, a download is verified by what can be checked (the file parses in the recorded format and
its keys and shapes fit the record's config) and a log message says that no hash is recorded.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

from ava_pipeline.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from ava_pipeline.config import ActionModelConfig

_PYSLOWFAST = "https://dl.fbaipublicfiles.com/pyslowfast/model_zoo/ava"
_PYTORCHVIDEO = "https://dl.fbaipublicfiles.com/pytorchvideo/model_zoo/ava"


@dataclass(frozen=True)
class ZooModel:
    """A released AVA checkpoint and everything needed to use and cite it."""

    name: str
    url: str
    config: str  # packaged config name (ava_pipeline/configs/<config>.yaml)
    label_map: str  # names of the 80 output classes
    eval_label_map: str  # classes the reported mAP was computed on
    map_ava: float  # frame mAP@0.5 reported by the source, percent
    ava_version: str
    file_format: str  # what the file is inside: "torch-legacy" | "torch-zip" | "caffe2"
    source: str  # where the record comes from, with the license of the weights
    sha256: Optional[str] = None  # None: not recorded yet (see the module docstring)

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


_PYSLOWFAST_SOURCE = "PySlowFast MODEL_ZOO.md (facebookresearch/SlowFast, Apache-2.0)"
_PYTORCHVIDEO_SOURCE = "PyTorchVideo model zoo (facebookresearch/pytorchvideo, Apache-2.0)"

ZOO: dict[str, ZooModel] = {record.name: record for record in (
    ZooModel("SLOWFAST_32x2_R101_50_50", f"{_PYSLOWFAST}/SLOWFAST_32x2_R101_50_50.pkl", "SLOWFAST_32x2_R101_50_50",
             "v2.2", "v2.2-eval", 29.1, "2.2", "torch-legacy", _PYSLOWFAST_SOURCE),
    ZooModel("SLOWFAST_64x2_R101_50_50", f"{_PYSLOWFAST}/SLOWFAST_64x2_R101_50_50.pkl", "SLOWFAST_64x2_R101_50_50",
             "v2.2", "v2.2-eval", 29.4, "2.2", "torch-legacy", _PYSLOWFAST_SOURCE),
    ZooModel("SLOWFAST_32x2_R101_50_50_v2.1", f"{_PYSLOWFAST}/SLOWFAST_32x2_R101_50_50_v2.1.pkl",
             "SLOWFAST_32x2_R101_50_50_v2.1", "v2.2", "v2.1-eval", 28.2, "2.1", "caffe2", _PYSLOWFAST_SOURCE),
    ZooModel("SLOW_8x8_R50", f"{_PYSLOWFAST}/C2D_8x8_R50.pkl", "SLOW_8x8_R50",
             "v2.2", "v2.2-eval", 19.5, "2.2", "caffe2", _PYSLOWFAST_SOURCE),
    ZooModel("SLOWFAST_8x8_R50_DETECTION", f"{_PYTORCHVIDEO}/SLOWFAST_8x8_R50_DETECTION.pyth",
             "SLOWFAST_8x8_R50_DETECTION", "v2.2", "v2.2-eval", 24.67, "2.2", "torch-zip", _PYTORCHVIDEO_SOURCE),
    ZooModel("SLOW_4x16_R50_DETECTION", f"{_PYTORCHVIDEO}/SLOW_4x16_R50_DETECTION.pyth",
             "SLOW_4x16_R50_DETECTION", "v2.2", "v2.2-eval", 19.5, "2.2", "torch-zip", _PYTORCHVIDEO_SOURCE),
)}

# The default is the 32x2 R101 rather than the 64x2 one: 29.1 vs 29.4 mAP for half the frames and about half
# the compute per keyframe, and its config is the one PySlowFast's own demo uses.
DEFAULT_MODEL = "SLOWFAST_32x2_R101_50_50"


def zoo_names() -> list[str]:
    return list(ZOO)


def model_config(source) -> "ActionModelConfig":
    """The ``ActionModelConfig`` of ``source``: a zoo name's recorded config, else a packaged config name or a
    YAML path (``config.load_config``)."""
    from ava_pipeline.config import load_config

    record = ZOO.get(str(source))
    return load_config(record.config if record is not None else source)


def get_zoo_model(name: str) -> ZooModel:
    """The record called ``name``; an unknown name is a ``ConfigError`` listing the available ones."""
    if name in ZOO:
        return ZOO[name]
    close = difflib.get_close_matches(name, list(ZOO), n=1, cutoff=0.5)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ConfigError(f"unknown zoo model {name!r}{hint}; available: {', '.join(ZOO)}")

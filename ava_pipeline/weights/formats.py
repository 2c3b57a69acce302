"""Reading checkpoint files safely, whatever their extension says.

The format is detected from the file's first bytes, never from its name (PySlowFast's released ``.pkl`` files
are of two kinds):

* ``torch-zip``: ``torch.save`` since PyTorch 1.6 (a zip archive, magic ``PK\\x03\\x04``);
* ``torch-legacy``: older ``torch.save`` (a pickle whose first object is torch's magic number), e.g.
  ``SLOWFAST_32x2_R101_50_50.pkl``;
* ``caffe2``: a plain pickle of ``{"blobs": {name: numpy array}, ...}``, e.g. ``C2D_8x8_R50.pkl``.

Torch files are read with ``torch.load(weights_only=True)``; Caffe2 pickles with an unpickler that can only
rebuild numpy arrays and builtin containers. Neither can run code from the file. The state dict inside is
unwrapped (``model_state``, ``state_dict``, ``model`` or bare) and its keys renamed to PySlowFast's
(see ``keymaps``).
"""
from __future__ import annotations

import logging
import pickle
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ava_pipeline.errors import WeightsError
from ava_pipeline.weights.download import cache_dir
from ava_pipeline.weights.keymaps import (caffe2_to_pyslowfast, is_pytorchvideo_layout, pytorchvideo_to_pyslowfast,
                                          rename_keys)

log = logging.getLogger(__name__)

_ZIP_MAGIC = b"PK\x03\x04"
# torch.save's legacy format starts with PROTO 2 then LONG1 of 10 bytes holding 0x1950a86a20f9469cfc6c.
_LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")

_WRAPPER_KEYS = ("model_state", "state_dict", "model")


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint read from disk: ``state_dict`` uses PySlowFast keys (float tensors on CPU)."""

    state_dict: dict[str, torch.Tensor]
    file_format: str  # "torch-zip" | "torch-legacy" | "caffe2"
    layout: str  # "pyslowfast" | "caffe2" | "pytorchvideo"
    dropped_keys: tuple[str, ...]  # entries of the file that are not model weights (solver state, ...)


class _Refused(pickle.UnpicklingError):
    """A pickle names a class outside the allowed ones (as code-running pickles do)."""


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that can rebuild numpy arrays and builtin containers, and nothing else."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 store bytes
        ("collections", "OrderedDict"),
        ("builtins", "dict"), ("builtins", "list"), ("builtins", "tuple"), ("builtins", "set"),
        ("builtins", "frozenset"), ("builtins", "bytearray"), ("builtins", "bytes"), ("builtins", "str"),
        ("builtins", "int"), ("builtins", "float"), ("builtins", "complex"), ("builtins", "bool"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise _Refused(f"refusing to load {module}.{name}: only numpy arrays and builtin "
                                         "containers are allowed in a Caffe2 checkpoint")
        if module == "numpy.core.multiarray":
            module = "numpy._core.multiarray" if hasattr(np, "_core") else module
        return super().find_class(module, name)


def detect_format(path: Path) -> str:
    """``torch-zip``, ``torch-legacy`` or ``pickle`` (a Caffe2 candidate) from the first bytes of ``path``."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(_LEGACY_TORCH_MAGIC))
    except OSError as exc:
        raise WeightsError(f"{path}: cannot read checkpoint ({exc.strerror or exc}); check the path") from exc
    if head.startswith(_ZIP_MAGIC):
        return "torch-zip"
    if head == _LEGACY_TORCH_MAGIC:
        return "torch-legacy"
    if head[:1] == b"\x80" or head[:1] in (b"(", b"}", b"]"):
        return "pickle"
    raise WeightsError(f"{path}: not a checkpoint this package can read (neither a torch.save file nor a Caffe2 "
                       f"pickle; first bytes {head[:8]!r}); pass a PySlowFast .pyth/.pkl, Caffe2 .pkl or "
                       "PyTorchVideo .pyth file")


def _how_to_replace(path: Path) -> str:
    """What to do about an unreadable ``path``: a file in the download cache must be deleted to be fetched again."""
    if path.resolve().is_relative_to(cache_dir().resolve()):
        return f"delete {path} (a cached download) so that the next run downloads it again"
    return "download it again"


def safe_torch_load(path: Path, what: str, *, convert_hint: str = "convert them with tools/convert_checkpoint.py"
                    ) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, with every failure a :class:`WeightsError` naming
    ``path``: a refused global (the file holds objects other than tensors and plain data; ``convert_hint`` says
    what to do), or a damaged file (``what`` names its kind, e.g. ``"PySlowFast .pyth checkpoint"``)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        refused = re.search(r"(?i)unsupported (global|operand)\W+(?:GLOBAL )?([\w.]+)", str(exc))
        if refused is None or (refused[1].lower() == "operand" and not _starts_like_pickle(path)):
            raise _unreadable(path, what, exc) from exc  # not a refusal: damaged, or no pickle at all
        raise WeightsError(f"{path}: refused to load: the file contains objects other than tensors and plain "
                           f"data (unsupported {refused[1].lower()} {refused[2]}); only load files from a source "
                           f"you trust, and {convert_hint}") from exc
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as exc:
        raise _unreadable(path, what, exc) from exc


def _starts_like_pickle(path: Path) -> bool:
    with open(path, "rb") as file:
        return file.read(1) == b"\x80"  # the PROTO opcode every pickle since protocol 2 starts with


def _torch_reason(exc: BaseException) -> str:
    """torch.load's message on one line, without its advice to turn ``weights_only`` off (never the right
    thing for a file that failed the safe load) or its documentation link."""
    lines = [line.strip() for line in str(exc).splitlines()]
    kept = [line for line in lines if line and "weights_only" not in line and not line.startswith("Check the doc")]
    return " ".join(kept) or type(exc).__name__


def _unreadable(path: Path, what: str, exc: BaseException) -> WeightsError:
    return WeightsError(f"{path}: cannot read {what}, the file looks truncated or corrupt "
                        f"({type(exc).__name__}: {_torch_reason(exc)}); {_how_to_replace(path)}")


def _read_caffe2(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            data = _NumpyOnlyUnpickler(f, encoding="latin1").load()
    except _Refused as exc:
        raise WeightsError(f"{path}: refused to load this pickle: {exc}; it is not a Caffe2 checkpoint of numpy "
                           "blobs and may try to run code") from exc
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            MemoryError) as exc:
        raise _unreadable(path, "pickle checkpoint", exc) from exc
    if not isinstance(data, dict) or not isinstance(data.get("blobs"), dict):
        raise WeightsError(f"{path}: a pickle without a 'blobs' dict is not a Caffe2 checkpoint; pass a PySlowFast "
                           ".pyth/.pkl, Caffe2 .pkl or PyTorchVideo .pyth file")
    return data["blobs"]


def _unwrap(obj: Any, path: Path) -> dict:
    """The state dict inside a checkpoint object (``model_state`` / ``state_dict`` / ``model`` / bare)."""
    for key in _WRAPPER_KEYS:
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            return obj[key]
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    found = sorted(obj)[:8] if isinstance(obj, dict) else type(obj).__name__
    raise WeightsError(f"{path}: no model state dict found (looked for {', '.join(_WRAPPER_KEYS)} or a dict of "
                       f"tensors; found {found}); is this a model checkpoint?")


def _check_names(state: dict, path: Path) -> None:
    odd = [key for key in state if not isinstance(key, str)]
    if odd:
        raise WeightsError(f"{path}: {len(odd)} state-dict key(s) are not names (e.g. {odd[0]!r}); the file is not "
                           "a model checkpoint")


def _to_tensor(name: str, value: Any, path: Path) -> torch.Tensor:
    """``value`` as a dense real tensor with finite values, else ``WeightsError`` naming the entry."""
    if isinstance(value, np.ndarray) and value.dtype.kind in "fiub":
        value = torch.from_numpy(np.ascontiguousarray(value))
    if not isinstance(value, torch.Tensor):
        raise WeightsError(f"{path}: entry {name!r} is {type(value).__name__}, not a numeric array; the file is "
                           "not a model checkpoint")
    if value.layout != torch.strided or value.is_complex():
        raise WeightsError(f"{path}: entry {name!r} is a {value.layout} {value.dtype} tensor, not dense real "
                           "weights; the file is not a checkpoint of this model")
    if value.is_floating_point() and not bool(torch.isfinite(value).all()):
        raise WeightsError(f"{path}: entry {name!r} holds NaN or infinite values, so every score would be NaN; "
                           "the checkpoint is corrupt (or from a diverged training run): use another file")
    return value


def read_checkpoint(path: str | Path) -> Checkpoint:
    """Read any supported checkpoint; returns its state dict under PySlowFast keys. Raises ``WeightsError``."""
    path = Path(path)
    file_format = detect_format(path)
    if file_format == "pickle":
        blobs = _read_caffe2(path)
        _check_names(blobs, path)
        state, dropped = rename_keys(blobs, caffe2_to_pyslowfast)
        layout, file_format = "caffe2", "caffe2"
    else:
        state = _unwrap(safe_torch_load(path, f"{file_format} checkpoint"), path)
        _check_names(state, path)
        if is_pytorchvideo_layout(state):
            state, dropped = rename_keys(state, pytorchvideo_to_pyslowfast)
            layout = "pytorchvideo"
        else:
            dropped, layout = [], "pyslowfast"
    tensors = {name: _to_tensor(name, value, path) for name, value in state.items()}
    if not tensors:
        raise WeightsError(f"{path}: the {layout} checkpoint holds no model weights; is this the right file?")
    return Checkpoint(tensors, file_format, layout, tuple(dropped))

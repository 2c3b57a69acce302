"""onnxruntime as the action model's runtime: an exported file (``ava-export``) behind the torch model's call.

``OnnxActionModel(path)([slow, fast], boxes)`` takes and returns what the torch model does: ``slow`` (N, 3,
T/alpha, H, W) and ``fast`` (N, 3, T, H, W) float32 (``[slow]`` for Slow-only), ``boxes`` (K, 5) float
``[batch_index, x1, y1, x2, y2]`` in input pixels -> (K, num_classes) float32 probabilities, column ``c`` =
AVA action id ``c + 1``. Its ``config`` and ``weights_sha256`` come from the file's metadata.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..errors import ConfigError, InputFormatError
from ..export import ACTION_INPUTS, ACTION_OUTPUT, OnnxMetadata, require


class OnnxActionModel:
    """An exported action model run by onnxruntime (see the module docstring).

    Args:
        path: the ``.onnx`` file written by ``ava-export`` (``export.export_action_model``).
        threads: onnxruntime intra-op threads (``None``: onnxruntime's choice, one per core).
        device: ``"cpu"``, or ``"cuda[:N]"`` when onnxruntime's CUDA provider is installed.
    """

    def __init__(self, path: str | Path, *, threads: Optional[int] = None, device: str = "cpu"):
        ort = require("onnxruntime", "running the action model with onnxruntime (runtime 'onnx')")
        self.path = Path(path)
        if not self.path.is_file():
            raise InputFormatError(f"{self.path}: no such ONNX file; export the model with ava-export")
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=_providers(ort, str(device)))
        except ConfigError:
            raise
        except Exception as exc:  # onnxruntime raises its own exception types for unreadable graphs
            raise InputFormatError(f"{self.path}: onnxruntime cannot load this file ({type(exc).__name__}: "
                                   f"{exc}); export the model again with ava-export") from None
        self.metadata = OnnxMetadata.from_properties(self.session.get_modelmeta().custom_metadata_map,
                                                     str(self.path))
        self.config = self.metadata.action_config(str(self.path))
        self.weights_sha256 = self.metadata.weights_sha256
        self.input_names = tuple(i.name for i in self.session.get_inputs())
        expected = ACTION_INPUTS[self.config.model.arch]
        outputs = [o.name for o in self.session.get_outputs()]
        if self.input_names != expected or outputs != [ACTION_OUTPUT]:
            raise InputFormatError(f"{self.path}: graph inputs {list(self.input_names)} / outputs {outputs}, expected "
                                   f"{list(expected)} / [{ACTION_OUTPUT!r}] for a {self.config.model.arch} model; "
                                   "export the model again with ava-export")

    def __call__(self, inputs, boxes):
        """``([slow, fast] or [slow], boxes (K, 5)) -> (K, num_classes)`` float32 torch tensor on the CPU."""
        import numpy as np
        import torch

        pathways = self.input_names[:-1]
        if len(inputs) != len(pathways):
            raise InputFormatError(f"{self.path}: expected {len(pathways)} input tensor(s) {list(pathways)}, got "
                                   f"{len(inputs)}")
        feeds = {name: _numpy(x) for name, x in zip(pathways, inputs)}
        feeds["boxes"] = np.ascontiguousarray(_numpy(boxes).reshape(-1, 5))
        probs = self.session.run([ACTION_OUTPUT], feeds)[0]
        return torch.from_numpy(probs)

    def check_matches(self, config=None, weights: Optional[str | Path] = None) -> None:
        """Raise :class:`ConfigError` when a config / weights given beside the file are not what it was exported
        from: the config's model and data sections must be equal, a weights file's sha256 the recorded one."""
        if config is not None:
            for section in ("model", "data"):
                ours, theirs = getattr(self.config, section), getattr(config, section)
                if ours != theirs:
                    fields = [name for name in vars(ours) if getattr(ours, name) != getattr(theirs, name)]
                    raise ConfigError(f"{self.path}: exported from config {self.config.name!r}, which differs from "
                                      f"the given config {config.name!r} in {section}.{', '.join(fields)}; "
                                      "drop the config (the ONNX file carries its own) or export it again")
        if weights is not None and Path(weights).is_file() and self.weights_sha256:
            from ..checksums import file_sha256

            if file_sha256(weights) != self.weights_sha256:
                raise ConfigError(f"{self.path}: exported from other weights than {weights} (sha256 differs); "
                                  "drop the weights (the ONNX file carries its own) or export them again")


def _numpy(x):
    import numpy as np

    if hasattr(x, "detach"):
        x = x.detach().to("cpu").float().contiguous().numpy()
    return np.asarray(x, dtype=np.float32)


def _providers(ort, device: str) -> list:
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device.startswith("cuda"):
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise ConfigError(f"device {device!r}: this onnxruntime has no CUDA provider (it offers "
                              f"{ort.get_available_providers()}); install onnxruntime-gpu or use device 'cpu'")
        index = int(device.partition(":")[2] or 0)
        return [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
    raise ConfigError(f"device {device!r} is not supported by the onnx runtime; use 'cpu' or 'cuda[:N]'")


def open_onnx_action_model(path: str | Path, *, model: Optional[str] = None, config: Optional[str | Path] = None,
                           weights: Optional[str | Path] = None, device: str = "cpu",
                           threads: Optional[int] = None) -> OnnxActionModel:
    """An :class:`OnnxActionModel` for ``path``, checked against the zoo ``model`` name or ``config`` and the
    ``weights`` file a caller gave beside it (see :meth:`OnnxActionModel.check_matches`)."""
    from ..weights import model_config

    runtime = OnnxActionModel(path, threads=threads, device=device)
    source = config if config is not None else model
    expected = None
    if source is not None:
        expected = model_config(source)
    runtime.check_matches(expected, weights)
    return runtime

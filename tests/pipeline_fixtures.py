"""A tiny action model, lossless videos and box files written to disk: the inputs of pipeline, CLI and batch
tests (``write_tiny_model`` saves our YAML + a PySlowFast-format checkpoint of seeded random weights)."""
from pathlib import Path

import av
import cv2
import numpy as np
import torch

from ava_pipeline.config import ActionModelConfig, DataConfig, ModelConfig, dump_config
from ava_pipeline.models import build_action_model

TINY_MODEL = ModelConfig(arch="slowfast", depth=50, num_frames=8, sampling_rate=2, alpha=4, width_per_group=8,
                         dropout_rate=0.0, aligned=False)


def _randomise(model: torch.nn.Module, seed: int) -> None:
    """Non-trivial BN statistics, so that a wrong input path changes the scores visibly, and a small output
    projection, so that the probabilities spread over (0, 1) instead of saturating."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(module.running_var.shape, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(module.weight.shape, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(module.bias.shape, generator=generator) * 0.1)
    projection = [module for module in model.modules() if isinstance(module, torch.nn.Linear)][-1]
    projection.weight.data.mul_(0.02)
    projection.bias.data.zero_()


def save_checkpoint(model_cfg: ModelConfig, path: Path, seed: int = 0) -> torch.nn.Module:
    """Random weights of ``model_cfg`` saved as a PySlowFast checkpoint ``{"model_state": ..., "epoch": 1}``."""
    torch.manual_seed(seed)
    model = build_action_model(model_cfg)
    _randomise(model, seed)
    torch.save({"model_state": model.state_dict(), "epoch": 1}, path)
    return model.eval()


def write_tiny_model(folder: Path, *, test_crop_size=64, box_thresh=0.5, seed=0) -> tuple[Path, Path]:
    """Our YAML + PySlowFast-format checkpoint of a tiny SlowFast (8x2 frames, width 8); returns both paths."""
    folder.mkdir(parents=True, exist_ok=True)
    config = ActionModelConfig(name="tiny", model=TINY_MODEL, data=DataConfig(test_crop_size=test_crop_size),
                               box_thresh=box_thresh)
    config_path, weights_path = folder / "tiny.yaml", folder / "tiny.pyth"
    config_path.write_text(dump_config(config))
    save_checkpoint(TINY_MODEL, weights_path, seed)
    return config_path, weights_path


def textured_frames(num_frames: int, size=(80, 60), seed=0) -> list[np.ndarray]:
    """Smooth random RGB textures drifting over time, uint8 (H, W, 3)."""
    width, height = size
    rng = np.random.default_rng(seed)
    base = cv2.resize(rng.integers(0, 256, (height // 4 + 2, width // 4 + 2, 3), dtype=np.uint8),
                      (width + 2 * num_frames, height), interpolation=cv2.INTER_CUBIC)
    return [np.ascontiguousarray(np.roll(base, -2 * i, axis=1)[:, :width]) for i in range(num_frames)]


def write_lossless_video(path: Path, frames: list[np.ndarray], fps=30) -> None:
    """FFV1 in RGB (bgr0): decoding gives back ``frames`` exactly."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("ffv1", rate=fps)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "bgr0"
        for image in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode(None))


def write_boxes(path: Path, rows) -> None:
    """AVA box CSV: ``video_id,timestamp,x1,y1,x2,y2,label,score`` (label empty)."""
    path.write_text("".join(f"{v},{t},{x1},{y1},{x2},{y2},,{s}\n" for v, t, x1, y1, x2, y2, s in rows))


def damaged_tail(data: bytes) -> bytes:
    """A video file's bytes with the last third replaced by garbage: decoding fails partway."""
    return data[:len(data) * 2 // 3] + bytes(range(256)) * 64


def write_damaged_movie(folder: Path) -> tuple[Path, Path]:
    """``movie.mkv`` (150 frames, damaged after about 3 s) and ``boxes.csv`` with a person at 1, 2, 3 and 4 s."""
    path, boxes = folder / "movie.mkv", folder / "boxes.csv"
    write_lossless_video(path, textured_frames(150))
    path.write_bytes(damaged_tail(path.read_bytes()))
    write_boxes(boxes, [("movie", t, "0.1", "0.1", "0.9", "0.9", 0.9) for t in (1, 2, 3, 4)])
    return path, boxes

"""onnxruntime as the action model's runtime: ``ActionDetector(runtime="onnx")`` and ``ava-detect --runtime onnx``
give torch's detections (same CSV rows, scores within 1e-4), for one video and for a batch of videos."""
from pathlib import Path

import numpy as np
import pytest

from ava_pipeline.cli.detect import main as detect_main
from ava_pipeline.cli.export import main as export_main
from ava_pipeline.config import ModelConfig
from ava_pipeline.errors import ConfigError
from ava_pipeline.pipeline import ActionDetector

from tests.model_fixtures import write_model
from tests.pipeline_fixtures import textured_frames, write_boxes, write_lossless_video

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny SlowFast (YAML + PySlowFast checkpoint, unaligned RoIAlign) and its export, two 3 s videos and
    their box file."""
    folder = tmp_path_factory.mktemp("onnx_runtime")
    config, weights = write_model(folder / "model", "tiny", ModelConfig(width_per_group=8, num_frames=8,
                                                                        aligned=False))
    onnx = folder / "model" / "tiny.onnx"
    assert export_main(["--config", str(config), "--weights", str(weights), "--out", str(onnx), "--quiet"]) == 0
    videos = folder / "videos"
    videos.mkdir()
    for index, name in enumerate(("walk", "run")):
        write_lossless_video(videos / f"{name}.mkv", textured_frames(90, seed=index))
    boxes = folder / "boxes.csv"
    write_boxes(boxes, [("walk", 1, "0.100", "0.150", "0.500", "0.950", 0.95),
                        ("walk", 2, "0.400", "0.100", "0.900", "0.900", 0.90),
                        ("walk", 2, "0.050", "0.050", "0.300", "0.600", 0.70),
                        ("run", 1, "0.200", "0.100", "0.700", "0.990", 0.99)])
    return {"config": config, "weights": weights, "onnx": onnx, "videos": videos, "boxes": boxes}


def read_rows(path: Path) -> tuple[list[list[str]], np.ndarray]:
    """The CSV's columns before the score, and the scores."""
    rows = [line.split(",") for line in path.read_text().splitlines()]
    return [row[:7] for row in rows], np.array([float(row[7]) for row in rows])


def assert_same_detections(torch_csv: Path, onnx_csv: Path) -> None:
    keys, scores = read_rows(torch_csv)
    onnx_keys, onnx_scores = read_rows(onnx_csv)
    assert keys == onnx_keys and len(keys) > 0
    assert np.abs(scores - onnx_scores).max() < TOLERANCE
    assert scores.std() > 0.01


def test_ava_detect_runtime_onnx_writes_the_torch_csv(setup, tmp_path):
    video = setup["videos"] / "walk.mkv"
    common = [str(video), "--boxes", str(setup["boxes"]), "--quiet"]
    model = ["--config", str(setup["config"]), "--weights", str(setup["weights"])]
    assert detect_main([*common, *model, "--out", str(tmp_path / "torch.csv")]) == 0
    assert detect_main([*common, "--runtime", "onnx", "--onnx", str(setup["onnx"]),
                        "--out", str(tmp_path / "onnx.csv")]) == 0
    assert_same_detections(tmp_path / "torch.csv", tmp_path / "onnx.csv")
    # the same command line as the torch run plus the runtime: the config and weights are checked, not reloaded
    assert detect_main([*common, *model, "--runtime", "onnx", "--onnx", str(setup["onnx"]),
                        "--out", str(tmp_path / "again.csv")]) == 0
    assert (tmp_path / "again.csv").read_text() == (tmp_path / "onnx.csv").read_text()


def test_a_batch_of_videos_runs_through_onnxruntime_in_the_workers(setup, tmp_path):
    common = [str(setup["videos"]), "--boxes", str(setup["boxes"]), "--quiet", "--workers", "1"]
    assert detect_main([*common, "--config", str(setup["config"]), "--weights", str(setup["weights"]),
                        "--out", str(tmp_path / "torch")]) == 0
    assert detect_main([*common, "--onnx", str(setup["onnx"]), "--out", str(tmp_path / "onnx")]) == 0
    for name in ("walk.csv", "run.csv"):
        assert_same_detections(tmp_path / "torch" / name, tmp_path / "onnx" / name)


def test_action_detector_takes_config_and_weights_from_the_file(setup):
    detector = ActionDetector(runtime="onnx", onnx=str(setup["onnx"]), boxes=str(setup["boxes"]))
    reference = ActionDetector(config=str(setup["config"]), weights=str(setup["weights"]), boxes=str(setup["boxes"]))
    assert detector.config == reference.config
    assert detector.fingerprint() == reference.fingerprint()  # same model and weights: same outputs
    assert detector.settings["runtime"] == "onnx"
    results = list(detector.stream(setup["videos"] / "walk.mkv"))
    expected = list(reference.stream(setup["videos"] / "walk.mkv"))
    for got, want in zip(results, expected, strict=True):
        assert got.probs.shape == want.probs.shape and np.abs(got.probs - want.probs).max() < TOLERANCE


@pytest.mark.parametrize("arguments, message", [
    (dict(runtime="onnx"), "runtime='onnx' needs the exported file"),
    (dict(onnx="model.onnx"), "is only used with runtime='onnx'"),
    (dict(runtime="tensorrt", onnx="model.onnx"), "unknown runtime 'tensorrt'"),
    (dict(runtime="onnx", onnx="model.onnx", precision="fp16"), "precision='fp16' is a torch setting"),
])
def test_runtime_arguments_are_validated(setup, arguments, message):
    with pytest.raises(ConfigError, match=message):
        ActionDetector(boxes=str(setup["boxes"]), **arguments)


@pytest.mark.parametrize("arguments, message", [
    (["--runtime", "onnx"], "--runtime onnx needs --onnx FILE"),
    (["--runtime", "torch", "--onnx", "{onnx}"], "drop --runtime torch or --onnx"),
    (["--onnx", "missing.onnx"], "--onnx missing.onnx: file not found"),
    (["--onnx", "{onnx}", "--weights", "{other}"], "exported from other weights than"),
])
def test_ava_detect_onnx_usage_errors_exit_2(setup, tmp_path, capsys, arguments, message):
    other = tmp_path / "other.pyth"
    other.write_bytes(setup["weights"].read_bytes() + b"\0")
    arguments = [a.format(onnx=setup["onnx"], other=other) for a in arguments]
    assert detect_main([str(setup["videos"] / "walk.mkv"), "--boxes", str(setup["boxes"]), *arguments,
                        "--out", str(tmp_path / "x.csv")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ava-detect: error:") and message in err[0]
    assert not (tmp_path / "x.csv").exists()

"""ONNX export (ava-export, ``ava_pipeline.export``): onnxruntime reproduces torch, the file describes itself.

Tiny SlowFast R50 (aligned RoIAlign), R101 with non-local blocks and Slow R50 (unaligned) are written as
PySlowFast-format checkpoints with our YAML configs, exported through ``ava-export`` and run by onnxruntime
at two input sizes and two box counts from one file. Tests that need onnx / onnxruntime skip without them;
the missing-dependency errors are tested by hiding the packages.
"""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ava_pipeline.api import load_action_model
from ava_pipeline.cli.export import main
from ava_pipeline.config import ActionModelConfig, ModelConfig
from ava_pipeline.errors import ConfigError, DependencyMissingError, InputFormatError
from ava_pipeline.labels import AVA_ACTIONS
from ava_pipeline.models import build_action_model
from tests.model_fixtures import (write_model, PARITY_CASES, PARITY_SEED, R101_NONLOCAL, SLOW_ONLY, random_clips,
                                  random_state_dict)

DATA = Path(__file__).parent / "data"
TOLERANCE = 1e-4

MODELS = {
    "slowfast_r50": ModelConfig(width_per_group=8, num_frames=8, aligned=True),
    "slowfast_r101_nonlocal": ModelConfig(width_per_group=8, num_frames=8, aligned=False, **R101_NONLOCAL),
    "slow_r50": ModelConfig(aligned=False, **{**SLOW_ONLY, "width_per_group": 8}),
}


@pytest.fixture(scope="module")
def onnx_installed():
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module", params=list(MODELS))
def exported(request, tmp_path_factory, onnx_installed):
    """(name, config path, weights path, .onnx path) of one model exported by ``ava-export``."""
    name = request.param
    folder = tmp_path_factory.mktemp(name)
    config, weights = write_model(folder, name, MODELS[name])
    out = folder / f"{name}.onnx"
    assert main(["--config", str(config), "--weights", str(weights), "--out", str(out), "--quiet"]) == 0
    return name, config, weights, out


def boxes_for(count: int, batch: int, height: int, width: int) -> torch.Tensor:
    """``count`` boxes ``[batch_index, x1, y1, x2, y2]`` in input pixels over ``batch`` clips: fractional
    corners, one box under a pixel wide (RoIAlign's minimum-size rule) and one reaching past the image."""
    rows = [[0, 2.0, 3.0, width * 0.55, height - 1.0],
            [batch - 1, width * 0.3 + 0.37, height * 0.2 + 0.61, width - 4.5, height * 0.8 - 0.25],
            [0, 10.2, 12.7, 10.9, 13.1],
            [batch - 1, -6.0, -3.5, width + 9.0, height + 2.0],
            [0, width * 0.5, 0.0, width, height * 0.5],
            [batch - 1, 0.0, height * 0.6, width * 0.4, height]]
    return torch.tensor(rows[:count], dtype=torch.float32)


def test_onnxruntime_equals_torch_at_two_sizes_and_box_counts(exported):
    from ava_pipeline.models.onnx_runtime import OnnxActionModel

    name, config, weights, path = exported
    model = load_action_model(config, weights=weights)
    runtime = OnnxActionModel(path)
    assert runtime.input_names == (("slow", "boxes") if name.startswith("slow_") else ("slow", "fast", "boxes"))
    for (height, width), count in (((64, 96), 1), ((80, 112), 6)):
        clips, _ = random_clips(model.config.model, height, width, seed=3)
        boxes = boxes_for(count, len(clips[0]), height, width)
        with torch.no_grad():
            expected = model(clips, boxes)
        got = runtime(clips, boxes)
        assert got.shape == expected.shape == (count, 80) and got.dtype == torch.float32
        assert (got - expected).abs().max().item() < TOLERANCE
        assert expected.std() > 0.01  # the weights do not saturate the sigmoid: the comparison means something
    # batch of one clip, no boxes
    clips, _ = random_clips(model.config.model, 48, 64, seed=4, batch=1)
    assert runtime(clips, torch.zeros(0, 5)).shape == (0, 80)


def test_metadata_round_trip(exported):
    from ava_pipeline.export import read_onnx_metadata

    name, config, weights, path = exported
    model = load_action_model(config, weights=weights)
    meta = read_onnx_metadata(path)
    assert meta.kind == "action_model" and meta.config_name == name
    assert meta.class_ids == list(range(1, 81))
    assert meta.class_names == [AVA_ACTIONS[i] for i in range(1, 81)]
    model_cfg, data = model.config.model, model.config.data
    assert {key: meta.preprocessing[key] for key in ("mean", "std", "short_side", "num_frames", "sampling_rate",
                                                     "alpha", "bgr", "fps")} == {
        "mean": list(data.mean), "std": list(data.std), "short_side": 64, "num_frames": model_cfg.num_frames,
        "sampling_rate": model_cfg.sampling_rate, "alpha": model_cfg.alpha, "bgr": True, "fps": 30}
    assert meta.action_config(str(path)) == model.config
    assert meta.weights_sha256 == model.weights_sha256


def test_metadata_of_a_model_with_its_own_label_map(tmp_path):
    import dataclasses

    from ava_pipeline.export import action_metadata
    from ava_pipeline.labels import write_label_map

    write_label_map({11: "sit", 101: "wave hands", 14: "walk"}, tmp_path / "labelmap.pbtxt")
    config = dataclasses.replace(ActionModelConfig(), label_map=str(tmp_path / "labelmap.pbtxt"),
                                 model=dataclasses.replace(ActionModelConfig().model, num_classes=3))
    meta = action_metadata(config, None)
    assert (meta.class_ids, meta.class_names) == ([11, 101, 14], ["sit", "wave hands", "walk"])


def test_graph_inputs_are_named_and_dynamic(exported):
    import onnx

    name, _, _, path = exported
    graph = onnx.load(str(path)).graph
    shapes = {value.name: [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
              for value in [*graph.input, *graph.output]}
    frames = MODELS[name].num_frames
    expected = {"slow": ["batch", 3, frames // MODELS[name].alpha, "height", "width"],
                "boxes": ["num_boxes", 5], "probs": ["num_boxes", 80]}
    if name.startswith("slow_"):
        expected["slow"][2] = frames
    else:
        expected["fast"] = ["batch", 3, frames, "height", "width"]
    assert shapes == expected
    assert any(node.op_type == "RoiAlign" for node in graph.node)


def test_onnxruntime_reproduces_pyslowfast_recorded_probabilities(tmp_path, onnx_installed):
    """tests/data/model_parity.npz holds what PySlowFast's own model computed for this weights/input recipe."""
    from ava_pipeline.export import export_action_model
    from ava_pipeline.models.onnx_runtime import OnnxActionModel

    name = "tiny_R101_softmax_nonlocal"
    model_cfg, height, width = PARITY_CASES[name]
    model = build_action_model(model_cfg)
    model.load_state_dict(random_state_dict(model.state_dict(), PARITY_SEED))
    path = export_action_model(model, ActionModelConfig(name=name, model=model_cfg), tmp_path / "parity.onnx")
    clips, boxes = random_clips(model_cfg, height, width, PARITY_SEED)
    expected = torch.from_numpy(np.load(DATA / "model_parity.npz")[name])
    assert (OnnxActionModel(path)(clips, boxes) - expected).abs().max().item() < TOLERANCE


def test_module_entry_point_writes_the_file(tmp_path, onnx_installed):
    config, weights = write_model(tmp_path, "entry", MODELS["slowfast_r50"], seed=2)
    out = tmp_path / "entry.onnx"
    result = subprocess.run([sys.executable, "-m", "ava_pipeline.cli.export", "--config", str(config), "--weights",
                             str(weights), "--out", str(out), "--opset", "18"], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert "onnxruntime matches torch" in result.stderr and out.is_file()
    assert not list(tmp_path.glob("*.part"))
    import onnx

    assert {entry.version for entry in onnx.load(str(out)).opset_import if entry.domain in ("", "ai.onnx")} == {18}


@pytest.mark.parametrize("arguments, message", [
    (["--opset", "9"], "opset 9 is not supported; use 16..20"),
    (["--detector-model", "fasterrcnn_resnet50_fpn"], "--detector-model is only used with --detector"),
    (["--detector", "--config", "X.yaml"], "drop --model / --config"),
    (["--weights", "missing.pyth"], "--weights missing.pyth: file not found"),
])
def test_usage_errors_exit_2_with_one_line(tmp_path, capsys, arguments, message):
    assert main([*arguments, "--out", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ava-export: error:") and message in err[0]
    assert not (tmp_path / "m.onnx").exists()


def test_out_must_not_overwrite_the_weights(tmp_path, capsys):
    config, weights = write_model(tmp_path, "same", MODELS["slowfast_r50"])
    assert main(["--config", str(config), "--weights", str(weights), "--out", str(weights)]) == 2
    assert "--out would write" in capsys.readouterr().err


def test_missing_onnx_package_is_one_line_with_the_install_command(tmp_path, capsys, monkeypatch):
    config, weights = write_model(tmp_path, "nodep", MODELS["slowfast_r50"])
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx now raises ImportError
    assert main(["--config", str(config), "--weights", str(weights), "--out", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("ava-export: error: ava-export needs the optional package 'onnx', which is not installed; "
                   "install it with the onnx extra: pip install 'ava-pipeline[onnx]'")
    assert not (tmp_path / "m.onnx").exists()


def test_missing_onnxruntime_is_a_dependency_error(tmp_path, monkeypatch):
    from ava_pipeline.models.onnx_runtime import OnnxActionModel

    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(DependencyMissingError, match=r"'onnxruntime'.*pip install 'ava-pipeline\[onnx\]'"):
        OnnxActionModel(tmp_path / "m.onnx")


def test_a_file_that_is_not_an_export_is_named(tmp_path, onnx_installed):
    from ava_pipeline.export import read_onnx_metadata
    from ava_pipeline.models.onnx_runtime import OnnxActionModel

    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a protobuf at all \x00\xff")
    with pytest.raises(InputFormatError, match="junk.onnx: onnxruntime cannot load this file"):
        OnnxActionModel(junk)
    with pytest.raises(InputFormatError, match="junk.onnx: not a readable ONNX file"):
        read_onnx_metadata(junk)
    with pytest.raises(InputFormatError, match="nothing.onnx: no such ONNX file"):
        OnnxActionModel(tmp_path / "nothing.onnx")


def test_a_file_without_our_metadata_is_refused(tmp_path, onnx_installed):
    from ava_pipeline.models.onnx_runtime import OnnxActionModel

    from onnx import TensorProto, helper, save

    plain = tmp_path / "plain.onnx"
    value = helper.make_tensor_value_info
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu", [value("x", TensorProto.FLOAT, [2])],
                              [value("y", TensorProto.FLOAT, [2])])
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(plain))
    with pytest.raises(InputFormatError, match="plain.onnx: not an ava-pipeline ONNX export .*export the model "
                                               "with ava-export"):
        OnnxActionModel(plain)


def test_metadata_json_is_plain_text(exported):
    """A deployment without ava-pipeline reads the metadata with any ONNX reader."""
    import onnx

    _, _, _, path = exported
    properties = {entry.key: entry.value for entry in onnx.load(str(path)).metadata_props}
    assert json.loads(properties["class_ids"])[:3] == [1, 2, 3]
    assert json.loads(properties["preprocessing"])["inputs"][-1] == "boxes"


def test_config_or_weights_beside_the_file_must_be_its_own(exported, tmp_path):
    from ava_pipeline.models.onnx_runtime import open_onnx_action_model

    name, config, weights, path = exported
    assert open_onnx_action_model(path, config=config, weights=weights).config.name == name
    other_config, other_weights = write_model(tmp_path, "other", MODELS["slowfast_r50"], seed=5)
    if name != "slowfast_r50":
        with pytest.raises(ConfigError, match=f"exported from config '{name}', which differs from the given config "
                                              "'other' in model"):
            open_onnx_action_model(path, config=other_config)
    with pytest.raises(ConfigError, match="exported from other weights than .*other.pyth"):
        open_onnx_action_model(path, weights=other_weights)


DETECTOR = "fasterrcnn_mobilenet_v3_large_320_fpn"  # the smallest torchvision detector (input short side 320)


def write_detector_weights(path: Path, seed: int = 0) -> None:
    """Seeded weights for ``DETECTOR`` (every entry random, BatchNorm statistics positive) whose person logit is
    raised, so that it finds persons scored about 0.92 (above the default threshold 0.8) on random images."""
    import math

    from ava_pipeline.detector import build_torchvision_model

    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in build_torchvision_model(DETECTOR).state_dict().items():
        if not value.is_floating_point():
            state[key] = value
        elif key.endswith("running_var"):
            state[key] = torch.rand(value.shape, generator=generator) * 1.5 + 0.5
        elif key.endswith(("running_mean", "bias")):
            state[key] = torch.randn(value.shape, generator=generator) * 0.1
        elif value.dim() > 1:
            state[key] = torch.randn(value.shape, generator=generator) * math.sqrt(2 / math.prod(value.shape[1:]))
        else:
            state[key] = torch.rand(value.shape, generator=generator) * 0.5 + 0.5
    state["roi_heads.box_predictor.cls_score.weight"] *= 0.3
    state["roi_heads.box_predictor.cls_score.bias"][1] = 7.0  # COCO category 1: person
    torch.save(state, path)


def test_person_detector_export_matches_torchvision(tmp_path, onnx_installed):
    import onnxruntime

    from ava_pipeline.detector import build_torchvision_detector
    from ava_pipeline.export import export_person_detector, read_onnx_metadata

    weights, out = tmp_path / "detector.pth", tmp_path / "detector.onnx"
    write_detector_weights(weights)
    assert main(["--detector", "--detector-model", DETECTOR, "--weights", str(weights), "--out", str(out),
                 "--quiet"]) == 0
    meta = read_onnx_metadata(out)
    assert meta.kind == "person_detector" and meta.config_name == DETECTOR
    assert meta.class_names[meta.preprocessing["person_label"]] == "person"
    assert meta.preprocessing["input_min_size"] == 320 and meta.preprocessing["score_thresh"] == 0.8
    detector = build_torchvision_detector(DETECTOR, weights=weights, fast=False)
    with pytest.raises(ConfigError, match="build it with fast=False to export it"):
        export_person_detector(build_torchvision_detector(DETECTOR, weights=weights), tmp_path / "fast.onnx")
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(1)
    for height, width in ((320, 400), (448, 320)):  # short side at the model's input size (see export docstring)
        image = torch.rand(3, height, width, generator=generator)
        with torch.no_grad():
            expected = detector.model([image])[0]
        boxes, scores, labels = session.run(None, {"image": image.numpy()})
        assert len(boxes) == len(expected["boxes"]) > 5
        assert np.abs(boxes - expected["boxes"].numpy()).max() < 1e-2  # pixels of a 320-pixel image
        assert np.abs(scores - expected["scores"].numpy()).max() < TOLERANCE
        assert (labels == expected["labels"].numpy()).all() and (labels == 1).any()


def test_only_the_torchvision_detector_exports(tmp_path):
    from ava_pipeline.export import export_person_detector

    class Precomputed:
        backend = "precomputed"

    with pytest.raises(ConfigError, match="only the torchvision person detector can be exported to ONNX, not "
                                          "'precomputed'"):
        export_person_detector(Precomputed(), tmp_path / "d.onnx")

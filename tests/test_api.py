"""load_action_model: configs by name or path (ours / PySlowFast's), weights by path or zoo name."""
import re
from dataclasses import replace

import pytest
import torch
import yaml

from ava_pipeline import load_action_model
from ava_pipeline.config import ActionModelConfig, ModelConfig, dump_config
from ava_pipeline.errors import ConfigError, WeightsError
from ava_pipeline.models import build_action_model
from ava_pipeline.weights import ZOO, sha256_of

TINY = ModelConfig(width_per_group=8, num_frames=8, aligned=False)


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)
    model = build_action_model(TINY)
    for parameter in model.parameters():
        torch.nn.init.normal_(parameter, std=0.1)
    weights = folder / "tiny.pkl"
    torch.save({"model_state": model.state_dict(), "epoch": 3}, weights, _use_new_zipfile_serialization=False)
    config = folder / "tiny.yaml"
    config.write_text(dump_config(ActionModelConfig(name="tiny", model=TINY)))
    return config, weights, model.state_dict()


def test_loads_yaml_and_weights_in_eval_mode(tiny_files):
    config, weights, expected = tiny_files
    model = load_action_model(str(config), weights=weights)
    assert not model.training and model.config.name == "tiny" and model.config.model == TINY
    assert model.weights_sha256 == sha256_of(weights)
    torch.testing.assert_close(model.state_dict()["head.projection.weight"], expected["head.projection.weight"])
    slow, fast = torch.rand(1, 3, 2, 64, 64), torch.rand(1, 3, 8, 64, 64)
    boxes = torch.tensor([[0.0, 4.0, 4.0, 40.0, 60.0]])
    with torch.no_grad():
        scores = model([slow, fast], boxes)
    assert scores.shape == (1, 80) and bool(((scores >= 0) & (scores <= 1)).all())


def test_weights_named_by_our_config(tiny_files, tmp_path):
    _, weights, _ = tiny_files
    config = tmp_path / "with_weights.yaml"
    config.write_text(dump_config(ActionModelConfig(name="tiny", model=TINY, weights=str(weights))))
    assert load_action_model(config).weights_sha256 == sha256_of(weights)


def test_pyslowfast_yaml_with_checkpoint_file_path(tiny_files, tmp_path):
    _, weights, _ = tiny_files
    config = tmp_path / "SLOWFAST_tiny.yaml"
    config.write_text(yaml.safe_dump({
        "DATA": {"NUM_FRAMES": 8, "SAMPLING_RATE": 2, "TEST_CROP_SIZE": 256},
        "DETECTION": {"ENABLE": True, "ALIGNED": False},
        "RESNET": {"WIDTH_PER_GROUP": 8, "DEPTH": 50},
        "MODEL": {"ARCH": "slowfast", "NUM_CLASSES": 80},
        "TEST": {"ENABLE": True, "CHECKPOINT_FILE_PATH": str(weights), "CHECKPOINT_TYPE": "pytorch"}}))
    model = load_action_model(config)
    assert model.config.weights == str(weights) and model.config.model.aligned is False


def test_no_weights_anywhere_is_an_error(tiny_files):
    config, _, _ = tiny_files
    with pytest.raises(WeightsError, match="names no weights; pass weights=FILE"):
        load_action_model(config)


def test_missing_weights_file_is_an_error(tiny_files, tmp_path):
    config, _, _ = tiny_files
    with pytest.raises(WeightsError, match=re.escape(str(tmp_path / "nope.pyth")) + ": no such checkpoint"):
        load_action_model(config, weights=tmp_path / "nope.pyth")


def test_weights_for_another_config_name_the_file(tiny_files, tmp_path):
    _, weights, _ = tiny_files
    config = tmp_path / "slow.yaml"
    other = replace(TINY, width_per_group=16)
    config.write_text(dump_config(ActionModelConfig(name="wide", model=other)))
    with pytest.raises(WeightsError, match=re.escape(str(weights)) + ".*shape mismatches.*--config"):
        load_action_model(config, weights=weights)
    model = load_action_model(config, weights=weights, strict=False)
    assert model.config.name == "wide"


def test_zoo_name_without_network_says_to_pass_weights(monkeypatch, tmp_path):
    monkeypatch.setenv("AVA_PIPELINE_HOME", str(tmp_path / "cache"))
    record = ZOO["SLOW_4x16_R50_DETECTION"]
    monkeypatch.setitem(ZOO, record.name, replace(record, url=(tmp_path / record.filename).as_uri()))
    with pytest.raises(WeightsError, match=r"cannot download .*SLOW_4x16_R50_DETECTION\.pyth.*--weights FILE"):
        load_action_model("SLOW_4x16_R50_DETECTION")


def test_unknown_config_suggests_a_name():
    with pytest.raises(ConfigError, match="did you mean 'SLOWFAST_32x2_R101_50_50'"):
        load_action_model("SLOWFAST_32x2_R101_50")


@pytest.mark.subprocess
def test_package_names_are_lazy_visible_and_torch_free_until_used():
    code = ("import sys, ava_pipeline; names = dir(ava_pipeline); "
            "assert {'ActionDetector', 'load_action_model', 'evaluate', 'build_detector', 'KeyframeResult'} <= "
            "set(names), names; assert 'torch' not in sys.modules; "
            "from ava_pipeline import evaluate; assert 'torch' not in sys.modules; "
            "from ava_pipeline.evaluation import evaluate as inner; assert evaluate is inner")
    import subprocess
    import sys

    subprocess.run([sys.executable, "-c", code], check=True)


def test_load_action_model_takes_its_options_by_keyword_only(tiny_files):
    config, weights, _ = tiny_files
    with pytest.raises(TypeError):
        load_action_model(config, weights)  # noqa: the positional form is refused on purpose

"""config.py: strict typed YAML, PySlowFast's AVA YAMLs read unchanged, and our packaged configs."""
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from ava_pipeline.config import ModelConfig, dump_config, load_config, packaged_config_names
from ava_pipeline.errors import ConfigError

PYSLOWFAST = Path(__file__).parent / "data" / "pyslowfast_configs"
PYSLOWFAST_YAMLS = sorted(PYSLOWFAST.rglob("*.yaml"))

# our packaged config -> the PySlowFast YAML it is equivalent to
EQUIVALENT = {
    "SLOWFAST_32x2_R50_SHORT": "configs/AVA/SLOWFAST_32x2_R50_SHORT.yaml",
    "SLOWFAST_32x2_R101_50_50": "configs/AVA/c2/SLOWFAST_32x2_R101_50_50.yaml",
    "SLOWFAST_32x2_R101_50_50_v2.1": "configs/AVA/c2/SLOWFAST_32x2_R101_50_50_v2.1.yaml",
    "SLOWFAST_64x2_R101_50_50": "configs/AVA/c2/SLOWFAST_64x2_R101_50_50.yaml",
    "SLOW_8x8_R50": "configs/AVA/c2/SLOW_8x8_R50.yaml",
}


def write(tmp_path, data, name="cfg.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def test_all_eight_pyslowfast_yamls_are_present():
    assert len(PYSLOWFAST_YAMLS) == 8


@pytest.mark.parametrize("path", PYSLOWFAST_YAMLS, ids=lambda p: str(p.relative_to(PYSLOWFAST)))
def test_pyslowfast_yaml_loads(path):
    cfg = load_config(path)
    text = path.read_text()
    assert cfg.model.aligned is ("ALIGNED: False" not in text)
    assert cfg.model.depth == (101 if "R101" in path.name else 50)
    assert cfg.model.arch == ("slow" if path.name.startswith("SLOW_") else "slowfast")
    assert cfg.data.test_crop_size == (224 if path.name == "SLOWFAST_32x2_R50_SHORT.yaml" else 256)
    assert cfg.box_thresh == (0.9 if path.name.startswith("SLOW_") else 0.8)
    assert cfg.eval_label_map == ("v2.1-eval" if "v2.1" in path.name else "v2.2-eval")


def test_r101_details_from_pyslowfast():
    model = load_config(PYSLOWFAST / "configs/AVA/c2/SLOWFAST_64x2_R101_50_50.yaml").model
    assert (model.num_frames, model.sampling_rate, model.fusion_kernel_size) == (64, 2, 5)
    assert model.nonlocal_location[2] == ((6, 13, 20), ())


@pytest.mark.parametrize("name", sorted(EQUIVALENT))
def test_our_configs_equal_pyslowfast(name):
    ours = load_config(name)
    theirs = load_config(PYSLOWFAST / EQUIVALENT[name])
    assert ours.name == name
    assert replace(ours, name="", weights=None) == replace(theirs, name="", weights=None)


def test_demo_config_is_the_r101_config():
    demo = load_config(PYSLOWFAST / "demo/AVA/SLOWFAST_32x2_R101_50_50.yaml")
    assert demo.model == load_config("SLOWFAST_32x2_R101_50_50").model


def test_every_packaged_config_loads_and_round_trips(tmp_path):
    names = packaged_config_names()
    assert {"SLOWFAST_8x8_R50_DETECTION", "SLOW_4x16_R50_DETECTION", *EQUIVALENT} == set(names)
    for name in names:
        cfg = load_config(name)
        path = tmp_path / f"{name}.yaml"
        path.write_text(dump_config(cfg))
        assert load_config(path) == cfg


def test_pytorchvideo_configs():
    slowfast = load_config("SLOWFAST_8x8_R50_DETECTION")
    assert slowfast.model == ModelConfig(aligned=False)  # R50 SlowFast 32x2, fusion kernel 7, RoIAlign not aligned
    slow = load_config("SLOW_4x16_R50_DETECTION")
    assert slow.model == load_config("SLOW_8x8_R50").model and slow.model.num_frames == 4


def test_unknown_key_suggests_the_closest(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key 'box_tresh'; did you mean 'box_thresh'"):
        load_config(write(tmp_path, {"box_tresh": 0.5}))
    with pytest.raises(ConfigError, match=r"model: unknown key 'dept'.*'depth'"):
        load_config(write(tmp_path, {"model": {"dept": 50}}))


def test_unknown_pyslowfast_key_is_an_error(tmp_path):
    path = write(tmp_path, {"RESNET": {"DEPTHS": 50}})
    with pytest.raises(ConfigError, match=r"cfg.yaml: unknown PySlowFast key RESNET.DEPTHS.*RESNET.DEPTH"):
        load_config(path)


def test_unsupported_pyslowfast_value_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="TRANS_FUNC='basic_transform' is not supported"):
        load_config(write(tmp_path, {"RESNET": {"TRANS_FUNC": "basic_transform"}}))


@pytest.mark.parametrize("data,message", [
    ({"model": {"depth": "fifty"}}, "model.depth: expected an integer, got 'fifty'"),
    ({"model": {"depth": True}}, "model.depth: expected an integer"),
    ({"model": {"aligned": "no"}}, "model.aligned: expected true or false"),
    ({"box_thresh": "high"}, "box_thresh: expected a number"),
    ({"data": {"mean": 0.45}}, "data.mean: expected a list"),
    ({"model": {"spatial_strides": [[1, 1], [2, 2], [2, 2]]}}, "per-stage options need 4 stages"),
    ({"model": {"depth": 34}}, "model.depth=34 is not supported"),
    ({"model": {"num_frames": 30}}, "must be a multiple of alpha"),
    ({"name": ["a"]}, "name: expected a string"),
    ({"model": 5}, "model: expected a mapping"),
])
def test_type_errors_name_the_key(tmp_path, data, message):
    path = write(tmp_path, data)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(str(path)) and message in str(info.value)


def test_float_accepts_integers(tmp_path):
    assert load_config(write(tmp_path, {"box_thresh": 1})).box_thresh == 1.0


def test_unreadable_yaml_and_unknown_name(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed")
    with pytest.raises(ConfigError, match="bad.yaml: cannot read YAML"):
        load_config(bad)
    listed = tmp_path / "list.yaml"
    listed.write_text("- 1\n")
    with pytest.raises(ConfigError, match="expected a YAML mapping"):
        load_config(listed)
    with pytest.raises(ConfigError, match="neither a YAML file nor a packaged config"):
        load_config("NO_SUCH_MODEL")

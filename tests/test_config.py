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


def write_variant(tmp_path, section, key, value) -> Path:
    """A valid R50 SlowFast config (ours) with ``section.key`` (or top-level ``key``) set to ``value``."""
    data = yaml.safe_load(dump_config(load_config("SLOWFAST_32x2_R50_SHORT")))
    (data[section] if section else data)[key] = value
    return write(tmp_path, data, "variant.yaml")


# values the model or the data path cannot use; each used to crash there (SIGFPE, ZeroDivisionError, a C++
# trace, a video error) or was accepted silently
@pytest.mark.parametrize("section,key,value", [
    ("model", "alpha", 0),
    ("model", "beta_inv", 0),
    ("model", "num_frames", 0),
    ("model", "sampling_rate", -2),
    ("model", "width_per_group", 0),
    ("model", "width_per_group", 4),  # < beta_inv: no Fast channels
    ("model", "num_groups", 0),
    ("model", "num_classes", 0),
    ("model", "roi_resolution", -3),
    ("model", "spatial_scale_factor", 0),
    ("model", "spatial_scale_factor", -16),
    ("model", "fusion_kernel_size", 0),
    ("model", "fusion_kernel_size", 4),
    ("model", "fusion_conv_channel_ratio", 0),
    ("model", "dropout_rate", 2.0),
    ("model", "dropout_rate", 1.0),
    ("model", "spatial_strides", [[0, 0]] * 4),
    ("model", "spatial_strides", [[1, 1], [-2, -2], [2, 2], [1, 1]]),
    ("model", "spatial_dilations", [[1, 1], [1, 1], [1, 1], [0, 2]]),
    ("model", "nonlocal_pool", [[[1, 2], [1, 2]]] * 4),
    ("model", "nonlocal_pool", [[[1, 2, 2], [0, 2, 2]]] * 4),
    ("model", "num_block_temp_kernel", [[3, 3], [4, 4], [7, 6], [3, 3]]),  # res4 of R50 has 6 blocks
    ("model", "num_block_temp_kernel", [[-1, 3], [4, 4], [6, 6], [3, 3]]),
    ("model", "nonlocal_location", [[[], []], [[], []], [[6], []], [[], []]]),  # indices 0..5 in res4 of R50
    ("model", "nonlocal_location", [[[], [-1]], [[], []], [[], []], [[], []]]),
    ("model", "depth", 34),
    ("data", "fps", 0),
    ("data", "test_crop_size", 0),
    ("data", "test_crop_size", -64),
    ("data", "mean", [float("inf")] * 3),
    ("data", "mean", [0.45, 0.45]),
    ("data", "std", [0, 0, 0]),
    ("data", "std", [0.2, float("nan"), 0.2]),
    (None, "box_thresh", 2.0),
    (None, "box_thresh", -0.1),
    (None, "box_thresh", float("nan")),
])
def test_unusable_values_are_config_errors_naming_file_and_key(tmp_path, section, key, value):
    path = write_variant(tmp_path, section, key, value)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: {section + '.' if section else ''}{key}")
    assert "; use " in str(info.value) or "must be" in str(info.value)


@pytest.mark.parametrize("section,key,value", [
    ("model", "dropout_rate", 0.0),
    ("model", "num_block_temp_kernel", [[0, 0], [4, 4], [6, 6], [3, 3]]),
    ("model", "nonlocal_location", [[[], []], [[], []], [[0, 5], []], [[], [2]]]),
    (None, "box_thresh", 0.0),
    (None, "box_thresh", 1.0),
])
def test_boundary_values_load(tmp_path, section, key, value):
    load_config(write_variant(tmp_path, section, key, value))


@pytest.mark.parametrize("section,key,value,message", [
    ("SLOWFAST", "ALPHA", 0, "model.alpha (SLOWFAST.ALPHA)=0 is not valid; use a positive integer"),
    ("RESNET", "SPATIAL_STRIDES", [[0, 0]] * 4, "model.spatial_strides (RESNET.SPATIAL_STRIDES)="),
    ("DETECTION", "SPATIAL_SCALE_FACTOR", 0,
     "model.spatial_scale_factor (DETECTION.SPATIAL_SCALE_FACTOR)=0 is not valid"),
    ("AVA", "DETECTION_SCORE_THRESH", 2, "box_thresh (AVA.DETECTION_SCORE_THRESH)=2.0"),
    ("NONLOCAL", "LOCATION", [[[], []], [[], []], [[9], []], [[], []]],
     "model.nonlocal_location[2] (NONLOCAL.LOCATION)=((9,), ())"),
    ("AVA", "LABEL_MAP_FILE", 5, "AVA.LABEL_MAP_FILE: expected a string, got 5"),
    ("TEST", "CHECKPOINT_FILE_PATH", 5, "TEST.CHECKPOINT_FILE_PATH: expected a string, got 5"),
    ("RESNET", "DEPTH", "fifty", "RESNET.DEPTH: expected an integer, got 'fifty'"),
])
def test_pyslowfast_errors_name_the_pyslowfast_key(tmp_path, section, key, value, message):
    data = {"MODEL": {"ARCH": "slowfast"}, section: {key: value}}
    path = write(tmp_path, data)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: {message}")


def test_messages_without_empty_or_self_suggestions(tmp_path):
    path = write(tmp_path, {"foo": 1})
    with pytest.raises(ConfigError, match=r"cfg.yaml: unknown key 'foo'; valid keys: box_thresh") as info:
        load_config(path)
    assert ": :" not in str(info.value)
    path.write_text("MODEL:\n  ARCH: slowfast\nRESNET:\n")
    with pytest.raises(ConfigError, match=r"cfg.yaml: PySlowFast section RESNET must be a mapping of keys, got None"):
        load_config(path)


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


def test_pyslowfast_values_parse_as_yacs_literals(tmp_path):
    """PySlowFast's yacs turns strings that are Python literals into those literals (plain YAML keeps 5e-1 a
    string): the same file means the same model here."""
    path = tmp_path / "pyslowfast.yaml"
    path.write_text("MODEL:\n  DROPOUT_RATE: 5e-1\n  NUM_CLASSES: '80'\nRESNET:\n  DEPTH: 50\n", encoding="utf-8")
    cfg = load_config(path)
    assert cfg.model.dropout_rate == 0.5
    assert cfg.model.num_classes == 80


def test_label_map_beside_the_config_gives_the_output_ids_and_names(tmp_path):
    from ava_pipeline.config import model_actions
    from ava_pipeline.labels import write_label_map

    write_label_map({11: "sit", 12: "stand", 14: "walk"}, tmp_path / "labelmap.pbtxt")
    (tmp_path / "config.yaml").write_text("model: {num_classes: 3}\nlabel_map: labelmap.pbtxt\n"
                                          "train: {batch_size: 2}\n", encoding="utf-8")
    cfg = load_config(tmp_path / "config.yaml")
    assert Path(cfg.label_map) == tmp_path / "labelmap.pbtxt"
    assert model_actions(cfg) == ((11, 12, 14), ("sit", "stand", "walk"))
    ids, names = model_actions(load_config("SLOWFAST_32x2_R101_50_50"))
    assert ids == tuple(range(1, 81)) and names[0] == "bend/bow (at the waist)" and len(names) == 80


def test_num_classes_contradicting_the_label_map_is_an_error(tmp_path):
    from ava_pipeline.labels import write_label_map

    write_label_map({11: "sit", 12: "stand"}, tmp_path / "labelmap.pbtxt")
    (tmp_path / "config.yaml").write_text("model: {num_classes: 3}\nlabel_map: labelmap.pbtxt\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"num_classes=3 contradicts label_map .*labelmap.pbtxt \(2 classes\)"):
        load_config(tmp_path / "config.yaml")

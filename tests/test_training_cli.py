"""ava-train's command line: settings from our YAML and PySlowFast's, and the bad-input battery (exit 2 with one
line naming the file, before training and before anything is written to --out)."""
import json

import pytest
import torch
import yaml

from ava_pipeline.cli.train import main
from ava_pipeline.config import ModelConfig
from ava_pipeline.errors import ConfigError
from ava_pipeline.labels import write_label_map
from ava_pipeline.training import load_train_settings, with_overrides
from ava_pipeline.training.init import build_training_model
from tests.training_fixtures import ANNOTATIONS, TINY_MODEL, write_config, write_dataset


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture()
def setup(tmp_path):
    data = write_dataset(tmp_path)
    data["config"] = write_config(tmp_path / "tiny.yaml", num_classes=80,
                                  train={"solver": {"base_lr": 0.001, "max_epoch": 1}})
    return data


def _args(data, out, *extra, labelmap=True):
    args = ["--config", str(data["config"]), "--videos", str(data["videos"]), "--annotations",
            str(data["annotations"]), "--out", str(out), "--quiet"]
    return args + (["--labelmap", str(data["labelmap"])] if labelmap else []) + list(extra)


def _fails(capsys, argv, *fragments):
    """Run ava-train, expect exit 2 and one stderr line with every fragment."""
    assert main(argv) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("ava-train: error: ")
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def test_pyslowfast_yaml_training_keys_parse_as_yacs_does(tmp_path):
    path = tmp_path / "SLOWFAST_AVA.yaml"
    path.write_text(
        "TRAIN: {ENABLE: True, DATASET: ava, BATCH_SIZE: 64, EVAL_PERIOD: 5, CHECKPOINT_PERIOD: 1, AUTO_RESUME: True,"
        " CHECKPOINT_TYPE: caffe2}\n"
        "DATA: {NUM_FRAMES: 32, SAMPLING_RATE: 2, TRAIN_JITTER_SCALES: [256, 320], TRAIN_CROP_SIZE: 224,"
        " TEST_CROP_SIZE: 224}\n"
        "SOLVER: {BASE_LR: 0.1, LR_POLICY: steps_with_relative_lrs, STEPS: [0, 10, 15, 20],"
        " LRS: [1, 0.1, 0.01, 0.001], MAX_EPOCH: 20, MOMENTUM: 0.9, WEIGHT_DECAY: 1e-7, WARMUP_EPOCHS: 5.0,"
        " WARMUP_START_LR: 0.000125, OPTIMIZING_METHOD: sgd}\n"
        "BN: {USE_PRECISE_STATS: False, NUM_BATCHES_PRECISE: 200, WEIGHT_DECAY: 1e-4}\n"
        "RESNET: {ZERO_INIT_FINAL_BN: True, DEPTH: 50}\nMODEL: {NUM_CLASSES: 80, LOSS_FUNC: bce}\n"
        "NUM_GPUS: 8\nNUM_SHARDS: 1\nRNG_SEED: 0\n", encoding="utf-8")
    settings = load_train_settings(path)
    assert settings.solver.weight_decay == 1e-7 and isinstance(settings.solver.weight_decay, float)
    assert settings.solver.bn_weight_decay == 1e-4
    assert (settings.batch_size, settings.eval_period, settings.checkpoint_period, settings.seed) == (64, 5, 1, 0)
    assert settings.solver.steps == (0, 10, 15, 20) and settings.solver.warmup_epochs == 5.0
    assert settings.zero_init_final_bn and settings.solver.nesterov and settings.augmentation.train_crop_size == 224
    overridden = with_overrides(settings, epochs=3, batch_size=2, lr=0.01, seed=7)
    assert (overridden.solver.max_epoch, overridden.batch_size, overridden.solver.base_lr, overridden.seed) == \
        (3, 2, 0.01, 7)
    path.write_text(path.read_text().replace("OPTIMIZING_METHOD: sgd", "OPTIMIZING_METHOD: adamw"))
    with pytest.raises(ConfigError, match=r"SOLVER.OPTIMIZING_METHOD='adamw' is not supported by ava-train"):
        load_train_settings(path)


def test_our_train_section_is_strict(tmp_path):
    path = tmp_path / "ours.yaml"
    path.write_text(yaml.safe_dump({"train": {"solver": {"base_lrr": 0.1}}}))
    with pytest.raises(ConfigError, match=r"ours.yaml: .*unknown key 'base_lrr'; did you mean 'base_lr'"):
        load_train_settings(path)
    path.write_text(yaml.safe_dump({"train": {"augmentation": {"train_jitter_scales": [200, 320]}}}))
    with pytest.raises(ConfigError, match=r"train_crop_size=224 must be positive and at most the smallest"):
        load_train_settings(path)


@pytest.mark.parametrize("row,fragments", [
    ("clip_a,1,0.05,0.1,0.45,zero,11,0", ["train.csv:", "zero"]),
    ("clip_a,1,0.05,0.1,1.45,0.9,11,0", ["train.csv:"]),
    ("clip_a,1,0.45,0.1,0.05,0.9,11,0", ["train.csv:"]),
    ("clip_z,1,0.05,0.1,0.45,0.9,11,0", ["train.csv:", "'clip_z'", "not found"]),
])
def test_bad_rows_exit_2_naming_file_and_row_before_anything_is_written(setup, tmp_path, capsys, row, fragments):
    with open(setup["annotations"], "a") as f:
        f.write(row + "\n")
    _fails(capsys, _args(setup, tmp_path / "run"), *fragments)
    assert not (tmp_path / "run").exists()


def test_action_outside_the_default_80_is_an_error_and_outside_a_given_map_is_skipped(setup, tmp_path, capsys):
    with open(setup["annotations"], "a") as f:
        f.write("clip_a,1,0.05,0.1,0.45,0.9,81,0\n")
    _fails(capsys, _args(setup, tmp_path / "run", labelmap=False), "train.csv:", "81")
    with open(setup["annotations"], "a") as f:
        f.write("clip_a,2,0.05,0.1,0.45,0.9,80,0\n")
    assert main(_args(setup, tmp_path / "run", "--epochs", "1")) == 0
    assert "2 rows whose action is not in the label map" in capsys.readouterr().err


def test_an_empty_training_set_and_too_few_keyframes_for_a_batch(setup, tmp_path, capsys):
    other = tmp_path / "other.pbtxt"
    write_label_map({20: "dance"}, other)
    _fails(capsys, _args(setup, tmp_path / "run", "--labelmap", str(other), labelmap=False), "train.csv")
    _fails(capsys, _args(setup, tmp_path / "run", "--batch-size", "7"), "6 training keyframes are fewer than the "
           "batch size 7", "--batch-size 6")


def test_num_classes_contradicting_the_label_map(setup, tmp_path, capsys):
    config = write_config(tmp_path / "five.yaml", num_classes=5)
    setup["config"] = config
    _fails(capsys, _args(setup, tmp_path / "run"), "five.yaml", "= 5 contradicts label map", "3 classes")


def test_weights_of_another_architecture(setup, tmp_path, capsys):
    wide = build_training_model(ModelConfig(**dict(TINY_MODEL, width_per_group=16), num_classes=80), seed=1)
    torch.save({"model_state": wide.state_dict(), "epoch": 3}, tmp_path / "wide.pyth")
    _fails(capsys, _args(setup, tmp_path / "run", "--weights", str(tmp_path / "wide.pyth")), "wide.pyth",
           "another architecture")
    (tmp_path / "junk.pyth").write_bytes(b"not a checkpoint")
    _fails(capsys, _args(setup, tmp_path / "run", "--weights", str(tmp_path / "junk.pyth")), "junk.pyth")


def test_an_out_folder_of_another_run_or_of_something_else_is_refused(setup, tmp_path, capsys):
    assert main(_args(setup, tmp_path / "run")) == 0
    capsys.readouterr()
    _fails(capsys, _args(setup, tmp_path / "run", "--lr", "0.5"), f"--out {tmp_path / 'run'} holds another run",
           "config: train.solver.base_lr: 0.001 -> 0.5")
    _fails(capsys, _args(setup, tmp_path / "run", "--full-resolution-frames"),
           "config: train.augmentation.full_resolution_frames: False -> True")
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "notes.txt").write_text("mine")
    _fails(capsys, _args(setup, tmp_path / "stuff"), "not an ava-train run")
    # the same command again finds the run complete and changes nothing
    before = (tmp_path / "run" / "checkpoints" / "checkpoint_epoch_00001.pyth").read_bytes()
    assert main(_args(setup, tmp_path / "run")) == 0
    assert (tmp_path / "run" / "checkpoints" / "checkpoint_epoch_00001.pyth").read_bytes() == before


def test_a_video_that_does_not_decode_and_a_keyframe_past_the_end(setup, tmp_path, capsys):
    """Both found from the headers before the frame pass: one line naming the file (or the annotation row)."""
    with open(setup["annotations"], "a") as f:
        f.write("clip_b,60,0.05,0.1,0.45,0.9,11,0\n")  # the videos are 4 s long
    _fails(capsys, _args(setup, tmp_path / "run"), "train.csv:", "clip_b")
    (setup["videos"] / "clip_a.mkv").write_bytes(b"\x00" * 1000)
    _fails(capsys, _args(setup, tmp_path / "run"), "clip_a.mkv")
    assert not (tmp_path / "run").exists()


def test_missing_input_files(setup, tmp_path, capsys):
    setup["annotations"] = tmp_path / "missing.csv"
    _fails(capsys, _args(setup, tmp_path / "run"), "missing.csv")
    setup["annotations"] = tmp_path / "train.csv"
    _fails(capsys, _args(setup, tmp_path / "run", "--weights", str(tmp_path / "nope.pyth")), "nope.pyth")
    _fails(capsys, _args(setup, tmp_path / "run", "--val-annotations", str(tmp_path / "val.csv")), "val.csv")


def test_usage_errors(setup, tmp_path, capsys):
    _fails(capsys, _args(setup, tmp_path / "run", "--epochs", "0"), "--epochs")
    _fails(capsys, ["--config", str(setup["config"])], "required")
    _fails(capsys, _args(setup, tmp_path / "run", "--device", "tpu"), "--device")
    _fails(capsys, _args(setup, tmp_path / "run", "--head-views", "0"), "--head-views")
    _fails(capsys, _args(setup, tmp_path / "run", "--head-views", "2"), "--head-views 2: augmented views are cached "
           "for --head-only")
    assert ANNOTATIONS  # the fixture's rows are what the cases above append to


def test_every_pyslowfast_ava_yaml_gives_training_settings():
    from pathlib import Path

    configs = sorted((Path(__file__).parent / "data" / "pyslowfast_configs").rglob("*.yaml"))
    assert len(configs) >= 7
    for path in configs:
        settings = load_train_settings(path)
        assert settings.solver.weight_decay == 1e-7 and settings.zero_init_final_bn, path


def test_packaged_configs_carry_pyslowfasts_ava_training_recipe():
    from ava_pipeline.config import packaged_config_names

    for name in packaged_config_names():
        settings = load_train_settings(name)
        assert (settings.batch_size, settings.solver.max_epoch, settings.solver.lr_policy) == (
            64, 20, "steps_with_relative_lrs"), name
        assert settings.solver.steps == (0, 10, 15, 20) and settings.solver.weight_decay == 1e-7, name


def test_full_resolution_frames_is_a_setting_the_flag_and_the_file_both_set(setup, tmp_path):
    settings = load_train_settings(setup["config"])
    assert not settings.augmentation.full_resolution_frames
    assert with_overrides(settings, full_resolution_frames=True).augmentation.full_resolution_frames

    def stored_short_sides(run):
        return sorted({json.loads(entry.read_text())["key"]["settings"]["short_side"] or 0
                       for entry in (run / "frames").glob("*/index.json")})

    assert main(_args(setup, tmp_path / "compact", "--epochs", "1")) == 0
    assert main(_args(setup, tmp_path / "full", "--epochs", "1", "--full-resolution-frames")) == 0
    jitter_max = settings.augmentation.train_jitter_scales[1]
    assert stored_short_sides(tmp_path / "compact") == [jitter_max] and stored_short_sides(tmp_path / "full") == [0]
    effective = yaml.safe_load((tmp_path / "full" / "config.yaml").read_text())
    assert effective["train"]["augmentation"]["full_resolution_frames"] is True

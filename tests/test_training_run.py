"""End-to-end runs of ava-train on tiny synthetic data: the loop learns, checkpoints have PySlowFast's layout, a
subset label map trained from an 80-class model feeds ava-detect and ava-eval with the map's ids, and --weights
initialisations (Kinetics layout) are reported."""
import csv
import json

import pytest
import torch
import yaml

from tests import training_fixtures
from ava_pipeline.api import load_action_model
from ava_pipeline.cli.detect import main as detect_main
from ava_pipeline.cli.evaluate import main as eval_main
from ava_pipeline.config import ModelConfig, load_config
from ava_pipeline.training import train
from ava_pipeline.training.init import build_training_model, load_initial_weights
from ava_pipeline.training.metrics import read_records
from tests.training_fixtures import SUBSET, TINY_MODEL, write_config, write_dataset


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_tiny_dataset_overfits_to_training_map_1(tmp_path, monkeypatch):
    monkeypatch.setitem(training_fixtures.TINY_MODEL, "dropout_rate", 0.0)
    data = write_dataset(tmp_path)
    config = write_config(tmp_path / "tiny.yaml", num_classes=3, label_map=str(data["labelmap"]), train={
        "eval_period": 100, "checkpoint_period": 10,
        "solver": {"base_lr": 0.03, "lr_policy": "cosine", "max_epoch": 20, "warmup_epochs": 0.0}})
    lines = []
    result = train(config, videos=data["videos"], annotations=data["annotations"], out=tmp_path / "run",
                   val_annotations=data["annotations"], augment=False, quiet=True, say=lines.append)
    assert result.last_eval["mAP"] > 0.99, result.last_eval
    records = read_records(result.metrics)
    epochs = [r for r in records if r["type"] == "epoch"]
    assert len(epochs) == 20 and all(r["iterations"] == 3 for r in epochs)  # 6 keyframes, batch 2
    assert epochs[-1]["loss"] < 0.5 * epochs[0]["loss"]
    assert [r["epoch"] for r in records if r["type"] == "eval"] == [20]  # eval_period 100: the last epoch only
    steps = [r for r in records if r["type"] == "iteration"]
    assert [r["step"] for r in steps] == list(range(1, 61))
    assert all(r["data_s"] >= 0 and r["compute_s"] > 0 and isinstance(r["loss"], float) for r in steps)
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == [
        "checkpoint_epoch_00010.pyth", "checkpoint_epoch_00020.pyth"]
    assert (tmp_path / "run" / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert any("val frame-mAP@0.5 100.00%" in line for line in lines)


def test_checkpoints_have_pyslowfasts_layout(tmp_path):
    data = write_dataset(tmp_path)
    config = write_config(tmp_path / "tiny.yaml", num_classes=3, label_map=str(data["labelmap"]),
                          train={"solver": {"base_lr": 0.001, "max_epoch": 2}})
    result = train(config, videos=data["videos"], annotations=data["annotations"], out=tmp_path / "run",
                   quiet=True, say=lambda line: None)
    first = torch.load(tmp_path / "run" / "checkpoints" / "checkpoint_epoch_00001.pyth", weights_only=True)
    last = torch.load(result.checkpoint, weights_only=True)
    assert result.checkpoint.name == "checkpoint_epoch_00002.pyth"
    assert (first["epoch"], last["epoch"]) == (0, 1)  # file N stores epoch N-1, as PySlowFast
    assert set(last) == {"epoch", "model_state", "optimizer_state", "cfg", "rng_state"}
    model = build_training_model(ModelConfig(**TINY_MODEL, num_classes=3), seed=0)
    assert list(last["model_state"]) == list(model.state_dict())  # PySlowFast's names, no "module." prefix
    groups = last["optimizer_state"]["param_groups"]
    assert [(g["weight_decay"], g["layer_decay"], g["nesterov"]) for g in groups] == [(0.0, 1.0, True),
                                                                                     (1e-4, 1.0, True)]
    assert len(last["optimizer_state"]["state"]) == sum(len(g["params"]) for g in groups)  # momentum buffers
    cfg = yaml.safe_load(last["cfg"])
    assert cfg["model"]["num_classes"] == 3 and cfg["train"]["solver"]["max_epoch"] == 2
    assert last["cfg"] == (tmp_path / "run" / "config.yaml").read_text()
    # RUN/config.yaml is an inference config: the model loads with the checkpoint and knows its label map
    loaded = load_action_model(tmp_path / "run" / "config.yaml", weights=result.checkpoint)
    assert loaded.config.model.num_classes == 3
    assert torch.equal(loaded.state_dict()["head.projection.weight"], last["model_state"]["head.projection.weight"])


def _ava_checkpoint(path, num_classes=80, seed=7, **extra):
    """A PySlowFast-style .pyth of the tiny model with a ``num_classes`` head (seeded random weights)."""
    model = build_training_model(ModelConfig(**TINY_MODEL, num_classes=num_classes), seed=seed)
    torch.save({"model_state": model.state_dict(), "epoch": 9, **extra}, path)
    return model.state_dict()


def test_subset_label_map_from_an_80_class_model_feeds_ava_detect_and_ava_eval(tmp_path):
    data = write_dataset(tmp_path)
    state = _ava_checkpoint(tmp_path / "ava80.pyth")
    config = write_config(tmp_path / "tiny.yaml", num_classes=80, train={"solver": {"base_lr": 0.001, "max_epoch": 1}})
    lines = []
    result = train(config, videos=data["videos"], annotations=data["annotations"], out=tmp_path / "run",
                   labelmap=data["labelmap"], weights=tmp_path / "ava80.pyth", quiet=True, say=lines.append)
    report = "\n".join(lines)
    assert "head.projection: rows of the 3 label-map actions kept" in report and "ids 11, 12, 14" in report
    start = next(r for r in read_records(result.metrics) if r["type"] == "start")
    assert start["init"]["kept_head_rows"] == [11, 12, 14]
    rows = torch.tensor([10, 11, 13])
    initial = load_initial_weights(build_training_model(ModelConfig(**TINY_MODEL, num_classes=3), seed=0),
                                   tmp_path / "ava80.pyth", SUBSET)
    assert initial.kept_rows == (11, 12, 14)
    trained = torch.load(result.checkpoint, weights_only=True)["model_state"]["head.projection.weight"]
    assert trained.shape == (3, state["head.projection.weight"].shape[1])
    assert torch.allclose(trained, state["head.projection.weight"][rows], atol=1e-2)  # one small-LR epoch later
    assert load_config(result.config).label_map == str(tmp_path / "run" / "labelmap.pbtxt")

    boxes = tmp_path / "boxes.csv"
    boxes.write_text("clip_a,1,0.05,0.1,0.45,0.9,,0.95\nclip_a,2,0.55,0.1,0.95,0.9,,0.9\n", encoding="utf-8")
    detections = tmp_path / "detections.csv"
    status = detect_main([str(data["videos"] / "clip_a.mkv"), "--config", str(result.config), "--weights",
                          str(result.checkpoint), "--boxes", str(boxes), "--out", str(detections), "--quiet"])
    assert status == 0
    with open(detections, newline="") as f:
        written = list(csv.reader(f))
    assert len(written) == 2 * 3 and {int(row[6]) for row in written} == {11, 12, 14}
    report_json = tmp_path / "eval.json"
    assert eval_main(["--gt", str(data["annotations"]), "--det", str(detections), "--labelmap",
                      str(tmp_path / "run" / "labelmap.pbtxt"), "--json", str(report_json)]) == 0
    scored = json.loads(report_json.read_text())
    assert sorted(k for k in scored if "PerformanceByCategory" in k) == sorted(
        f"PascalBoxes_PerformanceByCategory/AP@0.5IOU/{name}" for name in SUBSET.values())


def test_kinetics_checkpoint_initialises_the_backbone_and_reports_the_skipped_classifier(tmp_path):
    kinetics = build_training_model(ModelConfig(**TINY_MODEL, num_classes=400), seed=5).state_dict()
    kinetics["head.projection.weight"] = torch.randn(400, kinetics["head.projection.weight"].shape[1])
    torch.save({"model_state": kinetics, "epoch": 196, "optimizer_state": {"state": {}, "param_groups": []},
                "cfg": "TRAIN: {DATASET: kinetics}"}, tmp_path / "kinetics.pyth")
    model = build_training_model(ModelConfig(**TINY_MODEL, num_classes=3), seed=0)
    random_head = model.head.projection.weight.detach().clone()
    report = load_initial_weights(model, tmp_path / "kinetics.pyth", SUBSET)
    state = model.state_dict()
    backbone = [k for k in kinetics if not k.startswith("head.")]
    assert all(torch.equal(state[k], kinetics[k]) for k in backbone)
    assert torch.equal(model.head.projection.weight, random_head)
    assert report.loaded == len(backbone)
    assert report.head.startswith("re-initialised (file [400, ") and "model [3, " in report.head
    text = "\n".join(report.lines())
    assert "weights only, training starts at epoch 1 with a fresh optimizer" in text
    assert "loaded: %d entries" % len(backbone) in text


def test_same_size_head_is_loaded_and_another_class_count_is_reinitialised(tmp_path):
    _ava_checkpoint(tmp_path / "three.pyth", num_classes=3, seed=2)
    model = build_training_model(ModelConfig(**TINY_MODEL, num_classes=3), seed=0)
    assert load_initial_weights(model, tmp_path / "three.pyth", SUBSET).head == "loaded (3 classes)"
    own = {1: "jump", 2: "wave", 3: "clap"}  # one's own ids: not AVA's actions, so no rows are taken
    _ava_checkpoint(tmp_path / "ava80.pyth")
    report = load_initial_weights(build_training_model(ModelConfig(**TINY_MODEL, num_classes=3), seed=0),
                                  tmp_path / "ava80.pyth", own)
    assert report.head.startswith("re-initialised") and report.kept_rows == ()


def test_a_pyslowfast_yaml_trains_unchanged_on_a_cpu(tmp_path):
    """Upper-case PySlowFast keys, an 8-GPU machine in the file, WEIGHT_DECAY 1e-4 as yacs reads it."""
    data = write_dataset(tmp_path)
    config = tmp_path / "SLOWFAST_TINY.yaml"
    config.write_text(
        "TRAIN: {ENABLE: True, DATASET: ava, BATCH_SIZE: 2, EVAL_PERIOD: 5, CHECKPOINT_PERIOD: 1, AUTO_RESUME: True,"
        " CHECKPOINT_TYPE: caffe2}\n"
        "DATA: {NUM_FRAMES: 8, SAMPLING_RATE: 2, TRAIN_JITTER_SCALES: [48, 56], TRAIN_CROP_SIZE: 48,"
        " TEST_CROP_SIZE: 48, INPUT_CHANNEL_NUM: [3, 3]}\n"
        "DETECTION: {ENABLE: True, ALIGNED: True}\n"
        "SLOWFAST: {ALPHA: 4, BETA_INV: 4, FUSION_CONV_CHANNEL_RATIO: 2, FUSION_KERNEL_SZ: 5}\n"
        "RESNET: {ZERO_INIT_FINAL_BN: True, WIDTH_PER_GROUP: 8, DEPTH: 50, TRANS_FUNC: bottleneck_transform}\n"
        "SOLVER: {BASE_LR: 0.001, LR_POLICY: steps_with_relative_lrs, STEPS: [0, 1], LRS: [1, 0.1], MAX_EPOCH: 1,"
        " WEIGHT_DECAY: 1e-4, WARMUP_EPOCHS: 0.5, WARMUP_START_LR: 0.0001, OPTIMIZING_METHOD: sgd}\n"
        "MODEL: {NUM_CLASSES: 80, ARCH: slowfast, MODEL_NAME: SlowFast, LOSS_FUNC: bce, DROPOUT_RATE: 0.5,"
        " HEAD_ACT: sigmoid}\n"
        "NUM_GPUS: 8\nNUM_SHARDS: 1\nRNG_SEED: 0\nOUTPUT_DIR: .\n", encoding="utf-8")
    result = train(config, videos=data["videos"], annotations=data["annotations"], out=tmp_path / "run",
                   labelmap=data["labelmap"], quiet=True, say=lambda line: None)
    steps = [r for r in read_records(result.metrics) if r["type"] == "iteration"]
    assert [round(r["lr"], 12) for r in steps] == [0.0001, 0.0007, 0.001]  # warmup to epoch 0.5, then the step
    cfg = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert cfg["model"]["num_classes"] == 3 and cfg["train"]["solver"]["weight_decay"] == 1e-4
    assert cfg["train"]["zero_init_final_bn"] is True and cfg["train"]["batch_size"] == 2
    assert load_config(result.config).model.width_per_group == 8

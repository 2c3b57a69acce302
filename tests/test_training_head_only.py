"""ava-train --head-only: the backbone frozen, pooled RoI features cached once, only the head trains; a tiny
dataset of one's own classes (ids 1..3) overfits to training-set mAP 1.0 in seconds and the checkpoint is a full
model that ava-detect scores exactly as the head-only training scored it."""
import csv

import pytest
import torch

from tests import training_fixtures
from ava_pipeline.cli.detect import main as detect_main
from ava_pipeline.errors import ConfigError
from ava_pipeline.labels import write_label_map
from ava_pipeline.training import train
from ava_pipeline.training.head_only import FeatureSet, HeadOnlyModel, feature_collate
from ava_pipeline.training.metrics import read_records
from tests.training_fixtures import write_config, write_dataset

# one's own classes 1..3 (wave, point, clap) on the tiny movies; the two movies show the same frames, so a box's
# labels follow its coordinates (the frozen random backbone sees the same pixels)
LEFT, RIGHT, CENTRE = ("0.05", "0.1", "0.45", "0.9"), ("0.55", "0.1", "0.95", "0.9"), ("0.3", "0.1", "0.7", "0.9")
SMALL, TALL = ("0.1", "0.2", "0.5", "0.8"), ("0.6", "0.2", "0.9", "0.8")
LABELS = {LEFT: [1], RIGHT: [2, 3], CENTRE: [2], SMALL: [3], TALL: [1, 3]}
OWN_CLASSES = {key: [(*box, LABELS[box]) for box in boxes] for key, boxes in {
    ("clip_a", 1): [LEFT, RIGHT], ("clip_a", 2): [LEFT, CENTRE], ("clip_a", 3): [SMALL],
    ("clip_b", 1): [CENTRE], ("clip_b", 2): [LEFT, TALL], ("clip_b", 3): [SMALL, RIGHT]}.items()}
EPOCHS = 200


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def own_dataset(tmp_path, monkeypatch):
    monkeypatch.setitem(training_fixtures.TINY_MODEL, "dropout_rate", 0.0)
    data = write_dataset(tmp_path, OWN_CLASSES)
    write_label_map({1: "wave", 2: "point", 3: "clap"}, tmp_path / "own.pbtxt")
    data["labelmap"] = tmp_path / "own.pbtxt"
    # the random backbone's pooled features are large (tens): a small learning rate
    config = write_config(tmp_path / "tiny.yaml", num_classes=3, label_map=str(data["labelmap"]), train={
        "eval_period": EPOCHS, "checkpoint_period": EPOCHS // 2,
        "solver": {"base_lr": 3e-5, "lr_policy": "cosine", "max_epoch": EPOCHS, "warmup_epochs": 0.0}})
    return data, config


def _train(data, config, out, **extra):
    lines = []
    result = train(config, videos=data["videos"], annotations=data["annotations"], out=out,
                   labelmap=data["labelmap"], val_annotations=data["annotations"], head_only=True, quiet=True,
                   say=lines.append, **extra)
    return result, lines


def test_head_only_overfits_own_classes_and_writes_a_full_checkpoint(own_dataset, tmp_path):
    data, config = own_dataset
    out = tmp_path / "run"
    result, lines = _train(data, config, out)
    assert result.last_eval["mAP"] == 1.0, result.last_eval
    assert any("features of 10 boxes in 6 keyframes extracted" in line for line in lines)
    assert (out / "head_features" / "train.pt").is_file() and (out / "head_features" / "val.pt").is_file()
    epochs = [r for r in read_records(result.metrics) if r["type"] == "epoch"]
    assert len(epochs) == EPOCHS and epochs[-1]["loss"] < 0.5 * epochs[0]["loss"]

    # a full checkpoint: the backbone as initialised (frozen), the head trained, the optimizer over the head only
    middle = torch.load(out / "checkpoints" / "checkpoint_epoch_00100.pyth", weights_only=True)
    last = torch.load(result.checkpoint, weights_only=True)
    for key, value in last["model_state"].items():
        same = torch.equal(value, middle["model_state"][key])
        assert same != key.startswith("head.projection."), key
    assert len(last["optimizer_state"]["state"]) == 2

    # ava-detect loads it like any checkpoint and scores the training boxes as the head-only evaluation did
    evaluated = {}
    with open(result.last_eval["detections"], newline="") as f:
        for row in csv.reader(f):
            evaluated[(row[0], row[1], tuple(float(v) for v in row[2:6]), int(row[6]))] = float(row[7])
    boxes = tmp_path / "boxes.csv"
    boxes.write_text("".join(f"{video},{second},{x1},{y1},{x2},{y2},,1.0\n"
                             for (video, second), persons in OWN_CLASSES.items() if video == "clip_a"
                             for x1, y1, x2, y2, _ in persons), encoding="utf-8")
    detections = tmp_path / "detections.csv"
    assert detect_main([str(data["videos"] / "clip_a.mkv"), "--config", str(result.config), "--weights",
                        str(result.checkpoint), "--boxes", str(boxes), "--out", str(detections), "--quiet"]) == 0
    with open(detections, newline="") as f:
        detected = list(csv.reader(f))
    assert len(detected) == 5 * 3 and {int(row[6]) for row in detected} == {1, 2, 3}
    for row in detected:
        key = (row[0], row[1], tuple(float(v) for v in row[2:6]), int(row[6]))
        assert float(row[7]) == pytest.approx(evaluated[key], abs=1e-3), key


def test_head_only_rerun_reuses_the_cached_features(own_dataset, tmp_path):
    data, config = own_dataset
    out = tmp_path / "run"
    _train(data, config, out, epochs=2)
    # the same command again (a resume: nothing left to train) reads the cache instead of the backbone
    result, lines = _train(data, config, out, epochs=2)
    assert any("features of 10 boxes reused" in line for line in lines), lines
    assert result.checkpoint.name == "checkpoint_epoch_00002.pyth"


def test_augmented_views_are_cached_and_each_epoch_trains_on_one_of_them(own_dataset, tmp_path):
    data, config = own_dataset
    _train(data, config, tmp_path / "plain", epochs=2)
    result, lines = _train(data, config, tmp_path / "views", epochs=2, head_views=3)
    assert any("features of 10 boxes in 6 keyframes extracted" in line and "(3 view(s)" in line for line in lines)
    one = torch.load(tmp_path / "plain" / "head_features" / "train.pt", weights_only=True)["features"]
    stored = torch.load(tmp_path / "views" / "head_features" / "train.pt", weights_only=True)
    views = stored["features"]
    assert one.shape[0] == 1 and views.shape == (3, 10, one.shape[2])
    assert torch.equal(views[0], one[0])  # view 0 is the test-time transform's
    assert not torch.equal(views[1], views[0]) and not torch.equal(views[2], views[1])  # jitter, crop, flip
    val = torch.load(tmp_path / "views" / "head_features" / "val.pt", weights_only=True)["features"]
    assert val.shape[0] == 1  # evaluation sees the test-time view only

    features = FeatureSet(views, stored["labels"], stored["counts"], [tuple(key) for key in stored["keys"]], seed=1)
    drawn = [[features.view(epoch, index) for index in range(len(features))] for epoch in range(6)]
    assert {view for row in drawn for view in row} == {0, 1, 2} and drawn[0] != drawn[1]
    assert drawn == [[features.view(epoch, index) for index in range(len(features))] for epoch in range(6)]
    first, last = features.offsets[4], features.offsets[5]
    assert torch.equal(features[(3, 4)]["inputs"][0], views[drawn[3][4], first:last])

    _, again = _train(data, config, tmp_path / "views", epochs=2, head_views=3)
    assert any("features of 10 boxes reused" in line for line in again), again
    with pytest.raises(ConfigError, match="--head-views 2: augmented views are cached for --head-only"):
        _train(data, config, tmp_path / "no_augment", epochs=2, head_views=2, augment=False)


def test_head_only_under_torchrun_is_refused(own_dataset, tmp_path, monkeypatch):
    data, config = own_dataset
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="--head-only trains in one process"):
        _train(data, config, tmp_path / "run")


def test_feature_batches_concatenate_boxes_and_the_head_applies_dropout_projection_sigmoid():
    features = torch.arange(12.0).reshape(4, 3)
    labels = torch.eye(4, 2)
    dataset = FeatureSet(features[None], labels, torch.tensor([1, 3]), [("a", 1), ("b", 2)])  # one view
    batch = feature_collate([dataset[1], dataset[0]])
    assert torch.equal(batch.inputs[0], torch.cat([features[1:], features[:1]]))
    assert batch.boxes[:, 0].tolist() == [0.0, 0.0, 0.0, 1.0] and batch.keys == [("b", 2), ("a", 1)]
    head = torch.nn.Module()
    head.dropout, head.projection, head.act = torch.nn.Dropout(0.0), torch.nn.Linear(3, 2), torch.nn.Sigmoid()
    probs = HeadOnlyModel(head)(batch.inputs, batch.boxes)
    assert torch.allclose(probs, torch.sigmoid(head.projection(batch.inputs[0])))

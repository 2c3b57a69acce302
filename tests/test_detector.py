"""Person detectors: the output contract, torchvision weight loading against torchvision's own COCO models,
the AVA box-file reader on good and bad files, and the builder's errors."""
import hashlib
import warnings
from fractions import Fraction

import numpy as np
import pytest
import torch
import torchvision

from ava_pipeline.detector import (DETECTRON2_INSTALL, PersonBoxes, build_detector, build_torchvision_model,
                                   fetch_torchvision_weights, read_person_boxes, select_persons)
from ava_pipeline.errors import ConfigError, DependencyMissingError, InputFormatError, WeightsError
from tests.detector_fixtures import SMALL, keyframe_images, random_torchvision_model

try:
    import detectron2  # noqa: F401
    HAVE_DETECTRON2 = True
except ImportError:
    HAVE_DETECTRON2 = False

def contract_holds(persons: PersonBoxes, score_thresh: float) -> None:
    assert persons.boxes.dtype == np.float32 and persons.boxes.shape == (len(persons), 4)
    assert persons.scores.dtype == np.float32 and persons.scores.shape == (len(persons),)
    assert ((persons.boxes >= 0) & (persons.boxes <= 1)).all()
    assert (persons.boxes[:, 2] >= persons.boxes[:, 0]).all() and (persons.boxes[:, 3] >= persons.boxes[:, 1]).all()
    assert (persons.scores >= np.float32(score_thresh)).all()
    assert (np.diff(persons.scores) <= 0).all()


def rows_in_order(boxes, scores):
    """(K, 5) rows ``score, x1, y1, x2, y2`` sorted: equal scores come in no defined order from NMS."""
    rows = np.column_stack([scores, boxes]).astype(np.float64)
    return rows[np.lexsort(rows.T[::-1])]


# ------------------------------------------------------------------------------------------- torchvision

@pytest.mark.real_size
@pytest.mark.parametrize("fast", [False, True], ids=["eager", "fast"])
@pytest.mark.parametrize("name, frozen_batch_norm", [("fasterrcnn_mobilenet_v3_large_fpn", True),
                                                      ("fasterrcnn_resnet50_fpn", True)])
def test_loaded_state_dict_gives_the_persons_of_torchvisions_own_coco_model(name, frozen_batch_norm, fast, tmp_path,
                                                                          monkeypatch):
    trained = random_torchvision_model(name)
    weights = tmp_path / "detector.pth"
    torch.save(trained.state_dict(), weights)

    # Reference: torchvision builds its COCO model (frozen batch norms, v1 with eps 0) from the file found in
    # its hub cache under the official name; the COCO file has no batch-norm counters where norms are frozen.
    official = torchvision.models.get_model_weights(name).DEFAULT
    cache = tmp_path / "torch_home" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    state = {k: v for k, v in trained.state_dict().items()
             if not (frozen_batch_norm and k.endswith("num_batches_tracked"))}
    torch.save(state, cache / official.url.rsplit("/", 1)[-1])
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    reference = torchvision.models.get_model_builder(name)(weights=official, box_score_thresh=0.0,
                                                           box_detections_per_img=100_000, **SMALL).eval()
    images = keyframe_images()
    with torch.inference_mode():
        outputs = reference([torch.from_numpy(image).permute(2, 0, 1).float() / 255 for image in images])
    person_scores = np.concatenate([o["scores"][o["labels"] == 1].numpy() for o in outputs])
    middle = np.sort(person_scores)[len(person_scores) // 2 - 1:][:2]
    score_thresh = float(middle.mean())  # half the persons pass; none is within rounding of the threshold
    assert middle[1] - middle[0] > 1e-4

    detector = build_detector("torchvision", model=name, weights=str(weights), score_thresh=score_thresh,
                              max_detections=10_000, input_min_size=SMALL["min_size"], input_max_size=SMALL["max_size"],
                              fast=fast)
    found = detector.detect(images, video_id="ignored", timestamps=[0, 1])
    assert len(found) == 2 and sum(len(p) for p in found) > 0
    for image, output, persons in zip(images, outputs, found):
        contract_holds(persons, score_thresh)
        assert persons.original is None
        keep = (output["labels"] == 1) & (output["scores"] >= score_thresh)
        size = np.array([image.shape[1], image.shape[0]] * 2, np.float32)
        expected = rows_in_order(output["boxes"][keep].numpy() / size, output["scores"][keep].numpy())
        found_rows = rows_in_order(persons.boxes, persons.scores)
        # eager: torchvision's own numbers; fast: the same within float32 rounding (the bar: boxes
        # within 0.05 px, scores within 1e-4)
        assert found_rows.shape == expected.shape
        np.testing.assert_allclose(found_rows[:, 0], expected[:, 0], rtol=0, atol=1e-4 if fast else 1e-6)
        np.testing.assert_allclose(found_rows[:, 1:] * size, expected[:, 1:] * size, rtol=0,
                                   atol=0.05 if fast else 1e-4)
    fingerprint = detector.fingerprint()
    assert fingerprint["model"] == name and fingerprint["score_thresh"] == score_thresh
    assert fingerprint["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()


@pytest.mark.real_size
def test_min_box_size_and_max_detections_reach_the_torchvision_detector(tmp_path):
    name = "fasterrcnn_mobilenet_v3_large_fpn"
    weights = tmp_path / "detector.pth"
    torch.save({"model": random_torchvision_model(name).state_dict(), "epoch": 3}, weights)  # training checkpoint
    options = dict(model=name, weights=weights, score_thresh=0.01, input_min_size=64, input_max_size=96)
    image = keyframe_images()[:1]
    image[0].flags.writeable = False  # as the decoder's keyframe images are
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warns once per process about tensors over read-only arrays
        everyone = build_detector("torchvision", **options).detect(image)[0]
    assert len(everyone) > 3
    mirrored_bgr = build_detector("torchvision", **options).detect([image[0][:, :, ::-1]])[0]  # a negative stride
    assert len(mirrored_bgr) > 0
    best_three = build_detector("torchvision", max_detections=3, **options).detect(image)[0]
    np.testing.assert_array_equal(best_three.boxes, everyone.boxes[:3])
    sides = np.minimum(everyone.boxes[:, 2] - everyone.boxes[:, 0], everyone.boxes[:, 3] - everyone.boxes[:, 1])
    min_size = float(np.median(sides[:, None] * [64, 48]))  # pixels: most boxes are not square
    large = build_detector("torchvision", min_box_size=min_size, **options).detect(image)[0]
    pixels = large.boxes * [64, 48, 64, 48]
    assert 0 < len(large) < len(everyone)
    assert ((pixels[:, 2] - pixels[:, 0] >= min_size - 1e-3) & (pixels[:, 3] - pixels[:, 1] >= min_size - 1e-3)).all()


def test_select_persons_keeps_persons_above_threshold_best_first_normalized():
    boxes = np.array([[0, 0, 10, 20], [5, 5, 65, 45], [1, 1, 3, 3], [10, 10, 30, 30], [0, 0, 64, 48]], np.float32)
    scores = np.array([0.7, 0.95, 0.99, 0.85, 0.9], np.float32)
    labels = np.array([1, 1, 1, 1, 3])
    persons = select_persons(boxes, scores, labels, person_label=1, image_size=(64, 48), score_thresh=0.8,
                             min_box_size=5, max_detections=10)
    np.testing.assert_array_equal(persons.scores, np.array([0.95, 0.85], np.float32))
    np.testing.assert_allclose(persons.boxes, [[5 / 64, 5 / 48, 1.0, 45 / 48], [10 / 64, 10 / 48, 30 / 64, 30 / 48]])
    at_threshold = select_persons(boxes, scores, labels, person_label=1, image_size=(64, 48), score_thresh=0.85,
                                  min_box_size=0, max_detections=1)
    assert at_threshold.scores.tolist() == [np.float32(0.99)]


def test_non_image_input_is_refused(tmp_path):
    weights = tmp_path / "detector.pth"
    torch.save(random_torchvision_model("fasterrcnn_mobilenet_v3_large_fpn").state_dict(), weights)
    detector = build_detector(model="fasterrcnn_mobilenet_v3_large_fpn", weights=weights)
    with pytest.raises(ValueError, match="image 0: expected a uint8"):
        detector.detect([np.zeros((8, 8, 3), np.float32)])
    assert detector.detect([]) == []


def test_unfit_weight_files_are_named_with_what_is_wrong(tmp_path):
    name = "fasterrcnn_mobilenet_v3_large_fpn"
    state = build_torchvision_model(name).state_dict()
    del state["roi_heads.box_head.fc6.weight"]
    state["roi_heads.box_predictor.cls_score.weight"] = torch.zeros(2, 1024)
    state["extra.weight"] = torch.zeros(1)
    unfit = tmp_path / "unfit.pth"
    torch.save(state, unfit)
    with pytest.raises(WeightsError, match=r"unfit.pth: weights do not fit fasterrcnn_mobilenet_v3_large_fpn: 1 "
                                           r"model entries missing from the checkpoint: roi_heads.box_head.fc6.weight\. "
                                           r"1 shape mismatches: .*cls_score.weight checkpoint \[2, 1024\] vs model "
                                           r"\[91, 1024\]\. 1 checkpoint entries not in the model: extra.weight"):
        build_detector(model=name, weights=unfit)

    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="garbage.pth: cannot read detector weights"):
        build_detector(model=name, weights=garbage)
    pickled = tmp_path / "pickled.pth"
    torch.save({"model": state, "config": Fraction(1, 3)}, pickled)
    with pytest.raises(WeightsError, match=r"pickled.pth: refused to load: .*\(unsupported global fractions.Fraction\).*torch.save\(model.state_dict"):
        build_detector(model=name, weights=pickled)
    with pytest.raises(WeightsError, match="absent.pth: detector weights file not found"):
        build_detector(model=name, weights=tmp_path / "absent.pth")


def test_default_weights_are_hash_checked_in_the_cache(tmp_path, monkeypatch):
    name = "fasterrcnn_mobilenet_v3_large_fpn"
    url = torchvision.models.get_model_weights(name).DEFAULT.url
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    filename = url.rsplit("/", 1)[-1]
    torch.save(build_torchvision_model(name).state_dict(), cache / filename)  # right name, wrong content
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(WeightsError, match=f"{filename}: sha256 does not start with {filename[-12:-4]}.*delete it"):
        build_detector(model=name)


def test_failed_download_says_how_to_pass_the_file(tmp_path):
    missing = (tmp_path / "nowhere" / "fasterrcnn-0123abcd.pth").as_uri()
    with pytest.raises(WeightsError, match=f"cannot download detector weights {missing}.*--detector-weights FILE"):
        fetch_torchvision_weights(missing, tmp_path / "cache", progress=False)
    assert not list((tmp_path / "cache").iterdir())  # nothing half-written left behind


# -------------------------------------------------------------------------------------------- precomputed

GOOD_BOXES = """video_id,timestamp,x1,y1,x2,y2,action_id,score
-5KQ66BBWC4,0902,0.077,0.151,0.283,0.811,,0.98
-5KQ66BBWC4,0902,0.332,0.194,0.481,0.891,,0.81
-5KQ66BBWC4,0902,0.5,0.5,0.6,0.6,,0.79

-5KQ66BBWC4,0903,0.077,0.151,0.283,0.811,12,0.62
-5KQ66BBWC4,0903,0.077,0.151,0.283,0.811,80,0.93
-5KQ66BBWC4,0903,0.0770,0.151,0.283,0.811,80,0.85
-5KQ66BBWC4,0904,0.1,0.1,0.2,0.2,,0.3
 other , 902.5 , 0, 0, 1, 1
other,905,0.25,0.25,0.75,1.0,17
"""


def write(tmp_path, text, name="boxes.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_box_file_rows_are_thresholded_merged_and_kept_verbatim(tmp_path):
    path = write(tmp_path, GOOD_BOXES)
    detector = build_detector("precomputed", boxes_csv=path, score_thresh=0.8)
    assert detector.timestamps_for("-5KQ66BBWC4") == [902, 903, 904]
    assert detector.timestamps_for("other") == [Fraction(1805, 2), 905]
    assert detector.timestamps_for("absent") == []

    at_902, at_903, at_904, at_906 = detector.detect([], video_id="-5KQ66BBWC4",
                                                     timestamps=[902, Fraction(903), 904.0, 906])
    assert at_902.original == [("0.077", "0.151", "0.283", "0.811"), ("0.332", "0.194", "0.481", "0.891")]
    np.testing.assert_array_equal(at_902.boxes, np.array([[0.077, 0.151, 0.283, 0.811],
                                                          [0.332, 0.194, 0.481, 0.891]], np.float32))
    np.testing.assert_array_equal(at_902.scores, np.array([0.98, 0.81], np.float32))
    # rows of one box (identical text) merge and keep their best score; other text is another box
    assert at_903.original == [("0.077", "0.151", "0.283", "0.811"), ("0.0770", "0.151", "0.283", "0.811")]
    np.testing.assert_array_equal(at_903.scores, np.array([0.93, 0.85], np.float32))
    for empty in (at_904, at_906):
        assert len(empty) == 0 and empty.boxes.shape == (0, 4) and empty.original == []
    for persons in (at_902, at_903):
        contract_holds(persons, 0.8)

    half, whole = detector.detect(keyframe_images(), video_id="other", timestamps=["902.5", 905])
    assert half.scores.tolist() == [1.0] and half.original == [("0", "0", "1", "1")]
    assert whole.scores.tolist() == [1.0] and whole.boxes.tolist() == [[0.25, 0.25, 0.75, 1.0]]
    assert detector.detect([], video_id="absent", timestamps=[1])[0].original == []

    everything = read_person_boxes(path, score_thresh=0.0)
    assert len(everything["-5KQ66BBWC4"][Fraction(902)]) == 3 and len(everything["-5KQ66BBWC4"][904]) == 1
    fingerprint = detector.fingerprint()
    assert fingerprint["backend"] == "precomputed" and fingerprint["score_thresh"] == 0.8
    assert fingerprint["boxes_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("bad_row, message", [
    ("vid,902,0.1,0.1,0.5", "expected 6 to 8 comma-separated fields"),
    ("vid,902,0.1,0.1,0.5,0.5,,0.9,extra", "got 9"),
    (",902,0.1,0.1,0.5,0.5,,0.9", "empty video id"),
    ("vid,09:02,0.1,0.1,0.5,0.5,,0.9", "timestamp '09:02' is not a number"),
    ("vid,1/0,0.1,0.1,0.5,0.5,,0.9", "timestamp '1/0' is not a number of seconds"),
    ("vid,1e100000000,0.1,0.1,0.5,0.5,,0.9", "timestamp '1e100000000' is not a number of seconds"),
    ("vid,9.02e2,0.1,0.1,0.5,0.5,,0.9", "timestamp '9.02e2' is not a number of seconds"),
    ("vid,902,0.1,abc,0.5,0.5,,0.9", "not a number"),
    ("vid,902,12,30,250,300,,0.9", "not normalized to \\[0, 1\\] \\(pixel coordinates\\?\\)"),
    ("vid,902,0.5,0.1,0.2,0.5,,0.9", "x2 < x1 or y2 < y1"),
    ("vid,902,0.1,0.1,0.5,0.5,,high", "score 'high' is not a number"),
    ("vid,902,0.1,0.1,0.5,0.5,7,3", "score 3 is outside \\[0, 1\\]"),
    ("vid,902,0.1,0.1,0.5,0.5,,nan", "score nan is outside"),
])
def test_malformed_box_row_is_an_error_with_file_and_line(tmp_path, bad_row, message):
    path = write(tmp_path, f"vid,902,0.1,0.1,0.5,0.5,,0.9\nvid,903,0.1,0.1,0.5,0.5,,0.1\n{bad_row}\n")
    with pytest.raises(InputFormatError, match=f"boxes.csv:3: .*{message}"):
        build_detector("precomputed", boxes_csv=path)


def test_fraction_timestamps_are_read(tmp_path):
    path = write(tmp_path, "vid,1805/2,0.1,0.1,0.5,0.5\nvid,-0.5,0.1,0.1,0.5,0.5\nvid,.25,0.1,0.1,0.5,0.5\n")
    assert list(read_person_boxes(path)["vid"]) == [Fraction(1805, 2), Fraction(-1, 2), Fraction(1, 4)]


@pytest.mark.parametrize("header", ["", "video_id,timestamp,x1,y1,x2,y2,action_id,score\n"])
def test_box_file_with_a_byte_order_mark_reads_like_one_without(tmp_path, header):
    text = header + GOOD_BOXES.split("\n", 1)[1]
    plain = read_person_boxes(write(tmp_path, text), score_thresh=0.0)
    (tmp_path / "excel.csv").write_bytes(b"\xef\xbb\xbf" + text.encode())  # Excel's "CSV UTF-8"
    with_bom = read_person_boxes(tmp_path / "excel.csv", score_thresh=0.0)
    assert list(with_bom) == list(plain) == ["-5KQ66BBWC4", "other"]
    for video, times in plain.items():
        assert list(with_bom[video]) == list(times)
        for time, persons in times.items():
            assert with_bom[video][time].original == persons.original
            np.testing.assert_array_equal(with_bom[video][time].scores, persons.scores)


def test_box_file_that_is_not_text_is_an_error_naming_it(tmp_path):
    path = tmp_path / "boxes.csv"
    path.write_bytes(bytes(range(128, 256)) * 8)
    with pytest.raises(InputFormatError, match="boxes.csv: cannot be read as a UTF-8 CSV file"):
        build_detector("precomputed", boxes_csv=path)


def test_missing_box_file_is_named(tmp_path):
    with pytest.raises(InputFormatError, match="nothing.csv: box file not found"):
        build_detector("precomputed", boxes_csv=tmp_path / "nothing.csv")


# ------------------------------------------------------------------------------------------------ builder

def test_builder_refuses_conflicting_or_invalid_settings(tmp_path):
    path = write(tmp_path, "vid,902,0.1,0.1,0.5,0.5\n")
    with pytest.raises(ConfigError, match="unknown detector backend 'yolo'"):
        build_detector("yolo")
    with pytest.raises(ConfigError, match="needs a box CSV"):
        build_detector("precomputed")
    with pytest.raises(ConfigError, match="'model': 'fasterrcnn_resnet50_fpn'.*only apply to image detectors"):
        build_detector("precomputed", boxes_csv=path, model="fasterrcnn_resnet50_fpn")
    with pytest.raises(ConfigError, match="detector='torchvision'"):
        build_detector("torchvision", boxes_csv=path)
    with pytest.raises(ConfigError, match="score_thresh must be in \\[0, 1\\], got 1.5"):
        build_detector("precomputed", boxes_csv=path, score_thresh=1.5)
    with pytest.raises(ConfigError, match="max_detections must be at least 1"):
        build_detector("torchvision", max_detections=0)
    with pytest.raises(ConfigError, match="unknown torchvision detector 'fasterrcnn_r101'.*fasterrcnn_resnet50_fpn_v2"):
        build_detector("torchvision", model="fasterrcnn_r101")


# --------------------------------------------------------------------------------------------- detectron2

@pytest.mark.skipif(HAVE_DETECTRON2, reason="detectron2 is installed")
def test_detectron2_backend_without_detectron2_says_how_to_install():
    with pytest.raises(DependencyMissingError, match="needs detectron2.*" + DETECTRON2_INSTALL.replace("+", r"\+")):
        build_detector("detectron2")


@pytest.mark.skipif(not HAVE_DETECTRON2, reason="detectron2 is not installed (not on PyPI; install from source)")
def test_detectron2_detector_feeds_bgr_and_matches_the_default_predictor(tmp_path):
    from detectron2 import model_zoo
    from detectron2.config import get_cfg
    from detectron2.engine import DefaultPredictor
    from detectron2.modeling import build_model

    config = "COCO-Detection/faster_rcnn_R_50_FPN_3x"
    cfg = get_cfg()
    cfg.merge_from_file(model_zoo.get_config_file(config + ".yaml"))
    cfg.MODEL.DEVICE = "cpu"
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 64, 96
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.01
    cfg.TEST.DETECTIONS_PER_IMAGE = 100_000
    torch.manual_seed(0)
    model = build_model(cfg)
    with torch.no_grad():  # random features are ~1e3: scale the head down and favour persons, so that some appear
        model.roi_heads.box_predictor.cls_score.weight.mul_(1e-4)
        model.roi_heads.box_predictor.bbox_pred.weight.mul_(1e-4)
        model.roi_heads.box_predictor.cls_score.bias[0] += 3.0
    weights = tmp_path / "d2.pth"
    torch.save({"model": model.state_dict()}, weights)
    cfg.MODEL.WEIGHTS = str(weights)
    predictor = DefaultPredictor(cfg)  # takes BGR images

    detector = build_detector("detectron2", model=config, weights=weights, score_thresh=0.01,
                              max_detections=10_000, input_min_size=64, input_max_size=96)
    assert detector.input_format == "BGR"
    found = [detector.detect([image])[0] for image in keyframe_images()]  # the predictor takes one at a time
    assert sum(len(persons) for persons in found) > 0
    for image, persons in zip(keyframe_images(), found):
        contract_holds(persons, 0.01)
        instances = predictor(np.ascontiguousarray(image[:, :, ::-1]))["instances"]
        keep = instances.pred_classes == 0
        size = np.array([image.shape[1], image.shape[0]] * 2, np.float32)
        expected = rows_in_order(instances.pred_boxes.tensor[keep].numpy() / size, instances.scores[keep].numpy())
        np.testing.assert_allclose(rows_in_order(persons.boxes, persons.scores), expected, rtol=0, atol=1e-5)

"""ActionDetector end to end on synthetic videos with tiny models.

The parity test feeds a lossless video, precomputed boxes, a PySlowFast-format checkpoint and a PySlowFast
YAML through :class:`ActionDetector`, and compares every score with an independent computation: frames
decoded here with PyAV, PySlowFast's clip index rule, its cv2 test transform spelled out with cv2/numpy,
and one forward pass of the model per keyframe.
"""
import pickle
import threading
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import torch

from ava_pipeline.errors import ConfigError, InputFormatError, VideoDecodeError
from ava_pipeline.pipeline import ActionDetector, StageTimings
from tests.pipeline_fixtures import (save_checkpoint, textured_frames, write_boxes, write_damaged_movie,
                                     write_lossless_video, write_tiny_model)

PYSLOWFAST_CONFIGS = Path(__file__).parent / "data" / "pyslowfast_configs"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_model(tmp_path_factory.mktemp("tiny_model"))


@pytest.fixture(scope="module")
def movie(tmp_path_factory):
    """4 s lossless 80x60 video ``movie.mkv`` and its frames."""
    folder = tmp_path_factory.mktemp("movie")
    frames = textured_frames(120)
    path = folder / "movie.mkv"
    write_lossless_video(path, frames)
    return path, frames


BOX_ROWS = [("movie", 1, "0.100", "0.200", "0.600", "0.950", 0.97),
            ("movie", 1, "0.500", "0.050", "1.000", "0.700", 0.91),
            ("movie", 2, "0.300", "0.300", "0.400", "0.400", 0.20),  # below the 0.5 threshold: no person at 2 s
            ("movie", 3, "0.000", "0.000", "0.450", "1.000", 0.88)]


@pytest.fixture()
def boxes_csv(tmp_path):
    path = tmp_path / "boxes.csv"
    write_boxes(path, BOX_ROWS)
    return path


def make_detector(tiny, boxes_csv, **kwargs):
    config, weights = tiny
    return ActionDetector(config=str(config), weights=str(weights), boxes=str(boxes_csv), **kwargs)


def test_stream_skips_keyframes_without_persons_and_batches_the_rest(tiny, movie, boxes_csv):
    detector = make_detector(tiny, boxes_csv, batch_size=8)
    timings = StageTimings()
    results = list(detector.stream(movie[0], timings=timings))
    assert [r.timestamp for r in results] == [1, 2, 3]
    assert [r.num_persons for r in results] == [2, 0, 1]
    assert results[1].probs.shape == (0, 80)
    assert results[0].probs.shape == (2, 80) and ((results[0].probs > 0) & (results[0].probs < 1)).all()
    assert results[0].box_strings == [("0.100", "0.200", "0.600", "0.950"), ("0.500", "0.050", "1.000", "0.700")]
    assert results[0].image_size == (80, 60) and results[0].keyframe_image.shape == (60, 80, 3)
    assert (timings.keyframes, timings.persons, timings.model_batches) == (3, 3, 1)
    assert detector.timings.keyframes == 3

    one_by_one = make_detector(tiny, boxes_csv, batch_size=1)
    again = list(one_by_one.stream(movie[0]))
    assert one_by_one.timings.model_batches == 2
    for batched, single in zip(results, again):
        np.testing.assert_allclose(batched.probs, single.probs, atol=2e-6)


def test_fast_inference_path_matches_the_eager_model(tiny, movie, boxes_csv):
    fast = list(make_detector(tiny, boxes_csv).stream(movie[0]))
    eager = list(make_detector(tiny, boxes_csv, fast=False).stream(movie[0]))
    assert [r.timestamp for r in fast] == [r.timestamp for r in eager]
    for a, b in zip(fast, eager):
        np.testing.assert_allclose(a.probs, b.probs, atol=1e-5)


def test_precision_is_validated_and_fingerprinted(tiny, boxes_csv):
    with pytest.raises(ConfigError, match="unknown precision 'fp8'"):
        make_detector(tiny, boxes_csv, precision="fp8")
    with pytest.raises(ConfigError, match="drop fast=False"):
        make_detector(tiny, boxes_csv, precision="bf16", fast=False)
    assert make_detector(tiny, boxes_csv).fingerprint()["settings"]["precision"] == "fp32"


def test_call_returns_the_csv_columns(tiny, movie, boxes_csv):
    frame = make_detector(tiny, boxes_csv)(movie[0], min_score=0.0)
    assert list(frame.columns) == ["video_id", "timestamp", "x1", "y1", "x2", "y2", "action_id", "score"]
    assert len(frame) == 3 * 80 and set(frame.video_id) == {"movie"}
    assert sorted(set(frame.timestamp)) == [1, 3]
    assert set(frame.action_id) == set(range(1, 81))


def test_keyframe_spec_overrides_the_box_file_schedule(tiny, movie, boxes_csv):
    results = list(make_detector(tiny, boxes_csv).stream(movie[0], "1:3:2"))
    assert [r.timestamp for r in results] == [1, 3]


def test_abandoned_stream_stops_its_decoding_thread(tiny, movie, boxes_csv):
    stream = make_detector(tiny, boxes_csv, batch_size=1).stream(movie[0])
    next(stream)
    stream.close()
    assert not [t for t in threading.enumerate() if t.name == "ava-clip-decoder"]


def test_detector_pickles_to_its_settings(tiny, boxes_csv):
    detector = make_detector(tiny, boxes_csv, batch_size=3)
    clone = pickle.loads(pickle.dumps(detector))
    assert clone.settings == detector.settings and clone.batch_size == 3
    assert clone.fingerprint() == detector.fingerprint()
    fingerprint = detector.fingerprint()
    assert fingerprint["weights_sha256"] and fingerprint["settings"]["box_thresh"] == 0.5


def test_conflicting_arguments_fail_loudly(tiny, boxes_csv):
    config, weights = tiny
    with pytest.raises(ConfigError, match="not both"):
        ActionDetector("SLOWFAST_32x2_R101_50_50", config=str(config))
    with pytest.raises(ConfigError, match="detector='torchvision'"):
        ActionDetector(config=str(config), weights=str(weights), boxes=str(boxes_csv), detector="torchvision")
    with pytest.raises(ConfigError, match="needs a box CSV"):
        ActionDetector(config=str(config), weights=str(weights), detector="precomputed")
    for keyframes, message in (("zz", "keyframes 'zz': expected START:END"),
                               (["zz"], r"keyframes=\['zz'\]: .*or a list of seconds"), (5, "keyframes=5: ")):
        with pytest.raises(ConfigError, match=message):
            ActionDetector(config=str(config), weights=str(weights), boxes=str(boxes_csv), keyframes=keyframes)


def test_video_missing_from_the_box_file_is_named(tiny, tmp_path, boxes_csv):
    other = tmp_path / "other.mkv"
    write_lossless_video(other, textured_frames(40))
    with pytest.raises(InputFormatError, match="'other'"):
        list(make_detector(tiny, boxes_csv).stream(other))


def test_corrupt_tail_yields_the_good_keyframes_then_fails(tiny, tmp_path):
    path, boxes = write_damaged_movie(tmp_path)
    seen = []
    with pytest.raises(VideoDecodeError, match="movie.mkv"):
        for result in make_detector(tiny, boxes).stream(path):
            seen.append(result.timestamp)
    assert seen and seen == sorted(seen) and 4 not in seen


# ------------------------------------------------------------------------------------ PySlowFast parity

def pyslowfast_clip(frames, center, num_frames, rate):
    """PySlowFast's AVA clip: frame indices center - T*rate/2 + j*rate, clamped to the video."""
    indices = [min(max(center - num_frames * rate // 2 + j * rate, 0), len(frames) - 1) for j in range(num_frames)]
    return [frames[i] for i in indices]


def pyslowfast_transform(images, boxes, size, mean, std):
    """PySlowFast's cv2 test transform (split ``test``) written out; returns fast (3, T, H', W') and boxes."""
    height, width = images[0].shape[:2]
    boxes = boxes * np.array([width, height, width, height], np.float32)
    boxes[:, [0, 2]] = np.clip(boxes[:, [0, 2]], 0, width - 1)
    boxes[:, [1, 3]] = np.clip(boxes[:, [1, 3]], 0, height - 1)
    if min(width, height) != size:
        if width < height:
            new_width, new_height = size, int(np.floor(height / width * size))
            boxes = boxes * (new_height / height)
        else:
            new_width, new_height = int(np.floor(width / height * size)), size
            boxes = boxes * (new_width / width)
        images = [cv2.resize(image, (new_width, new_height), interpolation=cv2.INTER_LINEAR) for image in images]
    clip = np.stack([image.astype(np.float32).transpose(2, 0, 1) / 255.0 for image in images], axis=1)
    clip = (clip - np.array(mean, np.float32)[:, None, None, None]) / np.array(std, np.float32)[:, None, None, None]
    boxes[:, [0, 2]] = np.clip(boxes[:, [0, 2]], 0, clip.shape[3] - 1)
    boxes[:, [1, 3]] = np.clip(boxes[:, [1, 3]], 0, clip.shape[2] - 1)
    return torch.from_numpy(clip), torch.from_numpy(boxes.astype(np.float32))


def pyslowfast_yaml(tmp_path: Path) -> Path:
    """PySlowFast's own c2 SlowFast-R50 AVA config, only made narrow (WIDTH_PER_GROUP 64 -> 8) to run fast."""
    found = sorted(PYSLOWFAST_CONFIGS.rglob("SLOWFAST_32x2_R50.yaml"))
    assert found, f"PySlowFast's configs/AVA/c2/SLOWFAST_32x2_R50.yaml is missing under {PYSLOWFAST_CONFIGS}"
    text = found[0].read_text()
    assert "WIDTH_PER_GROUP: 64" in text and "ALIGNED: False" in text
    path = tmp_path / "SLOWFAST_32x2_R50_narrow.yaml"
    path.write_text(text.replace("WIDTH_PER_GROUP: 64", "WIDTH_PER_GROUP: 8"))
    return path


@pytest.mark.real_size
def test_scores_match_pyslowfast_test_path(tmp_path):
    from ava_pipeline.config import load_config

    config_path = pyslowfast_yaml(tmp_path)
    config = load_config(config_path)
    assert config.model.num_frames == 32 and config.data.test_crop_size == 256 and not config.model.aligned
    weights = tmp_path / "narrow.pyth"
    model = save_checkpoint(config.model, weights, seed=3)

    frames = textured_frames(100, size=(80, 60), seed=5)  # 3.3 s: the clip at 3 s is clamped at the end
    video = tmp_path / "clip.mkv"
    write_lossless_video(video, frames)
    rows = [("clip", 1, "0.077", "0.180", "0.523", "0.985", 0.95),
            ("clip", 1, "0.400", "0.000", "1.000", "0.900", 0.85),
            ("clip", 3, "0.250", "0.125", "0.750", "0.875", 0.99)]
    boxes_csv = tmp_path / "boxes.csv"
    write_boxes(boxes_csv, rows)
    csv_path = tmp_path / "clip.csv"

    from ava_pipeline.cli.detect import main
    assert main([str(video), "--out", str(csv_path), "--config", str(config_path), "--weights", str(weights),
                 "--boxes", str(boxes_csv), "--quiet"]) == 0
    written = {}
    for line in csv_path.read_text().splitlines():
        video_id, timestamp, x1, y1, x2, y2, action_id, score = line.split(",")
        written[(int(timestamp), (x1, y1, x2, y2), int(action_id))] = float(score)
    assert len(written) == 3 * 80

    with av.open(str(video)) as container:  # independent decode: every frame, exactly as stored
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert all(np.array_equal(a, b) for a, b in zip(decoded, frames))
    slow_index = torch.linspace(0, config.model.num_frames - 1, config.model.num_frames // config.model.alpha).long()
    worst, spread = 0.0, []
    for second in (1, 3):
        keyframe_rows = [r for r in rows if r[1] == second]
        boxes = np.array([[float(v) for v in r[2:6]] for r in keyframe_rows], np.float32)
        images = pyslowfast_clip(decoded, second * 30, config.model.num_frames, config.model.sampling_rate)
        fast, boxes_px = pyslowfast_transform(images, boxes, 256, config.data.mean, config.data.std)
        slow = fast[:, slow_index]
        with torch.no_grad():
            expected = model([slow[None], fast[None]], torch.cat([torch.zeros(len(boxes_px), 1), boxes_px], 1))
        spread.extend(((expected > 0.01) & (expected < 0.99)).flatten().tolist())
        for row, scores in zip(keyframe_rows, expected.numpy()):
            ours = np.array([written[(second, tuple(row[2:6]), c + 1)] for c in range(80)])
            worst = max(worst, float(np.abs(ours - scores).max()))
    assert np.mean(spread) > 0.5, "scores saturate: the comparison would be weak"
    assert worst < 2e-4, f"largest score difference {worst:.2e}"


class CentreBoxDetector:
    """A user's own person detector: one box in the middle of every image (needs the pixels)."""

    def __init__(self):
        self.seen = []

    def detect(self, images, *, video_id=None, timestamps=None):
        from ava_pipeline.detector import PersonBoxes

        self.seen.extend(image.shape for image in images)
        return [PersonBoxes(np.array([[0.25, 0.25, 0.75, 0.75]], np.float32), np.array([0.9], np.float32))
                for _ in images]


def test_loaded_model_and_detector_objects_are_used_as_given(tiny, movie, boxes_csv):
    from ava_pipeline import load_action_model
    from ava_pipeline.models.inference import InferenceModel

    config, weights = tiny
    loaded = load_action_model(str(config), weights=str(weights))
    custom = CentreBoxDetector()
    by_object = ActionDetector(loaded, detector=custom)
    assert isinstance(by_object.model, InferenceModel) and by_object.model.config == loaded.config
    assert by_object.model.weights_sha256 == loaded.weights_sha256
    results = list(by_object.stream(movie[0], keyframes=[1, 2]))
    assert custom.seen == [(60, 80, 3)] * 2  # the pixels of both keyframes reached the custom detector
    assert [r.num_persons for r in results] == [1, 1]
    assert by_object.fingerprint()["detector"] == {"backend": "custom",
                                                   "class": f"{__name__}.CentreBoxDetector"}

    # the same box through a named detector gives the same scores: the objects change nothing else
    centre_csv = boxes_csv.parent / "centre.csv"
    write_boxes(centre_csv, [("movie", t, "0.25", "0.25", "0.75", "0.75", 0.9) for t in (1, 2)])
    by_name = make_detector(tiny, centre_csv)
    expected = [r.probs for r in by_name.stream(movie[0], keyframes=[1, 2])]
    for result, probs in zip(results, expected):
        np.testing.assert_allclose(result.probs, probs, atol=1e-6)

    # a fast copy is taken as it is, and an eager module with fast=False too
    assert ActionDetector(by_object.model, detector=custom).model is by_object.model
    assert ActionDetector(loaded, detector=custom, fast=False).model is loaded


def test_object_arguments_conflicting_with_names_fail_loudly(tiny, boxes_csv):
    from ava_pipeline import load_action_model

    config, weights = tiny
    loaded = load_action_model(str(config), weights=str(weights))
    with pytest.raises(ConfigError, match="already loaded SlowFast; drop config="):
        ActionDetector(loaded, config=str(config), boxes=str(boxes_csv))
    with pytest.raises(ConfigError, match=r"CentreBoxDetector object; \['boxes'\] only apply to detectors built"):
        ActionDetector(loaded, detector=CentreBoxDetector(), boxes=str(boxes_csv))
    with pytest.raises(ConfigError, match="has no detect"):
        ActionDetector(loaded, detector=object())
    with pytest.raises(ConfigError, match="without an ActionModelConfig"):
        ActionDetector(torch.nn.Linear(2, 2), boxes=str(boxes_csv))


def test_settings_rebuild_an_equal_detector_also_with_objects(tiny, movie, boxes_csv):
    from ava_pipeline import load_action_model

    named = make_detector(tiny, boxes_csv)
    rebuilt = ActionDetector.from_settings(named.settings)
    assert rebuilt.fingerprint() == named.fingerprint()
    config, weights = tiny
    with_objects = ActionDetector(load_action_model(str(config), weights=str(weights)), detector=CentreBoxDetector())
    copy = pickle.loads(pickle.dumps(with_objects))
    first, second = (list(d.stream(movie[0], keyframes=[1])) for d in (with_objects, copy))
    np.testing.assert_array_equal(first[0].probs, second[0].probs)

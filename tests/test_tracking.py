"""Person tracks and action segments: the tracker on box sequences, then end to end on generated scenes.

Identity is scored with the MOTChallenge metrics (ID switches, IDF1: ``tests/mot_metrics.py``). The scenes
(``tests/scenes.py``) are lossless videos of striped figures with known identities whose boxes go to the
pipeline as a precomputed box file, each keyframe's boxes in a shuffled order; the action model is the tiny
random SlowFast of ``tests/pipeline_fixtures.py``, so appearance comes from its real RoI features.
"""
import dataclasses
import json
import random

import numpy as np
import pandas as pd
import pytest
import torch

from ava_pipeline.cli.detect import main
from ava_pipeline.errors import ConfigError
from ava_pipeline.pipeline import ActionDetector
from ava_pipeline.results import KeyframeResult
from ava_pipeline.tracking import (SEGMENT_COLUMNS, PersonTracker, TrackerOptions, TrackingSettings,
                                   action_segments, track_results)

from tests.mot_metrics import identity_metrics
from tests.pipeline_fixtures import write_tiny_model
from tests.scenes import Person, write_scene

IMAGE = (160, 120)


def run_tracker(frames, tracker=None, features=None, order_seed=None, image=IMAGE):
    """Track ``frames`` (per keyframe a list of (identity, box)); returns the hypotheses per keyframe as
    (person_id, box). ``features(identity, second)`` gives a box's appearance; ``order_seed`` shuffles the
    boxes of each keyframe."""
    tracker = tracker or PersonTracker()
    rng = random.Random(order_seed)
    hypotheses = []
    for second, frame in enumerate(frames, start=1):
        frame = list(frame)
        if order_seed is not None:
            rng.shuffle(frame)
        boxes = np.array([box for _, box in frame], np.float32).reshape(-1, 4)
        feats = None if features is None else np.stack([features(i, second) for i, _ in frame]) if frame else None
        ids = tracker.update(boxes, image, feats, second)
        hypotheses.append(sorted((int(p), tuple(box)) for p, (_, box) in zip(ids, frame)))
    return hypotheses


def walk(x1, y1, width, height, vx, vy, seconds):
    """Boxes of a person walking at constant velocity (normalized units per second) from second 1."""
    return {s: (x1 + vx * (s - 1), y1 + vy * (s - 1), x1 + vx * (s - 1) + width, y1 + vy * (s - 1) + height)
            for s in seconds}


def frames_of(tracks: dict, seconds) -> list:
    return [[(identity, boxes[s]) for identity, boxes in tracks.items() if s in boxes] for s in seconds]


def iou_tracker_ids(frames):
    """What a greedy IoU association does: each box continues the previous keyframe's box it overlaps most."""
    from tests.mot_metrics import iou

    previous, next_id, hypotheses = [], 1, []
    for frame in frames:
        current = []
        for _, box in frame:
            best = max(previous, key=lambda p: iou(p[1], box), default=None)
            if best is not None and iou(best[1], box) > 0:
                current.append((best[0], box))
            else:
                current.append((next_id, box))
                next_id += 1
        previous = current
        hypotheses.append(current)
    return hypotheses


# ------------------------------------------------------------------------------------ tracker on boxes

def test_equal_people_taking_each_others_box_keep_their_ids_where_iou_swaps_them():
    seconds = range(1, 7)
    # Equal size, same row, 0.15 apart per second: at 3 s they stand side by side, at 4 s each has the
    # other's box of 3 s.
    tracks = {1: walk(0.05, 0.3, 0.15, 0.6, 0.15, 0, seconds), 2: walk(0.80, 0.3, 0.15, 0.6, -0.15, 0, seconds)}
    assert tracks[1][4] == pytest.approx(tracks[2][3]) and tracks[2][4] == pytest.approx(tracks[1][3])
    frames = frames_of(tracks, seconds)
    assert identity_metrics(frames, iou_tracker_ids(frames))["id_switches"] > 0  # the trap is real
    for seed in (None, 1, 2, 3):
        metrics = identity_metrics(frames, run_tracker(frames, order_seed=seed))
        assert (metrics["id_switches"], metrics["idf1"]) == (0, 1.0)


def test_ids_do_not_depend_on_the_order_of_the_boxes():
    seconds = range(1, 8)
    tracks = {i: walk(0.1 * i, 0.05 * i, 0.12, 0.4, 0.03 * (-1) ** i, 0.02, seconds) for i in range(1, 6)}
    frames = frames_of(tracks, seconds)
    reference = run_tracker(frames)
    for seed in range(4):
        assert run_tracker(frames, order_seed=seed) == reference
    assert sorted({p for frame in reference for p, _ in frame}) == [1, 2, 3, 4, 5]


def test_an_occluded_person_keeps_its_id_for_max_missed_keyframes_then_gets_a_new_one():
    seconds = range(1, 10)
    walker = walk(0.05, 0.3, 0.12, 0.5, 0.08, 0, seconds)
    for hidden, expected_ids in (((4, 5), {1}), ((4, 5, 6), {1, 2})):
        frames = frames_of({1: {s: b for s, b in walker.items() if s not in hidden}}, seconds)
        hypotheses = run_tracker(frames)
        assert {p for frame in hypotheses for p, _ in frame} == expected_ids


def test_a_person_leaving_and_another_entering_get_distinct_ids():
    seconds = range(1, 9)
    leaving = {s: b for s, b in walk(0.70, 0.05, 0.15, 0.3, 0.1, 0, seconds).items() if s <= 3}
    entering = {s: b for s, b in walk(-0.4, 0.05, 0.15, 0.3, 0.1, 0, seconds).items() if s >= 5}
    frames = frames_of({1: leaving, 2: entering}, seconds)
    metrics = identity_metrics(frames, run_tracker(frames))
    assert (metrics["id_switches"], metrics["idf1"]) == (0, 1.0)


def test_appearance_settles_what_motion_leaves_open():
    """Two people stand together, then part: motion slightly prefers the wrong pairing, appearance fixes it."""
    a, b = (0.42, 0.3, 0.57, 0.9), (0.40, 0.3, 0.55, 0.9)
    frames = [[(1, a), (2, b)]] * 3 + [[(1, (0.20, 0.3, 0.35, 0.9)), (2, (0.62, 0.3, 0.77, 0.9))]]
    rng = np.random.default_rng(0)
    identity = {1: rng.normal(size=64), 2: rng.normal(size=64)}
    noise = {(i, s): rng.normal(size=64) * 0.1 for i in (1, 2) for s in range(1, 5)}

    def features(i, second):
        return np.abs(identity[i] + noise[(i, second)]).astype(np.float32)

    with_appearance = identity_metrics(frames, run_tracker(frames, features=features))
    assert (with_appearance["id_switches"], with_appearance["idf1"]) == (0, 1.0)
    motion_only = PersonTracker(TrackerOptions(appearance_weight=0.0))
    assert identity_metrics(frames, run_tracker(frames, motion_only, features=features))["id_switches"] == 2


def test_appearance_that_tells_nobody_apart_is_not_trusted():
    tracker = PersonTracker()
    rng = np.random.default_rng(0)
    frames = frames_of({1: walk(0.1, 0.3, 0.1, 0.4, 0.05, 0, range(1, 6)),
                        2: walk(0.7, 0.3, 0.1, 0.4, -0.05, 0, range(1, 6))}, range(1, 6))
    run_tracker(frames, tracker, features=lambda i, s: np.abs(rng.normal(size=32)).astype(np.float32))
    assert tracker.appearance_scale_and_trust()[1] < 0.2


def test_a_person_missed_at_its_second_keyframe_keeps_its_id_unless_tracks_need_confirming():
    frames = [[(1, (0.1, 0.1, 0.3, 0.5))], [], [(1, (0.1, 0.1, 0.3, 0.5))]]
    assert [p for frame in run_tracker(frames) for p, _ in frame] == [1, 1]
    tracker = PersonTracker(TrackerOptions(confirm_hits=2))  # tentative until seen twice: ends at its first miss
    assert [p for frame in run_tracker(frames, tracker) for p, _ in frame] == [1, 2]


def test_fast_people_keep_their_ids_from_their_second_keyframe():
    seconds = range(1, 5)  # small people crossing a 16:9 frame in about 3 s
    tracks = {1: walk(0.02, 0.3, 0.06, 0.2, 0.3, 0, seconds), 2: walk(0.92, 0.35, 0.06, 0.2, -0.3, 0, seconds)}
    frames = frames_of(tracks, seconds)
    metrics = identity_metrics(frames, run_tracker(frames, PersonTracker(), order_seed=0, image=(1280, 720)))
    assert (metrics["id_switches"], metrics["idf1"]) == (0, 1.0)


def test_bad_tracking_options_are_config_errors_naming_the_option():
    with pytest.raises(ConfigError, match="max_missed"):
        TrackerOptions(max_missed=-1)
    with pytest.raises(ConfigError, match="smooth_scores"):
        TrackingSettings(smooth_scores=0)
    with pytest.raises(ConfigError, match="unknown tracking option.*'max_mised'"):
        TrackingSettings.from_value({"max_mised": 3})
    assert TrackingSettings.from_value(False) is None
    assert TrackingSettings.from_value({"smooth_scores": 3}).smooth_scores == 3


# ------------------------------------------------------------------------------- smoothing, segments

def keyframe(second, boxes, probs, person_id=None, video_id="v"):
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    return KeyframeResult(video_id=video_id, timestamp=second, index=second, num_keyframes=10, pts=None,
                          pts_time=float(second), image_size=IMAGE, boxes=boxes, box_strings=None,
                          box_scores=np.ones(len(boxes), np.float32),
                          probs=np.asarray(probs, np.float32).reshape(-1, 3),
                          keyframe_image=np.zeros((1, 1, 3), np.uint8),
                          person_id=None if person_id is None else np.asarray(person_id, np.int64))


def test_smoothing_averages_each_person_over_the_centred_window_and_keeps_every_keyframe():
    left, right = (0.1, 0.2, 0.3, 0.8), (0.6, 0.2, 0.8, 0.8)
    scores = {1: [0.0, 0.3, 0.6, 0.9, 0.6], 2: [1.0, 1.0, 0.0, 1.0, 1.0]}
    results = []
    for s in range(1, 6):
        rows = [(left, [scores[1][s - 1]] * 3), (right, [scores[2][s - 1]] * 3)]
        if s == 3:  # the detector lists the boxes in the other order here
            rows.reverse()
        results.append(keyframe(s, [box for box, _ in rows], [probs for _, probs in rows]))
    plain = list(track_results([keyframe(r.timestamp, r.boxes, r.probs) for r in results]))
    smoothed = list(track_results(results, TrackingSettings(smooth_scores=3)))
    assert [r.timestamp for r in smoothed] == [1, 2, 3, 4, 5]
    for got, raw in zip(smoothed, plain):
        assert list(got.person_id) == list(raw.person_id)
    by_person = {int(p): [] for p in smoothed[0].person_id}
    for result in smoothed:
        for person, row in zip(result.person_id, result.probs):
            by_person[int(person)].append(float(row[0]))
    left_id = int(smoothed[0].person_id[0])
    assert by_person[left_id] == pytest.approx([0.15, 0.3, 0.6, 0.7, 0.75])
    assert by_person[3 - left_id] == pytest.approx([1.0, 2 / 3, 2 / 3, 2 / 3, 1.0])


def test_segments_bridge_one_low_keyframe_and_start_equals_end_for_one_keyframe():
    box = [(0.1, 0.2, 0.3, 0.8)]
    talk = [0.9, 0.8, 0.2, 0.7, 0.1, 0.1, 0.6, 0.1]  # column 0 (action 1)
    results = [keyframe(s + 1, box, [[p, 0.0, 0.55 if s == 5 else 0.0]], person_id=[4]) for s, p in enumerate(talk)]
    segments = action_segments(results)
    assert [(s.person_id, s.action_id, s.start, s.end) for s in segments] == [(4, 1, 1, 4), (4, 3, 6, 6),
                                                                               (4, 1, 7, 7)]
    assert segments[0].peak_score == pytest.approx(0.9)
    assert segments[0].mean_score == pytest.approx(np.mean([0.9, 0.8, 0.2, 0.7]))
    no_gap = action_segments(results, max_gap=0)
    assert [(s.action_id, s.start, s.end) for s in no_gap][:2] == [(1, 1, 2), (1, 4, 4)]
    with pytest.raises(ConfigError, match="tracks"):
        action_segments([keyframe(1, box, [[0.9, 0, 0]])])


# ------------------------------------------------------------------------------------ generated scenes

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_model(tmp_path_factory.mktemp("tiny_tracking"), test_crop_size=96)


def scene_metrics(detector, video, truth):
    hypotheses, frames = [], []
    for result in detector.stream(video):
        assert result.person_id is not None and result.features is None
        hypotheses.append([(int(p), tuple(b)) for p, b in zip(result.person_id, result.boxes)])
        frames.append(truth[result.timestamp])
    return identity_metrics(frames, hypotheses), {p for frame in hypotheses for p, _ in frame}


def test_crossing_scene_through_the_pipeline_has_no_identity_switch(tiny, tmp_path):
    seconds = range(0, 8)
    persons = [
        Person(1, ((220, 30, 30), (250, 220, 40)), walk(-0.10, 0.35, 0.15, 0.6, 0.15, 0, seconds)),
        Person(2, ((30, 60, 220), (240, 240, 240)), walk(0.95, 0.35, 0.15, 0.6, -0.15, 0, seconds)),
        Person(3, ((20, 160, 60), (10, 10, 10)), walk(0.70, 0.02, 0.22, 0.5, -0.06, 0.02, seconds)),
    ]
    persons[0].boxes = {s: b for s, b in persons[0].boxes.items() if b[0] >= 0}
    persons[1].boxes = {s: b for s, b in persons[1].boxes.items() if b[2] <= 1}
    video, boxes, truth = write_scene(tmp_path, "crossing", persons, 8)
    config, weights = tiny
    detector = ActionDetector(config=str(config), weights=str(weights), boxes=str(boxes), tracks=True)
    metrics, ids = scene_metrics(detector, video, truth)
    assert metrics["matched"] == metrics["truth_boxes"] > 0
    assert (metrics["id_switches"], metrics["idf1"], len(ids)) == (0, 1.0, 3)


def test_occlusion_leaving_and_entering_scene_through_the_pipeline(tiny, tmp_path):
    seconds = range(0, 9)
    front = Person(1, ((200, 40, 40), (240, 200, 60)), walk(0.10, 0.25, 0.2, 0.7, 0.1, 0, seconds))
    behind = Person(2, ((40, 40, 200), (220, 220, 220)), walk(0.75, 0.30, 0.15, 0.55, -0.12, 0, seconds),
                    hidden=(3, 4))
    leaving = Person(3, ((20, 150, 50), (0, 0, 0)), {s: b for s, b in walk(0.68, 0.0, 0.12, 0.28, 0.1, 0, seconds)
                                                     .items() if s <= 3})
    entering = Person(4, ((160, 60, 160), (250, 250, 250)), {s: b for s, b in walk(-0.4, 0.0, 0.12, 0.28, 0.1, 0,
                                                                                   seconds).items() if s >= 5})
    behind.boxes = {s: b for s, b in behind.boxes.items() if b[0] >= 0}
    video, boxes, truth = write_scene(tmp_path, "occlusion", [behind, leaving, entering, front], 9)
    assert all(2 not in [i for i, _ in truth[s]] for s in (3, 4))
    config, weights = tiny
    detector = ActionDetector(config=str(config), weights=str(weights), boxes=str(boxes), tracks=True)
    metrics, ids = scene_metrics(detector, video, truth)
    assert (metrics["id_switches"], metrics["idf1"], len(ids)) == (0, 1.0, 4)


# -------------------------------------------------------------------------- segments end to end (CLI)

TALK = 79  # "talk to (e.g., self, a person, a group)": a name with commas, quoted in the CSV
DARK = ((40, 40, 60), (70, 50, 50))


@pytest.fixture(scope="module")
def acting_scene(tiny, tmp_path_factory):
    """Two people at fixed places who 'talk' (are lit) at known keyframes, and a model whose head scores
    action 79 high exactly when a person is lit: its projection row is the difference of the mean RoI
    features of lit and dark boxes (computed with the model itself), every other action is scored ~0."""
    folder = tmp_path_factory.mktemp("acting")
    seconds = range(0, 10)
    left = Person(1, DARK, {s: (0.05 + 0.01 * s, 0.2, 0.35 + 0.01 * s, 0.9) for s in seconds}, lit=(2, 3, 4, 7))
    right = Person(2, DARK, {s: (0.55, 0.25 - 0.01 * s, 0.85, 0.95 - 0.01 * s) for s in seconds}, lit=(1, 2, 4, 5, 6))
    video, boxes, truth = write_scene(folder, "acting", [left, right], 10)
    config, weights = tiny
    detector = ActionDetector(config=str(config), weights=str(weights), boxes=str(boxes), tracks=True)
    recorded = []
    model = detector.model

    def recording(pathways, boxes_px, with_features=False):
        recorded.append(model(pathways, boxes_px, with_features=True))
        return recorded[-1]

    detector.model = recording
    lit_at = {1: left.lit, 2: right.lit}
    box_lit = torch.tensor([result.timestamp in lit_at[1 if box[0] < 0.5 else 2]
                            for result in detector.stream(video) for box in result.boxes])
    features = torch.cat([f for _, f in recorded]).double()
    assert len(features) == len(box_lit) == 2 * 9
    on, off = features[box_lit].mean(0), features[~box_lit].mean(0)
    direction = on - off
    margin = features @ direction - (on + off) @ direction / 2
    assert margin[box_lit].min() > 0 > margin[~box_lit].max()  # the head can be set to follow the pattern
    scale = 6.0 / min(margin[box_lit].min(), -margin[~box_lit].max())
    state = torch.load(weights, weights_only=True)
    head_w, head_b = state["model_state"]["head.projection.weight"], state["model_state"]["head.projection.bias"]
    head_w.zero_()
    head_b.fill_(-8.0)
    head_w[TALK - 1] = (direction * scale).float()
    head_b[TALK - 1] = float(-(on + off) @ direction / 2 * scale)
    acting_weights = folder / "acting.pyth"
    torch.save(state, acting_weights)
    return {"video": video, "boxes": boxes, "config": config, "weights": acting_weights, "folder": folder}


def detect(scene, out, *extra):
    return main([str(scene["video"]), "--out", str(out), "--config", str(scene["config"]), "--weights",
                 str(scene["weights"]), "--boxes", str(scene["boxes"]), "--quiet", *extra])


def test_segments_file_holds_the_known_spans(acting_scene, tmp_path):
    out, segments = tmp_path / "acting.jsonl", tmp_path / "segments.csv"
    assert detect(acting_scene, out, "--tracks", "--segments", str(segments)) == 0
    frame = pd.read_csv(segments)
    assert tuple(frame.columns) == SEGMENT_COLUMNS
    # Left (person 1, born first: left of right) talks at 2-4 s and 7 s; right (person 2) at 1, 2 and 4-6 s:
    # its one low second (3 s) is bridged.
    assert frame[["video_id", "person_id", "action_id", "start", "end"]].values.tolist() == [
        ["acting", 2, TALK, 1, 6], ["acting", 1, TALK, 2, 4], ["acting", 1, TALK, 7, 7]]
    assert set(frame["action_name"]) == {"talk to (e.g., self, a person, a group)"}
    records = [json.loads(line) for line in out.read_text().splitlines()]
    score = {(r["time"], p["person_id"]): next(a["score"] for a in p["actions"] if a["id"] == TALK)
             for r in records for p in r["persons"]}
    assert all(list(p)[:2] == ["person_id", "box"] for r in records for p in r["persons"])
    for row in frame.itertuples():
        span = [score[(t, row.person_id)] for t in range(row.start, row.end + 1)]
        assert row.peak_score == pytest.approx(max(span), abs=1e-6)
        assert row.mean_score == pytest.approx(np.mean(span), abs=1e-6)
    assert min(score[(t, 2)] for t in (1, 2, 4, 5, 6)) > 0.9 and score[(3, 2)] < 0.1

    gapless = tmp_path / "gapless.csv"
    assert detect(acting_scene, tmp_path / "again.csv", "--tracks", "--segments", str(gapless),
                  "--segment-gap", "0") == 0
    assert pd.read_csv(gapless)[["person_id", "start", "end"]].values.tolist() == [[2, 1, 2], [1, 2, 4],
                                                                                  [2, 4, 6], [1, 7, 7]]


def test_the_csv_keeps_its_8_columns_and_smoothing_changes_only_scores(acting_scene, tmp_path):
    plain, tracked, smoothed = tmp_path / "plain.csv", tmp_path / "tracked.csv", tmp_path / "smoothed.csv"
    assert detect(acting_scene, plain) == 0
    assert detect(acting_scene, tracked, "--tracks", "--segments") == 0  # bare: next to --out
    assert pd.read_csv(tmp_path / "tracked_segments.csv")["end"].max() == 7
    assert detect(acting_scene, smoothed, "--tracks", "--smooth-scores", "3") == 0
    assert tracked.read_bytes() == plain.read_bytes()
    rows = [pd.read_csv(p, header=None) for p in (plain, smoothed)]
    assert rows[1].shape == rows[0].shape and rows[0].shape[1] == 8
    assert rows[1].iloc[:, :7].equals(rows[0].iloc[:, :7]) and not rows[1][7].equals(rows[0][7])


def test_track_options_without_tracks_are_a_usage_error(acting_scene, tmp_path, capsys):
    for extra in (["--segments", str(tmp_path / "s.csv")], ["--smooth-scores", "3"], ["--segment-thresh", "0.4"]):
        assert detect(acting_scene, tmp_path / "out.csv", *extra) == 2
        assert "--tracks" in capsys.readouterr().err
    assert not (tmp_path / "out.csv").exists()
    folder = acting_scene["video"].parent
    assert main([str(folder), "--out", str(tmp_path / "many"), "--config", str(acting_scene["config"]), "--weights",
                 str(acting_scene["weights"]), "--boxes", str(acting_scene["boxes"]), "--tracks", "--segments",
                 str(tmp_path / "segments.csv")]) == 2
    assert "several videos write one segments CSV each into a folder" in capsys.readouterr().err


def test_rendering_colours_each_person_by_id_and_captions_the_id():
    from ava_pipeline.render import _PALETTE, _annotation, draw_annotation

    image_boxes = [(0.1, 0.1, 0.4, 0.9), (0.6, 0.1, 0.9, 0.9)]
    ids = [7, 2]
    colours = []
    for order in ([0, 1], [1, 0]):  # the same two people, their boxes listed in the other order
        result = keyframe(1, [image_boxes[i] for i in order], [[0.9, 0.1, 0.2]] * 2, person_id=[ids[i] for i in order])
        annotation = _annotation(dataclasses.replace(result, action_names=("bend", "b", "c")), 1)
        assert annotation.captions == [[f"person {ids[i]}", "bend 0.90"] for i in order]
        picture = draw_annotation(np.full((120, 160, 3), 128, np.uint8), annotation.boxes, annotation.captions,
                                  annotation.colors)
        colours.append([tuple(int(v) for v in picture[60, x]) for x in (16, 144)])  # left edge, right edge
    assert colours[0] == colours[1] == [_PALETTE[6], _PALETTE[1]]


def test_results_held_back_for_smoothing_come_out_before_a_damaged_videos_error():
    from ava_pipeline.errors import VideoDecodeError

    def damaged():
        for second in (1, 2, 3):
            yield keyframe(second, [(0.1, 0.2, 0.3, 0.8)], [[0.2 * second] * 3])
        raise VideoDecodeError("v.mp4: truncated")

    seen = []
    with pytest.raises(VideoDecodeError, match="truncated"):
        for result in track_results(damaged(), TrackingSettings(smooth_scores=5)):
            seen.append((result.timestamp, float(result.probs[0, 0])))
    assert [t for t, _ in seen] == [1, 2, 3]
    assert [p for _, p in seen] == pytest.approx([0.4, 0.4, 0.4])  # each over the keyframes it could see

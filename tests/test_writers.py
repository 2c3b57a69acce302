"""Writers: AVA CSV, JSONL, DataFrame, atomic output and the annotated mp4 / PNG renderer."""
import csv
import json
from fractions import Fraction

import av
import cv2
import numpy as np
import pytest

from ava_pipeline.ava_csv import format_seconds
from ava_pipeline.results import KeyframeResult
from ava_pipeline.render import (draw_annotation, keyframe_png_name, render_video, short_action_name,
                                 write_video_outputs)
from ava_pipeline.writers import (DETECTION_COLUMNS, atomic_output, detections_dataframe, format_coordinate, write_csv,
                                  write_jsonl)


def make_result(timestamp=902, boxes=((0.1, 0.2, 0.5, 0.9), (0.55, 0.1, 0.95, 0.8)), box_strings=None,
                size=(64, 48), seed=0, index=0):
    rng = np.random.default_rng(seed)
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    width, height = size
    return KeyframeResult(
        video_id="movie", timestamp=timestamp, index=index, num_keyframes=3, pts=int(Fraction(timestamp) * 30),
        pts_time=float(Fraction(timestamp)), image_size=size, boxes=boxes, box_strings=box_strings,
        box_scores=np.linspace(0.99, 0.9, len(boxes), dtype=np.float32),
        probs=rng.random((len(boxes), 80), dtype=np.float32),
        keyframe_image=np.full((height, width, 3), 90, dtype=np.uint8))


def read_rows(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_timestamps_are_integers_for_whole_seconds():
    assert format_seconds(902) == "902"
    assert format_seconds(902.0) == "902"
    assert format_seconds(Fraction(1805, 2)) == "902.5"
    assert format_seconds(Fraction(1, 3)) == "0.333333"


def test_coordinates_round_trip_float32():
    value = np.float32(0.1234567)
    assert np.float32(format_coordinate(value)) == value
    assert format_coordinate(np.float32(1.0)) == "1"
    assert format_coordinate(np.float32(0.25)) == "0.25"


def test_csv_has_one_row_per_box_and_action(tmp_path):
    result = make_result()
    path = tmp_path / "out.csv"
    stats = write_csv([result, make_result(timestamp=903, boxes=np.zeros((0, 4)))], path)
    rows = read_rows(path)
    assert (stats.keyframes, stats.persons, stats.rows) == (2, 2, 160)
    assert len(rows) == 160 and all(len(row) == len(DETECTION_COLUMNS) for row in rows)
    assert rows[0][:2] == ["movie", "902"]
    assert [row[6] for row in rows[:80]] == [str(i) for i in range(1, 81)]
    assert rows[0][2:6] == ["0.1", "0.2", "0.5", "0.9"]
    assert rows[80][2:6] == ["0.55", "0.1", "0.95", "0.8"]
    scores = np.array([[float(row[7]) for row in rows[k * 80:(k + 1) * 80]] for k in range(2)])
    np.testing.assert_allclose(scores, result.probs, atol=5e-7)
    assert all(len(row[7].split(".")[1]) >= 6 for row in rows)


def test_csv_writes_precomputed_box_text_verbatim(tmp_path):
    strings = [("0.077", "0.180", "0.523", "0.985")]
    result = make_result(boxes=[(0.077, 0.18, 0.523, 0.985)], box_strings=strings)
    write_csv([result], tmp_path / "out.csv")
    assert {tuple(row[2:6]) for row in read_rows(tmp_path / "out.csv")} == set(strings)


def test_min_score_prunes_actions(tmp_path):
    result = make_result()
    write_csv([result], tmp_path / "out.csv", min_score=0.5)
    rows = read_rows(tmp_path / "out.csv")
    assert len(rows) == int((result.probs >= 0.5).sum()) and 0 < len(rows) < 160
    assert all(float(row[7]) >= 0.5 for row in rows)


def test_dataframe_matches_csv_columns_and_types():
    result = make_result()
    frame = detections_dataframe([result, make_result(timestamp=903, seed=1)], min_score=0.2)
    assert list(frame.columns) == list(DETECTION_COLUMNS)
    assert frame["timestamp"].dtype == np.int64 and set(frame["timestamp"]) == {902, 903}
    assert frame["action_id"].between(1, 80).all() and (frame["score"] >= 0.2).all()
    first = frame[(frame.timestamp == 902) & (frame.x1 == 0.1)].set_index("action_id")["score"]
    np.testing.assert_allclose(first.to_numpy(), result.probs[0][result.probs[0] >= 0.2], rtol=1e-7)


def test_jsonl_has_one_sorted_record_per_keyframe(tmp_path):
    results = [make_result(), make_result(timestamp=Fraction(1807, 2), boxes=np.zeros((0, 4)))]
    write_jsonl(results, tmp_path / "out.jsonl", min_score=0.3)
    records = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["time"] for r in records] == [902, 903.5] and records[1]["persons"] == []
    first = records[0]
    assert (first["width"], first["height"], first["pts"]) == (64, 48, 902 * 30)
    person = first["persons"][0]
    assert person["box"] == [0.1, 0.2, 0.5, 0.9]
    assert person["box_px"] == pytest.approx([6.4, 9.6, 32.0, 43.2], abs=0.01)
    assert person["detector_score"] == pytest.approx(0.99)
    scores = [a["score"] for a in person["actions"]]
    assert scores == sorted(scores, reverse=True) and min(scores) >= 0.3
    top = int(np.argmax(results[0].probs[0]))
    assert person["actions"][0]["id"] == top + 1 and person["actions"][0]["name"]


def test_failed_stream_leaves_no_output_and_keeps_the_old_file(tmp_path):
    path = tmp_path / "out.csv"
    path.write_text("previous complete file\n")

    def broken():
        yield make_result()
        raise RuntimeError("decoder died")

    with pytest.raises(RuntimeError, match="decoder died"):
        write_csv(broken(), path)
    assert path.read_text() == "previous complete file\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.csv"]


def test_atomic_output_renames_into_place(tmp_path):
    target = tmp_path / "sub" / "file.mp4"
    with atomic_output(target) as temporary:
        assert temporary.parent == target.parent and temporary.suffix == ".mp4" and not target.exists()
        temporary.write_bytes(b"data")
    assert target.read_bytes() == b"data" and len(list(target.parent.iterdir())) == 1


def test_unknown_format_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="unknown output format 'xml'"):
        write_video_outputs([], tmp_path / "x.xml", output_format="xml")


def test_short_action_names_drop_examples_only():
    assert short_action_name("talk to (e.g., self, a person, a group)") == "talk to"
    assert short_action_name("kick (a person)") == "kick (a person)"
    assert keyframe_png_name("movie", 902) == "movie_00902.png"
    assert keyframe_png_name("movie", Fraction(1805, 2)) == "movie_00902.5.png"


def test_drawing_marks_the_box_and_scales_text():
    image = np.zeros((360, 640, 3), dtype=np.uint8)
    drawn = draw_annotation(image, np.array([[0.25, 0.5, 0.75, 0.95]], np.float32), [["stand 0.93", "talk to 0.71"]])
    assert image.max() == 0, "input must not be modified"
    assert tuple(drawn[int(0.7 * 360), 160]) == (230, 25, 75)  # left edge in the first palette colour
    assert drawn[int(0.5 * 360) - 30:int(0.5 * 360), 160:300].any(), "captions sit above the box"


def write_test_video(path, num_frames, size=(96, 64), fps=30):
    """A small lossless-enough mp4 whose frames differ (libx264, yuv420p)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        for i in range(num_frames):
            image = np.full((size[1], size[0], 3), (i * 7) % 255, dtype=np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode(None))


def test_render_writes_pngs_and_a_video_with_the_source_frame_count(tmp_path):
    video = tmp_path / "movie.mp4"
    write_test_video(video, 75)
    results = [make_result(timestamp=t, size=(96, 64), index=i) for i, t in enumerate((1, 2))]
    for result in results:
        result.keyframe_image = np.zeros((64, 96, 3), dtype=np.uint8)
    stats = render_video(results, video, tmp_path / "render" / "movie.mp4", tmp_path / "render" / "frames")
    assert (stats.keyframes, stats.persons) == (2, 4)
    pngs = sorted((tmp_path / "render" / "frames").iterdir())
    assert [p.name for p in pngs] == ["movie_00001.png", "movie_00002.png"]
    assert cv2.imread(str(pngs[0])).any(), "boxes drawn on the black keyframe"
    with av.open(str(tmp_path / "render" / "movie.mp4")) as rendered:
        frames = [f.to_ndarray(format="rgb24") for f in rendered.decode(video=0)]
    assert len(frames) == 75
    assert frames[30].shape == (64, 96, 3)
    plain = np.full((64, 96, 3), 0, dtype=np.uint8)  # frame 0 is black and at 0 s, outside any keyframe's reach
    assert np.abs(frames[0].astype(int) - plain).max() < 12
    assert np.abs(frames[30].astype(int) - (30 * 7) % 255).max() > 60, "frame at 1 s carries annotations"


def test_a_models_own_label_map_names_its_columns_in_every_output(tmp_path):
    import dataclasses

    from ava_pipeline.render import _annotation
    from ava_pipeline.tracking import SegmentBuilder
    from ava_pipeline.writers import segment_rows

    own = dataclasses.replace(make_result(boxes=[(0.1, 0.2, 0.5, 0.9)]), probs=np.array([[0.2, 0.9, 0.6]], np.float32),
                              action_ids=(11, 101, 102), action_names=("sit", "wave hands", "juggle"),
                              person_id=np.array([3]))
    write_jsonl([own], tmp_path / "own.jsonl")
    actions = json.loads((tmp_path / "own.jsonl").read_text())["persons"][0]["actions"]
    assert [(a["id"], a["name"]) for a in actions] == [(101, "wave hands"), (102, "juggle"), (11, "sit")]
    write_csv([own], tmp_path / "own.csv")
    assert [row[6] for row in read_rows(tmp_path / "own.csv")] == ["11", "101", "102"]
    assert _annotation(own, 2).captions == [["person 3", "wave hands 0.90", "juggle 0.60"]]
    segmenter = SegmentBuilder(thresh=0.5)
    segmenter.add(own)
    assert [row[2:4] for row in segment_rows(segmenter.segments())] == [["101", "wave hands"], ["102", "juggle"]]
    ava = make_result()  # no label map of its own: AVA's ids and names
    assert (ava.action_id(0), ava.action_name(0), ava.action_name(79)) == \
        (1, "bend/bow (at the waist)", "watch (a person)")

"""Training samples: PySlowFast's merge of ground truth and proposals, label-map columns, bad input."""
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from ava_pipeline.errors import InputFormatError, VideoDecodeError
from ava_pipeline.training.samples import check_videos, find_videos, read_training_samples
from tests.videos import write_index_video


def write_csv(path: Path, lines) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_merge_keys_boxes_by_coordinate_text_and_keeps_unlabelled_proposals(tmp_path):
    gt = write_csv(tmp_path / "gt.csv", [
        "vid,0902,0.15,0.2,0.5,0.9,12,0",
        "vid,0902,0.15,0.2,0.5,0.9,14,0",    # same box text: a second label
        "vid,0902,0.150,0.2,0.5,0.9,11,1",   # other text, same number: another box (no numeric matching)
        "vid,0902,0.15,0.2,0.5,0.9,12,0",    # a repeated label stays one 1
    ])
    proposals = write_csv(tmp_path / "proposals.csv", [
        "vid,902,0.6,0.1,0.9,0.8,,0.95",      # unlabelled: a pure negative, trained
        "vid,902,0.15,0.2,0.5,0.9,11,0.99",   # adds label 11 to the first GT box
        "vid,902,0.1,0.1,0.2,0.2,,0.79",      # below the threshold: dropped
        "vid,902,0.3,0.3,0.4,0.4,-1,0.8",     # at the threshold: kept (score < thresh drops), -1 = no label
    ])
    result = read_training_samples(gt, class_ids=[11, 12, 14], proposals=[proposals], score_thresh=0.8)
    (sample,) = result.samples
    assert sample.video_id == "vid" and sample.time == 902
    np.testing.assert_array_equal(sample.boxes, [[0.15, 0.2, 0.5, 0.9], [0.15, 0.2, 0.5, 0.9],
                                                 [0.6, 0.1, 0.9, 0.8], [0.3, 0.3, 0.4, 0.4]])
    assert sample.boxes.dtype == np.float64 and sample.labels.dtype == np.float32
    np.testing.assert_array_equal(sample.labels, [[1, 1, 1], [1, 0, 0], [0, 0, 0], [0, 0, 0]])
    assert result.skipped["proposals_below_threshold"] == 1
    assert sample.source == f"{gt}:1"


def test_a_header_line_and_blank_lines_are_skipped(tmp_path):
    gt = write_csv(tmp_path / "gt.csv", ["video_id,timestamp,x1,y1,x2,y2,action_id,person_id", "",
                                        "vid,1,0.1,0.1,0.5,0.5,1,0"])
    assert [s.time for s in read_training_samples(gt, class_ids=[1]).samples] == [1]


def test_label_columns_follow_the_label_map_order(tmp_path):
    gt = write_csv(tmp_path / "gt.csv", ["vid,1,0.1,0.1,0.5,0.5,14,0", "vid,1,0.1,0.1,0.5,0.5,11,0",
                                        "vid,1,0.5,0.5,0.9,0.9,12,1"])
    result = read_training_samples(gt, class_ids=[14, 11, 12])
    assert result.class_ids == (14, 11, 12)
    np.testing.assert_array_equal(result.samples[0].labels, [[1, 1, 0], [0, 0, 1]])
    own_ids = read_training_samples(write_csv(tmp_path / "own.csv", ["vid,1,0.1,0.1,0.5,0.5,3,0"]),
                                    class_ids=[1, 2, 3])
    np.testing.assert_array_equal(own_ids.samples[0].labels, [[0, 0, 1]])


def test_samples_are_ordered_by_video_then_exact_time(tmp_path):
    gt = write_csv(tmp_path / "gt.csv", [
        "b,10,0.1,0.1,0.5,0.5,1,0", "a,3,0.1,0.1,0.5,0.5,1,0", "b,2.5,0.1,0.1,0.5,0.5,1,0",
        "b,0002.50,0.2,0.1,0.5,0.5,1,0", "a,1805/2,0.1,0.1,0.5,0.5,1,0", "b,0,0.1,0.1,0.5,0.5,1,0"])
    result = read_training_samples(gt, class_ids=[1])
    assert [(s.video_id, s.time) for s in result.samples] == [
        ("b", 0), ("b", Fraction(5, 2)), ("b", 10), ("a", 3), ("a", Fraction(1805, 2))]
    assert all(isinstance(s.time, Fraction) for s in result.samples)
    assert len(result.samples[1].boxes) == 2  # "2.5" and "0002.50" are one keyframe
    assert result.video_ids() == ["b", "a"]


def test_several_annotation_files_are_read_in_order_before_the_proposals(tmp_path):
    first = write_csv(tmp_path / "a.csv", ["vid,1,0.5,0.5,0.9,0.9,1,0"])
    second = write_csv(tmp_path / "b.csv", ["other,1,0.1,0.1,0.2,0.2,1,0", "vid,1,0.1,0.1,0.2,0.2,2,1"])
    proposals = write_csv(tmp_path / "p.csv", ["vid,1,0.3,0.3,0.4,0.4,,0.9", "vid,1,0.1,0.1,0.2,0.2,1,0.9"])
    result = read_training_samples([first, second], class_ids=[1, 2], proposals=[proposals])
    assert result.video_ids() == ["vid", "other"]
    vid = result.samples[0]
    np.testing.assert_array_equal(vid.boxes[:, 0], [0.5, 0.1, 0.3])
    np.testing.assert_array_equal(vid.labels, [[1, 0], [1, 1], [0, 0]])


def test_rows_outside_the_label_map_are_counted_and_skipped(tmp_path):
    gt = write_csv(tmp_path / "gt.csv", ["vid,1,0.1,0.1,0.5,0.5,11,0", "vid,1,0.1,0.1,0.5,0.5,80,0",
                                        "vid,2,0.2,0.2,0.6,0.6,80,1", "vid,2,0.2,0.2,0.6,0.6,0,1"])
    result = read_training_samples(gt, class_ids=[11, 12])
    assert [(s.time, len(s.boxes)) for s in result.samples] == [(1, 1)]  # the row is skipped, box and all
    assert result.skipped["rows_not_in_label_map"] == 3
    assert result.not_in_label_map_by_action == {80: 2, 0: 1}
    assert "3 rows whose action is not in the label map: 80 (2), 0 (1)" in result.summary()
    with pytest.raises(InputFormatError, match=rf"{tmp_path / 'gt.csv'}:2: action 80 is not in the label map"):
        read_training_samples(gt, class_ids=[11, 12], strict_labels=True)


def test_excluded_keyframes_are_dropped(tmp_path):
    gt = write_csv(tmp_path / "gt.csv", ["vid,1,0.1,0.1,0.5,0.5,1,0", "vid,2,0.1,0.1,0.5,0.5,1,0",
                                        "vid,2,0.2,0.1,0.5,0.5,1,1"])
    exclusions = write_csv(tmp_path / "excluded.csv", ["vid,0002"])
    result = read_training_samples(gt, class_ids=[1], exclusions=exclusions)
    assert [s.time for s in result.samples] == [1]
    assert result.skipped["rows_excluded"] == 2


GOOD = "vid,1,0.1,0.1,0.5,0.5,1,0"


@pytest.mark.parametrize("row, message", [
    ("vid,1,0.1,0.1,0.5,1", r":2: expected 7 or 8 columns"),
    ("vid,1,0.1,abc,0.5,0.5,1,0", r":2: box '0.1,abc,0.5,0.5' has a coordinate that is not a number"),
    ("vid,1,0.1,0.1,1.5,0.5,1,0", r":2: box 0.1,0.1,1.5,0.5 is not normalized to \[0, 1\]"),
    ("vid,1,0.1,0.1,nan,0.5,1,0", r":2: box .* is not normalized"),
    ("vid,1,0.6,0.1,0.5,0.5,1,0", r":2: box 0.6,0.1,0.5,0.5 has x2 < x1 or y2 < y1"),
    ("vid,1,0.1,0.6,0.5,0.5,1,0", r":2: box .* has x2 < x1 or y2 < y1"),
    ("vid,-3,0.1,0.1,0.5,0.5,1,0", r":2: timestamp -3 is negative"),
    ("vid,1e3,0.1,0.1,0.5,0.5,1,0", r":2: timestamp '1e3' is not a number of seconds"),
    ("vid,1,0.1,0.1,0.5,0.5,sit,0", r":2: action_id must be an integer, got 'sit'"),
    (",1,0.1,0.1,0.5,0.5,1,0", r":2: empty video id"),
])
def test_bad_annotation_rows_name_file_and_line(tmp_path, row, message):
    gt = write_csv(tmp_path / "gt.csv", [GOOD, row])
    with pytest.raises(InputFormatError, match=str(gt) + message):
        read_training_samples(gt, class_ids=[1])


@pytest.mark.parametrize("row, message", [
    ("vid,1,0.1,0.1,0.5,0.5,,1.5", r":1: score 1.5 is outside \[0, 1\]"),
    ("vid,1,0.1,0.1,0.5,0.5,,high", r":1: score 'high' is not a number"),
    ("vid,1,0.1,0.1", r":1: expected 6 to 8 columns"),
])
def test_bad_proposal_rows_name_file_and_line(tmp_path, row, message):
    gt = write_csv(tmp_path / "gt.csv", [GOOD])
    proposals = write_csv(tmp_path / "boxes.csv", [row])
    with pytest.raises(InputFormatError, match=str(proposals) + message):
        read_training_samples(gt, class_ids=[1], proposals=[proposals])


def test_missing_files_bad_exclusions_and_an_empty_set_are_errors(tmp_path):
    with pytest.raises(InputFormatError, match="nothere.csv: no such file"):
        read_training_samples(tmp_path / "nothere.csv", class_ids=[1])
    gt = write_csv(tmp_path / "gt.csv", [GOOD])
    bad_exclusions = write_csv(tmp_path / "ex.csv", ["vid,1,2"])
    with pytest.raises(InputFormatError, match=r"ex.csv:1: expected 2 columns"):
        read_training_samples(gt, class_ids=[1], exclusions=bad_exclusions)
    with pytest.raises(InputFormatError, match=r"gt.csv: no training samples \(0 keyframes.*1 rows whose action is "
                                               r"not in the label map: 1 \(1\)"):
        read_training_samples(gt, class_ids=[2])
    empty = write_csv(tmp_path / "empty.csv", [])
    with pytest.raises(InputFormatError, match="no training samples"):
        read_training_samples(empty, class_ids=[1])
    with pytest.raises(InputFormatError, match="lists class id 1 twice"):
        read_training_samples(gt, class_ids=[1, 1])


def test_find_videos_by_stem_or_relative_path(tmp_path):
    (tmp_path / "season1").mkdir()
    for name in ("a.mp4", "b.mkv", "b.csv", ".hidden.mp4", "season1/ep02.webm", "c.weird"):
        (tmp_path / name).write_bytes(b"x")
    found = find_videos(tmp_path, ["a", "b", "season1/ep02", "ep02", "c"])
    assert found == {"a": tmp_path / "a.mp4", "b": tmp_path / "b.mkv", "season1/ep02": tmp_path / "season1/ep02.webm",
                     "ep02": tmp_path / "season1/ep02.webm", "c": tmp_path / "c.weird"}
    with pytest.raises(InputFormatError, match=r"gt.csv:7: video 'zz' \(and 1 more: hidden\) not found under"):
        find_videos(tmp_path, ["a", "zz", "hidden"], rows={"zz": "gt.csv:7"})
    (tmp_path / "a.mkv").write_bytes(b"x")
    with pytest.raises(InputFormatError, match="video id 'a' matches several files"):
        find_videos(tmp_path, ["a"])
    with pytest.raises(InputFormatError, match="no such folder"):
        find_videos(tmp_path / "nope", ["a"])


def test_check_videos_stops_keyframes_far_past_the_end_and_undecodable_videos(tmp_path):
    write_index_video(tmp_path / "four.mkv", 120, fps=30)  # 4 s: grid frames 0..119
    (tmp_path / "broken.mp4").write_bytes(b"no video here" * 50)
    gt = write_csv(tmp_path / "gt.csv", ["four,1,0.1,0.1,0.5,0.5,1,0", "four,5,0.1,0.1,0.5,0.5,1,0",
                                        "four,5.5,0.1,0.1,0.5,0.5,1,0"])
    videos = find_videos(tmp_path, ["four", "broken"])
    samples = read_training_samples(gt, class_ids=[1]).samples
    clip = dict(fps=30, num_frames=8, sampling_rate=2)
    metadata = check_videos(samples[:2], videos, **clip)  # 5 s: centre 150 <= 119 + 8 + 30: left to the frame pass
    assert (metadata["four"].width, metadata["four"].height) == (64, 48)
    with pytest.raises(InputFormatError, match=r"gt.csv:3: keyframe 5.5 s of video 'four' lies past the end of "
                                               r".*four.mkv \(4.000 s long\)"):
        check_videos(samples, videos, **clip)
    broken = write_csv(tmp_path / "broken.csv", ["broken,1,0.1,0.1,0.5,0.5,1,0"])
    with pytest.raises(VideoDecodeError, match="broken.mp4"):
        check_videos(read_training_samples(broken, class_ids=[1]).samples, videos, **clip)

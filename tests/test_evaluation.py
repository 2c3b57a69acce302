"""Hand-computed checks of every rule of the official AVA frame-mAP (EVAL_SPEC.md) and of the other protocols."""
import dataclasses
import math
import warnings

import numpy as np
import pytest

from ava_pipeline.errors import ConfigError, InputFormatError
from ava_pipeline.evaluation import (PROTOCOLS, InputFormatWarning, evaluate, legacy_argsort, read_ava_csv,
                                     read_exclusions)

LABELS = 'label {\n  name: "one"\n  label_id: 1\n}\nlabel {\n  name: "two"\n  label_id: 2\n}\n' \
         'label {\n  name: "three"\n  label_id: 3\n}\n'
BOX = "0.1,0.1,0.5,0.9"            # x1, y1, x2, y2
OTHER = "0.6,0.1,0.9,0.9"          # disjoint from BOX


@pytest.fixture
def files(tmp_path):
    """Write the named CSV texts (and the 3-class label map) and return their paths."""
    (tmp_path / "labels.pbtxt").write_text(LABELS)

    def write(**texts):
        paths = {"labelmap": tmp_path / "labels.pbtxt"}
        for name, text in texts.items():
            paths[name] = tmp_path / f"{name}.csv"
            paths[name].write_text(text)
        return paths
    return write


def run(paths, protocol="activitynet2019", **kwargs):
    return evaluate(paths["gt"], paths["det"], paths["labelmap"], exclusions=paths.get("exclusions"),
                    protocol=protocol, **kwargs)


def with_cap(capacity):
    return dataclasses.replace(PROTOCOLS["activitynet2019"], detections_per_keyframe=capacity)


def test_ap_formula_all_point_interpolation(files):
    # ranking TP, FP, TP with 3 ground truths: AP = 1/3 * 1 + 1/3 * 2/3
    gt = f"v,0902,{BOX},1,0\nv,0903,{BOX},1,0\nv,0904,{BOX},1,0\n"
    det = f"v,0902,{BOX},1,0.9\nv,0903,{OTHER},1,0.8\nv,0903,{BOX},1,0.7\n"
    result = run(files(gt=gt, det=det))
    assert result.per_class[1] == pytest.approx(1 / 3 + 2 / 9, abs=1e-15)
    assert result.gt_counts[1] == 3


def test_classes_without_ground_truth_are_nan_and_skipped_by_the_mean(files):
    gt = f"v,0902,{BOX},1,0\nv,0902,{BOX},2,0\n"
    det = f"v,0902,{BOX},1,0.9\nv,0902,{BOX},3,0.9\n"   # class 2 has GT but no detection -> 0; class 3 no GT
    result = run(files(gt=gt, det=det))
    assert result.per_class[1] == 1.0 and result.per_class[2] == 0.0 and math.isnan(result.per_class[3])
    assert result.mAP == 0.5
    official = result.to_official_dict()
    assert official["PascalBoxes_Precision/mAP@0.5IOU"] == 0.5
    assert math.isnan(official["PascalBoxes_PerformanceByCategory/AP@0.5IOU/three"])


def test_empty_keyframe_detections_are_false_positives(files):
    gt = f"v,0902,{BOX},1,0\n"
    det = f"v,0902,{BOX},1,0.5\nv,0903,{BOX},1,0.9\nunknown,0902,{BOX},1,0.1\n"
    # ranking: FP (0.9), TP (0.5), FP (0.1): precision at the only recall step is 1/2
    assert run(files(gt=gt, det=det)).per_class[1] == 0.5


def test_excluded_keyframes_drop_ground_truth_and_detections(files):
    gt = f"v,0902,{BOX},1,0\nv,0903,{BOX},1,0\n"
    det = f"v,0902,{BOX},1,0.5\nv,0903,{OTHER},1,0.9\nv,0904,{BOX},1,0.8\n"
    paths = files(gt=gt, det=det, exclusions="v,903\nv,0904\n")
    result = run(paths)
    assert result.gt_counts[1] == 1 and result.per_class[1] == 1.0
    assert read_exclusions(paths["exclusions"]) == {"v,0903", "v,0904"}


def test_no_fall_back_to_the_second_best_ground_truth(files):
    first, second = "0.0,0.0,0.4,1.0", "0.1,0.0,0.5,1.0"
    between = "0.04,0.0,0.44,1.0"        # IoU 0.818 with `first`, 0.739 with `second`
    gt = f"v,0902,{first},1,0\nv,0902,{second},1,1\n"
    det = f"v,0902,{first},1,0.9\nv,0902,{between},1,0.8\n"
    # the 2nd detection's best ground truth is taken -> FP, although `second` (IoU >= 0.5) is free
    assert run(files(gt=gt, det=det)).per_class[1] == 0.5


def test_duplicate_rows_count_twice_and_match_once(files):
    gt = f"v,0902,{BOX},1,0\nv,0902,{BOX},1,0\n"
    det = f"v,0902,{BOX},1,0.9\nv,0902,{BOX},1,0.8\n"
    result = run(files(gt=gt, det=det))
    assert result.gt_counts[1] == 2
    assert result.per_class[1] == 0.5   # TP then FP (first maximum is the same taken box), recall stops at 1/2


def test_invalid_detection_boxes_are_dropped_not_false_positives(files):
    gt = f"v,0902,{BOX},1,0\n"
    det = f"v,0902,0.3,0.1,0.3,0.9,1,0.9\nv,0902,0.5,0.1,0.2,0.9,1,0.95\nv,0902,{BOX},1,0.5\n"
    assert run(files(gt=gt, det=det)).per_class[1] == 1.0


def test_inverted_ground_truth_box_is_an_error_where_the_official_code_crashes(files):
    gt = f"v,0902,0.5,0.1,0.2,0.9,1,0\nv,0903,0.5,0.1,0.2,0.9,2,0\nv,0903,{BOX},1,0\n"
    with pytest.raises(InputFormatError, match=r"gt\.csv:1: ground-truth box has x1 > x2"):
        run(files(gt=gt, det=f"v,0902,{BOX},1,0.9\n"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run(files(gt=gt, det=f"v,0903,{BOX},1,0.9\n"))
    assert any(w.category is InputFormatWarning and "gt.csv:2: ground-truth box" in str(w.message) for w in caught)
    assert result.gt_counts[2] == 1 and result.per_class[2] == 0.0


def test_cap_evicts_the_smallest_boundary_tuple(files):
    gt = f"v,0902,{BOX},1,0\nv,0902,{BOX},2,0\n"
    det = f"v,0902,{BOX},1,0.5\nv,0902,{BOX},2,0.5\nv,0902,{OTHER},3,0.9\n"
    # heap of 2 holds both 0.5 rows; the 0.9 row replaces the smallest tuple, (0.5, action 1, ...)
    result = run(files(gt=gt, det=det), protocol=with_cap(2))
    assert result.per_class[1] == 0.0 and result.per_class[2] == 1.0
    assert run(files(gt=gt, det=det)).per_class[1] == 1.0   # the official cap of 50 keeps everything


def test_cap_later_equal_scores_never_enter(files):
    gt = f"v,0902,{BOX},1,0\nv,0902,{BOX},2,0\n"
    det = f"v,0902,{BOX},1,0.5\nv,0902,{OTHER},3,0.9\nv,0902,{BOX},2,0.5\n"
    result = run(files(gt=gt, det=det), protocol=with_cap(2))
    assert result.per_class[1] == 1.0 and result.per_class[2] == 0.0


def test_cap_of_fifty_per_keyframe_across_classes_ignores_non_whitelisted_rows(files):
    gt = f"v,0902,{BOX},1,0\n"
    filler = "".join(f"v,0902,{OTHER},3,0.{60 + i}\n" for i in range(30))
    ignored = "".join(f"v,0902,{OTHER},7,0.99\n" for i in range(30))      # action 7 is not in the label map
    det_kept = filler + ignored + filler + f"v,0902,{BOX},1,0.7\n"         # 61 whitelisted rows; 0.7 > cut
    det_cut = filler + filler + f"v,0902,{BOX},1,0.6\n"                    # 0.6 ties the 50th score: too late
    assert run(files(gt=gt, det=det_kept)).per_class[1] == 1.0
    assert run(files(gt=gt, det=det_cut)).per_class[1] == 0.0


def test_key_uses_int_of_the_timestamp_string(files):
    paths = files(gt=f"v,0902,{BOX},1,0\n", det=f"v, 902,{BOX},1,0.9\nv,902,{OTHER},1,0.1\n")
    rows = read_ava_csv(paths["det"])
    assert rows.keys == ["v,0902"] and rows.lines.tolist() == [1, 2]
    assert run(paths).per_class[1] == 1.0


def test_legacy_argsort_matches_numpy_1_23_on_ties():
    # expected outputs recorded from numpy 1.23.5's np.argsort (numpy 2 gives a different order)
    assert legacy_argsort(np.zeros(20)).tolist() == [0, 17, 16, 15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3,
                                                     2, 1, 18, 19]
    values = np.array([0.3, 0.1, 0.3, 0.2, 0.1, 0.3, 0.3, 0.1, 0.2, 0.3, 0.1, 0.1, 0.3, 0.2, 0.2, 0.1, 0.3,
                       0.2, 0.1, 0.3, 0.2, 0.1])
    assert legacy_argsort(values).tolist() == [10, 18, 15, 11, 7, 21, 4, 1, 8, 20, 3, 13, 14, 17, 6, 9, 12, 2,
                                               16, 19, 5, 0]


def test_tie_order_changes_ap_only_through_ties(files):
    gt = f"v,0902,{BOX},1,0\nv,0903,{BOX},1,0\n"
    det = "".join(f"v,{t},{BOX if i < 2 else OTHER},1,0.5\n" for i, t in enumerate(range(902, 922)))
    official = run(files(gt=gt, det=det))
    stable = run(files(gt=gt, det=det), tie_order="stable")
    # stable keeps image order: the TPs at keyframes 902 and 903 come first among the tied scores
    assert stable.per_class[1] == 1.0 and official.per_class[1] < 1.0
    with pytest.raises(ConfigError, match="tie order"):
        run(files(gt=gt, det=det), tie_order="random")


# ---------------------------------------------------------------------------------------------------- protocols

def test_2020_protocol_key_only_rows_and_unannotated_keyframes(files):
    gt = f"v,902.5\nv,0903,{BOX},1,0\n"
    det = f"v,902.5,{BOX},1,0.9\nv,0903,{BOX},1,0.5\nv,0999,{BOX},1,0.95\n"
    result = run(files(gt=gt, det=det), protocol="activitynet2020")
    # 902.5 is annotated (2-column row) without boxes -> FP; 0999 is not in the GT file -> ignored
    assert result.per_class[1] == 0.5
    with pytest.raises(ConfigError, match="no excluded timestamps"):
        run(files(gt=gt, det=det, exclusions="v,0903\n"), protocol="activitynet2020")
    with pytest.raises(InputFormatError, match=r"det\.csv:1: timestamp '902\.5'"):
        run(files(gt=f"v,0902,{BOX},1,0\n", det=det))


def test_pyslowfast_matches_in_file_order_without_cap(files):
    gt = f"v,0902,{BOX},1,0\n"
    det = f"v,0902,{BOX},1,0.5\nv,0902,{BOX},1,0.9\n"
    # file order: the 0.5 row takes the box, the 0.9 row is FP and ranks first -> AP 0.5 (official: 1.0)
    assert run(files(gt=gt, det=det), protocol="pyslowfast").per_class[1] == 0.5
    assert run(files(gt=gt, det=det)).per_class[1] == 1.0


def test_mmaction2_deviations(files):
    gt = f"v,0902,{BOX},1,0\nv,0902,{BOX},2,0\nv,0903,{BOX},1,0\n"
    det = f"v,0902,{BOX},1,0.9\nv,0904,{BOX},1,0.95\n"
    paths = files(gt=gt, det=det, exclusions="v,0903\n")
    result = run(paths, protocol="mmaction2")
    # detections off ground-truth keyframes ignored; excluded GT still counted; class 2 (no detection) dropped
    assert result.gt_counts[1] == 2 and result.per_class[1] == 0.5 and result.mAP == 0.5
    official = run(paths)
    assert official.per_class[1] == 0.5 and official.per_class[2] == 0.0 and official.mAP == 0.25
    with pytest.raises(InputFormatError, match=r"det\.csv:1: detection box has x1 > x2"):
        run(files(gt=gt, det="v,0902,0.5,0.1,0.2,0.9,1,0.9\n"), protocol="mmaction2")


# ---------------------------------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("text, message", [
    (f"v,0902,{BOX},1,0.5\nv,0902,{BOX}\n", r"det\.csv:2: expected 7 or 8 columns"),
    (f"v,0902,{BOX},1,0.5\n\n", r"det\.csv:2: expected 7 or 8 columns .* \(empty line\)"),
    (f"v,0902,{BOX},1,0.5,9\n", r"det\.csv:1: expected 7 or 8 columns"),
    ("v,0902,0.1,abc,0.5,0.9,1,0.5\n", r"det\.csv:1: box coordinates must be numbers"),
    (f"v,0902,{BOX},one,0.5\n", r"det\.csv:1: action_id must be an integer"),
    (f"v,0902,{BOX},1,high\n", r"det\.csv:1: score must be a number"),
    (f"v,09x2,{BOX},1,0.5\n", r"det\.csv:1: timestamp '09x2'"),
])
def test_malformed_rows_name_file_and_line(files, text, message):
    with pytest.raises(InputFormatError, match=message):
        run(files(gt=f"v,0902,{BOX},1,0\n", det=text))


def test_non_numeric_score_on_an_ignored_class_is_a_warning(files):
    paths = files(gt=f"v,0902,{BOX},1,0\n", det=f"v,0902,{BOX},9,n/a\nv,0902,{BOX},1,0.5\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run(paths)
    assert result.per_class[1] == 1.0
    assert any("det.csv:1: non-numeric score" in str(w.message) for w in caught)
    assert result.warnings and "det.csv:1" in result.warnings[0]


def test_missing_file_and_bad_protocol(files, tmp_path):
    paths = files(gt=f"v,0902,{BOX},1,0\n", det="")
    with pytest.warns(InputFormatWarning, match="no detection of the label map's classes"):
        assert math.isclose(run(paths).per_class[1], 0.0)  # an empty detection file scores 0, no crash
    with pytest.raises(InputFormatError, match="no such file"):
        evaluate(paths["gt"], tmp_path / "missing.csv", paths["labelmap"])
    with pytest.raises(ConfigError, match="activitynet2019"):
        run(paths, protocol="voc")


def test_equal_scores_keep_the_heap_layout_order(files):
    # heap after pushing A(0.5), X(0.9), B(0.5): B sifts above A (smaller tuple: y1 0.0 < 0.1), so class 1 is
    # ordered B, A; among the two tied scores numpy ranks the later one first -> A (the TP) ranks first
    below = "0.6,0.0,0.9,0.9"
    det = f"v,0902,{BOX},1,0.5\nv,0902,{OTHER},2,0.9\nv,0902,{below},1,0.5\n"
    assert run(files(gt=f"v,0902,{BOX},1,0\n", det=det)).per_class[1] == 1.0
    # file order (PySlowFast) puts A first, so B (FP) ranks first
    assert run(files(gt=f"v,0902,{BOX},1,0\n", det=det), protocol="pyslowfast").per_class[1] == 0.5


def test_nan_scores_follow_the_official_heap(files):
    # NaN never compares greater, so a full heap keeps its NaN rows; replayed exactly with heapq
    gt = f"v,0902,{BOX},1,0\n"
    det = f"v,0902,{OTHER},2,nan\nv,0902,{OTHER},3,nan\nv,0902,{BOX},1,0.9\n"
    result = run(files(gt=gt, det=det), protocol=with_cap(2))
    assert result.per_class[1] == 0.0 and result.detection_counts[2] == 1


def test_numpy1_sum_rounds_like_numpy_1_23():
    from ava_pipeline.evaluation.frame_map import numpy1_sum
    nine = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9])
    assert numpy1_sum(nine) == ((0.1 + 0.2) + (0.3 + 0.4)) + ((0.5 + 0.6) + (0.7 + 0.8)) + 0.9
    # recorded from numpy 1.23.5's np.sum (numpy 2.4 gives 701.2700347591335)
    assert numpy1_sum(1.0 / np.arange(1, 123458) ** 0.5) == 701.2700347591336

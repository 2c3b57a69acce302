"""The ava-eval command line: flags, outputs, exit codes and one-line errors; ``ava-eval persons`` (COCO AP)."""
import json
import subprocess
import sys

import pytest

from ava_pipeline.cli.evaluate import main
from ava_pipeline.evaluation.persons import person_detection_ap

BOX = "0.1,0.1,0.5,0.9"
OTHER = "0.6,0.1,0.9,0.9"


@pytest.fixture
def inputs(tmp_path):
    gt = tmp_path / "gt.csv"
    gt.write_text(f"v,0902,{BOX},12,0\nv,0903,{BOX},80,1\nv,0904,{BOX},12,0\n")
    det = tmp_path / "det.csv"
    det.write_text(f"v,0902,{BOX},12,0.9\nv,0903,{OTHER},80,0.8\nv,0904,{BOX},12,0.4\nv,0904,{BOX},2,0.4\n")
    ex = tmp_path / "ex.csv"
    ex.write_text("v,0904\n")
    return gt, det, ex


def test_prints_map_and_table_and_writes_json_and_plot(inputs, tmp_path, capsys):
    gt, det, ex = inputs
    out_json, out_png = tmp_path / "m.json", tmp_path / "ap.png"
    assert main(["--gt", str(gt), "--det", str(det), "--exclusions", str(ex), "--json", str(out_json),
                 "--plot", str(out_png)]) == 0
    printed = capsys.readouterr().out
    assert "mAP@0.5IoU: 0.500000" in printed      # stand: 1.0 (0904 excluded), watch (a person): 0.0
    assert " 12  stand " in printed and "1.000000" in printed
    metrics = json.loads(out_json.read_text())
    assert metrics["PascalBoxes_Precision/mAP@0.5IOU"] == 0.5
    assert metrics["PascalBoxes_PerformanceByCategory/AP@0.5IOU/stand"] == 1.0
    assert metrics["PascalBoxes_PerformanceByCategory/AP@0.5IOU/watch (a person)"] == 0.0
    assert metrics["PascalBoxes_PerformanceByCategory/AP@0.5IOU/dance"] is None   # no GT: NaN -> null
    assert len(metrics) == 61                                                    # 60 classes + mAP
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_protocol_and_packaged_labelmap_names(inputs, capsys):
    gt, det, _ = inputs
    assert main(["--gt", str(gt), "--det", str(det), "--labelmap", "v2.2", "--protocol", "pyslowfast"]) == 0
    printed = capsys.readouterr().out
    assert "protocol pyslowfast" in printed and "  2  bend/bow" not in printed
    assert "  2  " in printed   # the 80-class map lists action 2 (not evaluated officially)


def test_input_error_is_one_line_and_exit_2(inputs, tmp_path, capsys):
    gt, _, _ = inputs
    bad = tmp_path / "bad.csv"
    bad.write_text(f"v,0902,{BOX},12,0.9\nv,0902,{BOX},12\nv,0902,0.1\n")
    assert main(["--gt", str(gt), "--det", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ava-eval: error: ") and f"{bad}:3: expected 7 or 8 columns" in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_a_folder_of_results_is_named_with_how_to_join_it(inputs, tmp_path, capsys):
    gt, _, _ = inputs
    results = tmp_path / "results"
    results.mkdir()
    assert main(["--gt", str(gt), "--det", str(results)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{results}: is a folder" in err and "-exec cat" in err


def test_inputs_that_cannot_give_a_meaningful_map_are_warned_about(inputs, tmp_path, capsys):
    gt, det, _ = inputs
    empty, elsewhere = tmp_path / "empty.csv", tmp_path / "elsewhere.csv"
    empty.write_text("")
    elsewhere.write_text(det.read_text().replace("v,", "other,"))
    for args, warning in (([str(empty), str(det)], "no ground-truth box of the label map's classes"),
                          ([str(gt), str(empty)], "no detection of the label map's classes"),
                          ([str(gt), str(elsewhere)], "none of its keyframes is in the ground truth (e.g. "
                                                      "'other,0902'"),
                          ([str(gt), str(det)], None)):
        assert main(["--gt", args[0], "--det", args[1]]) == 0
        err = capsys.readouterr().err
        assert (warning in err) if warning else err == ""


def test_debug_shows_the_exception(inputs, tmp_path):
    gt, _, _ = inputs
    with pytest.raises(Exception, match="no such file"):
        main(["--gt", str(gt), "--det", str(tmp_path / "missing.csv"), "--debug"])


def test_usage_errors_exit_2(inputs, capsys):
    gt, det, ex = inputs
    with pytest.raises(SystemExit) as exit_info:
        main(["--gt", str(gt)])
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit) as exit_info:
        main(["--gt", str(gt), "--det", str(det), "--protocol", "voc2007"])
    assert exit_info.value.code == 2
    assert main(["--gt", str(gt), "--det", str(det), "--exclusions", str(ex), "--protocol",
                 "activitynet2020"]) == 2
    assert "has no excluded timestamps" in capsys.readouterr().err


def test_outputs_never_overwrite_inputs_and_a_bad_plot_type_is_one_line(inputs, tmp_path, capsys):
    gt, det, ex = inputs
    before = [path.read_bytes() for path in inputs]
    ex_by_another_path = str(tmp_path / ".." / tmp_path.name / "ex.csv")
    for output in (["--json", str(det)], ["--plot", str(gt)], ["--json", ex_by_another_path]):
        assert main(["--gt", str(gt), "--det", str(det), "--exclusions", str(ex), *output]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "choose another" in err and output[1] in err
    assert main(["persons", "--gt", str(gt), "--det", str(det), "--json", str(gt)]) == 2
    assert "which is the --gt file" in capsys.readouterr().err
    assert [path.read_bytes() for path in inputs] == before
    same = str(tmp_path / "m.png")
    assert main(["--gt", str(gt), "--det", str(det), "--json", same, "--plot", same]) == 2
    assert f"--plot would write {same}, which is the --json file" in capsys.readouterr().err
    assert main(["--gt", str(gt), "--det", str(det), "--plot", str(tmp_path / "ap.xyz")]) == 2
    captured = capsys.readouterr()
    assert captured.out == "", "checked before evaluating"
    assert captured.err.count("\n") == 1 and "ap.xyz: matplotlib cannot write .xyz files" in captured.err
    assert not list(tmp_path.glob("m.png*")) and not list(tmp_path.glob("ap.*"))


@pytest.mark.subprocess
def test_importing_the_evaluator_does_not_import_torch():
    code = ("import sys, ava_pipeline.evaluation, ava_pipeline.cli.evaluate; "
            "sys.exit(1 if 'torch' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code], cwd=str(__import__("pathlib").Path(__file__).parents[1]),
                          timeout=120).returncode == 0


def test_persons_coco_ap_hand_computed(tmp_path, capsys):
    gt = tmp_path / "gt.csv"
    # two persons on one keyframe; the first one is listed twice (two actions) and counts once
    gt.write_text(f"v,0902,{BOX},12,0\nv,0902,{BOX},80,0\nv,0902,{OTHER},12,1\n")
    boxes = tmp_path / "boxes.csv"
    boxes.write_text(f"v,902,{BOX},,0.9\nv,0902,0.0,0.0,0.05,0.05,,0.8\nv,0902,{OTHER},,0.7\n")
    metrics = person_detection_ap(gt, boxes)
    # ranking TP, FP, TP over 2 GT boxes: COCO's 101-point precision is 1 up to recall 0.5, then 2/3;
    # all matches are exact (IoU 1), so every IoU threshold gives the same AP
    expected = (51 * 1.0 + 50 * 2 / 3) / 101
    assert metrics["AP"] == pytest.approx(expected, abs=1e-9)
    assert metrics["AP50"] == pytest.approx(expected, abs=1e-9)
    assert (metrics["images"], metrics["gt_boxes"], metrics["detections"]) == (1, 2, 3)
    out = tmp_path / "p.json"
    assert main(["persons", "--gt", str(gt), "--det", str(boxes), "--json", str(out)]) == 0
    assert "AP 0.8350" in capsys.readouterr().out
    assert json.loads(out.read_text())["AP50"] == pytest.approx(expected, abs=1e-9)


def test_persons_bad_input(tmp_path, capsys):
    gt = tmp_path / "gt.csv"
    gt.write_text(f"v,0902,{BOX},12,0\n")
    boxes = tmp_path / "boxes.csv"
    boxes.write_text("v,0902,0.1,0.2\n")
    assert main(["persons", "--gt", str(gt), "--det", str(boxes)]) == 2
    assert f"{boxes}:1: expected 6 or 7 or 8 columns" in capsys.readouterr().err


def test_subcommands_are_listed_and_frame_map_is_the_default(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    listing = capsys.readouterr().out
    assert "frame-map" in listing and "persons" in listing
    gt = tmp_path / "gt.csv"
    gt.write_text("v,902,0.1,0.1,0.5,0.5,12,0\n")
    outputs = []
    for prefix in ([], ["frame-map"]):
        assert main([*prefix, "--gt", str(gt), "--det", str(gt), "--labelmap", "v2.2"]) == 0
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1] and "mAP" in outputs[0]

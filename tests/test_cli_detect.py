"""ava-detect: exit codes, one-line errors, output formats, rendering, video discovery."""
import json

import av
import pytest

from ava_pipeline.cli.detect import find_videos, main
from ava_pipeline.errors import VideoDecodeError
from tests.pipeline_fixtures import (textured_frames, write_boxes, write_damaged_movie, write_lossless_video,
                                     write_tiny_model)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny model, a 3 s lossless video ``walk.mkv`` and its box file (persons at 1 s and 2 s)."""
    folder = tmp_path_factory.mktemp("cli")
    config, weights = write_tiny_model(folder / "model")
    video = folder / "walk.mkv"
    write_lossless_video(video, textured_frames(90))
    boxes = folder / "boxes.csv"
    write_boxes(boxes, [("walk", 1, "0.100", "0.150", "0.500", "0.950", 0.95),
                        ("walk", 2, "0.400", "0.100", "0.900", "0.900", 0.90),
                        ("walk", 2, "0.050", "0.050", "0.300", "0.600", 0.70)])
    return {"folder": folder, "video": video, "model": ["--config", str(config), "--weights", str(weights)],
            "boxes": boxes}


def run(setup, *extra, video=None):
    return main([str(video or setup["video"]), *setup["model"], "--boxes", str(setup["boxes"]), *extra])


def test_single_video_writes_an_ava_csv(setup, tmp_path, capsys):
    out = tmp_path / "walk.csv"
    assert run(setup, "--out", str(out)) == 0
    rows = [line.split(",") for line in out.read_text().splitlines()]
    assert len(rows) == 3 * 80 and all(len(row) == 8 for row in rows)
    assert {(row[0], row[1]) for row in rows} == {("walk", "1"), ("walk", "2")}
    assert rows[0][2:6] == ["0.100", "0.150", "0.500", "0.950"] and rows[0][6] == "1"
    assert all(len(row[7].split(".")[1]) >= 6 for row in rows)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["walk.csv"], "no temporary files left"
    summary = capsys.readouterr().err.strip().splitlines()[-1]
    assert "1 video(s) done, 0 failed" in summary and "2 keyframes, 3 persons" in summary


def test_quiet_prints_nothing(setup, tmp_path, capsys):
    assert run(setup, "--out", str(tmp_path / "a.csv"), "--quiet") == 0
    assert capsys.readouterr().err == ""


def test_min_score_prunes_and_jsonl_holds_one_object_per_keyframe(setup, tmp_path):
    full, pruned, jsonl = tmp_path / "full.csv", tmp_path / "pruned.csv", tmp_path / "walk.jsonl"
    assert run(setup, "--out", str(full), "--quiet") == 0
    assert run(setup, "--out", str(pruned), "--min-score", "0.5", "--quiet") == 0
    scores = [float(line.rsplit(",", 1)[1]) for line in full.read_text().splitlines()]
    kept = [float(line.rsplit(",", 1)[1]) for line in pruned.read_text().splitlines()]
    assert sorted(kept) == sorted(s for s in scores if s >= 0.5) and len(kept) < len(scores)

    assert run(setup, "--out", str(jsonl), "--min-score", "0.5", "--quiet") == 0  # jsonl by the suffix
    records = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert [r["time"] for r in records] == [1, 2] and [len(r["persons"]) for r in records] == [1, 2]
    assert (records[0]["width"], records[0]["height"], records[0]["pts_time"]) == (80, 60, 1.0)
    person = records[1]["persons"][0]
    assert person["box"] == [0.4, 0.1, 0.9, 0.9] and person["box_px"] == [32.0, 6.0, 72.0, 54.0]
    assert person["detector_score"] == pytest.approx(0.9)
    action_scores = [a["score"] for a in person["actions"]]
    assert action_scores == sorted(action_scores, reverse=True) and all(s >= 0.5 for s in action_scores)
    assert sum(len(p["actions"]) for r in records for p in r["persons"]) == len(kept)


@pytest.mark.subprocess
def test_a_batch_output_folder_named_jsonl_still_gets_csv_files(setup, tmp_path):
    out = tmp_path / "results.jsonl"
    assert main([str(setup["folder"]), *setup["model"], "--boxes", str(setup["boxes"]), "--out", str(out),
                 "--quiet"]) == 0
    assert (out / "walk.csv").is_file() and not list(out.glob("*.jsonl"))


def test_render_writes_a_video_with_the_source_frame_count(setup, tmp_path):
    render = tmp_path / "render"
    assert run(setup, "--out", str(tmp_path / "walk.csv"), "--render", str(render), "--quiet") == 0
    with av.open(str(render / "walk.mp4")) as container:
        assert sum(1 for _ in container.decode(video=0)) == 90
    assert sorted(p.name for p in (render / "walk_keyframes").iterdir()) == ["walk_00001.png", "walk_00002.png"]


@pytest.mark.parametrize("arguments, message", [
    (["--box-thresh", "2"], "--box-thresh: 2 is outside [0, 1]"),
    (["--keyframes", "5:1"], "need 0 <= START <= END"),
    (["--keyframes", "0:1e9"], "expected START:END[:STEP] in seconds"),
    (["--keyframes", "1/0:2"], "expected START:END[:STEP] in seconds"),
    (["--keyframes", "0:100000:1/100"], "names 10000001 keyframes, more than 1,000,000"),
    (["--device", "gpu"], "'gpu' is not a device"),
    (["--batch-size", "0"], "0 must be at least 1"),
    (["--detector", "torchvision"], "drop one of them"),
    (["--detector-size", "480"], "--detector-size 480 resizes images for an image detector"),
    (["--detector-size", "0"], "0 must be at least 1"),
    (["--detector-precision", "fp16"], "applies to the torchvision detector only"),
    (["--no-fast", "--precision", "bf16"], "drop --no-fast"),
])
def test_usage_errors_exit_2_with_one_line(setup, tmp_path, capsys, arguments, message):
    assert run(setup, "--out", str(tmp_path / "x.csv"), *arguments) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ava-detect: error:") and message in err[0]
    assert not (tmp_path / "x.csv").exists()


def test_no_fast_and_detector_size_reach_the_action_model_and_the_detector():
    from ava_pipeline.cli.detect import build_parser, detector_settings

    parse = build_parser().parse_args
    default = detector_settings(parse(["v.mp4", "--out", "o.csv"]))
    assert default["fast"] is True and default["detector_options"] == {}
    eager = detector_settings(parse(["v.mp4", "--out", "o.csv", "--no-fast", "--detector-size", "480",
                                     "--detector-precision", "bf16"]))
    assert eager["fast"] is False
    assert eager["detector_options"] == {"fast": False, "input_min_size": 480, "precision": "bf16"}
    detectron2 = detector_settings(parse(["v.mp4", "--out", "o.csv", "--no-fast", "--detector", "detectron2",
                                          "--detector-size", "600"]))
    assert detectron2["fast"] is False and detectron2["detector_options"] == {"input_min_size": 600}


def test_a_multi_line_library_message_is_printed_on_one_line(setup, tmp_path, capsys):
    config = tmp_path / "broken.yaml"
    config.write_text("model:\n  arch: [slowfast\n  depth: 50\n")  # YAML's parser reports on several lines
    assert main([str(setup["video"]), "--out", str(tmp_path / "x.csv"), "--config", str(config), "--boxes",
                 str(setup["boxes"])]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"ava-detect: error: {config}: cannot read YAML")


def test_missing_input_and_unknown_config_exit_2(setup, tmp_path, capsys):
    assert main([str(tmp_path / "nope.mp4"), "--out", str(tmp_path / "x.csv")]) == 2
    assert capsys.readouterr().err.strip() == f"ava-detect: error: {tmp_path / 'nope.mp4'}: no such file or folder"
    assert main([str(setup["video"]), "--out", str(tmp_path / "new" / "x.csv"), "--config", "NO_SUCH_MODEL",
                 "--boxes", str(setup["boxes"])]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "NO_SUCH_MODEL" in err[0]
    assert not (tmp_path / "new").exists(), "a run that fails before writing creates no folder"


def test_outputs_that_would_overwrite_an_input_are_refused(setup, tmp_path, capsys):
    video = tmp_path / "walk.mp4"
    video.write_bytes(setup["video"].read_bytes())
    boxes = tmp_path / "boxes.csv"
    boxes.write_bytes(setup["boxes"].read_bytes())
    before = {path: path.read_bytes() for path in (video, boxes)}
    for extra in (["--out", str(video)], ["--out", str(boxes)], ["--out", str(tmp_path / "walk.csv"),
                                                                 "--render", str(tmp_path)]):
        assert main([str(video), *setup["model"], "--boxes", str(boxes), *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "choose another" in err[0] and "which is the" in err[0]
    assert {path: path.read_bytes() for path in before} == before
    assert main([str(tmp_path), *setup["model"], "--boxes", str(boxes), "--out", str(tmp_path / "out"),
                 "--render", str(tmp_path)]) == 2
    assert f"which is the input video {video}" in capsys.readouterr().err
    assert {path: path.read_bytes() for path in before} == before
    renders = tmp_path / "renders"
    assert main([str(video), *setup["model"], "--boxes", str(boxes), "--out", str(renders / "walk.mp4"),
                 "--render", str(renders)]) == 2  # the CSV and the rendering would share one file
    assert f"--render would write {renders / 'walk.mp4'}, which is the --out file" in capsys.readouterr().err


def test_videos_sharing_a_stem_cannot_share_a_box_file(setup, tmp_path, capsys):
    for season in ("s1", "s2"):
        (tmp_path / "movies" / season).mkdir(parents=True)
        (tmp_path / "movies" / season / "walk.mkv").write_bytes(setup["video"].read_bytes())
    assert run(setup, "--out", str(tmp_path / "out"), video=tmp_path / "movies") == 2
    err = capsys.readouterr().err
    assert "share the video id 'walk'" in err and str(setup["boxes"]) in err
    assert not (tmp_path / "out").exists()


def test_an_output_folder_under_a_file_is_a_usage_error(setup, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    for extra in (["--out", str(blocker / "walk.csv")], ["--out", str(tmp_path / "walk.csv"), "--render",
                                                         str(blocker / "render")]):
        assert run(setup, *extra) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "cannot create the folder" in err[0] and str(blocker) in err[0]
    assert not (tmp_path / "walk.csv").exists()
    assert main([str(setup["folder"]), *setup["model"], "--boxes", str(setup["boxes"]), "--out",
                 str(blocker / "out")]) == 2
    assert "--out: cannot create the folder" in capsys.readouterr().err


def test_corrupt_video_fails_with_one_line_naming_it(setup, tmp_path, capsys):
    broken = tmp_path / "walk.mkv"
    broken.write_bytes(setup["video"].read_bytes()[:600])
    out = tmp_path / "walk.csv"
    assert run(setup, "--out", str(out), video=broken) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("ava-detect: error:") and str(broken) in err[0]
    assert "0 video(s) done, 1 failed" in err[-1] and len(err) == 2
    assert not out.exists()


def test_damaged_video_keeps_the_keyframes_before_the_damage(setup, tmp_path, capsys):
    movie, boxes = write_damaged_movie(tmp_path)
    out = tmp_path / "movie.csv"
    assert main([str(movie), *setup["model"], "--boxes", str(boxes), "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith(f"ava-detect: error: {movie}: ") and "were not produced" in err[0]
    kept = sorted({int(line.split(",")[1]) for line in out.read_text().splitlines()})
    assert kept and kept == list(range(1, len(kept) + 1)) and 4 not in kept
    assert err[0].endswith(f"the {len(kept)} keyframe(s) it could produce are written to {out}")
    assert "0 video(s) done, 1 failed" in err[-1]
    with pytest.raises(VideoDecodeError, match="were not produced"):  # --debug: the traceback, after writing
        main([str(movie), *setup["model"], "--boxes", str(boxes), "--out", str(tmp_path / "debug.csv"), "--debug"])
    assert (tmp_path / "debug.csv").read_text() == out.read_text()


def test_debug_shows_the_exception(setup, tmp_path):
    broken = tmp_path / "walk.mkv"
    broken.write_bytes(b"not a video")
    with pytest.raises(Exception, match="walk.mkv"):
        run(setup, "--out", str(tmp_path / "x.csv"), "--debug", video=broken)


def test_find_videos_searches_folders_recursively(tmp_path):
    for name in ("b.mp4", "a.MKV", "sub/c.mov", "sub/notes.txt", ".hidden/d.mp4", "out/e.mp4", "x/clip.mp4",
                 "x/clip.webm"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    found = find_videos([tmp_path], exclude=[tmp_path / "out"])
    assert [name for _, name in found] == ["a", "b", "sub/c", "x/clip.mp4", "x/clip.webm"]
    assert all(path.is_absolute() for path, _ in found)
    assert find_videos([tmp_path / "b.mp4", tmp_path / "sub"]) == [(tmp_path / "b.mp4", "b"),
                                                                    (tmp_path / "sub" / "c.mov", "c")]


def test_help_lists_the_choices_from_their_definitions(capsys):
    from ava_pipeline.batch import ENGINES
    from ava_pipeline.detector import BACKENDS
    from ava_pipeline.weights.zoo import zoo_names

    assert main(["--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    for name in [*zoo_names(), *BACKENDS, *ENGINES, "jsonl", "bf16"]:
        assert name in text
    assert main(["x.mp4", "--out", "y.csv", "--model", "SLOWFAST_32x2_R101"]) == 2
    assert "did you mean 'SLOWFAST_32x2_R101_50_50'?" in capsys.readouterr().err

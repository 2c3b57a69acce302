"""ava-detect --persons-only: the person detector alone, written as AVA proposal rows that --boxes reads back."""
import json

import numpy as np
import pytest
import torch

from ava_pipeline.cli.detect import main
from ava_pipeline.detector import build_detector
from ava_pipeline.pipeline import ActionDetector
from ava_pipeline.video import iter_clips
from tests.detector_fixtures import random_torchvision_model
from tests.pipeline_fixtures import textured_frames, write_lossless_video, write_tiny_model

DETECTOR = "fasterrcnn_mobilenet_v3_large_fpn"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("persons")
    weights = folder / "detector.pth"
    torch.save(random_torchvision_model(DETECTOR).state_dict(), weights)
    movies = folder / "movies"
    movies.mkdir()
    for seed, name in enumerate(("walk", "run")):
        write_lossless_video(movies / f"{name}.mkv", textured_frames(75, seed=seed))
    config, model_weights = write_tiny_model(folder / "model")
    return {"movies": movies, "weights": weights, "config": config, "model_weights": model_weights,
            "detector": ["--detector-model", DETECTOR, "--detector-weights", str(weights), "--box-thresh", "0.3"]}


def test_proposal_rows_are_the_detectors_boxes_at_each_keyframe(setup, tmp_path):
    video = setup["movies"] / "walk.mkv"
    out = tmp_path / "walk.csv"
    assert main([str(video), "--out", str(out), "--persons-only", "--quiet", *setup["detector"]]) == 0
    rows = [line.split(",") for line in out.read_text().splitlines()]
    assert rows and all(len(row) == 8 and row[0] == "walk" and row[6] == "" for row in rows)
    assert {row[1] for row in rows} <= {"0", "1", "2"} and all(float(row[7]) >= 0.3 for row in rows)

    detector = build_detector("torchvision", model=DETECTOR, weights=setup["weights"], score_thresh=0.3)
    images = {clip.keyframe_s: clip.keyframe_image for clip in iter_clips(video, [0, 1, 2], 2, 1)}
    expected = []
    for time, image in images.items():
        persons = detector.detect([image])[0]
        expected += [(str(time), *(float(v) for v in box), float(score))
                     for box, score in zip(persons.boxes, persons.scores)]
    written = [(row[1], *(float(v) for v in row[2:6]), float(row[7])) for row in rows]
    assert len(written) == len(expected)
    np.testing.assert_allclose([w[1:] for w in written], [e[1:] for e in expected], atol=1e-6)

    # the proposals feed the action model as precomputed boxes
    detections = tmp_path / "actions.csv"
    assert main([str(video), "--out", str(detections), "--boxes", str(out), "--box-thresh", "0.3", "--quiet",
                 "--config", str(setup["config"]), "--weights", str(setup["model_weights"])]) == 0
    assert len(detections.read_text().splitlines()) == 80 * len(rows)


@pytest.mark.subprocess
def test_folder_mode_is_resumable_and_needs_no_action_model(setup, tmp_path, capsys):
    out = tmp_path / "proposals"
    arguments = [str(setup["movies"]), "--out", str(out), "--persons-only", "--workers", "1", *setup["detector"]]
    assert main(arguments) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert {name: entry["status"] for name, entry in manifest["videos"].items()} == {"walk": "done", "run": "done"}
    assert sorted(p.name for p in out.glob("*.csv")) == ["run.csv", "walk.csv"]
    capsys.readouterr()
    assert main(arguments) == 0
    assert "0 video(s) done, 0 failed, 2 skipped" in capsys.readouterr().err


def test_persons_only_refuses_what_it_would_ignore(setup, tmp_path, capsys):
    video = setup["movies"] / "walk.mkv"
    assert main([str(video), "--out", str(tmp_path / "x.csv"), "--persons-only", "--weights",
                 str(setup["model_weights"])]) == 2
    assert "--persons-only runs the person detector alone; drop --weights" in capsys.readouterr().err
    detector = ActionDetector(persons_only=True, detector="torchvision",
                              detector_options={"model": DETECTOR, "weights": str(setup["weights"])})
    assert detector.model is None and detector.fingerprint()["settings"]["persons_only"] is True

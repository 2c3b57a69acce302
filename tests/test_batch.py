"""Batches on the local engine: one CSV per video + manifest, failures isolated, resume, worker processes.

Every test runs the real engine (spawned worker processes) with the real ActionDetector on a tiny SlowFast,
precomputed boxes and short lossless videos.
"""
import contextlib
import fcntl
import functools
import io
import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path

import pytest

from ava_pipeline.batch import LOCK_NAME, run_batch
from ava_pipeline.batch.manifest import MANIFEST_NAME, Manifest
from ava_pipeline.checksums import file_sha256
from ava_pipeline.batch.work import DetectionWork, VideoProcessor
from ava_pipeline.cli.detect import find_videos, main
from ava_pipeline.errors import ConfigError, DependencyMissingError, InputFormatError
from ava_pipeline.pipeline import ActionDetector
from ava_pipeline.writers import write_csv

from tests.batch_fixtures import (FAILING, VIDEO_FRAMES, csv_files, detect_subprocess, kill_after_first_output,
                                  make_batch_inputs, manifest_statuses, read_manifest, temporaries)
from tests.pipeline_fixtures import damaged_tail

@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return make_batch_inputs(tmp_path_factory.mktemp("batch"))


@pytest.fixture(scope="module")
def reference(inputs, tmp_path_factory):
    """An uninterrupted batch of the test folder through ``ava-detect`` (one worker): (out, status, stderr)."""
    out = tmp_path_factory.mktemp("reference") / "out"
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        status = main([str(inputs["movies"]), "--out", str(out), *inputs["cli_model"], "--workers", "1", "--quiet"])
    return out, status, stderr.getvalue()


@pytest.mark.subprocess
def test_batch_writes_every_good_video_records_failures_and_exits_1(inputs, reference):
    out, status, stderr = reference
    assert status == 1
    files = csv_files(out)
    assert sorted(files) == ["a.csv", "b.csv", "season1/c.csv", "season1/d.csv"]
    detector = ActionDetector(**inputs["settings"])
    write_csv(detector.stream(inputs["movies"] / "season1" / "d.mkv"), out.parent / "d_alone.csv")
    assert files["season1/d.csv"] == (out.parent / "d_alone.csv").read_bytes()
    manifest = read_manifest(out)
    fingerprint = json.loads(json.dumps(detector.fingerprint()))
    assert manifest["schema"] == 1 and len(manifest["settings"]) == 1
    assert list(manifest["settings"].values())[0]["detector"] == fingerprint
    assert sorted(manifest["videos"]) == ["a", "b", "corrupt", "fake", "season1/c", "season1/d"]
    for name in VIDEO_FRAMES:
        entry = manifest["videos"][name]
        assert entry["status"] == "done" and entry["error"] is None and entry["attempts"] == 1
        assert entry["output"] == f"{name}.csv" and entry["output_sha256"] == file_sha256(out / entry["output"])
        assert entry["source"] == str(inputs["movies"] / f"{name}.mkv")
        assert entry["weights_sha256"] == fingerprint["weights_sha256"] and entry["decoder"] == fingerprint["decoder"]
        assert entry["keyframes"] == (3 if VIDEO_FRAMES[name] > 90 else 2) == entry["persons"]
        assert entry["timings"]["process"] > 0 and entry["timings"]["write"] >= 0
    for name in FAILING:
        entry = manifest["videos"][name]
        assert entry["status"] == "failed" and entry["attempts"] == 1 and entry["output"] is None
        assert str(inputs["movies"]) in entry["error"] and entry["error_type"]
    errors = stderr.strip().splitlines()
    assert len(errors) == 2 and all(line.startswith("ava-detect: error: ") for line in errors)
    assert sorted(name for line in errors for name in ("corrupt.mkv", "fake.mp4") if name in line) == [
        "corrupt.mkv", "fake.mp4"]
    assert not temporaries(out)


@pytest.mark.subprocess
def test_two_workers_give_identical_bytes_and_a_rerun_skips_everything(inputs, reference, tmp_path):
    out = tmp_path / "out"
    summary = run_batch(find_videos([inputs["movies"]]), out, detector_settings=inputs["settings"], workers=2,
                        quiet=True)
    assert (summary.done, summary.failed) == (4, 2)
    assert csv_files(out) == csv_files(reference[0])
    assert len({entry["worker"] for entry in read_manifest(out)["videos"].values()}) == 2
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.csv")}
    good = [(path, name) for path, name in find_videos([inputs["movies"]]) if name not in FAILING]
    again = run_batch(good, out, detector_settings=inputs["settings"], workers=2, quiet=True)
    assert (again.done, again.failed, again.skipped) == (0, 0, 4)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.csv")} == before


@pytest.mark.subprocess
def test_an_output_path_taken_by_a_folder_fails_that_video_only(inputs, reference, tmp_path):
    out = tmp_path / "out"
    (out / "b.csv").mkdir(parents=True)
    summary = run_batch(find_videos([inputs["movies"]]), out, detector_settings=inputs["settings"], quiet=True)
    assert (summary.done, summary.failed) == (3, 3)
    entry = read_manifest(out)["videos"]["b"]
    assert entry["status"] == "failed" and str(out / "b.csv") in entry["error"]
    expected = {name: data for name, data in csv_files(reference[0]).items() if name != "b.csv"}
    assert csv_files(out) == expected and (out / "b.csv").is_dir()


@pytest.mark.subprocess
def test_damaged_video_keeps_its_keyframes_before_the_damage_and_is_retried(inputs, reference, tmp_path):
    movies = tmp_path / "movies"
    movies.mkdir()
    shutil.copy(inputs["movies"] / "a.mkv", movies / "a.mkv")
    (movies / "b.mkv").write_bytes(damaged_tail((inputs["movies"] / "b.mkv").read_bytes()))
    out = tmp_path / "out"
    summary = run_batch(find_videos([movies]), out, detector_settings=inputs["settings"], quiet=True)
    assert (summary.done, summary.failed) == (1, 1)
    entry = read_manifest(out)["videos"]["b"]
    kept = [line.split(",")[1] for line in (out / "b.csv").read_text().splitlines()]
    assert entry["status"] == "failed" and entry["output"] == "b.csv" and entry["keyframes"] >= 1
    assert entry["output_sha256"] == file_sha256(out / "b.csv") and "3" not in kept
    assert entry["error"].endswith(f"the {entry['keyframes']} keyframe(s) it could produce are written to "
                                   f"{out / 'b.csv'}") and "were not produced" in entry["error"]
    reference_rows = csv_files(reference[0])["b.csv"].decode().splitlines()
    assert kept and (out / "b.csv").read_text().splitlines() == reference_rows[:len(kept)]
    again = run_batch(find_videos([movies]), out, detector_settings=inputs["settings"], quiet=True)
    assert (again.done, again.failed, again.skipped) == (0, 1, 1)


@pytest.mark.subprocess
def test_rerun_redoes_tampered_interrupted_and_leftover_outputs(inputs, reference, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(reference[0], out)
    (out / "a.csv").write_bytes((out / "a.csv").read_bytes()[:-30])  # truncated by hand: hash differs
    manifest = read_manifest(out)
    manifest["videos"]["season1/c"]["status"] = "running"  # as a killed run leaves it
    (out / MANIFEST_NAME).write_text(json.dumps(manifest))
    leftover = out / "season1" / ".d.0123abcd.tmp.csv"  # a run killed while writing d
    leftover.write_text("partial")
    summary = run_batch(find_videos([inputs["movies"]]), out, detector_settings=inputs["settings"], quiet=True)
    assert (summary.done, summary.failed, summary.skipped) == (2, 2, 2)  # failed videos are tried again
    assert csv_files(out) == csv_files(reference[0])
    assert not temporaries(out)


@pytest.mark.subprocess
def test_killed_batch_resumes_with_identical_bytes(inputs, reference, tmp_path):
    out = tmp_path / "out"
    process = detect_subprocess(inputs, out, "--workers", "1")
    kill_after_first_output(process, out)
    assert len(csv_files(out)) < 4, "the batch finished before it could be killed"
    assert any(entry["status"] == "running" for entry in read_manifest(out)["videos"].values())
    summary = run_batch(find_videos([inputs["movies"]]), out, detector_settings=inputs["settings"], quiet=True)
    assert summary.done + summary.skipped == 4 and summary.skipped >= 1 and summary.failed == 2
    assert csv_files(out) == csv_files(reference[0])
    assert not temporaries(out)


@pytest.mark.subprocess
def test_ctrl_c_stops_the_batch_with_one_line(inputs, tmp_path):
    """SIGINT to the whole process group, as a terminal's Ctrl-C sends it: the driver reports, workers stay quiet."""
    out = tmp_path / "out"
    process = detect_subprocess(inputs, out, "--workers", "2", new_session=True)
    deadline = time.monotonic() + 120
    while "running" not in manifest_statuses(out):
        assert process.poll() is None and time.monotonic() < deadline, process.stderr.read().decode()
        time.sleep(0.02)
    time.sleep(0.3)  # the workers are inside their videos
    os.killpg(process.pid, signal.SIGINT)
    assert process.wait(timeout=60) == 130
    assert process.stderr.read().decode() == "ava-detect: interrupted\n"
    assert not temporaries(out)


class CrashingWork(DetectionWork):
    """The real work, but the worker process exits (as on a segfault) on chosen videos: ``crashes[name]``
    times for that video; ``marker_dir`` counts the crashes across processes."""

    def __init__(self, *args, crashes: dict, marker_dir: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.crashes = crashes
        self.marker_dir = marker_dir

    def open(self, **kwargs):
        processor = super().open(**kwargs)
        return CrashingProcessor(processor.detector, processor.fingerprint, keyframes=processor.keyframes,
                                 render_dir=processor.render_dir, crashes=self.crashes, marker_dir=self.marker_dir)


class CrashingProcessor(VideoProcessor):
    def __init__(self, *args, crashes: dict, marker_dir: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.crashes = crashes
        self.marker_dir = Path(marker_dir)

    def __call__(self, task):
        marker = self.marker_dir / f"{task.name.replace('/', '_')}.{task.attempt}"
        if task.attempt <= self.crashes.get(task.name, 0) and not marker.exists():
            marker.touch()
            os._exit(9)
        return super().__call__(task)


@pytest.mark.subprocess
def test_dead_worker_is_replaced_and_its_video_retried_a_bounded_number_of_times(inputs, reference, tmp_path,
                                                                               capsys):
    out = tmp_path / "out"
    videos = [(inputs["movies"] / "a.mkv", "a"), (inputs["movies"] / "season1" / "c.mkv", "season1/c")]
    work = functools.partial(CrashingWork, crashes={"a": 1, "season1/c": 5}, marker_dir=str(tmp_path))
    events = []
    summary = run_batch(videos, out, detector_settings=inputs["settings"], workers=1, quiet=True, max_attempts=2,
                        work_factory=work, report=events.append)
    assert (summary.done, summary.failed) == (1, 1)
    entries = read_manifest(out)["videos"]
    assert entries["a"]["status"] == "done" and entries["a"]["attempts"] == 2
    assert entries["season1/c"]["status"] == "failed" and entries["season1/c"]["attempts"] == 2
    assert "died (exit code 9) on each of 2 attempts" in entries["season1/c"]["error"]
    assert sorted(p.name for p in tmp_path.glob("*.[12]")) == ["a.1", "season1_c.1", "season1_c.2"]
    assert csv_files(out) == {"a.csv": csv_files(reference[0])["a.csv"]}
    assert capsys.readouterr().err == ""  # the library reports events; printing is the command line's job
    assert type(events[0]).__name__ == "BatchStarted" and (events[0].to_process, events[0].skipped) == (2, 0)
    failed = [event for event in events[1:] if event.status == "failed"]
    assert [event.name for event in failed] == ["season1/c"] and "season1/c.mkv" in failed[0].error


def test_changed_settings_or_missing_output_mean_not_done(tmp_path):
    output = tmp_path / "v.csv"
    output.write_text("v,1,0.1,0.1,0.5,0.5,1,0.500000\n")
    manifest = Manifest(tmp_path, {"detector": {"weights_sha256": "aa"}, "min_score": None}, tool="test")
    manifest.record("v", {"status": "done", "output": "v.csv", "output_sha256": file_sha256(output)})
    manifest.save()
    assert Manifest(tmp_path, {"detector": {"weights_sha256": "aa"}, "min_score": None}, tool="test").is_done(
        "v", output, None)
    assert not Manifest(tmp_path, {"detector": {"weights_sha256": "bb"}, "min_score": None}, tool="test").is_done(
        "v", output, None)
    assert not Manifest(tmp_path, {"detector": {"weights_sha256": "aa"}, "min_score": 0.1}, tool="test").is_done(
        "v", output, None)
    assert not manifest.is_done("v", output, tmp_path / "v.mp4")  # a rendering was asked for and is missing
    output.unlink()
    assert not manifest.is_done("v", output, None)


def test_usage_errors_name_the_problem(inputs, tmp_path, monkeypatch):
    videos = find_videos([inputs["movies"]])
    settings = inputs["settings"]
    with pytest.raises(ConfigError, match="unknown engine 'spark'"):
        run_batch(videos, tmp_path / "o1", detector_settings=settings, engine="spark")
    with pytest.raises(ConfigError, match="would both write a.csv"):
        run_batch(videos + [(inputs["movies"] / "b.mkv", "a")], tmp_path / "o2", detector_settings=settings)
    locked = tmp_path / "o3"
    locked.mkdir()
    with open(locked / LOCK_NAME, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(ConfigError, match="another ava-detect run is writing into this folder"):
            run_batch(videos, locked, detector_settings=settings)
    broken = tmp_path / "o4"
    broken.mkdir()
    (broken / MANIFEST_NAME).write_text("{ not json")
    with pytest.raises(InputFormatError, match=f"{broken / MANIFEST_NAME}: cannot read the batch manifest"):
        run_batch(videos, broken, detector_settings=settings)
    for text in ('[1, 2]', '{"schema": 1, "videos": {"a": "done"}}'):
        (broken / MANIFEST_NAME).write_text(text)
        with pytest.raises(InputFormatError, match=f"{broken / MANIFEST_NAME}: not a schema-1 ava-pipeline manifest"):
            run_batch(videos, broken, detector_settings=settings)
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    with pytest.raises(DependencyMissingError, match=r"pip install 'ava-pipeline\[ray\]'"):
        run_batch(videos, tmp_path / "o5", detector_settings=settings, engine="ray")


class OtherWeightsWork(DetectionWork):
    """The driver believes in other weights than the workers load (as on a Ray node with another file)."""

    def fingerprint(self):
        return {**super().fingerprint(), "weights_sha256": "0" * 64}


@pytest.mark.subprocess
def test_worker_with_other_model_than_the_driver_stops_the_batch(inputs, tmp_path):
    videos = [(inputs["movies"] / "a.mkv", "a")]
    with pytest.raises(ConfigError, match=r"its model differs from the driver's in \['weights_sha256'\]"):
        run_batch(videos, tmp_path / "out", detector_settings=inputs["settings"], workers=1, quiet=True,
                  work_factory=OtherWeightsWork)
    assert not list((tmp_path / "out").glob("*.csv"))


def output_files(folder: Path) -> dict:
    """Relative path -> bytes of every JSONL and CSV under ``folder`` (detections and segments)."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.suffix in (".jsonl", ".csv") and p.is_file()}


def test_folder_mode_with_tracks_writes_a_segments_file_per_video_and_resumes(inputs, tmp_path):
    out = tmp_path / "out"
    args = [str(inputs["movies"]), "--out", str(out), *inputs["cli_model"], "--format", "jsonl", "--tracks",
            "--segment-thresh", "0.45", "--workers", "2", "--quiet"]
    assert main(args) == 1  # the corrupt and fake videos fail
    files = output_files(out)
    good = sorted(VIDEO_FRAMES)
    assert sorted(name for name in files if name.startswith("segments/")) == [f"segments/{n}.csv" for n in good]
    for name in good:
        records = [json.loads(line) for line in files[f"{name}.jsonl"].decode().splitlines()]
        assert all(isinstance(p["person_id"], int) for r in records for p in r["persons"])
        header, *rows = files[f"segments/{name}.csv"].decode().splitlines()
        assert header == "video_id,person_id,action_id,action_name,start,end,peak_score,mean_score" and rows
    written = {p.relative_to(out).as_posix(): p.stat().st_mtime_ns for p in out.rglob("*.jsonl")}
    (out / "segments" / "a.csv").unlink()  # a missing segments file: that video is redone, the others skipped
    assert main(args) == 1
    assert output_files(out) == files
    assert [name for name, ns in written.items() if (out / name).stat().st_mtime_ns != ns] == ["a.jsonl"]

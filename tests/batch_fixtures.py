"""The test folder of batch tests (tiny model, good, corrupt and fake videos, box file), and helpers to read a
batch's outputs and to run ``ava-detect`` on it in a subprocess."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from ava_pipeline.batch.manifest import MANIFEST_NAME
from tests.pipeline_fixtures import textured_frames, write_boxes, write_lossless_video, write_tiny_model

REPO = Path(__file__).resolve().parent.parent
VIDEO_FRAMES = {"a": 75, "b": 105, "season1/c": 60, "season1/d": 90}
"""Output name -> frame count of the good test videos (30 fps, 80x60, lossless); longest first is b, d, a, c."""
FAILING = ("corrupt", "fake")


def make_batch_inputs(folder: Path) -> dict:
    """A tiny model, the :data:`VIDEO_FRAMES` videos under ``folder/movies`` and a box file for them, plus
    ``corrupt.mkv`` (a truncated video), ``fake.mp4`` (text) and ``notes.txt`` (not named like a video)."""
    config, weights = write_tiny_model(folder / "model")
    movies = folder / "movies"
    rows = []
    for seed, (name, frames) in enumerate(VIDEO_FRAMES.items()):
        path = movies / f"{name}.mkv"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_lossless_video(path, textured_frames(frames, seed=seed))
        stem = Path(name).name
        rows += [(stem, 1, "0.100", "0.150", "0.500", "0.950", 0.95),
                 (stem, 2, "0.400", "0.100", "0.900", "0.900", 0.9)]
        if frames > 90:
            rows.append((stem, 3, "0.050", "0.050", "0.300", "0.600", 0.8))
    rows += [("corrupt", 1, "0.1", "0.1", "0.5", "0.5", 0.9), ("fake", 1, "0.1", "0.1", "0.5", "0.5", 0.9)]
    boxes = folder / "boxes.csv"
    write_boxes(boxes, rows)
    (movies / "corrupt.mkv").write_bytes((movies / "a.mkv").read_bytes()[:600])
    (movies / "fake.mp4").write_text("this is not a video\n")
    (movies / "notes.txt").write_text("not a video either, and not named like one\n")
    settings = dict(config=str(config), weights=str(weights), boxes=str(boxes), device="cpu")
    cli_model = ["--config", str(config), "--weights", str(weights), "--boxes", str(boxes)]
    return {"folder": folder, "movies": movies, "settings": settings, "cli_model": cli_model}


def csv_files(folder: Path) -> dict:
    """Relative path -> bytes of every CSV under ``folder``."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*.csv")) if p.is_file()}


def temporaries(folder: Path) -> list:
    return [p for p in folder.rglob("*") if ".tmp" in p.name]


def read_manifest(folder: Path) -> dict:
    return json.loads((folder / MANIFEST_NAME).read_text())


def manifest_statuses(folder: Path) -> set:
    """The statuses the manifest of ``folder`` records now (empty before the batch saved one)."""
    if not (folder / MANIFEST_NAME).exists():
        return set()
    return {entry["status"] for entry in read_manifest(folder)["videos"].values()}


def detect_subprocess(inputs: dict, out: Path, *extra: str, new_session: bool = False) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, "-m", "ava_pipeline.cli.detect", str(inputs["movies"]), "--out",
                             str(out), *inputs["cli_model"], "--quiet", *extra], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=new_session)


def kill_after_first_output(process: subprocess.Popen, out: Path, timeout_s: float = 120) -> None:
    """SIGKILL ``process`` once its manifest records a finished video while another one is running.

    The manifest, not the CSV files, is the signal: a CSV's temporary file (``.a.<id>.tmp.csv``) exists while
    it is written, and a renamed CSV precedes the manifest entry that makes it count as done on resume.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        assert process.poll() is None, process.stderr.read().decode()
        assert time.monotonic() < deadline, "no video was recorded as done"
        if {"done", "running"} <= manifest_statuses(out):
            break
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()

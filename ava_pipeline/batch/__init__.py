"""Batches of videos: one output file per video plus ``manifest.json``, resumable, on local processes or Ray.

::

    run_batch(videos, out_dir) ── skip videos done with the same settings (manifest + output sha256)
        │
        ├─ engine "local": LocalEngine, worker processes on this machine (batch/local.py)
        └─ engine "ray":   RayEngine, actors on a Ray cluster (batch/ray_engine.py)
                │  each worker opens DetectionWork once (models loaded once), runs one video at a time
                ▼
        driver (this process): writes each video's CSV / JSONL atomically, then the manifest (batch/manifest.py)

Only the driver writes detection files and the manifest, so nothing races and both engines produce the
same bytes. A video that fails (corrupt, unreadable, no boxes for it) is recorded as failed and printed on
stderr as one line naming the file; the batch goes on. A video damaged partway is failed too, but its file
holds the keyframes decoded before the damage. A worker that dies is replaced and its video retried
a bounded number of times. Interrupted runs leave ``running`` entries, which the next run redoes; leftover
temporary files are removed when a run starts.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

from ..errors import ConfigError
from .local import Dispatched, LocalEngine
from ..checksums import file_sha256
from .manifest import STATUS_DONE, STATUS_FAILED, Manifest, utc_time
from ..tracking import SEGMENT_GAP, SEGMENT_THRESH
from .work import DetectionWork, VideoOutcome, VideoTask, error_line

ENGINES = ("local", "ray")
LOCK_NAME = ".ava-detect.lock"
_TEMPORARY = re.compile(r"^\..+\.[0-9a-f]{8}\.tmp(\.[A-Za-z0-9]+)?$")  # writers.atomic_output's names


@dataclass(frozen=True)
class BatchSummary:
    """Counts of one run: videos ``done`` / ``failed`` in this run, ``skipped`` (done before with the same
    settings); ``keyframes`` and ``persons`` of the videos done in this run; wall ``seconds``."""

    done: int
    failed: int
    skipped: int
    keyframes: int
    persons: int
    seconds: float


@dataclass(frozen=True)
class BatchStarted:
    """Reported once, before the first video: ``to_process`` videos, ``skipped`` already done, the engine."""

    to_process: int
    skipped: int
    engine: str


@dataclass(frozen=True)
class VideoFinished:
    """Reported per video: its output ``name``, ``status`` (``done`` / ``failed``) and the ``error`` line (or
    None)."""

    name: str
    status: str
    error: Optional[str]


BatchEvent = Union[BatchStarted, VideoFinished]


def available_cpus() -> int:
    """CPUs this process may run on (affinity / container limits), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def local_layout(device: str, workers: Optional[int]) -> tuple[list[Optional[str]], int]:
    """Per-worker devices and torch threads per worker for the local engine.

    ``cuda``: one worker per visible GPU (``cuda:i``), or ``workers`` spread over them round-robin;
    ``cuda:N`` or ``cpu``: ``workers`` (default 1) on that device. CPU threads are split evenly.
    """
    if device == "cuda":
        import torch

        gpus = torch.cuda.device_count()
        if gpus == 0:
            raise ConfigError("--device cuda: no CUDA device is visible; use --device cpu")
        devices: list[Optional[str]] = [f"cuda:{i % gpus}" for i in range(workers or gpus)]
    else:
        devices = [None] * (workers or 1)
    return devices, max(1, available_cpus() // len(devices))


def _lock(out_dir: Path):
    """Hold an exclusive lock on ``out_dir`` for this process's lifetime (released on exit, even on kill)."""
    handle = open(out_dir / LOCK_NAME, "a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise ConfigError(f"{out_dir}: another ava-detect run is writing into this folder (it holds "
                          f"{out_dir / LOCK_NAME}); wait for it to end or choose another --out") from None
    return handle


def remove_temporaries(folder: Path) -> int:
    """Delete temporary files an interrupted run left under ``folder``; returns how many."""
    removed = 0
    for current, _, files in os.walk(folder):
        for name in files:
            if _TEMPORARY.match(name):
                (Path(current) / name).unlink(missing_ok=True)
                removed += 1
    return removed


def _make_engine(engine: str, work: DetectionWork, *, device: str, workers: Optional[int],
                 ray_address: Optional[str], max_attempts: int, quiet: bool):
    if engine == "local":
        devices, threads = local_layout(device, workers)
        return LocalEngine(work, devices=devices, threads=threads, max_attempts=max_attempts)
    from .ray_engine import RayEngine

    return RayEngine(work, address=ray_address, on_gpu=device.startswith("cuda"), workers=workers,
                     max_attempts=max_attempts, log_to_driver=not quiet)


def run_batch(videos: Sequence[tuple[Path, str]], out_dir: Path, *, detector_settings: dict,
              output_format: str = "csv", min_score: Optional[float] = None, render_dir: Optional[Path] = None,
              engine: str = "local", workers: Optional[int] = None, ray_address: Optional[str] = None,
              quiet: bool = False, max_attempts: int = 3,
              work_factory: Callable[..., DetectionWork] = DetectionWork, segments_dir: Optional[Path] = None,
              segment_thresh: float = SEGMENT_THRESH, segment_gap: int = SEGMENT_GAP,
              report: Optional[Callable[[BatchEvent], None]] = None) -> BatchSummary:
    """Detect actions in ``videos`` and write ``out_dir/<name><suffix>`` per video plus ``manifest.json``.

    ``videos``: ``(absolute path, output name)`` pairs; the name is the output path relative to ``out_dir``
    without suffix (``season1/ep02``; the suffix of ``output_format`` is appended). ``detector_settings``:
    :class:`~ava_pipeline.pipeline.ActionDetector` keyword arguments, plus optionally ``keyframes`` (a
    ``START:END[:STEP]`` spec for every video). ``render_dir``: annotated mp4 + keyframe PNGs per video
    (written by the workers; on Ray, a folder every node can reach). ``engine``: ``local`` (``workers``
    processes, default one per GPU or one using every CPU) or ``ray`` (cluster at ``ray_address``, default a
    local one). A worker that dies is retried up to ``max_attempts`` times per video. ``work_factory`` builds
    the per-video work from ``(settings, keyframes=, render_dir=)``. ``report(event)`` receives a
    :class:`BatchStarted` and then a :class:`VideoFinished` per video (progress bars, error lines); ``quiet``
    only silences the engine's own logs.

    Raises :class:`~ava_pipeline.errors.ConfigError` (bad arguments, folder in use by another run) and the
    detector's own errors when the models cannot be built; failures of single videos are only counted.

    ``segments_dir``: with tracking (``detector_settings["tracks"]``), the driver also writes each video's
    action segments CSV to ``segments_dir/<name>.csv`` (:class:`~ava_pipeline.tracking.SegmentBuilder` with
    ``segment_thresh`` and ``segment_gap``), before its detections file.
    """
    started = time.perf_counter()
    if engine not in ENGINES:
        raise ConfigError(f"unknown engine {engine!r}; use one of {list(ENGINES)}")
    from ..render import render_paths
    from ..writers import OUTPUT_SUFFIXES

    if output_format not in OUTPUT_SUFFIXES:
        raise ConfigError(f"unknown output format {output_format!r}; use one of {sorted(OUTPUT_SUFFIXES)}")
    names: dict[str, Path] = {}
    for path, name in videos:
        if name in names:
            raise ConfigError(f"{names[name]} and {path} would both write {name}{OUTPUT_SUFFIXES[output_format]}; "
                              "rename one or process them separately")
        names[name] = Path(path)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lock = _lock(out_dir)
    try:
        settings = dict(detector_settings)
        keyframes = settings.pop("keyframes", None)
        work = work_factory(settings, keyframes=keyframes, render_dir=render_dir)
        fingerprint = work.fingerprint()
        work = work.with_fingerprint(fingerprint)
        from .. import __version__

        manifest_settings = {"detector": fingerprint, "keyframes": keyframes, "output_format": output_format,
                             "min_score": min_score}
        if segments_dir is not None:
            manifest_settings["segments"] = {"folder": str(segments_dir), "thresh": segment_thresh, "gap": segment_gap}
        manifest = Manifest(out_dir, manifest_settings, tool=f"ava-pipeline {__version__}")
        for folder in (out_dir, render_dir, segments_dir):
            if folder is not None and Path(folder).is_dir():
                remove_temporaries(Path(folder))

        def output_of(name: str) -> Path:
            return out_dir / f"{name}{OUTPUT_SUFFIXES[output_format]}"

        def render_of(name: str) -> Optional[Path]:
            return None if render_dir is None else render_paths(render_dir, name)[0]

        def segments_of(name: str) -> Optional[Path]:
            return None if segments_dir is None else Path(segments_dir) / f"{name}.csv"

        tasks, skipped = [], 0
        for name, path in names.items():
            if (manifest.is_done(name, output_of(name), render_of(name))
                    and (segments_dir is None or segments_of(name).is_file())):
                skipped += 1
                continue
            tasks.append(VideoTask(name=name, path=str(path), size=path.stat().st_size if path.is_file() else 0))
        tasks.sort(key=lambda t: (-t.size, t.name))  # longest first: the last video to finish is a short one

        runner = _make_engine(engine, work, device=str(settings.get("device") or "cpu"), workers=workers,
                              ray_address=ray_address, max_attempts=max_attempts, quiet=quiet)
        report = report or (lambda event: None)
        done = failed = keyframes_done = persons_done = 0
        dispatched_at: dict[str, float] = {}
        if tasks:
            with contextlib.closing(runner.run(tasks)) as events:
                for event in events:
                    if not dispatched_at:
                        report(BatchStarted(len(tasks), skipped, runner.describe()))
                    if isinstance(event, Dispatched):
                        dispatched_at[event.task.name] = time.time()
                        manifest.mark_running(event.task.name, event.task.path, event.task.attempt)
                        manifest.save()
                        continue
                    entry = _write_outcome(event, output_of(event.task.name), render_of(event.task.name), out_dir,
                                           output_format, min_score, dispatched_at.get(event.task.name),
                                           segments=(segments_of(event.task.name), segment_thresh, segment_gap))
                    manifest.record(event.task.name, entry)
                    manifest.save()
                    if entry["status"] == STATUS_DONE:
                        done += 1
                        keyframes_done += entry["keyframes"]
                        persons_done += entry["persons"]
                    else:
                        failed += 1
                    report(VideoFinished(event.task.name, entry["status"], entry["error"]))
        return BatchSummary(done=done, failed=failed, skipped=skipped, keyframes=keyframes_done,
                            persons=persons_done, seconds=time.perf_counter() - started)
    finally:
        lock.close()


def _write_outcome(outcome: VideoOutcome, output: Path, render: Optional[Path], out_dir: Path,
                   output_format: str, min_score: Optional[float], dispatched_at: Optional[float],
                   segments: tuple) -> dict:
    """Write a finished video's detection file (atomically) and, when ``segments`` = ``(path, thresh, gap)``
    has a path, its segments CSV; return its manifest entry."""
    from ..results import damage_note
    from ..render import write_video_outputs

    fingerprint = outcome.fingerprint
    entry = {"source": outcome.task.path, "status": STATUS_FAILED, "error": outcome.error,
             "error_type": outcome.error_type, "output": None, "output_sha256": None, "render": None,
             "keyframes": 0, "persons": 0, "model": fingerprint.get("model"),
             "weights_sha256": fingerprint.get("weights_sha256"), "decoder": fingerprint.get("decoder"),
             "worker": outcome.worker, "attempts": outcome.task.attempt,
             "started": utc_time(outcome.started), "finished": utc_time(outcome.finished),
             "timings": {"queued": round(max(0.0, outcome.started - dispatched_at), 3) if dispatched_at else None,
                         **{k: round(v, 3) for k, v in outcome.timings.items()}}}
    if outcome.ok or outcome.results:  # a damaged video keeps the keyframes decoded before the damage
        start = time.perf_counter()
        try:
            segments_path, segment_thresh, segment_gap = segments
            stats = write_video_outputs(outcome.results, output, output_format=output_format, min_score=min_score,
                                        segments_path=segments_path, segment_thresh=segment_thresh,
                                        segment_gap=segment_gap)
        except OSError as exc:
            entry.update(error=error_line(str(output), exc), error_type=type(exc).__name__)
        else:
            entry.update(output=output.relative_to(out_dir).as_posix(), output_sha256=file_sha256(output),
                         keyframes=stats.keyframes, persons=stats.persons,
                         render=None if render is None else str(render))
            if outcome.ok:
                entry["status"] = STATUS_DONE
            else:
                entry["error"] = f"{outcome.error}; {damage_note(stats.keyframes, output)}"
        entry["timings"]["write"] = round(time.perf_counter() - start, 3)
    if entry["output"] is None and output.is_file():
        with contextlib.suppress(OSError):  # an older output no longer matches the manifest: remove it if we can
            output.unlink()
    return entry

"""ava-detect: AVA action detection for one video or folders of videos, written as AVA CSV or JSONL.

One video file in: ``--out`` is the output file (or an existing folder to put ``<stem>.csv`` in). Several
inputs or a folder (searched recursively): ``--out`` is a folder with one file per video, named after the
video's path relative to its input folder, plus ``manifest.json`` (see :mod:`ava_pipeline.batch`).

Exit status: 0 every video done, 1 some video failed (the others are written; a video damaged partway
keeps the keyframes before the damage), 2 usage error (bad option, missing input, unusable model / weights /
box file, an output path that is an input). Errors are one line; ``--debug`` shows the
traceback.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Optional, Sequence

from .common import (OneLineParser, UsageError, device_name, non_negative_float, non_negative_int, parse_and_run,
                     positive_int, probability, refuse_overwriting_inputs)

PROG = "ava-detect"

VIDEO_EXTENSIONS = frozenset({".mp4", ".m4v", ".mkv", ".webm", ".avi", ".mov", ".qt", ".mpg", ".mpeg", ".m2v",
                              ".ts", ".mts", ".m2ts", ".wmv", ".asf", ".flv", ".3gp", ".ogv", ".vob", ".y4m"})
"""File suffixes (lower case) taken as videos when searching folders."""


# ---------------------------------------------------------------------------------------------- validators

def keyframes_spec(text: str) -> str:
    """``START:END[:STEP]`` in seconds (END inclusive, STEP default 1; decimals or fractions like 1/2)."""
    from ..video import keyframe_schedule

    try:
        keyframe_schedule(text, 0.0)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def zoo_model_name(text: str) -> str:
    """A model-zoo name (the error suggests the closest one)."""
    from ..errors import ConfigError
    from ..weights.zoo import get_zoo_model

    try:
        return get_zoo_model(text).name
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    from ..batch import ENGINES
    from ..detector import BACKENDS
    from ..pipeline import PRECISIONS, RUNTIMES
    from ..weights.zoo import DEFAULT_MODEL, zoo_names
    from ..writers import OUTPUT_SUFFIXES

    parser = OneLineParser(prog=PROG, description=__doc__.split("\n\n")[0],
                     epilog="Exit status: 0 all done, 1 some videos failed, 2 usage error.")
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="video files and/or folders of videos")
    parser.add_argument("--out", required=True, type=Path, metavar="PATH",
                        help="output file for one video, output folder for several")
    model = parser.add_mutually_exclusive_group()
    model.add_argument("--model", metavar="NAME", type=zoo_model_name,
                       help=f"zoo model: {', '.join(zoo_names())} (default {DEFAULT_MODEL})")
    model.add_argument("--config", metavar="YAML", help="model config: ours or PySlowFast's AVA YAML unchanged")
    parser.add_argument("--weights", metavar="FILE", help="local checkpoint (.pyth/.pkl/.pt, PySlowFast, Caffe2 or "
                        "PyTorchVideo layout) instead of the config's weights")
    parser.add_argument("--detector", choices=BACKENDS,
                        help="person detector (default torchvision; --boxes implies precomputed)")
    parser.add_argument("--detector-model", metavar="NAME", help="model of the detector backend "
                        "(torchvision: e.g. fasterrcnn_resnet50_fpn_v2; detectron2: config name or YAML)")
    parser.add_argument("--detector-weights", metavar="FILE", help="local weights of the detector model "
                        "(default: its COCO weights, downloaded once)")
    parser.add_argument("--detector-size", type=positive_int, metavar="SHORT_SIDE",
                        help="resize keyframes so their short side is SHORT_SIDE pixels for the image detector "
                        "(default: the model's, 800 for the torchvision R50 models; smaller is faster and misses "
                        "more small persons; the long side stays capped at the model's maximum)")
    parser.add_argument("--detector-precision", choices=("fp32", "fp16", "bf16"), default="fp32",
                        help="torchvision detector precision: fp16/bf16 autocast is for GPUs (default fp32)")
    parser.add_argument("--boxes", metavar="CSV", help="precomputed person boxes, AVA CSV "
                        "(video_id,timestamp,x1,y1,x2,y2,[label],score); video_id is the video's file stem")
    parser.add_argument("--box-thresh", type=probability, metavar="F",
                        help="drop person boxes scored below F (default: the model's threshold)")
    parser.add_argument("--keyframes", type=keyframes_spec, metavar="START:END[:STEP]",
                        help="keyframe times in seconds, END inclusive (default: the box file's keyframes with "
                        "--boxes, else every second where a full clip fits)")
    parser.add_argument("--device", type=device_name, default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    parser.add_argument("--batch-size", type=positive_int, default=8, metavar="N",
                        help="keyframes per action-model forward pass (default 8)")
    parser.add_argument("--precision", choices=tuple(PRECISIONS), default="fp32",
                        help="action-model precision: fp16/bf16 autocast is for GPUs (default fp32)")
    parser.add_argument("--no-fast", action="store_true",
                        help="run the eager models instead of the fast inference paths of the action model and "
                        "the torchvision detector (which give the same numbers within float32 rounding)")
    parser.add_argument("--runtime", choices=RUNTIMES,
                        help="what runs the action model: torch (default) or onnxruntime on the --onnx file")
    parser.add_argument("--onnx", metavar="FILE", help="action model exported by ava-export (implies --runtime "
                        "onnx; its config and weights come from the file)")
    parser.add_argument("--format", dest="output_format", choices=tuple(OUTPUT_SUFFIXES),
                        help="csv: AVA rows per box and action; jsonl: one object per keyframe; proposals: AVA "
                        "box rows per person (default: jsonl for an --out file ending .jsonl, else csv; "
                        "proposals with --persons-only)")
    parser.add_argument("--min-score", type=probability, metavar="F", help="omit actions scored below F")
    parser.add_argument("--persons-only", action="store_true",
                        help="run the person detector alone and write its boxes as AVA proposal rows "
                        "(video_id,timestamp,x1,y1,x2,y2,,score: the format of --boxes and ava-train --proposals)")
    parser.add_argument("--render", type=Path, metavar="DIR",
                        help="also write an annotated mp4 per video and a PNG per keyframe into DIR")
    tracks = parser.add_argument_group("person tracks and action segments")
    tracks.add_argument("--tracks", action="store_true",
                        help="give every person box a person_id that stays with the person across keyframes "
                        "(in JSONL, in --render pictures and in segments; the CSV keeps AVA's 8 columns)")
    tracks.add_argument("--segments", nargs="?", const=True, type=Path, metavar="PATH",
                        help="with --tracks, write action segments (one row per person, action and time span): "
                        "one video: to the CSV file PATH (default <out>_segments.csv); several videos: one CSV per "
                        "video under the folder PATH (default <out>/segments/), which folder mode always writes")
    tracks.add_argument("--segment-thresh", type=probability, metavar="F",
                        help="a segment spans the keyframes where the action's score is at least F (default 0.5)")
    tracks.add_argument("--segment-gap", type=non_negative_int, metavar="N",
                        help="up to N keyframes below the threshold inside a span do not cut it (default 1)")
    tracks.add_argument("--smooth-scores", type=positive_int, metavar="K",
                        help="replace each box's scores by the mean of its person's scores over the K keyframes "
                        "centred on it (changes the AVA CSV too; default 1: off)")
    tracks.add_argument("--track-max-missed", type=non_negative_int, metavar="N",
                        help="a person unseen for up to N keyframes keeps its id (default 2)")
    tracks.add_argument("--track-confirm-hits", type=positive_int, metavar="N",
                        help="a new track is confirmed after N keyframes in a row; unconfirmed ones end at their "
                        "first miss (default 1: at birth; 2 for detectors with one-off false boxes)")
    tracks.add_argument("--track-appearance-weight", type=non_negative_float, metavar="W",
                        help="weight of the appearance cost (the action head's RoI features) against motion; "
                        "0: motion only (default 0.3)")
    parser.add_argument("--engine", choices=ENGINES, default="local",
                        help="several videos: local worker processes or a Ray cluster")
    parser.add_argument("--workers", type=positive_int, metavar="N", help="parallel videos (default: engine's)")
    parser.add_argument("--ray-address", metavar="ADDR", help="Ray cluster address (default: start a local one)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars, no summary")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser


# ---------------------------------------------------------------------------------------- video discovery

def _is_under(path: Path, folder: Optional[Path]) -> bool:
    return folder is not None and (path == folder or folder in path.parents)


def find_videos(inputs: Sequence[str | Path], *, exclude: Sequence[Path] = ()) -> list[tuple[Path, str]]:
    """Videos named by ``inputs`` as ``(absolute path, output name)``, in input order, folders sorted.

    Folders are searched recursively for files with a :data:`VIDEO_EXTENSIONS` suffix (hidden files and
    folders, and anything under ``exclude``, are skipped). The output name is the path relative to its input
    folder without suffix (``season1/ep02``), or the file stem for files given directly; when two videos
    would share a name, both keep their suffix (``clip.mp4``, ``clip.mkv``). Raises :class:`UsageError` for
    a missing input or a folder without videos.
    """
    excluded = [Path(os.path.abspath(p)) for p in exclude]
    found: list[tuple[Path, str, str]] = []  # (path, name without suffix, name with suffix)
    for given in inputs:
        root = Path(os.path.abspath(given))
        if root.is_file():
            found.append((root, root.stem, root.name))
        elif root.is_dir():
            videos = []
            for current, folders, files in os.walk(root):
                folders[:] = sorted(f for f in folders if not f.startswith(".")
                                    and not any(_is_under(Path(current) / f, e) for e in excluded))
                for name in sorted(files):
                    path = Path(current) / name
                    if not name.startswith(".") and path.suffix.lower() in VIDEO_EXTENSIONS:
                        relative = path.relative_to(root)
                        videos.append((path, relative.with_suffix("").as_posix(), relative.as_posix()))
            if not videos:
                raise UsageError(f"{given}: no video files found in this folder (looked for "
                                 f"{', '.join(sorted(VIDEO_EXTENSIONS))})")
            found.extend(videos)
        else:
            raise UsageError(f"{given}: no such file or folder")
    unique, seen = [], set()
    for item in found:  # a video named twice (file and its folder) is processed once
        if item[0] not in seen:
            seen.add(item[0])
            unique.append(item)
    stems = Counter(name for _, name, _ in unique)
    named = [(path, name if stems[name] == 1 else full) for path, name, full in unique]
    clashes = [name for name, count in Counter(name for _, name in named).items() if count > 1]
    if clashes:
        raise UsageError(f"several inputs would write the same output {clashes[0]!r}; "
                         "rename one or process them separately")
    return named


# ------------------------------------------------------------------------------------------------- running

def detector_settings(args: argparse.Namespace) -> dict:
    """Keyword arguments of :class:`ava_pipeline.ActionDetector` from the command line."""
    options = {key: value for key, value in (("model", args.detector_model), ("weights", args.detector_weights),
                                             ("input_min_size", args.detector_size)) if value is not None}
    if args.boxes is None and args.detector in (None, "torchvision"):
        if args.no_fast:
            options["fast"] = False
        if args.detector_precision != "fp32":
            options["precision"] = args.detector_precision
    settings = dict(model=args.model, config=args.config, weights=args.weights, detector=args.detector,
                    boxes=args.boxes, box_thresh=args.box_thresh, detector_options=options, device=args.device,
                    batch_size=args.batch_size, keyframes=args.keyframes, precision=args.precision,
                    persons_only=args.persons_only, runtime=args.runtime or ("onnx" if args.onnx else "torch"),
                    onnx=args.onnx, fast=not args.no_fast)
    if args.tracks:
        settings["tracks"] = {key: value for key, value in (
            ("smooth_scores", args.smooth_scores), ("max_missed", args.track_max_missed),
            ("confirm_hits", args.track_confirm_hits), ("appearance_weight", args.track_appearance_weight))
            if value is not None}
    return settings


TRACK_OPTIONS = ("segments", "segment_thresh", "segment_gap", "smooth_scores", "track_max_missed",
                 "track_confirm_hits", "track_appearance_weight")
"""Options that only mean something with ``--tracks``."""


def segment_settings(args: argparse.Namespace) -> dict:
    """``segment_thresh`` and ``segment_gap`` of the command line (their defaults when not given)."""
    from ..tracking import SEGMENT_GAP, SEGMENT_THRESH

    return {"segment_thresh": SEGMENT_THRESH if args.segment_thresh is None else args.segment_thresh,
            "segment_gap": SEGMENT_GAP if args.segment_gap is None else args.segment_gap}


def _segments_file(args: argparse.Namespace, out: Path) -> Optional[Path]:
    """The segments CSV of a one-video run: ``--segments PATH``, ``<out>_segments.csv`` for a bare
    ``--segments``, None without it."""
    if args.segments is None:
        return None
    return out.with_name(f"{out.stem}_segments.csv") if args.segments is True else args.segments


def _segments_folder(args: argparse.Namespace) -> Optional[Path]:
    """Where a folder run puts a segments CSV per video: ``--segments PATH`` or ``<out>/segments``; None
    without ``--tracks``."""
    if not args.tracks:
        return None
    return args.out / "segments" if args.segments in (None, True) else args.segments


def _check_usage(args: argparse.Namespace) -> None:
    if args.persons_only:
        given = [option for option, value in (("--boxes", args.boxes), ("--weights", args.weights),
                                              ("--min-score", args.min_score), ("--tracks", args.tracks or None))
                 if value is not None]
        if given:
            raise UsageError(f"--persons-only runs the person detector alone; drop {' and '.join(given)}")
    if not args.tracks:
        given = [f"--{name.replace('_', '-')}" for name in TRACK_OPTIONS if getattr(args, name) is not None]
        if given:
            raise UsageError(f"{', '.join(given)} work(s) on person tracks; add --tracks")
    if args.boxes is not None and args.detector_size is not None:
        raise UsageError(f"--detector-size {args.detector_size} resizes images for an image detector, but --boxes "
                         f"{args.boxes} gives precomputed boxes; drop one of them")
    if args.detector_precision != "fp32" and (args.boxes is not None or args.detector not in (None, "torchvision")):
        raise UsageError(f"--detector-precision {args.detector_precision} applies to the torchvision detector "
                         "only; drop it")
    if args.no_fast and args.precision != "fp32":
        raise UsageError(f"--precision {args.precision} runs through the fast inference path; drop --no-fast")
    if args.boxes is not None and not Path(args.boxes).is_file():
        raise UsageError(f"{args.boxes}: box file not found")
    if args.runtime == "onnx" and args.onnx is None:
        raise UsageError("--runtime onnx needs --onnx FILE (the action model written by ava-export)")
    if args.runtime == "torch" and args.onnx is not None:
        raise UsageError(f"--onnx {args.onnx} is run by onnxruntime; drop --runtime torch or --onnx")
    for option, path in (("--weights", args.weights), ("--detector-weights", args.detector_weights),
                         ("--onnx", args.onnx)):
        if path is not None and not Path(path).is_file():
            raise UsageError(f"{option} {path}: file not found")
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise UsageError(f"--device {args.device}: CUDA is not available on this machine; use --device cpu")
        index = int(args.device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise UsageError(f"--device {args.device}: only {torch.cuda.device_count()} CUDA device(s) visible")


def _single_output(args: argparse.Namespace, video: Path) -> Path:
    """The detections file of a one-video run: ``--out``, or ``<stem>.<format>`` in an existing ``--out`` folder."""
    from ..writers import OUTPUT_SUFFIXES

    if args.out.is_dir():
        return args.out / f"{video.stem}{OUTPUT_SUFFIXES[args.output_format]}"
    return args.out


def _writable_folder(option: str, folder: Path) -> None:
    """Raise :class:`UsageError` unless ``folder`` is, or can be created as, a writable folder (its nearest
    existing ancestor is a writable folder); nothing is created here."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"{option}: cannot create the folder {folder} ({existing} is a file); choose a path in a "
                         "folder you can write to")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"{option}: the folder {existing} is not writable; choose a folder you can write to")


def _check_outputs(args: argparse.Namespace, videos: list[tuple[Path, str]], single: bool) -> None:
    """Refuse a run that would overwrite one of its inputs, whose videos would read each other's rows of a
    box file, or whose output folders cannot be written; checked before any model is built, so a mistyped
    option costs nothing and destroys nothing."""
    from ..render import render_paths
    from ..writers import OUTPUT_SUFFIXES

    inputs = [(f"the input video {path}", path) for path, _ in videos]
    inputs += [(f"the --{option.replace('_', '-')} file {getattr(args, option)}", getattr(args, option))
               for option in ("boxes", "config", "weights", "detector_weights", "onnx")
               if getattr(args, option) is not None]
    names = [(video.stem, _single_output(args, video)) for video, _ in videos] if single else [
        (name, args.out / f"{name}{OUTPUT_SUFFIXES[args.output_format]}") for _, name in videos]
    outputs = [("--out", output) for _, output in names]
    if args.tracks:
        segments = ([("--segments", _segments_file(args, output)) for _, output in names] if single else
                    [("--segments", _segments_folder(args) / f"{name}.csv") for name, _ in names])
        outputs += [(option, path) for option, path in segments if path is not None]
    if args.render is not None:
        outputs += [("--render", render_paths(args.render, name)[0]) for name, _ in names]
    refuse_overwriting_inputs(outputs, inputs)
    if args.boxes is not None:  # precomputed boxes are looked up by file stem
        first_of_stem: dict[str, Path] = {}
        for video, _ in videos:
            other = first_of_stem.setdefault(video.stem, video)
            if other != video:
                raise UsageError(f"{other} and {video} share the video id {video.stem!r} that keys their rows in "
                                 f"--boxes {args.boxes}; rename one or process them separately")
    if not single and args.out.exists() and not args.out.is_dir():
        raise UsageError(f"--out {args.out}: is a file; several videos need an output folder")
    _writable_folder("--out", args.out.parent if single and not args.out.is_dir() else args.out)
    if args.tracks and args.segments is not None:
        segments = _segments_file(args, _single_output(args, videos[0][0])) if single else _segments_folder(args)
        if single and segments.is_dir():
            raise UsageError(f"--segments {segments}: is a folder; one video's segments go to a CSV file")
        if not single and (segments.is_file() or segments.suffix.lower() == ".csv"):
            raise UsageError(f"--segments {segments}: several videos write one segments CSV each into a folder; "
                             "give a folder, or --segments alone for <out>/segments/")
        _writable_folder("--segments", segments.parent if single else segments)
    if args.render is not None:
        _writable_folder("--render", args.render)


def _show_progress(args) -> bool:
    return not args.quiet and sys.stderr.isatty()


def _summary_line(done: int, failed: int, skipped: int, keyframes: int, persons: int, seconds: float) -> str:
    per_keyframe = f"{seconds / keyframes:.3f} s/keyframe" if keyframes else "no keyframes"
    skipped_text = f", {skipped} skipped (already done)" if skipped else ""
    return (f"{PROG}: {done} video(s) done, {failed} failed{skipped_text}; {keyframes} keyframes, "
            f"{persons} persons, {seconds:.1f} s, {per_keyframe}")


def _error_line(path: Path, exc: BaseException) -> str:
    """``ava-detect: error: <message>`` on one line, naming ``path`` when the message does not."""
    from ..batch.work import error_line

    return f"{PROG}: error: {error_line(str(path), exc)}"


def _run_single(args, video: Path) -> int:
    from ..pipeline import ActionDetector
    from ..results import KeptBeforeDamage, damage_note
    from ..render import write_video_outputs

    out = _single_output(args, video)
    detector = ActionDetector(**detector_settings(args))  # a bad model / weights / box file: exit status 2
    bar = None
    if _show_progress(args):
        from tqdm import tqdm

        bar = tqdm(desc=video.name, unit="keyframe", file=sys.stderr, dynamic_ncols=True)

    def advance(result):
        if bar is not None:
            bar.total = result.num_keyframes
            bar.update(1)

    started = time.perf_counter()
    stats, error = None, None
    results = KeptBeforeDamage(detector.stream(video))
    try:
        stats = write_video_outputs(results, out, output_format=args.output_format, min_score=args.min_score,
                                    render_dir=args.render, render_name=video.stem, video_path=video,
                                    on_keyframe=advance, segments_path=_segments_file(args, out),
                                    **segment_settings(args))
    except Exception as exc:  # the video failed: one line naming it, exit status 1
        if args.debug:
            raise
        error = _error_line(video, exc)
    else:
        if results.error is not None:
            if args.debug:  # the keyframes it could produce are written; show where the rest were lost
                raise results.error
            error = f"{_error_line(video, results.error)}; {damage_note(stats.keyframes, out)}"
    finally:
        if bar is not None:
            bar.close()
    if error is not None:
        print(error, file=sys.stderr)
    if not args.quiet:
        print(_summary_line(int(error is None), int(error is not None), 0, stats.keyframes if stats else 0,
                            stats.persons if stats else 0, time.perf_counter() - started), file=sys.stderr)
    return 0 if error is None else 1


class _BatchReport:
    """Prints a batch's events: the start line and per-video error lines, with a progress bar in videos on an
    interactive stderr (plain lines otherwise); ``quiet`` keeps only the error lines."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self._bar = None

    def __call__(self, event) -> None:
        from ..batch import BatchStarted

        if isinstance(event, BatchStarted):
            if self.quiet:
                return
            if sys.stderr.isatty():
                from tqdm import tqdm

                self._bar = tqdm(total=event.to_process, unit="video", file=sys.stderr, dynamic_ncols=True)
            self._write(f"{PROG}: {event.to_process} video(s) to process, {event.skipped} already done; "
                        f"{event.engine}")
            return
        if event.error is not None:
            self._write(f"{PROG}: error: {event.error}")
        if self._bar is not None:
            self._bar.update(1)

    def _write(self, line: str) -> None:
        if self._bar is not None:
            self._bar.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _run_batch(args, videos: list[tuple[Path, str]]) -> int:
    from ..batch import run_batch

    report = _BatchReport(args.quiet)
    try:
        summary = run_batch(videos, args.out, detector_settings=detector_settings(args),
                            output_format=args.output_format, min_score=args.min_score, render_dir=args.render,
                            engine=args.engine, workers=args.workers, ray_address=args.ray_address, quiet=args.quiet,
                            report=report, segments_dir=_segments_folder(args),
                            **segment_settings(args))
    finally:
        report.close()
    if not args.quiet:
        print(_summary_line(summary.done, summary.failed, summary.skipped, summary.keyframes, summary.persons,
                            summary.seconds), file=sys.stderr)
    return 1 if summary.failed else 0


def run(args: argparse.Namespace) -> int:
    """Run a parsed command line; returns the exit status. Raises :class:`UsageError` (or another
    :class:`AvaPipelineError`) when nothing can be processed."""
    _check_usage(args)
    videos = find_videos(args.inputs, exclude=[p for p in (args.out, args.render) if p is not None])
    single = len(args.inputs) == 1 and Path(args.inputs[0]).is_file()
    if args.output_format is None:  # one video's output file named .jsonl gets JSONL; anything else CSV
        jsonl = single and args.out.suffix.lower() == ".jsonl" and not args.out.is_dir()
        args.output_format = "jsonl" if jsonl else "csv"
    if args.persons_only and args.output_format == "csv":
        args.output_format = "proposals"
    _check_outputs(args, videos, single)
    if single:
        return _run_single(args, videos[0][0])
    return _run_batch(args, videos)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console entry point of ``ava-detect``; returns the exit status (see module docstring)."""
    return parse_and_run(build_parser(), run, PROG, argv)


if __name__ == "__main__":
    sys.exit(main())

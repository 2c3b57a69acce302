"""ava-eval: AVA frame-mAP@0.5IoU exactly as the official ActivityNet evaluator computes it, in seconds.

    ava-eval --gt ava_val_v2.2.csv --det detections.csv \\
             --exclusions ava_val_excluded_timestamps_v2.2.csv [--labelmap PBTXT] [--protocol P] \\
             [--json OUT.json] [--plot OUT.png]
    ava-eval persons --gt ava_val_v2.2.csv --det person_boxes.csv [--json OUT.json]

Prints the mAP and a per-class table (name, AP, ground-truth count). ``--json`` writes the official keys
(``PascalBoxes_Precision/mAP@0.5IOU``, ``PascalBoxes_PerformanceByCategory/AP@0.5IOU/<name>``; NaN as null).
The ``persons`` subcommand scores person boxes against the ground-truth boxes (COCO AP and AP50).

Exit status: 0 done, 2 usage or input error (one line on stderr naming file and line; ``--debug`` shows the
traceback), 1 internal error.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import warnings
from pathlib import Path

from ..errors import ConfigError, InputFormatError
from .common import refuse_overwriting_inputs, run_cli

PROG = "ava-eval"


SUBCOMMANDS = ("frame-map", "persons")
"""``frame-map`` (the default when the first argument is an option) and ``persons``."""


def build_parser() -> argparse.ArgumentParser:
    """``ava-eval [frame-map] ...`` and ``ava-eval persons ...`` (see the module docstring)."""
    from ..evaluation.frame_map import TIE_ORDERS
    from ..evaluation.protocols import PROTOCOLS

    parser = argparse.ArgumentParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", metavar="{frame-map,persons}",
                                     help="frame-map (default): action frame-mAP; persons: person-box AP")
    frame_map = commands.add_parser(
        "frame-map", help="AVA frame-mAP@0.5IoU of action detections (the default subcommand)",
        description="AVA frame-mAP@0.5IoU exactly as the official ActivityNet evaluator computes it.")
    frame_map.add_argument("--gt", required=True, metavar="GT.csv", help="ground-truth CSV (e.g. ava_val_v2.2.csv)")
    frame_map.add_argument("--det", required=True, metavar="DET.csv",
                           help="detections CSV: video_id,timestamp,x1,y1,x2,y2,action_id,score")
    frame_map.add_argument("--labelmap", default="v2.2-eval", metavar="PBTXT",
                           help="label map of the evaluated classes: a pbtxt path or a packaged name "
                                "(v2.2-eval [default, 60 classes], v2.1-eval, v2.2 [all 80])")
    frame_map.add_argument("--exclusions", metavar="CSV",
                           help="excluded timestamps (ava_val_excluded_timestamps_v2.2.csv); not for activitynet2020")
    frame_map.add_argument("--protocol", default="activitynet2019", choices=list(PROTOCOLS),
                           help="; ".join(f"{name}: {p.summary}" for name, p in PROTOCOLS.items())
                           + " (default activitynet2019)")
    frame_map.add_argument("--tie-order", default="numpy1", choices=TIE_ORDERS,
                           help="rank of equal scores: numpy1 = the official numpy<1.24 argsort order (default, "
                                "exact); stable = stable sort (image order), a documented alternative")
    frame_map.add_argument("--json", metavar="OUT", help="write the official-style metrics dict as JSON")
    frame_map.add_argument("--plot", metavar="OUT.png", help="write a per-class AP bar chart")
    frame_map.add_argument("--debug", action="store_true", help="show tracebacks")
    frame_map.set_defaults(run=_frame_map)

    persons = commands.add_parser(
        "persons", help="person-detector COCO AP and AP50 against AVA ground-truth boxes",
        description="Person-detector quality against AVA ground-truth boxes: COCO AP (IoU 0.5:0.95) and AP50, "
                    "one image per (video, timestamp), boxes scaled to a notional 1000x1000 image.")
    persons.add_argument("--gt", required=True, metavar="GT.csv", help="AVA ground-truth CSV")
    persons.add_argument("--det", required=True, metavar="BOXES.csv",
                         help="person boxes: video_id,timestamp,x1,y1,x2,y2[,label][,score] (score default 1.0)")
    persons.add_argument("--json", metavar="OUT", help="write the metrics as JSON")
    persons.add_argument("--debug", action="store_true", help="show tracebacks")
    persons.set_defaults(run=_persons)
    return parser


def main(argv=None) -> int:
    """Entry point of ``ava-eval``; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] not in ([name] for name in SUBCOMMANDS) and argv[:1] not in (["-h"], ["--help"]):
        argv.insert(0, "frame-map")  # ava-eval --gt ... --det ... is the frame-mAP
    if argv[:1] == ["frame-map"]:
        _tune_memory()  # before build_parser imports numpy
    args = build_parser().parse_args(argv)
    return run_cli(lambda: args.run(args), PROG, args.debug)


def _check_outputs(args, outputs: tuple[str, ...], inputs: tuple[str, ...]) -> None:
    """Before evaluating: refuse output options that name an input file or each other, and a ``--plot`` file
    type matplotlib cannot write."""
    refuse_overwriting_inputs([(f"--{name}", getattr(args, name)) for name in outputs if getattr(args, name)],
                              [(f"the --{name} file", getattr(args, name)) for name in inputs if getattr(args, name)])
    if "plot" in outputs and args.plot and Path(args.plot).suffix:
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        types = FigureCanvasAgg.get_supported_filetypes()
        if Path(args.plot).suffix[1:].lower() not in types:
            raise ConfigError(f"--plot {args.plot}: matplotlib cannot write {Path(args.plot).suffix} files; use a "
                              f".png, .pdf or .svg path (or any of {', '.join(sorted(types))})")


def _frame_map(args) -> int:
    from ..evaluation import evaluate

    _check_outputs(args, ("json", "plot"), ("gt", "det", "labelmap", "exclusions"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = evaluate(args.gt, args.det, args.labelmap, exclusions=args.exclusions, protocol=args.protocol,
                          tie_order=args.tie_order)
    for message in dict.fromkeys(str(w.message) for w in caught):
        print(f"{PROG}: warning: {message}", file=sys.stderr)
    print(format_table(result))
    if args.json:
        _write_json(args.json, {k: _json_number(v) for k, v in result.to_official_dict().items()})
    if args.plot:
        plot_per_class(result, args.plot)
    return 0


def _tune_memory() -> None:
    """Memory settings for the evaluation, made before numpy is imported and worker threads start.

    numpy's transparent huge pages off (``NUMPY_MADVISE_HUGEPAGE=0`` unless set): the evaluation allocates and
    frees many large temporary arrays, and the kernel zeroing 2 MB pages for each cost more system time than
    the page faults they save (AVA val scale: 0.6-0.7 s instead of 0.8-1.6 s). glibc malloc (no-op without
    glibc): one arena (``M_ARENA_MAX`` 1: with an arena per thread, buffers freed by one thread are not reused
    by the others, which raised the peak RSS from 0.86 to 1.01 GB at no speed gain); blocks up to 32 MB
    (glibc's largest ``M_MMAP_THRESHOLD``) from the heap and no trimming of its top (``M_TRIM_THRESHOLD``), so
    that temporary arrays reuse memory instead of faulting in fresh pages each time (about 0.5 s less system
    time, same peak RSS)."""
    import ctypes

    os.environ.setdefault("NUMPY_MADVISE_HUGEPAGE", "0")
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return
    for option, value in ((_M_ARENA_MAX, 1), (_M_MMAP_THRESHOLD, 32 << 20), (_M_TRIM_THRESHOLD, 2 ** 31 - 1)):
        mallopt(option, value)


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8
"""Option numbers of glibc's malloc.h."""


def _persons(args) -> int:
    from ..evaluation.persons import person_detection_ap

    _check_outputs(args, ("json",), ("gt", "det"))
    metrics = person_detection_ap(args.gt, args.det)
    print(f"person boxes: AP {metrics['AP']:.4f}  AP50 {metrics['AP50']:.4f}  "
          f"({metrics['images']} keyframes, {metrics['gt_boxes']} ground-truth boxes, "
          f"{metrics['detections']} detections)")
    if args.json:
        _write_json(args.json, metrics)
    return 0


def format_table(result) -> str:
    """mAP line, then one line per label-map class: id, name, AP (``-`` without ground truth), GT count."""
    width = max((len(n) for n in result.names.values()), default=4)
    lines = [f"mAP@0.5IoU: {result.mAP:.6f}  (protocol {result.protocol}, tie order {result.tie_order}, "
             f"{sum(not math.isnan(a) for a in result.per_class.values())} classes with ground truth)",
             f"{'id':>3}  {'class':<{width}}  {'AP':>8}  {'#gt':>7}"]
    for action_id, ap in result.per_class.items():
        shown = "-" if math.isnan(ap) else f"{ap:.6f}"
        lines.append(f"{action_id:>3}  {result.names[action_id]:<{width}}  {shown:>8}  "
                     f"{result.gt_counts[action_id]:>7}")
    return "\n".join(lines)


def plot_per_class(result, path) -> None:
    """Horizontal bar chart of per-class AP (classes with ground truth), written with matplotlib's Agg."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    items = [(i, ap) for i, ap in result.per_class.items() if not math.isnan(ap)]
    figure, axes = plt.subplots(figsize=(8, 0.22 * max(len(items), 1) + 1.2))
    axes.barh([f"{result.names[i]} ({i})" for i, _ in items], [ap for _, ap in items], color="tab:blue")
    axes.invert_yaxis()
    axes.set_xlim(0, 1)
    axes.set_xlabel("AP@0.5IoU")
    axes.axvline(result.mAP, color="tab:red", linestyle="--", label=f"mAP {result.mAP:.4f}")
    axes.legend(loc="lower right")
    axes.tick_params(axis="y", labelsize=7)
    figure.tight_layout()
    try:
        figure.savefig(path, dpi=100)
    except OSError as exc:
        raise InputFormatError(f"{path}: cannot write the plot ({exc})") from None
    finally:
        plt.close(figure)


def _json_number(value):
    return None if isinstance(value, float) and math.isnan(value) else value


def _write_json(path, payload) -> None:
    try:
        Path(path).write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    except OSError as exc:
        raise InputFormatError(f"{path}: cannot write the JSON output ({exc})") from None


if __name__ == "__main__":
    sys.exit(main())

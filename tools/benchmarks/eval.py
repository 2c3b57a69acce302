"""ava-eval wall time and peak RSS against the official ActivityNet evaluator, on AVA v2.2-val-scale data.

Generates (once, into --data-dir) a synthetic AVA-val-scale set with tools/make_ava_scale_data.py: 64 videos, ~50k
annotated keyframes, ~220k ground-truth rows, ~7.7M PySlowFast-style detection rows (~390 MB), excluded timestamps.
Runs ``ava-eval`` (this checkout) and, when --official-dir and --official-python are given, the official evaluator
(ActivityNet 3fee089 ``Evaluation/get_ava_performance.py`` with ``Evaluation/ava/``, under a Python with
numpy < 1.24) on the same files, each as a child process timed on the wall clock with its own peak RSS, then
compares the per-class APs and prints the ratios. ``--official-json`` caches the official output (the official
run takes about 10 minutes at full scale) and later runs compare against the cache, labelled as such. The official
code is never part of this repository: fetch it and make its venv yourself (see eval/README.md).
"""
import ast
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .common import machine_line

REPO = Path(__file__).resolve().parents[2]


def add_arguments(parser):
    parser.add_argument("--data-dir", default=os.path.join(tempfile.gettempdir(), "ava-eval-bench"),
                        help="where the synthetic set is (generated there when missing)")
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of AVA val size (default 1.0)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--official-dir", help="ActivityNet Evaluation/ folder (get_ava_performance.py, ava/)")
    parser.add_argument("--official-python", help="a Python with numpy < 1.24 to run the official evaluator")
    parser.add_argument("--official-json", metavar="OUT",
                        help="cache of the official output (its pprinted dict): read from here when the file "
                             "exists, instead of running the official evaluator (about 10 minutes); written here "
                             "after a run")


def run(args):
    sys.path.insert(0, str(REPO / "tools"))
    sys.path.insert(0, str(REPO))
    from make_ava_scale_data import make

    from ava_pipeline.labels import packaged_label_map_path

    data = Path(args.data_dir)
    paths = {name: data / f"{name}.csv" for name in ("gt", "det", "excluded")}
    if not all(p.is_file() for p in paths.values()):
        print(f"generating the synthetic set in {data} (scale {args.scale}) ...", flush=True)
        paths = make(data, args.scale, args.seed)
    labelmap = packaged_label_map_path("v2.2-eval")
    det_rows = sum(1 for _ in open(paths["det"], "rb"))
    print(machine_line())
    print(f"data: {paths['det']} ({paths['det'].stat().st_size / 1e6:.0f} MB, {det_rows} detection rows), "
          f"{sum(1 for _ in open(paths['gt'], 'rb'))} ground-truth rows")

    ours_json = data / "ava-eval.json"
    command = [sys.executable, "-m", "ava_pipeline.cli.evaluate", "--gt", str(paths["gt"]), "--det",
               str(paths["det"]), "--exclusions", str(paths["excluded"]), "--labelmap", str(labelmap),
               "--json", str(ours_json)]
    load = os.getloadavg()[0]
    ours_time, ours_rss, _, (ours_user, ours_system) = _measure(command, cwd=REPO,
                                                               env=dict(os.environ, PYTHONPATH=str(REPO)))
    ours = json.loads(ours_json.read_text())
    print(f"ava-eval:  {ours_time:8.2f} s wall ({ours_user + ours_system:.2f} s CPU: {ours_user:.2f} user + "
          f"{ours_system:.2f} system), peak RSS {ours_rss:7.0f} MB, "
          f"mAP {ours['PascalBoxes_Precision/mAP@0.5IOU']:.12f}; 1-min load average {load:.2f} before, "
          f"{os.getloadavg()[0]:.2f} after")

    official = _official_result(args, paths, labelmap, ours_time, ours_rss)
    if official is None:
        return
    worst, identical = 0.0, 0
    for key, value in official.items():
        mine = ours[key]
        if value is None or mine is None:
            assert value is None and mine is None, f"{key}: official {value}, ava-eval {mine}"
            identical += 1
            continue
        worst = max(worst, abs(mine - value))
        identical += mine == value
    print(f"{identical}/{len(official)} values bit-identical, max |difference| {worst:.3g} "
          f"({'within' if worst <= 1e-9 else 'OUTSIDE'} 1e-9)")


def _official_result(args, paths, labelmap, ours_time, ours_rss):
    """The official evaluator's dict (None values for NaN): from the --official-json cache when it exists, else
    from a timed run of the official code (cached there when --official-json is given); None when neither."""
    cache = Path(args.official_json) if args.official_json else None
    if cache is not None and cache.is_file():
        official = ast.literal_eval(cache.read_text().replace("nan", "None"))
        print(f"official:  CACHED result read from {cache} (not re-run, not timed), "
              f"mAP {official['PascalBoxes_Precision/mAP@0.5IOU']:.12f}")
        return official
    if not (args.official_dir and args.official_python):
        print("official evaluator: skipped (pass --official-dir PATH/Evaluation and --official-python "
              "PATH/bin/python with numpy<1.24 to run it beside, or --official-json with a cached result; "
              "see eval/README.md)")
        return None
    official_dir = Path(args.official_dir)
    command = [args.official_python, str(official_dir / "get_ava_performance.py"), "-l", str(labelmap),
               "-g", str(paths["gt"]), "-d", str(paths["det"]), "-e", str(paths["excluded"])]
    env = dict(os.environ, PYTHONPATH=str(official_dir / "ava"))
    official_time, official_rss, stdout, _ = _measure(command, cwd=official_dir, env=env)
    if cache is not None:
        cache.write_text(stdout)
    official = ast.literal_eval(stdout.replace("nan", "None"))
    print(f"official:  {official_time:8.2f} s wall, peak RSS {official_rss:7.0f} MB, "
          f"mAP {official['PascalBoxes_Precision/mAP@0.5IOU']:.12f}")
    print(f"speed-up {official_time / ours_time:.1f}x, memory {official_rss / ours_rss:.1f}x less")
    return official


def _measure(command, cwd, env):
    """Run ``command``; returns (wall seconds, peak RSS MB of that child alone, its stdout, its (user, system) CPU
    seconds)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=err)
        _, status, usage = os.wait4(process.pid, 0)
        elapsed = time.perf_counter() - start
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if process.returncode:
            raise SystemExit(f"{command[0]} failed (exit {process.returncode}):\n{err.read()[-2000:]}")
        return elapsed, usage.ru_maxrss / 1024, out.read(), (usage.ru_utime, usage.ru_stime)


if __name__ == "__main__":
    raise SystemExit("run as: python tools/benchmark.py eval [options]")

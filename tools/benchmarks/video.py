"""Video input: decode-and-sample throughput against bare PyAV decoding, and peak RSS against video length.

Writes synthetic H.264 720p videos (kept in --workdir for reuse) of two kinds of content:

* ``film``: two textures moving at different speeds (coarse shading and fine detail), encoded as movie files
  usually are (x264 preset medium: High profile, CABAC, B-frames; CRF 27, a few Mbit/s);
* ``pan``: one smooth texture panning 3 pixels per frame, x264 preset ultrafast (Constrained Baseline, about
  1 Mbit/s): the cheapest H.264 to decode, so the fixed per-frame cost of RGB conversion weighs most here
  (the worst case for the ratio).

For each ``--content`` on its shortest video, in this run: a bare sequential PyAV decode (frames left in YUV),
the same with every frame converted to an RGB array, and ava_pipeline's iter_clips (every second a keyframe,
32x2 clips, consumed as produced: each clip's frames converted to RGB, not stacked into a copy). Throughput is
reported as a ratio to the bare decode (goal >= 0.8), in wall time and in CPU time of all threads (the wall
ratio needs spare cores: iter_clips converts frames in worker threads while the decoder runs), with the CPU
time other processes took meanwhile (the wall ratios are only meaningful when that is near 0). iter_clips'
RGB frames are checked against PyAV's own ``frame.to_ndarray(format="rgb24")`` of the same decoded frames.
Peak RSS of iter_clips is measured on the ``pan`` videos of every ``--minutes`` length, in a fresh process
per video (goal: the 1- and 10-minute videos differ by < 100 MB).
"""
import os
import sys
import tempfile
import time
from pathlib import Path

from .common import machine_line, python_json

REPO_ROOT = Path(__file__).resolve().parents[2]
CONTENTS = ("film", "pan")
X264_SETTINGS = {"film": {"preset": "medium", "crf": "27"}, "pan": {"preset": "ultrafast", "crf": "28"}}


def add_arguments(parser):
    parser.add_argument("--minutes", type=float, nargs="+", default=[1.0, 10.0],
                        help="video lengths in minutes (throughput uses the first; default: 1 10)")
    parser.add_argument("--content", nargs="+", choices=CONTENTS, default=list(CONTENTS),
                        help="synthetic content(s) for the throughput runs (default: film pan)")
    parser.add_argument("--size", default="1280x720", help="WIDTHxHEIGHT of the synthetic videos (default 1280x720)")
    parser.add_argument("--fps", type=int, default=30, help="frame rate of the synthetic videos (default 30)")
    parser.add_argument("--num-frames", type=int, default=32, help="clip length T (default 32)")
    parser.add_argument("--sampling-rate", type=int, default=2, help="clip frame stride tau (default 2)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per method; the fastest counts")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="folder for the synthetic videos (reused when present; default: a temporary folder)")


def write_synthetic_video(path: Path, seconds: float, width: int, height: int, fps: int, content: str = "pan"
                          ) -> None:
    """H.264 (yuv420p) video of ``content`` (see the module docstring): ``pan``, a smooth texture panning 3
    pixels per frame (about 1-2 MB per 720p minute); ``film``, that texture blended 7:1 with a fine one moving
    1 pixel per frame the other way (a few Mbit/s)."""
    import av
    import cv2
    import numpy as np

    def texture(cell, rows, columns, rng):
        coarse = rng.integers(0, 256, (rows // cell + 2, columns // cell + 3, 3), dtype=np.uint8)
        return cv2.resize(coarse, (coarse.shape[1] * cell, coarse.shape[0] * cell), interpolation=cv2.INTER_CUBIC)

    rng = np.random.default_rng(0)
    shading, detail = texture(32, height, width, rng), texture(4, height, width + 12, rng)
    partial = path.with_suffix(".part.mp4")
    with av.open(str(partial), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps, options=X264_SETTINGS[content])
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for index in range(int(round(seconds * fps))):
            shift = (index * 3) % 64
            image = shading[:height, shift:shift + width]
            if content == "film":
                offset = 12 - index % 12
                image = (image.astype(np.uint16) * 7 + detail[:height, offset:offset + width]) // 8
            image = np.ascontiguousarray(image, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    partial.rename(path)


def _bare_decode(path: Path, to_rgb: bool) -> int:
    import av

    count = 0
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            if to_rgb:
                frame.to_ndarray(format="rgb24")
            count += 1
    return count


def _iter_clips(path: Path, num_frames: int, sampling_rate: int) -> int:
    from ava_pipeline.video import iter_clips

    return sum(1 for _ in iter_clips(path, None, num_frames=num_frames, sampling_rate=sampling_rate))


def _machine_busy_seconds():
    """CPU seconds all processes of the machine have used since boot (/proc/stat), None where unknown."""
    try:
        with open("/proc/stat") as stat:
            user, nice, system, idle, iowait, irq, softirq, steal = (int(v) for v in stat.readline().split()[1:9])
    except (OSError, ValueError):
        return None
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _best_seconds(methods: dict, repeats: int):
    """Fastest (wall, CPU of all threads) seconds of each method, and (CPU seconds other processes used,
    wall seconds) over all the runs (None where the machine's CPU time is unknown); the methods take
    turns, so that load changes hit all alike."""
    best = {name: (float("inf"), float("inf")) for name in methods}
    others, total_wall = 0.0, 0.0
    for _ in range(repeats):
        for name, fn in methods.items():
            busy, wall, cpu = _machine_busy_seconds(), time.perf_counter(), time.process_time()
            fn()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            best[name] = (min(best[name][0], wall), min(best[name][1], cpu))
            others = None if busy is None or others is None else others + _machine_busy_seconds() - busy - cpu
            total_wall += wall
    return best, (None if others is None else max(others, 0.0), total_wall)


def _keyframe_rgb_difference(path: Path, num_frames: int, sampling_rate: int):
    """(largest absolute difference, frames compared, clips) between iter_clips' keyframe images and PyAV's
    ``frame.to_ndarray(format="rgb24")`` of the decoded frames with the same timestamps."""
    import av
    import numpy as np
    from ava_pipeline.video import iter_clips

    largest, compared, clips, frame = 0, 0, 0, None
    with av.open(str(path)) as container:
        frames = container.decode(video=0)
        for clip in iter_clips(path, None, num_frames=num_frames, sampling_rate=sampling_rate):
            clips += 1
            while frame is None or frame.pts < clip.keyframe_pts:
                frame = next(frames)
            if frame.pts == clip.keyframe_pts:
                difference = np.abs(frame.to_ndarray(format="rgb24").astype(np.int16) - clip.keyframe_image)
                largest, compared = max(largest, int(difference.max())), compared + 1
    return largest, compared, clips


# The child reads its own peak from /proc (VmHWM): ru_maxrss would carry the parent's peak over fork + exec.
_CHILD = """
import json, resource, sys
sys.path.insert(0, {root!r})
from ava_pipeline.video import iter_clips
clips = sum(1 for _ in iter_clips({path!r}, None, num_frames={T}, sampling_rate={tau}))
try:
    with open("/proc/self/status") as status:
        peak = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024
except (OSError, StopIteration):
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({{"clips": clips, "peak_rss_mb": peak}}))
"""


def _peak_rss_of_iter_clips(path: Path, num_frames: int, sampling_rate: int) -> dict:
    code = _CHILD.format(root=str(REPO_ROOT), path=str(path), T=num_frames, tau=sampling_rate)
    return python_json(code)


def _synthetic_video(workdir: Path, minutes: float, width: int, height: int, fps: int, content: str) -> Path:
    """The synthetic video's path in ``workdir``, written first if it is not there."""
    suffix = "" if content == "pan" else f"_{content}"
    path = workdir / f"synthetic_{width}x{height}_{fps}fps_{minutes:g}min{suffix}.mp4"
    if not path.exists():
        start = time.perf_counter()
        write_synthetic_video(path, minutes * 60, width, height, fps, content)
        print(f"wrote {path.name} in {time.perf_counter() - start:.1f} s")
    return path


def _report_throughput(path: Path, frames: int, content: str, args) -> None:
    best, (others_cpu, timed_wall) = _best_seconds({
        "bare": lambda: _bare_decode(path, to_rgb=False),
        "bare_rgb": lambda: _bare_decode(path, to_rgb=True),
        "ours": lambda: _iter_clips(path, args.num_frames, args.sampling_rate),
    }, args.repeats)
    largest, compared, keyframes = _keyframe_rgb_difference(path, args.num_frames, args.sampling_rate)
    megabits = path.stat().st_size * 8 / 1e6 / (frames / args.fps)
    print(f"\nthroughput, {content}: {path.name} ({frames} frames, {megabits:.1f} Mbit/s, x264 "
          f"{X264_SETTINGS[content]['preset']}; best of {args.repeats}, methods interleaved):")
    print(f"  {'':42s} {'frames/s':>9s} {'wall ratio':>11s} {'CPU s':>7s}")
    rows = [("bare PyAV decode (YUV frames)", "bare"), ("bare PyAV decode + RGB every frame", "bare_rgb"),
            (f"iter_clips ({keyframes} keyframes, {args.num_frames}x{args.sampling_rate} clips)", "ours")]
    for label, name in rows:
        wall, cpu = best[name]
        print(f"  {label:42s} {frames / wall:9.1f} {best['bare'][0] / wall:11.2f} {cpu:7.2f}")
    print(f"  iter_clips / bare decode: wall ratio {best['bare'][0] / best['ours'][0]:.2f} (goal >= 0.8), "
          f"CPU ratio {best['bare'][1] / best['ours'][1]:.2f}; / decode + RGB: wall ratio "
          f"{best['bare_rgb'][0] / best['ours'][0]:.2f}")
    if others_cpu is not None:
        print(f"  other processes used {others_cpu:.1f} CPU s during the {timed_wall:.1f} s of timed runs "
              f"({others_cpu / timed_wall:.2f} cores on average; near 0 for meaningful wall ratios)")
    print(f"  RGB check: iter_clips keyframe images vs PyAV frame.to_ndarray(format='rgb24'): largest "
          f"difference {largest} over {compared} frames")


def run(args):
    sys.path.insert(0, str(REPO_ROOT))
    from ava_pipeline.video import decoder_version

    width, height = (int(v) for v in args.size.lower().split("x"))
    print(machine_line())
    print(f"decoder: {decoder_version()}")
    with tempfile.TemporaryDirectory() as scratch:
        workdir = args.workdir or Path(scratch)
        workdir.mkdir(parents=True, exist_ok=True)
        frames = int(round(args.minutes[0] * 60 * args.fps))
        for content in args.content:
            path = _synthetic_video(workdir, args.minutes[0], width, height, args.fps, content)
            _report_throughput(path, frames, content, args)

        print("\npeak RSS of iter_clips (pan videos, fresh process per video):")
        peaks = []
        for minutes in args.minutes:
            path = _synthetic_video(workdir, minutes, width, height, args.fps, "pan")
            record = _peak_rss_of_iter_clips(path, args.num_frames, args.sampling_rate)
            peaks.append(record["peak_rss_mb"])
            print(f"  {minutes:g} min: {record['peak_rss_mb']:8.1f} MB ({record['clips']} clips)")
        if len(peaks) > 1:
            print(f"  difference longest - shortest: {peaks[-1] - peaks[0]:.1f} MB (goal < 100 MB)")

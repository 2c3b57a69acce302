"""End-to-end seconds per keyframe of ActionDetector against the models' compute alone, with a per-stage breakdown.

The run writes a synthetic H.264 video (moving textures) and a box file with ``--persons`` boxes per keyframe,
builds a randomly initialised action model (``--size tiny``: SlowFast R50 width 8; ``--size real``: the
full-width SlowFast R50 32x2 of PySlowFast's AVA config; or ``--config``/``--weights``), and then measures

* end to end: ``ActionDetector.stream`` over the video (decode in a background thread, detect, preprocess,
  batched action model), seconds per keyframe and the time each stage took;
* compute alone: the detector on the keyframe images plus the action model the stream runs (the fast path)
  on ready-made input tensors of the same shapes and batch sizes, i.e. what the end-to-end run would cost
  if decoding and preprocessing were free.

With ``--detector torchvision`` the person detector is a torchvision Faster R-CNN (``--detector-model``, default
``fasterrcnn_resnet50_fpn_v2``) with seeded random weights whose person logit is raised, so that every keyframe
has persons (at most ``--persons`` kept); ``--no-fast`` runs both models eager (the "before" of the fast
paths); ``--detector-size`` sets the detector's input short side. The ``detect`` and ``action_model`` rows are
the two models' seconds per keyframe.

The ratio end-to-end / compute-alone is the pipeline's overhead (1.0 = decoding and preprocessing fully hidden).
The two alternate ``--repeats`` times; the ratio is the median of the per-repeat ratios, so that a change of
machine load between them hits both alike.

``--tracks`` adds a third run per repeat, the same stream with person tracks (``tracks=True``: the head also
returns its pooled RoI features, the tracker assigns ids), and prints the tracking stage's own time as a share
of that run and the end-to-end ratio tracked / untracked (median of the repeats).
"""
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from .common import machine_line, peak_rss_mb


def add_arguments(parser):
    parser.add_argument("--size", choices=("tiny", "real"), default="tiny",
                        help="random-weight action model: tiny (width 8) or real (SlowFast R50 32x2, full width)")
    parser.add_argument("--config", help="model config (YAML or zoo name) instead of --size")
    parser.add_argument("--weights", help="checkpoint for --config")
    parser.add_argument("--detector", choices=("precomputed", "torchvision"), default="precomputed")
    parser.add_argument("--detector-model", default="fasterrcnn_resnet50_fpn_v2",
                        help="torchvision detector with --detector torchvision (random weights)")
    parser.add_argument("--detector-size", type=int, metavar="SHORT_SIDE", help="torchvision detector input short side")
    parser.add_argument("--no-fast", action="store_true", help="eager action model and detector")
    parser.add_argument("--seconds", type=int, default=6, help="video length; one keyframe per second")
    parser.add_argument("--resolution", default="640x360", help="WIDTHxHEIGHT of the synthetic video")
    parser.add_argument("--persons", type=int, default=2,
                        help="boxes per keyframe in the box file; with --detector torchvision, the most kept")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--repeats", type=int, default=3, help="end-to-end / compute-alone pairs (default 3)")
    parser.add_argument("--tracks", action="store_true",
                        help="also time the stream with person tracks and report tracking's share")


def _write_video(path: Path, width: int, height: int, seconds: int, fps: int = 30) -> None:
    import av
    import cv2

    rng = np.random.default_rng(0)
    texture = cv2.resize(rng.integers(0, 256, (height // 8, width // 8, 3), dtype=np.uint8), (width * 2, height))
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for index in range(seconds * fps):
            shift = (index * 4) % width
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(texture[:, shift:shift + width]), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def _write_boxes(path: Path, video_id: str, seconds: int, persons: int) -> None:
    rng = np.random.default_rng(1)
    lines = []
    for second in range(seconds):
        for _ in range(persons):
            x1, y1 = rng.uniform(0, 0.5, 2)
            w, h = rng.uniform(0.2, 0.45, 2)
            lines.append(f"{video_id},{second},{x1:.3f},{y1:.3f},{x1 + w:.3f},{y1 + h:.3f},,0.95\n")
    path.write_text("".join(lines))


def _write_model(folder: Path, size: str) -> tuple[str, str]:
    import torch

    from ava_pipeline.config import ActionModelConfig, ModelConfig, dump_config
    from ava_pipeline.models import build_action_model

    model_cfg = ModelConfig(depth=50, aligned=False, width_per_group=8 if size == "tiny" else 64)
    config = ActionModelConfig(name=f"SLOWFAST_32x2_R50_{size}_random", model=model_cfg, box_thresh=0.5)
    torch.manual_seed(0)
    model = build_action_model(model_cfg)
    config_path, weights_path = folder / "model.yaml", folder / "model.pyth"
    config_path.write_text(dump_config(config))
    torch.save({"model_state": model.state_dict(), "epoch": 1}, weights_path)
    return str(config_path), str(weights_path)


def _write_detector(folder: Path, name: str) -> str:
    """Seeded random weights of torchvision detector ``name`` with a raised person logit (persons everywhere)."""
    import torch

    from ava_pipeline.detector import build_torchvision_model

    torch.manual_seed(0)
    model = build_torchvision_model(name)
    with torch.no_grad():
        model.roi_heads.box_predictor.cls_score.bias[1] += 8.0
    path = folder / "detector.pth"
    torch.save(model.state_dict(), path)
    return str(path)


def _compute_alone(detector, results, batch_size: int) -> tuple[float, float]:
    """Seconds of the detector on the keyframe images and of the action model on ready inputs, same batches."""
    import torch

    from ava_pipeline.preprocess import preprocess_clip

    cfg = detector.config
    start = time.perf_counter()
    for result in results:
        detector.detector.detect([result.keyframe_image], video_id=result.video_id, timestamps=[result.timestamp])
    detect_s = time.perf_counter() - start

    with_persons = [r for r in results if r.num_persons]
    if not with_persons:
        return detect_s, 0.0
    frames = np.repeat(with_persons[0].keyframe_image[None], cfg.model.num_frames, axis=0)
    inputs, boxes_px = preprocess_clip(frames, with_persons[0].boxes, test_size=cfg.data.test_crop_size,
                                       mean=cfg.data.mean, std=cfg.data.std,
                                       alpha=cfg.model.alpha if cfg.model.arch == "slowfast" else None,
                                       bgr=cfg.data.bgr)
    model_s = 0.0
    for first in range(0, len(with_persons), batch_size):
        batch = with_persons[first:first + batch_size]
        pathways = [torch.cat([pathway] * len(batch)).to(detector.device) for pathway in inputs]
        boxes = torch.cat([torch.cat([torch.full((r.num_persons, 1), float(i)),
                                      torch.as_tensor(boxes_px[:1]).float().expand(r.num_persons, 4)], 1)
                           for i, r in enumerate(batch)]).to(detector.device)
        if detector.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.inference_mode():
            detector.model(pathways, boxes)
        if detector.device.type == "cuda":
            torch.cuda.synchronize()
        model_s += time.perf_counter() - start
    return detect_s, model_s


def run(args):
    import torch

    from ava_pipeline.pipeline import ActionDetector, StageTimings

    if args.threads:
        torch.set_num_threads(args.threads)
    width, height = (int(v) for v in args.resolution.lower().split("x"))
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        video = folder / "bench.mp4"
        _write_video(video, width, height, args.seconds)
        config, weights = (args.config, args.weights) if args.config else _write_model(folder, args.size)
        options = {"config": config, "weights": weights, "device": args.device, "batch_size": args.batch_size,
                   "fast": not args.no_fast}
        if args.detector == "precomputed":
            boxes = folder / "boxes.csv"
            _write_boxes(boxes, video.stem, args.seconds, args.persons)
            options["boxes"] = str(boxes)
        else:
            options["detector"] = "torchvision"
            options["detector_options"] = {"model": args.detector_model, "fast": not args.no_fast,
                                           "weights": _write_detector(folder, args.detector_model),
                                           "max_detections": args.persons}
            if args.detector_size:
                options["detector_options"]["input_min_size"] = args.detector_size
        detector = ActionDetector(**options)
        tracked = ActionDetector(**options, tracks=True) if args.tracks else None
        # Warm-up, one untimed run of the whole video: oneDNN weights packed and scratch buffers grown for the
        # batch shapes of the timed runs (a one-keyframe warm-up left that to the first timed run).
        for warm in (detector, tracked):
            if warm is not None:
                list(warm.stream(video))

        pairs, tracked_runs = [], []
        for _ in range(args.repeats):
            timings = StageTimings()
            start = time.perf_counter()
            results = list(detector.stream(video, timings=timings))
            end_to_end = time.perf_counter() - start
            detect_s, model_s = _compute_alone(detector, results, args.batch_size)
            pairs.append((end_to_end, detect_s + model_s, timings))
            if tracked is not None:
                tracked_timings = StageTimings()
                start = time.perf_counter()
                list(tracked.stream(video, timings=tracked_timings))
                tracked_runs.append((time.perf_counter() - start, end_to_end, tracked_timings))

    end_to_end, compute, timings = min(pairs, key=lambda pair: pair[0])  # the fastest end-to-end run is shown
    ratio = statistics.median(e / c for e, c, _ in pairs) if all(c for _, c, _ in pairs) else float("nan")
    keyframes = max(timings.keyframes, 1)
    cfg = detector.config
    print(machine_line(threads=torch.get_num_threads()))
    print(f"video: {width}x{height}, {args.seconds} s at 30 fps, {timings.keyframes} keyframes, "
          f"{timings.persons} persons; model {cfg.name} ({cfg.model.num_frames}x{cfg.model.sampling_rate}, "
          f"short side {cfg.data.test_crop_size}); detector {detector.detector.description}; batch "
          f"{args.batch_size}; device {args.device}; {'eager' if args.no_fast else 'fast'} paths")
    print(f"{'stage':<26}{'seconds':>10}{'s/keyframe':>12}")
    background = {"decode", "preprocess"} | ({"detect"} if args.detector == "precomputed" else set())
    for name in ("decode", "detect", "preprocess", "action_model"):
        note = " (background)" if name in background else ""
        seconds = getattr(timings, name)
        print(f"{name + note:<26}{seconds:>10.3f}{seconds / keyframes:>12.4f}")
    print(f"{'end to end':<26}{end_to_end:>10.3f}{end_to_end / keyframes:>12.4f}")
    print(f"{'compute alone':<26}{compute:>10.3f}{compute / keyframes:>12.4f}   "
          "(detector + action model, same batches, right after it)")
    print("per repeat, end to end / compute alone (s): "
          + ", ".join(f"{e:.2f} / {c:.2f}" for e, c, _ in pairs))
    print(f"end-to-end / compute-alone: {ratio:.3f}, median of {len(pairs)} (1.000 = decoding and preprocessing "
          "fully hidden); "
          f"{timings.model_batches} model batches; peak RSS {peak_rss_mb():.0f} MB")
    report = {"end_to_end_s": end_to_end, "compute_s": compute, "ratio": ratio, "stages": timings.as_dict()}
    if tracked_runs:
        share = statistics.median(t.tracking / e for e, _, t in tracked_runs)
        slowdown = statistics.median(e / plain for e, plain, _ in tracked_runs)
        fastest = min(tracked_runs, key=lambda run: run[0])
        print(f"with --tracks: end to end {fastest[0]:.3f} s ({fastest[0] / keyframes:.4f} s/keyframe), tracking "
              f"stage {fastest[2].tracking * 1000:.2f} ms ({fastest[2].tracking / keyframes * 1000:.3f} ms/keyframe, "
              f"{fastest[2].persons} persons)")
        print("per repeat, tracked / untracked end to end (s): "
              + ", ".join(f"{e:.2f} / {plain:.2f}" for e, plain, _ in tracked_runs))
        print(f"tracking stage / tracked end to end: {share * 100:.3f}% (median of {len(tracked_runs)}); "
              f"tracked / untracked end to end: {slowdown:.3f} (median; includes returning the RoI features)")
        report.update(tracking_share=share, tracked_ratio=slowdown)
    return report

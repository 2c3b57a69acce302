"""ava-train: train or fine-tune an AVA action model from movie files, step for step as PySlowFast.

Reads AVA-format annotations (any seconds of any movie, any frame rate: clips come from the movie files through
the same video path as ava-detect), trains with PySlowFast's semantics (train-mode BatchNorm, BCE on
probabilities, Nesterov SGD with its parameter groups, the per-iteration LR policy with warmup, drop_last) and
writes RUN/: config.yaml (accepted by ava-detect --config), labelmap.pbtxt, checkpoints/checkpoint_epoch_NNNNN.pyth
(PySlowFast's layout), metrics.jsonl and curves.png. The same command on an existing RUN/ resumes exactly.

Exit status: 0 done, 1 internal error, 2 unusable input (bad config, row, video, label map or weights, an --out
folder of another run), 130 interrupted. Errors are one line; --debug shows the traceback.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

from .common import OneLineParser, device_name, non_negative_int, parse_and_run, positive_float, positive_int

PROG = "ava-train"


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog=PROG, description=__doc__.split("\n\n")[0],
                     epilog="Exit status: 0 done, 1 internal error, 2 unusable input, 130 interrupted.")
    parser.add_argument("--config", required=True, metavar="YAML",
                        help="our YAML or PySlowFast's AVA YAML unchanged (or a packaged config name); TRAIN, "
                        "SOLVER, BN, DATA, AVA and MODEL keys mean what they mean in PySlowFast")
    parser.add_argument("--weights", metavar="INIT", help="initial weights (weights only: epoch 1, fresh "
                        "optimizer): PySlowFast .pyth/.pkl (AVA or Kinetics), Caffe2 .pkl, PyTorchVideo .pyth, a "
                        "run checkpoint or a zoo name; default TRAIN.CHECKPOINT_FILE_PATH, else random init")
    parser.add_argument("--videos", required=True, type=Path, metavar="DIR",
                        help="folder of the movies; a video's id is its file name without suffix")
    parser.add_argument("--annotations", required=True, type=Path, metavar="TRAIN.CSV",
                        help="AVA ground truth: video_id,timestamp,x1,y1,x2,y2,action_id,person_id")
    parser.add_argument("--out", required=True, type=Path, metavar="RUN",
                        help="run folder (created; an existing run of the same command is resumed)")
    parser.add_argument("--labelmap", type=Path, metavar="PBTXT",
                        help="classes to train, any ids (default: the config's, AVA's 80 actions)")
    parser.add_argument("--proposals", nargs="+", type=Path, default=[], metavar="BOXES.CSV",
                        help="extra person boxes (AVA box CSV with scores), merged as PySlowFast merges them")
    parser.add_argument("--exclusions", type=Path, metavar="CSV", help="video_id,timestamp keyframes to leave out")
    parser.add_argument("--val-annotations", type=Path, metavar="VAL.CSV",
                        help="ground truth to evaluate on every TRAIN.EVAL_PERIOD epochs")
    parser.add_argument("--val-proposals", nargs="+", type=Path, default=[], metavar="BOXES.CSV",
                        help="person boxes to score on the val videos (default: the val ground-truth boxes)")
    parser.add_argument("--val-exclusions", type=Path, metavar="CSV", help="val keyframes the evaluation skips")
    parser.add_argument("--epochs", type=positive_int, metavar="N", help="SOLVER.MAX_EPOCH")
    parser.add_argument("--batch-size", type=positive_int, metavar="B", help="TRAIN.BATCH_SIZE (clips per step)")
    parser.add_argument("--lr", type=positive_float, metavar="F", help="SOLVER.BASE_LR")
    parser.add_argument("--seed", type=non_negative_int, metavar="S", help="RNG_SEED: init, data order, "
                        "augmentation, dropout")
    parser.add_argument("--no-augment", action="store_true",
                        help="test-time transform (short side to DATA.TEST_CROP_SIZE, no crop, no flip)")
    parser.add_argument("--no-shuffle", action="store_true", help="samples in video/time order every epoch")
    parser.add_argument("--full-resolution-frames", action="store_true",
                        help="with augmentation, keep the decoded frames at their own resolution in RUN/frames (the "
                        "augmented clips are then PySlowFast's transform of them bit for bit; default: stored "
                        "downscaled to the largest jitter scale, 5x less disk and 1.3x faster epochs for 720p); "
                        "without augmentation the frames are stored at the test size, exactly, either way")
    parser.add_argument("--device", type=device_name, default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    parser.add_argument("--workers", type=non_negative_int, default=0, metavar="N",
                        help="DataLoader worker processes and parallel videos when preparing frames (default 0)")
    parser.add_argument("--head-only", action="store_true",
                        help="for CPUs: freeze the backbone, cache the pooled RoI features of every box once (fast "
                        "inference path, test-time transform) and train only the head on them; the checkpoints "
                        "are full models")
    parser.add_argument("--head-views", type=positive_int, default=1, metavar="K",
                        help="with --head-only: cache K views of every training keyframe, the test-time one and "
                        "K-1 augmented by the train transform (jitter, crop, flip); each epoch trains a keyframe on "
                        "one of them, drawn from the seed (default 1: the test-time view only)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar: plain log lines")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser


def run(args: argparse.Namespace) -> int:
    from ..training import train

    logging.basicConfig(level=logging.WARNING, format=f"{PROG}: %(levelname)s: %(message)s")
    train(args.config, videos=args.videos, annotations=args.annotations, out=args.out, weights=args.weights,
          labelmap=args.labelmap, proposals=args.proposals, exclusions=args.exclusions,
          val_annotations=args.val_annotations, val_proposals=args.val_proposals,
          val_exclusions=args.val_exclusions, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
          seed=args.seed, augment=False if args.no_augment else None,
          shuffle=False if args.no_shuffle else None, device=args.device,
          full_resolution_frames=True if args.full_resolution_frames else None,
          workers=args.workers, quiet=args.quiet, head_only=args.head_only, head_views=args.head_views)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console entry point of ``ava-train``; returns the exit status (see module docstring)."""
    return parse_and_run(build_parser(), run, PROG, argv)


if __name__ == "__main__":
    sys.exit(main())

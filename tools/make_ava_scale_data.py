#!/usr/bin/env python
"""Write a synthetic AVA v2.2-val-scale evaluation set: ground truth, detections and excluded timestamps.

The files look like the real ones: 64 videos of 11-character ids, keyframes 902..1798, ground-truth rows
``video,timestamp,x1,y1,x2,y2,action,person`` with 3-decimal boxes (one pose action per person plus a few
interactions, long-tailed class frequencies), and a PySlowFast-style detection file: every detected person box
appears once per action id 1..80 with a ``%.4f`` sigmoid score (so most scores are tied), boxes ``%.3f``.
Detected boxes are jittered ground-truth persons plus false positives, also on keyframes without ground truth.
With the default ``--scale 1`` that is about 50k annotated keyframes, 220k ground-truth rows and 7.7M
detection rows (~390 MB). Output is deterministic for a given ``--seed``.

    python tools/make_ava_scale_data.py OUT_DIR [--scale 1.0] [--seed 0]
"""
import argparse
from pathlib import Path

import numpy as np

KEYFRAMES = np.arange(902, 1799)
NUM_ACTIONS = 80


def _boxes(rng, count):
    """``count`` random person boxes, normalized x1, y1, x2, y2 rounded to 3 decimals, shape (count, 4)."""
    width = rng.uniform(0.08, 0.5, count)
    height = np.minimum(width * rng.uniform(1.2, 2.8, count), 0.98)
    x1 = rng.uniform(0, 1 - width)
    y1 = rng.uniform(0, 1 - height)
    return np.round(np.stack([x1, y1, x1 + width, y1 + height], axis=1), 3)


def _jitter(rng, boxes):
    """Detector-like copies of ``boxes``: shifted and rescaled by a few percent, clipped to [0, 1]."""
    size = np.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]] * 2, axis=1)
    return np.round(np.clip(boxes + rng.normal(0, 0.06, boxes.shape) * size, 0, 1), 3)


def make(out_dir, scale=1.0, seed=0):
    """Write ``gt.csv``, ``det.csv`` and ``excluded.csv`` into ``out_dir``; returns their paths."""
    rng = np.random.default_rng(seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    alphabet = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"))
    num_videos = max(1, round(64 * scale))
    videos = ["".join(rng.choice(alphabet, 11)) for _ in range(num_videos)]
    frequency = 1.0 / np.arange(1, NUM_ACTIONS + 1) ** 1.1          # long tail over a shuffled class order
    frequency = frequency[rng.permutation(NUM_ACTIONS)]
    pose_ids, other_ids = np.arange(1, 15), np.arange(15, NUM_ACTIONS + 1)
    pose_p = frequency[:14] / frequency[:14].sum()
    other_p = frequency[14:] / frequency[14:].sum()
    class_bias = np.log(frequency / frequency.max()) * 0.6 - 2.5

    gt_lines, det_lines, excluded_lines = [], [], []
    score_text = [f"{s / 10000:.4f}" for s in range(10001)]
    action_text = [f",{a}," for a in range(NUM_ACTIONS + 1)]
    for video in videos:
        excluded = rng.random(KEYFRAMES.size) < 0.015
        annotated = (rng.random(KEYFRAMES.size) < 0.88) & ~excluded
        excluded_lines += [f"{video},{t:04d}\n" for t in KEYFRAMES[excluded]]
        for timestamp, has_gt in zip(KEYFRAMES, annotated):
            prefix = f"{video},{timestamp:04d},"
            persons = 1 + rng.poisson(1.0) if has_gt else 0
            gt_boxes = _boxes(rng, persons)
            labels = []
            for person, box in enumerate(gt_boxes):
                actions = {int(rng.choice(pose_ids, p=pose_p))}
                actions.update(int(a) for a in rng.choice(other_ids, rng.poisson(1.3), p=other_p))
                labels.append(actions)
                box_text = f"{box[0]:.3f},{box[1]:.3f},{box[2]:.3f},{box[3]:.3f}"
                gt_lines += [f"{prefix}{box_text},{a},{person}\n" for a in sorted(actions)]
            detected = rng.random(persons) < 0.85
            false_boxes = _boxes(rng, rng.poisson(0.12 if has_gt else 0.6))
            det_boxes = np.concatenate([_jitter(rng, gt_boxes[detected]), false_boxes])
            logits = class_bias + rng.normal(0, 1.3, (len(det_boxes), NUM_ACTIONS))
            for row, person in enumerate(np.flatnonzero(detected)):
                for action in labels[person]:
                    logits[row, action - 1] += rng.uniform(1.5, 5.0)
            scores = np.rint(10000 / (1 + np.exp(-logits))).astype(int)
            for box, box_scores in zip(det_boxes, scores):
                head = f"{prefix}{box[0]:.3f},{box[1]:.3f},{box[2]:.3f},{box[3]:.3f}"
                det_lines.append("".join(
                    [head + action_text[a] + score_text[s] + "\n" for a, s in zip(range(1, 81), box_scores)]))
    paths = {name: out_dir / f"{name}.csv" for name in ("gt", "det", "excluded")}
    paths["gt"].write_text("".join(gt_lines))
    paths["det"].write_text("".join(det_lines))
    paths["excluded"].write_text("".join(excluded_lines))
    return paths


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir")
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the 64 AVA val videos (default 1)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for name, path in make(args.out_dir, args.scale, args.seed).items():
        print(f"{name}: {path} ({path.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()

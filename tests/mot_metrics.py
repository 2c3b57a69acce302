"""Identity metrics of multi-object tracking, as MOTChallenge defines them: ID switches (CLEAR MOT) and IDF1.

Written here because py-motmetrics 1.4.0, the newest release, calls ``np.asfarray``, which NumPy 2 removed
(the project pins NumPy 2), and TrackEval's packaged fork requires ``opencv-python``, which conflicts with the
project's ``opencv-python-headless``. Definitions:

* A ground-truth box and a hypothesis box may match when their IoU is at least 0.5.
* ID switches (Bernardin & Stiefelhagen 2008, CLEAR MOT): per frame, a ground-truth object keeps its
  previous hypothesis when they still match; the others are matched by the Hungarian method on 1 - IoU. A
  switch is counted when an object is matched to another hypothesis id than at its last match.
* IDF1 (Ristani et al. 2016): ground-truth and hypothesis trajectories are paired one to one so that the
  number of frames where a pair matches (IDTP) is largest; IDF1 = 2 IDTP / (ground-truth boxes + hypothesis
  boxes).
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np
from scipy.optimize import linear_sum_assignment

Frame = list  # [(id, (x1, y1, x2, y2)), ...]


def iou(a, b) -> float:
    x1, y1 = max(a[0], b[0]), max(a[1], b[1])
    x2, y2 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def identity_metrics(truth: list[Frame], hypotheses: list[Frame], min_iou: float = 0.5) -> dict:
    """``{"id_switches", "idf1", "matched", "truth_boxes"}`` of per-frame ground truth and hypotheses."""
    switches, matched, last = 0, 0, {}
    pair_frames: dict[tuple, int] = defaultdict(int)
    truth_boxes = sum(len(frame) for frame in truth)
    hyp_boxes = sum(len(frame) for frame in hypotheses)
    for gt, hyp in zip(truth, hypotheses):
        overlaps = np.array([[iou(g[1], h[1]) for h in hyp] for g in gt]).reshape(len(gt), len(hyp))
        for i, g in enumerate(gt):
            for j, h in enumerate(hyp):
                if overlaps[i, j] >= min_iou:
                    pair_frames[(g[0], h[0])] += 1
        assigned = {}
        for i, g in enumerate(gt):  # CLEAR MOT: keep last frame's correspondence while it still matches
            j = next((j for j, h in enumerate(hyp) if h[0] == last.get(g[0])), None)
            if j is not None and overlaps[i, j] >= min_iou and j not in assigned.values():
                assigned[i] = j
        free_gt = [i for i in range(len(gt)) if i not in assigned]
        free_hyp = [j for j in range(len(hyp)) if j not in assigned.values()]
        if free_gt and free_hyp:
            cost = 1.0 - overlaps[np.ix_(free_gt, free_hyp)]
            for r, c in zip(*linear_sum_assignment(cost)):
                if overlaps[free_gt[r], free_hyp[c]] >= min_iou:
                    assigned[free_gt[r]] = free_hyp[c]
        for i, j in assigned.items():
            gt_id, hyp_id = gt[i][0], hyp[j][0]
            if gt_id in last and last[gt_id] != hyp_id:
                switches += 1
            last[gt_id] = hyp_id
            matched += 1
    gt_ids = sorted({g for g, _ in pair_frames} | {g[0] for frame in truth for g in frame})
    hyp_ids = sorted({h for _, h in pair_frames} | {h[0] for frame in hypotheses for h in frame})
    gain = np.array([[pair_frames.get((g, h), 0) for h in hyp_ids] for g in gt_ids]).reshape(len(gt_ids), len(hyp_ids))
    rows, cols = linear_sum_assignment(-gain) if gain.size else ([], [])
    idtp = int(gain[rows, cols].sum()) if gain.size else 0
    idf1 = 2 * idtp / (truth_boxes + hyp_boxes) if truth_boxes + hyp_boxes else 1.0
    return {"id_switches": switches, "idf1": idf1, "matched": matched, "truth_boxes": truth_boxes}

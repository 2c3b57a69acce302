"""Property tests: the vectorised evaluator against a direct, slow re-statement of EVAL_SPEC.md written here.

The re-statement reads rows one by one with a heapq cap, matches per keyframe and class with Python loops, and
ranks with a scalar port of numpy 1.x's introsort argsort. Inputs are drawn from tiny grids of boxes and scores
so that duplicates, exact IoU ties, tied scores, invalid boxes, capped keyframes and excluded ones are common.
"""
import csv
import dataclasses
import heapq
import math
from collections import defaultdict

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ava_pipeline.evaluation import PROTOCOLS, evaluate, legacy_argsort

# random inputs are often empty or disjoint: the warnings about that are tested in test_evaluation_cli.py
pytestmark = pytest.mark.filterwarnings("ignore:.*(no ground-truth box|no detection|none of its keyframes)")

LABEL_IDS = (1, 2, 3, 5)
LABELS = "".join(f'label {{\n  name: "c{i}"\n  label_id: {i}\n}}\n' for i in LABEL_IDS)
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


# ------------------------------------------------------------------------------ numpy 1.x argsort, element by element

def numpy1_argsort(values):
    """numpy < 1.25 ``np.argsort(float64 array)``; returns (indices, whether the heapsort fallback ran)."""
    return _introsort([float(x) for x in values], lambda a, b: a < b or (b != b and a == a))


def _introsort(v, less):
    """Introsort on indices as in numpy 1.x npysort/quicksort.cpp ``aquicksort_``, one element at a time."""
    n = len(v)
    idx = list(range(n))
    used_heapsort = False
    if n < 2:
        return idx, used_heapsort
    stack = []
    pl, pr, depth = 0, n - 1, 2 * (n.bit_length() - 1)
    while True:
        if depth < 0:
            used_heapsort = True
            idx[pl:pr + 1] = _heapsort(v, idx[pl:pr + 1], less)
        else:
            while pr - pl > 15:
                pm = pl + ((pr - pl) >> 1)
                for a, b in ((pm, pl), (pr, pm), (pm, pl)):
                    if less(v[idx[a]], v[idx[b]]):
                        idx[a], idx[b] = idx[b], idx[a]
                vp = v[idx[pm]]
                pi, pj = pl, pr - 1
                idx[pm], idx[pj] = idx[pj], idx[pm]
                while True:
                    pi += 1
                    while less(v[idx[pi]], vp):
                        pi += 1
                    pj -= 1
                    while less(vp, v[idx[pj]]):
                        pj -= 1
                    if pi >= pj:
                        break
                    idx[pi], idx[pj] = idx[pj], idx[pi]
                idx[pi], idx[pr - 1] = idx[pr - 1], idx[pi]
                depth -= 1
                if pi - pl < pr - pi:
                    stack.append((pi + 1, pr, depth))
                    pr = pi - 1
                else:
                    stack.append((pl, pi - 1, depth))
                    pl = pi + 1
            for i in range(pl + 1, pr + 1):
                item, j = idx[i], i
                while j > pl and less(v[item], v[idx[j - 1]]):
                    idx[j] = idx[j - 1]
                    j -= 1
                idx[j] = item
        if not stack:
            return idx, used_heapsort
        pl, pr, depth = stack.pop()


def _heapsort(v, part, less):
    a = [None] + part
    n = len(part)

    def sift(i, n, tmp):
        j = 2 * i
        while j <= n:
            if j < n and less(v[a[j]], v[a[j + 1]]):
                j += 1
            if less(v[tmp], v[a[j]]):
                a[i] = a[j]
                i, j = j, 2 * j
            else:
                break
        a[i] = tmp

    for start in range(n >> 1, 0, -1):
        sift(start, n, a[start])
    while n > 1:
        tmp = a[n]
        a[n] = a[1]
        n -= 1
        sift(1, n, tmp)
    return a[1:]


def median_of_three_killer(n):
    """An input that drives the introsort into its heapsort fallback: McIlroy's adversary ("A killer adversary
    for quicksort", 1999) run against the scalar port, fixing values lazily as the comparisons ask for them."""
    gas = n
    value = [gas] * n
    state = {"solid": 0, "candidate": None}

    def freeze(i):
        value[i] = state["solid"]
        state["solid"] += 1

    def less(x, y):
        if value[x] == gas and value[y] == gas:
            freeze(x if x == state["candidate"] else y)
        if value[x] == gas:
            state["candidate"] = x
        elif value[y] == gas:
            state["candidate"] = y
        return value[x] < value[y]

    _introsort(list(range(n)), less)
    for i in range(n):
        if value[i] == gas:
            freeze(i)
    return np.array(value, dtype=float)


# ------------------------------------------------------------------------------ the official evaluator, restated

def reference_evaluate(gt_path, det_path, excluded_keys, capacity, whitelist=LABEL_IDS):
    """EVAL_SPEC.md sections 2-7, row by row. Returns {class_id: AP or NaN} and mAP."""
    def read(path, cap):
        entries = defaultdict(list)
        with open(path, newline="") as handle:
            for row in csv.reader(handle):
                key = "%s,%04d" % (row[0], int(row[1]))
                x1, y1, x2, y2 = (float(x) for x in row[2:6])
                action = int(row[6])
                if action not in whitelist:
                    continue
                score = float(row[7]) if len(row) == 8 else 1.0
                entry = (score, action, y1, x1, y2, x2)
                if cap < 1 or len(entries[key]) < cap:
                    heapq.heappush(entries[key], entry)
                elif score > entries[key][0][0]:
                    heapq.heapreplace(entries[key], entry)
        return {k: sorted(v, key=lambda t: -t[0]) for k, v in entries.items()}

    gt, det = read(gt_path, 0), read(det_path, capacity)
    num_classes = max(whitelist)
    num_gt = defaultdict(int)
    for key, rows in gt.items():
        if key not in excluded_keys:
            for row in rows:
                num_gt[row[1]] += 1
    scores, flags = defaultdict(list), defaultdict(list)
    for key, rows in det.items():
        if key in excluded_keys:
            continue
        truth = gt.get(key, [])
        rows = [r for r in rows if r[2] < r[4] and r[3] < r[5]]
        for c in range(1, num_classes + 1):
            dets = [r for r in rows if r[1] == c]
            boxes = [r[2:] for r in truth if r[1] == c]
            if not dets:
                continue
            taken = [False] * len(boxes)
            for d in dets:
                tp = False
                if boxes:
                    ious = [_iou(d[2:], g) for g in boxes]
                    j = max(range(len(ious)), key=lambda i: (ious[i], -i))
                    if ious[j] >= 0.5 and not taken[j]:
                        taken[j] = tp = True
                scores[c].append(d[0])
                flags[c].append(tp)
    ap = {}
    for c in whitelist:
        if num_gt[c] == 0:
            ap[c] = math.nan
            continue
        order, _ = numpy1_argsort(scores[c])
        ranked = [int(flags[c][i]) for i in reversed(order)]
        if not ranked:
            ap[c] = 0.0
            continue
        precision, recall, hits = [], [], 0
        for i, t in enumerate(ranked, 1):
            hits += t
            precision.append(hits / i)
            recall.append(hits / num_gt[c])
        p = [0.0] + precision + [0.0]
        r = [0.0] + recall + [1.0]
        for i in range(len(p) - 2, -1, -1):
            p[i] = max(p[i], p[i + 1])
        terms = [(r[i] - r[i - 1]) * p[i] for i in range(1, len(r)) if r[i] != r[i - 1]]
        ap[c] = float(np.sum(np.array(terms)))
    values = [v for v in ap.values() if not math.isnan(v)]
    return ap, (sum(values) / len(values) if values else math.nan)


def _iou(d, g):
    ih = max(0.0, min(d[2], g[2]) - max(d[0], g[0]))
    iw = max(0.0, min(d[3], g[3]) - max(d[1], g[1]))
    inter = ih * iw
    area_d = (d[2] - d[0]) * (d[3] - d[1])
    area_g = (g[2] - g[0]) * (g[3] - g[1])
    return inter / ((area_d + area_g) - inter)


# ------------------------------------------------------------------------------ strategies

coordinate = st.sampled_from([0.0, 0.1, 0.2, 0.25, 0.3, 0.5, 0.7])
row = st.tuples(
    st.sampled_from(["vidA", "vidB"]),
    st.sampled_from(["0902", "902", "0903", "0904"]),
    coordinate, coordinate, coordinate, coordinate,
    st.sampled_from([1, 2, 3, 4, 5]),
    st.sampled_from([0.1, 0.25, 0.5, 0.5, 0.75, 0.9]),
)


def _grow(r):
    """Mostly valid boxes (x2 = x1 + w) with a few degenerate or inverted ones kept as drawn."""
    video, ts, x1, y1, w, h, action, score = r
    if w == 0.7:
        return video, ts, x1, y1, x1 - 0.1, y1 + h, action, score
    return video, ts, x1, y1, round(x1 + w, 3), round(y1 + h, 3), action, score


def _write(path, rows, with_score=True):
    with open(path, "w") as handle:
        for r in rows:
            fields = list(r[:7]) + ([r[7]] if with_score else [0])
            handle.write(",".join(str(f) for f in fields) + "\n")


@SETTINGS
@given(st.lists(row, min_size=1, max_size=25), st.lists(row, min_size=0, max_size=60),
       st.sampled_from([0, 3, 5, 50]), st.booleans())
def test_evaluator_equals_the_restated_spec(tmp_path, gt_rows, det_rows, capacity, exclude):
    gt_rows = [r for r in map(_grow, gt_rows) if r[2] <= r[4] and r[3] <= r[5]]  # official crashes otherwise
    det_rows = [_grow(r) for r in det_rows]
    if not gt_rows:
        return
    _write(tmp_path / "gt.csv", gt_rows, with_score=False)
    _write(tmp_path / "det.csv", det_rows)
    (tmp_path / "labels.pbtxt").write_text(LABELS)
    excluded = {"vidB,0903"} if exclude else set()
    (tmp_path / "ex.csv").write_text("vidB,903\n" if exclude else "")
    protocol = dataclasses.replace(PROTOCOLS["activitynet2019"], detections_per_keyframe=capacity)
    result = evaluate(tmp_path / "gt.csv", tmp_path / "det.csv", tmp_path / "labels.pbtxt",
                      exclusions=tmp_path / "ex.csv", protocol=protocol)
    expected, expected_map = reference_evaluate(tmp_path / "gt.csv", tmp_path / "det.csv", excluded, capacity)
    for c in LABEL_IDS:
        if math.isnan(expected[c]):
            assert math.isnan(result.per_class[c])
        else:
            assert result.per_class[c] == expected[c], (c, result.per_class[c], expected[c])
    assert (math.isnan(result.mAP) and math.isnan(expected_map)) or abs(result.mAP - expected_map) < 1e-12


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.sampled_from([0.0, 0.1, 0.2, 0.5, 1.0, -0.0, math.nan]), max_size=70), max_size=5))
def test_legacy_argsort_equals_the_scalar_port(segments):
    values = np.array([v for s in segments for v in s], dtype=float)
    starts = np.cumsum([0] + [len(s) for s in segments])[:-1]
    expected = np.concatenate([np.array(numpy1_argsort(s)[0], dtype=np.int64) + start
                               for s, start in zip(segments, starts)] or [np.zeros(0, np.int64)])
    assert legacy_argsort(values, starts if segments else None).tolist() == expected.tolist()


def test_legacy_argsort_heapsort_fallback():
    killer = median_of_three_killer(600)
    expected, used_heapsort = numpy1_argsort(killer)
    assert used_heapsort
    assert legacy_argsort(killer).tolist() == expected

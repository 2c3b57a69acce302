"""AVA frame-mAP@0.5IoU, rule for rule the official ActivityNet evaluator (``EVAL_SPEC.md``), vectorised.

    read CSVs (io.py) -> per-keyframe cap of 50 with the heap's tie rule -> within-keyframe order
    -> excluded / non-evaluated keyframes dropped -> invalid detections dropped -> IoU of every
    (detection, ground truth) pair of the same keyframe and class -> greedy matching in score order
    -> per class: concatenation in image order, numpy-1.x argsort, AP -> mAP = nanmean over label-map ids

Whole-file numpy; the few keyframes whose exact heap layout or tie order can change a result are replayed.
How each rule is kept exact, and how the work is split over two cores, is in ``docs/internals.md``.
"""
from __future__ import annotations

import heapq
import math
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ..errors import ConfigError, InputFormatError
from ..labels import read_label_map
from .io import AvaRows, InputFormatWarning, read_ava_csv, read_exclusions
from .legacy_argsort import legacy_argsort
from .protocols import Protocol, get_protocol

IOU_THRESHOLD = 0.5
TIE_ORDERS = ("numpy1", "stable")
MAP_KEY = "PascalBoxes_Precision/mAP@{}IOU".format(IOU_THRESHOLD)
CLASS_KEY = "PascalBoxes_PerformanceByCategory/AP@{}IOU/{}"


@dataclass
class EvaluationResult:
    """Frame-mAP and per-class results.

    ``per_class``: ``{action_id: AP}`` for every label-map id (NaN where the class has no ground truth);
    ``gt_counts``: ground-truth boxes per class that count (``num_gt``); ``detection_counts``: detections of each
    class that were scored; ``names``: label-map names.
    """

    mAP: float
    per_class: dict
    gt_counts: dict
    detection_counts: dict
    names: dict
    protocol: str
    tie_order: str = "numpy1"
    warnings: list = field(default_factory=list)

    def to_official_dict(self) -> dict:
        """The official evaluator's output: ``PascalBoxes_Precision/mAP@0.5IOU`` and one
        ``PascalBoxes_PerformanceByCategory/AP@0.5IOU/<name>`` per label-map entry (NaN where no ground truth)."""
        result = {MAP_KEY: self.mAP}
        for action_id, ap in self.per_class.items():
            result[CLASS_KEY.format(IOU_THRESHOLD, self.names[action_id])] = ap
        return dict(sorted(result.items()))


def evaluate(gt, det, labelmap="v2.2-eval", exclusions=None, protocol="activitynet2019",
             tie_order="numpy1") -> EvaluationResult:
    """Frame-mAP of detections ``det`` against ground truth ``gt`` (paths of AVA CSVs).

    ``labelmap``: pbtxt path or packaged name (default the 60 evaluated classes of v2.2); ``exclusions``: excluded
    timestamps CSV (2019-style protocols only); ``protocol``: a name in ``PROTOCOLS``; ``tie_order``: ``"numpy1"``
    (official, default) or ``"stable"``. Problems with the inputs raise InputFormatError naming file and line;
    suspicious input the official code accepts is reported with an :class:`InputFormatWarning`.
    """
    rules = get_protocol(protocol)
    if tie_order not in TIE_ORDERS:
        raise ConfigError(f"unknown tie order {tie_order!r}; choose one of {', '.join(TIE_ORDERS)}")
    if exclusions is not None and not rules.accepts_exclusions:
        raise ConfigError(f"protocol {rules.name} has no excluded timestamps (empty keyframes are 2-column rows of "
                          f"the ground-truth file); drop --exclusions or choose --protocol activitynet2019")
    names = read_label_map(labelmap)
    whitelist = set(names)
    excluded = read_exclusions(exclusions, key_function=rules.key_function) if exclusions else frozenset()
    read = dict(key_function=rules.key_function, whitelist=whitelist, allow_key_only_rows=rules.key_only_rows)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", InputFormatWarning)
        with ThreadPoolExecutor(1) as pool:  # the ground truth is read while the detections are
            gt_future = pool.submit(read_ava_csv, gt, **read)
            try:
                det_rows = read_ava_csv(det, **read)
            finally:
                gt_rows = gt_future.result()  # a ground-truth error is reported first
        _warn_about_nothing_to_score(gt, det, gt_rows, det_rows)
        result = _evaluate_rows(gt_rows, det_rows, names, excluded, rules, tie_order)
    # ground-truth messages first, each file's in line order, whichever reader warned first
    messages = [str(w.message) for w in caught if issubclass(w.category, InputFormatWarning)]
    gt_prefix = f"{Path(gt)}:"
    result.warnings = sorted(messages, key=lambda message: not message.startswith(gt_prefix))
    for message in result.warnings:
        warnings.warn(message, InputFormatWarning, stacklevel=2)
    return result


def _warn_about_nothing_to_score(gt, det, gt_rows: AvaRows, det_rows: AvaRows) -> None:
    """Warn when the files cannot give a meaningful mAP: no ground truth or no detections of the label map's
    classes, or detections on none of the ground truth's keyframes (video ids or timestamps written otherwise)."""
    if not len(gt_rows):
        warnings.warn(f"{gt}: no ground-truth box of the label map's classes, so every AP and the mAP are "
                      "undefined (nan); check the file and --labelmap", InputFormatWarning, stacklevel=3)
    elif not len(det_rows):
        warnings.warn(f"{det}: no detection of the label map's classes, so every AP is 0; check the file and "
                      "--labelmap", InputFormatWarning, stacklevel=3)
    elif not set(det_rows.keys) & set(gt_rows.keys):
        warnings.warn(f"{det}: none of its keyframes is in the ground truth (e.g. {det_rows.keys[0]!r} vs "
                      f"{gt_rows.keys[0]!r}), so every AP is 0; check the video ids and timestamps",
                      InputFormatWarning, stacklevel=3)


# ----------------------------------------------------------------------------------------------------------------

@dataclass
class _Boxes:
    """Rows after filtering, in the official concatenation order (keyframe by keyframe in image order, rows of a
    keyframe in their official order). ``boxes``: ``(N, 4)`` float64 normalized ``x1, y1, x2, y2`` as in the
    file; ``key``: keyframe id; ``action``, ``score``, ``line`` (source line) per row."""

    key: np.ndarray
    action: np.ndarray
    score: np.ndarray
    boxes: np.ndarray
    line: np.ndarray


def _evaluate_rows(gt_rows: AvaRows, det_rows: AvaRows, names, excluded, rules: Protocol, tie_order):
    num_classes = max(names)
    key_ids = {k: i for i, k in enumerate(det_rows.keys)}
    for k in gt_rows.keys:
        key_ids.setdefault(k, len(key_ids))
    key_names = list(key_ids)
    is_excluded = np.array([k in excluded for k in key_names], dtype=bool)
    det_key = det_rows.key_index  # the detection keys are numbered first, in their own order
    gt_key = (np.asarray([key_ids[k] for k in gt_rows.keys], dtype=np.int64)[gt_rows.key_index]
              if len(gt_rows) else np.zeros(0, dtype=np.int64))

    # ground truth: excluded keyframes are skipped (mmaction2 still counts their rows)
    counted = gt_rows.actions if rules.count_excluded_ground_truth else gt_rows.actions[~is_excluded[gt_key]]
    num_gt = np.bincount(counted - 1, minlength=num_classes)[:num_classes] if len(counted) else np.zeros(
        num_classes, dtype=np.int64)
    gt_keep = ~is_excluded[gt_key]
    gt_index = _order_index(gt_rows, gt_key, gt_keep, rules.ground_truth_order)
    gt = _gather(gt_rows, gt_key, gt_index)

    # detections: cap and order per keyframe, then the keyframes the protocol evaluates
    det_keep = np.ones(len(det_rows), dtype=bool)
    exact_keys = set()
    if rules.detections_per_keyframe:
        det_keep, exact_keys = _cap_mask_threaded(det_rows, rules.detections_per_keyframe)
    evaluated = ~is_excluded
    if rules.detections_on == "annotated":
        annotated = np.array([k in gt_rows.all_keys for k in key_names], dtype=bool)
        evaluated &= annotated
    elif rules.detections_on == "ground_truth":
        has_gt = np.zeros(len(key_names), dtype=bool)
        has_gt[gt.key] = True
        evaluated &= has_gt
    det_keep &= evaluated[det_key]
    capacity = rules.detections_per_keyframe
    det_index = _order_index(det_rows, det_key, det_keep, rules.detection_order)
    if exact_keys:
        det_index = _replay_heaps(det_rows, det_key, det_index, capacity, exact_keys)
    det = _valid_detections(_gather(det_rows, det_key, det_index), rules, det_rows.path)
    if rules.float32:
        det.boxes, det.score = _to_float32(det.boxes), _to_float32(det.score)
        gt.boxes = _to_float32(gt.boxes)

    heap_det, heap_gt = rules.detection_order == "heap", rules.ground_truth_order == "heap"
    tp, sensitive_det_keys, sensitive_gt_keys = _match(det, gt, heap_det, heap_gt)
    if sensitive_det_keys - exact_keys or sensitive_gt_keys:
        # ties where the heap layout decides: replay those keyframes exactly and match them again. The heap
        # keeps the same rows as the cap above, only their order differs: each keyframe's block stays in place.
        det_index = _replay_heaps(det_rows, det_key, det_index, capacity, sensitive_det_keys - exact_keys)
        gt_index = _replay_heaps(gt_rows, gt_key, gt_index, 0, sensitive_gt_keys)
        redo = np.fromiter(sensitive_det_keys | sensitive_gt_keys, dtype=np.int64)
        det_part = _valid_detections(_gather(det_rows, det_key, det_index[np.isin(det_key[det_index], redo)]),
                                     rules, det_rows.path)
        gt = _gather(gt_rows, gt_key, gt_index)
        at = np.flatnonzero(np.isin(det.key, redo))
        part_tp, _, _ = _match(det_part, _subset(gt, np.isin(gt.key, redo)), False, False)
        tp[at] = part_tp
        for name in ("key", "action", "score", "boxes", "line"):
            getattr(det, name)[at] = getattr(det_part, name)
    _check_ground_truth_boxes(gt, det, gt_rows.path, key_names)

    ap = _average_precisions(det, tp, num_gt, num_classes, tie_order)
    detection_counts = np.bincount(det.action - 1, minlength=num_classes)[:num_classes]
    averaged = ap.copy()
    if rules.average_over == "detected":
        averaged[detection_counts == 0] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # mean of no class at all is NaN, as officially
        mean_ap = float(np.nanmean(averaged)) if num_classes else math.nan
    ids = list(names)
    return EvaluationResult(
        mAP=mean_ap,
        per_class={i: float(ap[i - 1]) for i in ids},
        gt_counts={i: int(num_gt[i - 1]) for i in ids},
        detection_counts={i: int(detection_counts[i - 1]) for i in ids},
        names=dict(names),
        protocol=rules.name,
        tie_order=tie_order,
    )


def _to_float32(values):
    return values.astype(np.float32).astype(np.float64)


# ----------------------------------------------------------------------------------------------------------------
# cap and order inside a keyframe

def _in_two_key_ranges(key, work):
    """``[work(a, b), ...]`` over row ranges that hold whole keys: when ``key`` (int (N,)) is non-decreasing (a
    file grouped by keyframe), the halves ``[0, m)`` and ``[m, N)`` split at a key boundary, on two threads
    (numpy releases the GIL in sorts and gathers); else ``[work(0, N)]``."""
    n = key.size
    if n < _SPLIT_MIN_ROWS or (key[1:] < key[:-1]).any():
        return [work(0, n)]
    middle = int(np.searchsorted(key, key[n // 2]))
    if middle == 0:
        return [work(0, n)]
    with ThreadPoolExecutor(2) as pool:
        return list(pool.map(lambda bounds: work(*bounds), [(0, middle), (middle, n)]))


_SPLIT_MIN_ROWS = 1 << 16
"""Fewer rows are not worth a second thread."""


def _cap_mask_threaded(rows: AvaRows, capacity: int):
    """``_cap_mask`` on two key ranges of the rows at once where the file is grouped by keyframe."""
    def work(a, b):
        part = replace(rows, key_index=rows.key_index[a:b], boxes=rows.boxes[a:b], actions=rows.actions[a:b],
                       scores=rows.scores[a:b], lines=rows.lines[a:b])
        return _cap_mask(part, capacity)

    results = _in_two_key_ranges(rows.key_index, work)
    return np.concatenate([keep for keep, _ in results]), set().union(*(exact for _, exact in results))


def _cap_mask(rows: AvaRows, capacity: int):
    """Rows kept by the official per-keyframe heap of ``capacity`` entries (bool mask), and the keys whose rows
    hold NaN (replayed exactly with heapq instead).

    The rows of the capped keyframes with the same row count form a 2-D block (one keyframe per line, file order),
    where the boundary (``capacity``-th highest) score is one ``np.partition`` and the rest row-wise arithmetic."""
    key, score = rows.key_index, rows.scores
    n = len(key)
    if n == 0:
        return np.ones(0, dtype=bool), set()
    counts = np.bincount(key)
    capped = counts > capacity
    if not capped.any():
        return np.ones(n, dtype=bool), set()
    keep = ~capped[key]
    exact_keys = set()
    if np.isnan(score).any() or np.isnan(rows.boxes).any():
        nan_row = np.isnan(score) | np.isnan(rows.boxes).any(axis=1)
        exact_keys = set(np.unique(key[nan_row & ~keep]).tolist())
    by_key = _stable_key_order(key)
    capped_keys = np.flatnonzero(capped)
    slots = np.zeros(counts.size, dtype=np.int64)
    contested = []
    for block_keys, positions in _equal_length_blocks(capped_keys, (np.cumsum(counts) - counts)[capped_keys],
                                                      counts[capped_keys]):
        members = positions if by_key is None else by_key[positions]  # (keyframes, rows): row indices
        s = score[members]
        boundary = np.partition(s, s.shape[1] - capacity, axis=1)[:, s.shape[1] - capacity, None]
        above = s > boundary
        at_boundary = s == boundary
        at_least = above | at_boundary
        # a boundary-score row enters the heap while fewer than `capacity` rows scoring >= boundary came before
        earlier = np.cumsum(at_least, axis=1, dtype=np.int32) - at_least
        entered = at_boundary & (earlier < capacity)
        keep[members[above]] = True
        free = capacity - np.count_nonzero(above, axis=1)
        surplus = np.count_nonzero(entered, axis=1) > free
        keep[members[entered & ~surplus[:, None]]] = True
        contested.append(members[entered & surplus[:, None]])
        slots[block_keys[surplus]] = free[surplus]
    contested = np.concatenate(contested)
    if contested.size:
        # more boundary rows entered than there are free slots: the largest (action, y1, x1, y2, x2) tuples stay
        b = rows.boxes[contested]
        ck = key[contested]
        order = np.lexsort((b[:, 2], b[:, 3], b[:, 0], b[:, 1], rows.actions[contested], ck))
        ck = ck[order]
        ends = np.r_[np.flatnonzero(ck[1:] != ck[:-1]), ck.size - 1]
        from_end = np.repeat(ends, np.diff(np.r_[-1, ends])) - np.arange(ck.size)
        keep[contested[order[from_end < slots[ck]]]] = True
    if exact_keys:  # their kept rows come from the heap replay; keep them all here so the keys stay listed
        keep[np.isin(key, np.fromiter(exact_keys, dtype=np.int64))] = True
    return keep, exact_keys


def _equal_length_blocks(segments, starts, lengths):
    """For each distinct length ``L`` of the segments ``[starts[i], starts[i] + lengths[i])``: (their ids
    ``segments[...]`` (M,), their positions (M, L) int64), segments in their given order."""
    if not lengths.size:
        return
    by_length = np.argsort(lengths, kind="stable")
    sorted_lengths = lengths[by_length]
    bounds = np.flatnonzero(np.r_[True, sorted_lengths[1:] != sorted_lengths[:-1], True])
    for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
        chosen = by_length[a:b]
        yield segments[chosen], starts[chosen][:, None] + np.arange(int(sorted_lengths[a]))


def _order_index(rows: AvaRows, key, keep, order_rule):
    """Indices of the kept rows in the official concatenation order: keyframes in order of first (whitelisted)
    row, inside a keyframe by ``order_rule`` ("file", or by descending score with file order for ties, which is
    the heap layout's order wherever it matters, see ``_replay_heaps``)."""
    def work(a, b):
        index = a + np.flatnonzero(keep[a:b])
        by_key = _stable_key_order(key[index])
        if by_key is not None:
            index = index[by_key]
        if order_rule != "file":
            _sort_within_keys(index, key[index], rows.scores)
        return index

    return np.concatenate(_in_two_key_ranges(key, work))


def _sort_within_keys(index, index_key, scores):
    """Stably sort each run of equal ``index_key`` in ``index`` (in place) by descending ``scores[index]``: one
    row-wise sort per 2-D block of equally long runs."""
    if index.size < 2:
        return
    starts = np.flatnonzero(np.r_[True, index_key[1:] != index_key[:-1]])
    lengths = np.diff(np.r_[starts, index.size])
    runs = np.flatnonzero(lengths > 1)
    for _, positions in _equal_length_blocks(runs, starts[runs], lengths[runs]):
        members = index[positions]
        index[positions] = np.take_along_axis(members, np.argsort(-scores[members], axis=1, kind="stable"), 1)


def _stable_key_order(keys):
    """Stable argsort of non-negative int keys, None when they are already sorted (radix sort when they fit
    16 bits)."""
    if not (keys[1:] < keys[:-1]).any():
        return None
    return np.argsort(keys.astype(np.uint16) if keys.max() < 2 ** 16 else keys, kind="stable")


def _gather(rows: AvaRows, key, index) -> _Boxes:
    """The rows ``index`` of ``rows`` (in that order)."""
    return _Boxes(key=key[index], action=rows.actions[index], score=rows.scores[index],
                  boxes=np.take(rows.boxes, index, axis=0), line=rows.lines[index])


def _subset(boxes: _Boxes, chosen) -> _Boxes:
    """The rows ``chosen`` (bool mask or indices) of ``boxes``."""
    return _Boxes(key=boxes.key[chosen], action=boxes.action[chosen], score=boxes.score[chosen],
                  boxes=boxes.boxes[chosen], line=boxes.line[chosen])


def _replay_heaps(rows: AvaRows, key, index, capacity, exact_keys):
    """Replace the rows of each key in ``exact_keys`` by the official heap's kept rows, in its order (``index``
    holds each key's rows as one block)."""
    if not exact_keys:
        return index
    wanted = np.fromiter(exact_keys, dtype=np.int64)
    index_key = key[index]
    at = np.flatnonzero(np.isin(index_key, wanted))
    if not at.size:
        return index
    first = np.flatnonzero(np.r_[True, index_key[at[1:]] != index_key[at[:-1]]])  # one run of `at` per key
    starts, ends = at[first], at[np.r_[first[1:] - 1, at.size - 1]] + 1
    replay = np.flatnonzero(np.isin(key, wanted))
    replay = replay[np.argsort(key[replay], kind="stable")]  # all rows of those keys, file order within a key
    replay_bounds = np.flatnonzero(np.r_[True, key[replay][1:] != key[replay][:-1], True])
    members = {int(key[replay[s]]): replay[s:e] for s, e in zip(replay_bounds[:-1], replay_bounds[1:])}
    parts, done = [], 0
    for start, end in zip(starts.tolist(), ends.tolist()):
        parts += [index[done:start], np.asarray(_heap_order(rows, members[int(index_key[start])], capacity),
                                                dtype=np.int64)]
        done = end
    return np.concatenate(parts + [index[done:]])


def _heap_order(rows: AvaRows, members, capacity):
    """Row indices the official ``read_csv`` keeps for one keyframe (``members``: all its rows, file order), in
    its final order: heappush/heapreplace with ``capacity`` (0 = unbounded), then stable sort by -score."""
    x1, y1, x2, y2 = rows.boxes[members].T.tolist()
    tuples = list(zip(rows.scores[members].tolist(), rows.actions[members].tolist(), y1, x1, y2, x2))
    row_of = {id(t): int(r) for t, r in zip(tuples, members)}
    heap = []
    for entry in tuples:
        if capacity < 1 or len(heap) < capacity:
            heapq.heappush(heap, entry)
        elif entry[0] > heap[0][0]:
            heapq.heapreplace(heap, entry)
    return [row_of[id(t)] for t in sorted(heap, key=lambda t: -t[0])]


def _valid_detections(det: _Boxes, rules: Protocol, path: Path) -> _Boxes:
    """Drop boxes with ``y1 >= y2`` or ``x1 >= x2`` (official); for mmaction2 an inverted box is an error."""
    x1, y1, x2, y2 = det.boxes.T
    if not rules.drop_invalid_detections:
        inverted = np.flatnonzero((y1 > y2) | (x1 > x2))
        if inverted.size:
            raise InputFormatError(
                f"{path}:{det.line[inverted[0]]}: detection box has x1 > x2 or y1 > y2, which crashes "
                f"{rules.name} ('Invalid box data'); fix the box or evaluate with --protocol activitynet2019")
        return det
    valid = (y1 < y2) & (x1 < x2)
    return det if valid.all() else _subset(det, valid)


# ----------------------------------------------------------------------------------------------------------------
# matching

def _pairs(det: _Boxes, gt: _Boxes):
    """Every (detection, ground truth) pair of the same keyframe and class, ground truth in its image order.

    Returns (det index per pair, gt index per pair, pair offsets per detection (N+1,)).
    """
    width = np.int64(max(int(det.action.max(initial=0)), int(gt.action.max(initial=0))) + 1)
    gt_group = gt.key * width + gt.action
    gt_sorted = np.argsort(gt_group, kind="stable")
    sorted_groups = gt_group[gt_sorted]
    first = np.flatnonzero(np.r_[True, sorted_groups[1:] != sorted_groups[:-1]])
    groups = sorted_groups[first]
    det_group = det.key * width + det.action
    span = max(int(groups[-1]), int(det_group.max(initial=0))) + 1
    if span <= _GROUP_TABLE_MAX:
        slot_of_group = np.full(span, groups.size, dtype=np.int32)  # groups.size: no ground truth
        slot_of_group[groups] = np.arange(groups.size, dtype=np.int32)
        slot = slot_of_group[det_group]
    else:
        slot = np.searchsorted(groups, det_group)
        slot[groups[np.minimum(slot, groups.size - 1)] != det_group] = groups.size
    start = np.r_[first, 0][slot]
    count = np.r_[np.diff(np.r_[first, gt_group.size]), 0][slot]
    offsets = np.r_[0, np.cumsum(count)]
    det_index = np.repeat(np.arange(len(det_group)), count)
    gt_index = gt_sorted[start[det_index] + np.arange(offsets[-1]) - offsets[det_index]]
    return det_index, gt_index, offsets


_GROUP_TABLE_MAX = 1 << 24
"""Largest (keyframe, class) code range looked up in a dense table (int32, 64 MB) rather than by binary search."""


def _iou(d, g):
    """IoU of paired boxes ``(P, 4)`` x1, y1, x2, y2 with the official operation order (no +1)."""
    dx1, dy1, dx2, dy2 = d.T
    gx1, gy1, gx2, gy2 = g.T
    ih = np.maximum(0.0, np.minimum(dy2, gy2) - np.maximum(dy1, gy1))
    iw = np.maximum(0.0, np.minimum(dx2, gx2) - np.maximum(dx1, gx1))
    inter = ih * iw
    area_d = (dy2 - dy1) * (dx2 - dx1)
    area_g = (gy2 - gy1) * (gx2 - gx1)
    return inter / ((area_d + area_g) - inter)


def _match(det: _Boxes, gt: _Boxes, check_detection_ties=True, check_gt_ties=True):
    """Greedy matching, per keyframe and class, in the detections' order: each detection takes its first
    maximum-IoU ground truth if IoU >= 0.5 and that box is still free, else it is a false positive (no fall-back).

    Returns the TP flags (bool (N,)) and the keys where ties make the official heap layout matter:
    detection keys with equal-score same-class detections of different boxes one of which reaches IoU 0.5, and
    ground-truth keys where a detection's maximum is shared by distinct equally-ranked boxes.
    """
    n = len(det.key)
    tp = np.zeros(n, dtype=bool)
    if n == 0 or len(gt.key) == 0:
        return tp, set(), set()
    det_index, gt_index, offsets = _pairs(det, gt)
    if not det_index.size:
        return tp, set(), set()
    iou = _iou(det.boxes[det_index], gt.boxes[gt_index])
    has_pairs = offsets[1:] > offsets[:-1]
    starts = offsets[:-1][has_pairs]
    best = np.full(n, -np.inf)
    best[has_pairs] = np.maximum.reduceat(iou, starts)
    best_of_pair = best[det_index]
    is_best = (iou == best_of_pair) | (np.isnan(iou) & np.isnan(best_of_pair))
    local = np.arange(det_index.size) - offsets[det_index]
    first = np.full(n, -1)
    first[has_pairs] = np.minimum.reduceat(np.where(is_best, local, np.iinfo(np.int64).max), starts)
    eligible = best >= IOU_THRESHOLD
    chosen_gt = np.full(n, -1)
    chosen_gt[has_pairs] = gt_index[offsets[:-1][has_pairs] + first[has_pairs]]
    # first eligible detection (in image order = index order) of each ground-truth box wins it
    candidates = np.flatnonzero(eligible)
    order = candidates[np.argsort(chosen_gt[candidates], kind="stable")]
    winners = order[np.r_[True, chosen_gt[order][1:] != chosen_gt[order][:-1]]] if order.size else order
    tp[winners] = True
    sensitive_det = _tie_sensitive_detection_keys(det, eligible) if check_detection_ties else set()
    sensitive_gt = (_tie_sensitive_gt_keys(det, gt, det_index, gt_index, iou, best_of_pair, eligible)
                    if check_gt_ties else set())
    return tp, sensitive_det, sensitive_gt


def _tie_sensitive_detection_keys(det: _Boxes, eligible):
    """Keys with a group of equal-score detections of one class that holds two different boxes and a member
    reaching IoU 0.5 (only there can the heap layout change which detection is a true positive, or where).
    ``det`` is sorted by key, then descending score, so equal (key, score) rows are adjacent."""
    same = (det.key[1:] == det.key[:-1]) & (det.score[1:] == det.score[:-1])
    if not same.any():
        return set()
    run = np.cumsum(np.r_[True, ~same]) - 1
    run_eligible = np.zeros(run[-1] + 1, dtype=bool)
    run_eligible[run[eligible]] = True
    tied = np.r_[same, False] | np.r_[False, same]  # in a run of two or more
    members = np.flatnonzero(tied & run_eligible[run])
    if not members.size:
        return set()
    order = members[np.lexsort((det.action[members], run[members]))]
    r, a = run[order], det.action[order]
    same_group = (r[1:] == r[:-1]) & (a[1:] == a[:-1])
    group = np.cumsum(np.r_[True, ~same_group]) - 1
    different_box = np.zeros(group[-1] + 1, dtype=bool)
    different_box[group[1:][same_group & (det.boxes[order][1:] != det.boxes[order][:-1]).any(axis=1)]] = True
    group_eligible = np.bincount(group, weights=eligible[order]) > 0
    flagged = (different_box & group_eligible)[group]
    return set(np.unique(det.key[order][flagged]).tolist())


def _tie_sensitive_gt_keys(det, gt, det_index, gt_index, iou, best_of_pair, eligible):
    """Keys where an eligible detection's maximum IoU is reached by >= 2 ground-truth boxes that differ in box
    and share their score (their relative order is then the heap layout's)."""
    at_best = (iou == best_of_pair) & eligible[det_index]
    pair = np.flatnonzero(at_best)
    if pair.size < 2:
        return set()
    d = det_index[pair]
    g = gt_index[pair]
    repeated = np.flatnonzero(d[1:] == d[:-1])
    if not repeated.size:
        return set()
    first, second = g[repeated], g[repeated + 1]
    tied = (gt.score[first] == gt.score[second]) & (gt.boxes[first] != gt.boxes[second]).any(axis=1)
    return set(np.unique(gt.key[first[tied]]).tolist())


def _check_ground_truth_boxes(gt: _Boxes, det: _Boxes, path: Path, key_names):
    """Inverted ground-truth boxes: an error where the official code would crash (the keyframe has a detection of
    that class), else a warning (it never looks at them)."""
    x1, y1, x2, y2 = gt.boxes.T
    inverted = np.flatnonzero((y1 > y2) | (x1 > x2))
    if not inverted.size:
        return
    width = np.int64(max(int(det.action.max(initial=0)), int(gt.action.max(initial=0))) + 1)
    detected = np.isin(gt.key[inverted] * width + gt.action[inverted], det.key * width + det.action)
    for row, crash in zip(inverted.tolist(), detected.tolist()):
        where = f"{path}:{gt.line[row]}: ground-truth box has x1 > x2 or y1 > y2 ({key_names[gt.key[row]]})"
        if crash:
            raise InputFormatError(f"{where}; the official evaluator crashes on it ('Invalid box data'): fix the box")
        warnings.warn(f"{where}; it is never matched (no detection of its class on that keyframe)",
                      InputFormatWarning, stacklevel=3)


# ----------------------------------------------------------------------------------------------------------------
# average precision

def _average_precisions(det: _Boxes, tp, num_gt, num_classes, tie_order):
    """AP per class index (0-based), NaN where ``num_gt`` is 0: all-points interpolated AP of the detections
    ranked by ``argsort(scores)[::-1]`` over the per-class concatenation in image order."""
    by_class = _stable_key_order(det.action)  # det is already in image order
    if by_class is None:
        by_class = np.arange(det.action.size)
    actions = det.action[by_class]
    scores = det.score[by_class]
    flags = tp[by_class]
    starts = np.searchsorted(actions, np.arange(1, num_classes + 2))
    if tie_order == "numpy1":
        order = legacy_argsort(scores, starts[:-1], relevant=_in_mixed_score_groups(starts, scores, flags),
                               threads=2)
    else:
        # stable: ascending score, ties by descending image order, so that after the reversal below equal
        # scores keep image order
        order = np.lexsort((-np.arange(scores.size), scores, actions))
    ap = np.full(num_classes, np.nan)
    for c in range(num_classes):
        if num_gt[c] == 0:
            continue
        ranked = order[starts[c]:starts[c + 1]][::-1]
        ap[c] = _ap(flags[ranked].astype(np.int64), int(num_gt[c]))
    return ap


def _in_mixed_score_groups(starts, scores, flags):
    """True for detections whose (class, score) group holds both true and false positives: the only ones whose
    tie order can change AP. ``starts``: offsets of the classes' runs in ``scores`` / ``flags``."""
    if scores.size == 0:
        return np.zeros(0, dtype=bool)
    order = np.arange(scores.size)
    for first, end in zip(starts[:-1].tolist(), starts[1:].tolist()):
        order[first:end] = first + np.argsort(scores[first:end])  # ties in any order: only groups are read
    s = scores[order]
    new_group = np.r_[True, ~((s[1:] == s[:-1]) | (np.isnan(s[1:]) & np.isnan(s[:-1])))]
    new_group[starts[:-1][starts[:-1] < scores.size]] = True
    group = np.cumsum(new_group) - 1
    true_positives = np.bincount(group, weights=flags[order])
    sizes = np.bincount(group)
    mixed = (true_positives > 0) & (true_positives < sizes)
    relevant = np.empty(scores.size, dtype=bool)
    relevant[order] = mixed[group]
    return relevant


def _ap(tp_sorted, num_gt):
    """The official ``compute_average_precision`` of ``compute_precision_recall`` on ranked TP flags."""
    if tp_sorted.size == 0:
        return 0.0
    cum_tp = np.cumsum(tp_sorted)
    cum_fp = np.cumsum(1 - tp_sorted)
    precision = cum_tp.astype(float) / (cum_tp + cum_fp)
    recall = cum_tp.astype(float) / num_gt
    recall = np.concatenate([[0.0], recall, [1.0]])
    precision = np.concatenate([[0.0], precision, [0.0]])
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    steps = np.flatnonzero(recall[1:] != recall[:-1]) + 1
    return numpy1_sum((recall[steps] - recall[steps - 1]) * precision[steps])


def numpy1_sum(values) -> float:
    """``np.sum`` of a contiguous float64 vector with numpy 1.x's rounding: 8192-element buffers, each summed
    pairwise (8 interleaved lanes, blocks of at most 128, halves split at multiples of 8), added in order.
    numpy 2 may round the last bit differently for long vectors; the official number was computed with 1.x."""
    total = 0.0
    for start in range(0, values.size, 8192):
        total += _pairwise_sum(values[start:start + 8192])
    return total


def _pairwise_sum(values) -> float:
    n = values.size
    if n < 8:
        total = 0.0
        for value in values.tolist():
            total += value
        return total
    if n <= 128:
        whole = n - n % 8
        lanes = np.add.reduce(values[:whole].reshape(-1, 8), axis=0).tolist()  # each lane sequentially
        total = ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]))
        for value in values[whole:].tolist():
            total += value
        return total
    half = n // 2
    half -= half % 8
    return _pairwise_sum(values[:half]) + _pairwise_sum(values[half:])

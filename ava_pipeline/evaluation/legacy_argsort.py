"""``np.argsort`` exactly as numpy < 1.25 orders float64 ties, whatever numpy is installed.

The official AVA evaluator ranks detections with ``np.argsort(scores)[::-1]`` (default kind) and only runs on
numpy < 1.24. There, float64 argsort is the generic introsort on an index array: median-of-3 quicksort with a
Hoare partition, partitions of at most 16 elements finished by insertion sort, the larger child pushed on a
stack (its depth budget checked when popped, where an exhausted budget switches that partition to heapsort),
the smaller child partitioned on without a check, depth budget ``2 * floor(log2(n))``, NaN ordered last. Its
result is a pure function of the input, but numpy >= 2 sorts equal keys differently, and with 4-decimal
scores most of a class's detections are tied, so AP depends on reproducing it.

This module reproduces that order without compiled code by running the same algorithm breadth-first (the partitions
are disjoint, so the order in which they are processed does not matter): all partitions of one level (across all
independent segments, e.g. all classes) are partitioned at once with numpy. One Hoare partition is a closed form:
with ``L`` the positions (ascending) that stop the left scan (value not less than the pivot) and ``R`` the positions
(descending) that stop the right scan (value not greater), the k-th swap exchanges ``L[k]`` and ``R[k]`` while
``L[k] < R[k]``; with ``K`` such swaps the pivot lands at ``min(L[K], R[K-1])`` (``L[0]`` when ``K == 0``).
Insertion sort is stable, so partitions of <= 16 elements are finished together with one stable sort. Only the rare
heapsort fallback runs element by element in Python.
Verified against numpy 1.23.5 (tests/test_evaluation*.py hold its recorded outputs and a scalar port).
"""
from __future__ import annotations

import numpy as np

SMALL_PARTITION = 16
"""Partitions with at most this many elements are finished by insertion sort (numpy's ``SMALL_QUICKSORT + 1``)."""


def legacy_argsort(values: np.ndarray, segment_starts: np.ndarray | None = None,
                   relevant: np.ndarray | None = None, threads: int = 1) -> np.ndarray:
    """Indices that sort ``values`` as numpy < 1.25 ``np.argsort(values)`` (kind "quicksort") does, ties included.

    ``values``: float64 array of shape (N,). ``segment_starts``: optional sorted int array of segment start
    offsets (the first must be 0); each segment ``values[s_i:s_{i+1}]`` is then sorted independently, as if by
    its own ``np.argsort`` call, and the result holds global indices (``s_i + local index``). Returns int64 (N,).

    ``relevant``: optional bool (N,) marking the elements whose order among equal values the caller needs. A
    partition that holds none of them is finished by a stable sort instead of being simulated further, so the
    result is then exact only up to permutations of equal values among non-relevant elements (AP, for instance,
    only needs the order inside groups of equal scores that mix true and false positives).

    ``threads``: sort the segments in this many groups of about equal size on as many threads (numpy releases
    the GIL in the bulk array work); the result does not depend on it.
    """
    values = np.ascontiguousarray(values, dtype=np.float64)
    if segment_starts is None:
        segment_starts = np.zeros(1, dtype=np.int64)
    starts = np.asarray(segment_starts, dtype=np.int64)
    if threads > 1 and starts.size > 1:
        return _threaded(values, starts, relevant, threads)
    return _sort_segments(values, starts, relevant)


def _threaded(values, starts, relevant, threads):
    """``legacy_argsort`` with the segments split at segment boundaries into ``threads`` groups of about equal
    element count, each group sorted on its own thread."""
    from concurrent.futures import ThreadPoolExecutor

    targets = values.size * np.arange(1, threads) / threads
    cuts = np.unique(np.r_[0, starts[np.minimum(np.searchsorted(starts, targets), starts.size - 1)], values.size])
    groups = [(int(a), int(b)) for a, b in zip(cuts[:-1], cuts[1:])]
    if len(groups) < 2:
        return _sort_segments(values, starts, relevant)

    def sort_group(bounds):
        a, b = bounds
        inner = starts[(starts >= a) & (starts < b)] - a
        return _sort_segments(values[a:b], inner, None if relevant is None else relevant[a:b]) + a

    with ThreadPoolExecutor(len(groups)) as pool:
        return np.concatenate(list(pool.map(sort_group, groups)))


def _sort_segments(values, starts, relevant):
    """``legacy_argsort`` of contiguous ``values`` with segment start offsets ``starts`` (int64, first 0)."""
    n = values.size
    ends = np.append(starts[1:], n)
    order = np.arange(n, dtype=np.int64)
    current = _comparison_keys(values)  # comparison keys in the current arrangement of ``order``

    sizes = ends - starts
    lo, hi = starts[sizes > 1], ends[sizes > 1] - 1
    depth = 2 * _floor_log2(hi - lo + 1)
    checked = np.ones(lo.size, dtype=bool)
    while lo.size:
        exhausted = checked & (depth < 0)
        for first, last in zip(lo[exhausted], hi[exhausted]):
            _heapsort_in_place(order, current, int(first), int(last))
        small = ~exhausted & (hi - lo + 1 <= SMALL_PARTITION)
        if relevant is not None:
            small |= ~exhausted & ~_holds_relevant(relevant, order, lo, hi)
        big = ~exhausted & ~small
        lo, hi, depth = lo[big], hi[big], depth[big]
        if not lo.size:
            break
        pivot = _partition(order, current, lo, hi)
        left_smaller = pivot - lo < hi - pivot
        # numpy pushes the larger child (depth checked when popped) and continues with the smaller one;
        # children are kept in position order (left, right, left, right, ...) for memory locality.
        lo = np.stack([lo, pivot + 1], axis=1).ravel()
        hi = np.stack([pivot - 1, hi], axis=1).ravel()
        checked = np.stack([~left_smaller, left_smaller], axis=1).ravel()
        depth = np.repeat(depth - 1, 2)
        keep = hi > lo
        lo, hi, depth, checked = lo[keep], hi[keep], depth[keep], checked[keep]
    # partitions left are in place relative to each other (values <= those right of them, >= those left of
    # them), so one stable sort per segment finishes them all as insertion sort would
    for first, end in zip(starts[sizes > 1].tolist(), ends[sizes > 1].tolist()):
        within = np.argsort(current[first:end], kind="stable")
        order[first:end] = order[first:end][within]
    return order


def _holds_relevant(relevant, order, lo, hi):
    """Whether each segment ``[lo[i], hi[i]]`` of ``order`` holds a relevant element (bool array like ``lo``)."""
    sizes = hi - lo + 1
    offsets = np.cumsum(sizes) - sizes
    position = np.arange(int(sizes.sum())) + np.repeat(lo - offsets, sizes)
    return np.add.reduceat(relevant[order[position]], offsets) > 0


def _comparison_keys(values: np.ndarray) -> np.ndarray:
    """Keys whose ``<`` is numpy 1.x's float64 ``LT`` (NaN greater than everything, NaNs equal, -0.0 == 0.0)."""
    if not np.isnan(values).any():
        return values.copy()
    _, ranks = np.unique(values, return_inverse=True)  # NaNs collapse into one rank, sorted last
    return ranks.reshape(-1).astype(np.int64)


def _floor_log2(sizes: np.ndarray) -> np.ndarray:
    """``floor(log2(size))`` for positive int sizes, exactly (numpy's ``npy_get_msb``)."""
    result = np.zeros(sizes.shape, dtype=np.int64)
    remaining = sizes.copy()
    while (remaining > 1).any():
        more = remaining > 1
        result += more
        remaining >>= 1
    return result


def _swap(order: np.ndarray, current: np.ndarray, a: np.ndarray, b: np.ndarray) -> None:
    """Exchange positions ``a[i]`` and ``b[i]`` of both arrays (all positions distinct across ``i``)."""
    order[a], order[b] = order[b], order[a].copy()
    current[a], current[b] = current[b], current[a].copy()


def _partition(order, current, lo, hi):
    """One numpy-1.x Hoare partition of every segment ``[lo[i], hi[i]]`` (each > 16 elements), in place.

    Returns the final pivot position of each segment (int64 array shaped like ``lo``). Work is on the segments
    packed end to end ("packed index"); ``shift[s]`` turns a packed index of segment ``s`` into a position.
    """
    mid = lo + ((hi - lo) >> 1)
    for a, b in ((mid, lo), (hi, mid), (mid, lo)):  # median of three: swap when current[a] < current[b]
        swap = current[a] < current[b]
        _swap(order, current, a[swap], b[swap])
    pivot_value = current[mid]
    _swap(order, current, mid, hi - 1)

    sizes = hi - lo + 1
    offsets = np.cumsum(sizes) - sizes
    ends = offsets + sizes - 1
    shift = lo - offsets
    value = current[np.arange(int(sizes.sum())) + np.repeat(shift, sizes)]
    pivot = np.repeat(pivot_value, sizes)
    # the left scan (lo+1 up) stops where value >= pivot; the right scan (hi-2 down) where value <= pivot
    left_stop = value >= pivot
    left_stop[offsets] = False
    left_stop[ends] = False
    right_stop = value <= pivot
    right_stop[ends] = False
    right_stop[ends - 1] = False
    left_cum = np.cumsum(left_stop, dtype=np.int32)
    right_cum = np.cumsum(right_stop, dtype=np.int32)
    left_base = left_cum[offsets]       # left stops before the segment
    right_total = right_cum[ends]       # right stops up to the segment's end
    # L[k] < R[k]  <=>  (#right stops after L[k]) > k  <=>  left_cum + right_cum <= right_total + left_base
    swapped_left = left_stop & (left_cum + right_cum <= np.repeat(right_total + left_base, sizes))
    swaps = np.add.reduceat(swapped_left, offsets, dtype=np.int32)  # int32 like the cumsums it meets
    swapped_right = right_stop & (right_cum > np.repeat(right_total - swaps, sizes))
    left_packed = np.flatnonzero(swapped_left)
    right_packed = np.flatnonzero(swapped_right)
    if left_packed.size:
        segment = np.repeat(np.arange(lo.size), swaps)
        slot_base = np.cumsum(swaps) - swaps
        # right stops come in ascending position; R[k] counts from the segment's end: reverse inside segments
        right_packed = right_packed[2 * slot_base[segment] + swaps[segment] - 1 - np.arange(segment.size)]
        _swap(order, current, left_packed + shift[segment], right_packed + shift[segment])
    final_left = np.searchsorted(left_cum, left_base + swaps + 1)                  # L[K]
    final_right = np.searchsorted(right_cum, right_total - swaps + 1)              # R[K-1], if K > 0
    final = np.where(swaps > 0, np.minimum(final_left, final_right), final_left)
    pivot_position = final + shift
    _swap(order, current, pivot_position, hi - 1)
    return pivot_position


def _heapsort_in_place(order, current, first, last):
    """numpy 1.x ``aheapsort`` of ``order[first:last + 1]`` by ``current`` (the introsort depth fallback)."""
    original = order[first:last + 1].copy()
    key = current[first:last + 1].tolist()
    a = [0] + list(range(len(key)))  # 1-based heap indexing, as in numpy
    n = len(key)
    for start in range(n >> 1, 0, -1):
        _sift_down(a, key, start, n)
    while n > 1:
        top = a[n]
        a[n] = a[1]
        n -= 1
        a[1] = top
        _sift_down(a, key, 1, n)
    local = np.asarray(a[1:], dtype=np.int64)
    order[first:last + 1] = original[local]
    current[first:last + 1] = current[first:last + 1][local]


def _sift_down(a, key, i, n):
    tmp = a[i]
    j = i << 1
    while j <= n:
        if j < n and key[a[j]] < key[a[j + 1]]:
            j += 1
        if key[tmp] < key[a[j]]:
            a[i] = a[j]
            i = j
            j += j
        else:
            break
    a[i] = tmp

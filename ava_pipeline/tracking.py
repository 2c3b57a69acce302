"""Person tracks across keyframes and action segments along them: the stage after the action model.

::

    keyframe results (boxes, pooled RoI features, scores) ──► PersonTracker.update per keyframe
        per track: constant-velocity Kalman filter on the box (centre, size) in pixels of the keyframe image
        cost(track, box) = Mahalanobis distance / gate  +  appearance weight x trust x cosine distance / scale
        one global assignment per keyframe (Hungarian: scipy.optimize.linear_sum_assignment)
        unmatched boxes: new tracks; unmatched tracks: coast on their velocity, then die
    ──► person_id per box ──► [score smoothing along each track] ──► writers, renderer, action segments

Keyframes are usually a second apart, so people move far between them and IoU alone swaps people who walk
past each other; the filter predicts where each one went. Appearance comes from the action head's own
pooled RoI features (no second network). How much they tell people apart depends on the weights, so the
tracker measures it on the video itself: ``trust = 1 - (distance between a person's consecutive features) /
(distance between two people of one keyframe)``, clipped to [0, 1], and scales cosine distances by the
latter; appearance drops out where it tells nobody apart. The features also encode where a box is (a random
test model's almost only that), which this measure cannot tell from appearance, so appearance is weighted
below motion (``appearance_weight`` 0.3 of the gate): it settles what motion leaves open (two people who
stood together and part) without overruling a clear motion prediction (two people walking past each other).

Boxes are normalized ``x1, y1, x2, y2`` in [0, 1] (top-left origin) as in :class:`KeyframeResult`; the
filter works in pixels of the keyframe image (``image_size``) so that x and y distances compare.
"""
from __future__ import annotations

import dataclasses
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Iterator, Optional, Sequence

import numpy as np

from .errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from .results import KeyframeResult

CHI2_GATE_4DOF = 13.2767
"""99% quantile of the chi-square distribution with 4 degrees of freedom: the Mahalanobis gate of a box."""


# ------------------------------------------------------------------------------------------------- options

@dataclass(frozen=True)
class TrackerOptions:
    """How tracks are born, confirmed, matched and ended (the ``--track-*`` options of ``ava-detect``).

    ``confirm_hits``: a new track is tentative until seen at this many keyframes in a row; a tentative track
    ends at its first miss. The default 1 confirms every track at birth: keyframes are a second apart, and a
    person missed at its second keyframe is likelier than a one-off false box (on generated scenes with 10%
    missed detections, 2 gave four times as many identity switches); 2 suits detectors with one-off boxes. ``max_missed``: a confirmed track survives this many keyframes without a box
    (coasting on its velocity) and keeps its id when the person reappears. ``appearance_weight``: the weight
    of the appearance cost (in units of the motion gate) when appearance is fully trusted; 0 tracks by motion
    alone; 1 or more lets appearance overrule motion (for features known to identify people).
    ``appearance_budget``: recent features kept per track (the distance is the smallest to any).
    ``gate``: the squared Mahalanobis distance beyond which a box cannot continue a track.
    """

    confirm_hits: int = 1
    max_missed: int = 2
    appearance_weight: float = 0.3
    appearance_budget: int = 8
    gate: float = CHI2_GATE_4DOF

    def __post_init__(self):
        for name in ("confirm_hits", "appearance_budget"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"tracker option {name} must be an integer of at least 1, "
                                  f"got {getattr(self, name)!r}")
        if not isinstance(self.max_missed, int) or self.max_missed < 0:
            raise ConfigError(f"tracker option max_missed must be an integer of at least 0, got {self.max_missed!r}")
        if not self.appearance_weight >= 0:
            raise ConfigError(f"tracker option appearance_weight must be >= 0, got {self.appearance_weight!r}")
        if not self.gate > 0:
            raise ConfigError(f"tracker option gate must be > 0, got {self.gate!r}")


@dataclass(frozen=True)
class TrackingSettings:
    """Tracking as :class:`~ava_pipeline.pipeline.ActionDetector` runs it: tracker options plus score smoothing.

    ``smooth_scores``: each box's 80 scores become the mean of its person's scores over the ``smooth_scores``
    keyframes centred on it (where the person is seen; for an even K one more keyframe after than before);
    1 leaves scores as the model gave them. Smoothing delays results by ``smooth_scores // 2`` keyframes.
    """

    tracker: TrackerOptions = TrackerOptions()
    smooth_scores: int = 1

    def __post_init__(self):
        if not isinstance(self.smooth_scores, int) or self.smooth_scores < 1:
            raise ConfigError(f"smooth_scores must be an integer of at least 1 (1: off), got {self.smooth_scores!r}")

    @classmethod
    def from_value(cls, value) -> Optional["TrackingSettings"]:
        """The settings of ``ActionDetector(tracks=...)``: False/None -> None (no tracking), True -> defaults,
        a dict -> ``smooth_scores`` and any :class:`TrackerOptions` field by name."""
        if value is None or value is False:
            return None
        if value is True:
            return cls()
        if not isinstance(value, dict):
            raise ConfigError(f"tracks must be True, False or a dict of tracking options, got {value!r}")
        fields = {f.name for f in dataclasses.fields(TrackerOptions)}
        unknown = sorted(set(value) - fields - {"smooth_scores"})
        if unknown:
            raise ConfigError(f"unknown tracking option(s) {unknown}; use smooth_scores or {sorted(fields)}")
        tracker = TrackerOptions(**{k: v for k, v in value.items() if k in fields})
        return cls(tracker=tracker, smooth_scores=value.get("smooth_scores", 1))

    def as_dict(self) -> dict:
        """Plain values (for fingerprints and ``ActionDetector(tracks=...)``)."""
        return {**dataclasses.asdict(self.tracker), "smooth_scores": self.smooth_scores}


# --------------------------------------------------------------------------------------- motion model

class BoxKalmanFilter:
    """Constant-velocity Kalman filters of N boxes at once: state ``[cx, cy, w, h, vcx, vcy, vw, vh]`` per
    box in pixels (centre, size) and pixels per second, :attr:`x` (N, 8) float64 and covariances :attr:`P`
    (N, 8, 8); measurement ``[cx, cy, w, h]``.

    Noise scales with the box height ``h`` (a near person moves more pixels than a far one): measurement
    std 5% of h; per second, random drift of 10% of h in position and 30% of h/s in velocity (people change
    pace within a second), 5% of h in size. A new box starts with an unknown velocity (std 150% of h per
    second: a brisk walk is about one body height per second; smaller values break the tracks of fast people
    at their second keyframe).
    """

    MEASUREMENT_STD = 0.05
    POSITION_DRIFT = 0.10
    VELOCITY_DRIFT = 0.30
    SIZE_DRIFT = 0.05
    INITIAL_VELOCITY_STD = 1.50

    def __init__(self):
        self.x = np.zeros((0, 8))
        self.P = np.zeros((0, 8, 8))

    @staticmethod
    def _heights(values: np.ndarray) -> np.ndarray:
        return np.maximum(values[:, 3], 1.0)

    def add(self, boxes_px: np.ndarray) -> None:
        """Start filters at (M, 4) measurements; they are appended after the existing ones."""
        boxes_px = np.asarray(boxes_px, dtype=np.float64).reshape(-1, 4)
        std = (np.array([self.MEASUREMENT_STD] * 4 + [self.INITIAL_VELOCITY_STD] * 2 + [self.SIZE_DRIFT] * 2)
               * self._heights(boxes_px)[:, None])
        self.x = np.concatenate([self.x, np.concatenate([boxes_px, np.zeros_like(boxes_px)], 1)])
        self.P = np.concatenate([self.P, np.einsum("ni,ij->nij", std ** 2, np.eye(8))])

    def keep(self, mask: np.ndarray) -> None:
        """Drop the filters where ``mask`` (N,) bool is False."""
        self.x, self.P = self.x[mask], self.P[mask]

    def predict(self, dt: float) -> None:
        """Move every state ``dt`` seconds ahead."""
        if dt <= 0 or not len(self.x):
            return
        F = np.eye(8)
        F[:4, 4:] = np.eye(4) * dt
        drift = (np.array([self.POSITION_DRIFT] * 2 + [self.SIZE_DRIFT] * 2 + [self.VELOCITY_DRIFT] * 2
                          + [self.SIZE_DRIFT] * 2) * self._heights(self.x)[:, None]) ** 2 * dt
        self.x = self.x @ F.T
        self.P = np.einsum("ij,njk,lk->nil", F, self.P, F) + np.einsum("ni,ij->nij", drift, np.eye(8))

    def _inverse_innovation_covariances(self, rows=slice(None)) -> np.ndarray:
        r = (self.MEASUREMENT_STD * self._heights(self.x[rows])) ** 2
        return np.linalg.inv(self.P[rows, :4, :4] + r[:, None, None] * np.eye(4))

    def squared_mahalanobis(self, boxes_px: np.ndarray) -> np.ndarray:
        """(M, 4) measurements ``[cx, cy, w, h]`` -> (N, M) squared Mahalanobis distances to the predictions."""
        diff = boxes_px[None, :, :] - self.x[:, None, :4]
        return np.einsum("nmi,nij,nmj->nm", diff, self._inverse_innovation_covariances(), diff)

    def update(self, rows: np.ndarray, boxes_px: np.ndarray) -> None:
        """Correct the filters ``rows`` (K,) with their measurements (K, 4)."""
        if not len(rows):
            return
        K = np.einsum("nij,njk->nik", self.P[rows, :, :4], self._inverse_innovation_covariances(rows))
        self.x[rows] += np.einsum("nij,nj->ni", K, boxes_px - self.x[rows, :4])
        self.P[rows] -= np.einsum("nij,njk->nik", K, self.P[rows, :4, :])


def boxes_to_measurements(boxes: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """Normalized ``x1, y1, x2, y2`` (K, 4) -> ``[cx, cy, w, h]`` (K, 4) float64 in pixels of a (width,
    height) image."""
    width, height = image_size
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4) * np.array([width, height, width, height])
    return np.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2, b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], 1)


# --------------------------------------------------------------------------------------------- tracker

class _Track:
    """Bookkeeping of one track; its box filter is row ``i`` of the tracker's :class:`BoxKalmanFilter` when
    the track is ``i``-th in the tracker's list."""

    def __init__(self, track_id: int, feature: Optional[np.ndarray], budget: int):
        self.id = track_id
        self.features: deque = deque(maxlen=budget)
        if feature is not None:
            self.features.append(feature)
        self.hits = 1
        self.missed = 0

    def confirmed(self, confirm_hits: int) -> bool:
        return self.hits >= confirm_hits


def _unit_rows(features: np.ndarray) -> np.ndarray:
    features = np.asarray(features, dtype=np.float32)
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return features / np.maximum(norms, 1e-12)


def _similarities(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, D) x (M, D) -> (N, M) dot products, in one thread: numpy's BLAS would start its thread pool for
    these small products and, beside torch's threads, stall for milliseconds when the cores are busy."""
    return np.einsum("nd,md->nm", a, b)


class PersonTracker:
    """Online multi-person tracker for the keyframes of one video; ids start at 1 and are never reused.

    Call :meth:`update` once per keyframe in time order. See the module docstring for the method and
    :class:`TrackerOptions` for the rules.
    """

    def __init__(self, options: TrackerOptions = TrackerOptions()):
        self.options = options
        self._tracks: list[_Track] = []
        self._filters = BoxKalmanFilter()
        self._next_id = 1
        self._time: Optional[float] = None
        self._same = [0.0, 0]  # sum and count: cosine distance of a track's box to its previous feature
        self._between = [0.0, 0]  # sum and count: cosine distance between two boxes of one keyframe

    # appearance statistics of this video ------------------------------------------------------------

    def appearance_scale_and_trust(self) -> tuple[float, float]:
        """``(scale, trust)``: the mean distance between two people of one keyframe, and how much smaller a
        person's distance to itself is (0: appearance tells nobody apart, 1: it always does)."""
        if self._between[1] == 0 or self._same[1] == 0 or self._between[0] <= 0:
            return 1.0, 0.0
        between = self._between[0] / self._between[1]
        same = self._same[0] / self._same[1]
        return between, float(np.clip(1.0 - same / between, 0.0, 1.0))

    # per keyframe ----------------------------------------------------------------------------------------

    def update(self, boxes: np.ndarray, image_size: tuple[int, int], features: Optional[np.ndarray] = None,
               timestamp: Optional[float] = None) -> np.ndarray:
        """Ids (K,) int64 of the boxes of the next keyframe.

        ``boxes`` (K, 4) normalized ``x1, y1, x2, y2``; ``image_size`` (width, height) in pixels;
        ``features`` (K, D) appearance features (the head's pooled RoI features) or None; ``timestamp``
        seconds (default: one second after the previous keyframe).
        """
        options = self.options
        measurements = boxes_to_measurements(boxes, image_size)
        count = len(measurements)
        units = _unit_rows(features) if features is not None and count else None
        now = (self._time + 1.0 if self._time is not None else 0.0) if timestamp is None else float(timestamp)
        dt = now - self._time if self._time is not None else 0.0
        self._time = now
        self._filters.predict(dt)

        matches = self._assign(measurements, units) if self._tracks and count else []
        ids = np.zeros(count, dtype=np.int64)
        matched_tracks = set()
        self._filters.update(np.array([t for t, _ in matches], dtype=np.int64),
                             measurements[[d for _, d in matches]])
        for t, d in matches:
            track = self._tracks[t]
            if units is not None:
                if track.features:
                    self._same[0] += float(1.0 - _similarities(units[d:d + 1], track.features[-1][None])[0, 0])
                    self._same[1] += 1
                track.features.append(units[d])
            track.hits += 1
            track.missed = 0
            ids[d] = track.id
            matched_tracks.add(t)
        if units is not None and count > 1:
            distances = 1.0 - _similarities(units, units)
            upper = np.triu_indices(count, 1)
            self._between[0] += float(distances[upper].sum())
            self._between[1] += len(upper[0])

        alive = np.ones(len(self._tracks), dtype=bool)
        for t, track in enumerate(self._tracks):
            if t not in matched_tracks:
                track.missed += 1
                alive[t] = track.confirmed(options.confirm_hits) and track.missed <= options.max_missed
        self._tracks = [track for track, keep in zip(self._tracks, alive) if keep]
        self._filters.keep(alive)

        matched_boxes = {d for _, d in matches}
        # New tracks numbered left to right, top to bottom: ids do not depend on the detector's box order.
        born = sorted(set(range(count)) - matched_boxes, key=lambda d: (boxes[d][0], boxes[d][1], boxes[d][2]))
        for d in born:
            track = _Track(self._next_id, None if units is None else units[d], options.appearance_budget)
            self._next_id += 1
            self._tracks.append(track)
            ids[d] = track.id
        self._filters.add(measurements[born])
        return ids

    def _assign(self, measurements: np.ndarray, units: Optional[np.ndarray]) -> list[tuple[int, int]]:
        """Globally cheapest (track, box) pairs within the gates."""
        from scipy.optimize import linear_sum_assignment

        options = self.options
        motion = self._filters.squared_mahalanobis(measurements) / options.gate
        cost = motion.copy()
        scale, trust = self.appearance_scale_and_trust()
        if units is not None and options.appearance_weight > 0 and trust > 0:
            for t, track in enumerate(self._tracks):
                if track.features:
                    gallery = np.stack(track.features)
                    appearance = 1.0 - _similarities(units, gallery).max(axis=1)
                    cost[t] += options.appearance_weight * trust * appearance / scale
        infeasible = motion > 1.0
        cost[infeasible] = 1e6
        rows, columns = linear_sum_assignment(cost)
        return [(int(t), int(d)) for t, d in zip(rows, columns) if not infeasible[t, d]]


# ------------------------------------------------------------------------------------- stream stage

def track_results(results: Iterable["KeyframeResult"], settings: TrackingSettings = TrackingSettings(), *,
                  timings=None) -> Iterator["KeyframeResult"]:
    """Set ``person_id`` on each result of one video (in time order) and, with ``settings.smooth_scores``,
    smooth ``probs`` along each track; drops the results' ``features`` once used. Yields the results in
    order, ``smooth_scores // 2`` keyframes behind the input; when the input raises (a damaged video), the
    results held back are yielded first, smoothed over what was seen. The seconds spent here are added to
    ``timings.tracking`` when given (a :class:`~ava_pipeline.pipeline.StageTimings`)."""
    import time
    tracker = PersonTracker(settings.tracker)
    before = (settings.smooth_scores - 1) // 2
    after = settings.smooth_scores // 2
    window: deque = deque()  # (result, raw probs) of keyframes i - before .. i + after
    emitted = 0  # index in ``window`` of the next result to yield

    def emit(position: int) -> "KeyframeResult":
        start = time.perf_counter()
        result = window[position][0]
        if settings.smooth_scores > 1 and len(result.boxes):
            low, high = max(0, position - before), min(len(window), position + after + 1)
            result.probs = _smoothed(result.person_id, [window[i] for i in range(low, high)])
        if timings is not None:
            timings.tracking += time.perf_counter() - start
        return result

    def held_back() -> Iterator["KeyframeResult"]:
        for position in range(emitted, len(window)):
            yield emit(position)

    try:
        for result in results:
            start = time.perf_counter()
            result.person_id = tracker.update(result.boxes, result.image_size, result.features,
                                              float(result.timestamp))
            result.features = None
            if timings is not None:
                timings.tracking += time.perf_counter() - start
            window.append((result, result.probs))
            if len(window) > after + emitted:
                yield emit(emitted)
                emitted += 1
                while emitted > before:
                    window.popleft()
                    emitted -= 1
    except Exception:
        yield from held_back()
        raise
    yield from held_back()


def _smoothed(person_ids: np.ndarray, neighbours: Sequence[tuple["KeyframeResult", np.ndarray]]) -> np.ndarray:
    """Mean raw probabilities (K, C) of each person over ``neighbours`` (the keyframes where it is seen)."""
    sums, counts = {}, {}
    for result, probs in neighbours:
        for person, row in zip(result.person_id.tolist(), probs):
            sums[person] = sums[person] + row if person in sums else row.astype(np.float64)
            counts[person] = counts.get(person, 0) + 1
    return np.stack([sums[p] / counts[p] for p in person_ids.tolist()]).astype(np.float32)


# --------------------------------------------------------------------------------------------- segments

SEGMENT_THRESH = 0.5
"""Default score from which a keyframe belongs to an action segment (``--segment-thresh``)."""
SEGMENT_GAP = 1
"""Default number of keyframes below the threshold that do not cut a segment (``--segment-gap``)."""
SEGMENT_COLUMNS = ("video_id", "person_id", "action_id", "action_name", "start", "end", "peak_score",
                   "mean_score")
"""Columns of the segments CSV (with a header row)."""


@dataclass(frozen=True)
class ActionSegment:
    """One person doing one action over a contiguous span of keyframes.

    ``start`` / ``end``: times (seconds, as in the CSV) of the span's first and last keyframes at or above
    the threshold (inclusive). ``peak_score`` / ``mean_score``: the largest and the mean score of the action
    over the keyframes from start to end where the person is seen (including low ones in a bridged gap).
    """

    video_id: str
    person_id: int
    action_id: int
    action_name: str  # from the model's label map (as in the JSONL)
    start: object
    end: object
    peak_score: float
    mean_score: float


class SegmentBuilder:
    """Action segments of one video's tracked results, fed keyframe by keyframe (:meth:`add`).

    A span opens at a keyframe where the person's score of an action reaches ``thresh`` and goes on through
    the following such keyframes; up to ``max_gap`` keyframes in between where the score is lower (or the
    person unseen) do not cut it (hysteresis: one low second is a blip, not two actions).
    """

    def __init__(self, *, thresh: float = SEGMENT_THRESH, max_gap: int = SEGMENT_GAP):
        if not 0.0 <= thresh <= 1.0:
            raise ConfigError(f"segment threshold must be in [0, 1], got {thresh}")
        if max_gap < 0:
            raise ConfigError(f"segment max_gap must be at least 0, got {max_gap}")
        self.thresh, self.max_gap = thresh, max_gap
        self._open: dict[tuple[int, int], dict] = {}  # (person, column) -> span under construction
        self._closed: list[ActionSegment] = []
        self._index = -1
        self._video_id: Optional[str] = None

    def add(self, result: "KeyframeResult") -> None:
        if result.person_id is None and len(result.boxes):
            raise ConfigError(f"{result.video_id}: action segments need person ids; run the detector with "
                              "tracks=True (ava-detect --tracks)")
        self._video_id = result.video_id
        self._index += 1
        for key in [k for k, span in self._open.items() if self._index - span["last_index"] > self.max_gap + 1]:
            self._close(key)
        for person, probs in zip([] if result.person_id is None else result.person_id.tolist(), result.probs):
            for column in range(len(probs)):
                score = float(probs[column])
                span = self._open.get((person, column))
                if span is not None:
                    span["scores"].append(score)
                    if score >= self.thresh:
                        span.update(last_index=self._index, end=result.timestamp, kept=len(span["scores"]))
                elif score >= self.thresh:
                    self._open[(person, column)] = {"start": result.timestamp, "end": result.timestamp,
                                                    "last_index": self._index, "scores": [score], "kept": 1,
                                                    "action": (result.action_id(column), result.action_name(column))}

    def _close(self, key: tuple[int, int]) -> None:
        span = self._open.pop(key)
        scores = span["scores"][:span["kept"]]  # up to the last keyframe above the threshold
        self._closed.append(ActionSegment(self._video_id, key[0], *span["action"], span["start"], span["end"],
                                          max(scores), float(np.mean(scores))))

    def segments(self) -> list[ActionSegment]:
        """Every segment so far (open spans end at the last keyframe added), sorted by start, person, action."""
        for key in list(self._open):
            self._close(key)
        from .ava_csv import exact_seconds

        self._closed.sort(key=lambda s: (exact_seconds(s.start), s.person_id, s.action_id))
        return list(self._closed)


def action_segments(results: Iterable["KeyframeResult"], *, thresh: float = SEGMENT_THRESH,
                    max_gap: int = SEGMENT_GAP) -> list[ActionSegment]:
    """The :class:`ActionSegment` list of one video's tracked results (see :class:`SegmentBuilder`)."""
    builder = SegmentBuilder(thresh=thresh, max_gap=max_gap)
    for result in results:
        builder.add(result)
    return builder.segments()


__all__ = ["ActionSegment", "BoxKalmanFilter", "PersonTracker", "SEGMENT_COLUMNS", "SegmentBuilder",
           "TrackerOptions", "TrackingSettings", "action_segments", "track_results"]

"""Readers for the AVA evaluation inputs: box CSVs (ground truth or detections) and excluded timestamps.

The semantics are the official evaluator's (``EVAL_SPEC.md`` sections 1-2): no header; rows
``video_id, timestamp, x1, y1, x2, y2, action_id[, score_or_person_id]``; every field converted with Python's own
``float()`` / ``int()`` rules; rows whose action id is not in the label map are dropped before anything else; the
keyframe key is built from the timestamp *string* (``"%s,%04d" % (video, int(ts))`` for the 2019 protocol,
``"%s,%.6f" % (video, Decimal(ts))`` for 2020). Unlike the official code, a malformed input is never a traceback:
it is an :class:`~ava_pipeline.errors.InputFormatError` naming file and line, and input the official code silently
accepts but that is suspicious is a :class:`InputFormatWarning`.

Large files are parsed column-wise by pandas' C parser; any row that parser cannot take as a plain 8-column row
sends the file through a line-by-line validating reader (Python's ``csv``), which is the authority for messages
and line numbers.
"""
from __future__ import annotations

import csv
import decimal
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from ..errors import InputFormatError

KeyFunction = Callable[[str, str], str]


class InputFormatWarning(UserWarning):
    """Input the official evaluator accepts silently but that is probably a mistake (message names file:line)."""


def key_2019(video_id: str, timestamp: str) -> str:
    """Official 2019 keyframe key: ``"%s,%04d" % (video_id, int(timestamp))`` (``int()`` of the string)."""
    return "%s,%04d" % (video_id, int(timestamp))


def key_2020(video_id: str, timestamp: str) -> str:
    """Official 2020 (AVA-Kinetics) keyframe key: ``"%s,%.6f" % (video_id, Decimal(timestamp))``."""
    try:
        return "%s,%.6f" % (video_id, decimal.Decimal(timestamp))
    except decimal.InvalidOperation:
        raise ValueError(f"invalid timestamp {timestamp!r}") from None


@dataclass
class AvaRows:
    """The label-map-whitelisted rows of one AVA CSV, column-wise, in file order.

    ``boxes`` are float64 ``(N, 4)`` normalized ``x1, y1, x2, y2`` (top-left origin) exactly as written;
    ``scores`` float64 ``(N,)`` is the 8th column (detection score, or the person id for ground truth), 1.0 for
    7-column rows; ``actions`` int ``(N,)``; ``key_index`` int ``(N,)`` indexes ``keys``, which are ordered by
    each key's first whitelisted row (the official "image order"); ``lines`` int64 ``(N,)`` are 1-based line
    numbers (int); ``all_keys`` holds every key of the file, including key-only rows and non-whitelisted rows.
    """

    path: Path
    keys: list
    key_index: np.ndarray
    boxes: np.ndarray
    actions: np.ndarray
    scores: np.ndarray
    lines: np.ndarray
    all_keys: frozenset

    def __len__(self):
        return len(self.key_index)


def read_ava_csv(path, *, key_function: KeyFunction = key_2019, whitelist: Iterable[int] | None = None,
                 allow_key_only_rows: bool = False) -> AvaRows:
    """Read an AVA box CSV (ground truth or detections) with the official semantics; see the module docstring.

    ``whitelist``: action ids to keep (None keeps all). ``allow_key_only_rows``: accept 2-column
    ``video_id,timestamp`` rows (2020 protocol: annotated keyframes without boxes).
    Raises :class:`InputFormatError` naming file and line for a wrong column count, a non-numeric field or an
    unusable timestamp.
    """
    path = Path(path)
    if not path.is_file():
        raise InputFormatError(f"{path}: no such file; pass the path of an AVA CSV file")
    whitelist = None if whitelist is None else frozenset(int(a) for a in whitelist)
    columns = _parse_with_pandas(path, key_function, whitelist)
    if columns is None:
        columns = _parse_line_by_line(path, key_function, whitelist, allow_key_only_rows)
    return _assemble(path, columns, whitelist)


def read_exclusions(path, *, key_function: KeyFunction = key_2019) -> frozenset:
    """Keys of an excluded-timestamps CSV (rows ``video_id,timestamp``)."""
    path = Path(path)
    excluded = set()
    for line, row in csv_rows(path):
        if len(row) != 2:
            raise InputFormatError(
                f"{path}:{line}: expected 2 columns (video_id,timestamp), got {len(row)}: {','.join(row)!r}")
        excluded.add(_key(path, line, key_function, row[0], row[1]))
    return frozenset(excluded)


# ----------------------------------------------------------------------------------------------------------------
# fast path

_FLOAT_COLUMNS = (2, 3, 4, 5, 7)
_CHUNK_ROWS = 1 << 20
"""Rows parsed per pandas chunk; each chunk is whitelisted and compacted before the next is read."""


def _parse_with_pandas(path: Path, key_function: KeyFunction, whitelist):
    """Whitelisted columns of a file whose every row is a plain 8-column row, or None when the careful reader is
    needed (any other row shape, any value Python would reject, numeric-looking video ids)."""
    import pandas as pd

    dtypes = {0: "category", 1: "category", 6: "category", 8: "category"}
    dtypes.update({c: np.float64 for c in _FLOAT_COLUMNS})
    state = _ChunkState(key_function, whitelist)
    parts = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reader = pd.read_csv(path, header=None, names=range(9), index_col=False, dtype=dtypes,
                                 na_filter=False, skip_blank_lines=False, engine="c", encoding="utf-8",
                                 chunksize=_CHUNK_ROWS)
            for frame in reader:
                part = state.convert(frame, pd)
                if part is None:
                    return None
                parts.append(part)
    except Exception:  # any parse problem: the careful reader finds and names it
        return None
    if not parts:
        return None
    columns = {"pair_keys": state.pair_keys, "key_only_keys": ()}
    total = sum(len(p["scores"]) for p in parts)
    for name in ("boxes", "scores", "pair_index", "actions", "lines"):  # part by part: no doubled peak
        first = parts[0][name]
        joined = np.empty((total,) + first.shape[1:], dtype=first.dtype)
        offset = 0
        for part in parts:
            chunk = part.pop(name)
            joined[offset:offset + len(chunk)] = chunk
            offset += len(chunk)
        columns[name] = joined
    return columns


class _ChunkState:
    """Ids that stay the same across pandas chunks (each chunk has its own categories)."""

    def __init__(self, key_function, whitelist):
        self.key_function = key_function
        self.table = None
        if whitelist is not None:
            self.table = np.zeros(max(whitelist, default=0) + 2, dtype=bool)
            self.table[list(whitelist)] = True
        self.texts = {0: {}, 1: {}}
        self.pair_ids = {}
        self.pair_keys = []
        self.rows = 0

    def _global_ids(self, column, texts):
        ids = self.texts[column]
        return np.array([ids.setdefault(t, len(ids)) for t in texts], dtype=np.int64)

    def convert(self, frame, pd):
        if not _only_empty(frame[8]):
            return None
        video_codes, videos = _category_strings(frame[0])
        time_codes, times = _category_strings(frame[1], integers_ok=True,
                                              floats_ok=self.key_function is key_2020)
        action_codes, action_text = _category_strings(frame[6], integers_ok=True)
        if videos is None or times is None or action_text is None:
            return None
        try:
            actions = np.array([int(a) for a in action_text], dtype=np.int64)[action_codes]
        except (ValueError, OverflowError):
            return None
        video_ids = self._global_ids(0, videos)[video_codes]
        time_ids = self._global_ids(1, times)[time_codes]
        codes, uniques = pd.factorize((video_ids << 32) | time_ids)
        video_text = list(self.texts[0])
        time_text = list(self.texts[1])
        pair_global = np.empty(len(uniques), dtype=np.int64)
        for i, pair in enumerate(uniques.tolist()):
            if pair not in self.pair_ids:
                try:
                    key = self.key_function(video_text[pair >> 32], time_text[pair & 0xFFFFFFFF])
                except (ValueError, OverflowError):
                    return None
                self.pair_ids[pair] = len(self.pair_keys)
                self.pair_keys.append(key)
            pair_global[i] = self.pair_ids[pair]
        if self.table is None:
            kept = np.arange(len(frame))
        else:
            kept = np.flatnonzero(self.table[np.clip(actions, 0, self.table.size - 1)] & (actions >= 0))
        part = {
            "pair_index": pair_global[codes[kept]].astype(np.int32),
            "boxes": np.stack([frame[c].to_numpy(np.float64)[kept] for c in (2, 3, 4, 5)], axis=1),
            "actions": actions[kept].astype(np.int32),
            "scores": frame[7].to_numpy(np.float64)[kept],
            "lines": (self.rows + 1 + kept).astype(np.int32 if self.rows + len(frame) < 2 ** 31 else np.int64),
        }
        self.rows += len(frame)
        return part


def _only_empty(column) -> bool:
    categories = column.cat.categories
    return len(categories) == 0 or (len(categories) == 1 and categories[0] == "")


def _category_strings(column, integers_ok=False, floats_ok=False):
    """(codes, list of category texts) of a categorical column; texts None when pandas made them non-strings
    (numbers), except integer categories when ``integers_ok`` (their decimal text converts identically) and float
    categories when ``floats_ok`` (``repr`` round-trips; used where only the float value matters)."""
    categories = column.cat.categories
    codes = column.cat.codes.to_numpy()
    if categories.dtype.kind in "OSUT" or str(categories.dtype) in ("str", "string"):
        return codes, [str(c) for c in categories]
    if integers_ok and categories.dtype.kind in "iu":
        return codes, [str(int(c)) for c in categories]
    if floats_ok and categories.dtype.kind == "f":
        return codes, [repr(float(c)) for c in categories]
    return codes, None


# ----------------------------------------------------------------------------------------------------------------
# careful path

def csv_rows(path: Path):
    """(line number, row) for every row of a CSV file, with I/O and decoding errors as InputFormatError."""
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            for row in reader:
                yield reader.line_num, row
    except FileNotFoundError:
        raise InputFormatError(f"{path}: no such file; pass the path of an AVA CSV file") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputFormatError(f"{path}: cannot be read as a UTF-8 CSV file ({exc})") from None


def _key(path, line, key_function, video, timestamp):
    try:
        return key_function(video, timestamp)
    except (ValueError, OverflowError):
        raise InputFormatError(f"{path}:{line}: timestamp {timestamp!r} is not a valid keyframe time "
                               f"(expected integer seconds such as 0902)") from None


def _parse_line_by_line(path: Path, key_function: KeyFunction, whitelist, allow_key_only_rows: bool):
    """Validate every row in order, exactly as the official reader converts it; errors name file and line."""
    keys, key_ids, boxes, actions, scores, lines, key_only = [], {}, [], [], [], [], []
    pair_index = []
    expected = "2, 7 or 8" if allow_key_only_rows else "7 or 8"
    for line, row in csv_rows(path):
        if len(row) == 2 and allow_key_only_rows:
            key_only.append(_key(path, line, key_function, row[0], row[1]))
            continue
        if len(row) not in (7, 8):
            shown = repr(",".join(row)) if row else "(empty line)"
            raise InputFormatError(f"{path}:{line}: expected {expected} columns "
                                   f"(video_id,timestamp,x1,y1,x2,y2,action_id[,score]), got {len(row)}: {shown}")
        key = _key(path, line, key_function, row[0], row[1])
        try:
            box = [float(v) for v in row[2:6]]
        except ValueError:
            raise InputFormatError(f"{path}:{line}: box coordinates must be numbers, got {row[2:6]}") from None
        try:
            action = int(row[6])
        except ValueError:
            raise InputFormatError(f"{path}:{line}: action_id must be an integer, got {row[6]!r}") from None
        if whitelist is not None and action not in whitelist:
            if len(row) == 8 and not _is_float(row[7]):
                warnings.warn(f"{path}:{line}: non-numeric score {row[7]!r} on a row of action {action}, which "
                              f"the label map excludes; the row is ignored", InputFormatWarning, stacklevel=2)
            key_only.append(key)
            continue
        score = 1.0
        if len(row) == 8:
            try:
                score = float(row[7])
            except ValueError:
                raise InputFormatError(f"{path}:{line}: score must be a number, got {row[7]!r}") from None
        pair_index.append(key_ids.setdefault(key, len(keys)))
        if len(key_ids) > len(keys):
            keys.append(key)
        boxes.append(box)
        actions.append(action)
        scores.append(score)
        lines.append(line)
    return {
        "pair_keys": keys,
        "pair_index": np.asarray(pair_index, dtype=np.int64),
        "boxes": np.asarray(boxes, dtype=np.float64).reshape(-1, 4),
        "actions": np.asarray(actions, dtype=np.int64),
        "scores": np.asarray(scores, dtype=np.float64),
        "lines": np.asarray(lines, dtype=np.int64),
        "key_only_keys": key_only,
    }


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


# ----------------------------------------------------------------------------------------------------------------

def _assemble(path: Path, columns, whitelist) -> AvaRows:
    """Apply the whitelist and number the keys in order of their first whitelisted row."""
    pair_keys = columns["pair_keys"]
    all_keys = set(pair_keys).union(columns["key_only_keys"])
    actions = columns["actions"]
    if whitelist is None:
        keep = np.ones(len(actions), dtype=bool)
    else:
        table = np.zeros(max(whitelist) + 2, dtype=bool)
        table[list(whitelist)] = True
        keep = table[np.clip(actions, 0, table.size - 1)] & (actions >= 0)
    if not keep.all():  # the fast reader has whitelisted already; only the careful one gets here
        for name in ("pair_index", "boxes", "actions", "scores", "lines"):
            columns[name] = columns[name][keep]
    pair_index = columns["pair_index"]
    # distinct (video, timestamp) strings can give the same key ("0902" and "902"): merge them
    key_of_pair = {}
    merged = np.array([key_of_pair.setdefault(k, len(key_of_pair)) for k in pair_keys], dtype=np.int64)
    key_strings = list(key_of_pair)
    row_key = merged[pair_index] if len(pair_index) else np.zeros(0, dtype=np.int64)
    first_row = np.full(len(key_strings), len(row_key), dtype=np.int64)
    np.minimum.at(first_row, row_key, np.arange(len(row_key)))
    del pair_index
    present = np.flatnonzero(first_row < len(row_key))
    order = present[np.argsort(first_row[present], kind="stable")]
    rank = np.empty(len(key_strings), dtype=np.int64)
    rank[order] = np.arange(len(order))
    return AvaRows(
        path=path,
        keys=[key_strings[k] for k in order.tolist()],
        key_index=rank.astype(np.int32)[row_key] if len(row_key) else np.zeros(0, dtype=np.int32),
        boxes=columns["boxes"],
        actions=columns["actions"],
        scores=columns["scores"],
        lines=columns["lines"],
        all_keys=frozenset(all_keys),
    )

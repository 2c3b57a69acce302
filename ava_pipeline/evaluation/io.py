"""Readers for the AVA evaluation inputs: box CSVs (ground truth or detections) and excluded timestamps.

The semantics are the official evaluator's (``EVAL_SPEC.md`` sections 1-2): no header; rows
``video_id, timestamp, x1, y1, x2, y2, action_id[, score_or_person_id]``; every field converted with Python's own
``float()`` / ``int()`` rules; rows whose action id is not in the label map are dropped before anything else; the
keyframe key is built from the timestamp *string* (``"%s,%04d" % (video, int(ts))`` for the 2019 protocol,
``"%s,%.6f" % (video, Decimal(ts))`` for 2020). Unlike the official code, a malformed input is never a traceback:
it is an :class:`~ava_pipeline.errors.InputFormatError` naming file and line, and input the official code silently
accepts but that is suspicious is a :class:`InputFormatWarning` (for example a UTF-8 byte-order mark, Excel's "CSV
UTF-8", which the official reader and this one keep in the first video id, so that row matches nothing).

Files are parsed column-wise by pyarrow's multi-threaded CSV reader when every row is a plain 7- or 8-column row
it converts (floats correctly rounded, as ``float()``); any other file, or a missing pyarrow, goes through the
line-by-line validating reader (Python's ``csv``), which is the authority for messages and line numbers.
"""
from __future__ import annotations

import decimal
import itertools
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from ..ava_csv import csv_rows
from ..errors import InputFormatError, InputFormatWarning

KeyFunction = Callable[[str, str], str]


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
    if path.is_dir():
        raise InputFormatError(f"{path}: is a folder; pass one AVA CSV file (for the per-video files of an "
                               f"ava-detect batch: find {path} -name '*.csv' ! -name '.*' -exec cat {{}} + > "
                               "detections.csv; the files of videos its manifest lists as failed are partial)")
    if not path.is_file():
        raise InputFormatError(f"{path}: no such file; pass the path of an AVA CSV file")
    whitelist = None if whitelist is None else frozenset(int(a) for a in whitelist)
    columns = _parse_with_arrow(path, key_function, whitelist)
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

def _parse_with_arrow(path: Path, key_function: KeyFunction, whitelist):
    """Whitelisted columns of a file whose rows all have the first line's 7 or 8 fields, parsed by pyarrow's
    multi-threaded CSV reader one piece of the file at a time; None when the careful reader is needed (pyarrow
    missing, a byte-order mark at the start of a piece, which pyarrow would strip but the official reader keeps in
    the video id, blank lines, another column count, any value pyarrow or Python's ``int()`` / the key function
    rejects). pyarrow's float64 conversion is correctly rounded, like
    ``float()``, and rejects every string ``float()`` rejects (it also rejects a few that ``float()`` accepts, such
    as ``1_0``: those files take the careful path). Quoting is the ``csv`` module's default dialect in both
    readers."""
    try:
        import pyarrow as pa
        import pyarrow.csv as arrow_csv
    except ImportError:
        return None
    width = _plain_width(path)
    if width is None:
        return None
    names = _COLUMN_NAMES[:width]
    text = pa.dictionary(pa.int32(), pa.string())
    types = {name: pa.float64() for name in names}
    # the 2019 key and the action id depend only on int() of the text: pyarrow's int64 parse accepts a subset
    # of what int() accepts, with the same value
    types.update(video=text, time=pa.int64() if key_function is key_2019 else text, action=pa.int64())
    converter = _BatchConverter(key_function, whitelist, path.stat().st_size)
    options = dict(
        read_options=arrow_csv.ReadOptions(column_names=names, block_size=_BLOCK_BYTES),
        parse_options=arrow_csv.ParseOptions(ignore_empty_lines=False, newlines_in_values=False),
        convert_options=arrow_csv.ConvertOptions(column_types=types, null_values=[], strings_can_be_null=False,
                                                 quoted_strings_can_be_null=False))

    def parse(piece):
        if piece[:len(_BOM)] == _BOM:  # pyarrow would strip it; the careful reader keeps it
            raise ValueError("byte-order mark at the start of a piece")
        return len(piece), arrow_csv.read_csv(pa.BufferReader(piece), **options)

    try:
        for piece_bytes, table in _parsed_ahead(_pieces(path), parse):
            converter.expect_rows_like(piece_bytes, table.num_rows)
            for batch in table.to_batches():
                if not converter.convert(batch):
                    return None
    except (pa.ArrowException, OSError, ValueError):  # any parse problem: the careful reader finds and names it
        return None
    finally:
        pa.default_memory_pool().release_unused()  # hand the parse buffers back
    return {"pair_keys": converter.pair_keys, "key_only_keys": (), **converter.columns.filled()}


_COLUMN_NAMES = ("video", "time", "x1", "y1", "x2", "y2", "action", "score")
_BOM = b"\xef\xbb\xbf"
_PIECE_BYTES = 32 << 20
_BLOCK_BYTES = 4 << 20
"""The file is read in pieces of whole lines of about ``_PIECE_BYTES`` (bounding memory); pyarrow parses the
blocks of a piece in parallel."""


def _parsed_ahead(pieces, parse):
    """``parse(piece)`` for each piece, in order, the next one parsed on a worker thread while the caller
    converts the current one (pyarrow releases the GIL). A piece's parse has finished before the piece after
    the next one is drawn from ``pieces`` (``_pieces`` relies on it to reuse its buffers)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        pending = None
        for piece in pieces:
            upcoming = pool.submit(parse, piece)
            if pending is not None:
                yield pending.result()
            pending = upcoming
        if pending is not None:
            yield pending.result()


def _pieces(path: Path):
    """The file's bytes in consecutive pieces that end at a line end (memoryviews). The three buffers are reused
    in turn (no fresh pages to fault in), so a piece stays valid until the third piece after it is drawn."""
    buffers = [np.empty(0, dtype=np.uint8)] * 3
    with open(path, "rb") as handle:
        rest = b""
        for turn in itertools.count():
            if buffers[turn % 3].size < len(rest) + _PIECE_BYTES:
                buffers[turn % 3] = np.empty(len(rest) + _PIECE_BYTES, dtype=np.uint8)
            piece = buffers[turn % 3]
            piece[:len(rest)] = np.frombuffer(rest, dtype=np.uint8)
            view = memoryview(piece)[:len(rest) + _PIECE_BYTES]
            size = len(rest) + handle.readinto(view[len(rest):])
            if size == len(rest):
                if rest:
                    yield memoryview(rest)
                return
            cut = _last_line_end(piece, size)
            rest = bytes(view[cut:size])
            if cut:
                yield view[:cut]


def _last_line_end(piece, size):
    """Offset just after the last newline in ``piece[:size]`` (uint8 array), 0 if it has none."""
    tail = max(0, size - (1 << 16))
    for start, end in ((tail, size), (0, tail)):
        newlines = np.flatnonzero(piece[start:end] == ord("\n"))
        if newlines.size:
            return start + int(newlines[-1]) + 1
    return 0


def _plain_width(path: Path):
    """7 or 8: the field count of the first line when the file can go to pyarrow; else None."""
    with open(path, "rb") as handle:
        first = handle.readline()
    width = first.count(b",") + 1
    return width if width in (7, 8) else None


class _BatchConverter:
    """Turns pyarrow record batches into whitelisted numpy columns with file-wide ids (each batch has its own
    dictionaries), written straight into ``columns``: ``pair_keys[i]`` is the key of (video, timestamp) string
    pair ``i``."""

    def __init__(self, key_function: KeyFunction, whitelist, file_bytes: int):
        self.key_function = key_function
        self.file_bytes = file_bytes
        if whitelist is None:
            self.allowed = None
        else:  # allowed[action - low + 1]; the first and last entries (out of range) are False
            self.low = min(whitelist, default=0)
            self.allowed = np.zeros(max(whitelist, default=0) - self.low + 3, dtype=bool)
            self.allowed[np.fromiter(whitelist, dtype=np.int64, count=len(whitelist)) - self.low + 1] = True
        small_ints = file_bytes < 2 ** 31  # a line takes at least 2 bytes: row and pair numbers fit int32
        action_type = (np.int32 if whitelist is not None and all(abs(a) < 2 ** 31 for a in whitelist)
                       else np.int64)
        self.columns = _Columns(boxes=(np.float64, 4), scores=(np.float64, None),
                                pair_index=(np.int32 if small_ints else np.int64, None),
                                actions=(action_type, None), lines=(np.int32 if small_ints else np.int64, None))
        self.videos, self.times = _Names(), _Names()
        self.pair_ids = {}
        self.pair_keys = []
        self.rows = 0

    def expect_rows_like(self, piece_bytes: int, piece_rows: int):
        """Size the columns, on the first piece, for a file as dense in rows as that piece (2 % spare)."""
        if self.columns.capacity == 0 and piece_bytes:
            self.columns.grow(int(piece_rows * self.file_bytes / piece_bytes * 1.02) + 1024)

    def convert(self, batch) -> bool:
        """Append the batch's whitelisted rows; False when a value needs the careful reader (a timestamp the
        key function rejects)."""
        video_codes, video_ids = _codes(batch.column(0), self.videos)
        time_codes, time_ids = _codes(batch.column(1), self.times)
        actions = _numpy_view(batch.column(6), np.int64)
        try:
            pair_of_row = self._pairs(video_codes, video_ids, time_codes, time_ids)
        except (ValueError, OverflowError):
            return False
        if self.allowed is None:
            kept = slice(None)
            count = batch.num_rows
        else:
            kept = np.flatnonzero(self.allowed[np.clip(actions - (self.low - 1), 0, self.allowed.size - 1)])
            count = kept.size
        start = self.columns.extend(count)
        end = start + count
        boxes = self.columns.boxes
        for j in range(4):
            boxes[start:end, j] = _numpy_view(batch.column(2 + j), np.float64)[kept]
        self.columns.scores[start:end] = (_numpy_view(batch.column(7), np.float64)[kept]
                                          if batch.num_columns == 8 else 1.0)
        self.columns.pair_index[start:end] = pair_of_row[kept]
        self.columns.actions[start:end] = actions[kept]
        self.columns.lines[start:end] = np.arange(self.rows + 1, self.rows + 1 + batch.num_rows)[kept]
        self.rows += batch.num_rows
        return True

    def _pairs(self, video_codes, video_ids, time_codes, time_ids):
        """File-wide pair id per row (int32) from per-row codes into ``video_ids`` / ``time_ids`` (file-wide ids:
        numbered texts, or the int64 timestamp itself); computes the key of every new pair (ValueError if the key
        function rejects it, or when the ids do not fit the packed pair code)."""
        width = max(time_ids.size, 1)
        distinct, slot_of_row = _distinct(video_codes.astype(np.int64) * width + time_codes)
        pair_video, pair_time = video_ids[distinct // width], time_ids[distinct % width]
        if len(self.videos.texts) >= 1 << 23 or (pair_time.size and (
                pair_time.min() < -_TIME_BIAS or pair_time.max() >= _TIME_BIAS)):
            raise ValueError("pair ids out of the packed range")
        pair_ids = []
        for code, video, time in zip(((pair_video << 40) + (pair_time + _TIME_BIAS)).tolist(),
                                     pair_video.tolist(), pair_time.tolist()):
            pair = self.pair_ids.get(code)
            if pair is None:
                pair = self.pair_ids[code] = len(self.pair_keys)
                time_text = self.times.texts[time] if self.times.texts else str(time)
                self.pair_keys.append(self.key_function(self.videos.texts[video], time_text))
            pair_ids.append(pair)
        return np.array(pair_ids, dtype=np.int32)[slot_of_row]


_TIME_BIAS = 1 << 39
"""Pair code = video id << 40 | (timestamp id + _TIME_BIAS): int64 timestamps within +-2**39 s, 2**23 videos."""


class _Names:
    """Texts numbered in order of first sight (``texts[id]``)."""

    def __init__(self):
        self.ids = {}
        self.texts = []

    def number(self, texts) -> np.ndarray:
        """File-wide ids (int64) of ``texts``."""
        for text in texts:
            if text not in self.ids:
                self.ids[text] = len(self.texts)
                self.texts.append(text)
        return np.array([self.ids[text] for text in texts], dtype=np.int64)


class _Columns:
    """Growable numpy columns filled front to back: ``name=(dtype, width or None)``. Capacity beyond the filled
    rows is never written, so it costs address space, not memory."""

    def __init__(self, **layout):
        self.layout = layout
        self.capacity = 0
        self.size = 0
        for name, (dtype, width) in layout.items():
            setattr(self, name, np.empty((0,) if width is None else (0, width), dtype=dtype))

    def grow(self, capacity: int):
        for name, (dtype, width) in self.layout.items():
            old = getattr(self, name)
            new = np.empty((capacity,) if width is None else (capacity, width), dtype=dtype)
            new[:self.size] = old[:self.size]
            setattr(self, name, new)
        self.capacity = capacity

    def extend(self, count: int) -> int:
        """Make room for ``count`` more rows; returns the first row's index."""
        start = self.size
        if start + count > self.capacity:
            self.grow(max(start + count, self.capacity + self.capacity // 2))
        self.size = start + count
        return start

    def filled(self) -> dict:
        return {name: getattr(self, name)[:self.size] for name in self.layout}


def _codes(array, names: _Names):
    """(int codes (N,), file-wide id of each code (int64)) of a pyarrow array: dictionary-encoded texts get ids
    from ``names``; an int64 array's ids are its distinct values."""
    if not hasattr(array, "dictionary"):
        distinct, codes = _distinct(_numpy_view(array, np.int64))
        return codes, distinct
    return _numpy_view(array.indices, np.int32), names.number(array.dictionary.to_pylist())


def _distinct(values):
    """(sorted distinct values, int32 index into them per element) of an int64 array: a lookup table when the
    values span a small range, else a sort."""
    if not values.size:
        return values, values.astype(np.int32)
    low = int(values.min())
    span = int(values.max()) - low + 1
    if span > 1 << 22:
        distinct, codes = np.unique(values, return_inverse=True)
        return distinct, codes.reshape(-1).astype(np.int32)
    present = np.zeros(span, dtype=bool)
    present[values - low] = True
    offsets = np.flatnonzero(present)
    code_of = np.zeros(span, dtype=np.int32)
    code_of[offsets] = np.arange(offsets.size, dtype=np.int32)
    return offsets + low, code_of[values - low]


def _numpy_view(array, dtype):
    """Zero-copy numpy view of a null-free fixed-width pyarrow array (pyarrow's own ``to_numpy`` would import
    pandas)."""
    itemsize = np.dtype(dtype).itemsize
    return np.frombuffer(array.buffers()[1], dtype=dtype, count=len(array), offset=array.offset * itemsize)


# ----------------------------------------------------------------------------------------------------------------
# careful path

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
    distinct_keys = set(pair_keys)
    all_keys = distinct_keys.union(columns["key_only_keys"])
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
    if len(distinct_keys) == len(pair_keys):
        merged, key_strings = np.arange(len(pair_keys)), pair_keys
    else:  # distinct (video, timestamp) strings can give the same key ("0902" and "902"): merge them
        key_of_pair = {}
        merged = np.array([key_of_pair.setdefault(k, len(key_of_pair)) for k in pair_keys], dtype=np.int64)
        key_strings = list(key_of_pair)
    row_key = merged[pair_index] if len(pair_index) else np.zeros(0, dtype=np.int64)
    first_row = np.full(len(key_strings), len(row_key), dtype=np.int64)
    run_starts = np.flatnonzero(np.r_[True, row_key[1:] != row_key[:-1]]) if len(row_key) else row_key
    np.minimum.at(first_row, row_key[run_starts], run_starts)  # a key's first row starts a run of its rows
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

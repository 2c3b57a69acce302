"""AVA CSV rows and time values, shared by the box reader, the evaluator and training (no torch).

Times are exact: a keyframe time is a ``Fraction`` of seconds from the video start, written as a plain decimal
(``902``, ``902.5``) or a fraction (``1805/2``). Box rows are ``video_id,timestamp,x1,y1,x2,y2[,label[,score]]``
with coordinates normalized to [0, 1] (top-left origin). The evaluator keeps the official reader's own, looser
conversions (``evaluation/io.py``); everything else reads rows through here.
"""
from __future__ import annotations

import csv
import re
import warnings
from fractions import Fraction
from pathlib import Path
from typing import Iterator, Union

from .errors import InputFormatError, InputFormatWarning

Seconds = Union[int, float, str, Fraction]

SECONDS_TEXT = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+|[0-9]+/[0-9]+)")
"""How a time may be written in a keyframe spec or a box file: a plain decimal (``902``, ``902.5``) or a fraction
(``1805/2``); no exponent, which would let ``Fraction`` build a number of a hundred million digits."""

BOX_CSV_FORMAT = "video_id,timestamp,x1,y1,x2,y2[,label[,score]]"


def parse_seconds(text: str) -> Fraction:
    """The exact time written as ``text`` (see :data:`SECONDS_TEXT`; surrounding spaces are ignored); ValueError
    for anything else."""
    text = text.strip()
    if not SECONDS_TEXT.fullmatch(text):
        raise ValueError(f"{text!r} is not a number of seconds")
    try:
        return Fraction(text)
    except ZeroDivisionError:
        raise ValueError(f"{text!r} divides by zero") from None


def exact_seconds(value: Seconds) -> Fraction:
    """``value`` as an exact time: ints and Fractions as they are, text through :func:`parse_seconds`, floats
    to the nearest fraction with a denominator of at most 10^6 (``0.1`` is 1/10, not its binary value)."""
    if isinstance(value, float):
        return Fraction(value).limit_denominator(1_000_000)
    if isinstance(value, str):
        return parse_seconds(value)
    return Fraction(value)


def plain_seconds(value: Fraction) -> Union[int, Fraction]:
    """An int for whole seconds, else the Fraction itself."""
    return value.numerator if value.denominator == 1 else value


def format_seconds(seconds: Seconds) -> str:
    """``902`` for whole seconds, else up to 6 decimals (``902.5``): the timestamp text of our CSVs."""
    value = exact_seconds(seconds)
    if value.denominator == 1:
        return str(value.numerator)
    return f"{float(value):.6f}".rstrip("0").rstrip(".")


def seconds_value(seconds: Seconds) -> Union[int, float]:
    """The time as a JSON-ready number: int for whole seconds, else float."""
    value = exact_seconds(seconds)
    return value.numerator if value.denominator == 1 else float(value)


def csv_rows(path: Union[str, Path], *, encoding: str = "utf-8") -> Iterator[tuple[int, list[str]]]:
    """(line number, row) for every row of a CSV file, with I/O and decoding errors as InputFormatError.
    ``encoding`` ``"utf-8"`` keeps a byte-order mark in the first field, as the official evaluator does, and warns
    (:class:`InputFormatWarning`); ``"utf-8-sig"`` skips it."""
    try:
        with open(path, newline="", encoding=encoding) as handle:
            reader = csv.reader(handle)
            for row in reader:
                if reader.line_num == 1 and row and row[0].startswith("\ufeff"):
                    warnings.warn(f"{path}:1: the file starts with a UTF-8 byte-order mark (Excel's \"CSV UTF-8\"), "
                                  f"which the official evaluator keeps in the first video id ({row[0]!r}), so that "
                                  "row matches nothing; save the file as plain CSV", InputFormatWarning, stacklevel=2)
                yield reader.line_num, row
    except FileNotFoundError:
        raise InputFormatError(f"{path}: no such file; pass the path of an AVA CSV file") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputFormatError(f"{path}: cannot be read as a UTF-8 CSV file ({exc})") from None


def box_file_rows(path: Union[str, Path]) -> Iterator[tuple[int, list[str]]]:
    """(line number, stripped fields) of the data rows of an AVA box or annotation CSV: a UTF-8 byte-order mark
    (Excel's "CSV UTF-8") is skipped, blank lines and a pandas-style header line (``video_id,timestamp,...``)
    too."""
    for line_number, row in csv_rows(path, encoding="utf-8-sig"):
        fields = [value.strip() for value in row]
        if not any(fields):
            continue
        if line_number == 1 and fields[:2] == ["video_id", "timestamp"]:
            continue
        yield line_number, fields


def parse_keyframe_box(fields: list[str], where: str
                       ) -> tuple[str, Fraction, tuple[str, str, str, str], tuple[float, float, float, float]]:
    """(video id, exact time, the four coordinate texts, their values) of the first 6 fields of an AVA row
    (``video_id,timestamp,x1,y1,x2,y2``, normalized, x1 <= x2, y1 <= y2); InputFormatError naming ``where``."""
    video_id = fields[0].strip()
    if not video_id:
        raise InputFormatError(f"{where}: empty video id; the first field names the video by its file stem")
    try:
        time = parse_seconds(fields[1])
    except ValueError:
        raise InputFormatError(f"{where}: timestamp {fields[1]!r} is not a number of seconds") from None
    texts = (fields[2], fields[3], fields[4], fields[5])
    try:
        x1, y1, x2, y2 = (float(value) for value in texts)
    except ValueError:
        raise InputFormatError(f"{where}: box {','.join(texts)!r} has a coordinate that is not a number") from None
    if not all(0.0 <= value <= 1.0 for value in (x1, y1, x2, y2)):  # also rejects NaN
        raise InputFormatError(f"{where}: box {','.join(texts)} is not normalized to [0, 1] (pixel "
                               "coordinates?); divide x by the frame width and y by its height")
    if x2 < x1 or y2 < y1:
        raise InputFormatError(f"{where}: box {','.join(texts)} has x2 < x1 or y2 < y1; the order is x1,y1,x2,y2")
    return video_id, time, texts, (x1, y1, x2, y2)


def parse_box_row(fields: list[str], where: str, *, score_column: bool = True
                  ) -> tuple[str, Fraction, tuple[str, str, str, str], float]:
    """(video id, exact time, the four coordinate texts, score) of one row of :func:`box_file_rows`;
    ``where`` is ``file:line`` for the error messages. The score (8th field) counts as 1.0 when absent, or when
    ``score_column`` is False (ground-truth files, whose 8th field is a person id)."""
    if len(fields) not in (6, 7, 8):
        raise InputFormatError(f"{where}: expected 6 to 8 comma-separated fields ({BOX_CSV_FORMAT}), "
                               f"got {len(fields)}")
    video_id, time, texts, _ = parse_keyframe_box(fields, where)
    score = 1.0
    if len(fields) == 8 and score_column:
        try:
            score = float(fields[7])
        except ValueError:
            raise InputFormatError(f"{where}: score {fields[7]!r} is not a number") from None
        if not 0.0 <= score <= 1.0:  # also rejects NaN
            raise InputFormatError(f"{where}: score {fields[7]} is outside [0, 1]; the 8th field is a detection "
                                   "score (a ground-truth file's person ids are not scores)")
    return video_id, time, texts, score

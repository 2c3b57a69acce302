"""The fast CSV path (pyarrow, in pieces, parsed ahead) against the line-by-line reader, and the threaded sort."""
import sys

import numpy as np
import pytest

from ava_pipeline.errors import InputFormatError
from ava_pipeline.evaluation import InputFormatWarning, evaluate, io, key_2020, legacy_argsort, read_ava_csv

LABELS = 'label {\n  name: "one"\n  label_id: 1\n}\nlabel {\n  name: "two"\n  label_id: 2\n}\n'
WHITELIST = {1, 2}


def detection_text(rows=3000, seed=0, columns=8):
    """A detection CSV of ``rows`` rows over 3 videos, with ``0902``/``902`` spellings of one time, non-whitelisted
    actions, 3-decimal boxes near ``0.1,0.1,0.5,0.9`` and 4-decimal (heavily tied) scores."""
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(rows):
        video = "vid%d" % rng.integers(3)
        time = ("0902", "902", "0903", "1000")[rng.integers(4)]
        x1, y1 = rng.integers(100, 130, 2) / 1000
        box = "%.3f,%.3f,%.3f,%.3f" % (x1, y1, x1 + rng.integers(300, 420) / 1000, y1 + rng.integers(700, 820) / 1000)
        score = ",%.4f" % (rng.integers(0, 200) / 1e4) if columns == 8 else ""
        lines.append(f"{video},{time},{box},{rng.integers(1, 4)}{score}")
    return "\n".join(lines) + "\n"


@pytest.fixture
def small_pieces(monkeypatch):
    """Pieces and pyarrow blocks of a few kB, so that a test file spans many of both."""
    monkeypatch.setattr(io, "_PIECE_BYTES", 9000)
    monkeypatch.setattr(io, "_BLOCK_BYTES", 4096)


def careful(path, **kwargs):
    """read_ava_csv through the line-by-line reader only."""
    original = io._parse_with_arrow
    io._parse_with_arrow = lambda *args: None
    try:
        return read_ava_csv(path, **kwargs)
    finally:
        io._parse_with_arrow = original


def assert_same_rows(a, b):
    assert a.keys == b.keys and a.all_keys == b.all_keys
    for name in ("key_index", "boxes", "actions", "scores", "lines"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name


@pytest.mark.parametrize("columns", [8, 7])
def test_fast_and_careful_readers_agree(tmp_path, small_pieces, columns):
    path = tmp_path / "det.csv"
    path.write_text(detection_text(columns=columns))
    assert io._parse_with_arrow(path, io.key_2019, frozenset(WHITELIST)) is not None  # the fast path is taken
    fast = read_ava_csv(path, whitelist=WHITELIST)
    assert_same_rows(fast, careful(path, whitelist=WHITELIST))
    assert len(fast.keys) == 9 and "vid0,0902" in fast.keys  # "902" and "0902" merged
    assert set(fast.actions.tolist()) == WHITELIST and fast.lines.max() <= 3000
    assert (fast.scores == 1.0).all() == (columns == 7)


def test_fast_and_careful_floats_are_bit_identical(tmp_path):
    rng = np.random.default_rng(1)
    texts = [repr(float(v)) for v in rng.random(300)] + ["%.17g" % v for v in rng.random(300) * 1e-5] + \
            ["1e-320", "0.1000000000000000055511151231257827", "-0", "+.5", "5.", "inf", "nan", "1E+2"]
    path = tmp_path / "det.csv"
    path.write_text("".join(f"v,0902,{t},0,1,1,1,{t}\n" for t in texts))
    fast = read_ava_csv(path)
    assert io._parse_with_arrow(path, io.key_2019, None) is not None
    expected = np.array([float(t) for t in texts])
    assert np.array_equal(fast.scores, expected, equal_nan=True)
    assert np.array_equal(fast.boxes[:, 0].view(np.int64), expected.view(np.int64))  # bits, -0.0 included


@pytest.mark.parametrize("bad, message", [
    ("v,0902,0.1,0.1,0.5,0.9,1,1_0", None),                        # float() takes it, pyarrow does not
    ("v,0902.0,0.1,0.1,0.5,0.9,1,0.5", r"det\.csv:1801: timestamp '0902.0'"),
    ("v,0902,0.1,0.1,0.5,0.9,1,", r"det\.csv:1801: score must be a number"),
    ("v,0902,0.1,0.1,0.5,0.9,1", None),                            # a 7-column row in an 8-column file
    ("", r"det\.csv:1801: expected 7 or 8 columns .* \(empty line\)"),
    ("v,0902,0.1,0.1,0.5,0.9,x,0.5", r"det\.csv:1801: action_id must be an integer"),
])
def test_rows_the_fast_path_refuses_take_the_careful_path(tmp_path, small_pieces, bad, message):
    lines = detection_text(rows=3000).splitlines()
    lines[1800] = bad
    path = tmp_path / "det.csv"
    path.write_text("\n".join(lines) + "\n")
    assert io._parse_with_arrow(path, io.key_2019, frozenset(WHITELIST)) is None
    if message is None:
        assert_same_rows(read_ava_csv(path, whitelist=WHITELIST), careful(path, whitelist=WHITELIST))
    else:
        with pytest.raises(InputFormatError, match=message):
            read_ava_csv(path, whitelist=WHITELIST)


def test_quoted_fields_read_alike(tmp_path, small_pieces):
    lines = detection_text(rows=3000).splitlines()
    lines[1800] = '"vid1","0902",0.1,"0.1",0.5,0.9,"1",0.5'
    path = tmp_path / "det.csv"
    path.write_text("\n".join(lines) + "\n")
    fast = read_ava_csv(path, whitelist=WHITELIST)
    assert io._parse_with_arrow(path, io.key_2019, frozenset(WHITELIST)) is not None
    assert_same_rows(fast, careful(path, whitelist=WHITELIST))
    assert 1801 in fast.lines.tolist()


def test_byte_order_mark_stays_in_the_video_id_with_a_warning_and_2020_keys(tmp_path):
    path = tmp_path / "det.csv"
    path.write_bytes(b"\xef\xbb\xbf" + detection_text(rows=20).encode())
    with pytest.warns(InputFormatWarning, match="det.csv:1: the file starts with a UTF-8 byte-order mark"):
        rows = read_ava_csv(path)
    assert rows.keys[0].startswith("\ufeff")  # as the official reader: that row matches nothing
    path.write_text("v,902.5,0.1,0.1,0.5,0.9,1,0.5\nv,0902.50,0.1,0.1,0.5,0.9,2,0.5\n")
    assert read_ava_csv(path, key_function=key_2020).keys == ["v,902.500000"]


def test_byte_order_mark_inside_the_file_takes_the_careful_path(tmp_path, small_pieces):
    text = detection_text(rows=3000)
    middle = text.rindex("\n", 0, io._PIECE_BYTES) + 1  # where the second piece starts
    path = tmp_path / "det.csv"
    path.write_bytes(text[:middle].encode() + b"\xef\xbb\xbf" + text[middle:].encode())
    rows = read_ava_csv(path)
    assert_same_rows(rows, careful(path))  # pyarrow would strip it at a piece start; Python's csv keeps it
    assert sum(key.startswith("\ufeff") for key in rows.all_keys) == 1


def test_results_without_pyarrow_are_identical(tmp_path, small_pieces, monkeypatch):
    (tmp_path / "labels.pbtxt").write_text(LABELS)
    gt = "".join(f"vid{v},{t},0.1,0.1,0.5,0.9,{a},0\n" for v in range(3) for t in ("0902", "0903", "1000")
                 for a in (1, 2))
    (tmp_path / "gt.csv").write_text(gt)
    (tmp_path / "det.csv").write_text(detection_text())
    args = (tmp_path / "gt.csv", tmp_path / "det.csv", tmp_path / "labels.pbtxt")
    fast = evaluate(*args)
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow now raises ImportError
    slow = evaluate(*args)
    assert fast.per_class == slow.per_class and fast.mAP == slow.mAP and 0 < fast.mAP < 1


def test_threaded_legacy_argsort_equals_single_thread():
    rng = np.random.default_rng(2)
    for _ in range(20):
        n = int(rng.integers(0, 4000))
        values = np.round(rng.random(n), 2)
        starts = np.unique(np.r_[0, rng.integers(0, n + 1, rng.integers(0, 12))])
        relevant = rng.random(n) < 0.3
        single = legacy_argsort(values, starts, relevant)
        for threads in (2, 3):
            assert np.array_equal(legacy_argsort(values, starts, relevant, threads=threads), single)


def test_widely_spread_timestamps_and_actions(tmp_path):
    path = tmp_path / "det.csv"
    path.write_text("v,0001,0.1,0.1,0.5,0.9,1,0.5\nw,90000000,0.1,0.1,0.5,0.9,80000000,0.5\n"
                    "v,1,0.1,0.1,0.5,0.9,-3,0.25\n")
    assert io._parse_with_arrow(path, io.key_2019, None) is not None
    fast = read_ava_csv(path)
    assert_same_rows(fast, careful(path))
    assert fast.keys == ["v,0001", "w,90000000"] and fast.actions.tolist() == [1, 80000000, -3]


def test_two_thread_key_ranges_give_identical_results(tmp_path, monkeypatch):
    from ava_pipeline.evaluation import frame_map

    (tmp_path / "labels.pbtxt").write_text(LABELS)
    gt = "".join(f"vid{v},{t},0.1,0.1,0.5,0.9,{a},0\n" for v in range(3) for t in ("0902", "0903", "1000")
                 for a in (1, 2))
    (tmp_path / "gt.csv").write_text(gt)
    lines = detection_text(rows=6000, seed=3).replace(",902,", ",0902,").splitlines()
    (tmp_path / "det.csv").write_text("\n".join(sorted(lines, key=lambda line: line.split(",")[:2])) + "\n")
    args = (tmp_path / "gt.csv", tmp_path / "det.csv", tmp_path / "labels.pbtxt")
    single = evaluate(*args)
    splits = []
    original = frame_map._in_two_key_ranges

    def counting(key, work):
        results = original(key, work)
        splits.append(len(results))
        return results

    monkeypatch.setattr(frame_map, "_SPLIT_MIN_ROWS", 2)
    monkeypatch.setattr(frame_map, "_in_two_key_ranges", counting)
    threaded = evaluate(*args)
    assert 2 in splits  # the cap and the ordering really ran on two key ranges
    assert threaded.per_class == single.per_class and threaded.mAP == single.mAP and 0 < single.mAP < 1
    assert threaded.detection_counts == single.detection_counts and sum(single.detection_counts.values()) <= 9 * 50


def test_group_search_equals_group_table(tmp_path, monkeypatch):
    from ava_pipeline.evaluation import frame_map

    (tmp_path / "labels.pbtxt").write_text(LABELS)
    gt = "".join(f"vid{v},{t},0.1,0.1,0.5,0.9,{a},0\n" for v in range(3) for t in ("0902", "0903", "1000")
                 for a in (1, 2))
    (tmp_path / "gt.csv").write_text(gt)
    (tmp_path / "det.csv").write_text(detection_text(rows=2000, seed=4))
    args = (tmp_path / "gt.csv", tmp_path / "det.csv", tmp_path / "labels.pbtxt")
    table = evaluate(*args)
    monkeypatch.setattr(frame_map, "_GROUP_TABLE_MAX", 0)  # every lookup by binary search
    searched = evaluate(*args)
    assert searched.per_class == table.per_class and searched.mAP == table.mAP and 0 < table.mAP < 1

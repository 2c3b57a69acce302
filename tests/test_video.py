"""ava_pipeline.video: AVA's 30 fps frame grid straight from a movie, keyframe clips, bad files.

Every test video shows its own frame index (tests/videos.py), so the frames a clip holds are checked exactly.
Where ``ffmpeg`` is installed, the grid is compared with the frames ``ffmpeg -i video -r 30`` extracts (AVA's
extraction command); without it, with sequences recorded from FFmpeg 5.1 for the same files.
"""
import gc
import subprocess
from fractions import Fraction

import av
import cv2
import numpy as np
import pytest

from ava_pipeline.errors import VideoDecodeError
from ava_pipeline.video import (VideoReader, VideoTruncatedError, _NeededFrames, _PooledRgbConverter, _SourceFrame,
                                _upright_rgb, iter_clips, keyframe_schedule, keyframes_from_boxes)
from tests.videos import (ffmpeg_available, ffmpeg_grid_indices, index_image, read_index, write_index_video)

needs_ffmpeg = pytest.mark.skipif(not ffmpeg_available(), reason="ffmpeg is not installed")

LOSSLESS_RGB = dict(codec="png", pix_fmt="rgb24")  # .mov: exact RGB frames
# name -> write_index_video arguments: constant rates below, at and above 30 fps, variable frame rate,
# a non-zero first timestamp, audio that starts before the video, H.264 with B-frames.
VIDEOS = {
    "cfr24.mkv": dict(num_frames=50, fps=24),
    "cfr60.mov": dict(num_frames=100, fps=60, **LOSSLESS_RGB),
    "ntsc.mov": dict(num_frames=120, fps=Fraction(30000, 1001), time_base=Fraction(1001, 30000), **LOSSLESS_RGB),
    "vfr.mkv": dict(num_frames=50, vfr_pattern=[Fraction(1, 30), Fraction(1, 15), Fraction(1, 60), Fraction(1, 10)]),
    "vfr.mov": dict(num_frames=60, time_base=Fraction(1, 90000), **LOSSLESS_RGB,
                    vfr_pattern=[Fraction(n, 1000) for n in (37, 12, 85, 33, 61, 20, 104, 9, 45)]),
    "start2.1s.mkv": dict(num_frames=50, start_s=Fraction(21, 10)),
    "audio_first.mkv": dict(num_frames=50, start_s=Fraction(1, 2), audio_from_s=0),
    "bframes_vfr.mp4": dict(num_frames=70, codec="libx264", size=(128, 96), time_base=Fraction(1, 90000),
                            vfr_pattern=[Fraction(1, 30), Fraction(1, 20), Fraction(1, 50)]),
}
# First grid frames `ffmpeg -i video -r 30` (FFmpeg 5.1) extracts from some VIDEOS.
FFMPEG_5_1_GRID_STARTS = {
    "cfr24.mkv": [0, 1, 2, 3, 3, 4, 5, 6, 6, 7, 8, 9, 10, 10, 11, 12, 13, 14, 15, 15],
    "cfr60.mov": [0, 1, 2, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23],
    "vfr.mkv": [0, 1, 2, 2, 3, 3, 4, 4, 5, 6, 6, 7, 8, 8, 9, 10, 10, 11, 11, 12],
    "start2.1s.mkv": list(range(20)),
    "audio_first.mkv": [0] * 16 + [1, 2, 3, 4],
}


def grid_indices(path, **kwargs):
    with VideoReader(path, **kwargs) as reader:
        return [read_index(frame.rgb()) for frame in reader.grid_frames()]


def pyslowfast_clip(center, num_frames, sampling_rate, num_grid_frames):
    """PySlowFast's AVA test clip: frame list positions for a keyframe at grid index ``center``."""
    half = num_frames * sampling_rate // 2
    return [min(max(i, 0), num_grid_frames - 1) for i in range(center - half, center + half, sampling_rate)]


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("videos")
    for name, arguments in VIDEOS.items():
        write_index_video(folder / name, **arguments)
    return folder


def test_index_codes_survive_resizing():
    for index in (0, 1, 255, 4097, 65535):
        image = index_image(index, 64, 48)
        assert read_index(image) == index
        assert read_index(np.repeat(np.repeat(image, 3, axis=0), 2, axis=1)) == index


@pytest.mark.parametrize("name", sorted(FFMPEG_5_1_GRID_STARTS))
def test_grid_matches_recorded_ffmpeg_frames(videos, name):
    expected = FFMPEG_5_1_GRID_STARTS[name]
    assert grid_indices(videos / name)[:len(expected)] == expected


@pytest.mark.subprocess
@needs_ffmpeg
@pytest.mark.parametrize("name", sorted(VIDEOS))
def test_grid_and_clips_match_ffmpeg_extraction(videos, name):
    path = videos / name
    extracted = ffmpeg_grid_indices(path)
    assert grid_indices(path) == extracted
    keyframes = [0, Fraction(1, 2), 1]
    clips = list(iter_clips(path, keyframes, num_frames=8, sampling_rate=3))
    assert [clip.keyframe_s for clip in clips] == keyframes
    for clip, keyframe in zip(clips, keyframes):
        positions = pyslowfast_clip(int(keyframe * 30), 8, 3, len(extracted))
        assert clip.frame_indices == positions
        assert [read_index(frame) for frame in clip.frames] == [extracted[i] for i in positions]
        assert read_index(clip.keyframe_image) == extracted[int(keyframe * 30)]


def test_constant_30fps_is_the_identity_and_clips_are_exact(tmp_path):
    path = tmp_path / "cfr30.mov"
    write_index_video(path, 100, **LOSSLESS_RGB)
    assert grid_indices(path) == list(range(100))
    clips = list(iter_clips(path, None, num_frames=8, sampling_rate=4))
    assert [clip.keyframe_s for clip in clips] == [0, 1, 2, 3]  # 3.3 s: whole seconds whose frame exists
    for clip in clips:
        positions = pyslowfast_clip(clip.center_index, 8, 4, 100)
        np.testing.assert_array_equal(clip.frames, np.stack([index_image(i) for i in positions]))
        np.testing.assert_array_equal(clip.keyframe_image, index_image(clip.center_index))
        assert clip.frames.dtype == np.uint8 and clip.frames.shape == (8, 48, 64, 3)
    assert clips[1].keyframe_pts_time == 1 and clips[1].keyframe_pts == 30 * 1000


def test_nonzero_start_and_audio_first_define_grid_time(videos):
    start_clip, = iter_clips(videos / "start2.1s.mkv", [1], num_frames=4, sampling_rate=2)
    assert read_index(start_clip.keyframe_image) == 30  # time 0 = the first frame (file start 2.1 s)
    assert start_clip.keyframe_pts_time == Fraction(3100, 1000)
    audio_clip, = iter_clips(videos / "audio_first.mkv", [1], num_frames=4, sampling_rate=2)
    assert read_index(audio_clip.keyframe_image) == 15  # time 0 = the audio's start, 0.5 s before video


def test_raw_stream_without_timestamps_is_timed_at_its_frame_rate(tmp_path):
    path = tmp_path / "raw.h264"  # an H.264 elementary stream: no container, no timestamps, 25 fps assumed
    write_index_video(path, 40, fps=25, codec="libx264", size=(128, 96))
    assert grid_indices(path)[:20] == [0, 1, 2, 3, 3, 4, 5, 6, 7, 8, 8, 9, 10, 11, 12, 13, 13, 14, 15, 16]


def test_metadata(videos):
    with VideoReader(videos / "ntsc.mov") as reader:
        meta = reader.metadata
    assert meta.fps == Fraction(30000, 1001) and meta.grid_fps == 30
    assert (meta.width, meta.height, meta.rotation, meta.codec) == (64, 48, 0, "png")
    assert meta.duration_s == pytest.approx(120 * 1001 / 30000)
    assert meta.num_grid_frames == 120
    assert meta.decoder.startswith("PyAV ") and "libavcodec" in meta.decoder
    assert meta.as_dict()["fps"] == "30000/1001"


@pytest.mark.parametrize("display_rotation, clockwise, turns", [(-90, 90, -1), (90, 270, 1), (180, 180, 2)])
def test_rotated_video_comes_out_upright(tmp_path, display_rotation, clockwise, turns):
    path = tmp_path / "phone.mov"
    write_index_video(path, 70, rotation=display_rotation, **LOSSLESS_RGB)
    with VideoReader(path) as reader:
        assert reader.metadata.rotation == clockwise
        assert (reader.metadata.width, reader.metadata.height) == ((64, 48) if turns == 2 else (48, 64))
    clip, = iter_clips(path, [1], num_frames=4, sampling_rate=2)
    np.testing.assert_array_equal(clip.keyframe_image, np.rot90(index_image(30), turns))
    if ffmpeg_available():  # ffmpeg's autorotation gives the same upright image
        out = tmp_path / "ffmpeg_%03d.png"
        subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(path), "-r", "30", str(out)], check=True)
        upright = cv2.cvtColor(cv2.imread(str(tmp_path / "ffmpeg_031.png")), cv2.COLOR_BGR2RGB)
        np.testing.assert_array_equal(clip.keyframe_image, upright)


@pytest.mark.slow
def test_ring_stays_bounded(tmp_path):
    path = tmp_path / "long.mkv"
    write_index_video(path, 300, size=(32, 24))

    def decoded_frames_alive():
        return sum(type(obj) is _SourceFrame for obj in gc.get_objects())

    gc.collect()
    before = decoded_frames_alive()
    live = [decoded_frames_alive() - before for _ in iter_clips(path, None, num_frames=4, sampling_rate=4)]
    assert len(live) == 10
    assert 0 < max(live) <= 4 * 4  # at most one clip span of grid frames, whatever the video's length
    # Clips 1 s apart and 16 grid frames long share no frames: a yielded clip's frames have left the ring,
    # only the newest decoded frame (kept to fill the next grid slots) remains.
    assert max(live) <= 2


def test_edge_clips_repeat_edge_frames_and_late_keyframes_are_reported(tmp_path):
    path = tmp_path / "short.mov"
    write_index_video(path, 45, **LOSSLESS_RGB)  # grid frames 0..44
    clips = []
    with pytest.raises(VideoTruncatedError) as caught:
        for clip in iter_clips(path, [0, Fraction(3, 2), 9], num_frames=8, sampling_rate=4):
            clips.append(clip)
    assert [read_index(f) for f in clips[0].frames] == [0, 0, 0, 0, 0, 4, 8, 12]
    assert [read_index(f) for f in clips[1].frames] == [29, 33, 37, 41, 44, 44, 44, 44]
    assert caught.value.produced == [0, Fraction(3, 2)] and caught.value.lost == [9]
    assert str(path) in str(caught.value) and "outside the video" in str(caught.value)


def test_frames_converted_ahead_are_exactly_those_clips_use():
    centres, num_frames, sampling_rate, length = [5, 30, 31, 75, 200], 8, 3, 240
    used = {i for c in centres for i in pyslowfast_clip(c, num_frames, sampling_rate, 10 ** 6)} | set(centres)
    half = num_frames * sampling_rate // 2
    needed = _NeededFrames(centres, range(-half, half, sampling_rate))
    assert [i for i in range(length) if needed(i)] == sorted(used)


def test_reader_checks_its_arguments(videos):
    with VideoReader(videos / "cfr24.mkv") as reader:
        with pytest.raises(ValueError, match="grid fps"):
            next(iter_clips(reader, [1], fps=25))
        list(reader.grid_frames())
        with pytest.raises(RuntimeError, match="once"):
            next(reader.grid_frames())
    with VideoReader(videos / "cfr24.mkv", ring_frames=10) as reader:
        with pytest.raises(ValueError, match="ring_frames"):
            next(iter_clips(reader, [1], num_frames=8, sampling_rate=2))


def test_keyframe_schedules():
    ava = keyframe_schedule("902:1798", 1801.0)
    assert len(ava) == 897 and ava[0] == 902 and ava[-1] == 1798
    assert keyframe_schedule("0:10:2.5", 20) == [0, Fraction(5, 2), 5, Fraction(15, 2), 10]
    assert keyframe_schedule("1/2:2", 20) == [Fraction(1, 2), Fraction(3, 2)]
    assert keyframe_schedule(" 902 : 904 ", 0) == [902, 903, 904]  # spaces as a shell may pass them
    assert keyframe_schedule(None, 3.5) == [0, 1, 2, 3]
    assert keyframe_schedule(None, 3.0) == [0, 1, 2]
    assert keyframe_schedule([5, 2, 2, Fraction(1, 2)], 9) == [Fraction(1, 2), 2, 5]
    assert keyframes_from_boxes([("v", 903, 0.1), ("v", 902, 0.2), ("v", 903, 0.3)]) == [902, 903]
    for bad in ("902", "a:b", "5:1", "0:10:0", "1:2:3:4"):
        with pytest.raises(ValueError, match="keyframes"):
            keyframe_schedule(bad, 10)


# --- RGB conversion ------------------------------------------------------------------------------------------

BT601, BT709, BT2020 = 5, 1, 9  # AVColorSpace codes (2: unspecified, converted as BT.601)
LIMITED, FULL = 1, 2  # AVColorRange codes (0: unspecified, i.e. limited unless the format is yuvj*)


def random_frame(pix_fmt, width, height, colorspace=None, color_range=None, seed=0):
    """A VideoFrame of random samples (10-bit formats: random 10-bit values), optionally colour-tagged."""
    frame = av.VideoFrame(width, height, pix_fmt)
    rng = np.random.default_rng(seed)
    for plane in frame.planes:
        if "10" in pix_fmt:
            np.frombuffer(plane, np.uint16)[:] = rng.integers(0, 1024, plane.buffer_size // 2, dtype=np.uint16)
        else:
            np.frombuffer(plane, np.uint8)[:] = rng.integers(0, 256, plane.buffer_size, dtype=np.uint8)
    if colorspace is not None:
        frame.colorspace = colorspace
    if color_range is not None:
        frame.color_range = color_range
    return frame


def flat_yuv_frame(y, u, v, colorspace, color_range):
    frame = av.VideoFrame(16, 8, "yuv420p")
    for plane, value in zip(frame.planes, (y, u, v)):
        np.frombuffer(plane, np.uint8)[:] = value
    frame.colorspace, frame.color_range = colorspace, color_range
    return frame


def exact_rgb(y, u, v, kr, kb, full_range):
    """Real-valued Y'CbCr -> R'G'B' (0..255) of one 8-bit sample with luma coefficients ``kr``, ``kb``."""
    luma, cb, cr = ((y / 255, (u - 128) / 255, (v - 128) / 255) if full_range
                    else ((y - 16) / 219, (u - 128) / 224, (v - 128) / 224))
    red, blue = luma + 2 * (1 - kr) * cr, luma + 2 * (1 - kb) * cb
    green = (luma - kr * red - kb * blue) / (1 - kr - kb)
    return np.clip(np.array([red, green, blue]) * 255, 0, 255)


@pytest.mark.parametrize("pix_fmt, size, colorspace, color_range", [
    ("yuv420p", (96, 64), None, None),  # untagged: BT.601, limited range
    ("yuv420p", (96, 64), BT709, LIMITED),
    ("yuv420p", (96, 64), BT2020, LIMITED),
    ("yuv420p", (96, 64), BT601, FULL),
    ("yuv420p", (96, 64), BT709, FULL),
    ("yuvj420p", (96, 64), None, None),  # full range by its format
    ("yuv420p", (101, 75), None, None),  # odd sizes: chroma planes of ceil(size / 2)
    ("yuv420p", (50, 30), BT709, LIMITED),  # 150-byte RGB rows: padded by FFmpeg, compacted by us
    ("yuv422p", (64, 48), None, None),
    ("yuv444p", (64, 48), BT709, FULL),
    ("yuv420p10le", (64, 48), BT709, LIMITED),
    ("nv12", (64, 48), None, None),
    ("gray", (33, 17), None, None),
    ("rgb24", (50, 30), None, None),  # no conversion needed
])
@pytest.mark.parametrize("pooled", [False, True], ids=["to_ndarray", "pooled"])
def test_rgb_conversion_is_swscale_rgb24(pix_fmt, size, colorspace, color_range, pooled):
    frame = random_frame(pix_fmt, *size, colorspace=colorspace, color_range=color_range)
    expected = frame.to_ndarray(format="rgb24")  # PyAV's own conversion (its default settings)
    image = (_PooledRgbConverter() if pooled else _upright_rgb)(frame, 0)
    np.testing.assert_array_equal(image, expected)
    assert image.shape == (size[1], size[0], 3) and image.dtype == np.uint8
    assert image.flags.c_contiguous and not image.flags.writeable


def test_pooled_conversion_follows_changes_of_size_format_and_tags():
    convert = _PooledRgbConverter()
    frames = [random_frame("yuv420p", 64, 48, seed=0), random_frame("yuv420p", 64, 48, BT709, FULL, seed=1),
              random_frame("yuv420p", 64, 48, seed=2), random_frame("yuv444p", 64, 48, seed=3),
              random_frame("yuv420p", 66, 50, seed=4), random_frame("yuv420p", 64, 48, seed=5)]
    images = [convert(frame, 0) for frame in frames]  # all alive at once: pooled buffers are not shared
    for frame, image in zip(frames, images):
        np.testing.assert_array_equal(image, frame.to_ndarray(format="rgb24"))


@pytest.mark.parametrize("colorspace, color_range, kr, kb", [
    (None, None, 0.299, 0.114), (BT601, LIMITED, 0.299, 0.114), (BT709, LIMITED, 0.2126, 0.0722),
    (BT601, FULL, 0.299, 0.114), (BT709, FULL, 0.2126, 0.0722), (BT2020, LIMITED, 0.2627, 0.0593),
])
def test_rgb_conversion_follows_the_colour_tags(colorspace, color_range, kr, kb):
    for y, u, v in [(120, 90, 180), (200, 160, 100), (40, 128, 128), (16, 128, 128), (235, 128, 128)]:
        frame = flat_yuv_frame(y, u, v, colorspace if colorspace is not None else 2, color_range or 0)
        rgb = _upright_rgb(frame, 0)
        assert np.all(rgb == rgb[0, 0])
        exact = exact_rgb(y, u, v, kr, kb, full_range=color_range == FULL)
        assert np.abs(rgb[0, 0] - exact).max() <= 3, (rgb[0, 0], exact)  # swscale's fast path: +-2 levels


@pytest.mark.parametrize("turns", [1, 2, 3])
@pytest.mark.parametrize("pooled", [False, True], ids=["to_ndarray", "pooled"])
def test_rgb_conversion_turns_frames_upright(turns, pooled):
    frame = random_frame("yuv420p", 37, 23, seed=turns)
    image = (_PooledRgbConverter() if pooled else _upright_rgb)(frame, turns)
    np.testing.assert_array_equal(image, np.rot90(frame.to_ndarray(format="rgb24"), turns))
    assert image.flags.c_contiguous and not image.flags.writeable


def test_clips_of_a_full_range_bt709_video_are_converted_by_its_tags(tmp_path):
    path = tmp_path / "bt709_full.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        stream.codec_context.colorspace, stream.codec_context.color_range = BT709, FULL
        for index in range(70):
            image = cv2.resize(np.random.default_rng(index).integers(0, 256, (8, 12, 3), np.uint8), (96, 64))
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            for packet in stream.encode(frame.reformat(format="yuv420p", dst_colorspace=BT709, dst_color_range=FULL)):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    with av.open(str(path)) as container:
        decoded = list(container.decode(video=0))
    assert (decoded[0].colorspace, decoded[0].color_range) == (BT709, FULL)
    clip, = iter_clips(path, [1], num_frames=4, sampling_rate=2)
    for index, image in zip(clip.frame_indices, clip.frame_list):
        np.testing.assert_array_equal(image, decoded[index].to_ndarray(format="rgb24"))
    untagged = av.VideoFrame.from_ndarray(decoded[30].to_ndarray(), format="yuv420p")  # same samples, no tags
    assert np.abs(clip.keyframe_image.astype(int) - untagged.to_ndarray(format="rgb24")).max() > 10


def test_clips_are_the_same_when_they_wait_for_their_conversions(tmp_path, good_mkv, monkeypatch):
    """Clips are yielded once their frames are converted, at the latest before those leave the ring; the
    latest case (conversions never finished in time) gives the same clips, also on a damaged file."""
    damaged = tmp_path / "damaged.mkv"
    damaged.write_bytes(_corrupt(good_mkv.read_bytes(), 0.6))

    def run(path):
        clips, lost = [], None
        try:
            for clip in iter_clips(path, None, num_frames=8, sampling_rate=2):
                clips.append((clip.keyframe_s, clip.frame_indices, [read_index(f) for f in clip.frames]))
        except VideoTruncatedError as error:
            lost = error.lost
        return clips, lost

    prompt = [run(good_mkv), run(damaged)]
    monkeypatch.setattr(_SourceFrame, "converted", property(lambda self: False))
    assert [run(good_mkv), run(damaged)] == prompt
    assert len(prompt[0][0]) == 5 and prompt[1][0] and prompt[1][1]


# --- bad files -----------------------------------------------------------------------------------------------

def _corrupt(data, start_fraction, seed=0):
    data = bytearray(data)
    start = int(len(data) * start_fraction)
    data[start:] = np.random.default_rng(seed).integers(0, 256, len(data) - start, dtype=np.uint8).tobytes()
    return bytes(data)


@pytest.fixture(scope="module")
def good_mkv(tmp_path_factory):
    path = tmp_path_factory.mktemp("bad") / "good.mkv"
    write_index_video(path, 150)
    return path


@pytest.mark.parametrize("case, message", [
    ("missing", "no such file"),
    ("empty", "empty"),
    ("random", "not a readable video container"),
    ("truncated_mp4", "not a readable video container"),
    ("audio_only", "no video stream"),
    ("unsupported_codec", "unsupported video codec"),
    ("too_short", "shorter than one clip"),
])
def test_unusable_files_raise_video_decode_error(tmp_path, good_mkv, case, message):
    path = tmp_path / f"{case}.mkv"
    if case == "empty":
        path.write_bytes(b"")
    elif case == "random":
        path.write_bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    elif case == "truncated_mp4":  # index (moov) at the end: cut off
        path = tmp_path / "truncated.mp4"
        write_index_video(path, 60, codec="libx264", size=(128, 96))
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif case == "audio_only":
        import av
        path = tmp_path / "audio.wav"
        with av.open(str(path), "w") as container:
            stream = container.add_stream("pcm_s16le", rate=8000, layout="mono")
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
            frame.sample_rate = 8000
            for packet in list(stream.encode(frame)) + list(stream.encode()):
                container.mux(packet)
    elif case == "unsupported_codec":
        path.write_bytes(good_mkv.read_bytes().replace(b"V_FFV1", b"V_ZZZZ"))
    elif case == "too_short":
        write_index_video(path, 40)
    with pytest.raises(VideoDecodeError, match=message) as caught:
        list(iter_clips(path, None, num_frames=32, sampling_rate=2))
    assert str(path) in str(caught.value)
    assert not isinstance(caught.value, VideoTruncatedError)


@pytest.mark.parametrize("damage", ["cut_in_half", "random_tail"])
def test_damaged_tail_yields_keyframes_before_the_damage(tmp_path, good_mkv, damage):
    path = tmp_path / f"{damage}.mkv"
    data = good_mkv.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "cut_in_half" else _corrupt(data, 0.6))
    produced = []
    with pytest.raises(VideoTruncatedError) as caught:
        for clip in iter_clips(path, None, num_frames=8, sampling_rate=2):
            produced.append(clip.keyframe_s)
            assert [read_index(f) for f in clip.frames] == pyslowfast_clip(clip.center_index, 8, 2, 150)
    error = caught.value
    assert produced == error.produced and len(produced) >= 1
    assert error.lost == [s for s in range(5) if s not in produced]  # the header promises 5 s
    assert str(path) in str(error) and "truncated" in str(error)


def test_damage_after_every_requested_keyframe_is_only_a_warning(tmp_path, good_mkv, caplog):
    path = tmp_path / "cut.mkv"
    data = good_mkv.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with caplog.at_level("WARNING", logger="ava_pipeline.video"):
        clips = list(iter_clips(path, [1], num_frames=8, sampling_rate=2))
    assert [clip.keyframe_s for clip in clips] == [1]
    assert str(path) in caplog.text and "all 1 requested keyframes were produced" in caplog.text


def test_decode_error_midway_is_reported(tmp_path):
    path = tmp_path / "broken.mp4"
    write_index_video(path, 150, codec="libx264", size=(128, 96))
    data = bytearray(path.read_bytes())
    index_at = data.find(b"moov")  # keep the index, scramble the second half of the frame data
    data[index_at // 2: index_at - 16] = _corrupt(bytes(data[index_at // 2: index_at - 16]), 0)
    path.write_bytes(bytes(data))
    with pytest.raises(VideoTruncatedError, match="decoding stopped early") as caught:
        list(iter_clips(path, [0, 1, 2, 3, 4], num_frames=8, sampling_rate=2))
    assert caught.value.produced and caught.value.lost
    assert caught.value.produced + caught.value.lost == [0, 1, 2, 3, 4]


def _mpegts_segment(path, size, first_pts, count):
    """An MPEG-2 transport stream of ``count`` grey frames of ``size`` (w, h) at 30 fps from ``first_pts``."""
    with av.open(str(path), "w", format="mpegts") as container:
        stream = container.add_stream("mpeg2video", rate=30)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        for pts in range(first_pts, first_pts + count):
            frame = av.VideoFrame.from_ndarray(np.full((size[1], size[0], 3), pts % 256, np.uint8), format="rgb24")
            frame.pts, frame.time_base = pts, Fraction(1, 30)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def test_frame_size_change_ends_the_video_with_a_clear_reason(tmp_path):
    """A broadcast-style stream whose resolution changes: the keyframes before the change are produced."""
    first, second = tmp_path / "first.ts", tmp_path / "second.ts"
    _mpegts_segment(first, (80, 60), 0, 60)
    _mpegts_segment(second, (160, 90), 60, 60)
    path = tmp_path / "joined.ts"
    path.write_bytes(first.read_bytes() + second.read_bytes())  # transport streams concatenate
    clips = []
    with pytest.raises(VideoTruncatedError, match="frame size changes from 80x60 to 160x90") as caught:
        for clip in iter_clips(path, [1, 3], num_frames=8, sampling_rate=2):
            clips.append(clip)
    assert [clip.keyframe_s for clip in clips] == [1] and clips[0].frame_list[0].shape == (60, 80, 3)
    assert (caught.value.produced, caught.value.lost) == ([1], [3])
    assert "scale=80:60" in str(caught.value)

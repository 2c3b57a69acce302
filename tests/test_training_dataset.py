"""AvaClipDataset: clip frames from the frame store, parity with the inference path, determinism, the store's
invalidation, damaged videos, collation."""
import gc
import json
import os
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from ava_pipeline.preprocess import preprocess_clip
from ava_pipeline.training.dataset import AvaClipDataset, collate
from ava_pipeline.training.frames import FrameStore
from ava_pipeline.training.samples import find_videos, read_training_samples
from ava_pipeline.training.transforms import augmentation_rng, draw_train_augmentation, train_transform
from ava_pipeline.video import iter_clips
from tests.videos import read_index, write_index_video

CLIP = dict(num_frames=8, sampling_rate=2, fps=30)
DATA = dict(alpha=4, mean=(0.45, 0.45, 0.45), std=(0.225, 0.225, 0.225), test_crop_size=32,
            train_jitter_scales=(32, 40), train_crop_size=28)


@pytest.fixture
def movies(tmp_path):
    """Two index-coded videos (4 s and 3 s at 30 fps) and annotations at 0, 1, 2.5 and 3 s."""
    folder = tmp_path / "videos"
    folder.mkdir()
    write_index_video(folder / "alpha.mkv", 120, fps=30, size=(64, 48))
    write_index_video(folder / "beta.mkv", 90, fps=30, size=(64, 48))
    gt = tmp_path / "gt.csv"
    gt.write_text("alpha,1,0.1,0.2,0.5,0.9,1,0\nalpha,1,0.5,0.1,0.9,0.6,2,1\nalpha,2.5,0.2,0.2,0.7,0.7,2,0\n"
                  "beta,0,0.0,0.0,1.0,1.0,1,0\nbeta,2,0.3,0.3,0.6,0.9,1,0\nalpha,3,0.1,0.1,0.2,0.2,1,0\n")
    return folder, gt


def make_dataset(movies, cache, **options):
    folder, gt = movies
    samples = read_training_samples(gt, class_ids=[1, 2])
    settings = dict(CLIP, **DATA, seed=7, cache_dir=cache)
    settings.update(options)
    return AvaClipDataset(samples, find_videos(folder, samples.video_ids()), **settings)


def test_store_serves_each_keyframes_grid_frames_bit_exactly(movies, tmp_path):
    folder, _ = movies
    store = FrameStore(tmp_path / "cache")
    times = [Fraction(0), Fraction(1), Fraction(5, 2), Fraction(4)]
    frames = store.prepare("alpha", folder / "alpha.mkv", times, **CLIP)
    for time in times:  # centre round(t * 30), indices centre - 8 + 2j clamped to the 120 frames
        centre = round(time * 30)
        expected = [min(max(centre - 8 + 2 * j, 0), 119) for j in range(8)]
        assert [read_index(image) for image in frames.clip(time)] == expected
    inference = {clip.keyframe_s: clip.frames for clip in iter_clips(folder / "alpha.mkv", times, **CLIP)}
    for time in times:
        clip = np.stack(frames.clip(time))
        assert clip.dtype == np.uint8 and clip.shape == (8, 48, 64, 3)
        np.testing.assert_array_equal(clip, inference[time])
    distinct = {index for time in times for index in
                (min(max(round(time * 30) - 8 + 2 * j, 0), 119) for j in range(8))}
    assert frames.disk_bytes == len(distinct) * 48 * 64 * 3  # each grid frame stored once


def test_an_entry_grows_to_the_union_of_keyframes_and_supersedes_the_smaller_ones(movies, tmp_path):
    folder, _ = movies
    store = FrameStore(tmp_path / "cache")
    first = store.prepare("alpha", folder / "alpha.mkv", [Fraction(1)], **CLIP)
    second = store.prepare("alpha", folder / "alpha.mkv", [Fraction(2)], **CLIP)  # e.g. the validation keyframes
    assert not second.reused and second.known_times == {1, 2}
    assert [read_index(image) for image in second.clip(Fraction(1))] == [22, 24, 26, 28, 30, 32, 34, 36]
    assert len(list((tmp_path / "cache").iterdir())) == 2  # the first is still read by a live object
    del first
    gc.collect()
    third = store.prepare("alpha", folder / "alpha.mkv", [Fraction(1)], **CLIP)
    assert third.reused and third.directory == second.directory
    assert list((tmp_path / "cache").iterdir()) == [second.directory]
    assert store.missing_bytes("alpha", folder / "alpha.mkv", [Fraction(2)], **CLIP) == 0
    assert store.missing_bytes("alpha", folder / "alpha.mkv", [Fraction(3)], **CLIP) == 24 * 64 * 48 * 3


def test_a_short_side_stores_the_transforms_resize_of_the_decoded_frames_never_an_upscale(movies, tmp_path):
    folder, _ = movies
    store = FrameStore(tmp_path / "cache")
    times = [Fraction(1), Fraction(2)]
    small = store.prepare("alpha", folder / "alpha.mkv", times, **CLIP, short_side=40)
    assert small.shape == (40, 53, 3) and small.source_size == (64, 48)  # 64 x 48 -> floor(64 * 40 / 48) x 40
    decoded = {clip.keyframe_s: clip.frame_list for clip in iter_clips(folder / "alpha.mkv", times, **CLIP)}
    for time in times:
        for stored, frame in zip(small.clip(time), decoded[time]):
            np.testing.assert_array_equal(stored, cv2.resize(frame, (53, 40), interpolation=cv2.INTER_LINEAR))
    assert small.disk_bytes == 16 * 53 * 40 * 3  # 2 clips of 8 distinct grid frames each
    assert store.missing_bytes("alpha", folder / "alpha.mkv", [Fraction(3)], **CLIP, short_side=40) == \
        24 * 53 * 40 * 3
    assert store.missing_bytes("alpha", folder / "alpha.mkv", times, **CLIP, short_side=40) == 0
    as_decoded = store.prepare("alpha", folder / "alpha.mkv", times, **CLIP, short_side=64)  # larger: kept as is
    assert not as_decoded.reused and as_decoded.shape == (48, 64, 3) and as_decoded.source_size == (64, 48)
    np.testing.assert_array_equal(np.stack(as_decoded.clip(Fraction(1))), np.stack(decoded[Fraction(1)]))
    reopened = store.prepare("alpha", folder / "alpha.mkv", times, **CLIP, short_side=40)
    assert reopened.reused and reopened.directory == small.directory  # another size is another entry


def test_augmented_items_keep_pyslowfasts_geometry_from_the_training_resolution_store(movies, tmp_path):
    folder, _ = movies
    compact = make_dataset(movies, tmp_path / "compact")
    full = make_dataset(movies, tmp_path / "full", full_resolution_frames=True)
    assert compact.prepare().disk_bytes < full.prepare().disk_bytes
    assert [compact.store_short_side, full.store_short_side] == [40, None]
    exact = differing = 0
    for epoch in range(12):
        for index, sample in enumerate(full.samples):
            clip = next(iter(iter_clips(folder / f"{sample.video_id}.mkv", [sample.time], **CLIP)))
            draw = draw_train_augmentation(augmentation_rng(7, epoch, index), 64, 48, jitter_scales=(32, 40),
                                           crop_size=28)
            inputs, boxes = train_transform(clip.frame_list, sample.boxes, draw, crop_size=28, mean=DATA["mean"],
                                            std=DATA["std"], alpha=4)
            reference, mine = full[(epoch, index)], compact[(epoch, index)]
            assert all(torch.equal(a, b) for a, b in zip(reference["inputs"], inputs))  # PySlowFast's, bit for bit
            assert torch.equal(reference["boxes"], torch.from_numpy(boxes))
            assert torch.equal(mine["boxes"], reference["boxes"])  # sizes, crops, flips and boxes: exact
            difference = (mine["inputs"][1] - reference["inputs"][1]).abs()
            if draw.short_side == 40:  # the stored size: the stored frames are the transform's resize
                exact += 1
                assert all(torch.equal(a, b) for a, b in zip(mine["inputs"], reference["inputs"]))
            else:  # pixels resized twice: close, not equal (0.1 = 6 grey levels; block edges move most)
                assert difference.mean() < 0.1 and difference.max() < 1.5, (epoch, index, difference.max())
                differing += bool(difference.max() > 0)
    assert exact > 0 and differing > 0


def test_no_augment_items_equal_the_inference_tensors(movies, tmp_path):
    folder, _ = movies
    dataset = make_dataset(movies, tmp_path / "cache", augment=False)
    report = dataset.prepare()
    assert (report.served, report.decoded, report.dropped) == (5, 2, [])
    by_key = {(item["video_id"], item["time"]): item for item in (dataset[i] for i in range(len(dataset)))}
    for sample in dataset.samples:
        clips = {c.keyframe_s: c for c in iter_clips(folder / f"{sample.video_id}.mkv", [sample.time], **CLIP)}
        reference, reference_boxes = preprocess_clip(clips[sample.time].frame_list, sample.boxes, test_size=32,
                                                     mean=DATA["mean"], std=DATA["std"], alpha=4)
        item = by_key[(sample.video_id, sample.time)]
        assert [tuple(t.shape) for t in item["inputs"]] == [(3, 2, 32, 42), (3, 8, 32, 42)]
        assert all(torch.equal(mine, theirs[0]) for mine, theirs in zip(item["inputs"], reference))
        assert torch.equal(item["boxes"], torch.from_numpy(reference_boxes))
        assert torch.equal(item["labels"], torch.from_numpy(sample.labels))
        assert torch.equal(item["ori_boxes"], torch.from_numpy(sample.boxes))


def test_augmented_items_depend_only_on_seed_epoch_and_index(movies, tmp_path):
    dataset = make_dataset(movies, tmp_path / "cache")
    dataset.prepare()
    again = make_dataset(movies, tmp_path / "cache")
    again.prepare()

    def same(a, b):
        return all(torch.equal(x, y) for x, y in zip(a["inputs"] + [a["boxes"]], b["inputs"] + [b["boxes"]]))

    first = [dataset[i] for i in range(len(dataset))]
    assert all(same(a, again[i]) for i, a in enumerate(first))
    assert all(same(a, dataset[i]) for i, a in enumerate(first))  # reading again does not advance anything
    assert first[0]["inputs"][1].shape == (3, 8, 28, 28)
    dataset.set_epoch(1)
    second_epoch = [dataset[i] for i in range(len(dataset))]
    assert not all(same(a, b) for a, b in zip(first, second_epoch))
    assert all(same(again[(1, i)], b) for i, b in enumerate(second_epoch))
    other_seed = make_dataset(movies, tmp_path / "cache", seed=8)
    other_seed.prepare()
    assert not all(same(a, other_seed[i]) for i, a in enumerate(first))


def test_batches_do_not_depend_on_the_number_of_workers(movies, tmp_path):
    dataset = make_dataset(movies, tmp_path / "cache")
    dataset.prepare()
    dataset.set_epoch(3)

    def batches(workers, source=dataset):
        loader = torch.utils.data.DataLoader(source, batch_size=2, shuffle=False, num_workers=workers,
                                             collate_fn=collate)
        return list(loader)

    uint8 = make_dataset(movies, tmp_path / "cache", uint8_batches=True)
    uint8.prepare()
    uint8.set_epoch(3)
    single, parallel = batches(0), batches(2, uint8)  # in the workers, batches are assembled in shared memory
    items = [collate([dataset[i] for i in range(start, min(start + 2, len(dataset)))]) for start in (0, 2, 4)]
    assert len(single) == len(parallel) == 3
    for a, b, c in zip(single, parallel, items):
        assert all(torch.equal(x, y) for x, y in zip(a.model_inputs("cpu"), c.inputs))
        assert all(torch.equal(x, y) for x, y in zip(a.model_inputs("cpu"), b.model_inputs("cpu")))
        assert torch.equal(a.boxes, b.boxes) and torch.equal(a.labels, b.labels) and a.keys == b.keys


def test_a_batch_assembled_in_place_equals_the_collated_items(movies, tmp_path):
    dataset = make_dataset(movies, tmp_path / "cache")
    dataset.prepare()
    indices = [(2, 4), (2, 0), (5, 3)]
    batch = dataset.__getitems__(indices)
    reference = collate([dataset[index] for index in indices])
    assert collate(batch) is batch and batch.pixels is None
    assert [tuple(t.shape) for t in batch.inputs] == [(3, 3, 2, 28, 28), (3, 3, 8, 28, 28)]
    assert all(t.is_contiguous() for t in batch.inputs)
    assert all(torch.equal(a, b) for a, b in zip(batch.inputs, reference.inputs))
    # for GPUs: the augmented frames travel as uint8 and are normalised where the model runs, exactly as the items
    uint8 = make_dataset(movies, tmp_path / "cache", uint8_batches=True)
    uint8.prepare()
    batch = uint8.__getitems__(indices)
    assert batch.inputs == [] and batch.pixels.dtype == torch.uint8 and batch.pixels.shape == (3, 8, 28, 28, 3)
    inputs = batch.model_inputs("cpu")
    assert all(t.is_contiguous() for t in inputs)
    assert all(torch.equal(a, b) for a, b in zip(inputs, reference.inputs))
    assert torch.equal(batch.boxes, reference.boxes)
    assert torch.equal(batch.boxes, reference.boxes) and torch.equal(batch.labels, reference.labels)
    assert torch.equal(batch.ori_boxes, reference.ori_boxes)
    assert (batch.keys, batch.indices) == (reference.keys, reference.indices) and batch.indices == [4, 0, 3]
    colour = make_dataset(movies, tmp_path / "cache", colour_jitter=True, pca_jitter_only=False, bgr=True,
                          uint8_batches=True)
    colour.prepare()  # colour jitter works on floats: the batch carries them, computed in place
    batch = colour.__getitems__(indices)
    assert batch.pixels is None and all(t.is_contiguous() for t in batch.inputs)
    assert all(torch.equal(a, b) for a, b in zip(batch.model_inputs("cpu"),
                                                 collate([colour[index] for index in indices]).inputs))
    bgr = make_dataset(movies, tmp_path / "cache", bgr=True, uint8_batches=True)
    bgr.prepare()
    assert all(torch.equal(a, b) for a, b in zip(bgr.__getitems__(indices).model_inputs("cpu"),
                                                 collate([bgr[index] for index in indices]).inputs))
    no_augment = make_dataset(movies, tmp_path / "cache", augment=False, test_crop_size=40)
    no_augment.prepare()
    assert all(torch.equal(a, b) for a, b in zip(no_augment.__getitems__([0, 1]).inputs,
                                                 collate([no_augment[0], no_augment[1]]).inputs))


def test_collate_prepends_the_clip_index_to_each_box(movies, tmp_path):
    dataset = make_dataset(movies, tmp_path / "cache")
    dataset.prepare()
    batch = collate([dataset[0], dataset[1], dataset[3]])
    assert [tuple(t.shape) for t in batch.inputs] == [(3, 3, 2, 28, 28), (3, 3, 8, 28, 28)]
    assert batch.boxes.shape == (4, 5) and batch.boxes[:, 0].tolist() == [0, 0, 1, 2]
    assert batch.labels.tolist() == [[1, 0], [0, 1], [0, 1], [1, 0]]
    assert batch.keys == [("alpha", 1), ("alpha", Fraction(5, 2)), ("beta", 0)] and batch.indices == [0, 1, 3]
    assert batch.ori_boxes.dtype == torch.float64 and batch.ori_boxes[0].tolist() == [0.1, 0.2, 0.5, 0.9]
    no_augment = make_dataset(movies, tmp_path / "cache", augment=False, test_crop_size=40)
    no_augment.prepare()
    with pytest.raises(ValueError, match="clips of different sizes"):
        collate([no_augment[0], {**no_augment[1], "inputs": [t[:, :, :30] for t in no_augment[1]["inputs"]]}])


def test_store_reuses_entries_and_invalidates_them_when_the_video_changes(movies, tmp_path):
    folder, _ = movies
    cache = tmp_path / "cache"
    dataset = make_dataset(movies, cache, augment=False)
    assert dataset.prepare().decoded == 2
    before = dataset[0]["inputs"][1]
    reused = make_dataset(movies, cache, augment=False).prepare()
    assert (reused.decoded, reused.reused) == (0, 2) and reused.disk_bytes > 0
    entries = sorted(p.name for p in cache.iterdir())
    assert len(entries) == 2
    write_index_video(folder / "alpha.mkv", 120, fps=30, size=(80, 48))  # another file under the same name
    changed = make_dataset(movies, cache, augment=False)
    report = changed.prepare()
    assert (report.decoded, report.reused) == (1, 1)
    assert changed[0]["inputs"][1].shape != before.shape
    assert len(list(cache.iterdir())) == 3  # the old file's entry stays while a live dataset reads it
    del dataset
    gc.collect()
    make_dataset(movies, cache, augment=False).prepare()
    assert len(list(cache.iterdir())) == 2  # then it goes
    other_clip = make_dataset(movies, cache, augment=False, num_frames=4)
    assert other_clip.prepare().decoded == 2  # other clip settings: new entries beside the old ones
    assert len(list(cache.iterdir())) == 4
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]  # no temporaries left
    entry = next(p for p in cache.iterdir() if p.name.startswith("beta-")
                 and json.loads((p / "index.json").read_text())["key"]["settings"]["num_frames"] == 4)
    (entry / "frames.u8").write_bytes(b"truncated")  # an incomplete entry is rebuilt, not trusted
    rebuilt = make_dataset(movies, cache, augment=False, num_frames=4).prepare()
    assert (rebuilt.decoded, rebuilt.reused) == (1, 1)
    index = json.loads((entry / "index.json").read_text())
    assert index["key"]["identity"]["size"] == os.path.getsize(folder / "beta.mkv")
    assert (entry / "frames.u8").stat().st_size > 100
    index["key"]["settings"]["version"] = 1  # written by an older release: never used again, so removed
    (entry / "index.json").write_text(json.dumps(index))
    del other_clip
    gc.collect()
    make_dataset(movies, cache, augment=False).prepare()
    assert not entry.exists() and len(list(cache.iterdir())) == 3


def test_damaged_and_missing_frames_drop_their_samples_with_a_report(tmp_path, caplog):
    folder = tmp_path / "videos"
    folder.mkdir()
    write_index_video(folder / "good.mkv", 60, fps=30, size=(64, 48))
    write_index_video(folder / "broken.mkv", 150, fps=30, size=(64, 48))
    data = (folder / "broken.mkv").read_bytes()
    (folder / "broken.mkv").write_bytes(data[:len(data) * 2 // 3] + bytes(range(256)) * 64)
    (folder / "garbage.mkv").write_bytes(b"not a video at all" * 100)
    gt = tmp_path / "gt.csv"
    gt.write_text("good,1,0.1,0.1,0.5,0.5,1,0\ngood,9,0.1,0.1,0.5,0.5,1,0\nbroken,1,0.1,0.1,0.5,0.5,1,0\n"
                  "broken,4,0.1,0.1,0.5,0.5,1,0\ngarbage,1,0.1,0.1,0.5,0.5,1,0\n")
    samples = read_training_samples(gt, class_ids=[1])
    dataset = AvaClipDataset(samples, find_videos(folder, samples.video_ids()), **CLIP, **DATA,
                             cache_dir=tmp_path / "cache")
    with caplog.at_level("WARNING"):
        report = dataset.prepare()
    served = [(s.video_id, s.time) for s in dataset.samples]
    assert served == [("good", 1), ("broken", 1)] and len(dataset) == 2
    dropped = {(video, time): reason for video, time, reason in report.dropped}
    assert set(dropped) == {("good", 9), ("broken", 4), ("garbage", 1)}
    assert "outside the video" in dropped[("good", 9)]
    assert "decoding stopped early" in dropped[("broken", 4)]
    assert "garbage.mkv" in report.failed_videos["garbage"]
    assert "3 keyframes dropped for data errors in 3 videos" in report.summary()
    assert json.dumps(report.as_dict())  # JSON-friendly for metrics.jsonl
    assert "dropping 1 keyframes of video broken (4): " + str(folder / "broken.mkv") in caplog.text
    assert "dropping all 1 keyframes of video garbage" in caplog.text
    again = AvaClipDataset(samples, find_videos(folder, samples.video_ids()), **CLIP, **DATA,
                           cache_dir=tmp_path / "cache")
    report_again = again.prepare()  # reused entries report the lost keyframes again
    assert report_again.reused == 2 and {(v, t) for v, t, _ in report_again.dropped} == set(dropped)


def test_settings_are_checked_and_prepare_comes_first(movies, tmp_path):
    with pytest.raises(ValueError, match="go below TRAIN_CROP_SIZE"):
        make_dataset(movies, tmp_path / "cache", train_crop_size=36)
    with pytest.raises(ValueError, match="seed must be >= 0"):
        make_dataset(movies, tmp_path / "cache", seed=-1)
    dataset = make_dataset(movies, tmp_path / "cache")
    with pytest.raises(RuntimeError, match="prepare"):
        len(dataset)
    progress = []
    dataset.prepare(workers=2, progress=lambda done, total, video: progress.append((done, total)))
    assert progress == [(1, 2), (2, 2)]
    with pytest.raises(IndexError, match="outside the dataset's 5 samples"):
        dataset[5]
    assert dataset[np.int64(4)]["index"] == 4 and type(dataset[np.int64(4)]["index"]) is int


def test_slow_only_items_have_one_pathway(movies, tmp_path):
    dataset = make_dataset(movies, tmp_path / "cache", alpha=None)
    dataset.prepare()
    assert [tuple(t.shape) for t in dataset[0]["inputs"]] == [(3, 8, 28, 28)]
    assert isinstance(Path(dataset.videos["alpha"]), Path)


def test_an_unusable_cache_folder_and_a_vanished_video_are_named(movies, tmp_path):
    from ava_pipeline.training.frames import FrameStoreError

    folder, _ = movies
    blocker = tmp_path / "cache-file"
    blocker.write_text("a file where the cache folder should be")
    with pytest.raises(FrameStoreError, match=f"{blocker}: cannot store the frames of .*alpha.mkv"):
        make_dataset(movies, blocker).prepare()
    dataset = make_dataset(movies, tmp_path / "cache")
    (folder / "beta.mkv").unlink()
    report = dataset.prepare()
    assert "beta.mkv: cannot be read" in report.failed_videos["beta"]
    assert [s.video_id for s in dataset.samples] == ["alpha"] * 3


def test_disk_space_is_estimated_and_checked_before_decoding(movies, tmp_path, monkeypatch):
    from ava_pipeline.training import frames as frames_module

    folder, _ = movies
    store = FrameStore(tmp_path / "cache")
    times = [Fraction(0), Fraction(1), Fraction(5, 2), Fraction(4)]
    estimate = store.missing_bytes("alpha", folder / "alpha.mkv", times, **CLIP)
    assert estimate == store.prepare("alpha", folder / "alpha.mkv", times, **CLIP).disk_bytes
    assert store.missing_bytes("alpha", folder / "alpha.mkv", times, **CLIP) == 0

    class Tiny:
        free = 1000

    monkeypatch.setattr(frames_module.shutil, "disk_usage", lambda path: Tiny)
    dataset = make_dataset(movies, tmp_path / "other-cache")
    with pytest.raises(frames_module.FrameStoreError, match=r"other-cache: the training frames need about .* GiB "
                                                            r"and only 0.0 GiB are free"):
        dataset.prepare()
    assert not (tmp_path / "other-cache").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="page-locked memory needs CUDA")
def test_a_pinned_batch_keeps_its_values(movies, tmp_path):
    dataset = make_dataset(movies, tmp_path / "cache", uint8_batches=True)
    dataset.prepare()
    batch = dataset.__getitems__([0, 1])
    pinned = batch.pin_memory()
    assert all(t.is_pinned() for t in [pinned.pixels, pinned.boxes, pinned.labels])
    assert torch.equal(pinned.pixels, batch.pixels) and pinned.keys == batch.keys
    assert all(torch.equal(a.cpu(), b) for a, b in zip(pinned.model_inputs("cuda"), batch.model_inputs("cpu")))

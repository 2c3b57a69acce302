"""The Ray engine on a local 2-CPU cluster: same bytes as the local engine, dead actors replaced, resume.

One Ray instance serves the whole module (starting one costs seconds); the actors run the real
ActionDetector on the tiny model of batch_fixtures.py.
"""
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from ava_pipeline.batch import run_batch
from ava_pipeline.cli.detect import find_videos
from tests.batch_fixtures import (FAILING, csv_files, detect_subprocess, kill_after_first_output, make_batch_inputs,
                                  manifest_statuses, read_manifest, temporaries)

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def cluster():
    context = ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
                       object_store_memory=100 << 20)
    yield context
    ray.shutdown()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return make_batch_inputs(tmp_path_factory.mktemp("batch_ray"))


@pytest.fixture(scope="module")
def local_reference(inputs, tmp_path_factory):
    """CSVs of the same folder through the local engine with one worker."""
    out = tmp_path_factory.mktemp("local") / "out"
    summary = run_batch(find_videos([inputs["movies"]]), out, detector_settings=inputs["settings"], workers=1,
                        quiet=True)
    assert (summary.done, summary.failed) == (4, 2)
    return csv_files(out)


def actor_pids() -> list[int]:
    """Processes of this machine running a VideoActor (Ray titles them ``ray::VideoActor...``)."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and (entry / "cmdline").read_bytes().startswith(b"ray::VideoActor"):
                pids.append(int(entry.name))
        except OSError:
            continue  # the process ended meanwhile
    return pids


def test_ray_engine_writes_the_local_engines_bytes_and_fails_a_corrupt_video_once(cluster, inputs,
                                                                                 local_reference, tmp_path):
    out = tmp_path / "out"
    summary = run_batch(find_videos([inputs["movies"]]), out, detector_settings=inputs["settings"], engine="ray",
                        workers=2, quiet=True)
    assert (summary.done, summary.failed, summary.skipped) == (4, 2, 0)
    assert csv_files(out) == local_reference
    videos = read_manifest(out)["videos"]
    for name, file in (("corrupt", "corrupt.mkv"), ("fake", "fake.mp4")):
        assert videos[name]["status"] == "failed" and videos[name]["attempts"] == 1 and file in videos[name]["error"]
    assert len({entry["worker"] for entry in videos.values()}) == 2
    good = [(path, name) for path, name in find_videos([inputs["movies"]]) if name not in FAILING]
    again = run_batch(good, out, detector_settings=inputs["settings"], engine="ray", workers=2, quiet=True)
    assert (again.done, again.failed, again.skipped) == (0, 0, 4)


def test_killed_ray_worker_is_replaced_and_every_video_done(cluster, inputs, local_reference, tmp_path):
    out = tmp_path / "out"
    killed = []

    def kill_an_actor_after_the_first_output():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            pids = actor_pids()
            if pids and {"done", "running"} <= manifest_statuses(out):
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])
            time.sleep(0.02)

    killer = threading.Thread(target=kill_an_actor_after_the_first_output, daemon=True)
    killer.start()
    summary = run_batch(find_videos([inputs["movies"]]), out, detector_settings=inputs["settings"], engine="ray",
                        workers=1, quiet=True)
    killer.join()
    assert killed, "no Ray actor was killed"
    assert (summary.done, summary.failed) == (4, 2)
    assert csv_files(out) == local_reference
    attempts = {name: entry["attempts"] for name, entry in read_manifest(out)["videos"].items()}
    assert max(attempts.values()) == 2 and attempts["corrupt"] == 1


def test_interrupted_ray_run_resumes_like_a_local_one(cluster, inputs, local_reference, tmp_path):
    out = tmp_path / "out"
    process = detect_subprocess(inputs, out, "--engine", "ray", "--ray-address", cluster.address_info["address"],
                                "--workers", "1")
    kill_after_first_output(process, out)
    assert len(csv_files(out)) < 4, "the batch finished before it could be killed"
    summary = run_batch(find_videos([inputs["movies"]]), out, detector_settings=inputs["settings"], engine="ray",
                        workers=2, quiet=True)
    assert summary.done + summary.skipped == 4 and summary.skipped >= 1 and summary.failed == 2
    assert csv_files(out) == local_reference
    assert not temporaries(out)


def test_actor_plan_follows_the_cluster(cluster):
    from ava_pipeline.batch.ray_engine import plan_actors
    from ava_pipeline.errors import ConfigError

    (whole_node,) = plan_actors(ray, on_gpu=False, workers=None)
    assert (whole_node.num_cpus, whole_node.threads, whole_node.num_gpus) == (2, 2, 0) and whole_node.node_id
    assert [(s.num_cpus, s.threads) for s in plan_actors(ray, on_gpu=False, workers=2)] == [(1, 1), (1, 1)]
    with pytest.raises(ConfigError, match="the Ray cluster has no GPU"):
        plan_actors(ray, on_gpu=True, workers=None)


def test_unreachable_cluster_address_fails_at_once(inputs, tmp_path):
    import socket

    from ava_pipeline.batch.ray_engine import _check_reachable
    from ava_pipeline.errors import ConfigError

    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        port = listening.getsockname()[1]
        _check_reachable(f"127.0.0.1:{port}")
        _check_reachable(f"ray://127.0.0.1:{port}")
    with pytest.raises(ConfigError, match=f"cannot reach the Ray cluster at '127.0.0.1:{port}'.*ray start --head"):
        _check_reachable(f"127.0.0.1:{port}")
    _check_reachable(None)
    _check_reachable("auto")
    process = detect_subprocess(inputs, tmp_path / "out", "--engine", "ray", "--ray-address", f"127.0.0.1:{port}")
    assert process.wait(timeout=120) == 2, "ava-detect checks the address before Ray retries it for minutes"
    assert f"cannot reach the Ray cluster at '127.0.0.1:{port}'" in process.stderr.read().decode()


def test_tracks_and_segments_are_the_same_bytes_through_ray_and_local(cluster, inputs, tmp_path):
    settings = {**inputs["settings"], "tracks": {"smooth_scores": 3}}
    good = [(path, name) for path, name in find_videos([inputs["movies"]]) if name not in FAILING]
    outputs = {}
    for engine in ("local", "ray"):
        out = tmp_path / engine
        summary = run_batch(good, out, detector_settings=settings, output_format="jsonl", engine=engine, workers=2,
                            quiet=True, segments_dir=out / "segments", segment_thresh=0.45)
        assert (summary.done, summary.failed) == (4, 0)
        outputs[engine] = {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*"))
                           if p.suffix in (".jsonl", ".csv")}
    assert outputs["ray"] == outputs["local"]
    assert len([name for name in outputs["local"] if name.startswith("segments/")]) == 4
    assert all(b'"person_id": ' in data for name, data in outputs["local"].items() if name.endswith(".jsonl"))

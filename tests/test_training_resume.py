"""A run SIGKILLed mid-epoch and resumed with the same command ends with exactly the checkpoint of an
uninterrupted run (same tensor bytes), whatever the DataLoader worker count of either run."""
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from tests.training_fixtures import write_config, write_dataset


def _command(config, data, out, workers):
    return [sys.executable, "-m", "ava_pipeline.cli.train", "--config", str(config), "--videos", str(data["videos"]),
            "--annotations", str(data["annotations"]), "--labelmap", str(data["labelmap"]), "--out", str(out),
            "--workers", str(workers), "--quiet"]


def _environment():
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")


def _iterations_logged(out, epoch):
    metrics = out / "metrics.jsonl"
    if not metrics.is_file():
        return 0
    return metrics.read_text().count(f'"type": "iteration", "epoch": {epoch},')


@pytest.mark.subprocess
def test_sigkill_mid_epoch_then_resume_gives_the_uninterrupted_checkpoint(tmp_path):
    data = write_dataset(tmp_path)
    # augmentation, shuffling and dropout all on: data order, augmentation draws and dropout must all replay
    config = write_config(tmp_path / "tiny.yaml", num_classes=3, label_map=str(data["labelmap"]),
                          train={"seed": 4, "solver": {"base_lr": 0.001, "max_epoch": 3, "warmup_epochs": 1.0,
                                                       "warmup_start_lr": 0.0001}})
    reference = subprocess.run(_command(config, data, tmp_path / "reference", 0), env=_environment(),
                               capture_output=True, text=True, timeout=600)
    assert reference.returncode == 0, reference.stderr

    out = tmp_path / "killed"
    process = subprocess.Popen(_command(config, data, out, 0), env=_environment(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while _iterations_logged(out, 2) < 1 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before it could be killed mid-epoch"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    checkpoints = sorted(p.name for p in (out / "checkpoints").iterdir() if not p.name.startswith("."))
    assert checkpoints == ["checkpoint_epoch_00001.pyth"]  # killed inside epoch 2

    resumed = subprocess.run(_command(config, data, out, 1), env=_environment(), capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stderr and "at epoch 2" in resumed.stderr
    final = "checkpoints/checkpoint_epoch_00003.pyth"
    expected = torch.load(tmp_path / "reference" / final, weights_only=True)
    actual = torch.load(out / final, weights_only=True)
    for key, value in expected["model_state"].items():
        assert torch.equal(actual["model_state"][key], value), key
    for index, state in expected["optimizer_state"]["state"].items():
        assert torch.equal(actual["optimizer_state"]["state"][index]["momentum_buffer"], state["momentum_buffer"])
    assert torch.equal(actual["rng_state"]["torch"], expected["rng_state"]["torch"])
    assert (out / final).read_bytes() == (tmp_path / "reference" / final).read_bytes()
    # metrics.jsonl reads as one run: the killed epoch's iterations were dropped and redone
    assert _iterations_logged(out, 2) == _iterations_logged(tmp_path / "reference", 2) == 3

"""Data-parallel ava-train under torchrun (gloo on the CPU): with MODEL.FROZEN_BN, augmentation and shuffling off
and as many boxes per process, 2 processes on a global batch of 2 give the 1-process checkpoint within float noise;
a 2-process run SIGKILLed mid-epoch and restarted ends with the uninterrupted run's checkpoint. Plus the sharding,
the batch split and the settings keys, in-process."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ava_pipeline.errors import ConfigError
from ava_pipeline.training import load_train_settings
from ava_pipeline.training.distributed import Distributed
from ava_pipeline.training.sampling import EpochSampler, ShardedEpochSampler, per_process_batch
from tests.training_fixtures import write_config, write_dataset

# two boxes on every keyframe, so each process of a 2-process job holds as many boxes as the other
EQUAL_BOXES = {
    ("clip_a", 1): [("0.05", "0.1", "0.45", "0.9", [11]), ("0.55", "0.1", "0.95", "0.9", [12, 14])],
    ("clip_a", 2): [("0.05", "0.1", "0.45", "0.9", [11]), ("0.55", "0.1", "0.95", "0.9", [12])],
    ("clip_a", 3): [("0.1", "0.2", "0.5", "0.8", [14]), ("0.5", "0.2", "0.9", "0.8", [11])],
    ("clip_b", 1): [("0.3", "0.1", "0.7", "0.9", [12]), ("0.0", "0.0", "0.3", "0.6", [14])],
    ("clip_b", 2): [("0.05", "0.1", "0.45", "0.9", [14, 11]), ("0.6", "0.2", "0.9", "0.8", [12])],
    ("clip_b", 3): [("0.2", "0.1", "0.6", "0.9", [11]), ("0.6", "0.1", "0.9", "0.9", [12])],
}
FINAL = "checkpoints/checkpoint_epoch_00003.pyth"


def _arguments(setup, out):
    data, config = setup
    return ["-m", "ava_pipeline.cli.train", "--config", str(config), "--videos", str(data["videos"]),
            "--annotations", str(data["annotations"]), "--labelmap", str(data["labelmap"]),
            "--val-annotations", str(data["annotations"]), "--out", str(out), "--no-augment", "--no-shuffle",
            "--quiet"]


def _torchrun(processes):
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]


def _environment():
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ddp")
    data = write_dataset(folder, EQUAL_BOXES)
    # dropout 0.5 stays on: every process draws the mask of the whole global batch
    config = write_config(folder / "tiny.yaml", num_classes=3, label_map=str(data["labelmap"]),
                          train={"frozen_bn": True, "seed": 3, "eval_period": 3,
                                 "solver": {"base_lr": 0.01, "max_epoch": 3, "warmup_epochs": 0.0}})
    return data, config


@pytest.fixture(scope="module")
def two_process_run(setup, tmp_path_factory):
    out = tmp_path_factory.mktemp("two") / "run"
    result = subprocess.run(_torchrun(2) + _arguments(setup, out), env=_environment(), capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result


def _state(path):
    return torch.load(path, weights_only=True)


@pytest.mark.subprocess
def test_two_processes_give_the_one_process_checkpoint(setup, two_process_run, tmp_path):
    two, result = two_process_run
    one = tmp_path / "one"
    single = subprocess.run([sys.executable] + _arguments(setup, one), env=_environment(), capture_output=True,
                            text=True, timeout=600)
    assert single.returncode == 0, single.stderr
    assert "data-parallel: 2 processes, 1 of the 2 clips of each batch per process" in result.stderr
    assert result.stderr.count("epoch 3/3: mean loss") == 1  # only rank 0 speaks

    expected, actual = _state(one / FINAL), _state(two / FINAL)
    initial = _state(one / "checkpoints/checkpoint_epoch_00001.pyth")["model_state"]
    for key, value in expected["model_state"].items():
        if value.is_floating_point():
            torch.testing.assert_close(actual["model_state"][key], value, rtol=1e-4, atol=1e-6, msg=key)
        else:
            assert torch.equal(actual["model_state"][key], value), key
    # the check is not vacuous: the head and BN affine weights moved between epochs 1 and 3 ...
    moved = (expected["model_state"]["head.projection.weight"] - initial["head.projection.weight"]).abs().max()
    assert moved > 1e-3
    bn = "s1.pathway0_stem.bn"
    assert not torch.equal(expected["model_state"][f"{bn}.weight"], initial[f"{bn}.weight"])
    # ... while FROZEN_BN kept the running statistics at their initial values in both runs
    for state in (expected, actual):
        assert torch.equal(state["model_state"][f"{bn}.running_mean"], torch.zeros_like(initial[f"{bn}.running_mean"]))
        assert int(state["model_state"][f"{bn}.num_batches_tracked"]) == 0
    # dropout drew the same masks: the random-number state after training is the same
    assert torch.equal(actual["rng_state"]["torch"], expected["rng_state"]["torch"])

    # rank 0 alone wrote the run: one record per iteration (3 per epoch), one evaluation over all 6 keyframes
    records = (two / "metrics.jsonl").read_text().splitlines()
    iterations = [json.loads(line) for line in records if '"type": "iteration"' in line]
    assert len(iterations) == 9 and all(r["boxes"] == 4 for r in iterations)  # the global batch's boxes
    evaluations = [line for line in records if '"type": "eval"' in line]
    assert len(evaluations) == 1 and '"keyframes": 6' in evaluations[0]
    single_eval = next(line for line in (one / "metrics.jsonl").read_text().splitlines() if '"type": "eval"' in line)
    assert _eval_map(evaluations[0]) == pytest.approx(_eval_map(single_eval), abs=1e-6)
    assert sorted(p.name for p in (two / "checkpoints").iterdir()) == [
        "checkpoint_epoch_00001.pyth", "checkpoint_epoch_00002.pyth", "checkpoint_epoch_00003.pyth"]
    assert "module." not in " ".join(actual["model_state"])


def _eval_map(line):
    return json.loads(line)["mAP"]


def _kill_tree(pid):
    """SIGKILL ``pid`` and all its descendants at once (as a machine failure would)."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parent = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(parent, []).append(int(entry))
    tree, pending = [], [pid]
    while pending:
        current = pending.pop()
        tree.append(current)
        pending += children.get(current, [])
    for member in tree:
        try:
            os.kill(member, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.mark.subprocess
def test_two_process_run_killed_mid_epoch_resumes_to_the_same_checkpoint(setup, two_process_run, tmp_path):
    reference, _ = two_process_run
    out = tmp_path / "killed"
    command = _torchrun(2) + _arguments(setup, out)
    process = subprocess.Popen(command, env=_environment(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics, deadline = out / "metrics.jsonl", time.monotonic() + 600
    while process.poll() is None and time.monotonic() < deadline and not (
            metrics.is_file() and '"type": "iteration", "epoch": 2, "iteration": 1' in metrics.read_text()):
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before it could be killed mid-epoch"
    _kill_tree(process.pid)  # torchrun and both workers (which torchrun starts in sessions of their own)
    process.wait()
    assert sorted(p.name for p in (out / "checkpoints").iterdir() if not p.name.startswith(".")) == [
        "checkpoint_epoch_00001.pyth"]

    resumed = subprocess.run(command, env=_environment(), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stderr and "at epoch 2" in resumed.stderr
    expected, actual = _state(reference / FINAL), _state(out / FINAL)
    for key, value in expected["model_state"].items():
        assert torch.equal(actual["model_state"][key], value), key
    for index, state in expected["optimizer_state"]["state"].items():
        assert torch.equal(actual["optimizer_state"]["state"][index]["momentum_buffer"], state["momentum_buffer"])


@pytest.mark.parametrize("size,batch,shuffle", [(7, 4, True), (6, 2, False), (9, 6, True)])
def test_shards_of_each_iteration_make_the_one_process_batch(size, batch, shuffle):
    single = EpochSampler(size, seed=5, shuffle=shuffle)
    single.set_epoch(3)
    whole = [index for _, index in single][:size // batch * batch]
    world = 2
    shards = []
    for rank in range(world):
        sampler = ShardedEpochSampler(size, seed=5, shuffle=shuffle, batch_size=batch,
                                      job=Distributed(rank=rank, world_size=world, local_rank=rank,
                                                      local_world_size=world))
        sampler.set_epoch(3)
        shards.append([index for epoch, index in sampler])
        assert len(shards[-1]) == len(sampler) == size // batch * (batch // world)
    per = batch // world
    for iteration in range(size // batch):
        assert (shards[0][iteration * per:(iteration + 1) * per] + shards[1][iteration * per:(iteration + 1) * per]
                == whole[iteration * batch:(iteration + 1) * batch])


def test_global_batch_must_split_evenly_over_the_processes():
    job = Distributed(rank=0, world_size=4, local_rank=0, local_world_size=4)
    assert per_process_batch(8, job) == 2
    assert per_process_batch(3, None) == 3
    with pytest.raises(ConfigError, match="BATCH_SIZE 6 .* divisible by the 4 processes"):
        per_process_batch(6, job)


def test_pyslowfast_frozen_bn_and_norm_type_keys(tmp_path):
    import yaml

    from ava_pipeline.config import load_config

    original = Path(__file__).parent / "data/pyslowfast_configs/configs/AVA/SLOWFAST_32x2_R50_SHORT.yaml"
    raw = yaml.safe_load(original.read_text(encoding="utf-8"))
    raw.setdefault("MODEL", {})["FROZEN_BN"] = True
    raw.setdefault("BN", {}).update(NORM_TYPE="sync_batchnorm", NUM_SYNC_DEVICES=4)
    path = tmp_path / "SLOWFAST_32x2_R50_SHORT.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    settings = load_train_settings(path)
    assert settings.frozen_bn is True and settings.norm_type == "sync_batchnorm" and settings.num_sync_devices == 4
    assert load_config(path).model.depth == 50  # the model side reads the same file
    path.write_text("MODEL:\n  ARCH: slowfast\nBN:\n  NORM_TYPE: groupnorm\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="norm_type='groupnorm' is not supported"):
        load_train_settings(path)


def test_frozen_bn_keeps_running_statistics_and_trains_affine_weights(tmp_path):
    from ava_pipeline.training import train

    data = write_dataset(tmp_path)
    runs = {}
    for frozen in (False, True):
        config = write_config(tmp_path / f"tiny_{frozen}.yaml", num_classes=3, label_map=str(data["labelmap"]),
                              train={"frozen_bn": frozen, "solver": {"base_lr": 0.001, "max_epoch": 1}})
        result = train(config, videos=data["videos"], annotations=data["annotations"], out=tmp_path / f"run_{frozen}",
                       quiet=True, say=lambda line: None)
        runs[frozen] = torch.load(result.checkpoint, weights_only=True)["model_state"]
    bn = "s2.pathway0_res0.branch2.a_bn"
    assert int(runs[False][f"{bn}.num_batches_tracked"]) == 3 and int(runs[True][f"{bn}.num_batches_tracked"]) == 0
    assert torch.equal(runs[True][f"{bn}.running_mean"], torch.zeros_like(runs[True][f"{bn}.running_mean"]))
    assert torch.equal(runs[True][f"{bn}.running_var"], torch.ones_like(runs[True][f"{bn}.running_var"]))
    assert not torch.equal(runs[True][f"{bn}.weight"], torch.ones_like(runs[True][f"{bn}.weight"]))  # trained


class _TwoMachines(Distributed):
    """A job whose other process found another checkpoint (what a run folder on one machine's local disk gives)."""

    def all_gather_int(self, value, device):
        return [value, value + 1]


def test_processes_that_found_different_checkpoints_refuse_to_start(tmp_path):
    from ava_pipeline.training.distributed import check_same_start

    job = _TwoMachines(rank=0, world_size=2, local_rank=0, local_world_size=1)
    with pytest.raises(ConfigError, match=r"different checkpoints .* by rank: \[3, 4\].* every machine"):
        check_same_start(job, 3, torch.device("cpu"), tmp_path / "checkpoints")

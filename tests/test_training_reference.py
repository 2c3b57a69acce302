"""Training is PySlowFast's step for step: the recorded run of tools/make_training_reference.py (PySlowFast's own
build_model / init_weights / construct_optimizer / lr policy / BCE on a tiny model) repeated with our modules."""
import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from ava_pipeline.config import ModelConfig
from ava_pipeline.training.init import build_training_model
from ava_pipeline.training.loop import train_step
from ava_pipeline.training.optim import build_optimizer, learning_rate
from ava_pipeline.training.settings import SolverSettings

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = json.loads((ROOT / "tests" / "data" / "training_reference.json").read_text())
_spec = importlib.util.spec_from_file_location("make_training_reference", ROOT / "tools" / "make_training_reference.py")
tool = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tool)


def _model_config() -> ModelConfig:
    sf = REFERENCE["pyslowfast"]
    return ModelConfig(
        arch=sf["MODEL.ARCH"], depth=sf["RESNET.DEPTH"], num_frames=sf["DATA.NUM_FRAMES"],
        sampling_rate=sf["DATA.SAMPLING_RATE"], alpha=sf["SLOWFAST.ALPHA"], beta_inv=sf["SLOWFAST.BETA_INV"],
        fusion_conv_channel_ratio=sf["SLOWFAST.FUSION_CONV_CHANNEL_RATIO"],
        fusion_kernel_size=sf["SLOWFAST.FUSION_KERNEL_SZ"], width_per_group=sf["RESNET.WIDTH_PER_GROUP"],
        num_classes=sf["MODEL.NUM_CLASSES"], dropout_rate=sf["MODEL.DROPOUT_RATE"], aligned=sf["DETECTION.ALIGNED"],
        nonlocal_location=tuple(tuple(tuple(p) for p in stage) for stage in sf["NONLOCAL.LOCATION"]))


def _solver() -> SolverSettings:
    sf = REFERENCE["pyslowfast"]
    return SolverSettings(base_lr=sf["SOLVER.BASE_LR"], lr_policy=sf["SOLVER.LR_POLICY"],
                          steps=tuple(sf["SOLVER.STEPS"]), lrs=tuple(sf["SOLVER.LRS"]),
                          max_epoch=sf["SOLVER.MAX_EPOCH"], warmup_epochs=sf["SOLVER.WARMUP_EPOCHS"],
                          warmup_start_lr=sf["SOLVER.WARMUP_START_LR"], weight_decay=sf["SOLVER.WEIGHT_DECAY"],
                          momentum=sf["SOLVER.MOMENTUM"], bn_weight_decay=sf["BN.WEIGHT_DECAY"])


@pytest.fixture()
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(REFERENCE["threads"])
    yield
    torch.set_num_threads(threads)


def _build():
    sf = REFERENCE["pyslowfast"]
    return build_training_model(_model_config(), seed=sf["RNG_SEED"], fc_init_std=0.01,
                                zero_init_final_bn=sf["RESNET.ZERO_INIT_FINAL_BN"])


def test_random_initialisation_is_pyslowfasts_bit_for_bit():
    assert tool.state_sha256(_build().state_dict()) == REFERENCE["initial_state_sha256"]


def test_parameter_groups_are_pyslowfasts():
    optimizer = build_optimizer(_build(), _solver())
    assert [{"size": len(g["params"]), "weight_decay": g["weight_decay"]} for g in optimizer.param_groups] == \
        REFERENCE["optimizer_groups"]
    assert all(g["nesterov"] and g["momentum"] == 0.9 and g["dampening"] == 0 for g in optimizer.param_groups)


def test_training_steps_match_pyslowfast(one_thread):
    model = _build()
    solver = _solver()
    optimizer = build_optimizer(model, solver)
    sf, recipe = REFERENCE["pyslowfast"], REFERENCE["recipe"]
    batches = tool.reference_batches(recipe, sf["MODEL.NUM_CLASSES"], sf["SLOWFAST.ALPHA"], sf["DATA.NUM_FRAMES"])
    per_epoch = recipe["iterations_per_epoch"]
    for step, (batch, expected) in enumerate(zip(batches[:-1], REFERENCE["steps"])):
        epoch, iteration = divmod(step, per_epoch)
        lr = learning_rate(solver, epoch + float(iteration) / per_epoch)
        assert lr == expected["lr"]  # the same float, to the last bit
        loss = train_step(model, optimizer, batch["inputs"], batch["boxes"], batch["labels"], lr)
        assert loss == pytest.approx(expected["loss"], rel=1e-5, abs=1e-6)
    for key, value in model.state_dict().items():
        total, squares = REFERENCE["final_state_sums"][key]
        assert float(value.double().sum()) == pytest.approx(total, rel=1e-4, abs=1e-5), key
        assert float(value.double().pow(2).sum()) == pytest.approx(squares, rel=1e-4, abs=1e-6), key
    model.eval()
    with torch.no_grad():
        probs = model(batches[-1]["inputs"], batches[-1]["boxes"])
    assert torch.allclose(probs, torch.tensor(REFERENCE["eval_probs"]), atol=1e-5)


def test_learning_rate_policies_follow_pyslowfast_formulas():
    steps = SolverSettings(base_lr=0.1, lr_policy="steps_with_relative_lrs", steps=(0, 10, 15, 20),
                           lrs=(1, 0.1, 0.01, 0.001), max_epoch=20, warmup_epochs=5.0, warmup_start_lr=0.000125)
    assert learning_rate(steps, 0.0) == 0.000125
    assert learning_rate(steps, 2.5) == pytest.approx(0.000125 + 2.5 * (0.1 - 0.000125) / 5)
    assert learning_rate(steps, 5.0) == 0.1  # warmup is strict: e == WARMUP_EPOCHS is the policy's value
    assert learning_rate(steps, 12.0) == pytest.approx(0.01)
    assert learning_rate(steps, 25.0) == pytest.approx(0.0001)
    cosine = SolverSettings(base_lr=0.1, lr_policy="cosine", cosine_end_lr=0.001, max_epoch=10, warmup_epochs=0.0)
    assert learning_rate(cosine, 5.0) == pytest.approx(0.001 + 0.099 * (math.cos(math.pi / 2) + 1) / 2)
    after = SolverSettings(base_lr=0.1, lr_policy="cosine", max_epoch=10, warmup_epochs=2.0, cosine_after_warmup=True,
                           warmup_start_lr=0.01)
    assert learning_rate(after, 2.0) == pytest.approx(0.1)
    assert learning_rate(after, 1.0) == pytest.approx(0.055)

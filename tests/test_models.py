"""Action model: PySlowFast's state-dict layout, PySlowFast's numbers, shapes, boxes, flags and errors."""
import dataclasses
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from ava_pipeline.config import ModelConfig, load_config
from ava_pipeline.errors import ConfigError, InputFormatError
from ava_pipeline.models import RoIHead, SlowFast, build_action_model
from tests.model_fixtures import PARITY_CASES, PARITY_SEED, SLOW_ONLY, random_clips, random_state_dict

DATA = Path(__file__).parent / "data"
PYSLOWFAST_CONFIGS = DATA / "pyslowfast_configs"
TOLERANCE = 1e-4
TINY = dict(width_per_group=8, num_frames=8)


def tiny_model(seed=0, **options) -> tuple[SlowFast, ModelConfig]:
    cfg = ModelConfig(**{**TINY, **options})
    model = build_action_model(cfg)
    model.load_state_dict(random_state_dict(model.state_dict(), seed))
    return model, cfg


def run(model, clips, boxes):
    with torch.no_grad():
        return model(clips, boxes)


@pytest.mark.parametrize("keys_file", ["keys_r50.txt", "keys_r101.txt", "keys_slow_r50.txt"])
def test_state_dict_keys_shapes_and_parameter_count_are_pyslowfast(keys_file):
    lines = (DATA / keys_file).read_text().splitlines()
    config_name = re.match(r"# config: (\S+)", lines[0]).group(1)
    parameters = int(re.search(r"parameters: (\d+)", lines[1]).group(1))
    expected = [tuple(line.split("\t")[:2]) for line in lines if not line.startswith("#")]
    with torch.device("meta"):
        model = build_action_model(load_config(PYSLOWFAST_CONFIGS / config_name).model)
    assert [(key, str(tuple(value.shape))) for key, value in model.state_dict().items()] == expected
    assert sum(p.numel() for p in model.parameters()) == parameters


@pytest.mark.parametrize("name", [name for name in PARITY_CASES if not name.startswith("tiny_")])
def test_parity_cases_are_pyslowfast_yaml_configs(name):
    assert load_config(PYSLOWFAST_CONFIGS / "configs" / "AVA" / f"{name}.yaml").model == PARITY_CASES[name][0]


@pytest.mark.parametrize("name", list(PARITY_CASES))
def test_probabilities_equal_pyslowfast(name):
    """tests/data/model_parity.npz holds what PySlowFast's own model computed for this recipe."""
    reference = np.load(DATA / "model_parity.npz")
    model_cfg, height, width = PARITY_CASES[name]
    with torch.device("meta"):  # every value comes from the state dict below: skip the random init
        model = build_action_model(model_cfg)
    state = random_state_dict(model.state_dict(), PARITY_SEED)
    clips, boxes = random_clips(model_cfg, height, width, PARITY_SEED)
    # The recipe must regenerate PySlowFast's inputs exactly; otherwise the comparison below is meaningless.
    np.testing.assert_allclose([float(c.double().sum()) for c in clips] + [float(boxes.double().sum())],
                               reference[f"{name}:input_sum"], rtol=1e-9)
    np.testing.assert_allclose(float(sum(v.double().sum() for v in state.values())),
                               reference[f"{name}:weights_sum"], rtol=1e-9)
    model.load_state_dict(state, strict=True, assign=True)
    probabilities = run(model, clips, boxes)
    expected = torch.from_numpy(reference[name])
    assert probabilities.shape == expected.shape == (4, 80)
    assert (probabilities - expected).abs().max().item() < TOLERANCE
    assert expected.std() > 0.05  # the weights recipe does not saturate the sigmoid


@pytest.fixture(scope="module")
def tiny():
    """A tiny SlowFast (aligned RoIAlign), its config, and two clips with two boxes each (shared: one warm-up)."""
    model, cfg = tiny_model(aligned=True)
    clips, boxes = random_clips(cfg, 64, 64, seed=1)
    return model, cfg, clips, boxes


def test_output_is_one_probability_row_per_box(tiny):
    model, _, clips, boxes = tiny
    probabilities = run(model, clips, boxes)
    assert probabilities.shape == (len(boxes), 80) and probabilities.dtype == torch.float32
    assert ((probabilities > 0) & (probabilities < 1)).all()
    assert not torch.allclose(probabilities[0], probabilities[1])
    assert run(model, clips, torch.zeros(0, 5)).shape == (0, 80)


def test_box_batch_index_selects_the_clip(tiny):
    model, _, clips, _ = tiny
    box = [5.0, 7.5, 50.0, 60.0]
    probabilities = run(model, clips, torch.tensor([[0.0, *box], [1.0, *box]]))
    swapped = run(model, [c.flip(0) for c in clips], torch.tensor([[1.0, *box], [0.0, *box]]))
    assert (probabilities - swapped).abs().max() < 1e-6
    assert (probabilities[0] - probabilities[1]).abs().max() > 1e-3


def test_aligned_flag_changes_the_output(tiny):
    aligned, cfg, clips, boxes = tiny
    unaligned = build_action_model(dataclasses.replace(cfg, aligned=False))
    unaligned.load_state_dict(aligned.state_dict())
    assert (run(aligned, clips, boxes) - run(unaligned, clips, boxes)).abs().max() > 1e-3
    assert "aligned=False" in repr(unaligned.head)


def test_bad_inputs_are_reported(tiny):
    model, _, clips, boxes = tiny
    with pytest.raises(InputFormatError, match=r"boxes must have shape \(K, 5\)"):
        run(model, clips, boxes[:, 1:])
    with pytest.raises(InputFormatError, match="T_slow=8, T_fast=8"):
        run(model, [clips[1], clips[1]], boxes)
    with pytest.raises(InputFormatError, match=r"expected \[slow, fast\]"):
        run(model, clips[:1], boxes)
    with pytest.raises(ConfigError, match="head_act='softmax'"):
        build_action_model(ModelConfig(head_act="softmax"))


def test_slow_only_model_takes_one_pathway():
    model, cfg = tiny_model(**{**SLOW_ONLY, "width_per_group": 4})
    clips, boxes = random_clips(cfg, 32, 48, seed=1)
    assert len(clips) == 1 and not hasattr(model, "s1_fuse")
    assert model.head.projection.in_features == 32 * 4
    assert run(model, clips, boxes).shape == (4, 80)
    with pytest.raises(InputFormatError, match=r"expected \[slow\]"):
        run(model, [clips[0], clips[0]], boxes)


def test_tiny_widths_derive_every_channel_count():
    model, cfg = tiny_model(width_per_group=4, beta_inv=4)
    assert model.s1.pathway1_stem.conv.out_channels == 1
    assert model.s2.pathway0_res0.branch2.a.in_channels == 4 + 2  # Slow stem + fused Fast (ratio 2)
    assert model.head.projection.in_features == 32 * 4 + 32 * 4 // 4
    clips, boxes = random_clips(cfg, 32, 48, seed=1)
    assert run(model, clips, boxes).shape == (4, 80)
    with pytest.raises(ConfigError, match="width_per_group=4 leaves the Fast pathway no channels"):
        build_action_model(ModelConfig(width_per_group=4, beta_inv=8))


def test_roi_head_pools_each_pathway_over_time_and_space():
    head = RoIHead(in_channels=(3, 2), num_classes=5, roi_resolution=7, spatial_scale=1 / 16, aligned=True,
                   dropout_rate=0.5).eval()
    features = [torch.zeros(1, 3, 4, 8, 8), torch.zeros(1, 2, 8, 8, 8)]
    features[0][0, 1, 2, 3, 3] = 4.0  # one hot cell in one of the 4 frames of Slow channel 1
    with torch.no_grad():
        head.projection.weight.zero_()
        head.projection.bias.zero_()
        head.projection.weight[0, 1] = 1.0
        # aligned: a 112-pixel box from the origin samples feature cells 0..6 exactly (one sample per bin)
        inside = head(features, torch.tensor([[0.0, 0.0, 0.0, 112.0, 112.0]]))
        outside = head(features, torch.tensor([[0.0, 0.0, 0.0, 16.0, 16.0]]))
    assert inside.shape == (1, 5)
    assert inside[0, 0].item() == pytest.approx(torch.sigmoid(torch.tensor(1.0)).item())  # max of mean 4.0 / 4
    assert outside[0, 0].item() == pytest.approx(0.5) and (inside[0, 1:] == 0.5).all()


def test_roi_head_gives_the_same_probabilities_for_channels_last_features():
    """The fast path feeds channels-last 3D features; the temporal mean takes a faster route for them."""
    torch.manual_seed(0)
    head = RoIHead(in_channels=(16, 4), num_classes=5, roi_resolution=7, spatial_scale=1 / 16, aligned=False,
                   dropout_rate=0.0).eval()
    features = [torch.randn(2, 16, 4, 6, 9), torch.randn(2, 4, 16, 6, 9)]
    boxes = torch.tensor([[0.0, 3.0, 5.0, 90.0, 80.0], [1.0, 20.0, 0.0, 140.0, 95.0]])
    with torch.no_grad():
        expected = head(features, boxes)
        got = head([f.contiguous(memory_format=torch.channels_last_3d) for f in features], boxes)
    assert (got - expected).abs().max().item() < 1e-6

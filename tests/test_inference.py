"""optimize_for_inference: same probabilities as the eager model, original untouched; FLOP counting."""
import copy

import pytest
import torch
from torch import nn

from ava_pipeline.config import ModelConfig
from ava_pipeline.errors import ConfigError
from ava_pipeline.models import build_action_model
from ava_pipeline.models.flops import count_flops
from ava_pipeline.models.folded import FoldedConv
from ava_pipeline.models.inference import FrameMaxPool, optimize_for_inference

TOLERANCE = 1e-4
NONLOCAL_R101 = dict(fusion_kernel_size=5, nonlocal_location=(((), ()), ((), ()), ((6, 13, 20), ()), ((), ())),
                     nonlocal_pool=(((2, 2, 2), (2, 2, 2)),) * 4)


def randomize_batchnorm(model, seed=0):
    """Random BN affine parameters and running statistics (a fresh model zero-initialises final BNs)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm3d):
                module.weight.uniform_(0.5, 1.5, generator=generator)
                module.bias.uniform_(-0.3, 0.3, generator=generator)
                module.running_mean.uniform_(-0.3, 0.3, generator=generator)
                module.running_var.uniform_(0.5, 2.0, generator=generator)
    return model.eval()


def make_model(seed=0, **options):
    torch.manual_seed(seed)
    return randomize_batchnorm(build_action_model(ModelConfig(**options)), seed)


def make_inputs(cfg_options, height, width, batch=2, seed=0):
    """Clips for every pathway and two boxes per clip (batch index, x1, y1, x2, y2 in input pixels)."""
    cfg = ModelConfig(**cfg_options)
    generator = torch.Generator().manual_seed(seed)
    frames = [cfg.num_frames // cfg.alpha, cfg.num_frames] if cfg.arch == "slowfast" else [cfg.num_frames]
    clips = [torch.randn(batch, 3, t, height, width, generator=generator) for t in frames]
    boxes = []
    for index in range(batch):
        boxes += [[index, 1.0, 2.0, width * 0.6, height - 3.0], [index, width * 0.3, 0.0, width - 1.0, height * 0.7]]
    return clips, torch.tensor(boxes)


def assert_same_probabilities(options, height, width):
    model = make_model(**options)
    clips, boxes = make_inputs(options, height, width)
    with torch.inference_mode():
        expected = model(clips, boxes)
    got = optimize_for_inference(model)(clips, boxes)
    assert got.shape == expected.shape == (4, 80)
    assert got.dtype == torch.float32
    assert (got - expected).abs().max().item() < TOLERANCE
    # The clips are different, so the rows must differ: a broken batch index would make them equal.
    assert not torch.allclose(got[0], got[2])


TINY = dict(width_per_group=16, num_frames=8)


@pytest.mark.parametrize("options", [
    dict(TINY, depth=50),
    dict(TINY, depth=101, aligned=False, **NONLOCAL_R101),
    dict(TINY, arch="slow", depth=50, num_frames=4),
], ids=["slowfast-r50-tiny", "slowfast-r101-nonlocal-tiny", "slow-r50-tiny"])
def test_fast_path_matches_eager_on_tiny_models(options):
    assert_same_probabilities(options, 64, 96)


@pytest.mark.real_size
def test_fast_path_matches_eager_on_real_size_r50_at_small_input():
    assert_same_probabilities(dict(depth=50), 32, 48)


def test_optimizing_leaves_the_original_model_unchanged():
    model = make_model(**TINY).train()
    before = {key: value.clone() for key, value in model.state_dict().items()}
    batchnorms = sum(isinstance(m, nn.BatchNorm3d) for m in model.modules())
    fast = optimize_for_inference(model)
    assert model.training
    assert sum(isinstance(m, nn.BatchNorm3d) for m in model.modules()) == batchnorms > 0
    assert all(torch.equal(before[key], value) for key, value in model.state_dict().items())
    assert not any(isinstance(m, nn.BatchNorm3d) for m in fast.modules())


def test_folded_conv_equals_conv_bn_relu_on_both_paths():
    torch.manual_seed(0)
    conv, bn = nn.Conv3d(6, 5, (3, 1, 1), padding=(1, 0, 0), bias=False), nn.BatchNorm3d(5)
    randomize_batchnorm(nn.Sequential(conv, bn))
    x, residual = torch.randn(2, 6, 4, 5, 7), torch.randn(2, 5, 4, 5, 7)
    with torch.inference_mode():
        expected = torch.relu(bn(conv(x)) + residual)
        for use_onednn in (True, False):
            folded = FoldedConv(conv, bn, activation="relu", use_onednn=use_onednn)
            assert (folded(x, residual=residual) - expected).abs().max().item() < 1e-5


def test_onednn_residual_is_accumulated_in_place():
    """On the oneDNN path a channels-last residual receives the output (sum post-op); the value is unchanged."""
    torch.manual_seed(0)
    conv, bn = nn.Conv3d(6, 5, (1, 1, 1), bias=False), nn.BatchNorm3d(5)
    randomize_batchnorm(nn.Sequential(conv, bn))
    x = torch.randn(1, 6, 3, 4, 5)
    residual = torch.randn(1, 5, 3, 4, 5).contiguous(memory_format=torch.channels_last_3d)
    with torch.inference_mode():
        expected = torch.relu(bn(conv(x)) + residual)
        got = FoldedConv(conv, bn, activation="relu", use_onednn=True)(x, residual=residual)
    assert (got - expected).abs().max().item() < 1e-5
    assert got.data_ptr() == residual.data_ptr() and torch.equal(residual, got)


@pytest.mark.parametrize("shape, ceil_mode", [((2, 5, 3, 9, 12), False), ((1, 4, 2, 10, 7), True)])
def test_frame_max_pool_equals_the_3d_pool(shape, ceil_mode):
    pool = nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1), ceil_mode=ceil_mode)
    assert FrameMaxPool.applies_to(pool)
    assert not FrameMaxPool.applies_to(nn.MaxPool3d((2, 2, 2), stride=(2, 2, 2)))
    assert FrameMaxPool.applies_to(nn.MaxPool3d(1)) and FrameMaxPool(nn.MaxPool3d(1)).kernel_size == (1, 1)
    x = torch.randn(shape).contiguous(memory_format=torch.channels_last_3d)
    got = FrameMaxPool(pool)(x)
    assert torch.equal(got, pool(x))
    assert got.is_contiguous(memory_format=torch.channels_last_3d)


def test_packed_weights_follow_the_input_shape_and_survive_copying():
    """oneDNN weights are packed for one input shape: a new shape repacks, results stay exact, copies work."""
    torch.manual_seed(0)
    conv, bn = nn.Conv3d(8, 16, (1, 3, 3), padding=(0, 1, 1), bias=False), nn.BatchNorm3d(16)
    randomize_batchnorm(nn.Sequential(conv, bn))
    folded = FoldedConv(conv, bn, activation="none", use_onednn=True)
    with torch.inference_mode():
        for shape in [(1, 8, 4, 10, 12), (2, 8, 4, 10, 12), (1, 8, 2, 7, 9), (1, 8, 4, 10, 12)]:
            x = torch.randn(shape)
            assert (folded(x) - bn(conv(x))).abs().max().item() < 1e-5
            assert x.shape in folded._packed
        assert len(folded._packed) == 3  # one packed weight per input shape seen
        copied = copy.deepcopy(folded)
        assert copied._packed == {}
        assert torch.equal(copied(x), folded(x))
    # weights written in place (load_state_dict) are repacked, not served stale from the cache
    doubled = {name: value * 2 if name == "weight" else value for name, value in folded.state_dict().items()}
    folded.load_state_dict(doubled)
    with torch.inference_mode():
        expected = 2 * bn(conv(x)) - folded.bias.view(1, -1, 1, 1, 1)  # 2 * (conv' + bias) - bias
        assert (folded(x) - expected).abs().max().item() < 1e-5


def test_bfloat16_autocast_stays_close_to_float32():
    model = make_model(**TINY)
    clips, boxes = make_inputs(TINY, 64, 96)
    with torch.inference_mode():
        expected = model(clips, boxes)
    got = optimize_for_inference(model, dtype=torch.bfloat16)(clips, boxes)
    assert got.dtype == torch.float32
    assert (got - expected).abs().max().item() < 0.05


def test_unknown_structure_and_dtype_are_errors():
    with pytest.raises(ConfigError, match="cannot fold BatchNorm"):
        optimize_for_inference(nn.Sequential(nn.BatchNorm3d(3)))
    with pytest.raises(ConfigError, match="dtype"):
        optimize_for_inference(make_model(**TINY), dtype=torch.int8)


def test_flop_count_of_a_single_conv3d_matches_hand_computation():
    conv = nn.Conv3d(4, 6, kernel_size=(3, 5, 5), stride=(1, 2, 2), padding=(1, 2, 2))
    flops = count_flops(conv, torch.randn(2, 4, 8, 16, 20))
    # output (2, 6, 8, 8, 10); each output value is 4*3*5*5 multiply-accumulates
    assert flops.total == 2 * (2 * 6 * 8 * 8 * 10) * (4 * 3 * 5 * 5)
    assert flops.by_kind == {"Conv3d": flops.total}


def test_flop_count_includes_head_and_nonlocal_products():
    options = dict(TINY, depth=101, **NONLOCAL_R101)
    clips, boxes = make_inputs(options, 64, 96)
    flops = count_flops(make_model(**options), clips, boxes)
    assert flops.by_kind["Linear"] == 2 * 4 * 80 * (16 * 32 + 2 * 32)  # 4 boxes, slow 512 + fast 64 features
    # three blocks: theta (2, 128, 2, 4, 6) against phi pooled to (1, 2, 3): 2 products each
    assert flops.by_kind["non-local matmul"] == 3 * 2 * 2 * 2 * (2 * 4 * 6) * (1 * 2 * 3) * 128
    assert flops.total == sum(flops.by_kind.values())


@pytest.mark.parametrize("options", [dict(TINY, depth=50), dict(TINY, arch="slow", depth=50, num_frames=4)],
                         ids=["slowfast", "slow"])
def test_both_paths_return_the_heads_pooled_roi_features_for_tracking(options):
    model = make_model(**options)
    clips, boxes = make_inputs(options, 64, 96)
    with torch.inference_mode():
        probs, features = model(clips, boxes, with_features=True)
        assert torch.equal(probs, model(clips, boxes))
        assert torch.allclose(torch.sigmoid(model.head.projection(features)), probs)
    fast_probs, fast_features = optimize_for_inference(model)(clips, boxes, with_features=True)
    channels = 512 if options.get("arch") == "slow" else 512 + 64  # res5: 32 x width (Slow) + an eighth (Fast)
    assert features.shape == fast_features.shape == (4, channels) and fast_features.dtype == torch.float32
    assert (fast_features - features).abs().max().item() < TOLERANCE * max(1.0, features.abs().max().item())
    assert (fast_probs - probs).abs().max().item() < TOLERANCE

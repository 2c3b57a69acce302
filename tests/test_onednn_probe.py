"""The fast path's oneDNN probe: the private ops are checked once; when they fail, F.conv3d gives the same values."""
import logging

import pytest
import torch

from ava_pipeline.models import inference
from ava_pipeline.models.folded import FoldedConv
from ava_pipeline.models.inference import onednn_usable, optimize_for_inference
from ava_pipeline.models import build_action_model
from tests.model_fixtures import PARITY_CASES, random_clips, random_state_dict

TINY_R101, HEIGHT, WIDTH = PARITY_CASES["tiny_R101_softmax_nonlocal"]  # non-local blocks, fusions, both pathways


def tiny_model():
    model = build_action_model(TINY_R101)
    model.load_state_dict(random_state_dict(model.state_dict(), seed=0))
    return model.eval()


def folded_convs(model):
    return [module for module in model.modules() if isinstance(module, FoldedConv)]


def test_the_ops_of_this_torch_pass_the_probe():
    """The torch versions CI installs (constraints.txt and .ci/run's second one) have working oneDNN ops."""
    assert onednn_usable()
    assert all(conv.use_onednn for conv in folded_convs(optimize_for_inference(tiny_model())))


@pytest.mark.parametrize("breakage", ["missing", "different"])
def test_broken_onednn_ops_fall_back_to_conv3d_with_one_log_line(breakage, monkeypatch, caplog):
    monkeypatch.setattr(inference, "_onednn_usable", None)  # probe again in this test; restored afterwards
    if breakage == "missing":  # as in a torch that dropped or renamed the private op
        monkeypatch.delattr(torch._C._nn, "mkldnn_reorder_conv3d_weight")
    else:  # as in a torch whose op computes something else
        convolution = torch.ops.mkldnn._convolution_pointwise
        monkeypatch.setattr(torch.ops.mkldnn, "_convolution_pointwise", lambda *args: convolution(*args) * 1.01)
    model = tiny_model()
    clips, boxes = random_clips(TINY_R101, HEIGHT, WIDTH, seed=1)
    with torch.inference_mode():
        expected = model(clips, boxes)
    with caplog.at_level(logging.WARNING, logger=inference.__name__):
        first = optimize_for_inference(model)
        second = optimize_for_inference(model)
    assert not onednn_usable()
    assert all(not conv.use_onednn and not conv.winograd for conv in folded_convs(first) + folded_convs(second))
    assert (first(clips, boxes) - expected).abs().max().item() < 1e-5
    assert torch.equal(first(clips, boxes), second(clips, boxes))
    records = [r for r in caplog.records if r.name == inference.__name__]
    assert len(records) == 1 and records[0].levelno == logging.WARNING
    assert f"torch {torch.__version__}" in records[0].getMessage()
    assert "using F.conv3d instead of oneDNN" in records[0].getMessage()

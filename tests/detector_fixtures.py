"""Person-detector helpers shared by the tests: noise keyframes and untrained torchvision models that find
persons with varied scores."""
import numpy as np
import torch
import torchvision

SMALL = {"min_size": 64, "max_size": 96}
"""Input resize of the test models (torchvision's default is 800 / 1333): keeps every forward pass fast."""


def keyframe_images():
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8), rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)]


def random_torchvision_model(name: str, seed: int = 0):
    """torchvision's untrained ``name`` with a raised person logit, so that noise images give persons with
    varied scores (MobileNet's default init lets their features vanish, hence He init of its convolutions)."""
    torch.manual_seed(seed)
    model = torchvision.models.get_model_builder(name)(weights=None, weights_backbone=None, num_classes=91, **SMALL)
    with torch.no_grad():
        if "mobilenet" in name:
            for module in model.backbone.body.modules():
                if isinstance(module, torch.nn.Conv2d):
                    torch.nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
        model.roi_heads.box_predictor.cls_score.bias[1] += 5.0
    return model.eval()

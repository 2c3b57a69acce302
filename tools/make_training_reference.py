"""Regenerate tests/data/training_reference.json: PySlowFast's own training steps on a tiny AVA model.

Runs PySlowFast itself (never part of this project), so it needs a separate environment, e.g.::

    python3 -m venv /tmp/pysf && /tmp/pysf/bin/pip install torch==2.14.1 torchvision==0.29.1 fvcore iopath \\
        simplejson psutil pyyaml yacs opencv-python-headless scipy pytorchvideo matplotlib pandas av
    # a checkout of facebookresearch/SlowFast in /tmp/sf (read at 287ec00); its head imports detectron2's
    # ROIAlign, which is torchvision's RoIAlign with the same arguments: give it a two-line shim module
    OMP_NUM_THREADS=1 PYTHONPATH=/tmp/sf:/tmp/shims /tmp/pysf/bin/python tools/make_training_reference.py

What it records (with PySlowFast's build_model, init_weights, construct_optimizer, get_epoch_lr / set_lr and
its BCE loss, in the order of its ``train_epoch``): the sha256 of the randomly initialised state dict for the
seed, per iteration the learning rate and loss, per parameter and buffer the float64 sum and sum of squares after
the last step, and the eval-mode probabilities of a held-out batch. tests/test_training_reference.py runs our
trainer on the same inputs (``reference_batches`` below, rebuilt there from the recorded recipe) and compares.
The test model is tiny and the learning rate small, as the issue asks: a randomly initialised network amplifies
float noise at large rates.
"""
from __future__ import annotations

import hashlib
import io
import json
import sys
from pathlib import Path

import torch

OUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "training_reference.json"

# The tiny run: PySlowFast keys (SECTION.KEY) and the recipe of the inputs.
PYSLOWFAST = {
    "MODEL.ARCH": "slowfast", "MODEL.MODEL_NAME": "SlowFast", "MODEL.NUM_CLASSES": 5, "MODEL.LOSS_FUNC": "bce",
    "MODEL.DROPOUT_RATE": 0.5, "MODEL.HEAD_ACT": "sigmoid", "RESNET.DEPTH": 50, "RESNET.WIDTH_PER_GROUP": 8,
    "RESNET.ZERO_INIT_FINAL_BN": True, "SLOWFAST.ALPHA": 4, "SLOWFAST.BETA_INV": 4,
    "SLOWFAST.FUSION_CONV_CHANNEL_RATIO": 2, "SLOWFAST.FUSION_KERNEL_SZ": 5, "DATA.NUM_FRAMES": 8,
    "DATA.SAMPLING_RATE": 2, "DATA.INPUT_CHANNEL_NUM": [3, 3], "DETECTION.ENABLE": True, "DETECTION.ALIGNED": True,
    "RESNET.SPATIAL_DILATIONS": [[1, 1], [1, 1], [1, 1], [2, 2]],
    "RESNET.SPATIAL_STRIDES": [[1, 1], [2, 2], [2, 2], [1, 1]],
    "RESNET.NUM_BLOCK_TEMP_KERNEL": [[3, 3], [4, 4], [6, 6], [3, 3]],
    "NONLOCAL.LOCATION": [[[], []], [[], []], [[1], []], [[], []]],
    "NONLOCAL.POOL": [[[1, 2, 2], [1, 2, 2]]] * 4, "NONLOCAL.GROUP": [[1, 1]] * 4,
    "SOLVER.BASE_LR": 0.002, "SOLVER.LR_POLICY": "steps_with_relative_lrs", "SOLVER.STEPS": [0, 1],
    "SOLVER.LRS": [1, 0.1], "SOLVER.MAX_EPOCH": 2, "SOLVER.WARMUP_EPOCHS": 1.0, "SOLVER.WARMUP_START_LR": 0.0005,
    "SOLVER.WEIGHT_DECAY": 1e-4, "SOLVER.MOMENTUM": 0.9, "BN.WEIGHT_DECAY": 0.0, "RNG_SEED": 3, "NUM_GPUS": 0,
}
RECIPE = {"seed": 1234, "clips": 2, "size": [64, 80], "boxes_per_clip": [2, 1], "iterations_per_epoch": 2,
          "epochs": 2}


def reference_batches(recipe: dict, num_classes: int, alpha: int, num_frames: int) -> list[dict]:
    """The batches of the recorded run, rebuilt from ``recipe``: one per iteration plus a final held-out batch,
    each ``{"inputs": [slow, fast], "boxes": (K,5) input pixels, "labels": (K, num_classes)}``."""
    generator = torch.Generator().manual_seed(recipe["seed"])
    height, width = recipe["size"]
    batches = []
    for _ in range(recipe["iterations_per_epoch"] * recipe["epochs"] + 1):
        fast = torch.randn(recipe["clips"], 3, num_frames, height, width, generator=generator)
        slow = fast[:, :, torch.linspace(0, num_frames - 1, num_frames // alpha).long()].contiguous()
        boxes = []
        for clip, count in enumerate(recipe["boxes_per_clip"]):
            for _ in range(count):
                x1, y1 = (torch.rand(2, generator=generator) * torch.tensor([width / 2, height / 2])).tolist()
                w, h = (torch.rand(2, generator=generator) * torch.tensor([width / 2, height / 2]) + 4).tolist()
                boxes.append([clip, x1, y1, min(x1 + w, width - 1), min(y1 + h, height - 1)])
        labels = (torch.rand(len(boxes), num_classes, generator=generator) < 0.4).float()
        batches.append({"inputs": [slow, fast], "boxes": torch.tensor(boxes, dtype=torch.float32),
                        "labels": labels})
    return batches


def state_sha256(state: dict) -> str:
    """sha256 over the keys and the raw bytes of every tensor of a state dict, in key order."""
    digest = hashlib.sha256()
    for key, value in state.items():
        digest.update(key.encode())
        buffer = io.BytesIO()
        buffer.write(value.detach().cpu().contiguous().numpy().tobytes())
        digest.update(buffer.getvalue())
    return digest.hexdigest()


def state_sums(state: dict) -> dict:
    return {key: [float(value.double().sum()), float(value.double().pow(2).sum())] for key, value in state.items()}


def main() -> int:
    import numpy as np
    import pytorchvideo.layers.distributed as ptv_distributed

    for name in ("cat_all_gather", "get_local_process_group", "get_local_rank", "get_local_size",
                 "get_world_size", "init_distributed_training"):  # names newer PySlowFast imports; unused on CPU
        if not hasattr(ptv_distributed, name):
            setattr(ptv_distributed, name, lambda *args, **kwargs: 1)
    try:
        import pytorchvideo.losses.soft_target_cross_entropy  # noqa: F401
    except ImportError:
        import types
        for module in ("pytorchvideo.losses", "pytorchvideo.losses.soft_target_cross_entropy"):
            sys.modules[module] = types.ModuleType(module)
        sys.modules["pytorchvideo.losses.soft_target_cross_entropy"].SoftTargetCrossEntropyLoss = object
    import slowfast.models.losses as losses
    import slowfast.models.optimizer as optim
    from slowfast.config.defaults import assert_and_infer_cfg, get_cfg
    from slowfast.models import build_model

    torch.set_num_threads(1)
    cfg = get_cfg()
    for dotted, value in PYSLOWFAST.items():
        node = cfg
        *sections, key = dotted.split(".")
        for section in sections:
            node = node[section]
        node[key] = value
    cfg = assert_and_infer_cfg(cfg)
    np.random.seed(cfg.RNG_SEED)
    torch.manual_seed(cfg.RNG_SEED)
    model = build_model(cfg)
    initial_sha = state_sha256(model.state_dict())
    optimizer = optim.construct_optimizer(model, cfg)
    loss_fun = losses.get_loss_func(cfg.MODEL.LOSS_FUNC)(reduction="mean")
    batches = reference_batches(RECIPE, cfg.MODEL.NUM_CLASSES, cfg.SLOWFAST.ALPHA, cfg.DATA.NUM_FRAMES)
    per_epoch = RECIPE["iterations_per_epoch"]
    steps = []
    model.train()
    for step, batch in enumerate(batches[:-1]):
        epoch, iteration = divmod(step, per_epoch)
        lr = optim.get_epoch_lr(epoch + float(iteration) / per_epoch, cfg)
        optim.set_lr(optimizer, lr)
        preds = model(batch["inputs"], batch["boxes"])
        loss = loss_fun(preds, batch["labels"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        steps.append({"epoch": epoch, "iteration": iteration, "lr": lr, "loss": loss.item()})
    model.eval()
    with torch.no_grad():
        probs = model(batches[-1]["inputs"], batches[-1]["boxes"])
    record = {
        "about": "PySlowFast 287ec00 training steps on a tiny model; regenerate with tools/make_training_reference.py",
        "torch": torch.__version__, "threads": 1, "pyslowfast": PYSLOWFAST, "recipe": RECIPE,
        "initial_state_sha256": initial_sha, "steps": steps, "final_state_sums": state_sums(model.state_dict()),
        "optimizer_groups": [{"size": len(g["params"]), "weight_decay": g["weight_decay"]}
                             for g in optimizer.param_groups],
        "eval_probs": probs.tolist(),
    }
    OUT.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {OUT}: losses {[round(s['loss'], 6) for s in steps]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

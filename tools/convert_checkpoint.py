"""Convert any supported AVA checkpoint to a plain PySlowFast-style ``.pyth``: ``{"model_state": state_dict}``.

Reads PySlowFast ``.pyth``, legacy-pickle ``.pkl``, Caffe2 ``.pkl`` and PyTorchVideo ``.pyth`` files (format
detected from the content), renames keys to PySlowFast's, optionally checks them against a config, writes the
output atomically and prints its sha256::

    python tools/convert_checkpoint.py C2D_8x8_R50.pkl SLOW_8x8_R50.pyth --config SLOW_8x8_R50
"""
import argparse
import os
import sys
from pathlib import Path

import torch

from ava_pipeline.config import load_config
from ava_pipeline.errors import AvaPipelineError
from ava_pipeline.models import build_action_model
from ava_pipeline.checksums import file_sha256
from ava_pipeline.weights import load_state_dict_into, read_checkpoint


def convert(source: Path, target: Path, config: str | None = None) -> str:
    """Write ``source`` as ``{"model_state": ...}`` to ``target``; returns the sha256 of ``target``."""
    checkpoint = read_checkpoint(source)
    state = checkpoint.state_dict
    if config is not None:
        model = build_action_model(load_config(config).model)
        load_state_dict_into(model, state, source=str(source))
        state = model.state_dict()
    partial = target.with_name(target.name + ".part")
    torch.save({"model_state": state}, partial)
    os.replace(partial, target)
    return file_sha256(target)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="checkpoint to convert (any supported format)")
    parser.add_argument("target", type=Path, help="output .pyth")
    parser.add_argument("--config", help="check the weights against this config (zoo/packaged name or YAML) and "
                        "store the model's full state dict")
    args = parser.parse_args(argv)
    try:
        digest = convert(args.source, args.target, args.config)
    except AvaPipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{args.target}  sha256 {digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

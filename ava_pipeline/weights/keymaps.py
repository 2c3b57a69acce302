"""Key mapping from foreign checkpoint layouts to PySlowFast's state-dict keys (which our models use).

Two layouts are translated:

* **Caffe2 blob names** (PySlowFast's ``.pkl`` Caffe2 checkpoints). A ``t_`` prefix marks the Fast pathway
  (pathway 1); everything else is Slow (pathway 0). Suffixes: ``_w`` weight, ``_b`` bias, BatchNorm ``_s``
  weight, ``_b`` bias, ``_rm`` running_mean, ``_riv`` running_var. Rules, in order::

      conv1_w                                  -> s1.pathway{p}_stem.conv.weight
      res_conv1_bn_{s,b,rm,riv}                -> s1.pathway{p}_stem.bn.*
      pool1_subsample_{w | bn_*}               -> s1_fuse.{conv_f2s.weight | bn.*}
      res{S}_{i}_branch2c_bn_subsample_{w|bn_*} -> s{S}_fuse.{conv_f2s.weight | bn.*}   (last block of stage S)
      res{S}_{i}_branch1_{w | bn_*}            -> s{S}.pathway{p}_res{i}.{branch1.weight | branch1_bn.*}
      res{S}_{i}_branch2{x}_{w | bn_*}         -> s{S}.pathway{p}_res{i}.branch2.{x.weight | x_bn.*}   x in a,b,c
      nonlocal_conv{S}_{i}_{theta,phi,g,out}_{w,b} -> s{S}.pathway{p}_nonlocal{i}.conv_{..}.{weight,bias}
      nonlocal_conv{S}_{i}_bn_*                -> s{S}.pathway{p}_nonlocal{i}.bn.*
      pred_{w,b}                               -> head.projection.{weight,bias}

  Solver state (``*_momentum``, ``lr``, ``model_iter`` ...) matches no rule and is dropped.
* **PyTorchVideo** ``slowfast_r50_detection`` / ``slow_r50_detection`` (``model.blocks.N...``,
  ``detection_head.proj.*``): block 0 is the stems, blocks 1..4 are res2..res5, ``multipathway_fusion`` of
  block N is ``s{N+1}_fuse``; ``conv``/``norm`` become ``conv``/``bn``, ``conv_a``/``norm_a`` become ``a``/``a_bn``.
"""
from __future__ import annotations

import re
from typing import Mapping, Optional

_BN_SUFFIX = {"s": "weight", "b": "bias", "rm": "running_mean", "riv": "running_var"}
_PARAM_SUFFIX = {"w": "weight", "b": "bias"}


def _param_or_bn(rest: str, conv: str, bn: str) -> Optional[str]:
    """``w`` -> ``{conv}.weight``; ``bn_{s,b,rm,riv}`` -> ``{bn}.{...}``; else None."""
    if rest == "w":
        return f"{conv}.weight"
    if rest.startswith("bn_") and rest[3:] in _BN_SUFFIX:
        return f"{bn}.{_BN_SUFFIX[rest[3:]]}"
    return None


def caffe2_to_pyslowfast(blob: str) -> Optional[str]:
    """PySlowFast state-dict key of a Caffe2 blob name, or None for blobs that are not model weights."""
    pathway = 1 if blob.startswith("t_") else 0
    name = blob[2:] if pathway else blob
    if name in ("pred_w", "pred_b"):
        return None if pathway else f"head.projection.{_PARAM_SUFFIX[name[-1]]}"
    if name == "conv1_w":
        return f"s1.pathway{pathway}_stem.conv.weight"
    match = re.fullmatch(r"res_conv1_bn_(s|b|rm|riv)", name)
    if match:
        return f"s1.pathway{pathway}_stem.bn.{_BN_SUFFIX[match[1]]}"
    match = re.fullmatch(r"(?:pool1|res(\d)_\d+_branch2c_bn)_subsample_(.+)", name)
    if match:  # Fast -> Slow lateral connections exist on the Fast side only
        stage = match[1] or "1"
        return _param_or_bn(match[2], f"s{stage}_fuse.conv_f2s", f"s{stage}_fuse.bn") if pathway else None
    match = re.fullmatch(r"res(\d)_(\d+)_branch1_(.+)", name)
    if match:
        block = f"s{match[1]}.pathway{pathway}_res{match[2]}"
        return _param_or_bn(match[3], f"{block}.branch1", f"{block}.branch1_bn")
    match = re.fullmatch(r"res(\d)_(\d+)_branch2([abc])_(.+)", name)
    if match:
        block = f"s{match[1]}.pathway{pathway}_res{match[2]}.branch2"
        return _param_or_bn(match[4], f"{block}.{match[3]}", f"{block}.{match[3]}_bn")
    match = re.fullmatch(r"nonlocal_conv(\d)_(\d+)_(theta|phi|g|out)_(w|b)", name)
    if match:
        return f"s{match[1]}.pathway{pathway}_nonlocal{match[2]}.conv_{match[3]}.{_PARAM_SUFFIX[match[4]]}"
    match = re.fullmatch(r"nonlocal_conv(\d)_(\d+)_bn_(s|b|rm|riv)", name)
    if match:
        return f"s{match[1]}.pathway{pathway}_nonlocal{match[2]}.bn.{_BN_SUFFIX[match[3]]}"
    return None


_PTV_LAYER = {"conv": "conv", "norm": "bn", "branch1_conv": "branch1", "branch1_norm": "branch1_bn",
              "branch2.conv_a": "branch2.a", "branch2.conv_b": "branch2.b", "branch2.conv_c": "branch2.c",
              "branch2.norm_a": "branch2.a_bn", "branch2.norm_b": "branch2.b_bn", "branch2.norm_c": "branch2.c_bn"}
_PTV_PATTERNS = (
    # SlowFast (multi-pathway) layout
    (r"model\.blocks\.0\.multipathway_blocks\.(\d)\.(conv|norm)\.(\w+)",
     lambda m: f"s1.pathway{m[1]}_stem.{_PTV_LAYER[m[2]]}.{m[3]}"),
    (r"model\.blocks\.(\d)\.multipathway_fusion\.(conv_fast_to_slow|norm)\.(\w+)",
     lambda m: f"s{int(m[1]) + 1}_fuse.{'conv_f2s' if m[2] == 'conv_fast_to_slow' else 'bn'}.{m[3]}"),
    (r"model\.blocks\.(\d)\.multipathway_blocks\.(\d)\.res_blocks\.(\d+)\.(branch1_conv|branch1_norm|"
     r"branch2\.conv_[abc]|branch2\.norm_[abc])\.(\w+)",
     lambda m: f"s{int(m[1]) + 1}.pathway{m[2]}_res{m[3]}.{_PTV_LAYER[m[4]]}.{m[5]}"),
    # Slow-only (single-pathway) layout
    (r"model\.blocks\.0\.(conv|norm)\.(\w+)", lambda m: f"s1.pathway0_stem.{_PTV_LAYER[m[1]]}.{m[2]}"),
    (r"model\.blocks\.(\d)\.res_blocks\.(\d+)\.(branch1_conv|branch1_norm|branch2\.conv_[abc]|"
     r"branch2\.norm_[abc])\.(\w+)",
     lambda m: f"s{int(m[1]) + 1}.pathway0_res{m[2]}.{_PTV_LAYER[m[3]]}.{m[4]}"),
    (r"detection_head\.proj\.(weight|bias)", lambda m: f"head.projection.{m[1]}"),
)


def pytorchvideo_to_pyslowfast(key: str) -> Optional[str]:
    """PySlowFast key of a PyTorchVideo detection-model key, or None if the key has no counterpart."""
    for pattern, convert in _PTV_PATTERNS:
        match = re.fullmatch(pattern, key)
        if match:
            return convert(match)
    return None


def is_pytorchvideo_layout(state_dict: Mapping[str, object]) -> bool:
    """True when the keys are PyTorchVideo's (``model.blocks.*`` / ``detection_head.*``)."""
    return any(k.startswith(("model.blocks.", "detection_head.")) for k in state_dict)


def rename_keys(state_dict: Mapping, convert) -> tuple[dict, list[str]]:
    """Apply ``convert`` to every key; returns (renamed dict, keys ``convert`` rejected)."""
    renamed, dropped = {}, []
    for key, value in state_dict.items():
        new_key = convert(key)
        if new_key is None:
            dropped.append(key)
        else:
            renamed[new_key] = value
    return renamed, dropped

"""Checkpoint formats, key mapping, safe loading, grouped reports, the zoo and cached downloads."""
import functools
import http.server
import logging
import os
import pickle
import re
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from ava_pipeline.config import ModelConfig, load_config
from ava_pipeline.errors import ConfigError, WeightsError
from ava_pipeline.models import build_action_model
from ava_pipeline.weights import (DEFAULT_MODEL, ZOO, caffe2_to_pyslowfast, cache_dir, detect_format, download,
                                  get_zoo_model, load_state_dict_into, pytorchvideo_to_pyslowfast, read_checkpoint,
                                  sha256_of, summarize_keys)

TINY = ModelConfig(width_per_group=8, num_frames=8, aligned=False)
TINY_SLOW = ModelConfig(arch="slow", width_per_group=4, num_frames=4, sampling_rate=16,
                        num_block_temp_kernel=((3,), (4,), (6,), (3,)), spatial_strides=((1,), (2,), (2,), (1,)),
                        spatial_dilations=((1,), (1,), (1,), (2,)), nonlocal_location=(((),),) * 4,
                        nonlocal_pool=(((1, 2, 2),),) * 4)


def random_weights(model_cfg: ModelConfig, seed: int = 0) -> dict:
    """A state dict of ``model_cfg`` with every float entry drawn from a seeded normal distribution."""
    generator = torch.Generator().manual_seed(seed)
    state = build_action_model(model_cfg).state_dict()
    return {k: (torch.randn(v.shape, generator=generator).abs() + 0.5 if v.is_floating_point() else v + 3)
            for k, v in state.items()}


def assert_same_weights(model, expected: dict):
    actual = model.state_dict()
    for key, value in expected.items():
        if not key.endswith("num_batches_tracked"):
            torch.testing.assert_close(actual[key], value.to(actual[key].dtype), rtol=0, atol=0, msg=key)


# ------------------------------------------------------------------------ Caffe2 -> PySlowFast names

CAFFE2_RULES = {
    "conv1_w": "s1.pathway0_stem.conv.weight",
    "t_conv1_w": "s1.pathway1_stem.conv.weight",
    "res_conv1_bn_s": "s1.pathway0_stem.bn.weight",
    "res_conv1_bn_b": "s1.pathway0_stem.bn.bias",
    "res_conv1_bn_rm": "s1.pathway0_stem.bn.running_mean",
    "t_res_conv1_bn_riv": "s1.pathway1_stem.bn.running_var",
    "t_pool1_subsample_w": "s1_fuse.conv_f2s.weight",
    "t_pool1_subsample_bn_s": "s1_fuse.bn.weight",
    "t_res2_2_branch2c_bn_subsample_w": "s2_fuse.conv_f2s.weight",
    "t_res4_22_branch2c_bn_subsample_bn_rm": "s4_fuse.bn.running_mean",
    "t_res3_3_branch2c_bn_subsample_bn_riv": "s3_fuse.bn.running_var",
    "res3_0_branch1_w": "s3.pathway0_res0.branch1.weight",
    "t_res5_0_branch1_bn_b": "s5.pathway1_res0.branch1_bn.bias",
    "res4_5_branch2b_bn_riv": "s4.pathway0_res5.branch2.b_bn.running_var",
    "res2_1_branch2a_w": "s2.pathway0_res1.branch2.a.weight",
    "t_res4_17_branch2c_bn_s": "s4.pathway1_res17.branch2.c_bn.weight",
    "nonlocal_conv4_6_theta_w": "s4.pathway0_nonlocal6.conv_theta.weight",
    "nonlocal_conv4_13_phi_b": "s4.pathway0_nonlocal13.conv_phi.bias",
    "nonlocal_conv4_20_g_w": "s4.pathway0_nonlocal20.conv_g.weight",
    "nonlocal_conv4_6_out_b": "s4.pathway0_nonlocal6.conv_out.bias",
    "nonlocal_conv4_6_bn_s": "s4.pathway0_nonlocal6.bn.weight",
    "nonlocal_conv4_20_bn_riv": "s4.pathway0_nonlocal20.bn.running_var",
    "pred_w": "head.projection.weight",
    "pred_b": "head.projection.bias",
}
CAFFE2_JUNK = ["conv1_w_momentum", "pred_b_momentum", "lr", "model_iter", "res2_0_branch2a_bn_s_momentum",
               "t_pred_w", "pool1_subsample_w", "res2_0_branch2a_bn_x"]


@pytest.mark.parametrize("blob,key", CAFFE2_RULES.items())
def test_caffe2_name_rules(blob, key):
    assert caffe2_to_pyslowfast(blob) == key


@pytest.mark.parametrize("blob", CAFFE2_JUNK)
def test_caffe2_solver_blobs_are_not_weights(blob):
    assert caffe2_to_pyslowfast(blob) is None


def caffe2_name(key: str) -> str:
    """Caffe2 blob name of a PySlowFast key of a SlowFast R50 (test helper, inverse of the documented rules)."""
    bn = {"weight": "s", "bias": "b", "running_mean": "rm", "running_var": "riv"}
    if key.startswith("head.projection."):
        return "pred_w" if key.endswith("weight") else "pred_b"
    match = re.fullmatch(r"s1\.pathway(\d)_stem\.(conv|bn)\.(\w+)", key)
    if match:
        prefix = "t_" if match[1] == "1" else ""
        return f"{prefix}conv1_w" if match[2] == "conv" else f"{prefix}res_conv1_bn_{bn[match[3]]}"
    match = re.fullmatch(r"s(\d)_fuse\.(conv_f2s|bn)\.(\w+)", key)
    if match:
        base = "t_pool1" if match[1] == "1" else f"t_res{match[1]}_{(3, 4, 6)[int(match[1]) - 2] - 1}_branch2c_bn"
        return f"{base}_subsample_w" if match[2] == "conv_f2s" else f"{base}_subsample_bn_{bn[match[3]]}"
    match = re.fullmatch(r"s(\d)\.pathway(\d)_res(\d+)\.(branch1|branch1_bn|branch2\.[abc]|branch2\.[abc]_bn)\.(\w+)",
                         key)
    prefix = "t_" if match[2] == "1" else ""
    layer = match[4].replace("branch2.", "branch2").replace("_bn", "")
    suffix = "w" if not match[4].endswith("_bn") else f"bn_{bn[match[5]]}"
    return f"{prefix}res{match[1]}_{match[3]}_{layer}_{suffix}"


# ------------------------------------------------------------------------------- format round trips

@pytest.fixture(scope="module")
def tiny_weights():
    return random_weights(TINY)


def test_pyslowfast_pyth_round_trip(tmp_path, tiny_weights):
    path = tmp_path / "checkpoint_epoch_00001.pyth"
    torch.save({"epoch": 1, "model_state": tiny_weights, "cfg": "MODEL:\n  ARCH: slowfast\n"}, path)
    checkpoint = read_checkpoint(path)
    assert (checkpoint.file_format, checkpoint.layout) == ("torch-zip", "pyslowfast")
    model = build_action_model(TINY)
    report = load_state_dict_into(model, checkpoint.state_dict, source=str(path))
    assert not report.missing and not report.unexpected and not report.mismatched
    assert_same_weights(model, tiny_weights)


def test_legacy_torch_pickle_named_pkl_round_trip(tmp_path, tiny_weights):
    path = tmp_path / "SLOWFAST_32x2_R101_50_50.pkl"
    torch.save({"model_state": tiny_weights, "epoch": 20}, path, _use_new_zipfile_serialization=False)
    assert detect_format(path) == "torch-legacy"
    model = build_action_model(TINY)
    load_state_dict_into(model, read_checkpoint(path).state_dict)
    assert_same_weights(model, tiny_weights)


@pytest.mark.parametrize("wrap", [lambda sd: sd, lambda sd: {"state_dict": sd}, lambda sd: {"model": sd}])
def test_bare_and_wrapped_state_dicts(tmp_path, tiny_weights, wrap):
    path = tmp_path / "weights.pt"
    torch.save(wrap(tiny_weights), path)
    assert read_checkpoint(path).state_dict.keys() == tiny_weights.keys()


def test_caffe2_pickle_round_trip(tmp_path, tiny_weights):
    blobs = {caffe2_name(k): v.numpy().astype(np.float32) for k, v in tiny_weights.items()
             if not k.endswith("num_batches_tracked")}
    assert len(blobs) == len({caffe2_to_pyslowfast(name) for name in blobs})
    blobs["res2_0_branch1_w"] = blobs["res2_0_branch1_w"].reshape(blobs["res2_0_branch1_w"].shape[:2])  # rank 2
    blobs.update({"conv1_w_momentum": np.zeros(3, np.float32), "lr": np.array([0.1], np.float32),
                  "model_iter": np.array([1000], np.int64)})
    path = tmp_path / "C2D_8x8_R50.pkl"
    with open(path, "wb") as f:
        pickle.dump({"blobs": blobs, "model_name": "slowfast"}, f, protocol=2)
    checkpoint = read_checkpoint(path)
    assert (checkpoint.file_format, checkpoint.layout) == ("caffe2", "caffe2")
    assert set(checkpoint.dropped_keys) == {"conv1_w_momentum", "lr", "model_iter"}
    model = build_action_model(TINY)
    report = load_state_dict_into(model, checkpoint.state_dict, source=str(path))
    assert not report.missing and not report.mismatched
    assert_same_weights(model, tiny_weights)


def test_pytorchvideo_layout_round_trip(tmp_path):
    for model_cfg, name in ((TINY, "SLOWFAST_8x8_R50_DETECTION.pyth"), (TINY_SLOW, "SLOW_4x16_R50_DETECTION.pyth")):
        weights = random_weights(model_cfg, seed=1)
        ptv = {}
        for key, value in weights.items():
            ptv_key = pytorchvideo_key(key, slowfast=model_cfg.arch == "slowfast")
            assert pytorchvideo_to_pyslowfast(ptv_key) == key
            ptv[ptv_key] = value
        path = tmp_path / name
        torch.save({"model_state": ptv}, path)
        checkpoint = read_checkpoint(path)
        assert checkpoint.layout == "pytorchvideo"
        model = build_action_model(model_cfg)
        load_state_dict_into(model, checkpoint.state_dict, source=str(path))
        assert_same_weights(model, weights)


def pytorchvideo_key(key: str, slowfast: bool) -> str:
    """PyTorchVideo's name for a PySlowFast key (test helper written from PyTorchVideo's module tree)."""
    if key.startswith("head.projection."):
        return "detection_head.proj." + key.rsplit(".", 1)[1]
    match = re.fullmatch(r"s1\.pathway(\d)_stem\.(conv|bn)\.(\w+)", key)
    if match:
        layer = "conv" if match[2] == "conv" else "norm"
        return (f"model.blocks.0.multipathway_blocks.{match[1]}.{layer}.{match[3]}" if slowfast
                else f"model.blocks.0.{layer}.{match[3]}")
    match = re.fullmatch(r"s(\d)_fuse\.(conv_f2s|bn)\.(\w+)", key)
    if match:
        layer = "conv_fast_to_slow" if match[2] == "conv_f2s" else "norm"
        return f"model.blocks.{int(match[1]) - 1}.multipathway_fusion.{layer}.{match[3]}"
    match = re.fullmatch(r"s(\d)\.pathway(\d)_res(\d+)\.(\S+)\.(\w+)", key)
    layer = {"branch1": "branch1_conv", "branch1_bn": "branch1_norm"}.get(match[4])
    if layer is None:
        letter = match[4][len("branch2.")]
        layer = f"branch2.norm_{letter}" if match[4].endswith("_bn") else f"branch2.conv_{letter}"
    stage = f"model.blocks.{int(match[1]) - 1}"
    pathway = f".multipathway_blocks.{match[2]}" if slowfast else ""
    return f"{stage}{pathway}.res_blocks.{match[3]}.{layer}.{match[5]}"


# ------------------------------------------------------------------------------------ safety and errors

class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_caffe2_pickle_that_runs_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    with open(path, "wb") as f:
        pickle.dump({"blobs": {"conv1_w": _Payload(marker)}}, f, protocol=2)
    with pytest.raises(WeightsError, match=re.escape(str(path))) as info:
        read_checkpoint(path)
    assert "refused" in str(info.value) and "system" in str(info.value)
    assert not marker.exists()


def test_torch_file_that_runs_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pyth"
    torch.save({"model_state": {"x": torch.zeros(1)}, "hook": _Payload(marker)}, path)
    with pytest.raises(WeightsError, match=r"refused to load: .*\(unsupported global (posix|os)\.system\)") as info:
        read_checkpoint(path)
    assert not marker.exists()
    assert "weights_only" not in str(info.value) and "\n" not in str(info.value)  # never advise the unsafe load


def test_truncated_caffe2_pickle_is_called_damaged_not_dangerous(tmp_path):
    path = tmp_path / "short.pkl"
    path.write_bytes(pickle.dumps({"blobs": {"conv1_w": np.ones((4, 3), np.float32)}}, protocol=2)[:-20])
    with pytest.raises(WeightsError, match="looks truncated or corrupt") as info:
        read_checkpoint(path)
    assert "run code" not in str(info.value)


def test_truncated_and_garbage_files_name_the_file(tmp_path, tiny_weights):
    for legacy in (False, True):
        path = tmp_path / f"truncated_{legacy}.pyth"
        torch.save({"model_state": tiny_weights}, path, _use_new_zipfile_serialization=not legacy)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        with pytest.raises(WeightsError, match=re.escape(str(path)) + ".*(truncated|corrupt)"):
            read_checkpoint(path)
    caffe2 = tmp_path / "truncated_caffe2.pkl"
    caffe2.write_bytes(pickle.dumps({"blobs": {"conv1_w": np.ones((4, 3), np.float32)}}, protocol=2)[:40])
    with pytest.raises(WeightsError, match=re.escape(str(caffe2))):
        read_checkpoint(caffe2)
    garbage = tmp_path / "garbage.pkl"
    garbage.write_bytes(b"GIF89a not a checkpoint")
    with pytest.raises(WeightsError, match=re.escape(str(garbage)) + ".*not a checkpoint"):
        read_checkpoint(garbage)
    with pytest.raises(WeightsError, match="cannot read"):
        read_checkpoint(tmp_path / "missing.pyth")


@pytest.mark.filterwarnings("ignore:Validating sparse tensor invariants")
@pytest.mark.parametrize("spoil, message", [
    (lambda sd: {**sd, 7: torch.zeros(1)}, "key\\(s\\) are not names \\(e.g. 7\\)"),
    (lambda sd: {**sd, "head.projection.bias": sd["head.projection.bias"].to_sparse()}, "'head.projection.bias' is a "
     "torch.sparse_coo"),
    (lambda sd: {**sd, "head.projection.bias": sd["head.projection.bias"] * 1j}, "not dense real weights"),
    (lambda sd: {**sd, "head.projection.bias": torch.full_like(sd["head.projection.bias"], float("nan"))},
     "'head.projection.bias' holds NaN or infinite values"),
])
def test_unusable_state_dict_entries_name_the_file_and_entry(tmp_path, tiny_weights, spoil, message):
    path = tmp_path / "spoiled.pyth"
    torch.save({"model_state": spoil(dict(tiny_weights))}, path)
    with pytest.raises(WeightsError, match=re.escape(str(path)) + ": .*" + message):
        read_checkpoint(path)


def test_caffe2_blob_names_must_be_names(tmp_path):
    path = tmp_path / "odd.pkl"
    path.write_bytes(pickle.dumps({"blobs": {3: np.ones(2, np.float32)}}, protocol=2))
    with pytest.raises(WeightsError, match="are not names"):
        read_checkpoint(path)


def test_pickle_without_blobs_is_not_caffe2(tmp_path):
    path = tmp_path / "other.pkl"
    path.write_bytes(pickle.dumps({"weights": [1, 2]}, protocol=2))
    with pytest.raises(WeightsError, match="'blobs'"):
        read_checkpoint(path)


def test_missing_keys_are_an_error_naming_them(tmp_path, tiny_weights, caplog):
    partial = {k: v for k, v in tiny_weights.items() if not k.startswith("s4.")}
    model = build_action_model(TINY)
    with pytest.raises(WeightsError) as info:
        load_state_dict_into(model, partial, source="ckpt.pyth")
    message = str(info.value)
    assert message.startswith("ckpt.pyth:") and "--config" in message
    assert "s4.pathway{0..1}_res{0..5}.branch2.a_bn.*" in message and "s4.pathway{0..1}_res0.branch1.weight" in message
    with caplog.at_level(logging.WARNING):
        report = load_state_dict_into(model, partial, strict=False, source="ckpt.pyth")
    assert report.missing and "strict=False" in caplog.text
    torch.testing.assert_close(model.state_dict()["s1.pathway0_stem.conv.weight"],
                               tiny_weights["s1.pathway0_stem.conv.weight"])


def test_shape_mismatch_names_both_shapes(tiny_weights):
    wider = random_weights(replace(TINY, width_per_group=16))
    with pytest.raises(WeightsError, match=r"s1.pathway0_stem.conv.weight checkpoint \[16, 3, 1, 7, 7\] vs model "
                                           r"\[8, 3, 1, 7, 7\]"):
        load_state_dict_into(build_action_model(TINY), wider, source="wide.pyth")


def test_unexpected_keys_are_ignored_and_reported(tiny_weights, caplog):
    extra = dict(tiny_weights, **{"s4.pathway0_nonlocal6.conv_g.weight": torch.zeros(2), "epoch_marker": torch.ones(1)})
    no_counters = {k: v for k, v in extra.items() if not k.endswith("num_batches_tracked")}
    model = build_action_model(TINY)
    with caplog.at_level(logging.INFO):
        report = load_state_dict_into(model, no_counters, source="x.pyth")
    assert set(report.unexpected) == {"s4.pathway0_nonlocal6.conv_g.weight", "epoch_marker"}
    assert not report.missing and "epoch_marker" in caplog.text
    assert_same_weights(model, tiny_weights)


def test_summarize_keys_groups_numbers():
    keys = [f"s4.pathway0_res{i}.branch2.{c}_bn.{e}" for i in range(6, 23) for c in "ab"
            for e in ("weight", "bias", "running_mean", "running_var")] + ["lr", "head.projection.weight"]
    assert summarize_keys(keys) == ["s4.pathway0_res{6..22}.branch2.a_bn.*", "s4.pathway0_res{6..22}.branch2.b_bn.*",
                                    "lr", "head.projection.weight"]


# ------------------------------------------------------------------------------------------------- zoo

def test_zoo_records_are_complete_and_configs_load():
    assert DEFAULT_MODEL in ZOO and len(ZOO) == 6
    for record in ZOO.values():
        assert record.url.startswith("https://dl.fbaipublicfiles.com/") and record.url.endswith(record.filename)
        assert record.file_format in ("torch-legacy", "torch-zip", "caffe2") and record.sha256 is None
        assert load_config(record.config).name == record.config
    assert ZOO["SLOW_8x8_R50"].filename == "C2D_8x8_R50.pkl" and ZOO["SLOW_8x8_R50"].file_format == "caffe2"
    assert load_config(ZOO["SLOWFAST_8x8_R50_DETECTION"].config).model.aligned is False


def test_unknown_zoo_name_lists_models_and_suggests():
    with pytest.raises(ConfigError, match=r"did you mean 'SLOWFAST_32x2_R101_50_50'\?.*SLOW_4x16_R50_DETECTION"):
        get_zoo_model("SLOWFAST_32x2_R101")


# -------------------------------------------------------------------------------------------- download

def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv("AVA_PIPELINE_HOME", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "ava-pipeline"
    monkeypatch.setenv("AVA_PIPELINE_HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home"


def test_download_from_file_url_verifies_sha256(monkeypatch, tmp_path):
    monkeypatch.setenv("AVA_PIPELINE_HOME", str(tmp_path / "cache"))
    source = tmp_path / "served" / "model.pyth"
    source.parent.mkdir()
    source.write_bytes(b"weights" * 1000)
    digest = sha256_of(source)
    path = download(source.as_uri(), digest)
    assert path == tmp_path / "cache" / "model.pyth" and path.read_bytes() == source.read_bytes()
    assert download(source.as_uri(), digest) == path  # cache hit, verified again
    path.write_bytes(b"tampered")
    with pytest.raises(WeightsError, match="cached file has sha256"):
        download(source.as_uri(), digest)
    path.unlink()
    with pytest.raises(WeightsError, match="expected " + "0" * 64):
        download(source.as_uri(), "0" * 64)
    assert not path.exists() and not path.with_name("model.pyth.part").exists()


def test_failed_download_says_to_pass_weights(tmp_path):
    with pytest.raises(WeightsError, match=r"--weights FILE") as info:
        download((tmp_path / "absent.pkl").as_uri(), directory=tmp_path / "cache")
    assert "absent.pkl" in str(info.value)
    assert list((tmp_path / "cache").iterdir()) == []


def test_download_over_http_leaves_no_part_file(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    (served / "ckpt.pyth").write_bytes(os.urandom(3 * (1 << 20) + 7))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/ckpt.pyth"
        path = download(url, sha256_of(served / "ckpt.pyth"), directory=tmp_path / "cache")
        assert path.read_bytes() == (served / "ckpt.pyth").read_bytes()
        assert sorted(p.name for p in path.parent.iterdir()) == ["ckpt.pyth"]
        with pytest.raises(WeightsError, match="--weights FILE"):
            download(url.replace("ckpt", "absent"), directory=tmp_path / "cache2")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


class _EarlyCloseHandler(http.server.BaseHTTPRequestHandler):
    """Announces ``Content-Length: 5000000`` but sends 100 kB of a zip header, then closes the connection."""

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "5000000")
        self.end_headers()
        self.wfile.write(b"PK\x03\x04" + b"x" * 100_000)
        self.close_connection = True

    def log_message(self, *args):
        pass


def test_download_cut_short_by_the_server_is_not_cached(tmp_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _EarlyCloseHandler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/ckpt.pkl"
        for _ in range(2):  # nothing is cached, so the second call downloads (and fails) again
            with pytest.raises(WeightsError, match=re.escape(url) + ".*100004 of 5000000 bytes.*nothing was cached"):
                download(url, directory=tmp_path / "cache")
            assert list((tmp_path / "cache").iterdir()) == []
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_unreadable_cached_download_says_to_delete_it(monkeypatch, tmp_path, tiny_weights):
    monkeypatch.setenv("AVA_PIPELINE_HOME", str(tmp_path / "cache"))
    cached = tmp_path / "cache" / "model.pyth"
    cached.parent.mkdir()
    torch.save({"model_state": tiny_weights}, cached)
    cached.write_bytes(cached.read_bytes()[: cached.stat().st_size // 2])
    with pytest.raises(WeightsError, match="truncated or corrupt.*delete " + re.escape(str(cached))):
        read_checkpoint(cached)
    elsewhere = tmp_path / "model.pyth"
    elsewhere.write_bytes(cached.read_bytes())
    with pytest.raises(WeightsError, match="truncated or corrupt.*download it again") as info:
        read_checkpoint(elsewhere)
    assert "delete" not in str(info.value)

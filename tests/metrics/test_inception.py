"""Offline InceptionV3 (FID/KID) extractor: conversion exactness, cache integrity, no network."""
from __future__ import annotations

import hashlib
import json
import socket
import urllib.request

import pytest
import torch
import torch.hub
import torch_fidelity.feature_extractor_inceptionv3 as tf_inception
from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

from medgen.metrics import inception as inc

torch.set_num_threads(1)


def _no_network(*args, **kwargs):
    raise AssertionError("network access attempted")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """Fresh cache dir for this module, with every download/connection path made to raise."""
    mp = pytest.MonkeyPatch()
    root = tmp_path_factory.mktemp("medgen_cache")
    mp.setenv("MEDGEN_CACHE", str(root))
    mp.setattr(torch.hub, "load_state_dict_from_url", _no_network)
    mp.setattr(torch.hub, "download_url_to_file", _no_network)
    mp.setattr(tf_inception, "load_state_dict_from_url", _no_network)   # torch-fidelity's own import
    mp.setattr(urllib.request, "urlopen", _no_network)
    mp.setattr(socket.socket, "connect", _no_network)
    yield root
    mp.undo()


@pytest.fixture(scope="module")
def torchscript():
    return inc.load_torchscript()


def _rand_u8(n: int, size: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)


def test_weights_converted_into_cache_offline(cache):
    path = inc.inception_weights_path()
    assert path.parent == cache and path.is_file()
    meta = json.loads((cache / (inc.WEIGHTS_NAME + ".json")).read_text())
    assert meta["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert meta["source_sha256"] == hashlib.sha256(inc.source_torchscript_path().read_bytes()).hexdigest()
    assert not list(cache.glob("*.tmp"))                       # atomic write left no temp files


def test_features_match_torchscript_at_299(cache, torchscript):
    """At 299 px torch-fidelity's resize is the identity; the TorchScript gets (u8 - 128) / 128."""
    u8 = _rand_u8(2, 299, seed=1)
    with torch.no_grad():
        ours = inc.inception_extractor()(u8)[0]
        ref = torchscript((u8.float() - 128.0) / 128.0)
    assert ours.shape == ref.shape == (2, 2048)
    assert ref.abs().max() > 0.1                               # non-trivial features
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=0)


def test_features_match_torchscript_at_64(cache, torchscript):
    """At 64 px both networks see the same TF1-compatible bilinear upsampling to 299."""
    u8 = _rand_u8(2, 64, seed=2)
    with torch.no_grad():
        ours = inc.inception_extractor()(u8)[0]
        x = interpolate_bilinear_2d_like_tensorflow1x(u8.float(), size=(299, 299), align_corners=False)
        ref = torchscript((x - 128.0) / 128.0)
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=0)
    # different images give clearly different features (the comparison is not vacuous)
    assert (ref[0] - ref[1]).abs().max() > 1e-2


def test_to_uint8_mapping():
    x = torch.tensor([-1.5, -1.0, 0.0, 1.0, 2.0, -1.0 + 2 * 64 / 255]).view(1, 1, 1, 6)
    u8 = inc.to_uint8(x)
    assert u8.dtype == torch.uint8 and u8.shape == (1, 3, 1, 6)
    assert u8[0, 0, 0].tolist() == [0, 0, 128, 255, 255, 64]   # round((x + 1) * 127.5), clamped
    assert torch.equal(u8[:, 0], u8[:, 2])                      # grayscale repeated
    with pytest.raises(ValueError, match="expected"):
        inc.to_uint8(torch.zeros(1, 2, 4, 4))


def test_inception_features_grayscale_and_batching(cache):
    g = torch.Generator().manual_seed(3)
    gray = torch.rand(3, 1, 32, 40, generator=g) * 2 - 1
    feats = inc.inception_features(gray, batch_size=2)
    assert feats.shape == (3, 2048) and feats.dtype == torch.float32
    rgb = inc.inception_features(gray.repeat(1, 3, 1, 1), batch_size=3)
    torch.testing.assert_close(feats, rgb, atol=1e-5, rtol=0)   # batching and channel repeat agree
    with torch.no_grad():
        direct = inc.inception_extractor()(inc.to_uint8(gray))[0]
    torch.testing.assert_close(feats, direct, atol=1e-5, rtol=0)


@pytest.mark.parametrize("damage", ["corrupt", "truncate", "delete", "delete_sidecar"])
def test_damaged_cache_is_regenerated(cache, damage):
    path = inc.inception_weights_path()
    good = hashlib.sha256(path.read_bytes()).hexdigest()
    sidecar = cache / (inc.WEIGHTS_NAME + ".json")
    if damage == "corrupt":
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    elif damage == "truncate":
        path.write_bytes(path.read_bytes()[:1000])
    elif damage == "delete":
        path.unlink()
    else:
        sidecar.unlink()
    if damage in ("corrupt", "truncate"):
        assert hashlib.sha256(path.read_bytes()).hexdigest() != good                        # the damage is real
    again = inc.inception_weights_path()
    assert again == path and hashlib.sha256(again.read_bytes()).hexdigest() == good        # conversion is deterministic
    assert json.loads(sidecar.read_text())["sha256"] == good


def test_conversion_checks_names_and_shapes(cache, torchscript):
    ts_state = torchscript.state_dict()
    target = inc._target_template()
    state = inc.convert_state_dict(ts_state, target)
    assert set(state) == set(target)
    assert torch.isnan(state["fc.weight"]).all()                # no classifier in the source
    assert torch.equal(state["Mixed_7c.branch_pool.bn.bias"], ts_state["net.layers.mixed_10.tower_2_conv.beta"])
    bad = dict(ts_state)
    bad["net.layers.mixed_9.tower_mixed_conv.weight"] = bad["net.layers.mixed_9.tower_mixed_conv.weight"].transpose(2, 3)
    with pytest.raises(inc.InceptionWeightsError, match="shape mismatch"):
        inc.convert_state_dict(bad, target)
    extra = dict(ts_state, **{"net.layers.extra.weight": torch.zeros(1)})
    with pytest.raises(inc.InceptionWeightsError, match="unused"):
        inc.convert_state_dict(extra, target)

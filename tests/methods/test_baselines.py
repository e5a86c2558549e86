"""Trivial baselines: identity and Gaussian filter (vs scipy), no parameters, option checks."""
import dataclasses

import pytest
import torch
from scipy.ndimage import gaussian_filter

from medgen.config import RunConfig, UNetConfig
from medgen.data.batch import Batch
from medgen.methods.baselines import GaussianFilter, Identity, match_channels
from medgen.metrics.image import psnr
from medgen.registry import METHODS, lookup

CFG = RunConfig()


def _source(*shape, seed=0):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_registered_and_constructed_from_config():
    assert lookup(METHODS, "identity") is Identity
    assert lookup(METHODS, "gaussian_filter") is GaussianFilter
    assert isinstance(METHODS["identity"](CFG), Identity)
    assert METHODS["gaussian_filter"](CFG).config.method == "gaussian_filter"  # not the cfg's "cddpm"


def test_identity_returns_the_source_without_aliasing():
    x = _source(2, 1, 8, 8)
    out = Identity(CFG).translate(x)
    assert torch.equal(out, x) and out.data_ptr() != x.data_ptr()


def test_channel_matching():
    three = dataclasses.replace(CFG, model=UNetConfig(out_channels=3))
    x = _source(2, 1, 8, 8)
    out = Identity(three).translate(x)
    assert out.shape == (2, 3, 8, 8) and torch.equal(out[:, 2], x[:, 0])
    assert torch.allclose(match_channels(_source(1, 3, 4, 4), 1), _source(1, 3, 4, 4).mean(1, keepdim=True))
    with pytest.raises(ValueError, match="cannot match 2 source channels to 3"):
        match_channels(_source(1, 2, 4, 4), 3)


@pytest.mark.parametrize("shape", [(2, 1, 12, 12), (1, 1, 6, 8, 8)])
def test_gaussian_filter_matches_scipy_per_image_2d_and_3d(shape):
    x = _source(*shape, seed=1)
    out = GaussianFilter(CFG).translate(x, sigma=1.5)
    assert out.shape == x.shape and out.dtype == x.dtype
    for i in range(shape[0]):
        ref = gaussian_filter(x[i, 0].double().numpy(), sigma=1.5)
        assert torch.allclose(out[i, 0].double(), torch.from_numpy(ref), atol=1e-6)
    assert torch.equal(GaussianFilter(CFG).translate(x, sigma=0.0), x)


def test_gaussian_filter_default_sigma_improves_the_toy_source():
    from medgen.config import DataConfig
    from medgen.data.batch import collate
    from medgen.data.toy import ToyShapes

    batch = collate([s for s in ToyShapes(DataConfig(image_size=32, n_train=16), "train")])
    smooth = GaussianFilter(CFG).translate(batch.source)
    raw = psnr(batch.source, batch.target, data_range=2.0)
    assert (psnr(smooth, batch.target, data_range=2.0) > raw + 1.0).float().mean() > 0.8


def test_no_parameters_so_fit_is_a_no_op():
    for cls in (Identity, GaussianFilter):
        m = cls(CFG)
        assert m.param_groups() == {} and list(m.parameters()) == []
        with pytest.raises(RuntimeError, match="nothing to train"):
            m.training_step(Batch(_source(1, 1, 4, 4)), "model")


def test_options_sampling_ones_ignored_unknown_ones_rejected():
    x = _source(1, 1, 8, 8)
    assert torch.equal(Identity(CFG).translate(x, sampler="ddim", steps=3), x)
    with pytest.raises(ValueError, match="unknown option 'sigmaa' for method 'gaussian_filter'") as err:
        GaussianFilter(CFG).translate(x, sigmaa=1.0)
    assert "sigma" in str(err.value).split("valid:")[1] and "\n" not in str(err.value)
    with pytest.raises(ValueError, match="sigma must be >= 0"):
        GaussianFilter(CFG).translate(x, sigma=-1.0)
    with pytest.raises(ValueError, match="expected source"):
        Identity(CFG).translate(x[0])


def test_callback_called_once_with_the_result():
    calls = []
    out = GaussianFilter(CFG).translate(_source(1, 1, 8, 8), callback=calls.append)
    assert len(calls) == 1 and calls[0]["n"] == 1 and torch.equal(calls[0]["x0"], out)

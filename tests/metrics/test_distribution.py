"""FID / KID: math on features against an independent scipy Frechet distance, monotonicity,
KID unbiasedness, small-sample warning, input errors, and one tiny image-level smoke test."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from scipy import linalg
from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_features_to_statistics, fid_statistics_to_metric

from medgen.metrics import distribution as dist
from medgen.metrics.inception import inception_weights_path

torch.set_num_threads(1)
D = 16


def _gauss(n: int, seed: int, shift: float = 0.0, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, D, generator=g, dtype=torch.float64) * scale + shift


def _frechet_scipy(a: np.ndarray, b: np.ndarray) -> float:
    """Independent Frechet distance (textbook formula with scipy.linalg.sqrtm)."""
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * linalg.sqrtm(s1 @ s2).real))


@pytest.mark.parametrize("n, d", [(200, D), (100, 512)])   # full-rank and singular (N < D) covariances
def test_fid_identical_is_zero(n, d):
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert abs(dist.fid_from_features(x, x)) < 1e-6
    assert abs(dist.fid_from_features(x.float(), x.float())) < 1e-6


def test_fid_matches_scipy_sqrtm_and_torch_fidelity():
    a, b = _gauss(300, 1), _gauss(250, 2, shift=0.3, scale=1.5)
    want = _frechet_scipy(a.numpy(), b.numpy())
    assert dist.fid_from_features(a, b) == pytest.approx(want, rel=1e-6)
    st = [fid_features_to_statistics(f) for f in (a, b)]
    tf_value = fid_statistics_to_metric(st[0], st[1], verbose=False)[KEY_METRIC_FID]
    assert dist.fid_from_features(a, b) == pytest.approx(tf_value, rel=1e-6)


def test_fid_singular_route_matches_full_rank_route():
    """N <= D uses the sample-space nuclear norm; it must equal scipy's D-space sqrtm value."""
    g = torch.Generator().manual_seed(7)
    a = torch.randn(40, 64, generator=g, dtype=torch.float64)
    b = torch.randn(30, 64, generator=g, dtype=torch.float64) * 1.3 + 0.2
    assert dist.fid_from_features(a, b) == pytest.approx(_frechet_scipy(a.numpy(), b.numpy()), rel=1e-6)


def test_fid_grows_with_shift_and_noise():
    base, other = _gauss(400, 3), _gauss(400, 4)
    shifts = [dist.fid_from_features(base, other + s) for s in (0.0, 0.25, 0.5, 1.0)]
    noise = [dist.fid_from_features(base, other * s) for s in (1.0, 1.5, 2.0, 3.0)]
    assert all(np.diff(shifts) > 0) and all(np.diff(noise) > 0)
    # analytic check: a pure mean shift s in every dim adds ~ D * s^2
    assert shifts[3] - shifts[0] == pytest.approx(D * 1.0, rel=0.1)


def test_kid_unbiased_near_zero_and_positive_when_shifted():
    a, b = _gauss(300, 5), _gauss(300, 6)
    mean, std = dist.kid_from_features(a, b, subsets=20, subset_size=100, seed=0)
    assert abs(mean) < 3 * std
    mean_s, std_s = dist.kid_from_features(a, b + 1.0, subsets=20, subset_size=100, seed=0)
    assert mean_s > 10 * std_s and mean_s > 10 * abs(mean)
    assert dist.kid_from_features(a, b, subsets=5, subset_size=50, seed=3) == \
        dist.kid_from_features(a, b, subsets=5, subset_size=50, seed=3)


@pytest.mark.parametrize("f1, f2, match", [
    (torch.full((5, D), float("nan")), torch.zeros(5, D), "NaN"),
    (torch.zeros(5, D), torch.zeros(5, D + 1), "dims differ"),
    (torch.zeros(1, D), torch.zeros(5, D), ">= 2 samples"),
    (torch.zeros(5), torch.zeros(5, D), r"\[N, D\]"),
])
def test_bad_features_raise(f1, f2, match):
    for fn in (dist.fid_from_features, dist.kid_from_features):
        with pytest.raises(ValueError, match=match) as err:
            fn(f1, f2)
        assert "\n" not in str(err.value)


def test_kid_bad_subset_size():
    with pytest.raises(dist.DistributionInputError, match="subset_size"):
        dist.kid_from_features(_gauss(10, 0), _gauss(10, 1), subset_size=20)


def test_image_level_fid_kid_warn_and_provenance():
    g = torch.Generator().manual_seed(0)
    real = torch.rand(4, 1, 32, 32, generator=g) * 2 - 1
    fake = torch.rand(4, 1, 32, 32, generator=g) * 2 - 1
    with pytest.warns(UserWarning, match="2048"):
        r = dist.fid(real, fake, batch_size=4)
    assert r.extractor == dist.EXTRACTOR and (r.n_real, r.n_fake) == (4, 4)
    assert r.warning is not None and "2048" in r.warning
    assert np.isfinite(r.value) and r.value > 0
    weights = inception_weights_path()
    assert r.weights_sha256 == hashlib.sha256(weights.read_bytes()).hexdigest()
    with pytest.warns(UserWarning, match="2048"):
        r_same = dist.fid(real, real, batch_size=4)
    assert abs(r_same.value) < 1e-3 * r.value
    with pytest.warns(UserWarning, match="2048"):
        k = dist.kid(real, fake, batch_size=4, subsets=3, subset_size=4)
    assert k.std is not None and np.isfinite(k.value) and k.warning is not None
    with pytest.raises(ValueError, match="NaN"):
        dist.fid(real * float("nan"), fake)


def test_fid_in_efficientnet_lite0_space():
    """FID(x, x) ~ 0 and monotone in added Gaussian noise in the EfficientNet-Lite0 space; the
    result's provenance names that space and the wheel file's sha256."""
    from medgen.metrics.features import efficientnet_lite0_source_path
    g = torch.Generator().manual_seed(1)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 32), torch.linspace(-1, 1, 32), indexing="ij")
    radius = 0.3 + 0.4 * torch.rand(6, 1, 1, generator=g)
    x = (((xx**2 + yy**2) < radius**2).float() * 1.6 - 0.8)[:, None]          # 6 discs [6, 1, 32, 32]
    values = []
    for sigma in (0.0, 0.1, 0.3):
        noisy = (x + sigma * torch.randn(x.shape, generator=g)).clamp(-1, 1)
        with pytest.warns(UserWarning, match="2048"):
            values.append(dist.fid(x, noisy, batch_size=6, space="efficientnet_lite0"))
    assert abs(values[0].value) < 1e-6 * max(1.0, values[1].value)
    assert 0 < values[1].value < values[2].value
    r = values[0]
    assert r.extractor.startswith("efficientnet_lite0") and r.extractor != dist.EXTRACTOR
    sha = hashlib.sha256(efficientnet_lite0_source_path().read_bytes()).hexdigest()
    assert r.weights_sha256 == sha and (r.n_real, r.n_fake) == (6, 6)
    with pytest.raises(ValueError, match="unknown feature space"):
        dist.kid(x, x, space="nope", subsets=2, subset_size=3)

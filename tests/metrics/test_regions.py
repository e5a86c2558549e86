"""SNR / CNR (enhancement paper Eq. 12-13) and adjacent-slice correlation against independent NumPy / SciPy."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import pearsonr

from medgen.metrics.regions import adjacent_slice_correlation, cnr, snr


def _case(seed: int = 0):
    g = np.random.default_rng(seed)
    img = g.uniform(0, 1, (3, 1, 20, 24))
    sig = np.zeros_like(img, dtype=bool)
    sig[:, :, 5:12, 6:14] = True
    bg = ~sig
    return img, sig, bg


def test_snr_cnr_match_the_equations() -> None:
    img, sig, bg = _case()
    got_snr = snr(torch.tensor(img), signal=torch.tensor(sig), background=torch.tensor(bg), data_range=1.0)
    got_cnr = cnr(torch.tensor(img), signal=torch.tensor(sig), background=torch.tensor(bg), data_range=1.0)
    for i in range(3):
        s, b = img[i][sig[i]], img[i][bg[i]]
        assert got_snr[i].item() == pytest.approx(20 * np.log10((1 - s.mean()) / b.std()), rel=1e-10)
        assert got_cnr[i].item() == pytest.approx(20 * np.log10(abs(s.mean() - b.mean()) / np.sqrt(s.var() + b.var())),
                                                  rel=1e-10)


def test_model_range_is_mapped_with_the_explicit_range_not_the_image() -> None:
    img, sig, bg = _case(1)
    model = torch.tensor(img * 2 - 1)  # the same image in [-1, 1]
    a = snr(torch.tensor(img), signal=torch.tensor(sig), background=torch.tensor(bg), data_range=1.0)
    b = snr(model, signal=torch.tensor(sig), background=torch.tensor(bg), data_range=2.0, low=-1.0)
    torch.testing.assert_close(a, b)
    # a brighter image (+0.1, not renormalised) has a lower SNR: 1 - mu_s shrinks, sigma_b stays
    c = snr(torch.tensor(img + 0.1), signal=torch.tensor(sig), background=torch.tensor(bg), data_range=1.0)
    assert (c < a).all()


def test_region_errors_are_one_line() -> None:
    img, sig, bg = _case()
    sig[1] = False
    with pytest.raises(ValueError, match=r"snr: the signal region is empty in sample\(s\) \[1\]"):
        snr(torch.tensor(img), signal=torch.tensor(sig), background=torch.tensor(bg), data_range=1.0)
    bad = torch.tensor(img)
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="cnr: image contains NaN"):
        cnr(bad, signal=torch.tensor(bg), background=torch.tensor(bg), data_range=1.0)
    with pytest.raises(ValueError, match="data_range must be positive"):
        cnr(torch.tensor(img), signal=torch.tensor(bg), background=torch.tensor(bg), data_range=0)


def test_adjacent_slice_correlation_matches_scipy() -> None:
    g = np.random.default_rng(2)
    base = g.normal(size=(1, 1, 1, 12, 12))
    vol = base + 0.3 * np.cumsum(g.normal(size=(2, 1, 6, 12, 12)), axis=2)  # slowly changing slices
    got = adjacent_slice_correlation(torch.tensor(vol))
    for i in range(2):
        want = np.mean([pearsonr(vol[i, 0, d].ravel(), vol[i, 0, d + 1].ravel())[0] for d in range(5)])
        assert got[i].item() == pytest.approx(want, rel=1e-10)
    noise = torch.tensor(g.normal(size=(2, 1, 6, 12, 12)))
    assert (adjacent_slice_correlation(noise).abs() < 0.3).all() and (got > 0.6).all()
    mask = torch.zeros(2, 1, 6, 12, 12)
    mask[..., :6, :] = 1
    half = adjacent_slice_correlation(torch.tensor(vol), mask=mask)
    want = np.mean([pearsonr(vol[0, 0, d, :6].ravel(), vol[0, 0, d + 1, :6].ravel())[0] for d in range(5)])
    assert half[0].item() == pytest.approx(want, rel=1e-10)
    with pytest.raises(ValueError, match="D >= 2"):
        adjacent_slice_correlation(torch.zeros(1, 1, 1, 4, 4))

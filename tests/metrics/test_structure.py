"""Structural metrics: RSSIM vs skimage canny + SSIM, spine mask counts, MS-SSIM vs MONAI/torchmetrics."""
import numpy as np
import pytest
import torch
from skimage.feature import canny
from skimage.metrics import structural_similarity

from medgen.metrics.structure import MS_SSIM_WEIGHTS, ms_ssim, ms_ssim_scales, ms_ssim_weights, rssim, spine_mask
from medgen.registry import METRICS, lookup


def _blobs(n=64, seed=0):
    """[1, 1, n, n] image in [0, 1] with a few bright discs and noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:n, :n]
    img = np.zeros((n, n))
    for cy, cx, r in ((20, 20, 9), (40, 44, 12), (18, 46, 6)):
        img[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 0.8
    img += 0.02 * rng.standard_normal((n, n))
    return torch.from_numpy(img)[None, None]


def _roi(n=64):
    roi = torch.zeros(1, 1, n, n)
    roi[..., 8:56, 8:56] = 1
    return roi


def test_rssim_identical_is_one():
    img = _blobs()
    assert rssim(img, img, data_range=1.0, roi=_roi()).item() == pytest.approx(1.0, abs=1e-12)


def test_rssim_decreases_with_shift():
    img = _blobs()
    vals = [rssim(torch.roll(img, s, dims=-1), img, data_range=1.0, roi=_roi()).item() for s in (0, 1, 3, 6)]
    assert all(a > b for a, b in zip(vals, vals[1:])), vals


def test_rssim_equals_skimage_composition():
    # tolerance 1e-7: both float64, but MONAI convolves with a 7x7 box kernel while skimage uses
    # scipy uniform_filter (separable running sums); they differ by ~2e-9 on these edge maps
    target, pred = _blobs(seed=0), torch.roll(_blobs(seed=1), 2, dims=-2) * 2.0  # data_range 2 scale
    target = target * 2.0
    roi = _roi()
    out = rssim(pred, target, data_range=2.0, roi=roi).item()
    e_p = canny(pred[0, 0].numpy() / 2.0, sigma=3).astype(float)
    e_t = canny(target[0, 0].numpy() / 2.0, sigma=3).astype(float)
    _, smap = structural_similarity(e_t, e_p, data_range=1.0, win_size=7, use_sample_covariance=False, full=True)
    inner = roi[0, 0].numpy().astype(bool)[3:-3, 3:-3]
    assert out == pytest.approx(smap[3:-3, 3:-3][inner].mean(), abs=1e-7)
    assert out < 0.99


def test_rssim_volume_is_mean_of_slices_and_rejects_bad_roi():
    slices = [_blobs(seed=k) for k in range(3)]
    target = torch.cat([x for x in slices], 1)[:, None]                        # [1, 1, 3, 64, 64]
    pred = torch.roll(target, 2, dims=-1)
    roi = _roi()
    per = [rssim(pred[:, :, k], target[:, :, k], data_range=1.0, roi=roi).item() for k in range(3)]
    assert rssim(pred, target, data_range=1.0, roi=roi).item() == pytest.approx(np.mean(per), abs=1e-12)
    with pytest.raises(ValueError):
        rssim(pred, target, data_range=1.0, roi=torch.ones(1, 1, 3, 64, 64))
    with pytest.raises(ValueError):
        rssim(_blobs(), _blobs(), data_range=1.0, roi=torch.ones(1, 1, 32, 32))


def test_spine_mask_square_counts():
    n, d = 64, 10
    labels = torch.zeros(1, n, n, dtype=torch.int64)
    labels[0, 20:30, 25:35] = 1  # 10x10 square, rows 20..29, cols 25..34
    m = spine_mask(labels, distance_px=d)
    assert m.shape == (1, 1, n, n)
    # hand count: pixel kept iff Euclidean distance to the square's nearest pixel <= 10
    yy, xx = np.mgrid[:n, :n]
    dy = np.maximum(np.maximum(20 - yy, yy - 29), 0)
    dx = np.maximum(np.maximum(25 - xx, xx - 34), 0)
    expected = (dy ** 2 + dx ** 2 <= d * d)
    assert np.array_equal(m[0, 0].numpy().astype(bool), expected)
    assert m[0, 0, 10, 30] == 1 and m[0, 0, 9, 30] == 0      # straight above: 10 kept, 11 dropped
    assert m[0, 0, 13, 18] == 1 and m[0, 0, 12, 17] == 0     # diagonal: sqrt(98) kept, sqrt(128) dropped
    with pytest.raises(ValueError):
        spine_mask(torch.zeros(1, 16, 16))


def test_ms_ssim_registered_and_matches_monai():
    from monai.metrics import MultiScaleSSIMMetric
    assert lookup(METRICS, "ms_ssim") is ms_ssim
    g = torch.Generator().manual_seed(0)
    t = torch.rand(2, 1, 192, 192, generator=g, dtype=torch.float64)
    p = (t + 0.3 * torch.rand(2, 1, 192, 192, generator=g, dtype=torch.float64)).clamp(0, 1)
    out = ms_ssim(p, t, data_range=1.0)
    assert out.shape == (2,)
    ref = MultiScaleSSIMMetric(spatial_dims=2, data_range=1.0, kernel_size=11, kernel_sigma=1.5,
                               reduction="none")(p, t).flatten()
    assert torch.allclose(out, ref.double(), atol=1e-12)
    assert ms_ssim(t, t, data_range=1.0).allclose(torch.ones(2, dtype=torch.float64), atol=1e-12)
    assert (out < 1).all()


def test_ms_ssim_close_to_torchmetrics():
    # torchmetrics reflect-pads and averages the last-scale SSIM map over the padded border as
    # well (MONAI: valid windows only), so the two agree only to ~1e-3 -> tolerance 3e-3
    from torchmetrics.functional.image import multiscale_structural_similarity_index_measure as tm
    g = torch.Generator().manual_seed(1)
    t = torch.rand(2, 1, 192, 192, generator=g, dtype=torch.float64)
    p = (t + 0.3 * torch.rand(2, 1, 192, 192, generator=g, dtype=torch.float64)).clamp(0, 1)
    ref = tm(p, t, data_range=1.0, reduction="none", normalize=None)
    assert torch.allclose(ms_ssim(p, t, data_range=1.0), ref, atol=3e-3)


def _pair(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = torch.rand(2, 1, *shape, generator=g, dtype=torch.float64)
    return (t + 0.3 * torch.rand(2, 1, *shape, generator=g, dtype=torch.float64)).clamp(0, 1), t


@pytest.mark.parametrize("shape, scales", [((176, 400), 5), ((175, 400), 4), ((160, 192), 4), ((88, 88), 4),
                                           ((87, 200), 3), ((44, 44), 3), ((43, 64), 2), ((22, 30), 2),
                                           ((21, 64), 1), ((11, 11), 1), ((16, 32, 32), 1)])
def test_ms_ssim_scales_rule(shape, scales):
    # the coarsest image (sides halved scales-1 times, floored) must hold the 11-px window
    assert ms_ssim_scales(shape) == scales
    assert min(shape) // 2 ** (scales - 1) >= 11 and (scales == 5 or min(shape) // 2 ** scales < 11)


def test_ms_ssim_weights_truncated_and_renormalised():
    assert ms_ssim_weights(5) == MS_SSIM_WEIGHTS  # as published (they sum to 1.0001)
    for k in range(1, 5):
        w = ms_ssim_weights(k)
        assert len(w) == k and sum(w) == pytest.approx(1.0, abs=1e-15)
        assert w == pytest.approx([x / sum(MS_SSIM_WEIGHTS[:k]) for x in MS_SSIM_WEIGHTS[:k]], abs=0)
    with pytest.raises(ValueError, match="1..5"):
        ms_ssim_weights(6)


@pytest.mark.parametrize("shape", [(100, 120), (64, 100), (48, 64), (24, 40)])
def test_ms_ssim_small_images_equal_monai_with_renormalised_weights(shape):
    from monai.metrics import MultiScaleSSIMMetric
    p, t = _pair(shape)
    k = ms_ssim_scales(shape)
    assert k < 5
    out = ms_ssim(p, t, data_range=1.0)
    ref = MultiScaleSSIMMetric(spatial_dims=2, data_range=1.0, kernel_size=11, kernel_sigma=1.5,
                               weights=ms_ssim_weights(k), reduction="none")(p, t).flatten().double()
    assert torch.equal(out, ref)
    assert ms_ssim(t, t, data_range=1.0).allclose(torch.ones(2, dtype=torch.float64), atol=1e-12)
    assert (out < 1).all()


def test_ms_ssim_one_scale_is_mean_ssim():
    # skimage's Gaussian SSIM averages the map over the valid centre (crop (11 - 1) / 2 = 5 px per side)
    p, t = _pair((16, 32))
    _, smap = structural_similarity(t[0, 0].numpy(), p[0, 0].numpy(), data_range=1.0, gaussian_weights=True,
                                    sigma=1.5, use_sample_covariance=False, full=True)
    # 4e-8 apart: MONAI builds its Gaussian window in float32
    assert ms_ssim(p, t, data_range=1.0)[0].item() == pytest.approx(smap[5:-5, 5:-5].mean(), abs=1e-6)


def test_ms_ssim_too_small_names_size_and_minimum():
    x = torch.rand(1, 1, 10, 64)
    with pytest.raises(ValueError, match=r"ms_ssim: image size \(10, 64\) is smaller than the 11-px window "
                                         r"\(every side must be >= 11"):
        ms_ssim(x, x, data_range=1.0)


def test_score_rows_record_ms_ssim_scales():
    from medgen.score import score
    p, t = _pair((48, 24))
    df = score(p.float() * 2 - 1, t.float() * 2 - 1, ["psnr", "ms_ssim"], data_range=2.0)
    ms = df[df.metric == "ms_ssim"]
    assert ms["ms_ssim_scales"].tolist() == [2, 2] and df[df.metric == "psnr"]["ms_ssim_scales"].isna().all()
    assert "ms_ssim_scales" not in score(p, t, ["psnr"], data_range=1.0).columns


def _vifp_reference(ref, dist, sigma_n_sq=2.0):
    """Sheikh & Bovik's pixel-domain VIF (vifp_mscale) in NumPy/SciPy, one 2D image pair."""
    from scipy.signal import convolve2d
    eps, num, den = 1e-10, 0.0, 0.0
    for s in range(4):
        n = 2 ** (4 - s) + 1
        c = np.arange(n) - (n - 1) / 2
        w = np.exp(-(c[:, None] ** 2 + c[None, :] ** 2) / (2 * (n / 5) ** 2))
        w /= w.sum()
        if s > 0:  # low-pass then decimate by 2
            ref = convolve2d(ref, w, mode="valid")[::2, ::2]
            dist = convolve2d(dist, w, mode="valid")[::2, ::2]
        mu1, mu2 = convolve2d(ref, w, mode="valid"), convolve2d(dist, w, mode="valid")
        s1 = np.maximum(convolve2d(ref * ref, w, mode="valid") - mu1 ** 2, 0)
        s2 = np.maximum(convolve2d(dist * dist, w, mode="valid") - mu2 ** 2, 0)
        s12 = convolve2d(ref * dist, w, mode="valid") - mu1 * mu2
        g = s12 / (s1 + eps)
        sv = s2 - g * s12
        m = s1 < eps
        g[m], sv[m], s1[m] = 0, s2[m], 0
        m = s2 < eps
        g[m], sv[m] = 0, 0
        m = g < 0
        sv[m], g[m] = s2[m], 0
        sv = np.maximum(sv, eps)
        num += np.log10(1 + g ** 2 * s1 / (sv + sigma_n_sq)).sum()
        den += np.log10(1 + s1 / sigma_n_sq).sum()
    return num / den


def test_vifp_matches_numpy_reference_and_scales_with_data_range():
    from medgen.metrics.structure import vifp
    assert lookup(METRICS, "vifp") is vifp
    g = torch.Generator().manual_seed(2)
    t = torch.rand(2, 1, 48, 48, generator=g, dtype=torch.float64) * 2 - 1     # model range, data_range 2
    p = (t + 0.2 * torch.randn(2, 1, 48, 48, generator=g, dtype=torch.float64)).clamp(-1, 1)
    out = vifp(p, t, data_range=2.0)
    assert out.shape == (2,)
    for i in range(2):  # reference on the 8-bit scale: x * 255 / data_range
        ref = _vifp_reference(t[i, 0].numpy() * 127.5, p[i, 0].numpy() * 127.5)
        assert out[i].item() == pytest.approx(ref, abs=1e-5)  # float32 inside vifp (measured ~1e-7)
    # invariant to an affine change of units that data_range follows
    assert torch.allclose(vifp(p * 500 + 30, t * 500 + 30, data_range=1000.0), out, atol=1e-5)
    assert torch.allclose(vifp(t, t, data_range=2.0), torch.ones(2, dtype=torch.float64), atol=1e-6)
    noisier = (t + 0.5 * torch.randn(2, 1, 48, 48, generator=g, dtype=torch.float64)).clamp(-1, 1)
    assert (vifp(noisier, t, data_range=2.0) < out).all()
    with pytest.raises(ValueError, match="too small"):
        vifp(t[..., :40], t[..., :40], data_range=2.0)


def test_torchmetrics_gap_is_reflect_padding():
    # why MS-SSIM differs: torchmetrics' SSIM = MONAI's valid-window SSIM of the reflect-padded image
    import torch.nn.functional as F
    from torchmetrics.functional.image import structural_similarity_index_measure as tss
    from medgen.metrics.image import ssim
    g = torch.Generator().manual_seed(3)
    t = torch.rand(2, 1, 48, 48, generator=g, dtype=torch.float64)
    p = (t + 0.3 * torch.rand(2, 1, 48, 48, generator=g, dtype=torch.float64)).clamp(0, 1)
    padded = ssim(F.pad(p, (5,) * 4, mode="reflect"), F.pad(t, (5,) * 4, mode="reflect"), data_range=1.0,
                  kernel="gaussian", win_size=11)
    valid = ssim(p, t, data_range=1.0, kernel="gaussian", win_size=11)
    ref = tss(p, t, data_range=1.0, reduction="none")
    assert torch.allclose(padded, ref, atol=1e-6)           # residual ~1e-7: kernel construction
    assert (valid - ref).abs().max() > 10 * (padded - ref).abs().max()


def test_spine_mask_3d_single_voxel_is_a_ball():
    labels = torch.zeros(2, 24, 24, 24, dtype=torch.uint8)
    labels[:, 12, 12, 12] = 3                       # any nonzero label counts as spine
    m = spine_mask(labels, distance_px=5)
    assert m.shape == (2, 1, 24, 24, 24)
    zz, yy, xx = np.mgrid[:24, :24, :24]
    ball = (zz - 12) ** 2 + (yy - 12) ** 2 + (xx - 12) ** 2 <= 25
    assert int(m[0].sum()) == int(ball.sum()) and np.array_equal(m[1, 0].numpy().astype(bool), ball)

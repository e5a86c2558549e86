"""Image metrics against scikit-image (and MONAI's SSIMMetric): values, masks, shapes, errors."""
import numpy as np
import pytest
import torch
from monai.metrics import SSIMMetric
from skimage.metrics import mean_squared_error, peak_signal_noise_ratio, structural_similarity

from medgen.metrics.image import mae, mse, psnr, ssim
from medgen.registry import METRICS, lookup


def _pair(*shape, seed=0, noise=0.3):
    g = torch.Generator().manual_seed(seed)
    target = torch.rand(*shape, generator=g) * 2 - 1
    pred = (target + noise * torch.randn(*shape, generator=g)).clamp(-1, 1)
    return pred, target


def _sk_ssim(p, t, **kw):
    """skimage SSIM of one sample [C, *S] (channel axis 0 when C > 1)."""
    p, t = p.numpy().astype(np.float64), t.numpy().astype(np.float64)
    if p.shape[0] == 1:
        return structural_similarity(t[0], p[0], use_sample_covariance=False, **kw)
    return structural_similarity(t, p, channel_axis=0, use_sample_covariance=False, **kw)


def test_registered():
    for name, fn in (("psnr", psnr), ("ssim", ssim), ("mae", mae), ("mse", mse)):
        assert lookup(METRICS, name) is fn


def test_psnr_mse_mae_match_skimage_one_value_per_sample():
    pred, target = _pair(3, 2, 16, 16)
    out = psnr(pred, target, data_range=2.0)
    assert out.shape == (3,)
    for i in range(3):
        p, t = pred[i].numpy().astype(np.float64), target[i].numpy().astype(np.float64)
        assert out[i].item() == pytest.approx(peak_signal_noise_ratio(t, p, data_range=2.0), abs=1e-9)
        assert mse(pred, target, data_range=2.0)[i].item() == pytest.approx(mean_squared_error(t, p), rel=1e-12)
        assert mae(pred, target, data_range=2.0)[i].item() == pytest.approx(np.abs(t - p).mean(), rel=1e-12)


def test_psnr_uses_the_explicit_data_range_not_the_image_range():
    pred, target = _pair(2, 1, 8, 8)
    small = psnr(pred * 0.1, target * 0.1, data_range=2.0)
    same = psnr(pred, target, data_range=2.0)
    assert torch.allclose(small - same, torch.full((2,), 20.0, dtype=torch.float64))
    assert psnr(target, target, data_range=2.0).isinf().all()


def test_ssim_2d_matches_skimage_uniform_and_gaussian():
    pred, target = _pair(2, 1, 24, 24)
    uni = ssim(pred, target, data_range=2.0)
    gau = ssim(pred, target, data_range=2.0, kernel="gaussian", win_size=11)
    assert uni.shape == gau.shape == (2,)
    for i in range(2):
        assert uni[i].item() == pytest.approx(_sk_ssim(pred[i], target[i], data_range=2.0, win_size=7), abs=1e-5)
        ref = _sk_ssim(pred[i], target[i], data_range=2.0, gaussian_weights=True, sigma=1.5)
        assert gau[i].item() == pytest.approx(ref, abs=1e-5)
    assert torch.allclose(ssim(target, target, data_range=2.0), torch.ones(2, dtype=torch.float64))


def test_ssim_gaussian_matches_monai_ssim_metric():
    pred, target = _pair(2, 1, 24, 24, seed=1)
    ref = SSIMMetric(spatial_dims=2, data_range=2.0, reduction="none")(pred, target).flatten()
    assert torch.allclose(ssim(pred, target, data_range=2.0, kernel="gaussian", win_size=11).float(), ref, atol=1e-5)


def test_ssim_3d_and_multichannel_match_skimage():
    pred, target = _pair(2, 1, 10, 12, 12, seed=2)
    out = ssim(pred, target, data_range=2.0)
    for i in range(2):
        assert out[i].item() == pytest.approx(_sk_ssim(pred[i], target[i], data_range=2.0, win_size=7), abs=1e-5)
    pred, target = _pair(1, 3, 16, 16, seed=3)
    assert ssim(pred, target, data_range=2.0)[0].item() == pytest.approx(
        _sk_ssim(pred[0], target[0], data_range=2.0, win_size=7), abs=1e-5)


def test_masked_ssim_is_mean_of_skimage_map_over_window_centres():
    pred, target = _pair(2, 1, 20, 20, seed=4)
    mask = torch.zeros(2, 1, 20, 20)
    mask[0, :, 4:14, 6:18] = 1
    mask[1, :, :10] = 1
    out = ssim(pred, target, data_range=2.0, mask=mask)
    for i in range(2):
        _, smap = structural_similarity(target[i, 0].double().numpy(), pred[i, 0].double().numpy(), data_range=2.0,
                                        win_size=7, use_sample_covariance=False, full=True)
        inner = mask[i, 0, 3:-3, 3:-3].bool().numpy()
        assert out[i].item() == pytest.approx(smap[3:-3, 3:-3][inner].mean(), abs=1e-5)
    full = torch.ones(2, 1, 20, 20)
    assert torch.allclose(ssim(pred, target, data_range=2.0, mask=full), ssim(pred, target, data_range=2.0))


def test_masked_psnr_and_mae_use_only_masked_pixels():
    pred, target = _pair(2, 2, 8, 8, seed=5)
    mask = torch.zeros(2, 1, 8, 8)
    mask[:, :, 2:6, 1:7] = 1
    sel = mask.expand_as(pred).bool()
    for i in range(2):
        p, t = pred[i][sel[i]].double().numpy(), target[i][sel[i]].double().numpy()
        assert psnr(pred, target, data_range=2.0, mask=mask)[i].item() == pytest.approx(
            peak_signal_noise_ratio(t, p, data_range=2.0), abs=1e-9)
        assert mae(pred, target, data_range=2.0, mask=mask)[i].item() == pytest.approx(np.abs(t - p).mean())


@pytest.mark.parametrize("fn", [psnr, ssim, mae, mse])
def test_nan_and_shape_errors_are_one_line(fn):
    pred, target = _pair(2, 1, 16, 16)
    bad = pred.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="pred contains NaN") as err:
        fn(bad, target, data_range=2.0)
    assert "\n" not in str(err.value) and fn.__name__ in str(err.value)
    with pytest.raises(ValueError, match="differ in shape"):
        fn(pred, target[:, :, :8], data_range=2.0)
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        fn(pred[0], target[0], data_range=2.0)
    with pytest.raises(ValueError, match="data_range"):
        fn(pred, target, data_range=0.0)
    with pytest.raises(ValueError, match="mask"):
        fn(pred, target, data_range=2.0, mask=torch.ones(2, 1, 8, 8))
    with pytest.raises(ValueError, match="mask is empty for sample"):
        fn(pred, target, data_range=2.0, mask=torch.zeros(2, 1, 16, 16))


def test_ssim_argument_errors():
    pred, target = _pair(1, 1, 6, 6)
    with pytest.raises(ValueError, match="smaller than win_size"):
        ssim(pred, target, data_range=2.0)
    with pytest.raises(ValueError, match="odd"):
        ssim(pred, target, data_range=2.0, win_size=4)
    with pytest.raises(ValueError, match="unknown kernel 'box'"):
        ssim(pred, target, data_range=2.0, win_size=3, kernel="box")

"""Edge cases of every image-quality, region and segmentation metric (issue 4, part 1).

Constant images, masks with no pixel, NaN / Inf input, a data_range that does not fit the
target, wrong shapes, 3D inputs; Dice with empty maps against MONAI's DiceMetric. Reference
values come from scikit-image / torchmetrics / MONAI or are derived in the comments.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pytest
import torch
from assertions import raises_one_line  # noqa: E402  (tests/ is on sys.path)
from monai.metrics import DiceMetric
from scipy import ndimage
from skimage.feature import canny
from skimage.metrics import mean_squared_error, peak_signal_noise_ratio, structural_similarity
from torchmetrics.functional.image import multiscale_structural_similarity_index_measure

from medgen.metrics import segmentation as seg
from medgen.metrics.image import check_data_range, check_inputs, mae, mse, psnr, ssim
from medgen.metrics.regions import adjacent_slice_correlation, cnr, snr
from medgen.metrics.structure import ms_ssim, rssim, vifp


# --------------------------------------------------------------------------------------
# The full-reference metrics, one table
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Spec:
    """How to call one metric: image side, whether it takes masks, whether it accepts 3D."""

    name: str
    fn: Callable[..., torch.Tensor]
    size: int
    masks: bool
    volumes: bool

    def __call__(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None,
                 data_range: float = 2.0) -> torch.Tensor:
        if self.name == "rssim":  # roi instead of mask, always required
            roi = torch.ones(pred.shape[0], 1, *pred.shape[-2:]) if mask is None else mask
            return rssim(pred, target, data_range=data_range, roi=roi)
        return self.fn(pred, target, data_range=data_range, mask=mask)


SPECS = [Spec("mse", mse, 24, True, True), Spec("mae", mae, 24, True, True), Spec("psnr", psnr, 24, True, True),
         Spec("ssim", ssim, 24, True, True), Spec("ms_ssim", ms_ssim, 176, False, True),
         Spec("vifp", vifp, 48, False, False), Spec("rssim", rssim, 32, True, True)]
IDS = [s.name for s in SPECS]
MASKED = [s for s in SPECS if s.masks]


def structured(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """``[n, 1, size, size]`` in [-1, 1]: smooth blobs plus a bright square (edges for Canny)."""
    g = np.random.default_rng(seed)
    x = ndimage.gaussian_filter(g.normal(size=(n, 1, size, size)), sigma=(0, 0, size / 12, size / 12))
    x = x / np.abs(x).max() * 0.5
    q = size // 4
    x[:, :, q:3 * q, q:3 * q] += 0.45
    return torch.from_numpy(x.clip(-1, 1))


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy()


# --------------------------------------------------------------------------------------
# Constant images
# --------------------------------------------------------------------------------------
IDENTICAL = {"mse": 0.0, "mae": 0.0, "psnr": math.inf, "ssim": 1.0, "ms_ssim": 1.0, "rssim": 1.0}


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_identical_images_constant_or_not(spec: Spec) -> None:
    const = torch.full((2, 1, spec.size, spec.size), 0.3, dtype=torch.float64)
    img = structured(2, spec.size)
    got_const, got_img = spec(const, const), spec(img, img)
    if spec.name == "vifp":
        # the reference carries no information (no local variance): VIF = 0 / 0, documented NaN
        assert got_const.isnan().all()
        assert torch.allclose(got_img, torch.ones(2, dtype=torch.float64), atol=1e-5)
        return
    want = torch.full((2,), IDENTICAL[spec.name], dtype=torch.float64)
    assert torch.equal(got_const, want) or torch.allclose(got_const, want, atol=1e-12)
    assert torch.equal(got_img, want) or torch.allclose(got_img, want, atol=1e-12)


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_constant_pred_vs_structured_target_is_finite_and_matches_references(spec: Spec) -> None:
    target = structured(2, spec.size, seed=1)
    pred = torch.full_like(target, -0.2)
    got = spec(pred, target)
    assert got.shape == (2,) and torch.isfinite(got).all(), got
    for i in range(2):
        p, t = _np(pred[i, 0]), _np(target[i, 0])
        if spec.name == "mse":
            assert got[i].item() == pytest.approx(mean_squared_error(t, p), rel=1e-12)
        elif spec.name == "mae":
            assert got[i].item() == pytest.approx(np.abs(t - p).mean(), rel=1e-12)
        elif spec.name == "psnr":
            assert got[i].item() == pytest.approx(peak_signal_noise_ratio(t, p, data_range=2.0), abs=1e-9)
        elif spec.name == "ssim":
            ref = structural_similarity(t, p, data_range=2.0, win_size=7, use_sample_covariance=False)
            assert got[i].item() == pytest.approx(ref, abs=1e-6)  # MONAI's filter: ~3e-7 from skimage
        elif spec.name == "rssim":
            # pred has no edges: SSIM of an all-zero map against the target's Canny map (ROI = image)
            e_t = canny(t / 2.0, sigma=3.0).astype(np.float64)
            assert e_t.any()
            ref = structural_similarity(e_t, np.zeros_like(e_t), data_range=1.0, win_size=7,
                                        use_sample_covariance=False)
            assert got[i].item() == pytest.approx(ref, abs=1e-9) and ref < 0.5
    if spec.name == "vifp":
        # pred has no covariance with the target: g = 0 in every window, so VIF = 0 exactly
        assert torch.allclose(got, torch.zeros(2, dtype=torch.float64), atol=1e-7)
    if spec.name == "ms_ssim":
        # torchmetrics reflect-pads (MONAI does not): close, not equal (gap stated in ms_ssim's docstring)
        ref = multiscale_structural_similarity_index_measure(pred, target, data_range=2.0, reduction="none")
        assert torch.allclose(got, ref.double(), atol=2e-2), (got, ref)


FLAT_TARGET = [s for s in SPECS if s.name in ("psnr", "ssim", "mse")]


@pytest.mark.parametrize("spec", FLAT_TARGET, ids=[s.name for s in FLAT_TARGET])
def test_constant_target_vs_structured_pred_matches_skimage(spec: Spec) -> None:
    pred = structured(1, spec.size, seed=2)
    target = torch.full_like(pred, 0.1)
    got = spec(pred, target).item()
    p, t = _np(pred[0, 0]), _np(target[0, 0])
    ref = {"psnr": lambda: peak_signal_noise_ratio(t, p, data_range=2.0),
           "mse": lambda: mean_squared_error(t, p),
           "ssim": lambda: structural_similarity(t, p, data_range=2.0, win_size=7, use_sample_covariance=False)}
    assert math.isfinite(got) and got == pytest.approx(ref[spec.name](), abs=1e-6)


def test_vifp_constant_target_is_nan_not_an_error() -> None:
    """Documented: a flat reference has VIF denominator 0 -> NaN (per sample, the batch still scores)."""
    target = structured(2, 48)
    target[1] = 0.25
    out = vifp(structured(2, 48, seed=3), target, data_range=2.0)
    assert math.isfinite(out[0].item()) and math.isnan(out[1].item())


# --------------------------------------------------------------------------------------
# Masks with no pixel
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("spec", MASKED, ids=[s.name for s in MASKED])
def test_empty_mask_names_the_sample(spec: Spec) -> None:
    img = structured(3, spec.size)
    mask = torch.ones(3, 1, spec.size, spec.size)
    mask[1] = 0
    raises_one_line(ValueError, f"{spec.name}: mask is empty for sample(s) [1]", spec, img, img * 0.9, mask)


def test_ssim_mask_only_on_the_border_has_no_window_centre() -> None:
    img = structured(2, 24)
    mask = torch.ones(2, 1, 24, 24)
    mask[1, :, 2:-2, 2:-2] = 0  # sample 1: only a 2-px frame, no window centre of a 7-px window
    raises_one_line(ValueError, "ssim: mask has no pixel 3 or more px from the border", ssim, img, img,
                    data_range=2.0, mask=mask)
    msg = raises_one_line(ValueError, "sample(s) [1]", ssim, img, img, data_range=2.0, mask=mask)
    assert "[0" not in msg


@pytest.mark.parametrize("spec", [s for s in SPECS if not s.masks], ids=[s.name for s in SPECS if not s.masks])
def test_metrics_without_mask_support_refuse_a_mask(spec: Spec) -> None:
    img = structured(1, spec.size)
    raises_one_line(ValueError, f"{spec.name}: masks are not supported", spec, img, img,
                    torch.ones(1, 1, spec.size, spec.size))


def test_region_metrics_empty_regions_and_masks() -> None:
    img = structured(2, 16) * 0.5 + 0.5
    sig = torch.zeros(2, 1, 16, 16, dtype=torch.bool)
    sig[:, :, 4:8, 4:8] = True
    empty = sig.clone()
    empty[1] = False
    raises_one_line(ValueError, "snr: the signal region is empty in sample(s) [1]", snr, img, signal=empty,
                    background=~sig, data_range=1.0)
    raises_one_line(ValueError, "cnr: the background region is empty in sample(s) [1]", cnr, img, signal=sig,
                    background=empty, data_range=1.0)
    vol = torch.randn(2, 1, 4, 8, 8, dtype=torch.float64)
    mask = torch.ones(2, 1, 4, 8, 8)
    mask[0, :, ::2] = 0  # sample 0: every other slice masked out -> no pixel in two adjacent slices
    raises_one_line(ValueError, "adjacent_slice_correlation: the mask covers no pixel of two adjacent slices "
                                "in sample(s) [0]", adjacent_slice_correlation, vol, mask=mask)


# --------------------------------------------------------------------------------------
# NaN / Inf input
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("spec", SPECS, ids=IDS)
@pytest.mark.parametrize("which", ["pred", "target"])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_nan_or_inf_input_is_a_one_line_error(spec: Spec, which: str, bad: float) -> None:
    pred, target = structured(3, spec.size, seed=4), structured(3, spec.size, seed=5)
    (pred if which == "pred" else target)[2, 0, 3, 5] = bad
    raises_one_line(ValueError, f"{spec.name}: {which} contains NaN or Inf in sample(s) [2]", spec, pred, target)


def test_region_metrics_nan_input() -> None:
    img = structured(1, 16) * 0.5 + 0.5
    img[0, 0, 0, 0] = math.nan
    sig = torch.zeros(1, 1, 16, 16, dtype=torch.bool)
    sig[..., 4:8, 4:8] = True
    for fn in (snr, cnr):
        raises_one_line(ValueError, f"{fn.__name__}: image contains NaN or Inf", fn, img, signal=sig,
                        background=~sig, data_range=1.0)
    vol = torch.zeros(1, 1, 3, 4, 4)
    vol[0, 0, 1, 1, 1] = math.inf
    raises_one_line(ValueError, "adjacent_slice_correlation: volume contains NaN or Inf",
                    adjacent_slice_correlation, vol)


# --------------------------------------------------------------------------------------
# data_range mismatch
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_data_range_mismatch_is_a_one_line_error(spec: Spec) -> None:
    target_hu = structured(2, spec.size) * 1000.0  # a CT in HU (span ~ 1900) scored as model range
    msg = raises_one_line(ValueError, f"{spec.name}: target spans", spec, target_hu + 5.0, target_hu)
    assert "but data_range is 2" in msg and "sample(s) [0, 1]" in msg
    # a pred overshooting the range is scored as it is (only the target defines the units)
    target = structured(2, spec.size)
    got = spec((target * 1.08).clamp(-1.05, 1.05), target)
    assert got.shape == (2,)


@pytest.mark.parametrize("spec", MASKED, ids=[s.name for s in MASKED])
def test_data_range_span_is_taken_within_the_mask(spec: Spec) -> None:
    target = structured(1, spec.size)
    outside = target.clone()
    outside[..., :3] = 500.0  # out of range, but only in columns the mask excludes
    mask = torch.ones(1, 1, spec.size, spec.size)
    mask[..., :3] = 0
    pred = outside * 0.9
    assert torch.isfinite(spec(pred, outside, mask)).all()
    raises_one_line(ValueError, "target spans", spec, pred, outside)


def test_check_data_range_slack() -> None:
    t = torch.zeros(2, 1, 4, 4, dtype=torch.float64)
    t[:, :, 0, 0] = 2.0 * (1 + 1e-7)  # inside the relative slack 1e-6
    check_data_range(t, 2.0)
    t[1, :, 0, 0] = 2.0 * (1 + 1e-5)
    raises_one_line(ValueError, "psnr: target spans 2.00002 but data_range is 2 (sample(s) [1]", check_data_range,
                    t, 2.0, None, "psnr")
    # check_inputs returns the validated mask as float64, broadcastable to pred
    m = check_inputs(t, t, 4.0, torch.ones(2, 1, 4, 4, dtype=torch.bool), "x")
    assert m is not None and m.dtype == torch.float64


def test_snr_rejects_a_signal_mean_outside_the_range_cnr_is_scale_free() -> None:
    hu = structured(2, 16) * 500.0 + 40.0  # HU-like image, mean ~ 40 + ...
    sig = torch.zeros(2, 1, 16, 16, dtype=torch.bool)
    sig[..., 4:12, 4:12] = True
    raises_one_line(ValueError, "snr: signal mean", snr, hu, signal=sig, background=~sig, data_range=2.0, low=-1.0)
    # CNR (Eq. 13) does not change under an affine map of intensities
    a = cnr(hu, signal=sig, background=~sig, data_range=2.0)
    b = cnr(hu / 1000.0 + 0.5, signal=sig, background=~sig, data_range=1.0)
    torch.testing.assert_close(a, b)


def test_region_constant_cases_are_documented_values() -> None:
    sig = torch.zeros(1, 1, 8, 8, dtype=torch.bool)
    sig[..., 2:6, 2:6] = True
    flat_bg = torch.full((1, 1, 8, 8), 0.25, dtype=torch.float64)  # exact in binary: sigma_b is exactly 0
    flat_bg[..., 2:6, 2:6] = torch.linspace(0.3, 0.6, 16, dtype=torch.float64).view(4, 4)
    assert snr(flat_bg, signal=sig, background=~sig, data_range=1.0).isposinf().all()  # sigma_b = 0
    two_flat = torch.where(sig, 0.75, 0.25).double()
    assert cnr(two_flat, signal=sig, background=~sig, data_range=1.0).isposinf().all()
    assert cnr(torch.full_like(two_flat, 0.5), signal=sig, background=~sig, data_range=1.0).isnan().all()
    assert adjacent_slice_correlation(torch.ones(1, 1, 3, 4, 4)).isnan().all()  # no valid slice pair


# --------------------------------------------------------------------------------------
# Shapes, dims, arguments
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_wrong_shapes_and_dims(spec: Spec) -> None:
    img = structured(2, spec.size)
    raises_one_line(ValueError, "differ in shape", spec, img, img[:, :, :-1])
    if spec.name != "rssim":  # rssim reads roi's shape first; the check below covers its dims
        raises_one_line(ValueError, "expected [B, C, H, W] or [B, C, D, H, W]", spec, img[:, 0], img[:, 0])
        raises_one_line(ValueError, "expected [B, C, H, W] or [B, C, D, H, W]", spec, img[None, None], img[None, None])
    if spec.masks:
        raises_one_line(ValueError, "does not match pred", spec, img, img, torch.ones(2, 1, 8, 8))
        raises_one_line(ValueError, "mask must contain only 0 and 1", spec, img, img,
                        torch.full((2, 1, spec.size, spec.size), 0.5))
    for bad in (0.0, -1.0, math.nan, math.inf):
        raises_one_line(ValueError, "data_range", spec, img, img, None, bad)


@pytest.mark.parametrize("spec", SPECS[:4], ids=IDS[:4])
def test_3d_matches_skimage(spec: Spec) -> None:
    g = torch.Generator().manual_seed(6)
    target = torch.rand(2, 1, 9, 12, 11, generator=g, dtype=torch.float64) * 2 - 1
    pred = (target + 0.2 * torch.randn(target.shape, generator=g, dtype=torch.float64)).clamp(-1, 1)
    got = spec(pred, target)
    for i in range(2):
        p, t = _np(pred[i, 0]), _np(target[i, 0])
        ref = {"mse": lambda: mean_squared_error(t, p), "mae": lambda: np.abs(t - p).mean(),
               "psnr": lambda: peak_signal_noise_ratio(t, p, data_range=2.0),
               "ssim": lambda: structural_similarity(t, p, data_range=2.0, win_size=7, use_sample_covariance=False)}
        assert got[i].item() == pytest.approx(ref[spec.name](), abs=1e-6)


def test_3d_limits_are_clear_errors() -> None:
    vol = structured(1, 48)[:, :, None].expand(1, 1, 4, 48, 48).contiguous()
    raises_one_line(ValueError, "vifp: expected 2D images", vifp, vol, vol, data_range=2.0)
    raises_one_line(ValueError, "ms_ssim: image size (4, 48, 48) is smaller than the 11-px window", ms_ssim, vol, vol,
                    data_range=2.0)
    raises_one_line(ValueError, "ssim: image size (4, 48, 48) is smaller than win_size 7", ssim, vol, vol,
                    data_range=2.0)
    raises_one_line(ValueError, "adjacent_slice_correlation: expected [B, C, D, H, W]", adjacent_slice_correlation,
                    vol[:, :, 0])


# --------------------------------------------------------------------------------------
# Dice: empty maps, absent labels (convention vs MONAI's DiceMetric)
# --------------------------------------------------------------------------------------
def _monai_dice(p: np.ndarray, t: np.ndarray, ignore_empty: bool) -> float:
    """MONAI DiceMetric of binary maps ``[H, W]`` (one sample, one channel)."""
    metric = DiceMetric(include_background=True, reduction="none", ignore_empty=ignore_empty)
    out = metric(torch.from_numpy(p).float()[None, None], torch.from_numpy(t).float()[None, None])
    return float(out[0, 0])


def test_dice_empty_maps_convention_against_monai() -> None:
    """Both empty -> NaN (= MONAI ignore_empty=True); only pred non-empty -> 0 (= ignore_empty=False);
    only target non-empty -> 0 (both MONAI settings)."""
    z = np.zeros((8, 8), np.int64)
    blob = z.copy()
    blob[2:5, 2:5] = 1
    cases = {"both empty": (z, z), "pred only": (blob, z), "target only": (z, blob)}
    pred = np.stack([p for p, _ in cases.values()])
    target = np.stack([t for _, t in cases.values()])
    fg = seg.dice_foreground(pred, target)
    per = seg.dice_per_label(pred, target, labels=[1])[:, 0]
    for k, (p, t) in enumerate(cases.values()):
        ignore, keep = _monai_dice(p, t, True), _monai_dice(p, t, False)
        if k == 0:
            assert math.isnan(ignore) and keep == 1.0  # MONAI: NaN or 1 depending on ignore_empty
            assert math.isnan(fg[k]) and math.isnan(per[k])  # medgen: NaN (undefined, skipped by nanmean)
        elif k == 1:
            assert math.isnan(ignore) and keep == 0.0
            assert fg[k].item() == per[k].item() == keep  # medgen: a hallucinated structure scores 0
        else:
            assert ignore == keep == 0.0 and fg[k].item() == per[k].item() == 0.0


def test_dice_absent_labels() -> None:
    p = np.zeros((2, 6, 6), np.int64)
    t = np.zeros((2, 6, 6), np.int64)
    p[:, :3] = 1
    t[:, :3] = 1
    t[0, 5, :] = 3  # label 3 only in sample 0's target
    raises_one_line(ValueError, "requested labels [7] occur in neither pred nor target", seg.dice_per_label, p, t,
                    labels=[1, 7])
    d = seg.dice_per_label(p, t)  # labels [1, 3]: 3 present in the batch, absent from sample 1
    assert d[:, 0].tolist() == [1.0, 1.0] and d[0, 1].item() == 0.0 and math.isnan(d[1, 1].item())
    assert seg.dice_mean(p, t).tolist() == [0.5, 1.0]
    assert seg.pooled_mean(d) == pytest.approx(2 / 3)
    assert math.isnan(seg.pooled_mean(torch.full((2, 2), math.nan)))
    zero = np.zeros((1, 6, 6), np.int64)
    raises_one_line(ValueError, "dice_per_label: no foreground label in pred or target", seg.dice_per_label, zero, zero)
    assert math.isnan(seg.dice_foreground(zero, zero).item())
    assert seg.hd95(np.concatenate([p[:1], zero]), np.concatenate([t[:1], p[:1]])).isnan().tolist() == [False, True]


def test_segmentation_input_errors_are_one_line() -> None:
    p = np.zeros((1, 6, 6), np.int64)
    raises_one_line(ValueError, "dice_foreground: pred (1, 6, 6) and target (1, 6, 5) differ in shape",
                    seg.dice_foreground, p, p[..., :5])
    raises_one_line(ValueError, "expected [B, H, W] or [B, D, H, W]", seg.dice_foreground, p[0], p[0])
    raises_one_line(ValueError, "label maps must be integer", seg.dice_foreground, p.astype(np.float32), p)
    raises_one_line(ValueError, "negative labels", seg.dice_foreground, p - 1, p)


def test_dice_3d_volumes_match_monai() -> None:
    g = torch.Generator().manual_seed(7)
    p = torch.randint(0, 3, (2, 5, 7, 6), generator=g)
    t = torch.randint(0, 3, (2, 5, 7, 6), generator=g)
    got = seg.dice_per_label(p, t, labels=[1, 2])
    onehot = lambda x: torch.stack([(x == v).float() for v in (1, 2)], dim=1)  # noqa: E731
    ref = DiceMetric(include_background=True, reduction="none")(onehot(p), onehot(t))
    torch.testing.assert_close(got, ref.double())


# --------------------------------------------------------------------------------------
# The separable SSIM map (medgen.metrics.image.ssim_map_valid) against skimage's full map
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("kernel", ["uniform", "gaussian"])
def test_ssim_map_equals_skimage_full_map_in_3d(kernel: str) -> None:
    from medgen.metrics.image import ssim_map_valid
    g = torch.Generator().manual_seed(8)
    target = torch.rand(1, 1, 13, 14, 15, generator=g, dtype=torch.float64) * 2 - 1
    pred = (target + 0.3 * torch.randn(target.shape, generator=g, dtype=torch.float64)).clamp(-1, 1)
    win = 7 if kernel == "uniform" else 11
    got = ssim_map_valid(pred, target, data_range=2.0, win_size=win, kernel=kernel)[0, 0].numpy()
    kw = {"win_size": 7} if kernel == "uniform" else {"gaussian_weights": True, "sigma": 1.5}
    _, full = structural_similarity(_np(target[0, 0]), _np(pred[0, 0]), data_range=2.0, use_sample_covariance=False,
                                    full=True, **kw)
    pad = (win - 1) // 2
    assert got.shape == tuple(s - 2 * pad for s in (13, 14, 15))
    np.testing.assert_allclose(got, full[pad:-pad, pad:-pad, pad:-pad], atol=1e-12)

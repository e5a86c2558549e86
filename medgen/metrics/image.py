"""Full-reference image-quality metrics, one value per sample.

Every metric has the signature ``fn(pred, target, *, data_range, mask=None) -> [B]`` with
``pred`` and ``target`` ``[B, C, H, W]`` or ``[B, C, D, H, W]`` and ``mask`` ``[B, 1, *S]`` or
``[B, C, *S]`` in {0, 1} (``None``: every voxel). ``data_range`` is explicit and is never
derived from the images (model range ``[-1, 1]`` has ``data_range=2``). Aggregation across
samples or subjects is a separate step (:mod:`medgen.evaluate`).

Input checks (:func:`check_inputs`, shared by :mod:`medgen.metrics.structure`), each a one-line
:class:`MetricInputError` (a ``ValueError``) naming the metric and the offending sample(s):
equal shapes, 4D/5D, finite values, a 0/1 mask with at least one pixel per sample, and a
``data_range`` consistent with the images: the *target's* span ``max - min`` per sample
(within the mask) must not exceed ``data_range`` (relative slack ``RANGE_SLACK``), which
catches HU or [0, 255] images scored with ``data_range=2``. Only the target is checked: it is
the reference whose units define the range, while a generated ``pred`` may overshoot the
range slightly (unclipped model output) and is scored as it is. A target spanning *less* than
``data_range`` is fine (a dark image, a constant image).

Edge cases (pinned in ``tests/metrics/test_edge_cases.py``): identical images give PSNR
``inf``, MSE/MAE ``0`` and SSIM ``1``, constant ones included; a constant ``pred`` against a
varying ``target`` gives finite values (SSIM's ``C1``/``C2`` keep the ratio defined), equal to
scikit-image's.

* PSNR, MSE and MAE are masked means over channels and voxels, computed in float64; PSNR
  equals ``skimage.metrics.peak_signal_noise_ratio`` (``inf`` for identical images).
* SSIM maps (:func:`ssim_map_valid`) compute what MONAI's ``compute_ssim_and_cs`` (the
  function behind ``monai.metrics.SSIMMetric``) computes -- "valid" convolutions and the
  population (not sample) covariance -- with separable float64 filtering (MONAI's full-kernel
  float32 convolution was 5-13x slower than scikit-image; ``benchmark/metrics.py``). It
  equals ``skimage.metrics.structural_similarity``
  called with ``use_sample_covariance=False`` and the same ``data_range``:
  ``kernel="uniform", win_size=7`` <-> ``win_size=7``; ``kernel="gaussian", win_size=11,
  sigma=1.5`` <-> ``gaussian_weights=True, sigma=1.5`` (Wang et al. 2004). skimage also
  averages only the ``(win_size - 1) // 2``-cropped interior, exactly the valid region MONAI
  returns. With a mask, SSIM is the mean of the map over the windows whose *centre* lies in
  the mask. Multichannel images average the per-channel maps (skimage ``channel_axis``).
"""
from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from medgen.registry import METRICS, register

__all__ = ["psnr", "ssim", "mae", "mse", "ssim_map_valid", "ssim_window", "SSIM_KERNELS", "check_inputs",
           "check_data_range", "MetricInputError", "RANGE_SLACK"]

SSIM_KERNELS = ("uniform", "gaussian")
SSIM_K1, SSIM_K2 = 0.01, 0.03  # stabilising constants of Wang et al. 2004 (C = (K * data_range)^2)
RANGE_SLACK = 1e-6  # relative tolerance of the target-span <= data_range check (float round-off)


class MetricInputError(ValueError):
    """Invalid inputs to an image-quality metric (shapes, NaN/Inf, mask, ``data_range``)."""


def _sample_list(bad: torch.Tensor) -> list[int]:
    """Indices of the ``True`` entries of a ``[B]`` bool tensor."""
    return torch.nonzero(bad).flatten().tolist()


def check_inputs(pred: torch.Tensor, target: torch.Tensor, data_range: float, mask: torch.Tensor | None,
                 name: str) -> torch.Tensor | None:
    """Validate metric inputs; return the mask as float64 broadcastable to ``pred`` (or None).

    ``pred``/``target`` ``[B, C, H, W]`` or ``[B, C, D, H, W]`` of one shape, finite;
    ``data_range > 0``; ``mask`` ``[B, 1 or C, *S]`` in {0, 1} with at least one pixel per
    sample; :func:`check_data_range` (the target's span per sample at most ``data_range``). ``pred`` is not range-checked (see the module docstring).
    Raises :class:`MetricInputError` (a ``ValueError``) with a one-line message starting ``name:``.
    """
    if pred.shape != target.shape:
        raise MetricInputError(f"{name}: pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    if pred.ndim not in (4, 5):
        raise MetricInputError(f"{name}: expected [B, C, H, W] or [B, C, D, H, W], got shape {tuple(pred.shape)}")
    if pred.numel() == 0:
        raise MetricInputError(f"{name}: empty input of shape {tuple(pred.shape)}")
    if not (data_range > 0) or data_range == float("inf"):
        raise MetricInputError(f"{name}: data_range must be finite and > 0, got {data_range}")
    for label, t in (("pred", pred), ("target", target)):
        bad = ~torch.isfinite(t).flatten(1).all(1)
        if bad.any():
            raise MetricInputError(f"{name}: {label} contains NaN or Inf in sample(s) {_sample_list(bad)}")
    if mask is not None:
        if mask.ndim != pred.ndim or mask.shape[0] != pred.shape[0] or mask.shape[2:] != pred.shape[2:] \
                or mask.shape[1] not in (1, pred.shape[1]):
            raise MetricInputError(f"{name}: mask {tuple(mask.shape)} does not match pred {tuple(pred.shape)} "
                                   f"(expected [B, 1 or C, *S])")
        mask = mask.to(device=pred.device, dtype=torch.float64)
        if not torch.isfinite(mask).all() or ((mask != 0) & (mask != 1)).any():
            raise MetricInputError(f"{name}: mask must contain only 0 and 1")
        empty = mask.flatten(1).sum(1) == 0
        if empty.any():
            raise MetricInputError(f"{name}: mask is empty for sample(s) {_sample_list(empty)}")
    check_data_range(target, data_range, mask, name)
    return mask


def check_data_range(target: torch.Tensor, data_range: float, mask: torch.Tensor | None = None,
                     name: str = "metric") -> None:
    """Raise :class:`MetricInputError` if ``max - min`` of ``target`` ``[B, C, *S]`` exceeds ``data_range``.

    Per sample, over channels and voxels within ``mask`` (``[B, 1 or C, *S]`` in {0, 1}, already
    validated; an empty mask passes here), with relative slack ``RANGE_SLACK``.
    """
    t = target.detach().double().flatten(1)
    if mask is None:
        hi, lo = t.amax(1), t.amin(1)
    else:
        inside = mask.expand_as(target).flatten(1) > 0
        hi = torch.where(inside, t, -torch.inf).amax(1)
        lo = torch.where(inside, t, torch.inf).amin(1)
    span = hi - lo                                            # [B] value span per sample
    bad = span > float(data_range) * (1.0 + RANGE_SLACK)
    if bad.any():
        worst = int(torch.argmax(torch.where(bad, span, -torch.inf)))
        raise MetricInputError(f"{name}: target spans {span[worst].item():g} but data_range is {data_range:g} "
                               f"(sample(s) {_sample_list(bad)}; images in HU? pass data_range=...)")


def _masked_mean(values: torch.Tensor, mask: torch.Tensor | None, name: str) -> torch.Tensor:
    """Mean of ``values`` ``[B, C, *S]`` over everything but the batch, within ``mask``."""
    if mask is None:
        return values.flatten(1).mean(1)
    weight = mask.expand_as(values).flatten(1)
    count = weight.sum(1)
    if (count == 0).any():
        raise MetricInputError(f"{name}: mask is empty for sample(s) {_sample_list(count == 0)}")
    return (values.flatten(1) * weight).sum(1) / count


def mse(pred: torch.Tensor, target: torch.Tensor, *, data_range: float, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error per sample ``[B]`` (float64) of ``pred``/``target`` ``[B, C, *S]``.

    ``data_range`` is validated and recorded by callers but does not scale the value.
    """
    m = check_inputs(pred, target, data_range, mask, "mse")
    return _masked_mean((pred.double() - target.double()) ** 2, m, "mse")


def mae(pred: torch.Tensor, target: torch.Tensor, *, data_range: float, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean absolute error per sample ``[B]`` (float64) of ``pred``/``target`` ``[B, C, *S]``."""
    m = check_inputs(pred, target, data_range, mask, "mae")
    return _masked_mean((pred.double() - target.double()).abs(), m, "mae")


def psnr(pred: torch.Tensor, target: torch.Tensor, *, data_range: float, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per sample ``[B]``: ``10 log10(data_range^2 / MSE)``.

    ``pred``/``target``: ``[B, C, *S]``; ``inf`` where the images are identical.
    """
    m = check_inputs(pred, target, data_range, mask, "psnr")
    err = _masked_mean((pred.double() - target.double()) ** 2, m, "psnr")
    return 10.0 * torch.log10(float(data_range) ** 2 / err)


def ssim_window(win_size: int, kernel: str, sigma: float) -> torch.Tensor:
    """The 1D SSIM window ``[win_size]`` (float64, sums to 1); the nD window is its outer product.

    ``"uniform"``: ``1 / win_size`` each; ``"gaussian"``: ``exp(-d^2 / (2 sigma^2))`` at offsets
    ``d = -(win_size - 1) / 2 .. (win_size - 1) / 2``, normalised (MONAI's ``_gaussian_kernel``).
    """
    if kernel == "uniform":
        w = torch.ones(win_size, dtype=torch.float64)
    else:
        d = torch.arange(win_size, dtype=torch.float64) - (win_size - 1) / 2
        w = torch.exp(-0.5 * (d / sigma) ** 2)
    return w / w.sum()


def ssim_map_valid(pred: torch.Tensor, target: torch.Tensor, *, data_range: float, win_size: int = 7,
                   kernel: str = "uniform", sigma: float = 1.5) -> torch.Tensor:
    """SSIM map ``[B, C, *(S - win_size + 1)]`` (float64, "valid" windows) of ``[B, C, *S]`` images.

    No input checks (see :func:`ssim`). The formula of Wang et al. 2004 with population
    (co)variances, ``K1 = 0.01``, ``K2 = 0.03``: what MONAI's ``compute_ssim_and_cs`` computes,
    but MONAI convolves with the full ``win^n`` kernel in float32, 5-13x slower than
    scikit-image on CPU. Here each (sample, channel) image is filtered on the CPU in float64
    with the separable 1D :func:`ssim_window` along each axis (``scipy.ndimage``'s
    ``uniform_filter1d`` for the uniform window, ``correlate1d`` for the Gaussian), one image
    at a time so the local-moment maps stay in cache (as scikit-image does); only windows
    entirely inside the image are kept, so the boundary mode never matters. The result is
    returned on the input's device.
    """
    b, c, *spatial = pred.shape
    n, pad = len(spatial), (win_size - 1) // 2
    w = ssim_window(win_size, kernel, sigma).numpy()
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    xs = pred.detach().cpu().double().numpy().reshape(b * c, *spatial)
    ys = target.detach().cpu().double().numpy().reshape(b * c, *spatial)
    valid = tuple(slice(pad, s - pad) for s in spatial)  # window centres of windows inside the image

    def local_mean(a: np.ndarray) -> np.ndarray:
        """Window-weighted mean around every valid centre (the separable window, axis by axis)."""
        for axis in range(n):
            a = (ndimage.uniform_filter1d(a, win_size, axis=axis) if kernel == "uniform"
                 else ndimage.correlate1d(a, w, axis=axis))
        return a[valid]

    out = np.empty((b * c, *(s - 2 * pad for s in spatial)), dtype=np.float64)
    for i in range(b * c):
        x, y = xs[i], ys[i]
        # step 1: local means of x, y, x^2, y^2, xy (one image at a time: the maps stay in cache)
        mu_x, mu_y, e_xx, e_yy, e_xy = (local_mean(v) for v in (x, y, x * x, y * y, x * y))
        # step 2: population (co)variances in each window
        var_x, var_y, cov = e_xx - mu_x * mu_x, e_yy - mu_y * mu_y, e_xy - mu_x * mu_y
        # step 3: luminance term x contrast-structure term, with the stabilising constants
        out[i] = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)
                  / ((mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2)))
    return torch.from_numpy(out).reshape(b, c, *out.shape[1:]).to(pred.device)


def ssim(pred: torch.Tensor, target: torch.Tensor, *, data_range: float, mask: torch.Tensor | None = None,
         win_size: int = 7, kernel: str = "uniform", sigma: float = 1.5) -> torch.Tensor:
    """Structural similarity per sample ``[B]`` (2D or 3D), mean of the SSIM map.

    ``pred``/``target``: ``[B, C, H, W]`` or ``[B, C, D, H, W]``; ``mask``: ``[B, 1 or C, *S]``,
    applied to window centres. ``kernel``: ``"uniform"`` (skimage's default window) or
    ``"gaussian"`` (``sigma``); ``win_size`` odd and at most every spatial size. A metric, not
    a loss: computed on detached CPU copies (no gradient; see :func:`ssim_map_valid`).
    """
    m = check_inputs(pred, target, data_range, mask, "ssim")
    if kernel not in SSIM_KERNELS:
        raise ValueError(f"ssim: unknown kernel '{kernel}' (choose from {', '.join(SSIM_KERNELS)})")
    if win_size < 3 or win_size % 2 == 0:
        raise ValueError(f"ssim: win_size must be odd and >= 3, got {win_size}")
    spatial = tuple(pred.shape[2:])
    if min(spatial) < win_size:
        raise ValueError(f"ssim: image size {spatial} is smaller than win_size {win_size}")
    dims = len(spatial)
    ssim_map = ssim_map_valid(pred, target, data_range=data_range, win_size=win_size, kernel=kernel, sigma=sigma)
    if m is not None:
        pad = (win_size - 1) // 2
        m = m[(slice(None), slice(None)) + (slice(pad, -pad),) * dims]  # window centres of the valid map
        empty = m.flatten(1).sum(1) == 0
        if empty.any():
            raise MetricInputError(f"ssim: mask has no pixel {pad} or more px from the border (no window centre) "
                                   f"in sample(s) {_sample_list(empty)}")
    return _masked_mean(ssim_map.double(), m, "ssim")


for _name, _fn in (("psnr", psnr), ("ssim", ssim), ("mae", mae), ("mse", mse)):
    register(METRICS, _name)(_fn)

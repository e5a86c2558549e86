"""Full-reference image-quality metrics, one value per sample.

Every metric has the signature ``fn(pred, target, *, data_range, mask=None) -> [B]`` with
``pred`` and ``target`` ``[B, C, H, W]`` or ``[B, C, D, H, W]`` and ``mask`` ``[B, 1, *S]`` or
``[B, C, *S]`` in {0, 1} (``None``: every voxel). ``data_range`` is explicit and is never
derived from the images (model range ``[-1, 1]`` has ``data_range=2``). Aggregation across
samples or subjects is a separate step (:mod:`medgen.evaluate`).

* PSNR, MSE and MAE are masked means over channels and voxels, computed in float64; PSNR
  equals ``skimage.metrics.peak_signal_noise_ratio`` (``inf`` for identical images).
* SSIM maps come from MONAI's ``compute_ssim_and_cs`` (the function behind
  ``monai.metrics.SSIMMetric``), which filters with "valid" convolutions and the population
  (not sample) covariance. It therefore equals ``skimage.metrics.structural_similarity``
  called with ``use_sample_covariance=False`` and the same ``data_range``:
  ``kernel="uniform", win_size=7`` <-> ``win_size=7``; ``kernel="gaussian", win_size=11,
  sigma=1.5`` <-> ``gaussian_weights=True, sigma=1.5`` (Wang et al. 2004). skimage also
  averages only the ``(win_size - 1) // 2``-cropped interior, exactly the valid region MONAI
  returns. With a mask, SSIM is the mean of the map over the windows whose *centre* lies in
  the mask. Multichannel images average the per-channel maps (skimage ``channel_axis``).
"""
from __future__ import annotations

import torch
from monai.metrics.regression import compute_ssim_and_cs

from medgen.registry import METRICS, register

__all__ = ["psnr", "ssim", "mae", "mse", "SSIM_KERNELS"]

SSIM_KERNELS = ("uniform", "gaussian")


def _check(pred: torch.Tensor, target: torch.Tensor, data_range: float, mask: torch.Tensor | None,
           name: str) -> torch.Tensor | None:
    """Validate inputs; return the mask as float64 broadcastable to ``pred`` (or None)."""
    if pred.shape != target.shape:
        raise ValueError(f"{name}: pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    if pred.ndim not in (4, 5):
        raise ValueError(f"{name}: expected [B, C, H, W] or [B, C, D, H, W], got shape {tuple(pred.shape)}")
    if not (data_range > 0):
        raise ValueError(f"{name}: data_range must be > 0, got {data_range}")
    for label, t in (("pred", pred), ("target", target)):
        if not torch.isfinite(t).all():
            raise ValueError(f"{name}: {label} contains NaN or Inf")
    if mask is None:
        return None
    if mask.ndim != pred.ndim or mask.shape[0] != pred.shape[0] or mask.shape[2:] != pred.shape[2:] \
            or mask.shape[1] not in (1, pred.shape[1]):
        raise ValueError(f"{name}: mask {tuple(mask.shape)} does not match pred {tuple(pred.shape)} "
                         f"(expected [B, 1 or C, *S])")
    mask = mask.to(device=pred.device, dtype=torch.float64)
    if not torch.isfinite(mask).all() or ((mask != 0) & (mask != 1)).any():
        raise ValueError(f"{name}: mask must contain only 0 and 1")
    return mask


def _masked_mean(values: torch.Tensor, mask: torch.Tensor | None, name: str) -> torch.Tensor:
    """Mean of ``values`` ``[B, C, *S]`` over everything but the batch, within ``mask``."""
    if mask is None:
        return values.flatten(1).mean(1)
    weight = mask.expand_as(values).flatten(1)
    count = weight.sum(1)
    if (count == 0).any():
        raise ValueError(f"{name}: mask is empty for sample(s) {torch.nonzero(count == 0).flatten().tolist()}")
    return (values.flatten(1) * weight).sum(1) / count


def mse(pred: torch.Tensor, target: torch.Tensor, *, data_range: float, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error per sample ``[B]`` (float64) of ``pred``/``target`` ``[B, C, *S]``.

    ``data_range`` is validated and recorded by callers but does not scale the value.
    """
    m = _check(pred, target, data_range, mask, "mse")
    return _masked_mean((pred.double() - target.double()) ** 2, m, "mse")


def mae(pred: torch.Tensor, target: torch.Tensor, *, data_range: float, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean absolute error per sample ``[B]`` (float64) of ``pred``/``target`` ``[B, C, *S]``."""
    m = _check(pred, target, data_range, mask, "mae")
    return _masked_mean((pred.double() - target.double()).abs(), m, "mae")


def psnr(pred: torch.Tensor, target: torch.Tensor, *, data_range: float, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per sample ``[B]``: ``10 log10(data_range^2 / MSE)``.

    ``pred``/``target``: ``[B, C, *S]``; ``inf`` where the images are identical.
    """
    m = _check(pred, target, data_range, mask, "psnr")
    err = _masked_mean((pred.double() - target.double()) ** 2, m, "psnr")
    return 10.0 * torch.log10(float(data_range) ** 2 / err)


def ssim(pred: torch.Tensor, target: torch.Tensor, *, data_range: float, mask: torch.Tensor | None = None,
         win_size: int = 7, kernel: str = "uniform", sigma: float = 1.5) -> torch.Tensor:
    """Structural similarity per sample ``[B]`` (2D or 3D), mean of the SSIM map.

    ``pred``/``target``: ``[B, C, H, W]`` or ``[B, C, D, H, W]``; ``mask``: ``[B, 1 or C, *S]``,
    applied to window centres. ``kernel``: ``"uniform"`` (skimage's default window) or
    ``"gaussian"`` (``sigma``); ``win_size`` odd and at most every spatial size.
    """
    m = _check(pred, target, data_range, mask, "ssim")
    if kernel not in SSIM_KERNELS:
        raise ValueError(f"ssim: unknown kernel '{kernel}' (choose from {', '.join(SSIM_KERNELS)})")
    if win_size < 3 or win_size % 2 == 0:
        raise ValueError(f"ssim: win_size must be odd and >= 3, got {win_size}")
    spatial = tuple(pred.shape[2:])
    if min(spatial) < win_size:
        raise ValueError(f"ssim: image size {spatial} is smaller than win_size {win_size}")
    dims = len(spatial)
    ssim_map, _ = compute_ssim_and_cs(pred.double(), target.double(), spatial_dims=dims,
                                      kernel_size=(win_size,) * dims, kernel_sigma=(sigma,) * dims,
                                      data_range=float(data_range), kernel_type=kernel)
    if m is not None:
        pad = (win_size - 1) // 2
        m = m[(slice(None), slice(None)) + (slice(pad, -pad),) * dims]
    return _masked_mean(ssim_map.double(), m, "ssim")


for _name, _fn in (("psnr", psnr), ("ssim", ssim), ("mae", mae), ("mse", mse)):
    register(METRICS, _name)(_fn)

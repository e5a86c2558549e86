"""Region-based and volume metrics: SNR and CNR (enhancement paper, Eq. 12-13) and the adjacent-slice
correlation of a volume (Xray2MRI, Fig. 6). One value per sample.

SNR and CNR are no-reference: they read one image and two regions of interest,

    SNR = 20 log10((1 - mu_s) / sigma_b)                       (Eq. 12)
    CNR = 20 log10(|mu_s - mu_b| / sqrt(sigma_s^2 + sigma_b^2))  (Eq. 13)

with ``s`` the signal region (the hypoechoic area of the spine, from the segmentation) and ``b``
the background region; mu and sigma are each region's mean and (population) standard deviation.
Eq. 12's ``1 - mu_s`` presumes intensities on a [0, 1] scale, so the image is first mapped there
with the explicit ``low`` and ``data_range`` (never by the image's own min/max). The paper writes
``log``; dB values of its size (tens) imply log10, which is used here.

SNR checks that the signal mean lies within ``[low, low + data_range]`` (a data-range or units
mismatch otherwise gives a silently wrong or NaN value); CNR is scale-free and needs no check.

Written by hand: neither MONAI, scikit-image nor torchmetrics has these region definitions.
"""
from __future__ import annotations

import torch

__all__ = ["snr", "cnr", "adjacent_slice_correlation"]

SNR_SLACK = 1e-6  # relative slack of the "signal mean within [low, low + data_range]" check of snr


def _regions(image: torch.Tensor, signal: torch.Tensor, background: torch.Tensor, data_range: float,
             low: float, name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Check inputs; return ``(x [B, N] on the [0, 1] scale, signal [B, N], background [B, N])`` as float64."""
    if image.ndim not in (4, 5):
        raise ValueError(f"{name}: expected image [B, C, H, W] or [B, C, D, H, W], got shape {tuple(image.shape)}")
    if not data_range > 0:
        raise ValueError(f"{name}: data_range must be positive, got {data_range}")
    if not torch.isfinite(image).all():
        raise ValueError(f"{name}: image contains NaN or Inf")
    b = image.shape[0]
    x = ((image.double() - low) / data_range).reshape(b, -1)
    masks = []
    for label, m in (("signal", signal), ("background", background)):
        m = torch.as_tensor(m).expand_as(image).reshape(b, -1) > 0
        empty = (m.sum(1) == 0).nonzero().flatten().tolist()
        if empty:
            raise ValueError(f"{name}: the {label} region is empty in sample(s) {empty}")
        masks.append(m)
    return x, masks[0], masks[1]


def _mean_std(x: torch.Tensor, m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Masked mean and population standard deviation per row of ``x [B, N]``."""
    n = m.sum(1)
    mean = (x * m).sum(1) / n
    var = (((x - mean[:, None]) ** 2) * m).sum(1) / n
    return mean, var.sqrt()


def snr(image: torch.Tensor, *, signal: torch.Tensor, background: torch.Tensor, data_range: float,
        low: float = 0.0) -> torch.Tensor:
    """Eq. 12 in dB per sample ``[B]``.

    ``image`` ``[B, C, *S]``; ``signal`` / ``background`` masks broadcastable to it (``[B, 1, *S]``),
    non-empty in every sample. ``low`` and ``data_range`` map the image onto [0, 1] (model range
    [-1, 1]: ``low=-1, data_range=2``); the signal-region mean must lie in ``[low, low +
    data_range]`` (else ValueError: wrong units). ``inf`` when the background is constant (or a
    huge value, ~300 dB, when float round-off leaves a tiny sigma_b),
    ``NaN`` when in addition the signal mean is at the top of the range (0/0).
    """
    x, s, bg = _regions(image, signal, background, data_range, low, "snr")
    mu_s, _ = _mean_std(x, s)
    _, sd_b = _mean_std(x, bg)
    # Eq. 12 needs mu_s on the [0, 1] scale (above 1: log of a negative number); outside it the
    # image is not in the units that low / data_range describe (HU scored with data_range=2 ...)
    bad = ((mu_s < -SNR_SLACK) | (mu_s > 1.0 + SNR_SLACK)).nonzero().flatten().tolist()
    if bad:
        raise ValueError(f"snr: signal mean {float(mu_s[bad[0]] * data_range + low):g} lies outside "
                         f"[low, low + data_range] = [{low:g}, {low + data_range:g}] in sample(s) {bad} "
                         f"(images in HU? pass data_range= and low=)")
    return 20.0 * torch.log10((1.0 - mu_s) / sd_b)


def cnr(image: torch.Tensor, *, signal: torch.Tensor, background: torch.Tensor, data_range: float,
        low: float = 0.0) -> torch.Tensor:
    """Eq. 13 in dB per sample ``[B]`` (arguments as :func:`snr`).

    Invariant to ``low`` and ``data_range`` (an affine map cancels), so no range check.
    ``inf`` for two constant regions of different means, ``-inf`` for equal means with some
    variance, ``NaN`` for two constant regions of equal mean (0/0).
    """
    x, s, bg = _regions(image, signal, background, data_range, low, "cnr")
    mu_s, sd_s = _mean_std(x, s)
    mu_b, sd_b = _mean_std(x, bg)
    return 20.0 * torch.log10((mu_s - mu_b).abs() / (sd_s**2 + sd_b**2).sqrt())


def adjacent_slice_correlation(volume: torch.Tensor, *, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean Pearson correlation of consecutive slices along ``D`` per sample ``[B]``.

    ``volume`` ``[B, C, D, H, W]`` (slices along D, as the knee MRI's S axis); ``mask`` ``[B, 1, D, H, W]``
    restricts the pixels of each slice pair (where both slices are in the mask). Scale-free, so no
    ``data_range``. Pairs with a constant slice have no correlation and are skipped; a sample with no
    valid pair (e.g. a constant volume) is NaN. A mask with no pixel in any two adjacent slices of a
    sample is an error (ValueError naming the samples).
    """
    if volume.ndim != 5 or volume.shape[2] < 2:
        raise ValueError(f"adjacent_slice_correlation: expected [B, C, D, H, W] with D >= 2, got {tuple(volume.shape)}")
    if not torch.isfinite(volume).all():
        raise ValueError("adjacent_slice_correlation: volume contains NaN or Inf")
    v = volume.double().transpose(1, 2)  # [B, D, C, H, W]
    b, d = v.shape[:2]
    m = torch.ones_like(v, dtype=torch.bool) if mask is None else torch.as_tensor(mask).expand_as(volume).transpose(1, 2) > 0
    a, c = v[:, :-1].reshape(b, d - 1, -1), v[:, 1:].reshape(b, d - 1, -1)  # [B, D-1, N] slice pairs
    w = (m[:, :-1] & m[:, 1:]).reshape(b, d - 1, -1).double()
    empty = (w.flatten(1).sum(1) == 0).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"adjacent_slice_correlation: the mask covers no pixel of two adjacent slices "
                         f"in sample(s) {empty}")
    n = w.sum(-1).clamp_min(1)
    a0 = a - (a * w).sum(-1, keepdim=True) / n[..., None]
    c0 = c - (c * w).sum(-1, keepdim=True) / n[..., None]
    cov = (a0 * c0 * w).sum(-1)
    den = ((a0**2 * w).sum(-1) * (c0**2 * w).sum(-1)).sqrt()
    r = torch.where(den > 0, cov / den.clamp_min(1e-300), torch.nan)  # [B, D-1]
    return torch.nanmean(r, dim=1)

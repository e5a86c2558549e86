"""Structural image metrics from the reproduced papers, one value per sample.

* :func:`rssim` - region-specific SSIM of Xray2MRI (knee volume paper, Sec. 4.1): Canny edges
  (``sigma=3``) of each image, then SSIM of the two edge maps inside a region of interest
  (the knee phantom's ``rssim_mask``).
* :func:`spine_mask` - the MRI->CT spine paper's evaluation mask: pixels farther than 10 px
  from the segmented spine are dropped (set to zero there).
* :func:`ms_ssim` - multi-scale SSIM (Wang et al. 2003), MONAI's per-scale SSIM; fewer scales with
  renormalised weights on images under 176 px (:func:`ms_ssim_scales`, :func:`ms_ssim_weights`).
* :func:`vifp` - pixel-domain visual information fidelity (Sheikh & Bovik 2006), reported by the
  MRI->CT spine paper, via ``torchmetrics.functional.image.visual_information_fidelity``.

Conventions follow :mod:`medgen.metrics.image`: ``pred``/``target`` ``[B, C, H, W]`` (or
``[B, C, D, H, W]`` where stated), explicit ``data_range``, results ``[B]`` float64.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from monai.metrics.regression import compute_ssim_and_cs
from scipy import ndimage
from skimage.feature import canny
from torchmetrics.functional.image import visual_information_fidelity

from medgen.metrics.image import check_inputs, ssim
from medgen.registry import METRICS, register

__all__ = ["rssim", "spine_mask", "ms_ssim", "ms_ssim_scales", "ms_ssim_weights", "RSSIM_SIGMA", "SPINE_DISTANCE_PX", "MS_SSIM_WEIGHTS", "vifp"]

RSSIM_SIGMA = 3.0          # Canny Gaussian sigma used by Xray2MRI for bone edges
SPINE_DISTANCE_PX = 10     # MRI->CT paper: pixels farther than this from the spine are masked
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # Wang et al. 2003, 5 scales
MS_SSIM_KERNEL = 11        # Gaussian window size (sigma 1.5), as in Wang et al.
MS_SSIM_SIGMA = 1.5
VIF_SIGMA_N_SQ = 2.0       # HVS noise variance of VIFp, defined for 8-bit images (range 255)
VIF_MIN_SIZE = 41          # smallest side torchmetrics' 4-scale VIFp accepts


def _edges(x: torch.Tensor, data_range: float, sigma: float) -> torch.Tensor:
    """Binary Canny edge maps (float64 0/1) of ``x`` ``[B, C, H, W]``, per 2D channel image.

    The image is divided by ``data_range`` first, so skimage's default absolute hysteresis
    thresholds (0.1 / 0.2 of the gradient magnitude for float input) act on a unit range.
    """
    arr = x.detach().cpu().double().numpy() / float(data_range)
    out = np.zeros(arr.shape, dtype=np.float64)
    for b in range(arr.shape[0]):
        for c in range(arr.shape[1]):
            out[b, c] = canny(arr[b, c], sigma=sigma)
    return torch.from_numpy(out)


def rssim(pred: torch.Tensor, target: torch.Tensor, *, data_range: float, roi: torch.Tensor,
          sigma: float = RSSIM_SIGMA, win_size: int = 7) -> torch.Tensor:
    """Region-specific SSIM per sample ``[B]`` (float64) of ``pred``/``target`` ``[B, C, H, W]``.

    Steps: (1) Canny edges (``sigma``) of each 2D image after scaling by ``data_range``;
    (2) :func:`medgen.metrics.image.ssim` of the binary edge maps with ``data_range=1``
    (edges are 0/1), uniform window ``win_size``, averaged over windows whose centre lies in
    ``roi`` ``[B, 1, H, W]`` (0/1). Identical images give 1. Volumes ``[B, C, D, H, W]`` (the
    knee MRI stack) take a 2D ``roi`` ``[B, 1, H, W]`` shared by every slice and average the
    per-slice RSSIM over the ``D`` slices. Not registered (extra ``roi`` argument).
    """
    if pred.ndim == 5:  # fold slices into the batch: [B, C, D, H, W] -> [B * D, C, H, W]
        b, c, d, h, w = pred.shape
        if roi.shape != (b, 1, h, w):
            raise ValueError(f"rssim: roi {tuple(roi.shape)} does not match volume {tuple(pred.shape)} "
                             f"(expected [B, 1, H, W])")
        fold = lambda x: x.permute(0, 2, 1, 3, 4).reshape(b * d, c, h, w)  # noqa: E731
        per_slice = rssim(fold(pred), fold(target), data_range=data_range,
                          roi=roi.repeat_interleave(d, dim=0), sigma=sigma, win_size=win_size)
        return per_slice.view(b, d).mean(1)
    check_inputs(pred, target, data_range, roi, "rssim")
    if pred.ndim != 4:
        raise ValueError(f"rssim: expected [B, C, H, W] or [B, C, D, H, W], got shape {tuple(pred.shape)}")
    e_pred = _edges(pred, data_range, sigma)
    e_target = _edges(target, data_range, sigma)
    return ssim(e_pred, e_target, data_range=1.0, mask=roi.cpu(), win_size=win_size)


def spine_mask(labels: torch.Tensor, distance_px: float = SPINE_DISTANCE_PX) -> torch.Tensor:
    """Evaluation mask ``[B, 1, *S]`` (float 0/1) keeping pixels within ``distance_px`` of the spine.

    ``labels``: ``[B, *S]`` (2D or 3D), nonzero = spine. Euclidean distance of every pixel to
    the nearest spine pixel (``scipy.ndimage.distance_transform_edt`` of the background); a
    pixel is kept when that distance is ``<= distance_px`` (spine pixels have distance 0).
    The paper zeroes the dropped pixels of both images and scores the whole image
    (``pred * m``, ``target * m``); passing ``m`` as a metric's ``mask`` instead averages
    only over kept pixels -- a different number (the zeros inflate PSNR/SSIM).
    """
    if labels.ndim not in (3, 4):
        raise ValueError(f"spine_mask: expected labels [B, H, W] or [B, D, H, W], got shape {tuple(labels.shape)}")
    if not (distance_px >= 0):
        raise ValueError(f"spine_mask: distance_px must be >= 0, got {distance_px}")
    spine = labels.detach().cpu().numpy() != 0
    out = np.zeros(spine.shape, dtype=np.float32)
    for b in range(spine.shape[0]):
        if not spine[b].any():
            raise ValueError(f"spine_mask: sample {b} has no spine pixels")
        dist = ndimage.distance_transform_edt(~spine[b])  # distance to nearest spine pixel
        out[b] = dist <= distance_px
    return torch.from_numpy(out).unsqueeze(1).to(labels.device)


def ms_ssim_scales(spatial_shape: tuple[int, ...] | torch.Size) -> int:
    """Scales :func:`ms_ssim` uses for images of spatial size ``spatial_shape`` (``(H, W)`` or ``(D, H, W)``).

    The most scales, up to 5, whose coarsest image (every side halved ``scales - 1`` times, floored,
    as the 2x average pooling does) still holds the 11-px window: ``min(S) // 2**(scales-1) >= 11``.
    5 scales need every side >= 176, 4 >= 88, 3 >= 44, 2 >= 22, 1 >= 11. A side below 11 is a
    one-line ``ValueError`` naming the size and the minimum.
    """
    spatial = tuple(int(s) for s in spatial_shape)
    side = min(spatial) if spatial else 0
    if side < MS_SSIM_KERNEL:
        raise ValueError(f"ms_ssim: image size {spatial} is smaller than the {MS_SSIM_KERNEL}-px window "
                         f"(every side must be >= {MS_SSIM_KERNEL}; 5 scales need >= {MS_SSIM_KERNEL * 16})")
    scales = 1
    while scales < len(MS_SSIM_WEIGHTS) and side // 2 ** scales >= MS_SSIM_KERNEL:
        scales += 1
    return scales


def ms_ssim_weights(scales: int) -> tuple[float, ...]:
    """The scale weights for ``scales`` scales: Wang et al.'s 5 (:data:`MS_SSIM_WEIGHTS`, as published,
    summing to 1.0001) at 5 scales; fewer: the first ``scales`` of them divided by their sum."""
    if not 1 <= scales <= len(MS_SSIM_WEIGHTS):
        raise ValueError(f"ms_ssim: scales must be in 1..{len(MS_SSIM_WEIGHTS)}, got {scales}")
    if scales == len(MS_SSIM_WEIGHTS):
        return MS_SSIM_WEIGHTS
    head = MS_SSIM_WEIGHTS[:scales]
    return tuple(w / sum(head) for w in head)


def ms_ssim(pred: torch.Tensor, target: torch.Tensor, *, data_range: float,
            mask: torch.Tensor | None = None) -> torch.Tensor:
    """Multi-scale SSIM per sample ``[B]`` (float64), ``[B, C, H, W]`` or ``[B, C, D, H, W]``.

    Wang et al. 2003: Gaussian window 11, sigma 1.5, "valid" filtering (no padding), 2x average
    pooling between scales; ``prod_j cs_j ** w_j`` over the scales with the last scale's full SSIM
    (each term clamped at 0). Scales: :func:`ms_ssim_scales` of the image size -- 5 from 176 px
    on (then equal to ``monai.metrics.MultiScaleSSIMMetric``), fewer on smaller images with the
    weights truncated and renormalised (:func:`ms_ssim_weights`); 1 scale is the mean SSIM. An
    image with a side below 11 px is an error. The count is not in the ``[B]`` values: it is
    ``ms_ssim_scales(pred.shape[2:])``, and :func:`medgen.score.score` records it in the
    ``ms_ssim_scales`` column of the ms_ssim rows (:attr:`ms_ssim.row_notes`). ``mask`` is not
    supported (must be None). torchmetrics' version differs (~1e-3): it reflect-pads and averages
    the last-scale SSIM map over the padded borders too.

    The loop over scales is MONAI's ``compute_ms_ssim`` with MONAI's per-scale SSIM and CS
    (``compute_ssim_and_cs``); it is not called directly because its size check, ``side //
    (n_weights - 1)**2 > 10``, is the right rule only for 1, 3 and 5 weights.
    """
    check_inputs(pred, target, data_range, None, "ms_ssim")
    if mask is not None:
        raise ValueError("ms_ssim: masks are not supported")
    spatial_dims = pred.ndim - 2
    weights = ms_ssim_weights(ms_ssim_scales(pred.shape[2:]))
    x, y = pred.double(), target.double()
    pool = (F.avg_pool2d, F.avg_pool3d)[spatial_dims - 2]
    terms = []
    for j in range(len(weights)):
        if j:
            x, y = pool(x, kernel_size=2), pool(y, kernel_size=2)
        ssim_map, cs_map = compute_ssim_and_cs(x, y, spatial_dims, kernel_size=(MS_SSIM_KERNEL,) * spatial_dims,
                                               kernel_sigma=(MS_SSIM_SIGMA,) * spatial_dims,
                                               data_range=float(data_range), kernel_type="gaussian")
        last = j == len(weights) - 1
        terms.append(torch.relu((ssim_map if last else cs_map).flatten(1).mean(1)))
    # float32 weights, as MONAI's compute_ms_ssim: 5 scales equal MultiScaleSSIMMetric to the bit
    w = torch.tensor(weights, dtype=torch.float, device=x.device).view(-1, 1)
    return torch.prod(torch.stack(terms) ** w, dim=0).double()


ms_ssim.row_notes = lambda pred: {"ms_ssim_scales": ms_ssim_scales(pred.shape[2:])}  # type: ignore[attr-defined]


def vifp(pred: torch.Tensor, target: torch.Tensor, *, data_range: float,
         mask: torch.Tensor | None = None) -> torch.Tensor:
    """Pixel-domain VIF per sample ``[B]`` (float64) of 2D ``pred``/``target`` ``[B, C, H, W]``.

    ``target`` is the reference. Both images are rescaled by ``255 / data_range`` so the fixed
    HVS noise variance ``sigma_n^2 = 2`` means what it does for 8-bit images (VIF uses only
    local variances, so offsets do not matter). 4 scales with Gaussian windows 17, 9, 5, 3
    ("valid" filtering); every side must be >= 41. Channels are averaged. Identical images
    give 1. Computed in float32 after removing the target's mean (see the code comment).
    ``mask`` is not supported (must be None). A constant ``target`` (no local variance
    anywhere) carries no information, VIF's denominator is 0 and the value is ``NaN`` (also for
    ``pred == target``); a constant ``pred`` against a structured target gives 0.
    """
    check_inputs(pred, target, data_range, None, "vifp")
    if mask is not None:
        raise ValueError("vifp: masks are not supported")
    if pred.ndim != 4:
        raise ValueError(f"vifp: expected 2D images [B, C, H, W], got shape {tuple(pred.shape)}")
    if min(pred.shape[2:]) < VIF_MIN_SIZE:
        raise ValueError(f"vifp: image size {tuple(pred.shape[2:])} too small (every side must be >= {VIF_MIN_SIZE})")
    # 8-bit scale; subtract the target's mean (VIF uses only local (co)variances) so float32
    # E[x^2] - E[x]^2 loses little: within ~1e-6 of float64, which is ~15x slower on CPU
    scale = 255.0 / float(data_range)
    offset = target.double().mean(dim=(1, 2, 3), keepdim=True)
    p32 = ((pred.double() - offset) * scale).float()
    t32 = ((target.double() - offset) * scale).float()
    return visual_information_fidelity(p32, t32, sigma_n_sq=VIF_SIGMA_N_SQ, reduction="none").double()


register(METRICS, "ms_ssim")(ms_ssim)
register(METRICS, "vifp")(vifp)

"""Metrics of reconstructions ``[N, B, 1, H, W]`` (N samples) against the truth ``[B, 1, H, W]``.

:func:`reconstruction_metrics` (a table: PSNR, SSIM, RMS measurement residual, aeration and its
category), :func:`mean_sd_maps` (pixelwise mean / SD over samples), and :func:`residual_metric` /
:func:`aeration_error_metric`, the residual and aeration error as metrics for :func:`medgen.score.score`.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import pandas as pd
import torch
from torch import nn

from medgen.data.phantoms.lung import aeration_category, aeration_from_model
from medgen.inverse.operators import InverseError, residual_norm
from medgen.metrics.image import psnr, ssim


def mean_sd_maps(samples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixelwise mean and SD over samples: ``[N, B, C, H, W] -> ([B, C, H, W], [B, C, H, W])``.

    The SD is the population SD (divisor ``N``; zero for ``N = 1``)."""
    if samples.ndim != 5:
        raise InverseError(f"samples must be [N, B, C, H, W], got {tuple(samples.shape)}")
    return samples.mean(0), samples.std(0, correction=0)


def _check_set(name: str, pred: torch.Tensor, n: int) -> None:
    if pred.shape[0] != n:
        raise InverseError(f"{name}: {pred.shape[0]} images but side data for {n}; score the whole set at once "
                           "(medgen.score.score with batch_size=None)")


def residual_metric(operator: nn.Module, y: torch.Tensor) -> Callable[..., torch.Tensor]:
    """The metric ``residual(pred [B, 1, H, W], target, *, data_range, mask) -> [B]`` of the measurements
    ``y`` ``[B, ...]``: ``||y - A(pred)|| / sqrt(M)`` (RMS over the ``M`` measured entries, in
    measurement units: compare with the noise std). ``target``, ``data_range`` and ``mask`` are unused."""
    m = operator.n_measurements

    def residual(pred: torch.Tensor, target: torch.Tensor | None = None, *, data_range: float | None = None,
                 mask: torch.Tensor | None = None) -> torch.Tensor:
        _check_set("residual", pred, y.shape[0])
        return residual_norm(operator, y, pred.detach().to(y)) / math.sqrt(m)

    return residual


def aeration_error_metric(lung_mask: np.ndarray | torch.Tensor | None = None) -> Callable[..., torch.Tensor]:
    """The metric ``aeration_error(pred [B, 1, H, W], target [B, 1, H, W], *, data_range, mask) -> [B]``:
    absolute difference of the aeration read from the prediction and from the target (model range,
    :func:`~medgen.data.phantoms.lung.aeration_from_ct`) inside ``lung_mask`` ``[B, H, W]`` (the
    target's label map, lung = 1 or 2), or in a lung estimated per image when ``None``."""
    masks = None if lung_mask is None else np.asarray(lung_mask)

    def aeration_error(pred: torch.Tensor, target: torch.Tensor, *, data_range: float | None = None,
                       mask: torch.Tensor | None = None) -> torch.Tensor:
        if masks is not None:
            _check_set("aeration_error", pred, masks.shape[0])
        return torch.from_numpy(np.abs(aeration_from_model(pred, masks) - aeration_from_model(target, masks)))

    return aeration_error


def reconstruction_metrics(recon: torch.Tensor, truth: torch.Tensor, y: torch.Tensor, operator: nn.Module, *,
                           data_range: float = 2.0, lung_mask: np.ndarray | torch.Tensor | None = None
                           ) -> pd.DataFrame:
    """One row per (sample, image) of reconstructions against the truth.

    ``recon``: ``[N, B, 1, H, W]`` or ``[B, 1, H, W]`` (N = 1), model range; ``truth``
    ``[B, 1, H, W]``; ``y`` the measurement ``[B, ...]``; ``lung_mask`` ``[B, H, W]`` (the truth's
    label map, lung = 1 or 2) or ``None`` (the lung is estimated in every image by
    :func:`~medgen.data.phantoms.lung.aeration_from_ct`). Columns: ``sample``, ``image``,
    ``psnr`` (dB), ``ssim`` (7 px uniform window) -- both with the explicit ``data_range`` --,
    ``residual`` (:func:`residual_metric`), ``aeration_true``, ``aeration_recon``,
    ``aeration_error`` (absolute, as :func:`aeration_error_metric`), ``category_true``, ``category_recon``.
    """
    if recon.ndim == 4:
        recon = recon[None]
    if recon.ndim != 5 or recon.shape[1:] != truth.shape or truth.ndim != 4:
        raise InverseError(f"recon {tuple(recon.shape)} must be [N, *truth.shape] with truth [B, 1, H, W], "
                           f"got truth {tuple(truth.shape)}")
    n, b = recon.shape[:2]
    mask = None if lung_mask is None else np.asarray(lung_mask)
    aer_true = aeration_from_model(truth, mask)
    residual = residual_metric(operator, y)
    rows = []
    for s in range(n):
        x = recon[s].detach()
        p = psnr(x, truth, data_range=data_range).cpu().numpy()
        q = ssim(x, truth, data_range=data_range).cpu().numpy()
        res = residual(x, truth, data_range=data_range).cpu().numpy()
        aer = aeration_from_model(x, mask)
        rows.append(pd.DataFrame({"sample": s, "image": np.arange(b), "psnr": p, "ssim": q, "residual": res,
                                  "aeration_true": aer_true, "aeration_recon": aer,
                                  "aeration_error": np.abs(aer - aer_true),
                                  "category_true": aeration_category(aer_true),
                                  "category_recon": aeration_category(aer)}))
    return pd.concat(rows, ignore_index=True)

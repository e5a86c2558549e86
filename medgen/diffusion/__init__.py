"""Diffusion core: noise schedules, eps/x0/v parameterization (+ learned variances), training loss (+ L_vlb), samplers, guidance.

>>> import torch
>>> from medgen.diffusion import Denoiser, NoiseSchedule, cosine, sample
>>> net = lambda x, t, cond: torch.zeros_like(x)          # a network predicting eps = 0
>>> denoiser = Denoiser(net, NoiseSchedule(cosine(100)), prediction="eps")
>>> x0 = sample("ddim", denoiser, torch.randn(2, 1, 8, 8), steps=5)
>>> x0.shape
torch.Size([2, 1, 8, 8])
"""
from medgen.diffusion.guidance import CFGDenoiser, MeasurementGuidance, drop_condition, null_condition
from medgen.diffusion.losses import LOSSES, diffusion_loss, discretized_gaussian_nll, gaussian_kl, vlb_terms
from medgen.diffusion.parameterization import (
    PREDICTIONS,
    Denoiser,
    Prediction,
    learned_log_variance,
    log_variance_range,
)
from medgen.diffusion.samplers import SAMPLERS, ddim_sample, ddpm_sample, dpmpp_sample, sample
from medgen.diffusion.schedules import (
    SCHEDULES,
    SPACINGS,
    NoiseSchedule,
    cosine,
    linear,
    noise_like,
    respace,
    scaled_linear,
)

__all__ = [
    "CFGDenoiser",
    "Denoiser",
    "LOSSES",
    "MeasurementGuidance",
    "NoiseSchedule",
    "PREDICTIONS",
    "Prediction",
    "SAMPLERS",
    "SCHEDULES",
    "SPACINGS",
    "cosine",
    "ddim_sample",
    "ddpm_sample",
    "diffusion_loss",
    "discretized_gaussian_nll",
    "dpmpp_sample",
    "drop_condition",
    "gaussian_kl",
    "learned_log_variance",
    "linear",
    "log_variance_range",
    "noise_like",
    "null_condition",
    "respace",
    "sample",
    "scaled_linear",
    "vlb_terms",
]

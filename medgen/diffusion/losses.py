"""The denoising training objective.

``diffusion_loss`` draws ``t ~ U{0, ..., T-1}`` and ``eps ~ N(0, I)`` (in that order, from
the given generator), forms ``x_t = sqrt(ab_t) x0 + sqrt(1 - ab_t) eps`` and regresses the
raw network output on the target of the denoiser's parameterization (eps, x0 or v). The
optional reconstruction term is the second line of the enhancement paper's Eq. 9,
``|| x0 - x0_hat(x_t, t) ||^2`` with x0_hat the (unclipped) clean-image estimate.

Why hand-written: the objective is a few tensor operations around medgen's Denoiser;
diffusers offers only the pieces (``add_noise``, ``get_velocity``), which NoiseSchedule has.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from medgen.diffusion.parameterization import Denoiser
from medgen.diffusion.schedules import noise_like

LOSSES = ("mse", "l1")


def diffusion_loss(
    denoiser: Denoiser,
    x0: torch.Tensor,
    cond: Any = None,
    *,
    generator: torch.Generator | None = None,
    loss: str = "mse",
    x0_weight: float = 0.0,
    mask: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Training loss of ``denoiser`` on clean targets ``x0`` ``[B, C, *S]`` given ``cond``.

    ``loss`` ("mse" or "l1") is applied per pixel to ``raw - target``; ``x0_weight`` adds
    ``x0_weight * mse(x0_hat, x0)`` (Eq. 9; always squared, as in the paper); ``mask``
    ``[B, 1, *S]`` (>= 0) weights pixels, each term becoming a mask-weighted mean.
    Returns ``{"loss": total, "diffusion": main term, "x0": reconstruction mse}``; the
    components are detached scalars for logging, ``"loss"`` carries the gradient.
    """
    if loss not in LOSSES:
        raise ValueError(f"unknown diffusion loss '{loss}' (choose from {', '.join(LOSSES)})")
    if mask is not None and (mask.shape[0] != x0.shape[0] or mask.shape[1] != 1 or mask.shape[2:] != x0.shape[2:]):
        raise ValueError(f"mask shape {tuple(mask.shape)} must be [B, 1, *S] for x0 shape {tuple(x0.shape)}")
    schedule = denoiser.schedule
    gen_device = generator.device if generator is not None else x0.device
    t = torch.randint(0, schedule.T, (x0.shape[0],), generator=generator, device=gen_device).to(x0.device)  # [B]
    noise = noise_like(x0, generator)  # [B, C, *S]
    x_t = schedule.add_noise(x0, noise, t)
    raw = denoiser.net(x_t, t, cond)
    per_pixel = F.mse_loss if loss == "mse" else F.l1_loss
    main = _weighted_mean(per_pixel(raw, denoiser.target(x0, noise, t), reduction="none"), mask)
    x0_hat = denoiser.to_prediction(raw, x_t, t, clip=False).x0
    rec = _weighted_mean(F.mse_loss(x0_hat, x0, reduction="none"), mask)
    total = main + x0_weight * rec if x0_weight else main
    return {"loss": total, "diffusion": main.detach(), "x0": rec.detach()}


def _weighted_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``values`` ``[B, C, *S]``, weighted per pixel by ``mask`` ``[B, 1, *S]`` if given."""
    if mask is None:
        return values.mean()
    weights = mask.to(values.dtype).expand_as(values)
    return (values * weights).sum() / weights.sum().clamp_min(torch.finfo(values.dtype).tiny)

"""The denoising training objective, optionally with improved-diffusion's hybrid loss.

``diffusion_loss`` draws ``t ~ U{0, ..., T-1}`` and ``eps ~ N(0, I)`` (in that order, from
the given generator), forms ``x_t = sqrt(ab_t) x0 + sqrt(1 - ab_t) eps`` and regresses the
raw network output on the target of the denoiser's parameterization (eps, x0 or v). The
optional reconstruction term is the second line of the enhancement paper's Eq. 9,
``|| x0 - x0_hat(x_t, t) ||^2`` with x0_hat the (unclipped) clean-image estimate.

Learned variances (Nichol & Dhariwal 2021, ``Denoiser(learn_sigma=True)``): the loss becomes
``L_hybrid = L_simple + lambda L_vlb``. L_simple is the regression above on the first C output
channels. L_vlb is the variational bound, estimated from the one sampled t per image (on the
full training grid, ab_prev = ab_{t-1}, ab_{-1} = 1):

- t > 0: ``L_t = KL(q(x_{t-1} | x_t, x0) || p(x_{t-1} | x_t))``, both Gaussians per pixel,
  q with the posterior mean ``mu~ = c_x0 x0 + c_xt x_t`` and variance beta_tilde_t, p with
  ``mu = c_x0 x0_hat + c_xt x_t`` and the learned variance
  (:func:`~medgen.diffusion.parameterization.learned_log_variance`);
- t = 0: ``L_0 = -log p(x0 | x_1)``, the discretized Gaussian decoder of Ho et al. (2020):
  x0 in [-1, 1] lies in one of 256 bins of width 2/255, the edge bins extend to -inf / +inf.

Both are averaged over pixels and divided by ln 2 (bits per dim). The model mean uses a
*detached* x0_hat (stop-gradient), so L_vlb trains only the variance channels and L_simple
only the mean channels. L_vlb over all T terms is ``T E_t[L_t]``; the loss is
``L_simple + vlb_weight * T * L_t``, which for vlb_weight = 0.001 is improved-diffusion's
default ``RESCALED_MSE`` (its vb term times T / 1000). Differences from improved-diffusion:
the decoder uses the exact normal CDF (``torch.special.ndtr``) rather than its tanh
approximation, and the loss is a (mask-weighted) mean over pixels and batch.

Why hand-written: the objective is a few tensor operations around medgen's Denoiser;
diffusers offers only the pieces (``add_noise``, ``get_velocity``), which NoiseSchedule has,
and has no variational-bound loss (its DDPMScheduler's "learned_range" is for sampling only).
"""
from __future__ import annotations

import math
import weakref
from typing import Any

import torch
import torch.nn.functional as F

from medgen.diffusion.parameterization import Denoiser, learned_log_variance, log_variance_range
from medgen.diffusion.schedules import NoiseSchedule, noise_like

LOSSES = ("mse", "l1")

# schedule -> {(device, dtype): (c_x0, c_xt, min_log, max_log)}, so a training step copies no tables
_TABLES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def diffusion_loss(
    denoiser: Denoiser,
    x0: torch.Tensor,
    cond: Any = None,
    *,
    generator: torch.Generator | None = None,
    loss: str = "mse",
    x0_weight: float = 0.0,
    mask: torch.Tensor | None = None,
    vlb_weight: float = 0.001,
) -> dict[str, torch.Tensor]:
    """Training loss of ``denoiser`` on clean targets ``x0`` ``[B, C, *S]`` given ``cond``.

    ``loss`` ("mse" or "l1") is applied per pixel to ``raw - target``; ``x0_weight`` adds
    ``x0_weight * mse(x0_hat, x0)`` (Eq. 9; always squared, as in the paper); ``mask``
    ``[B, 1, *S]`` (>= 0) weights pixels, each term becoming a mask-weighted mean.
    Returns ``{"loss": total, "diffusion": main term, "x0": reconstruction mse}``; the
    components are detached scalars for logging, ``"loss"`` carries the gradient.
    With ``denoiser.learn_sigma`` the total adds ``vlb_weight * T * vlb`` and the dict has
    ``"vlb"``: the sampled-t bound term in bits per dim (module docstring).
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
    pred_raw, var_interp = denoiser.split(raw, x_t)  # [B, C, *S] each (var_interp None without learn_sigma)
    per_pixel = F.mse_loss if loss == "mse" else F.l1_loss
    main = _weighted_mean(per_pixel(pred_raw, denoiser.target(x0, noise, t), reduction="none"), mask)
    x0_hat = denoiser.to_prediction(raw, x_t, t, clip=False).x0
    rec = _weighted_mean(F.mse_loss(x0_hat, x0, reduction="none"), mask)
    total = main + x0_weight * rec if x0_weight else main
    out = {"diffusion": main.detach(), "x0": rec.detach()}
    if var_interp is not None:
        # stop-gradient: the model mean comes from the detached prediction, so only v learns from L_vlb
        frozen = denoiser.to_prediction(torch.cat([pred_raw.detach(), var_interp], 1), x_t, t, clip=False)
        vlb = _weighted_mean(vlb_terms(schedule, x0, x_t, t, frozen.x0, var_interp), mask)
        total = total + vlb_weight * schedule.T * vlb
        out["vlb"] = vlb.detach()
    return {"loss": total, **out}


def vlb_terms(
    schedule: NoiseSchedule, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, x0_hat: torch.Tensor,
    var_interp: torch.Tensor,
) -> torch.Tensor:
    """Per-pixel variational-bound term ``L_t`` in bits, ``[B, C, *S]``, on the full training grid.

    ``x0``, ``x_t``, ``x0_hat`` (the model's clean estimate; pass it detached for the hybrid
    loss), ``var_interp``: ``[B, C, *S]``; ``t`` ``[B]``. KL(q || p) where t > 0, the decoder
    NLL -log p(x0 | x_1) where t = 0 (module docstring).
    """
    tables = _TABLES.setdefault(schedule, {})
    key = (x0.device, x0.dtype)
    if key not in tables:
        tables[key] = tuple(v.to(x0.device, x0.dtype) for v in _posterior_tables(schedule))
    shape = (-1,) + (1,) * (x0.ndim - 1)  # [B] -> [B, 1, ..., 1]
    c_x0, c_xt, min_log, max_log = (v[t.to(x0.device)].view(shape) for v in tables[key])
    mean_q = c_x0 * x0 + c_xt * x_t  # 1. true posterior q(x_{t-1} | x_t, x0): mean, log var = log beta~
    mean_p = c_x0 * x0_hat + c_xt * x_t  # 2. model p(x_{t-1} | x_t): same map applied to x0_hat
    log_var_p = learned_log_variance(var_interp, min_log, max_log)  # 3. learned log variance
    kl = gaussian_kl(mean_q, min_log, mean_p, log_var_p)  # 4. t > 0: KL in nats per pixel
    nll = discretized_gaussian_nll(x0, mean_p, log_var_p)  # 5. t = 0: decoder NLL in nats per pixel
    first = (t.to(x0.device) == 0).view(shape)
    return torch.where(first, nll, kl) / math.log(2.0)  # 6. nats -> bits


def _posterior_tables(schedule: NoiseSchedule) -> tuple[torch.Tensor, ...]:
    """Float64 ``[T]`` tables ``(c_x0, c_xt, min_log, max_log)`` of the full training chain.

    With ab_prev = ab_{t-1} (1 at t = 0) and beta = 1 - ab / ab_prev:
    ``c_x0 = sqrt(ab_prev) beta / (1 - ab)``, ``c_xt = sqrt(1 - beta) (1 - ab_prev) / (1 - ab)``
    (Ho et al. Eq. 7), min_log / max_log from :func:`log_variance_range` (clipped at t = 0).
    """
    ab = schedule.alphas_cumprod
    ab_prev = torch.cat([ab.new_ones(1), ab[:-1]])
    beta = 1 - ab / ab_prev
    c_x0 = ab_prev.sqrt() * beta / (1 - ab)
    c_xt = (1 - beta).sqrt() * (1 - ab_prev) / (1 - ab)
    return (c_x0, c_xt, *log_variance_range(ab, ab_prev))


def gaussian_kl(
    mean1: torch.Tensor, log_var1: torch.Tensor, mean2: torch.Tensor, log_var2: torch.Tensor
) -> torch.Tensor:
    """Elementwise ``KL(N(mean1, e^log_var1) || N(mean2, e^log_var2))`` in nats (broadcasting).

    ``KL = 1/2 (log_var2 - log_var1 + e^(log_var1 - log_var2) + (mean1 - mean2)^2 e^-log_var2 - 1)``.
    """
    return 0.5 * (log_var2 - log_var1 + torch.exp(log_var1 - log_var2)
                  + (mean1 - mean2) ** 2 * torch.exp(-log_var2) - 1.0)


def discretized_gaussian_nll(x: torch.Tensor, mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """``-log P(x)`` in nats for x in [-1, 1] quantised to 256 levels, elementwise (broadcasting).

    P(x) is the mass of ``N(mean, e^log_var)`` on x's bin ``[x - 1/255, x + 1/255]``; the
    lowest bin (x < -0.999) extends to -inf and the highest (x > 0.999) to +inf (Ho et al.
    2020, Eq. 13). Interior masses are clamped at 1e-12 as in improved-diffusion.
    """
    inv_std = torch.exp(-0.5 * log_var)
    upper = (x - mean + 1.0 / 255.0) * inv_std  # 1. standardised bin edges
    lower = (x - mean - 1.0 / 255.0) * inv_std
    log_below_upper = torch.special.log_ndtr(upper)  # 2. log Phi(upper): lowest bin
    log_above_lower = torch.special.log_ndtr(-lower)  # 3. log (1 - Phi(lower)): highest bin
    log_mass = torch.log((torch.special.ndtr(upper) - torch.special.ndtr(lower)).clamp_min(1e-12))  # 4. interior
    log_p = torch.where(x < -0.999, log_below_upper, torch.where(x > 0.999, log_above_lower, log_mass))
    return -log_p


def _weighted_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``values`` ``[B, C, *S]``, weighted per pixel by ``mask`` ``[B, 1, *S]`` if given."""
    if mask is None:
        return values.mean()
    weights = mask.to(values.dtype).expand_as(values)
    return (values * weights).sum() / weights.sum().clamp_min(torch.finfo(values.dtype).tiny)

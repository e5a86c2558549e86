"""Reverse-process samplers with one signature.

``sampler(denoiser, x_T, timesteps, cond, *, generator=None, callback=None, **specific) -> x_0``

- ``denoiser``: any callable ``(x_t [B, C, *S], t [B], cond) -> Prediction(x0, eps)`` with a
  ``.schedule`` (:class:`~medgen.diffusion.schedules.NoiseSchedule`); the parameterization
  and clipping live there, guidance wraps it.
- ``x_T``: the starting noise ``[B, C, *S]`` (any number of spatial dims).
- ``timesteps``: strictly descending training indices (LongTensor ``[n]``, e.g. from
  :func:`~medgen.diffusion.schedules.respace`); the model is evaluated once at each. After
  the last one the chain goes to clean data, ``alpha_bar = 1`` (diffusers'
  ``set_alpha_to_one=True`` / ``final_sigmas_type="zero"``).
- ``callback(dict(i=, n=, t=, x=, x0=))`` after every step: ``t`` the (int) timestep the model
  saw, ``x`` the new sample, ``x0`` the denoiser's clean estimate. Do not modify them in place.
- Fresh noise is ``torch.randn(..., generator=generator)`` (see ``noise_like``), one draw of
  x's shape per stochastic step, in step order.

Learned variances (``Prediction.var_interp``, see :mod:`medgen.diffusion.parameterization`)
are used by :func:`ddpm_sample` only (its default ``variance="auto"``); DDIM and DPM-Solver++
have no per-step variance to learn (DDIM's sigma is set by eta) and ignore ``var_interp``.

Samplers run under ``torch.no_grad`` (guidance wrappers that need gradients enable them).
All per-step coefficients are computed once, in float64 on the host, before the loop, so a
step is the network call plus a few elementwise ops and no host synchronisation (pass a
generator on x's device: a CPU generator for a CUDA sample costs one host-to-device copy
per stochastic step).

Why hand-written rather than driving diffusers' schedulers: the schedulers take the raw
network output (so the parameterization would live in the sampler, against medgen's
contract), keep mutable step state (DPM-Solver's history and step index), DDPMScheduler
synchronises with the host on every step (``previous_timestep`` searches the timestep table
with ``nonzero``), and DDIMScheduler assumes uniform gaps (its previous timestep is ``t - T // n``, wrong for
"linspace" or uneven "trailing" spacings). The update formulas are a few lines each; the
tests compare every step with DDPMScheduler, DDIMScheduler and DPMSolverMultistepScheduler.
"""
from __future__ import annotations

import difflib
import math
from typing import Any, Callable

import torch

from medgen.diffusion.parameterization import learned_log_variance, log_variance_range
from medgen.diffusion.schedules import NoiseSchedule, noise_like, respace

Callback = Callable[[dict], None]


# --------------------------------------------------------------------------------------
# Shared preparation
# --------------------------------------------------------------------------------------
def _schedule_of(denoiser: Any) -> NoiseSchedule:
    schedule = getattr(denoiser, "schedule", None)
    if schedule is None:
        raise ValueError(f"denoiser {type(denoiser).__name__} has no .schedule attribute")
    return schedule


def _timestep_list(timesteps: Any, T: int) -> list[int]:
    """Validated host list of the timesteps (one transfer before the loop)."""
    ts = torch.as_tensor(timesteps).detach().cpu()
    if ts.ndim != 1 or len(ts) == 0 or ts.is_floating_point():
        raise ValueError(f"timesteps must be a non-empty 1-D integer tensor, got shape {tuple(ts.shape)} {ts.dtype}")
    ts = ts.tolist()
    if any(b >= a for a, b in zip(ts, ts[1:])):
        raise ValueError(f"timesteps must be strictly descending, got {ts}")
    if ts[0] >= T or ts[-1] < 0:
        raise ValueError(f"timesteps must lie in [0, {T}), got {ts[0]}..{ts[-1]}")
    return ts


def _prepare(
    denoiser: Any, timesteps: Any, x_T: torch.Tensor
) -> tuple[list[int], list[float], list[float], torch.Tensor]:
    """Host timesteps, alpha_bar at each and at its successor (1.0 after the last), and the
    timesteps on x_T's device ``[n]``."""
    schedule = _schedule_of(denoiser)
    ts = _timestep_list(timesteps, schedule.T)
    ab = schedule.alphas_cumprod[ts].tolist()
    ab_next = ab[1:] + [1.0]
    return ts, ab, ab_next, torch.tensor(ts, dtype=torch.long, device=x_T.device)


def _report(callback: Callback | None, i: int, n: int, t: int, x: torch.Tensor, x0: torch.Tensor) -> None:
    if callback is not None:
        callback(dict(i=i, n=n, t=t, x=x, x0=x0))


# --------------------------------------------------------------------------------------
# DDPM (ancestral)
# --------------------------------------------------------------------------------------
VARIANCES = ("auto", "small", "large", "learned")


def _ddpm_coefficients(ab: list[float], ab_next: list[float], variance: str) -> list[tuple[float, float, float]]:
    """Per step ``(c_x0, c_xt, sigma)`` of the posterior q(x_prev | x_t, x0) with respaced betas."""
    coefs = []
    for i, (a_t, a_prev) in enumerate(zip(ab, ab_next)):
        beta = 1 - a_t / a_prev  # respaced beta_t (improved-diffusion / diffusers)
        c_x0 = math.sqrt(a_prev) * beta / (1 - a_t)
        c_xt = math.sqrt(1 - beta) * (1 - a_prev) / (1 - a_t)
        var = max((1 - a_prev) / (1 - a_t) * beta, 1e-20) if variance == "small" else beta
        sigma = 0.0 if i == len(ab) - 1 else math.sqrt(var)  # no noise on the final step
        coefs.append((c_x0, c_xt, sigma))
    return coefs


@torch.no_grad()
def ddpm_sample(
    denoiser: Any,
    x_T: torch.Tensor,
    timesteps: torch.Tensor,
    cond: Any = None,
    *,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    variance: str = "auto",
) -> torch.Tensor:
    """Ancestral DDPM sampling (Ho et al. 2020) from ``x_T`` ``[B, C, *S]`` -> x_0 ``[B, C, *S]``.

    With respaced timesteps the betas are respaced, ``beta_t = 1 - ab_t / ab_prev`` (as
    improved-diffusion's respacing and diffusers' DDPMScheduler with ``num_inference_steps``).
    ``variance="small"`` is the posterior variance (diffusers "fixed_small"), ``"large"`` is
    beta_t ("fixed_large"), ``"learned"`` interpolates their logs by the prediction's
    ``var_interp`` (improved-diffusion; diffusers "learned_range" up to the clip at the first
    step), ``"auto"`` is "learned" when the prediction carries ``var_interp`` and "small"
    otherwise. No noise is added on the final step.
    """
    if variance not in VARIANCES:
        raise ValueError(f"unknown ddpm variance '{variance}' (choose from {', '.join(VARIANCES)})")
    ts, ab, ab_next, t_dev = _prepare(denoiser, timesteps, x_T)
    fixed = "large" if variance == "large" else "small"
    min_log, max_log = (r.tolist() for r in log_variance_range(torch.tensor(ab, dtype=torch.float64),
                                                               torch.tensor(ab_next, dtype=torch.float64)))
    n, x = len(ts), x_T
    for i, (c_x0, c_xt, sigma) in enumerate(_ddpm_coefficients(ab, ab_next, fixed)):
        pred = denoiser(x, t_dev[i].expand(x.shape[0]), cond)  # 1. x0_hat(x_t, t) (and v)
        learned = variance == "learned" or (variance == "auto" and pred.var_interp is not None)
        if learned and pred.var_interp is None:
            raise ValueError("ddpm: variance='learned' needs a denoiser whose prediction has var_interp (learn_sigma)")
        x = c_x0 * pred.x0 + c_xt * x  # 2. posterior mean  mu = c_x0 x0_hat + c_xt x_t
        if learned and i < n - 1:  # 3a. x_prev = mu + exp(log sigma^2 / 2) z, log sigma^2 learned
            log_var = learned_log_variance(pred.var_interp, min_log[i], max_log[i])
            x = x + torch.exp(0.5 * log_var) * noise_like(x, generator)
        elif not learned and sigma > 0:
            x = x + sigma * noise_like(x, generator)  # 3b. x_prev = mu + sigma z
        _report(callback, i, n, ts[i], x, pred.x0)
    return x


# --------------------------------------------------------------------------------------
# DDIM
# --------------------------------------------------------------------------------------
def _ddim_coefficients(ab: list[float], ab_next: list[float], eta: float) -> list[tuple[float, float, float]]:
    """Per step ``(c_x0, c_eps, sigma)`` of Song et al.'s Eq. 12 (MRI->CT paper's appendix)."""
    coefs = []
    for i, (a_t, a_prev) in enumerate(zip(ab, ab_next)):
        sigma = eta * math.sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))
        direction = 1 - a_prev - sigma**2
        if direction < 0:
            raise ValueError(f"ddim: eta={eta} gives a negative direction variance at step {i}; use eta <= 1")
        coefs.append((math.sqrt(a_prev), math.sqrt(direction), sigma))
    return coefs


@torch.no_grad()
def ddim_sample(
    denoiser: Any,
    x_T: torch.Tensor,
    timesteps: torch.Tensor,
    cond: Any = None,
    *,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    eta: float = 0.0,
) -> torch.Tensor:
    """DDIM sampling (Song et al. 2021) from ``x_T`` ``[B, C, *S]`` -> x_0 ``[B, C, *S]``.

    ``eta=0`` is deterministic; ``eta=1`` adds fresh noise of the DDPM posterior variance each
    step (with clip off it equals :func:`ddpm_sample`). The successor of each timestep is the
    next one in ``timesteps``, so any spacing works.
    """
    if eta < 0:
        raise ValueError(f"ddim: eta must be >= 0, got {eta}")
    ts, ab, ab_next, t_dev = _prepare(denoiser, timesteps, x_T)
    n, x = len(ts), x_T
    for i, (c_x0, c_eps, sigma) in enumerate(_ddim_coefficients(ab, ab_next, eta)):
        pred = denoiser(x, t_dev[i].expand(x.shape[0]), cond)  # 1. x0_hat, eps_hat at t
        # 2. sigma_t = eta sqrt((1 - ab_prev) / (1 - ab_t) (1 - ab_t / ab_prev))
        # 3. x_prev = sqrt(ab_prev) x0_hat + sqrt(1 - ab_prev - sigma_t^2) eps_hat + sigma_t z
        x = c_x0 * pred.x0 + c_eps * pred.eps
        if sigma > 0:
            x = x + sigma * noise_like(x, generator)
        _report(callback, i, n, ts[i], x, pred.x0)
    return x


# --------------------------------------------------------------------------------------
# DPM-Solver++ (2M)
# --------------------------------------------------------------------------------------
def _dpmpp_coefficients(ab: list[float], ab_next: list[float]) -> list[tuple[float, float, float]]:
    """Per step ``(a, b, c)`` with ``x_next = a x + b D0 + c (D0 - D0_prev)``.

    With alpha = sqrt(ab), sigma = sqrt(1 - ab), lambda = log(alpha / sigma) and
    h = lambda_next - lambda: a = sigma_next / sigma, b = alpha_next (1 - e^{-h}), and on
    second-order steps c = b / (2 r) with r = (lambda - lambda_prev) / h.
    """
    lam = [0.5 * math.log(a / (1 - a)) for a in ab]
    n, coefs = len(ab), []
    for i, (a_s, a_t) in enumerate(zip(ab, ab_next)):
        if i == n - 1:  # sigma_next = 0, lambda_next = +inf: the step returns D0 (x0_hat)
            coefs.append((0.0, 1.0, 0.0))
            continue
        h = lam[i + 1] - lam[i]
        a = math.sqrt((1 - a_t) / (1 - a_s))
        b = -math.sqrt(a_t) * math.expm1(-h)
        c = 0.0 if i == 0 else 0.5 * b * h / (lam[i] - lam[i - 1])  # first step: no history
        coefs.append((a, b, c))
    return coefs


@torch.no_grad()
def dpmpp_sample(
    denoiser: Any,
    x_T: torch.Tensor,
    timesteps: torch.Tensor,
    cond: Any = None,
    *,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022), data prediction, from ``x_T`` ``[B, C, *S]`` -> ``[B, C, *S]``.

    Matches diffusers' DPMSolverMultistepScheduler defaults (``algorithm_type="dpmsolver++"``,
    ``solver_order=2``, ``solver_type="midpoint"``, ``lower_order_final=True``,
    ``final_sigmas_type="zero"``): the first step is first order (no history), the middle
    steps second order, and the final step is first order towards sigma = 0, which returns
    the last data prediction x0_hat exactly. Deterministic: ``generator`` is unused.
    """
    ts, ab, ab_next, t_dev = _prepare(denoiser, timesteps, x_T)
    n, x, prev_x0 = len(ts), x_T, None
    for i, (a, b, c) in enumerate(_dpmpp_coefficients(ab, ab_next)):
        x0 = denoiser(x, t_dev[i].expand(x.shape[0]), cond).x0  # 1. D0 = x0_hat(x_t, t)
        if i == n - 1:
            x = x0  # 2a. final step to sigma = 0: x_0 = D0
        elif i == 0:
            x = a * x + b * x0  # 2b. first order: x = (s_next / s) x - alpha_next (e^-h - 1) D0
        else:
            x = a * x + b * x0 + c * (x0 - prev_x0)  # 2c. 2M: D = D0 + (D0 - D0_prev) / (2 r)
        prev_x0 = x0
        _report(callback, i, n, ts[i], x, x0)
    return x


SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {
    "ddpm": ddpm_sample,
    "ddim": ddim_sample,
    "dpmpp": dpmpp_sample,
}


def sample(
    name: str,
    denoiser: Any,
    x_T: torch.Tensor,
    steps: int,
    cond: Any = None,
    *,
    spacing: str = "trailing",
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    eta: float = 0.0,
) -> torch.Tensor:
    """Respace the denoiser's T steps to ``steps`` (``spacing``) and run sampler ``name``.

    ``x_T`` ``[B, C, *S]`` -> x_0 ``[B, C, *S]``. ``eta`` applies to "ddim" only.
    """
    if name not in SAMPLERS:
        close = difflib.get_close_matches(name, list(SAMPLERS), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ValueError(f"unknown sampler '{name}' (choose from {', '.join(SAMPLERS)}){hint}")
    if eta != 0.0 and name != "ddim":
        raise ValueError(f"eta={eta} applies only to the ddim sampler, not '{name}'")
    timesteps = respace(_schedule_of(denoiser).T, steps, spacing)
    extra = {"eta": eta} if name == "ddim" else {}
    return SAMPLERS[name](denoiser, x_T, timesteps, cond, generator=generator, callback=callback, **extra)

"""Where the network meets the sampler: eps / x0 / v parameterization, handled once.

:class:`Denoiser` wraps a network ``net(x_t, t, cond) -> raw`` the way EDM's
preconditioning wrapper does: it converts the raw output into a :class:`Prediction`
``(x0, eps)`` so that samplers, losses and guidance never branch on the parameterization.

Conversions (a = sqrt(alpha_bar_t), s = sqrt(1 - alpha_bar_t), same formulas and order of
operations as diffusers' schedulers):

- ``"eps"``: eps = raw,                x0 = (x_t - s eps) / a
- ``"x0"``:  x0 = raw,                 eps = (x_t - a x0) / s
- ``"v"``:   x0 = a x_t - s raw,       eps = a raw + s x_t

Clipping convention (``clip_x0=True``): x0 is clamped to [-1, 1] *after* eps has been
derived from the unclamped output, i.e. eps is never changed by the clamp. This is what
diffusers does with ``clip_sample=True``: DDPMScheduler only uses the (clamped) x0, and
DDIMScheduler's default ``use_clipped_model_output=False`` uses the unclamped eps. With
``clip_x0=False`` both are exact conversions of the raw output. Guidance wrappers follow
the same rule (they combine eps, re-derive x0 and clamp it).

Learned variances (Nichol & Dhariwal 2021, "Improved DDPM"; ``learn_sigma=True``): the net
outputs ``2C`` channels, the first C the eps / x0 / v prediction above and the last C a
variance interpolation ``v`` (nominally in [-1, 1], improved-diffusion's
``model_var_values``), carried as :attr:`Prediction.var_interp`. For a reverse step from t
to its successor t_prev in the chain (respaced or not), with alpha_bar values ab_t, ab_prev:

- ``beta_t = 1 - ab_t / ab_prev``,  ``beta_tilde_t = (1 - ab_prev) / (1 - ab_t) beta_t``
- ``frac = (v + 1) / 2``,  ``log sigma_t^2 = frac log(beta_t) + (1 - frac) log(beta_tilde_t)``

so v = -1 gives the posterior variance ("small") and v = +1 gives beta_t ("large").
beta_tilde is 0 on the step into clean data (ab_prev = 1); like improved-diffusion's
``posterior_log_variance_clipped``, that step uses the beta_tilde of its neighbour in the
chain. :func:`log_variance_range` computes the two bounds of a chain and
:func:`learned_log_variance` interpolates; the DDPM sampler and the hybrid loss both use them.

Why hand-written: no library offers this wrapper without also owning the sampling loop.
diffusers' DDPMScheduler has ``variance_type="learned_range"`` (the same interpolation, for
sampling only and with ``log(max(beta_tilde, 1e-20))`` rather than the clip at the first step);
diffusers has no variational-bound loss (see :mod:`medgen.diffusion.losses`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from medgen.config import DiffusionConfig
from medgen.diffusion.schedules import NoiseSchedule

PREDICTIONS = ("eps", "x0", "v")


@dataclass
class Prediction:
    """A denoiser's output at (x_t, t): the clean-image estimate ``x0`` and the noise
    estimate ``eps``, both shaped like x_t ``[B, C, *S]``; with learned variances also the
    raw variance interpolation ``var_interp`` ``[B, C, *S]`` (module docstring), else None."""

    x0: torch.Tensor
    eps: torch.Tensor
    var_interp: torch.Tensor | None = None


def log_variance_range(ab: torch.Tensor, ab_prev: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(min_log, max_log)``, float64 ``[n]``: clipped log beta_tilde and log beta of each step.

    ``ab`` ``[n]``: alpha_bar at each step's timestep; ``ab_prev`` ``[n]``: at the step's
    successor in the reverse chain (1.0 for the step into clean data); any order. A step with
    beta_tilde = 0 takes the beta_tilde of the step with the next-largest alpha_bar (its chain
    neighbour; improved-diffusion's clip); a chain with no such step uses log beta there.
    """
    ab = torch.as_tensor(ab, dtype=torch.float64)
    ab_prev = torch.as_tensor(ab_prev, dtype=torch.float64)
    beta = 1 - ab / ab_prev  # 1. (respaced) beta_t = 1 - ab_t / ab_prev
    beta_tilde = (1 - ab_prev) / (1 - ab) * beta  # 2. posterior variance beta_tilde_t
    positive = beta_tilde > 0
    if positive.any():  # 3. clip: 0 -> beta_tilde of the neighbouring (next-largest ab) step
        fill = beta_tilde[positive][ab[positive].argmax()]
        beta_tilde = torch.where(positive, beta_tilde, fill)
    else:
        beta_tilde = beta
    return beta_tilde.log(), beta.log()


def learned_log_variance(v: torch.Tensor, min_log: torch.Tensor | float, max_log: torch.Tensor | float) -> torch.Tensor:
    """``log sigma^2 = frac max_log + (1 - frac) min_log`` with ``frac = (v + 1) / 2``, shaped like ``v``.

    ``v`` ``[B, C, *S]``: the network's variance interpolation; ``min_log`` / ``max_log``: log
    beta_tilde and log beta (:func:`log_variance_range`), floats or tensors broadcasting
    against v (``[B, 1, ..., 1]``).
    """
    frac = (v + 1) / 2
    return frac * max_log + (1 - frac) * min_log


class Denoiser(nn.Module):
    """``forward(x_t [B, C, *S], t [B] (LongTensor of training indices), cond) -> Prediction``.

    Calls ``net(x_t, t, cond)`` once and converts its raw output ``[B, C, *S]`` according
    to ``prediction`` ("eps", "x0" or "v"); see the module docstring for the clip rule.
    With ``learn_sigma`` the raw output is ``[B, 2C, *S]``: the prediction, then the variance
    interpolation returned as ``Prediction.var_interp``.
    """

    def __init__(self, net: nn.Module, schedule: NoiseSchedule, prediction: str = "eps", clip_x0: bool = True,
                 learn_sigma: bool = False) -> None:
        super().__init__()
        if prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction type '{prediction}' (choose from {', '.join(PREDICTIONS)})")
        self.net = net
        self.schedule = schedule
        self.prediction = prediction
        self.clip_x0 = clip_x0
        self.learn_sigma = learn_sigma

    @classmethod
    def from_config(cls, net: nn.Module, cfg: DiffusionConfig) -> "Denoiser":
        """Denoiser with the schedule, prediction type, clipping and learn_sigma of a ``DiffusionConfig``."""
        return cls(net, NoiseSchedule.from_config(cfg), prediction=cfg.prediction, clip_x0=cfg.clip_x0,
                   learn_sigma=cfg.learn_sigma)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: Any = None) -> Prediction:
        return self.to_prediction(self.net(x_t, t, cond), x_t, t)

    def to_prediction(
        self, raw: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, *, clip: bool | None = None
    ) -> Prediction:
        """Convert a raw network output ``[B, C, *S]`` at (x_t, t) into ``(x0, eps)``.

        With ``learn_sigma`` ``raw`` is ``[B, 2C, *S]`` (see :meth:`split`) and the last C
        channels become ``var_interp``. ``clip`` overrides ``self.clip_x0`` (training losses
        use ``clip=False``).
        """
        raw, var_interp = self.split(raw, x_t)
        a, s = self.schedule.coefficients(t, x_t)  # [B, 1, ..., 1] each
        if self.prediction == "eps":
            eps, x0 = raw, (x_t - s * raw) / a
        elif self.prediction == "x0":
            x0, eps = raw, (x_t - a * raw) / s
        else:  # v = a eps - s x0
            x0, eps = a * x_t - s * raw, a * raw + s * x_t
        if self.clip_x0 if clip is None else clip:
            x0 = x0.clamp(-1.0, 1.0)
        return Prediction(x0=x0, eps=eps, var_interp=var_interp)

    def split(self, raw: torch.Tensor, x_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(prediction [B, C, *S], var_interp [B, C, *S] or None)`` of a raw output for x_t ``[B, C, *S]``."""
        if not self.learn_sigma:
            if raw.shape != x_t.shape:
                raise ValueError(f"network output shape {tuple(raw.shape)} differs from x_t shape "
                                 f"{tuple(x_t.shape)} (learn_sigma=False)")
            return raw, None
        C = x_t.shape[1]
        if raw.shape[:1] + raw.shape[2:] != x_t.shape[:1] + x_t.shape[2:] or raw.shape[1] != 2 * C:
            raise ValueError(f"network output shape {tuple(raw.shape)} must have 2 x the channels of x_t shape "
                             f"{tuple(x_t.shape)} (learn_sigma=True)")
        return raw[:, :C], raw[:, C:]

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The regression target of the raw output for clean ``x0`` and ``noise`` ``[B, C, *S]`` at ``t`` ``[B]``."""
        if self.prediction == "eps":
            return noise
        if self.prediction == "x0":
            return x0
        return self.schedule.v_target(x0, noise, t)

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

Why hand-written: no library offers this wrapper without also owning the sampling loop.
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
    estimate ``eps``, both shaped like x_t ``[B, C, *S]``."""

    x0: torch.Tensor
    eps: torch.Tensor


class Denoiser(nn.Module):
    """``forward(x_t [B, C, *S], t [B] (LongTensor of training indices), cond) -> Prediction``.

    Calls ``net(x_t, t, cond)`` once and converts its raw output ``[B, C, *S]`` according
    to ``prediction`` ("eps", "x0" or "v"); see the module docstring for the clip rule.
    """

    def __init__(self, net: nn.Module, schedule: NoiseSchedule, prediction: str = "eps", clip_x0: bool = True) -> None:
        super().__init__()
        if prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction type '{prediction}' (choose from {', '.join(PREDICTIONS)})")
        self.net = net
        self.schedule = schedule
        self.prediction = prediction
        self.clip_x0 = clip_x0

    @classmethod
    def from_config(cls, net: nn.Module, cfg: DiffusionConfig) -> "Denoiser":
        """Denoiser with the schedule, prediction type and clipping of a ``DiffusionConfig``."""
        return cls(net, NoiseSchedule.from_config(cfg), prediction=cfg.prediction, clip_x0=cfg.clip_x0)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: Any = None) -> Prediction:
        return self.to_prediction(self.net(x_t, t, cond), x_t, t)

    def to_prediction(
        self, raw: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, *, clip: bool | None = None
    ) -> Prediction:
        """Convert a raw network output ``[B, C, *S]`` at (x_t, t) into ``(x0, eps)``.

        ``clip`` overrides ``self.clip_x0`` (training losses use ``clip=False``).
        """
        if raw.shape != x_t.shape:
            raise ValueError(f"network output shape {tuple(raw.shape)} differs from x_t shape {tuple(x_t.shape)}")
        a, s = self.schedule.coefficients(t, x_t)  # [B, 1, ..., 1] each
        if self.prediction == "eps":
            eps, x0 = raw, (x_t - s * raw) / a
        elif self.prediction == "x0":
            x0, eps = raw, (x_t - a * raw) / s
        else:  # v = a eps - s x0
            x0, eps = a * x_t - s * raw, a * raw + s * x_t
        if self.clip_x0 if clip is None else clip:
            x0 = x0.clamp(-1.0, 1.0)
        return Prediction(x0=x0, eps=eps)

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The regression target of the raw output for clean ``x0`` and ``noise`` ``[B, C, *S]`` at ``t`` ``[B]``."""
        if self.prediction == "eps":
            return noise
        if self.prediction == "x0":
            return x0
        return self.schedule.v_target(x0, noise, t)

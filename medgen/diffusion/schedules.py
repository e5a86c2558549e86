"""Named noise schedules, the forward process q(x_t | x_0) and timestep respacing.

A schedule is a pure function ``(T, ...) -> betas`` returning float64 ``[T]``. Once a
name is released its numbers never change (checkpoints store only the name and its
arguments; ``tests/diffusion/test_schedules.py`` pins values): add a new name instead.

Why hand-written: diffusers builds the same betas but in float32 (and only inside
scheduler objects); medgen keeps float64 tables so that ``alphas_cumprod`` over
T = 2000-4000 steps stays exact, and casts once to the sample dtype. ``respace``
reproduces diffusers' ``timestep_spacing`` formulas (tested against ``set_timesteps``)
without building a scheduler; see :func:`respace` for the one case where it differs.

Notation: ``alpha_bar_t = prod_{s<=t} (1 - beta_s)`` (``alphas_cumprod``), and
``x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps`` with t a 0-based index.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import torch

from medgen.config import DiffusionConfig


# --------------------------------------------------------------------------------------
# Named beta schedules (pure; float64 [T])
# --------------------------------------------------------------------------------------
def linear(T: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """Ho et al. (2020) betas spaced linearly from ``beta_start`` to ``beta_end``: float64 ``[T]``.

    UXDiff uses ``linear(2000)`` (1e-4 .. 0.02). improved-diffusion's "linear" rescales both
    ends by ``1000 / T``; pass ``beta_start=1e-4 * 1000 / T`` etc. to get that.
    """
    _check_T(T)
    return torch.linspace(beta_start, beta_end, T, dtype=torch.float64)


def scaled_linear(T: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """Betas whose square roots are linear (latent diffusion's schedule): float64 ``[T]``."""
    _check_T(T)
    return torch.linspace(beta_start**0.5, beta_end**0.5, T, dtype=torch.float64) ** 2


def cosine(T: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Nichol & Dhariwal (2021) cosine schedule: float64 ``[T]``.

    ``alpha_bar(u) = cos((u + s) / (1 + s) * pi / 2)^2`` for ``u`` in [0, 1] and
    ``beta_i = min(1 - alpha_bar((i + 1) / T) / alpha_bar(i / T), max_beta)``
    (diffusers' ``"squaredcos_cap_v2"``).
    """
    _check_T(T)
    u = torch.arange(T + 1, dtype=torch.float64) / T
    alpha_bar = torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2
    return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=max_beta)


SCHEDULES: dict[str, Callable[..., torch.Tensor]] = {
    "linear": linear,
    "scaled_linear": scaled_linear,
    "cosine": cosine,
}


def _check_T(T: int) -> None:
    if not isinstance(T, int) or T < 1:
        raise ValueError(f"number of diffusion steps T must be a positive int, got {T!r}")


# --------------------------------------------------------------------------------------
# Random numbers
# --------------------------------------------------------------------------------------
def noise_like(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Standard normal noise shaped like ``x`` (``[B, C, *S]``) on x's device and dtype.

    Drawn with ``torch.randn(..., generator=generator)`` on the generator's own device and
    moved to x's, so a CPU generator reproduces the same numbers for a CUDA sample.
    """
    device = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype).to(x.device)


# --------------------------------------------------------------------------------------
# The forward process
# --------------------------------------------------------------------------------------
class NoiseSchedule:
    """A discrete variance-preserving forward process defined by its betas.

    Attributes: ``betas`` and ``alphas_cumprod`` (float64 ``[T]``, CPU), ``T``, ``name``.
    Per-sample coefficients for ``t`` (LongTensor ``[B]``) are gathered from tables cached
    once per (device, dtype), so a sampling step costs no host transfer.
    """

    def __init__(self, betas: torch.Tensor | Sequence[float], name: str = "custom") -> None:
        betas = torch.as_tensor(betas, dtype=torch.float64).cpu()
        if betas.ndim != 1 or len(betas) == 0:
            raise ValueError(f"betas must be a non-empty 1-D sequence, got shape {tuple(betas.shape)}")
        if not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError("betas must lie in the open interval (0, 1)")
        self.name = name
        self.betas = betas
        self.alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        self.T = len(betas)
        self._tables: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}

    @classmethod
    def from_config(cls, cfg: DiffusionConfig) -> "NoiseSchedule":
        """The schedule named by ``cfg.schedule`` with ``cfg.timesteps`` steps."""
        if cfg.schedule not in SCHEDULES:
            raise ValueError(f"unknown noise schedule '{cfg.schedule}' (known: {', '.join(SCHEDULES)})")
        if cfg.schedule == "cosine":
            betas = cosine(cfg.timesteps)
        else:
            betas = SCHEDULES[cfg.schedule](cfg.timesteps, cfg.beta_start, cfg.beta_end)
        return cls(betas, name=cfg.schedule)

    def __repr__(self) -> str:
        return f"NoiseSchedule(name={self.name!r}, T={self.T})"

    def coefficients(self, t: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(sqrt(alpha_bar_t), sqrt(1 - alpha_bar_t))`` for ``t`` ``[B]``, each shaped
        ``[B, 1, ..., 1]`` to broadcast against ``like`` ``[B, C, *S]`` (its device and dtype)."""
        key = (like.device, like.dtype)
        if key not in self._tables:
            ab = self.alphas_cumprod
            self._tables[key] = (ab.sqrt().to(like.device, like.dtype), (1 - ab).sqrt().to(like.device, like.dtype))
        sqrt_ab, sqrt_1mab = self._tables[key]
        shape = (-1,) + (1,) * (like.ndim - 1)  # [B] -> [B, 1, ..., 1]
        t = t.to(like.device)
        return sqrt_ab[t].view(shape), sqrt_1mab[t].view(shape)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``x_t = sqrt(ab_t) x0 + sqrt(1 - ab_t) noise``; x0, noise ``[B, C, *S]``, t ``[B]``."""
        a, s = self.coefficients(t, x0)
        return a * x0 + s * noise

    def v_target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Velocity ``v = sqrt(ab_t) noise - sqrt(1 - ab_t) x0`` (Salimans & Ho 2022), ``[B, C, *S]``."""
        a, s = self.coefficients(t, x0)
        return a * noise - s * x0

    def x0_from_eps(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """Invert the forward formula: ``x0 = (x_t - sqrt(1 - ab_t) eps) / sqrt(ab_t)``, ``[B, C, *S]``."""
        a, s = self.coefficients(t, x_t)
        return (x_t - s * eps) / a

    def eps_from_x0(self, x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """Invert the forward formula: ``eps = (x_t - sqrt(ab_t) x0) / sqrt(1 - ab_t)``, ``[B, C, *S]``."""
        a, s = self.coefficients(t, x_t)
        return (x_t - a * x0) / s


# --------------------------------------------------------------------------------------
# Respacing
# --------------------------------------------------------------------------------------
SPACINGS = ("trailing", "leading", "linspace")


def respace(T: int, steps: int, spacing: str = "trailing") -> torch.Tensor:
    """``steps`` descending training-timestep indices in [0, T): LongTensor ``[steps]``.

    Same formulas as diffusers' DDPM/DDIM ``set_timesteps`` for ``timestep_spacing``
    (with ``steps_offset=0``):

    - ``"linspace"``: ``round(linspace(0, T - 1, steps))``, reversed;
    - ``"leading"``: ``k * (T // steps)`` for k = steps-1 .. 0 (ends at t = 0);
    - ``"trailing"``: ``round(T - k * T / steps) - 1`` for k = 0 .. steps-1 (starts at T - 1).

    For "trailing", diffusers uses ``np.arange(T, 0, -T / steps)``, which for some (T, steps)
    (e.g. T=1000, steps=61) overshoots by one element and appends the invalid index -1;
    medgen keeps the first ``steps`` values, so it equals diffusers wherever diffusers
    returns ``steps`` valid indices and otherwise differs only by dropping that -1.
    """
    _check_T(T)
    if not isinstance(steps, int) or not 1 <= steps <= T:
        raise ValueError(f"respace: steps must be an int in [1, T={T}], got {steps!r}")
    if spacing == "linspace":
        ts = np.linspace(0, T - 1, steps).round()[::-1]
    elif spacing == "leading":
        ts = (np.arange(0, steps) * (T // steps)).round()[::-1]
    elif spacing == "trailing":
        ts = np.round(np.arange(T, 0, -T / steps)[:steps]) - 1  # [:steps] drops diffusers' stray -1
    else:
        raise ValueError(f"unknown timestep spacing '{spacing}' (choose from {', '.join(SPACINGS)})")
    return torch.from_numpy(ts.astype(np.int64).copy())

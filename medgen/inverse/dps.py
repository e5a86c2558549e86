"""Diffusion posterior sampling (DPS) with medgen's denoisers: ``y -> samples [n_samples, B, C, H, W]``.

:func:`dps_reconstruct` wraps the denoiser in :class:`~medgen.diffusion.guidance.MeasurementGuidance`
and runs the shared samplers; :func:`unguided` samples the prior alone (``scale=0``);
:func:`effective_zeta` gives DPS's per-step ``zeta_t`` of a guidance scale.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import numpy as np
import torch

from medgen.diffusion.guidance import MeasurementGuidance
from medgen.diffusion.samplers import sample
from medgen.diffusion.schedules import respace
from medgen.inverse.operators import InverseError, _Operator


def _repeat(cond: Any, n: int) -> Any:
    """Repeat every tensor of a condition ``[B, ...] -> [n B, ...]`` (sample-major, like y)."""
    if cond is None or n == 1:
        return cond
    if isinstance(cond, torch.Tensor):
        return cond.repeat(n, *([1] * (cond.ndim - 1)))
    if dataclasses.is_dataclass(cond) and not isinstance(cond, type):
        return dataclasses.replace(cond, **{f.name: _repeat(getattr(cond, f.name), n)
                                            for f in dataclasses.fields(cond) if f.init})
    if isinstance(cond, (list, tuple)):
        return type(cond)(_repeat(c, n) for c in cond)
    return cond


def dps_reconstruct(denoiser: Any, operator: Callable[[torch.Tensor], torch.Tensor], y: torch.Tensor, *,
                    scale: float, steps: int, n_samples: int = 1, sampler: str = "ddpm", eta: float = 1.0,
                    normalize: bool = True, generator: torch.Generator | None = None,
                    callback: Callable[[dict], None] | None = None, cond: Any = None, channels: int = 1,
                    spacing: str = "trailing") -> torch.Tensor:
    """Diffusion posterior sampling of ``x`` given ``y = A(x) + noise``: -> samples ``[n_samples, B, C, H, W]``.

    ``denoiser``: medgen's ``(x_t, t, cond) -> Prediction`` with ``.schedule`` (the prior);
    ``operator``: an operator of :func:`make_operator` (or any differentiable
    ``[B, C, H, W] -> [B, ...]`` with ``.size``); ``y``: ``[B, ...]``. The denoiser is wrapped in
    :class:`MeasurementGuidance`, ``y`` (and ``cond``) repeated ``n_samples`` times along the
    batch, ``x_T ~ N(0, I)`` ``[n_samples B, C, H, W]`` drawn from ``generator``, and the shared
    :func:`~medgen.diffusion.samplers.sample` run with ``sampler``/``steps``/``spacing``
    (``eta`` is passed to ``"ddim"`` only; DDPM is ancestral, DPM-Solver++ deterministic).

    Step size: the guidance adds ``-scale * grad_{x_t} L`` to the model score with
    ``L = ||y - A(x0_hat(x_t))||`` when ``normalize`` (default) or ``||.||^2`` otherwise.
    With ``normalize=True`` this is DPS's step-size normalisation ``zeta' / ||y - A(x0_hat)||``
    applied to the gradient of the squared norm (``grad ||r||^2 / (2 ||r||) = grad ||r||``), so
    ``scale`` is dimensionless, independent of the measurement units and of ``M``, and
    comparable across operators. DPS moves ``x_{t-1}`` by ``-zeta grad L`` per step with a
    fixed ``zeta``; here the pull is a score, so the step's ``zeta_t`` follows the sampler's
    noise decrement: for DDPM ``zeta_t = scale * beta_t / sqrt(1 - beta_t)`` with the respaced
    ``beta_t = 1 - ab_t / ab_prev`` (:func:`effective_zeta` gives it for ddpm / ddim). So
    DPS's ``zeta = 1`` at step t corresponds to ``scale ~ 1 / beta_t`` (large early steps get
    a larger pull). ``scale = 0`` is the unguided prior. ``grad ||r||`` has unit norm in
    measurement space, so its per-pixel size falls as ``1 / sqrt(M)``: larger images need
    proportionally larger scales.

    ``callback(dict(i, n, t, x, x0))`` sees ``x`` and ``x0`` as ``[n_samples, B, C, H, W]`` views.

    Cost: a guided step is a network forward with gradients plus its backward pass (about 2.3x
    an unguided step). Measurements: docs/paper_notes.md#inverse
    """
    if n_samples < 1:
        raise InverseError(f"n_samples must be >= 1, got {n_samples}")
    b = y.shape[0]
    size = tuple(getattr(operator, "size", ()))
    if len(size) != 2:
        raise InverseError("dps_reconstruct: operator needs a .size (H, W); build it with make_operator")
    if isinstance(operator, _Operator):
        operator._check_y(y)  # a wrong y would otherwise broadcast silently against A(x0_hat)
    guided = MeasurementGuidance(denoiser, operator, _repeat(y, n_samples), scale, normalize=normalize)
    shape = (n_samples * b, channels, *size)
    device = generator.device if generator is not None else y.device
    x_T = torch.randn(shape, generator=generator, device=device, dtype=y.dtype).to(y.device)

    def unflatten(t: torch.Tensor) -> torch.Tensor:
        # batch index k = s * B + i (y was repeated sample-major), so [n B, ...] -> [n, B, ...]
        return t.view(n_samples, b, *t.shape[1:])

    report = None if callback is None else (lambda d: callback({**d, "x": unflatten(d["x"]), "x0": unflatten(d["x0"])}))
    extra = {"eta": eta} if sampler == "ddim" else {}
    x0 = sample(sampler, guided, x_T, steps, _repeat(cond, n_samples), spacing=spacing, generator=generator,
                callback=report, **extra)
    return unflatten(x0)


def unguided(denoiser: Any, shape: Sequence[int], *, steps: int, n_samples: int = 1, sampler: str = "ddpm",
             eta: float = 1.0, generator: torch.Generator | None = None,
             callback: Callable[[dict], None] | None = None, cond: Any = None,
             spacing: str = "trailing", device: torch.device | str | None = None) -> torch.Tensor:
    """Samples of the prior alone (:func:`dps_reconstruct` with ``scale=0``): ``shape = (B, C, H, W)``
    -> ``[n_samples, B, C, H, W]`` on ``device`` (default CPU). The same generator seed draws the
    same ``x_T`` as a guided run."""
    b, c, h, w = (int(s) for s in shape)

    class _Shape:  # the zero-scale guidance never calls the operator; only .size is read
        size = (h, w)

        def __call__(self, x: torch.Tensor) -> torch.Tensor:
            return x

    y = torch.zeros(b, c, h, w, device=device)  # never read: it only carries batch size and device
    return dps_reconstruct(denoiser, _Shape(), y, scale=0.0, steps=steps, n_samples=n_samples, sampler=sampler,
                           eta=eta, generator=generator, callback=callback, cond=cond, channels=c, spacing=spacing)


def effective_zeta(denoiser: Any, steps: int, scale: float, *, sampler: str = "ddpm", eta: float = 1.0,
                   spacing: str = "trailing") -> np.ndarray:
    """DPS's per-step ``zeta_t`` ``[steps]`` equivalent to guidance ``scale``: the sample moves by
    ``-zeta_t grad_{x_t} L`` at step t.

    Derivation: the guided pair is ``x0' = x0 - (s^2 / a) k g``, ``eps' = eps + s k g`` (``k`` =
    scale, ``a = sqrt(ab_t)``, ``s = sqrt(1 - ab_t)``). DDPM's mean uses
    ``c_x0 = sqrt(ab_prev) beta / (1 - ab_t)`` times ``x0'``, so ``zeta = c_x0 s^2 / a k =
    k beta sqrt(ab_prev / ab_t) = k beta / sqrt(1 - beta)``; DDIM uses ``sqrt(ab_prev) x0' +
    c_eps eps'`` with ``c_eps = sqrt(1 - ab_prev - sigma^2)``, so ``zeta = k (sqrt(ab_prev) s^2 / a
    - c_eps s)``."""
    if sampler not in ("ddpm", "ddim"):
        raise InverseError(f"effective_zeta: sampler must be 'ddpm' or 'ddim', got '{sampler}'")
    ab_all = denoiser.schedule.alphas_cumprod
    ts = respace(denoiser.schedule.T, steps, spacing)
    ab = ab_all[ts].numpy()
    ab_prev = np.append(ab[1:], 1.0)
    if sampler == "ddpm":
        beta = 1.0 - ab / ab_prev
        return scale * beta / np.sqrt(1.0 - beta)
    sigma2 = eta**2 * (1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)
    c_eps = np.sqrt(np.clip(1 - ab_prev - sigma2, 0.0, None))
    return scale * (np.sqrt(ab_prev) * (1 - ab) / np.sqrt(ab) - c_eps * np.sqrt(1 - ab))

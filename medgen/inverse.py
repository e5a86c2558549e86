"""Inverse-problem toolkit of the lung-ultrasound study: operators, a direct inverse, DPS, metrics.

The paper (lung_us_diffusion.txt) trained an unconditional DDPM on 2D lung sections, "failed"
at naive deblurring and inpainting, and left ultrasound-guided reconstruction as future work:

* **Operators** ``A`` (:func:`make_operator`, names in :data:`OPERATORS`), all taking images in
  model range ``[-1, 1]``, shape ``[B, 1, H, W]``, at a fixed ``size = (H, W)``:

  - ``us_linear`` / ``us_acoustic``: the lung phantom's ``LinearUltrasound`` /
    ``AcousticUltrasound`` (:mod:`medgen.data.phantoms.ultrasound`) with its defaults (stride
    ``STRIDE``, noise std ``NOISE_STD``): ``A(x)`` is that modality up to its noise;
    ``y`` is ``[B, 1, H, ceil(W / 2)]``.
  - ``blur``: separable Gaussian blur (the paper's deblurring), sigma ``2 px`` per 64 px of
    image side by default (``sigma=`` in pixels of the actual size overrides it), kernel radius
    ``ceil(3 sigma)``, sum 1, **zero padding** by default ("same" size): a symmetric kernel with
    zero padding is a symmetric matrix, so the operator is self-adjoint. ``padding="reflect"``
    is offered too (not symmetric; its adjoint is the exact vector-Jacobian product).
  - ``inpaint``: multiplication by a fixed 0/1 mask (the paper's inpainting); ``y`` keeps the
    image shape with zeros where pixels are missing. ``mode="columns"`` (default): a centred
    band of full-height columns covering ``fraction=0.25`` of the width is missing (dead scan
    lines); ``mode="box"``: a centred box of area ``fraction`` (side ``sqrt(fraction)``);
    ``mode="random"``: each pixel missing with probability ``fraction``, drawn from
    ``torch.Generator().manual_seed(seed)`` (``seed=0``).

  Every operator has ``.name``, ``.linear``, ``.size``, ``.default_noise_std`` (the phantom's
  ``NOISE_STD`` for ``us_*``, ``0.02`` for blur / inpaint), ``.measurement_mask``
  ``[1, 1, H', W']`` (0 on the missing pixels of ``inpaint``) and ``.n_measurements`` (its sum,
  ``M``); the linear ones have ``.adjoint(y)``, the exact transpose. :func:`measure` adds
  Gaussian noise on the measured entries only.
* **Direct inverse** (:func:`tikhonov`, :func:`tikhonov_auto`): Tikhonov-regularised least
  squares, by conjugate gradients for linear operators and L-BFGS for the nonlinear acoustic
  model, with the regularisation weight chosen by the discrepancy principle.
* **DPS** (:func:`dps_reconstruct`, :func:`unguided`, :func:`effective_zeta`): diffusion
  posterior sampling through :class:`~medgen.diffusion.guidance.MeasurementGuidance` and the
  shared samplers.
* **Metrics** (:func:`reconstruction_metrics`, :func:`mean_sd_maps`): PSNR / SSIM against the
  truth, RMS measurement residual, aeration error and category, mean and SD maps over samples.
  :func:`residual_metric` and :func:`aeration_error_metric` build the residual and the aeration
  error as metrics for :func:`medgen.score.score` (closures over the measurement / lung masks of
  the whole set, so they are scored with ``batch_size=None``).

Hand-written (no installed library offers batched torch CG, DPS on medgen's denoiser or the
aeration readout): docs/paper_notes.md#inverse
"""
from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from medgen.data.phantoms.lung import aeration_category, aeration_from_model
from medgen.data.phantoms.ultrasound import NOISE_STD, STRIDE, AcousticUltrasound, LinearUltrasound
from medgen.diffusion.guidance import MeasurementGuidance
from medgen.diffusion.samplers import sample
from medgen.diffusion.schedules import respace
from medgen.metrics.image import psnr, ssim

__all__ = ["OPERATORS", "InverseError", "make_operator", "measure", "read_measurement", "tikhonov", "tikhonov_auto",
           "residual_norm", "dps_reconstruct", "unguided", "effective_zeta", "reconstruction_metrics", "mean_sd_maps",
           "residual_metric", "aeration_error_metric",
           "UltrasoundOperator", "GaussianBlur", "Inpaint"]

OPERATORS = ("us_linear", "us_acoustic", "blur", "inpaint")
BLUR_SIGMA_PX_AT_64 = 2.0  # default blur sigma: 2 px at 64 px, scaled with the image side
BLUR_PADDINGS = ("zero", "reflect")
INPAINT_MODES = ("columns", "box", "random")
INPAINT_FRACTION = 0.25  # default fraction of missing pixels (columns / box area / random)
IMAGE_NOISE_STD = 0.02  # default noise std of blur / inpaint measurements (model-range units)
CG_TOL = 1e-6  # relative residual ||r|| / ||b|| at which a sample's CG stops
DEFAULT_LAM_GRID = tuple(10.0 ** (k / 2) for k in range(-12, 3))  # tikhonov_auto's weights: 1e-6 .. 10, half decades
DISCREPANCY_TAU = 1.0  # discrepancy principle: ||y - A x||^2 <= tau M sigma^2


class InverseError(ValueError):
    """A bad argument to the inverse-problem toolkit (unknown name, shape, option); one line."""


# ----------------------------------------------------------------------------------------------
# Operators
# ----------------------------------------------------------------------------------------------
def _size2(size: int | Sequence[int]) -> tuple[int, int]:
    h, w = (size, size) if isinstance(size, int) else tuple(int(s) for s in size)
    if h < 4 or w < 4:
        raise InverseError(f"operator size must be >= 4 x 4, got {(h, w)}")
    return h, w


class _Operator(nn.Module):
    """Shared plumbing: fixed image ``size``, shape check, measurement mask and count."""

    name: str = ""
    linear: bool = True

    def __init__(self, size: tuple[int, int], default_noise_std: float) -> None:
        super().__init__()
        self.size = size
        self.default_noise_std = float(default_noise_std)

    def _check(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != 1 or tuple(x.shape[-2:]) != self.size:
            raise InverseError(f"{self.name}: x must be [B, 1, {self.size[0]}, {self.size[1]}], got {tuple(x.shape)}")

    def _check_y(self, y: torch.Tensor) -> None:
        shape = tuple(self.measurement_mask.shape[-2:])
        if y.ndim != 4 or y.shape[1] != 1 or tuple(y.shape[-2:]) != shape:
            raise InverseError(f"{self.name}: y must be [B, 1, {shape[0]}, {shape[1]}], got {tuple(y.shape)}")

    @property
    def n_measurements(self) -> int:
        """``M``: the number of measured entries of one ``y``."""
        return int(self.measurement_mask.sum().item())

    def extra_repr(self) -> str:
        return f"name={self.name!r}, size={self.size}, linear={self.linear}, noise_std={self.default_noise_std}"


class UltrasoundOperator(_Operator):
    """The lung phantom's ultrasound model at a fixed size: ``x [B, 1, H, W] -> y [B, 1, H', W']``.

    ``name="us_linear"`` wraps :class:`LinearUltrasound` (linear, with ``.adjoint``),
    ``"us_acoustic"`` :class:`AcousticUltrasound` (nonlinear). ``options`` go to the phantom's
    class (default stride ``STRIDE``, noise std ``NOISE_STD``, exactly the phantom's modalities).
    """

    def __init__(self, name: str, size: tuple[int, int], **options: Any) -> None:
        options.setdefault("stride", STRIDE)
        options.setdefault("noise_std", NOISE_STD)
        model = LinearUltrasound(**options) if name == "us_linear" else AcousticUltrasound(**options)
        super().__init__(size, model.noise_std)
        self.name, self.linear, self.model = name, name == "us_linear", model
        self.register_buffer("measurement_mask", torch.ones(1, 1, *model.output_shape(*size)), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        return self.model(x)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """``A^T y``: ``[B, 1, H', W'] -> [B, 1, H, W]`` (us_linear only)."""
        if not self.linear:
            raise InverseError(f"{self.name} is nonlinear and has no adjoint")
        self._check_y(y)
        return self.model.adjoint(y, size=self.size)


def _gaussian_1d(sigma: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Sampled 1D Gaussian ``[2r + 1]``, ``r = max(1, ceil(3 sigma))``, sum 1."""
    r = max(1, math.ceil(3.0 * sigma))
    i = torch.arange(-r, r + 1, dtype=dtype, device=device)
    k = torch.exp(-0.5 * (i / max(sigma, 1e-6)) ** 2)
    return k / k.sum()


class GaussianBlur(_Operator):
    """Separable Gaussian blur ``[B, 1, H, W] -> [B, 1, H, W]`` (module docstring).

    ``sigma``: pixels of this size, a float or ``(axial, lateral)``; default
    ``BLUR_SIGMA_PX_AT_64 * side / 64`` per axis. ``padding``: ``"zero"`` (self-adjoint) or
    ``"reflect"``. ``noise_std``: the default measurement noise.
    """

    name = "blur"

    def __init__(self, size: tuple[int, int], *, sigma: float | Sequence[float] | None = None,
                 padding: str = "zero", noise_std: float = IMAGE_NOISE_STD) -> None:
        super().__init__(size, noise_std)
        if padding not in BLUR_PADDINGS:
            raise InverseError(f"blur: unknown padding '{padding}' (choose from {', '.join(BLUR_PADDINGS)})")
        if sigma is None:
            sigma = (BLUR_SIGMA_PX_AT_64 * size[0] / 64, BLUR_SIGMA_PX_AT_64 * size[1] / 64)
        sig = (float(sigma), float(sigma)) if isinstance(sigma, (int, float)) else tuple(float(s) for s in sigma)
        if len(sig) != 2 or min(sig) <= 0:
            raise InverseError(f"blur: sigma must be > 0 (one value or two), got {sigma}")
        self.sigma, self.padding = sig, padding
        k_ax, k_lat = _gaussian_1d(sig[0], torch.float64, torch.device("cpu")), _gaussian_1d(sig[1], torch.float64,
                                                                                               torch.device("cpu"))
        if padding == "reflect" and (k_ax.numel() // 2 >= size[0] or k_lat.numel() // 2 >= size[1]):
            raise InverseError(f"blur: reflect padding needs a kernel radius below the image size {size}")
        self.register_buffer("k_ax", k_ax.float().view(1, 1, -1, 1), persistent=False)
        self.register_buffer("k_lat", k_lat.float().view(1, 1, 1, -1), persistent=False)
        self.register_buffer("measurement_mask", torch.ones(1, 1, *size), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        k_ax, k_lat = self.k_ax.to(x), self.k_lat.to(x)
        ra, rl = k_ax.shape[2] // 2, k_lat.shape[3] // 2
        if self.padding == "zero":  # conv2d is a correlation; the kernels are symmetric
            return F.conv2d(F.conv2d(x, k_ax, padding=(ra, 0)), k_lat, padding=(0, rl))
        x = F.conv2d(F.pad(x, (0, 0, ra, ra), mode="reflect"), k_ax)
        return F.conv2d(F.pad(x, (rl, rl, 0, 0), mode="reflect"), k_lat)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """``A^T y`` ``[B, 1, H, W]``: ``A y`` for zero padding, the exact vector-Jacobian product otherwise."""
        self._check_y(y)
        if self.padding == "zero":
            return self(y)
        with torch.enable_grad():
            x = torch.zeros_like(y, requires_grad=True)
            (grad,) = torch.autograd.grad(self(x), x, grad_outputs=y)
        return grad


class Inpaint(_Operator):
    """``y = m * x`` with a fixed 0/1 mask ``m`` ``[1, 1, H, W]`` (module docstring); self-adjoint.

    ``mode``: ``"columns"`` (default), ``"box"`` or ``"random"``; ``fraction``: the missing
    fraction; ``seed``: the random mask's generator seed.
    """

    name = "inpaint"

    def __init__(self, size: tuple[int, int], *, mode: str = "columns", fraction: float = INPAINT_FRACTION,
                 seed: int = 0, noise_std: float = IMAGE_NOISE_STD) -> None:
        super().__init__(size, noise_std)
        if mode not in INPAINT_MODES:
            raise InverseError(f"inpaint: unknown mode '{mode}' (choose from {', '.join(INPAINT_MODES)})")
        if not 0.0 < fraction < 1.0:
            raise InverseError(f"inpaint: fraction must lie in (0, 1), got {fraction}")
        self.mode, self.fraction = mode, float(fraction)
        self.register_buffer("measurement_mask", self._mask(size, mode, fraction, seed), persistent=False)

    @staticmethod
    def _mask(size: tuple[int, int], mode: str, fraction: float, seed: int) -> torch.Tensor:
        """The 0/1 mask ``[1, 1, H, W]`` (1 = observed)."""
        h, w = size
        mask = torch.ones(1, 1, h, w)
        if mode == "random":
            g = torch.Generator().manual_seed(int(seed))
            return (torch.rand(1, 1, h, w, generator=g) >= fraction).float()
        side = math.sqrt(fraction) if mode == "box" else 1.0
        mh = h if mode == "columns" else max(1, round(side * h))  # missing rows / columns, centred
        mw = max(1, round((fraction if mode == "columns" else side) * w))
        top, left = (h - mh) // 2, (w - mw) // 2
        mask[..., top:top + mh, left:left + mw] = 0.0
        return mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        return x * self.measurement_mask.to(x)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """``A^T y = m * y`` ``[B, 1, H, W]``."""
        self._check_y(y)
        return y * self.measurement_mask.to(y)


def make_operator(name: str, *, size: int | tuple[int, int], **options: Any) -> nn.Module:
    """The forward operator ``name`` (one of :data:`OPERATORS`) for images of ``size`` (int or ``(H, W)``).

    ``options`` go to the operator (module docstring): us_* -> the phantom's ultrasound class
    (``stride``, ``noise_std``, ...); ``blur`` -> ``sigma``, ``padding``, ``noise_std``;
    ``inpaint`` -> ``mode``, ``fraction``, ``seed``, ``noise_std``.
    """
    if name not in OPERATORS:
        raise InverseError(f"unknown operator '{name}' (choose from {', '.join(OPERATORS)})")
    hw = _size2(size)
    try:
        if name in ("us_linear", "us_acoustic"):
            return UltrasoundOperator(name, hw, **options)
        return GaussianBlur(hw, **options) if name == "blur" else Inpaint(hw, **options)
    except TypeError as err:  # an unknown option
        raise InverseError(f"{name}: bad option ({err})") from None


def measure(operator: nn.Module, x: torch.Tensor, noise_std: float | None = None,
            generator: torch.Generator | None = None) -> torch.Tensor:
    """``y = A(x) + noise_std * n``, ``n ~ N(0, I)`` on the measured entries: x ``[B, 1, H, W]`` -> y.

    ``noise_std`` in measurement units (default ``operator.default_noise_std``); the noise is
    drawn with ``torch.randn(y.shape, generator=generator)`` on the generator's device and
    multiplied by ``operator.measurement_mask`` (inpainting adds no noise to missing pixels).
    """
    std = operator.default_noise_std if noise_std is None else float(noise_std)
    if std < 0:
        raise InverseError(f"noise_std must be >= 0, got {std}")
    with torch.no_grad():
        y = operator(x)
    device = generator.device if generator is not None else y.device
    noise = torch.randn(y.shape, generator=generator, device=device, dtype=y.dtype).to(y.device)
    return y + std * noise * operator.measurement_mask.to(y)


def read_measurement(path: str | os.PathLike, operator: nn.Module, *, max_bytes: int = 50 << 20,
                     max_elements: int = 1 << 22) -> torch.Tensor:
    """A measurement of ``operator`` from a ``.npy`` file -> ``y`` ``[1, 1, H', W']`` float32.

    The array must have the operator's output shape ``[H', W']`` (leading 1s accepted), a real
    numeric dtype, at most ``max_elements`` entries and finite values; the file at most
    ``max_bytes`` (checked before reading). Anything else is a one-line :class:`InverseError`
    naming the file.
    """
    p = Path(path)
    want = tuple(operator.measurement_mask.shape[-2:])
    if p.suffix.lower() != ".npy":
        raise InverseError(f"{p.name}: a measurement must be a .npy array of shape {want[0]}x{want[1]}")
    if p.stat().st_size > max_bytes:
        raise InverseError(f"{p.name}: file too large ({p.stat().st_size / 2**20:.1f} MB; limit {max_bytes >> 20} MB)")
    try:
        arr = np.load(p, allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 -- any unreadable file is one line
        raise InverseError(f"{p.name}: not a readable .npy array ({' '.join(str(exc).split())})") from None
    if arr.dtype.kind not in "fiu" or arr.size > max_elements:
        raise InverseError(f"{p.name}: need a real numeric array of at most {max_elements} entries, "
                           f"got dtype {arr.dtype} with {arr.size} entries")
    squeezed = arr.reshape(arr.shape[-2:]) if arr.ndim >= 2 and all(d == 1 for d in arr.shape[:-2]) else arr
    if squeezed.shape != want:
        raise InverseError(f"{p.name}: measurement shape {tuple(arr.shape)} does not match the "
                           f"{operator.name} operator's output {want[0]}x{want[1]}")
    if not np.isfinite(squeezed).all():
        raise InverseError(f"{p.name}: measurement contains NaN or infinite values")
    return torch.from_numpy(np.ascontiguousarray(squeezed, np.float32))[None, None]


# ----------------------------------------------------------------------------------------------
# Direct inverse: Tikhonov
# ----------------------------------------------------------------------------------------------
def _bdot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample inner product of ``[B, ...]`` tensors -> ``[B, 1, 1, 1]``."""
    return (a * b).flatten(1).sum(1).view(-1, 1, 1, 1)


def _cg(apply: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, x: torch.Tensor, iters: int,
        tol: float) -> torch.Tensor:
    """Batched conjugate gradients for the SPD systems ``apply(x) = b`` (``[B, 1, H, W]``).

    Each sample has its own step sizes; a sample whose ``||r|| <= tol ||b||`` is frozen
    (its step size is set to 0) while the others continue."""
    r = b - apply(x)  # 1. residual and first search direction
    p, rr = r.clone(), _bdot(r, r)
    stop = tol**2 * _bdot(b, b).clamp_min(1e-30)
    for _ in range(iters):
        active = rr > stop
        if not bool(active.any()):
            break
        ap = apply(p)
        alpha = torch.where(active, rr / _bdot(p, ap).clamp_min(1e-30), torch.zeros_like(rr))  # 2. step
        x, r = x + alpha * p, r - alpha * ap  # 3. update iterate and residual
        rr_new = _bdot(r, r)
        p = r + torch.where(active, rr_new / rr.clamp_min(1e-30), torch.zeros_like(rr)) * p  # 4. new direction
        rr = torch.where(active, rr_new, rr)
    return x


def tikhonov(operator: nn.Module, y: torch.Tensor, *, lam: float, iters: int = 100,
             x_init: torch.Tensor | None = None, x_ref: torch.Tensor | float = 0.0, tol: float = CG_TOL,
             clamp: bool = True) -> torch.Tensor:
    """Direct inverse: ``argmin_x ||y - A(x)||^2 + lam ||x - x_ref||^2``, y -> x ``[B, 1, H, W]``.

    ``lam`` is in the units of the data term (squared measurement units per squared model
    unit). Linear operators: the normal equations ``(A^T A + lam I) x = A^T y + lam x_ref``
    solved by batched conjugate gradients (at most ``iters`` iterations, per-sample stop at
    relative residual ``tol``) from ``x_init`` (default zeros). Nonlinear operators (the
    acoustic model): the "direct inverse" of a nonlinear model, the same objective minimised
    by L-BFGS (strong-Wolfe line search, ``iters`` iterations) from ``x_init`` (default the
    constant image ``x_ref``); a local minimum. The batch is one L-BFGS problem: its objective
    is a sum of independent per-image terms, but the line search and curvature memory are
    shared, so pass one image at a time for batch-independent results. ``x_ref`` (default 0, mid-grey = -200 HU) is a
    float or ``[B, 1, H, W]``. ``clamp``: clip the result to ``[-1, 1]`` (the model range).
    """
    if lam < 0:
        raise InverseError(f"tikhonov: lam must be >= 0, got {lam}")
    operator._check_y(y)
    b = y.shape[0]
    shape = (b, 1, *operator.size)
    ref = torch.as_tensor(x_ref, dtype=y.dtype, device=y.device).expand(shape)
    if x_init is not None:
        x0 = x_init.detach().to(y).expand(shape).clone()
    else:  # CG starts from zeros, L-BFGS from the reference image
        x0 = torch.zeros(shape, dtype=y.dtype, device=y.device) if operator.linear else ref.clone()
    if operator.linear:
        with torch.no_grad():
            rhs = operator.adjoint(y) + lam * ref  # A^T y + lam x_ref
            x = _cg(lambda v: operator.adjoint(operator(v)) + lam * v, rhs, x0, iters, tol)
    else:
        x = _lbfgs(operator, y, lam, ref, x0, iters)
    return x.clamp(-1.0, 1.0) if clamp else x


def _lbfgs(operator: nn.Module, y: torch.Tensor, lam: float, ref: torch.Tensor, x0: torch.Tensor,
           iters: int) -> torch.Tensor:
    """L-BFGS on ``sum_b ||y_b - A(x_b)||^2 + lam ||x_b - ref_b||^2`` (samples independent)."""
    x = x0.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([x], lr=1.0, max_iter=iters, history_size=10, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-9, tolerance_change=1e-12)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = (y - operator(x)).pow(2).sum() + lam * (x - ref).pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return x.detach()


def residual_norm(operator: nn.Module, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``||m (y - A(x))||`` per sample ``[B]`` over the measured entries (``m`` the measurement mask)."""
    with torch.no_grad():
        r = (y - operator(x)) * operator.measurement_mask.to(y)
    return r.flatten(1).norm(dim=1)


def tikhonov_auto(operator: nn.Module, y: torch.Tensor, noise_std: float, grid: Sequence[float] = DEFAULT_LAM_GRID,
                  *, tau: float = DISCREPANCY_TAU, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`tikhonov` with ``lam`` picked per image by the discrepancy principle.

    For every ``lam`` in ``grid`` the batch is solved; per image the *largest* ``lam`` whose
    squared residual ``||y - A x||^2 <= tau M noise_std^2`` (``M`` = ``operator.n_measurements``;
    the residual then matches the noise level) is kept, or the smallest ``lam`` if none does.
    The residual is that of the unclamped solution (clipping to ``[-1, 1]`` raises it, though
    it only brings ``x`` closer to any truth inside the range); ``clamp`` (default True) is
    applied to the chosen solution. ``kwargs`` go to :func:`tikhonov`. Returns ``(x [B, 1, H, W], lam [B])``.
    """
    lams = sorted(float(v) for v in grid)
    if not lams:
        raise InverseError("tikhonov_auto: empty lam grid")
    target = tau * operator.n_measurements * float(noise_std) ** 2
    clamp = kwargs.pop("clamp", True)
    best_x, best_lam = None, torch.full((y.shape[0],), lams[0], dtype=torch.float64)
    for lam in lams:  # ascending: later (larger) lam overwrite where they still fit the data
        x = tikhonov(operator, y, lam=lam, clamp=False, **kwargs)  # the residual of the unclamped solution
        ok = (residual_norm(operator, y, x) ** 2 <= target).cpu()
        if best_x is None:
            best_x = x
            continue
        best_x = torch.where(ok.view(-1, 1, 1, 1).to(x.device), x, best_x)
        best_lam = torch.where(ok, torch.full_like(best_lam, lam), best_lam)
    return (best_x.clamp(-1.0, 1.0) if clamp else best_x), best_lam


# ----------------------------------------------------------------------------------------------
# Diffusion posterior sampling
# ----------------------------------------------------------------------------------------------
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


# ----------------------------------------------------------------------------------------------
# Metrics
# ----------------------------------------------------------------------------------------------
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

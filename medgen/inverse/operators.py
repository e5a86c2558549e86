"""Forward operators ``A`` of the inverse-problem toolkit: images ``x [B, 1, H, W]`` (model range)
-> measurements ``y [B, 1, H', W']``.

:func:`make_operator` builds one of :data:`OPERATORS` (``us_linear`` / ``us_acoustic``: the lung
phantom's ultrasound models, ``blur``, ``inpaint``; details in :mod:`medgen.inverse`);
:func:`measure` adds noise on the measured entries, :func:`read_measurement` loads a ``.npy``
measurement, :func:`residual_norm` is ``||m (y - A(x))||`` per sample. :class:`InverseError`
is the toolkit's one-line error.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medgen.data.phantoms.ultrasound import NOISE_STD, STRIDE, AcousticUltrasound, LinearUltrasound

OPERATORS = ("us_linear", "us_acoustic", "blur", "inpaint")
BLUR_SIGMA_PX_AT_64 = 2.0  # default blur sigma: 2 px at 64 px, scaled with the image side
BLUR_PADDINGS = ("zero", "reflect")
INPAINT_MODES = ("columns", "box", "random")
INPAINT_FRACTION = 0.25  # default fraction of missing pixels (columns / box area / random)
IMAGE_NOISE_STD = 0.02  # default noise std of blur / inpaint measurements (model-range units)


class InverseError(ValueError):
    """A bad argument to the inverse-problem toolkit (unknown name, shape, option); one line."""


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
    """Separable Gaussian blur ``[B, 1, H, W] -> [B, 1, H, W]`` (see :mod:`medgen.inverse`).

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
    """``y = m * x`` with a fixed 0/1 mask ``m`` ``[1, 1, H, W]`` (see :mod:`medgen.inverse`); self-adjoint.

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

    ``options`` go to the operator (see :mod:`medgen.inverse`): us_* -> the phantom's ultrasound class
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


def residual_norm(operator: nn.Module, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``||m (y - A(x))||`` per sample ``[B]`` over the measured entries (``m`` the measurement mask)."""
    with torch.no_grad():
        r = (y - operator(x)) * operator.measurement_mask.to(y)
    return r.flatten(1).norm(dim=1)

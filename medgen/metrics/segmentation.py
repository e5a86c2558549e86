"""Segmentation overlap metrics on integer label maps, one value per sample (or per sample and label).

Inputs are label maps ``pred`` / ``target`` ``[B, H, W]`` or ``[B, D, H, W]`` (torch integer
tensors or NumPy integer arrays; ``bool`` counts as labels {0, 1}); ``0`` is background.
``labels`` selects the structures (``None``: every non-zero label present in ``pred`` or
``target`` anywhere in the batch). Dice = 2|P∩T| / (|P| + |T|).

How this maps onto the MRI->CT spine paper (Tables 2-3, "Average Dice score per volume and per
vertebra"):

* **per volume** -> :func:`dice_foreground`: the Dice of the *union* of the vertebra labels
  (binary spine vs. background) per volume ``[B]``, then averaged over volumes.
* **per vertebra** -> :func:`dice_per_label` ``[B, L]`` (one column per vertebra label), then
  :func:`pooled_mean`: the mean over every (volume, vertebra) pair that exists, i.e. over all
  vertebrae of the test set, not a mean of per-volume means.
* **posterior structures** (Table 3, vertebral body removed): zero the vertebral-body voxels in
  both maps first (``np.where(body_mask, 0, vertebra_map)``) and use the same two functions;
  or, for a subregion-label map, pass the posterior subregion labels as ``labels`` to
  :func:`dice_foreground` (the Dice of that subset's union).
* :func:`dice_mean` (mean over labels within each sample) is the other common "all labels"
  reading; it weights small and large structures equally, :func:`dice_foreground` weights voxels.

Empty labels: a label absent from both maps of a sample gives ``NaN`` (undefined, skipped by
``nanmean``); a label absent from ``target`` but present in ``pred`` gives ``0`` (a hallucinated
vertebra is penalised). MONAI's ``ignore_empty=True`` would give ``NaN`` for the latter too
(hiding false positives), ``ignore_empty=False`` gives ``1`` for the former (inflating the mean),
so neither matches the paper's "per vertebra present" average; we call ``compute_dice`` with
``ignore_empty=False`` and set the both-empty entries to ``NaN`` ourselves. Where ``target``
contains the label, values equal ``monai.metrics.DiceMetric`` exactly.

Written by hand (MONAI does not do it): the one-hot encoding of an arbitrary label *subset*
(MONAI's ``one_hot`` needs contiguous classes ``0..N-1``, which for vertebra labels 1..28 plus
sacrum/subregion codes in the 40s-100s would allocate unused channels), and the union of a subset.

HD95 (:func:`hd95`) is MONAI's ``compute_hausdorff_distance(percentile=95)`` on the union mask, in
voxel units unless ``spacing`` is given; ``NaN`` where either mask is empty.
"""
from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
import torch
from monai.metrics import compute_dice, compute_hausdorff_distance

__all__ = ["dice_foreground", "dice_per_label", "dice_mean", "pooled_mean", "hd95", "SegmentationInputError"]


class SegmentationInputError(ValueError):
    """Invalid label maps or label selection."""


def _as_labels(x: torch.Tensor | np.ndarray, name: str) -> torch.Tensor:
    """Convert ``x`` to an int64 tensor, rejecting non-integer dtypes."""
    t = torch.as_tensor(x)
    if t.dtype == torch.bool:
        return t.long()
    if t.is_floating_point() or t.is_complex():
        raise SegmentationInputError(f"{name}: label maps must be integer, got dtype {t.dtype}")
    return t.long()


def _check(pred, target, labels: Sequence[int] | None, fn: str) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Validate inputs; return int64 ``pred``/``target`` ``[B, *S]`` and the label list."""
    p, t = _as_labels(pred, f"{fn} pred"), _as_labels(target, f"{fn} target")
    if p.shape != t.shape:
        raise SegmentationInputError(f"{fn}: pred {tuple(p.shape)} and target {tuple(t.shape)} differ in shape")
    if p.ndim not in (3, 4):
        raise SegmentationInputError(f"{fn}: expected [B, H, W] or [B, D, H, W], got shape {tuple(p.shape)}")
    if p.numel() and (p.min() < 0 or t.min() < 0):
        raise SegmentationInputError(f"{fn}: label maps contain negative labels")
    present = set(torch.unique(torch.cat([p.flatten(), t.flatten()])).tolist()) - {0}
    if labels is None:
        return p, t, sorted(present)
    labels = [int(v) for v in labels]
    if len(labels) == 0:
        raise SegmentationInputError(f"{fn}: labels is empty")
    if len(set(labels)) != len(labels):
        raise SegmentationInputError(f"{fn}: labels contain duplicates: {labels}")
    bad = [v for v in labels if v <= 0]
    if bad:
        raise SegmentationInputError(f"{fn}: labels must be > 0 (0 is background), got {bad}")
    unknown = [v for v in labels if v not in present]
    if unknown:
        raise SegmentationInputError(f"{fn}: requested labels {unknown} occur in neither pred nor target")
    return p, t, labels


def _one_hot(x: torch.Tensor, labels: list[int]) -> torch.Tensor:
    """``[B, *S]`` label map -> ``[B, L, *S]`` float one-hot of just ``labels`` (any integers)."""
    lab = torch.tensor(labels, dtype=x.dtype, device=x.device).view(1, -1, *([1] * (x.ndim - 1)))
    return (x.unsqueeze(1) == lab).float()


def _union(x: torch.Tensor, labels: list[int], all_foreground: bool) -> torch.Tensor:
    """``[B, *S]`` label map -> ``[B, 1, *S]`` float mask of the union of ``labels`` (or of x > 0)."""
    if all_foreground:
        return (x > 0).unsqueeze(1).float()
    return _one_hot(x, labels).amax(1, keepdim=True)


def _dice_channels(p1: torch.Tensor, t1: torch.Tensor) -> torch.Tensor:
    """Dice ``[B, L]`` (float64) of one-hot ``[B, L, *S]``; NaN where both channels are empty."""
    # MONAI with ignore_empty=False: 1.0 for both-empty, 0.0 for target-empty/pred-non-empty
    d = compute_dice(p1, t1, include_background=True, ignore_empty=False).double()
    both_empty = (p1.flatten(2).sum(-1) == 0) & (t1.flatten(2).sum(-1) == 0)
    return d.masked_fill(both_empty, float("nan"))


def dice_per_label(pred: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray,
                   labels: Sequence[int] | None = None) -> torch.Tensor:
    """Dice per sample and label ``[B, L]`` (float64) of label maps ``[B, *S]``.

    Column ``l`` is ``labels[l]`` (``None``: the sorted non-zero labels present in the batch).
    ``NaN`` where the label is absent from both maps of that sample, ``0`` where only ``pred``
    has it. "Per vertebra" in the paper is :func:`pooled_mean` of this.
    """
    p, t, labs = _check(pred, target, labels, "dice_per_label")
    if not labs:
        raise SegmentationInputError("dice_per_label: no foreground label in pred or target")
    # one label at a time: memory [B, 1, *S] instead of [B, L, *S] (25 vertebrae x 256^3 = 1.6 GB)
    return torch.cat([_dice_channels(_one_hot(p, [v]), _one_hot(t, [v])) for v in labs], dim=1)


def dice_mean(pred: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray,
              labels: Sequence[int] | None = None) -> torch.Tensor:
    """Mean over labels of :func:`dice_per_label`, per sample ``[B]`` (NaN-skipping; NaN if all NaN)."""
    d = dice_per_label(pred, target, labels)
    return d.nanmean(dim=1)


def dice_foreground(pred: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray,
                    labels: Sequence[int] | None = None) -> torch.Tensor:
    """Dice of the union of ``labels`` (binary foreground) per sample ``[B]`` (float64).

    ``labels=None``: every non-zero label (the paper's "per volume" Dice); a subset, e.g. the
    posterior-element subregion labels, gives that subset's Dice. ``NaN`` where the union is
    empty in both maps, ``0`` where only ``pred`` has it.
    """
    p, t, labs = _check(pred, target, labels, "dice_foreground")
    pf, tf = _union(p, labs, labels is None), _union(t, labs, labels is None)
    return _dice_channels(pf, tf)[:, 0]


def pooled_mean(per_label: torch.Tensor) -> float:
    """Mean over all existing (sample, label) entries of ``[B, L]`` (NaNs skipped): "per vertebra".

    Concatenate the ``[B, L]`` results of several batches along dim 0 first (same ``labels``), or
    flatten and concatenate if the label lists differ; the pooled mean does not depend on which.
    """
    v = per_label.flatten()
    v = v[~torch.isnan(v)]
    return float("nan") if v.numel() == 0 else float(v.mean())


def hd95(pred: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray,
         labels: Sequence[int] | None = None, spacing: float | Sequence[float] | None = None) -> torch.Tensor:
    """95th-percentile symmetric Hausdorff distance of the union of ``labels`` per sample ``[B]``.

    MONAI ``compute_hausdorff_distance(percentile=95)`` on the binary union masks ``[B, 1, *S]``
    (surface-to-surface Euclidean distances); voxel units unless ``spacing`` (per spatial axis)
    is given. ``NaN`` where either mask is empty (MONAI returns inf/NaN with a warning there).
    Returned float64 on the CPU (MONAI computes surface distances on the CPU unless cuCIM is installed).
    """
    p, t, labs = _check(pred, target, labels, "hd95")
    pf, tf = _union(p, labs, labels is None), _union(t, labs, labels is None)
    empty = (pf.flatten(1).sum(1) == 0) | (tf.flatten(1).sum(1) == 0)
    out = torch.full((p.shape[0],), float("nan"), dtype=torch.float64)
    keep = torch.nonzero(~empty).flatten()
    if keep.numel():
        with warnings.catch_warnings():  # MONAI 1.5+ warns about its own internal deprecated argument
            warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*", category=FutureWarning)
            d = compute_hausdorff_distance(pf[keep], tf[keep], include_background=True, percentile=95,
                                           spacing=spacing)
        out[keep] = d[:, 0].double().cpu()
    return out

"""Score predictions against targets: tidy rows, one per (sample, metric), each with its ``data_range``.

:func:`score` is the one scoring path of medgen: the translation tables, the reconstruction
tables of the lung study and :func:`medgen.evaluate.evaluate` all end here. A metric is a
registry name (:data:`medgen.registry.METRICS`) or a callable ``fn(pred [B, C, *S], target
[B, C, *S], *, data_range, mask) -> [B]``; a callable that needs per-sample side data (a
measurement, a label) takes it from its closure and is given the whole set at once
(``batch_size=None``, the default).

``mask_mode`` says what a ``mask`` does (:data:`MASK_MODES`): ``"mean"`` passes it to every
metric (averages inside the mask); ``"zero"`` sets the pixels outside it to ``fill`` in both
prediction and target and scores the whole image (the MRI->CT paper's "setting them to zero";
the constant pixels inflate PSNR/SSIM, which is why the two modes differ); ``"ignore"`` scores
the whole image unmasked.

A metric function with a ``row_notes(pred [b, C, *S]) -> {column: value}`` attribute adds those
columns to its own rows (empty in the other metrics' rows): ``ms_ssim`` records the number of
scales it used, ``ms_ssim_scales`` (fewer than 5 on images under 176 px).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import pandas as pd
import torch

from medgen.predict import Predictions

__all__ = ["score", "resolve_metrics", "apply_mask", "MASK_MODES", "ROW_COLUMNS"]

MetricFn = Callable[..., torch.Tensor]
MASK_MODES = ("mean", "zero", "ignore")
ROW_COLUMNS = ("sample", "patient_id", "metric", "value", "data_range")


def resolve_metrics(metrics: str | Sequence[str | MetricFn]) -> list[tuple[str, MetricFn]]:
    """``[(name, fn)]`` from registry names or callables (named by ``__name__``)."""
    import medgen.metrics  # noqa: F401 -- fills METRICS
    from medgen.registry import METRICS, lookup

    if isinstance(metrics, str):
        metrics = (metrics,)
    if not metrics:
        raise ValueError("score: no metrics given")
    return [(m, lookup(METRICS, m)) if isinstance(m, str) else (getattr(m, "__name__", str(m)), m) for m in metrics]


def apply_mask(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None, mode: str,
               fill: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(pred, target, mask)`` as the metrics see them under ``mode`` (images ``[B, C, *S]``, mask ``[B, 1, *S]``)."""
    if mask is None or mode == "ignore":
        return pred, target, None
    if mode == "mean":
        return pred, target, mask
    keep = mask.to(device=pred.device) != 0
    return pred.where(keep, fill), target.where(keep, fill), None


def score(pred: torch.Tensor | Predictions, target: torch.Tensor, metrics: str | Sequence[str | MetricFn] = ("psnr", "ssim"),
          *, data_range: float = 2.0, mask: torch.Tensor | None = None, patient_ids: Sequence[str] | None = None,
          mask_mode: str = "mean", fill: float = 0.0, batch_size: int | None = None,
          index: Sequence[int] | None = None) -> pd.DataFrame:
    """Score ``pred`` ``[N, C, *S]`` (or :class:`~medgen.predict.Predictions`) against ``target`` ``[N, C, *S]``.

    ``mask`` ``[N, 1, *S]`` (optional) is applied by ``mask_mode``; ``patient_ids`` (default: the
    predictions' or the sample index) and ``index`` (default: the predictions' or 0..N-1) label
    the rows. ``batch_size`` scores in chunks (``None``: all at once). Returns the columns
    :data:`ROW_COLUMNS` (+ ``method`` when the predictions name one).
    """
    if mask_mode not in MASK_MODES:
        raise ValueError(f"score: unknown mask_mode '{mask_mode}' (choose from {', '.join(MASK_MODES)})")
    method = None
    if isinstance(pred, Predictions):
        patient_ids = pred.patient_ids if patient_ids is None else patient_ids
        index = pred.index if index is None else index
        method, pred = pred.method, pred.outputs
    if tuple(pred.shape) != tuple(target.shape):
        raise ValueError(f"score: predictions are {tuple(pred.shape)} but targets are {tuple(target.shape)}")
    n = int(pred.shape[0])
    ids = [str(p) for p in patient_ids] if patient_ids is not None else [str(i) for i in range(n)]
    index = list(index) if index is not None else list(range(n))
    if len(ids) != n or len(index) != n:
        raise ValueError(f"score: {n} predictions but {len(ids)} patient ids / {len(index)} indices")
    fns = resolve_metrics(metrics)
    rows: dict[str, list[Any]] = {"sample": [], "patient_id": [], "metric": [], "value": []}
    step = n if batch_size is None else int(batch_size)
    for start in range(0, n, max(step, 1)):
        stop = min(start + step, n)
        m = None if mask is None else mask[start:stop]
        p, t, m = apply_mask(pred[start:stop].detach().float(), target[start:stop].float(), m, mask_mode, float(fill))
        _score_chunk(fns, p, t, m, data_range, ids[start:stop], index[start:stop], rows)
    total = len(rows["sample"])
    notes = {k: pd.array(col + [None] * (total - len(col))) for k, col in rows.items() if k not in ROW_COLUMNS}
    df = pd.DataFrame({k: col for k, col in rows.items() if k in ROW_COLUMNS}).assign(data_range=float(data_range))
    for key, col in notes.items():
        df[key] = col
    if method is not None:
        df["method"] = method
    return df


def _score_chunk(fns: list[tuple[str, MetricFn]], pred: torch.Tensor, target: torch.Tensor,
                 mask: torch.Tensor | None, data_range: float, ids: list[str], index: list[int],
                 rows: dict[str, list[Any]]) -> None:
    """Append the rows of one chunk ``pred``, ``target`` ``[b, C, *S]`` for every metric."""
    b = int(pred.shape[0])
    for name, fn in fns:
        values = fn(pred, target, data_range=data_range, mask=mask)
        if tuple(values.shape) != (b,):
            raise ValueError(f"score: metric '{name}' returned shape {tuple(values.shape)}, expected ({b},)")
        notes = getattr(fn, "row_notes", None)
        for key, value in (notes(pred) if notes is not None else {}).items():  # e.g. ms_ssim_scales
            col = rows.setdefault(key, [])
            col += [None] * (len(rows["sample"]) - len(col)) + [value] * b
        rows["sample"] += index
        rows["patient_id"] += ids
        rows["metric"] += [name] * b
        rows["value"] += values.double().cpu().tolist()

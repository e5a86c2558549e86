"""Evaluate a translator on a paired dataset: tidy per-sample rows, subject-level summaries, paired tests.

:func:`evaluate` runs ``translator.translate`` over the dataset in batches and returns one
row per (sample, metric) with the ``data_range`` used, so every number carries its range.
:func:`summarize` follows DESIGN.md's guardrails: per-subject means first (several samples
of one patient count once), then the mean, SD and count across subjects.
:func:`paired_test` compares two methods on the same subjects with the Wilcoxon
signed-rank test (:func:`scipy.stats.wilcoxon`).
"""
from __future__ import annotations

from typing import Any, Callable, Iterator, Sequence

import pandas as pd
import torch
from scipy.stats import wilcoxon

from medgen.data.batch import Batch, collate
from medgen.registry import METRICS, lookup

__all__ = ["evaluate", "summarize", "paired_test", "subject_means", "MASK_MODES"]

MetricFn = Callable[..., torch.Tensor]

#: What an item's ``mask`` does in :func:`evaluate`: average inside it, zero outside it, or nothing.
MASK_MODES = ("mean", "zero", "ignore")


def _resolve_metrics(metrics: Sequence[str | MetricFn]) -> list[tuple[str, MetricFn]]:
    """``[(name, fn)]`` from registry names or callables (named by ``__name__``)."""
    if isinstance(metrics, str):
        metrics = (metrics,)
    if not metrics:
        raise ValueError("evaluate: no metrics given")
    return [(m, lookup(METRICS, m)) if isinstance(m, str) else (m.__name__, m) for m in metrics]


def _device_of(translator: Any) -> torch.device | None:
    """Device of the translator's first parameter or buffer, if it has any."""
    if isinstance(translator, torch.nn.Module):
        for t in list(translator.parameters()) + list(translator.buffers()):
            return t.device
    return None


def _batches(dataset: Any, batch_size: int) -> Iterator[tuple[int, Batch]]:
    """Yield ``(first_index, Batch)`` over ``dataset`` in index order."""
    for start in range(0, len(dataset), batch_size):
        stop = min(start + batch_size, len(dataset))
        yield start, collate([dataset[i] for i in range(start, stop)])


def evaluate(
    translator: Any,
    dataset: Any,
    metrics: Sequence[str | MetricFn] = ("psnr", "ssim"),
    *,
    data_range: float = 2.0,
    batch_size: int = 16,
    generator: torch.Generator | None = None,
    progress: bool = False,
    mask_mode: str = "mean",
    fill: float = 0.0,
    **options: Any,
) -> pd.DataFrame:
    """Translate every sample of ``dataset`` and score it against its target.

    ``dataset[i]`` is a dict with ``source`` ``[C_s, *S]``, ``target`` ``[C_t, *S]``, optional
    ``mask`` ``[1, *S]`` and ``patient_id``; ``translator.translate(source [B, C_s, *S],
    generator=..., **options) -> [B, C_t, *S]``. ``generator`` is shared across batches, so a
    fixed seed gives the same ``x_T`` sequence for every translator.

    Returns one row per (sample, metric): ``sample`` (dataset index), ``patient_id``,
    ``metric``, ``value``, ``data_range`` and, when ``translator.config.method`` exists, ``method``.

    ``mask_mode`` says what the items' ``mask`` does (see :data:`MASK_MODES`): ``"mean"``
    passes it to every metric (averages inside the mask); ``"zero"`` sets the pixels outside
    it to ``fill`` in both prediction and target and scores the whole image (the MRI->CT
    paper's "setting them to zero"; the constant pixels inflate PSNR/SSIM, which is why the
    two modes give different numbers); ``"ignore"`` scores the whole image unmasked.
    """
    if batch_size < 1:
        raise ValueError(f"evaluate: batch_size must be >= 1, got {batch_size}")
    if mask_mode not in MASK_MODES:
        raise ValueError(f"evaluate: unknown mask_mode '{mask_mode}' (choose from {', '.join(MASK_MODES)})")
    fns = _resolve_metrics(metrics)
    device = _device_of(translator)
    was_training = getattr(translator, "training", False)
    if isinstance(translator, torch.nn.Module):
        translator.eval()
    rows: dict[str, list[Any]] = {"sample": [], "patient_id": [], "metric": [], "value": []}
    batches = _batches(dataset, batch_size)
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, total=-(-len(dataset) // batch_size), desc="evaluate", unit="batch")
    try:
        for start, batch in batches:
            if batch.target is None:
                raise ValueError("evaluate: the dataset has no targets (needs paired items with 'target')")
            batch = batch if device is None else batch.to(device)
            pred = translator.translate(batch.source, generator=generator, **options)
            _score_batch(pred, batch, start, fns, rows, data_range, mask_mode, float(fill))
    finally:
        if isinstance(translator, torch.nn.Module):
            translator.train(was_training)
    df = pd.DataFrame(rows).assign(data_range=float(data_range))
    method = getattr(getattr(translator, "config", None), "method", None)
    if method is not None:
        df["method"] = method
    return df


def _score_batch(pred: torch.Tensor, batch: Batch, start: int, fns: list[tuple[str, MetricFn]],
                 rows: dict[str, list[Any]], data_range: float, mask_mode: str, fill: float) -> None:
    """Score one translated batch ``pred [B, C_t, *S]`` and append its (sample, metric) rows."""
    if tuple(pred.shape) != tuple(batch.target.shape):
        raise ValueError(f"evaluate: translate returned {tuple(pred.shape)} but target is {tuple(batch.target.shape)}")
    pred, target, mask = _apply_mask(pred.detach().float(), batch.target.float(), batch.mask, mask_mode, fill)
    n = len(batch)
    ids = batch.meta.get("patient_id", [str(start + i) for i in range(n)])
    for name, fn in fns:
        values = fn(pred, target, data_range=data_range, mask=mask)
        if tuple(values.shape) != (n,):
            raise ValueError(f"evaluate: metric '{name}' returned shape {tuple(values.shape)}, expected ({n},)")
        rows["sample"] += range(start, start + n)
        rows["patient_id"] += [str(p) for p in ids]
        rows["metric"] += [name] * n
        rows["value"] += values.double().cpu().tolist()


def _apply_mask(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None, mode: str,
                fill: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(pred, target, mask)`` as the metrics see them under ``mode`` (images ``[B, C, *S]``)."""
    if mask is None or mode == "ignore":
        return pred, target, None
    if mode == "mean":
        return pred, target, mask
    keep = mask.to(device=pred.device) != 0            # [B, 1 or C, *S]
    return pred.where(keep, fill), target.where(keep, fill), None


def _group_keys(df: pd.DataFrame, by: Sequence[str] | None) -> list[str]:
    """Grouping columns: ``by`` if given, else ``method`` when present; plus ``data_range``."""
    keys = list(by) if by is not None else [c for c in ("method",) if c in df.columns]
    missing = [k for k in keys + ["metric", "patient_id", "value"] if k not in df.columns]
    if missing:
        raise ValueError(f"results frame lacks column(s) {', '.join(missing)}")
    return keys + (["data_range"] if "data_range" in df.columns and "data_range" not in keys else [])


def subject_means(df: pd.DataFrame, by: Sequence[str] | None = None) -> pd.DataFrame:
    """Mean value per (``by``..., metric, patient_id): one row per subject and metric."""
    keys = _group_keys(df, by)
    return df.groupby(keys + ["metric", "patient_id"], sort=False, dropna=False)["value"].mean().reset_index()


def summarize(df: pd.DataFrame, by: Sequence[str] | None = None) -> pd.DataFrame:
    """Mean, SD (ddof=1) and ``n`` subjects per metric (and per ``by`` group, default ``method``).

    Per-subject means are taken first, then aggregated across subjects.
    Columns: ``*by, metric, mean, sd, n`` (+ ``data_range`` when recorded).
    """
    keys = _group_keys(df, by)
    per_subject = subject_means(df, by)
    out = per_subject.groupby(keys + ["metric"], sort=False, dropna=False)["value"].agg(["mean", "std", "count"])
    out = out.rename(columns={"std": "sd", "count": "n"}).reset_index()
    return out[[k for k in keys if k != "data_range"] + ["metric", "mean", "sd", "n"]
               + (["data_range"] if "data_range" in keys else [])]


def paired_test(df: pd.DataFrame, a: str, b: str, metric: str, *, by: str = "method") -> dict[str, Any]:
    """Wilcoxon signed-rank test of ``metric`` between groups ``a`` and ``b`` of column ``by``.

    Pairs are per-subject means; both groups must cover the same subjects. Returns
    ``{metric, a, b, n, mean_a, mean_b, mean_diff (a - b), statistic, pvalue}``.
    """
    if by not in df.columns:
        raise ValueError(f"paired_test: results frame has no column '{by}'")
    per = {}
    for name in (a, b):
        sel = df[(df[by] == name) & (df["metric"] == metric)]
        if sel.empty:
            raise ValueError(f"paired_test: no rows for {by}='{name}' and metric '{metric}'")
        per[name] = sel.groupby("patient_id")["value"].mean()
    only = sorted(set(per[a].index) ^ set(per[b].index))
    if only:
        raise ValueError(f"paired_test: '{a}' and '{b}' cover different subjects (e.g. {only[0]})")
    x, y = per[a].sort_index(), per[b].sort_index()
    res = wilcoxon(x.to_numpy(), y.to_numpy())
    return {"metric": metric, "a": a, "b": b, "n": len(x), "mean_a": float(x.mean()), "mean_b": float(y.mean()),
            "mean_diff": float((x - y).mean()), "statistic": float(res.statistic), "pvalue": float(res.pvalue)}

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

__all__ = ["evaluate", "summarize", "paired_test", "subject_means"]

MetricFn = Callable[..., torch.Tensor]


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
    **options: Any,
) -> pd.DataFrame:
    """Translate every sample of ``dataset`` and score it against its target.

    ``dataset[i]`` is a dict with ``source`` ``[C_s, *S]``, ``target`` ``[C_t, *S]``, optional
    ``mask`` ``[1, *S]`` and ``patient_id``; ``translator.translate(source [B, C_s, *S],
    generator=..., **options) -> [B, C_t, *S]``. ``generator`` is shared across batches, so a
    fixed seed gives the same ``x_T`` sequence for every translator.

    Returns one row per (sample, metric): ``sample`` (dataset index), ``patient_id``,
    ``metric``, ``value``, ``data_range`` and, when ``translator.config.method`` exists, ``method``.
    """
    if batch_size < 1:
        raise ValueError(f"evaluate: batch_size must be >= 1, got {batch_size}")
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
            _score_batch(translator, batch, start, fns, rows, device, data_range, generator, options)
    finally:
        if isinstance(translator, torch.nn.Module):
            translator.train(was_training)
    df = pd.DataFrame(rows).assign(data_range=float(data_range))
    method = getattr(getattr(translator, "config", None), "method", None)
    if method is not None:
        df["method"] = method
    return df


def _score_batch(translator: Any, batch: Batch, start: int, fns: list[tuple[str, MetricFn]],
                 rows: dict[str, list[Any]], device: torch.device | None, data_range: float,
                 generator: torch.Generator | None, options: dict[str, Any]) -> None:
    """Translate one batch and append its (sample, metric) rows."""
    if batch.target is None:
        raise ValueError("evaluate: the dataset has no targets (needs paired items with 'target')")
    if device is not None:
        batch = batch.to(device)
    pred = translator.translate(batch.source, generator=generator, **options)
    if tuple(pred.shape) != tuple(batch.target.shape):
        raise ValueError(f"evaluate: translate returned {tuple(pred.shape)} but target is {tuple(batch.target.shape)}")
    n = len(batch)
    ids = batch.meta.get("patient_id", [str(start + i) for i in range(n)])
    for name, fn in fns:
        values = fn(pred.detach().float(), batch.target.float(), data_range=data_range, mask=batch.mask)
        if tuple(values.shape) != (n,):
            raise ValueError(f"evaluate: metric '{name}' returned shape {tuple(values.shape)}, expected ({n},)")
        rows["sample"] += range(start, start + n)
        rows["patient_id"] += [str(p) for p in ids]
        rows["metric"] += [name] * n
        rows["value"] += values.double().cpu().tolist()


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

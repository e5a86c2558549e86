"""Evaluate a translator on a paired dataset: tidy per-sample rows, subject-level summaries, paired tests.

:func:`evaluate` runs ``translator.translate`` over the dataset in batches and returns one
row per (sample, metric) with the ``data_range`` used, so every number carries its range.
:func:`summarize` follows DESIGN.md's guardrails: per-subject means first (several samples
of one patient count once), then the mean, SD and count across subjects.
:func:`paired_test` compares two methods on the same subjects with the Wilcoxon
signed-rank test (:func:`scipy.stats.wilcoxon`).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import pandas as pd
import torch
from scipy.stats import wilcoxon

from medgen.predict import predict, stack
from medgen.score import MASK_MODES, resolve_metrics, score

__all__ = ["evaluate", "summarize", "paired_test", "subject_means", "MASK_MODES"]

MetricFn = Callable[..., torch.Tensor]


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
    """Translate every sample of ``dataset`` and score it against its target: :func:`~medgen.score.score`
    of :func:`~medgen.predict.predict`.

    ``dataset[i]`` is a dict with ``source`` ``[C_s, *S]``, ``target`` ``[C_t, *S]``, optional
    ``mask`` ``[1, *S]`` and ``patient_id``; ``options`` go to ``translator.translate``. Returns one
    row per (sample, metric): ``sample`` (dataset index), ``patient_id``, ``metric``, ``value``,
    ``data_range`` and, when the translator's config names one, ``method``. ``mask_mode``: see
    :data:`MASK_MODES`.
    """
    if batch_size < 1:
        raise ValueError(f"evaluate: batch_size must be >= 1, got {batch_size}")
    if mask_mode not in MASK_MODES:
        raise ValueError(f"evaluate: unknown mask_mode '{mask_mode}' (choose from {', '.join(MASK_MODES)})")
    resolve_metrics(metrics)  # unknown names fail before any translation
    items = [dataset[i] for i in range(len(dataset))]  # rendered once: phantom items are drawn on access
    if any(item.get("target") is None for item in items):
        raise ValueError("evaluate: the dataset has no targets (needs paired items with 'target')")
    preds = predict(translator, items, batch_size=batch_size, generator=generator, progress=progress, **options)
    mask = stack(items, "mask") if items and all(item.get("mask") is not None for item in items) else None
    return score(preds, stack(items, "target"), metrics, data_range=data_range,
                 mask=mask, mask_mode=mask_mode, fill=fill, batch_size=batch_size)


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

"""Helpers every paper's experiment shares: shortened configs, subject means, paired tests, p-value text.

A paper's experiment package has four parts -- the paper's numbers, the plan (which models at
which preset), the rows (predict + score through :mod:`medgen.zoo`, :mod:`medgen.predict`,
:mod:`medgen.score`) and the findings -- and takes everything else from here.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from medgen.config import RunConfig
from medgen.metrics.stats import StatsError, compare_paired

__all__ = ["shorten", "fmt_p", "per_subject", "subject_mean", "paired_comparisons", "concat", "TEST_COLUMNS"]

TEST_COLUMNS = ("mean_diff", "t_stat", "t_p", "t_p_holm", "t_reject", "w_stat", "w_p", "w_p_holm", "w_reject")


def shorten(cfg: RunConfig, *, steps: int | None = None, n_train: int | None = None, one_thread: bool = False,
            seed: int | None = None) -> RunConfig:
    """``cfg`` with fewer training ``steps`` (warm-up and logging scaled inside the run), fewer training
    subjects ``n_train``, one torch thread (``one_thread``: on the shared 2-core machine two threads per
    training process thrash against the others) and another ``seed``; ``None`` keeps a field."""
    if steps is not None:
        cfg = replace(cfg, train=replace(cfg.train, steps=steps, warmup_steps=min(cfg.train.warmup_steps, steps // 10),
                                         log_every=min(cfg.train.log_every, max(1, steps // 10))))
    if n_train is not None:
        cfg = replace(cfg, data=replace(cfg.data, n_train=n_train))
    if one_thread:
        cfg = replace(cfg, train=replace(cfg.train, num_threads=1))
    if seed is not None:
        cfg = replace(cfg, seed=seed)
    return cfg


def fmt_p(p: float) -> str:
    """A p-value for a findings sentence: ``"0.0031"``, or ``"n/a"`` when it could not be computed."""
    return "n/a" if np.isnan(p) else f"{p:.3g}"


def per_subject(rows: pd.DataFrame, metric: str, **where: object) -> pd.Series:
    """Mean ``value`` per ``patient_id`` of the ``metric`` rows whose columns equal ``where`` (NaNs dropped)."""
    sel = rows[rows["metric"] == metric]
    for column, value in where.items():
        sel = sel[sel[column] == value]
    return sel.groupby("patient_id")["value"].mean().dropna()


def subject_mean(rows: pd.DataFrame, metric: str, **where: object) -> float:
    """Mean over subjects of :func:`per_subject` (NaN when no row matches)."""
    s = per_subject(rows, metric, **where)
    return float(s.mean()) if len(s) else float("nan")


def paired_comparisons(rows: pd.DataFrame, pairs: Iterable[tuple[str, str]], metric: str, *, by: str = "method",
                       family: str = "", alpha: float = 0.05) -> pd.DataFrame:
    """Paired t-test and Wilcoxon of ``metric`` across subjects for each ``(a, b)`` of column ``by``,
    Holm-corrected over the family (:func:`medgen.metrics.stats.compare_paired`).

    Subjects are matched by ``patient_id`` (only those both groups have). Pairs with fewer than
    3 common subjects or identical values get NaN p-values. Columns: ``family, comparison, a, b,
    metric, mean_a, mean_b, n`` and :data:`TEST_COLUMNS`.
    """
    arrays: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    info = []
    for a, b in pairs:
        x, y = per_subject(rows, metric, **{by: a}), per_subject(rows, metric, **{by: b})
        common = sorted(set(x.index) & set(y.index))
        xa, yb = x.reindex(common).to_numpy(float), y.reindex(common).to_numpy(float)
        name = f"{a} vs {b}"
        info.append({"family": family, "comparison": name, "a": a, "b": b, "metric": metric,
                     "mean_a": float(xa.mean()) if len(xa) else np.nan,
                     "mean_b": float(yb.mean()) if len(yb) else np.nan, "n": len(common)})
        if len(common) >= 3 and not np.allclose(xa, yb):
            arrays[name] = (xa, yb)
    out = pd.DataFrame(info)
    if arrays:
        try:
            tests = compare_paired(arrays, alpha=alpha).drop(columns=["n"])
        except StatsError:
            tests = pd.DataFrame(index=pd.Index([], name="comparison"))
        out = out.merge(tests, left_on="comparison", right_index=True, how="left")
    for col in TEST_COLUMNS:
        if col not in out.columns:
            out[col] = np.nan
    return out


def concat(frames: Sequence[pd.DataFrame], columns: Sequence[str] = ()) -> pd.DataFrame:
    """``pd.concat`` of the non-empty ``frames`` (an empty frame with ``columns`` when there are none)."""
    frames = [f for f in frames if f is not None and not f.empty]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(columns))

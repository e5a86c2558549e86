"""Compare translators and sampler settings on one dataset with one seed: the engine of every table.

A *sweep* evaluates a list of :class:`SweepEntry` (a label, a translator and the
``translate`` options for it, e.g. ``{"sampler": "ddim", "steps": 20}``) on the same test
set, with the same generator seed for every entry, so diffusion entries start from the
same ``x_T`` and differences come from the sampler alone. The result is a tidy
DataFrame (one row per sample, metric and entry) that notebooks ``groupby`` into tables.

>>> from medgen.sweeps import SweepEntry, sweep, summary_table
>>> rows = sweep([SweepEntry("input", identity), SweepEntry("DDIM-20", model, {"sampler": "ddim", "steps": 20})],
...              test_ds, metrics=("psnr", "ssim"), data_range=2.0)   # doctest: +SKIP
>>> summary_table(rows)                                                # doctest: +SKIP
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import pandas as pd
import torch

from medgen.evaluate import evaluate, subject_means, summarize


@dataclass(frozen=True)
class SweepEntry:
    """One row group of a comparison table."""

    label: str  # row label in tables and figures, e.g. "DDIM-20" or "input (identity)"
    translator: Any  # anything with translate(source, *, generator, callback, **options)
    options: dict = field(default_factory=dict)  # translate() options: sampler, steps, eta, guidance_scale
    kind: str = "model"  # "model" or "baseline" (trivial rows every table carries)


def sweep(
    entries: Sequence[SweepEntry],
    dataset: Any,
    *,
    metrics: Sequence[str] = ("psnr", "ssim"),
    data_range: float = 2.0,
    seed: int = 0,
    batch_size: int = 16,
    progress: bool = False,
) -> pd.DataFrame:
    """Evaluate every entry on ``dataset``; one row per (entry, sample, metric).

    Columns: those of :func:`medgen.evaluate.evaluate` plus ``label``, ``kind``, every option
    key, and ``sec_per_image`` (wall time of the entry / number of samples).
    """
    frames = []
    for entry in entries:
        gen = torch.Generator().manual_seed(seed)  # same x_T for every entry
        start = time.perf_counter()
        df = evaluate(entry.translator, dataset, metrics, data_range=data_range, batch_size=batch_size,
                      generator=gen, progress=progress, **entry.options)
        elapsed = time.perf_counter() - start
        df = df.assign(label=entry.label, kind=entry.kind, sec_per_image=elapsed / max(len(dataset), 1))
        for key, value in entry.options.items():
            df[key] = value
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


def summary_table(rows: pd.DataFrame, by: Sequence[str] = ("label",), *, digits: int = 3) -> pd.DataFrame:
    """Wide table: one row per ``by`` group, ``<metric> mean`` / ``<metric> sd`` across subjects.

    The statistics are :func:`medgen.evaluate.summarize`'s (per-subject means first, then mean
    and SD across subjects, as DESIGN.md's metric guardrails ask); this only lays them out
    one row per entry, in entry order, with the seconds per image beside them.
    """
    by = list(by)
    stats = summarize(rows, by=by)
    wide = stats.pivot_table(index=by, columns="metric", values=["mean", "sd"], sort=False)
    wide.columns = [f"{metric} {stat}" for stat, metric in wide.columns]
    metrics = list(dict.fromkeys(rows["metric"]))
    wide = wide[[f"{m} {s}" for m in metrics for s in ("mean", "sd")]].round(digits)
    if "sec_per_image" in rows:
        wide["sec/image"] = rows.groupby(by, sort=False)["sec_per_image"].first().round(digits)
    wide["n subjects"] = stats.groupby(by, sort=False)["n"].max()
    order = list(dict.fromkeys(map(tuple, rows[by].itertuples(index=False))))
    wide = wide.reindex(pd.MultiIndex.from_tuples(order, names=by) if len(by) > 1 else [o[0] for o in order])
    return wide.reset_index()


def mean_of(rows: pd.DataFrame, label: str, metric: str) -> float:
    """Mean across subjects of ``metric`` for the entry ``label`` (NaN-free; raises if absent)."""
    sel = rows[(rows["label"] == label) & (rows["metric"] == metric)]
    if sel.empty:
        raise ValueError(f"no rows for label '{label}' and metric '{metric}'")
    return float(subject_means(sel, by=["label"])["value"].mean())

"""Figures shared by the notebooks: image grids and metric-vs-setting curves (matplotlib).

Every function returns a ``matplotlib.figure.Figure`` and never calls ``plt.show()``, so
notebooks display it and :class:`medgen.reports.Report` saves it.
"""
from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import pandas as pd
import torch


def _as_2d(img: torch.Tensor) -> torch.Tensor:
    """``[C, H, W]`` / ``[H, W]`` / ``[C, D, H, W]`` (middle slice) -> ``[H, W]`` for display."""
    img = img.detach().float().cpu()
    if img.ndim == 4:  # [C, D, H, W] -> middle slice of the first channel
        img = img[0, img.shape[1] // 2]
    if img.ndim == 3:  # [C, H, W] -> first channel
        img = img[0]
    return img


def image_grid(
    columns: dict[str, torch.Tensor],
    *,
    n: int = 4,
    vmin: float = -1.0,
    vmax: float = 1.0,
    size: float = 1.6,
) -> plt.Figure:
    """A grid with one column per entry of ``columns`` (title -> ``[B, C, *S]`` batch), ``n`` rows.

    All panels share one grey scale ``[vmin, vmax]`` (model range by default), so columns
    are comparable; nothing is normalised per image.
    """
    titles = list(columns)
    rows = min(n, *(len(v) for v in columns.values()))
    fig, axes = plt.subplots(rows, len(titles), figsize=(size * len(titles), size * rows), squeeze=False)
    for j, title in enumerate(titles):
        for i in range(rows):
            ax = axes[i, j]
            ax.imshow(_as_2d(columns[title][i]), cmap="gray", vmin=vmin, vmax=vmax)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def metric_vs_setting(
    rows: pd.DataFrame,
    *,
    x: str = "steps",
    hue: str = "sampler",
    metric: str = "psnr",
    baselines: Sequence[str] = (),
    xlabel: str | None = None,
) -> plt.Figure:
    """Mean ± SD (across subjects) of ``metric`` against ``x``, one line per ``hue`` value.

    Entries whose ``label`` is in ``baselines`` are drawn as horizontal reference lines.
    """
    fig, ax = plt.subplots(figsize=(5, 3.4))
    sel = rows[(rows["metric"] == metric) & ~rows["label"].isin(baselines)]
    per_subject = sel.groupby([hue, x, "patient_id"])["value"].mean().reset_index()
    stats = per_subject.groupby([hue, x])["value"].agg(["mean", "std"]).reset_index()
    for name, grp in stats.groupby(hue, sort=False):
        grp = grp.sort_values(x)
        ax.errorbar(grp[x], grp["mean"], yerr=grp["std"].fillna(0), marker="o", capsize=3, label=str(name))
    for k, label in enumerate(baselines):
        base = rows[(rows["metric"] == metric) & (rows["label"] == label)]
        if not base.empty:
            value = base.groupby("patient_id")["value"].mean().mean()
            ax.axhline(value, ls="--", color=f"C{k + 5}", label=label)
    ax.set_xlabel(xlabel or x)
    ax.set_ylabel(metric.upper())
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig

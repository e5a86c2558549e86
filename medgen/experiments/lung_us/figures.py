"""The study's figures: aeration histograms, the DPS sweeps and the per-operator reconstruction grid."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from medgen.data.phantoms import lung
from medgen.experiments.lung_us.paper import DPS

if TYPE_CHECKING:
    from medgen.experiments.lung_us.rows import LungSet, Reconstruction

__all__ = ["plot_aeration", "plot_sweeps", "figure_grid"]


def plot_aeration(real: "LungSet", generated: "LungSet", bins: int = 20) -> Any:
    """Aeration histograms (densities) of training and generated images with the category bounds."""
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5, 3.2))
    edges = np.linspace(0.0, 1.0, bins + 1)
    ax.hist(real.aeration, bins=edges, density=True, alpha=0.5, label=f"training (n={len(real)})")
    ax.hist(generated.aeration, bins=edges, density=True, histtype="step", lw=1.5, color="black",
            label=f"generated (n={len(generated)})")
    for b in lung.CATEGORY_BOUNDS:
        ax.axvline(b, color="C2", ls=":", gid="category_bound")
    ax.set_xlabel("aeration (mean air fraction of the lung)")
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_sweeps(sweeps: pd.DataFrame, metric: str = "psnr") -> Any:
    """PSNR (mean +- SD across images) against the guidance-scale multiple and the number of steps,
    one line per operator (two panels)."""
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for ax, (sweep, x, xlabel) in zip(axes, (("guidance_scale", "guidance_scale",
                                              "guidance scale (x operator default)"),
                                             ("steps", "steps", "DPS steps"))):
        sel = sweeps[(sweeps["sweep"] == sweep) & (sweeps["metric"] == metric)]
        for name, grp in sel.groupby("operator", sort=False):
            st = grp.groupby(x)["value"].agg(["mean", "std"]).reset_index().sort_values(x)
            ax.errorbar(st[x], st["mean"], yerr=st["std"].fillna(0), marker="o", capsize=3, label=str(name))
        if sweep == "guidance_scale" and not sel.empty and (sel[x] > 0).all():
            from matplotlib.ticker import NullFormatter

            ax.set_xscale("log")
            values = sorted(sel[x].unique())
            ax.set_xticks(values, [f"{v:g}" for v in values])   # the swept multiples, not 3x10^-1 minor labels
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(xlabel)
        ax.set_ylabel(metric.upper())
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def figure_grid(recon: "Reconstruction", operator: str, n: int = 3) -> Any:
    """Rows = images; columns: truth, the measurement (resized to the image grid), each method's
    sample mean (shared grey scale [-1, 1], the lung window) and the DPS SD map in HU (the lung ``ct``
    modality's scale; own colour scale, one colour bar beside the grid)."""
    import matplotlib.pyplot as plt
    from medgen.data.datasets import resize_source

    y = recon.measurements[operator]["y"]
    size = recon.truth.shape[-1]
    y_img = resize_source(y, (size, size))
    cols = [("truth", recon.truth), ("measurement", y_img)]
    cols += [(m, s.mean(0)) for m, s in recon.samples[operator].items()]
    sd = recon.samples[operator][DPS].std(0) if recon.samples[operator][DPS].shape[0] > 1 else \
        torch.zeros_like(recon.truth)
    rows = min(n, recon.truth.shape[0])
    fig, axes = plt.subplots(rows, len(cols) + 1, figsize=(1.6 * (len(cols) + 1) + 1.2, 1.6 * rows + 0.4),
                             squeeze=False, layout="constrained")
    sd = sd * float(np.diff(lung.CT.from_model(np.array([0.0, 1.0])))[0])  # model units -> HU
    smax = float(sd[:rows].max()) or 1.0
    im = None
    for i in range(rows):
        for j, (title, batch) in enumerate(cols):
            ax = axes[i, j]
            img = batch[i, 0].numpy()
            lo, hi = (-1.0, 1.0) if title != "measurement" else (float(y_img.min()), float(y_img.max()))
            ax.imshow(img, cmap="gray", vmin=lo, vmax=hi)
            ax.set_xticks([]), ax.set_yticks([])
            if i == 0:
                ax.set_title(title, fontsize=8)
        ax = axes[i, -1]
        im = ax.imshow(sd[i, 0].numpy(), cmap="magma", vmin=0.0, vmax=smax)
        ax.set_xticks([]), ax.set_yticks([])
        if i == 0:
            ax.set_title("DPS SD (HU)", fontsize=8)
    if im is not None:
        fig.colorbar(im, ax=axes[:, -1].tolist(), shrink=0.8, label="DPS SD (HU)")
    fig.suptitle(operator, fontsize=9)
    return fig

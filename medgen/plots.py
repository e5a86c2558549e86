"""Figures shared by the notebooks (matplotlib).

* :func:`image_grid`, :func:`error_grid`: sample grids on one grey scale, the latter with
  absolute-error maps against a reference column;
* :func:`metric_vs_setting`, :func:`box_plot`: metrics across settings / methods, per subject;
* :func:`bland_altman_plot`, :func:`regression_plot`: agreement of paired measurements
  (UXDiff Fig. 3), numbers from :mod:`medgen.metrics.stats`;
* :func:`distance_histograms`, :func:`pair_gallery`: the memorization audit's
  nearest-neighbour distances per stratum and its closest pairs.

Every function returns a ``matplotlib.figure.Figure`` and never calls ``plt.show()``, so
notebooks display it and :class:`medgen.reports.Report` saves it. Reference lines and data
artists carry a matplotlib ``gid`` (``"paper"``, ``"threshold"``, ``"generated"``,
``"reference"``, ``"subjects"``, ``"points"``, ``"mean_diff"``, ``"loa_low"``, ``"loa_high"``,
``"fit"``, ``"identity"``) so notebooks and tests can find them.
"""
from __future__ import annotations

import math
import textwrap
from typing import Any, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from medgen.evaluate import subject_means
from medgen.metrics.stats import bland_altman, linear_regression

PAPER_STYLE = {"color": "crimson", "ls": "--", "lw": 1.5}   # every "paper" reference line
Image = torch.Tensor | np.ndarray


class PlotError(ValueError):
    """Bad input to a plotting function."""


def _as_2d(img: Image) -> torch.Tensor:
    """``[C, H, W]`` / ``[H, W]`` / ``[C, D, H, W]`` (middle slice) -> ``[H, W]`` for display."""
    img = torch.as_tensor(img).detach().float().cpu()
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
    transpose: bool = False,
) -> plt.Figure:
    """A grid with one column per entry of ``columns`` (title -> ``[B, C, *S]`` batch), ``n`` rows;
    ``transpose=True``: one row per entry (its title the row label), ``n`` columns -- a wide figure
    for few entries of many images.

    All panels share one grey scale ``[vmin, vmax]`` (model range by default), so columns
    are comparable; nothing is normalised per image.
    """
    titles = list(columns)
    count = min(n, *(len(v) for v in columns.values()))
    shape = (len(titles), count) if transpose else (count, len(titles))
    fig, axes = plt.subplots(*shape, figsize=(size * shape[1] + (0.6 if transpose else 0), size * shape[0]),
                             squeeze=False)
    for j, title in enumerate(titles):
        for i in range(count):
            ax = axes[j, i] if transpose else axes[i, j]
            ax.imshow(_as_2d(columns[title][i]).numpy(), cmap="gray", vmin=vmin, vmax=vmax)
            ax.set_xticks([])
            ax.set_yticks([])
            if transpose and i == 0:
                ax.set_ylabel(title, fontsize=9)
            elif not transpose and i == 0:
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


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------
def _fig_ax(ax: plt.Axes | None, figsize: tuple[float, float]) -> tuple[plt.Figure, plt.Axes]:
    """The figure and axes to draw into: ``ax``'s own, or a new single-panel figure."""
    if ax is not None:
        return ax.figure, ax
    fig, new_ax = plt.subplots(figsize=figsize)
    return fig, new_ax


def _need_columns(rows: pd.DataFrame, columns: Sequence[str], where: str) -> None:
    """One-line error naming the columns ``rows`` lacks."""
    missing = [c for c in columns if c not in rows.columns]
    if missing:
        raise PlotError(f"{where}: rows lack column(s) {', '.join(missing)}")


def _finite_1d(values: Any, what: str) -> np.ndarray:
    """``values`` as a finite float ``[n]`` array (one-line error otherwise)."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise PlotError(f"{what}: expected a 1D array, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise PlotError(f"{what}: contains NaN or Inf")
    return arr


def _with_units(text: str, units: str) -> str:
    """``text (units)``, or ``text`` when there are no units."""
    return f"{text} ({units})" if units else text


def _blank(ax: plt.Axes) -> None:
    """No ticks on an image panel."""
    ax.set_xticks([])
    ax.set_yticks([])


# --------------------------------------------------------------------------------------
# Metric distributions
# --------------------------------------------------------------------------------------
def _paper_value(paper: float | Mapping[Any, float], group: Any, hue_value: Any) -> float | None:
    """The paper's value for a box: keyed by ``(group, hue)`` or ``group``; ``None`` if absent."""
    if hue_value is not None and (group, hue_value) in paper:  # type: ignore[operator]
        return float(paper[(group, hue_value)])  # type: ignore[index]
    return float(paper[group]) if group in paper else None  # type: ignore[operator, index]


def box_plot(
    rows: pd.DataFrame,
    *,
    metric: str,
    by: str = "method",
    hue: str | None = None,
    paper: float | Mapping[Any, float] | None = None,
    ylabel: str | None = None,
    rotate_labels: float = 0.0,
) -> plt.Figure:
    """Per-subject values of ``metric`` (subject means of tidy rows) as boxes with the points on top.

    One box per ``by`` group (side by side per ``hue`` value when given), whiskers at 1.5 IQR,
    every subject drawn as a point (deterministic jitter, ``gid="subjects"``), so no outlier
    is hidden. ``paper``: one value for all groups (a dashed line across the axes) or
    ``{group: value}`` / ``{(group, hue): value}`` (a dashed line across that box), labelled
    "paper" (``gid="paper"``). ``rotate_labels``: degrees to turn the group names on the x axis
    (long method names).
    """
    keys = [by] + ([hue] if hue else [])
    _need_columns(rows, [*keys, "metric", "patient_id", "value"], "box_plot")
    sel = rows[rows["metric"] == metric]
    if sel.empty:
        raise PlotError(f"box_plot: no rows for metric '{metric}'")
    per = subject_means(sel.drop(columns=["data_range"], errors="ignore"), keys)
    groups = list(dict.fromkeys(per[by]))
    hues = list(dict.fromkeys(per[hue])) if hue else [None]
    if isinstance(paper, Mapping):
        unknown = [k for k in paper if (k[0] if isinstance(k, tuple) else k) not in groups]
        if unknown:
            raise PlotError(f"box_plot: paper names group {unknown[0]!r}, not among {groups}")
    width = 0.8 / len(hues)
    fig, ax = plt.subplots(figsize=(max(3.5, 0.8 * len(groups) * len(hues) + 1.5), 3.4))
    paper_labelled = False
    for k, h in enumerate(hues):
        color = f"C{k}"
        for i, g in enumerate(groups):
            mask = (per[by] == g) & ((per[hue] == h) if hue else True)
            vals = per.loc[mask, "value"].dropna().to_numpy()
            pos = i + (k - (len(hues) - 1) / 2) * width     # boxes of one group side by side
            if vals.size:
                bp = ax.boxplot([vals], positions=[pos], widths=0.7 * width, patch_artist=True,
                                showfliers=False, manage_ticks=False)
                bp["boxes"][0].set(facecolor=color, alpha=0.35)
                jitter = np.linspace(-0.2, 0.2, vals.size) * width if vals.size > 1 else np.zeros(1)
                ax.scatter(pos + jitter, vals, s=12, color=color, zorder=3, gid="subjects")
            value = _paper_value(paper, g, h) if isinstance(paper, Mapping) else None
            if value is not None:
                ax.hlines(value, pos - width / 2, pos + width / 2, **PAPER_STYLE, zorder=4, gid="paper",
                          label="_nolegend_" if paper_labelled else "paper")
                paper_labelled = True
        if hue:
            ax.scatter([], [], color=color, label=f"{hue} = {h}")  # legend entry only
    if paper is not None and not isinstance(paper, Mapping):
        ax.axhline(float(paper), **PAPER_STYLE, gid="paper", label="paper")
    ax.set_xticks(range(len(groups)), [str(g) for g in groups])
    if rotate_labels:
        ax.tick_params(axis="x", labelrotation=rotate_labels)
    ax.set_xlabel(by)
    ax.set_ylabel(ylabel or f"{metric} (per-subject mean)")
    ax.grid(alpha=0.3, axis="y")
    if hue or paper is not None:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------
# Agreement of paired measurements (UXDiff Fig. 3)
# --------------------------------------------------------------------------------------
def bland_altman_plot(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    *,
    units: str = "",
    label_a: str = "generated",
    label_b: str = "reference",
    ax: plt.Axes | None = None,
) -> plt.Figure:
    """Bland-Altman plot of paired ``[n]`` measurements: mean ``(a+b)/2`` against difference ``a-b``.

    Horizontal lines at the mean difference (``gid="mean_diff"``) and the 95 % limits of
    agreement ``mean ± 1.96 SD`` (``gid="loa_low"`` / ``"loa_high"``), all from
    :func:`medgen.metrics.stats.bland_altman`; their values are in the legend.
    Draws into ``ax`` when given (e.g. beside :func:`regression_plot`).
    """
    res = bland_altman(a, b)           # validates: 1D, finite, same length, n >= 3
    a_arr, b_arr = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    fig, ax = _fig_ax(ax, (4.4, 3.4))
    u = f" {units}" if units else ""
    ax.scatter((a_arr + b_arr) / 2, a_arr - b_arr, s=14, alpha=0.8, gid="points")
    ax.axhline(res.mean_diff, color="black", lw=1.2, gid="mean_diff",
               label=f"mean difference {res.mean_diff:.2f}{u}")
    ax.axhline(res.loa_high, color="C3", ls="--", lw=1.0, gid="loa_high",
               label=f"+1.96 SD {res.loa_high:.2f}{u}")
    ax.axhline(res.loa_low, color="C3", ls="--", lw=1.0, gid="loa_low",
               label=f"−1.96 SD {res.loa_low:.2f}{u}")
    ax.set_xlabel(_with_units(f"mean of {label_a} and {label_b}", units))
    ax.set_ylabel(_with_units(f"{label_a} − {label_b}", units))
    ax.set_title(f"Bland-Altman (n = {res.n})", fontsize=10)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def regression_plot(
    x: Sequence[float] | np.ndarray,
    y: Sequence[float] | np.ndarray,
    *,
    units: str = "",
    labels: tuple[str, str] = ("reference", "generated"),
    ax: plt.Axes | None = None,
) -> plt.Figure:
    """Scatter of paired ``[n]`` measurements with the least-squares line and the identity line.

    ``labels`` name ``x`` and ``y``. The fitted line (``gid="fit"``) spans the range of
    ``x``; its legend entry gives slope, intercept, R^2, p and n from
    :func:`medgen.metrics.stats.linear_regression`. The identity ``y = x`` is dotted
    (``gid="identity"``). Draws into ``ax`` when given.
    """
    res = linear_regression(x, y)      # validates: 1D, finite, same length, n >= 3, x not constant
    x_arr, y_arr = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    fig, ax = _fig_ax(ax, (4.0, 3.8))
    ax.scatter(x_arr, y_arr, s=14, alpha=0.8, gid="points")
    xs = np.array([x_arr.min(), x_arr.max()])
    ax.plot(xs, res.slope * xs + res.intercept, color="C3", lw=1.5, gid="fit",
            label=(f"fit: y = {res.slope:.3f} x {'+' if res.intercept >= 0 else '−'} {abs(res.intercept):.2f}\n"
                   f"R² = {res.r2:.3f}, slope = {res.slope:.3f}, p = {res.p:.2g}, n = {res.n}"))
    lo, hi = min(x_arr.min(), y_arr.min()), max(x_arr.max(), y_arr.max())
    ax.plot([lo, hi], [lo, hi], color="grey", ls=":", lw=1.0, gid="identity", label="y = x")
    ax.set_xlabel(_with_units(labels[0], units))
    ax.set_ylabel(_with_units(labels[1], units))
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------
# Memorization audit
# --------------------------------------------------------------------------------------
def _check_strata(extra: Mapping[str, Any] | None, strata: Sequence[str], what: str) -> None:
    """Every key of ``extra`` must be a stratum of ``distances`` (catches misspelt strata)."""
    unknown = [k for k in (extra or {}) if k not in strata]
    if unknown:
        raise PlotError(f"distance_histograms: {what} names stratum {unknown[0]!r}, not among {list(strata)}")


def _grid(n: int, ncols: int, panel: tuple[float, float], **kw: Any) -> tuple[plt.Figure, list[plt.Axes]]:
    """``n`` panels in rows of ``ncols``; axes beyond ``n`` are removed."""
    cols = max(1, min(n, ncols))
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(panel[0] * cols, panel[1] * rows), squeeze=False, **kw)
    flat = list(axes.ravel())
    for extra in flat[n:]:
        fig.delaxes(extra)
    return fig, flat[:n]


def distance_histograms(
    distances: Mapping[str, np.ndarray],
    *,
    reference: Mapping[str, np.ndarray] | None = None,
    thresholds: Mapping[str, float] | None = None,
    paper: Mapping[str, float] | None = None,
    xlabel: str = "nearest-neighbour distance",
    bins: int = 30,
    ncols: int = 4,
    title: str = "{}",
) -> plt.Figure:
    """Nearest-neighbour distance histograms of the memorization audit, one panel per stratum.

    ``distances[stratum]`` ``[n]``: each generated image's distance to its nearest training
    image; ``reference[stratum]`` ``[m]``: the same for held-out real images (drawn as an
    outline on the same bins). Both are densities, so different sample counts compare.
    ``thresholds[stratum]``: the flagging threshold (vertical line, ``gid="threshold"``);
    the panel title then states how many generated images lie strictly below it.
    ``paper[stratum]``: the paper's value (``gid="paper"``, labelled "paper"). ``title``: the panel
    title's format of the stratum (e.g. ``"aeration category {}"``).
    An empty stratum is kept as a panel saying so; NaN distances are an error.
    """
    strata = list(distances)
    if not strata:
        raise PlotError("distance_histograms: no strata given")
    for what, extra in (("reference", reference), ("thresholds", thresholds), ("paper", paper)):
        _check_strata(extra, strata, what)
    fig, axes = _grid(len(strata), ncols, (3.6, 2.9))
    for ax, s in zip(axes, strata):
        d = _finite_1d(distances[s], f"distance_histograms: distances[{s!r}]")
        ref = _finite_1d(reference[s], f"distance_histograms: reference[{s!r}]") \
            if reference and s in reference else np.zeros(0)
        head = title.format(s)
        if d.size + ref.size:
            edges = np.histogram_bin_edges(np.concatenate([d, ref]), bins=bins)   # shared bins
            if d.size:
                ax.hist(d, bins=edges, density=True, alpha=0.6, color="C0", gid="generated",
                        label=f"generated → train (n={d.size})")
            if ref.size:
                ax.hist(ref, bins=edges, density=True, histtype="step", lw=1.5, color="black", gid="reference",
                        label=f"held-out → train (n={ref.size})")
        if not d.size:
            ax.text(0.5, 0.5, "no generated images", ha="center", va="center", transform=ax.transAxes)
        if thresholds and s in thresholds:
            t = float(thresholds[s])
            ax.axvline(t, color="C2", ls=":", lw=1.5, gid="threshold", label=f"threshold {t:.3g}")
            flagged = int((d < t).sum())     # strictly closer than the threshold
            if d.size:
                head += f": flagged {flagged}/{d.size} ({100 * flagged / d.size:.1f} %)"
        if paper and s in paper:
            ax.axvline(float(paper[s]), **PAPER_STYLE, gid="paper", label="paper")
        ax.set_title(head, fontsize=9)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("density")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _pair_title(title: str | float) -> str:
    """A pair's title: text as given, a number as ``d = …``."""
    return f"d = {float(title):.3g}" if isinstance(title, (int, float, np.floating, np.integer)) else str(title)


def pair_gallery(
    pairs: Sequence[tuple[Image, Image, str | float]],
    *,
    labels: tuple[str, str] = ("generated", "nearest training"),
    ncols: int = 8,
    vmin: float | None = -1.0,
    vmax: float | None = 1.0,
    size: float = 1.6,
) -> plt.Figure:
    """The memorization audit's closest pairs: each generated image above its nearest training image.

    ``pairs``: ``(image_a, image_b, title)`` with images ``[C, H, W]``, ``[H, W]`` or
    ``[C, D, H, W]`` (first channel, middle slice); a numeric ``title`` is shown as
    ``d = <distance>``. Pairs wrap after ``ncols``. Both images of a pair share the grey scale
    ``[vmin, vmax]`` (model range by default); ``None`` uses the pair's own min/max.
    """
    if not pairs:
        raise PlotError("pair_gallery: no pairs given")
    n = len(pairs)
    cols = max(1, min(n, ncols))
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(2 * rows, cols, figsize=(size * cols, 2 * size * rows + 0.3), squeeze=False)
    for k in range(rows * cols):
        top, bottom = axes[2 * (k // cols), k % cols], axes[2 * (k // cols) + 1, k % cols]
        if k >= n:
            fig.delaxes(top)
            fig.delaxes(bottom)
            continue
        a, b, title = pairs[k]
        img_a, img_b = _as_2d(a).numpy(), _as_2d(b).numpy()
        lo = min(img_a.min(), img_b.min()) if vmin is None else vmin
        hi = max(img_a.max(), img_b.max()) if vmax is None else vmax
        for ax, img in ((top, img_a), (bottom, img_b)):
            ax.imshow(img, cmap="gray", vmin=lo, vmax=hi)
            _blank(ax)
        top.set_title(_pair_title(title), fontsize=8)
        if k % cols == 0:
            top.set_ylabel(labels[0], fontsize=8)
            bottom.set_ylabel(labels[1], fontsize=8)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------
# Sample grid with error maps
# --------------------------------------------------------------------------------------
def error_grid(
    columns: Mapping[str, torch.Tensor],
    reference: str,
    *,
    n: int = 4,
    data_range: float = 2.0,
    vmin: float = -1.0,
    vmax: float = 1.0,
    error_max: float | None = None,
    size: float = 1.5,
    cmap: str = "magma",
    no_error: Sequence[str] = (),
    error_scale: float = 1.0,
    error_units: str = "",
) -> plt.Figure:
    """Samples with an absolute-error map beside every non-reference image: one row per column of
    ``columns`` (a method), two panels per example (the image, its error).

    ``columns``: name -> ``[B, C, *S]`` batch (2D ``S = (H, W)`` or 3D ``(D, H, W)``, shown as the
    first channel's middle slice); ``reference`` names the row the others are compared with (drawn
    first, without error panels, like the rows in ``no_error``: e.g. an input of another modality,
    whose difference to the reference means nothing). Row names are the y labels (wrapped), so no
    title collides with its neighbour however many methods there are; the top row's panels are
    titled ``example i`` / ``|error| i``. Images share the grey scale ``[vmin, vmax]``; all error
    maps share one colour scale ``[0, error_max]`` (in ``error_units`` after multiplying by
    ``error_scale``, e.g. 1000 and ``"HU"`` for a CT in model range) with one colour bar,
    ``error_max`` defaulting to the largest shown error (``data_range`` when every error is 0); each
    error panel's x label gives its MAE in those units.
    """
    if reference not in columns:
        raise PlotError(f"error_grid: reference {reference!r} is not a column (have {list(columns)})")
    if data_range <= 0:
        raise PlotError(f"error_grid: data_range must be > 0, got {data_range}")
    if n < 1:
        raise PlotError(f"error_grid: n must be >= 1, got {n}")
    ref = columns[reference]
    for name, batch in columns.items():
        if tuple(batch.shape[1:]) != tuple(ref.shape[1:]):
            raise PlotError(f"error_grid: column {name!r} has item shape {tuple(batch.shape[1:])}, "
                            f"reference has {tuple(ref.shape[1:])}")
    examples = min(n, *(len(v) for v in columns.values()))
    names = [reference] + [c for c in columns if c != reference]
    scored = [c for c in names[1:] if c not in no_error]
    # 1. the displayed slices and their absolute errors against the reference (in error units)
    shown = {c: [_as_2d(columns[c][i]).numpy() for i in range(examples)] for c in names}
    errors = {c: [np.abs(shown[c][i] - shown[reference][i]) * error_scale for i in range(examples)] for c in scored}
    # 2. one shared error scale
    top = max((float(e.max()) for es in errors.values() for e in es), default=0.0)
    emax = float(error_max) if error_max is not None else (top if top > 0 else float(data_range) * error_scale)
    unit = f" ({error_units})" if error_units else ""
    # 3. layout: a row per name; per example an image panel and an error panel
    fig, axes = plt.subplots(len(names), 2 * examples, figsize=(2 * size * examples + 2.2, size * len(names)),
                             squeeze=False, layout="constrained")
    err_axes, err_im = [], None
    for r, name in enumerate(names):
        for i in range(examples):
            ax_img, ax_err = axes[r, 2 * i], axes[r, 2 * i + 1]
            ax_img.imshow(shown[name][i], cmap="gray", vmin=vmin, vmax=vmax)
            _blank(ax_img)
            _blank(ax_err)
            if name in errors:
                err_im = ax_err.imshow(errors[name][i], cmap=cmap, vmin=0.0, vmax=emax)
                ax_err.set_xlabel(f"MAE {errors[name][i].mean():.3g} {error_units}".rstrip(), fontsize=7)
                err_axes.append(ax_err)
            else:
                ax_err.set_frame_on(False)
            if r == 0:
                ax_img.set_title(f"example {i + 1}", fontsize=9)
                ax_err.set_title(f"|error| {i + 1}", fontsize=9)
        axes[r, 0].set_ylabel(textwrap.fill(name, 12), rotation=0, ha="right", va="center", fontsize=9)
    if err_im is not None:
        fig.colorbar(err_im, ax=err_axes, shrink=0.6, label=f"absolute error vs {reference}{unit}")
    return fig

"""medgen.plots: every figure helper returns a Figure with the expected panels, lines and values."""
from __future__ import annotations

from typing import Iterator

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from scipy import stats as sst  # noqa: E402

from medgen import plots  # noqa: E402
from medgen.plots import PlotError  # noqa: E402


@pytest.fixture(autouse=True)
def close_figures() -> Iterator[None]:
    yield
    plt.close("all")


def tidy_rows(seed: int = 0) -> pd.DataFrame:
    """Per-sample rows like evaluate(): 2 methods x 2 samplers x 5 subjects x 2 samples of psnr."""
    rng = np.random.default_rng(seed)
    rows = [{"sample": s, "patient_id": f"p{p}", "metric": "psnr", "value": float(rng.normal(20 + 3 * (m == "ddim"))),
             "data_range": 2.0, "method": m, "sampler": smp, "label": m}
            for m in ("input", "ddim") for smp in ("a", "b") for p in range(5) for s in range(2)]
    return pd.DataFrame(rows)


def by_gid(ax: plt.Axes, gid: str) -> list:
    """Lines and collections of ``ax`` with the given gid."""
    return [a for a in [*ax.lines, *ax.collections] if a.get_gid() == gid]


# ---------------------------------------------------------------------------------------
# existing helpers still work
# ---------------------------------------------------------------------------------------
def test_image_grid_and_metric_vs_setting_unchanged() -> None:
    fig = plots.image_grid({"a": torch.zeros(3, 1, 8, 8), "b": torch.zeros(5, 1, 4, 8, 8)}, n=2)
    assert len(fig.axes) == 4
    df = tidy_rows().assign(steps=lambda d: d["sample"] * 10)
    fig = plots.metric_vs_setting(df, x="steps", hue="method", metric="psnr")
    assert len(fig.axes[0].containers) == 2      # one errorbar per method


# ---------------------------------------------------------------------------------------
# box plot
# ---------------------------------------------------------------------------------------
def test_box_plot_points_are_subject_means_and_paper_line() -> None:
    df = tidy_rows()
    fig = plots.box_plot(df, metric="psnr", paper={"ddim": 25.0})
    ax = fig.axes[0]
    points = by_gid(ax, "subjects")
    assert len(points) == 2                       # one point cloud per box
    for cloud, method in zip(points, ("input", "ddim")):
        expected = df[df["method"] == method].groupby("patient_id")["value"].mean().to_numpy()
        np.testing.assert_allclose(np.sort(cloud.get_offsets()[:, 1]), np.sort(expected))
    (paper,) = by_gid(ax, "paper")
    seg = paper.get_segments()[0]
    assert seg[0][1] == seg[1][1] == 25.0 and seg[0][0] < 1 < seg[1][0]   # across the ddim box at x=1
    assert "paper" in ax.get_legend_handles_labels()[1]


def test_box_plot_hue_and_errors() -> None:
    df = tidy_rows(1)
    fig = plots.box_plot(df, metric="psnr", hue="sampler", paper=21.0)
    ax = fig.axes[0]
    assert len(by_gid(ax, "subjects")) == 4 and len(ax.patches) == 4   # 2 methods x 2 samplers
    assert by_gid(ax, "paper")[0].get_ydata()[0] == 21.0
    with pytest.raises(PlotError, match="no rows for metric 'ssim'"):
        plots.box_plot(df, metric="ssim")
    with pytest.raises(PlotError, match="paper names group 'DDIM'"):
        plots.box_plot(df, metric="psnr", paper={"DDIM": 25.0})
    turned = plots.box_plot(df, metric="psnr", rotate_labels=30).axes[0]
    assert [t.get_rotation() for t in turned.get_xticklabels()] == [30.0, 30.0]
    assert all(t.get_rotation() == 0 for t in fig.axes[0].get_xticklabels())


# ---------------------------------------------------------------------------------------
# Bland-Altman and regression
# ---------------------------------------------------------------------------------------
def test_bland_altman_lines_at_limits_of_agreement() -> None:
    rng = np.random.default_rng(2)
    b = rng.uniform(10, 40, 30)
    a = b + 1.5 + rng.normal(0, 2, 30)
    fig = plots.bland_altman_plot(a, b, units="deg", label_a="synthetic", label_b="real")
    ax = fig.axes[0]
    d = a - b                                     # independent: bias ± 1.96 SD (ddof=1)
    bias, sd = d.mean(), d.std(ddof=1)
    for gid, y in (("mean_diff", bias), ("loa_low", bias - 1.96 * sd), ("loa_high", bias + 1.96 * sd)):
        (line,) = by_gid(ax, gid)
        assert line.get_ydata()[0] == pytest.approx(y, rel=1e-12)
    np.testing.assert_allclose(by_gid(ax, "points")[0].get_offsets(), np.c_[(a + b) / 2, d])
    assert "(deg)" in ax.get_ylabel() and "synthetic − real" in ax.get_ylabel()
    with pytest.raises(ValueError, match="NaN"):
        plots.bland_altman_plot([1.0, np.nan, 3.0], [1.0, 2.0, 3.0])


def test_regression_line_and_legend() -> None:
    rng = np.random.default_rng(3)
    x = rng.uniform(0, 50, 25)
    y = 0.9 * x + 2 + rng.normal(0, 3, 25)
    fig = plots.regression_plot(x, y, units="deg", labels=("real", "synthetic"))
    ax = fig.axes[0]
    fit = sst.linregress(x, y)
    (line,) = by_gid(ax, "fit")
    np.testing.assert_allclose(line.get_ydata(), fit.slope * line.get_xdata() + fit.intercept, rtol=1e-12)
    np.testing.assert_allclose(line.get_xdata(), [x.min(), x.max()])
    (ident,) = by_gid(ax, "identity")
    np.testing.assert_allclose(ident.get_xdata(), ident.get_ydata())
    legend = " ".join(t.get_text() for t in ax.get_legend().get_texts())
    assert f"R² = {fit.rvalue ** 2:.3f}" in legend and f"p = {fit.pvalue:.2g}" in legend
    assert f"slope = {fit.slope:.3f}" in legend


def test_agreement_plots_share_a_figure() -> None:
    fig, (left, right) = plt.subplots(1, 2)
    x = np.arange(10.0)
    assert plots.regression_plot(x, x ** 1.1, ax=left) is fig
    assert plots.bland_altman_plot(x ** 1.1, x, ax=right) is fig and len(fig.axes) == 2


# ---------------------------------------------------------------------------------------
# memorization audit
# ---------------------------------------------------------------------------------------
def test_distance_histograms_panels_threshold_paper() -> None:
    rng = np.random.default_rng(4)
    dist = {"normal": rng.uniform(1, 3, 40), "consolidated": rng.uniform(0.5, 2, 20), "empty": np.zeros(0)}
    ref = {"normal": rng.uniform(1, 3, 30), "consolidated": rng.uniform(1, 2, 10)}
    fig = plots.distance_histograms(dist, reference=ref, thresholds={"normal": 1.2, "consolidated": 1.05},
                                    paper={"normal": 2.5})
    assert len(fig.axes) == 3
    ax_n, ax_c, ax_e = fig.axes
    assert by_gid(ax_n, "threshold")[0].get_xdata()[0] == 1.2
    assert by_gid(ax_n, "paper")[0].get_xdata()[0] == 2.5 and not by_gid(ax_c, "paper")
    flagged = int((dist["consolidated"] < 1.05).sum())
    assert f"flagged {flagged}/20" in ax_c.get_title()
    # generated histogram = numpy density histogram on bins shared with the reference
    edges = np.histogram_bin_edges(np.concatenate([dist["normal"], ref["normal"]]), bins=30)
    density, _ = np.histogram(dist["normal"], bins=edges, density=True)
    heights = [p.get_height() for p in ax_n.patches if p.get_gid() == "generated"]
    np.testing.assert_allclose(heights, density)
    assert len([p for p in ax_n.patches if p.get_gid() == "reference"]) == 1   # one outline
    assert "no generated images" in [t.get_text() for t in ax_e.texts]


def test_distance_histograms_errors() -> None:
    with pytest.raises(PlotError, match="thresholds names stratum 'nromal'"):
        plots.distance_histograms({"normal": np.ones(3)}, thresholds={"nromal": 1.0})
    with pytest.raises(PlotError, match="NaN"):
        plots.distance_histograms({"normal": np.array([1.0, np.nan])})


def test_pair_gallery_layout_and_titles() -> None:
    pairs = [(torch.rand(1, 8, 8), np.random.rand(8, 8), 0.1234 * (k + 1)) for k in range(5)]
    pairs[1] = (pairs[1][0], pairs[1][1], "custom")
    fig = plots.pair_gallery(pairs, ncols=3)
    assert len(fig.axes) == 10                    # 5 pairs x 2 images, the 1 unused slot removed
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == ["d = 0.123", "custom", "d = 0.37", "d = 0.494", "d = 0.617"]
    np.testing.assert_allclose(fig.axes[3].images[0].get_array(), pairs[0][1])   # below its generated image


# ---------------------------------------------------------------------------------------
# error grid
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("spatial", [(8, 8), (5, 8, 8)])
def test_error_grid_maps_are_abs_difference(spatial: tuple[int, ...]) -> None:
    gen = torch.Generator().manual_seed(0)
    ref = torch.rand(3, 1, *spatial, generator=gen) * 2 - 1
    a = torch.rand(3, 1, *spatial, generator=gen) * 2 - 1
    b = ref + 0.1
    src = torch.rand(3, 1, *spatial, generator=gen)
    fig = plots.error_grid({"input": src, "A": a, "B": b, "target": ref}, "target", n=2, no_error=("input",),
                           error_scale=1000.0, error_units="HU")
    # rows target, input, A, B (names as y labels); per example an image and an error panel
    assert [fig.axes[4 * r].get_ylabel() for r in range(4)] == ["target", "input", "A", "B"]
    assert [ax.get_title() for ax in fig.axes[:4]] == ["example 1", "|error| 1", "example 2", "|error| 2"]
    err = [ax for ax in fig.axes if ax.get_xlabel().startswith("MAE")]
    assert len(err) == 2 * 2 and len(fig.axes) == 4 * 4 + 1             # A and B only; + colorbar
    assert not fig.axes[1].images and not fig.axes[4 + 1].images          # no error for the reference, the input
    mid = (lambda t: t[0, 0, spatial[0] // 2]) if len(spatial) == 3 else (lambda t: t[0, 0])
    err_a = fig.axes[2 * 4 + 1]                                           # row A, example 1
    np.testing.assert_allclose(err_a.images[0].get_array(), 1000 * (mid(a) - mid(ref)).abs().numpy(), rtol=1e-5)
    assert err_a.get_xlabel().endswith(" HU") and fig.axes[-1].get_ylabel() == "absolute error vs target (HU)"
    # one shared error scale: [0, largest shown error]
    clims = {ax.images[0].get_clim() for ax in err}
    assert len(clims) == 1
    shown = torch.stack([(a[:2] - ref[:2]).abs(), (b[:2] - ref[:2]).abs()])
    shown = shown[:, :, 0, spatial[0] // 2] if len(spatial) == 3 else shown[:, :, 0]
    assert clims.pop() == pytest.approx((0.0, 1000 * float(shown.max())), rel=1e-5)


def test_error_grid_errors() -> None:
    x = torch.zeros(2, 1, 8, 8)
    with pytest.raises(PlotError, match="reference 'gt' is not a column"):
        plots.error_grid({"a": x}, "gt")
    with pytest.raises(PlotError, match="column 'b' has item shape"):
        plots.error_grid({"a": x, "b": torch.zeros(2, 1, 4, 4)}, "a")


def test_image_grid_transpose_puts_entries_in_rows() -> None:
    x = torch.zeros(6, 1, 8, 8)
    fig = plots.image_grid({"generated": x, "training": x + 0.5}, n=5, transpose=True)
    assert len(fig.axes) == 2 * 5 and fig.axes[0].get_ylabel() == "generated" and fig.axes[5].get_ylabel() == "training"
    assert fig.axes[6].images[0].get_array().max() == 0.5 and fig.get_size_inches()[0] > fig.get_size_inches()[1]

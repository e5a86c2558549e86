"""medgen.tables.metric_table: subject-level mean ± SD, best bolding, paper rows, errors."""
from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from medgen.tables import NA, TableError, direction, metric_table


def tidy_rows(seed: int = 0, methods=("input", "ddim", "ddpm"), subjects: int = 4, samples: int = 3) -> pd.DataFrame:
    """Per-sample rows like evaluate(): random psnr/ssim/l1/foo per (method, subject, sample)."""
    rng = np.random.default_rng(seed)
    rows = []
    for method in methods:
        for p in range(subjects):
            for s in range(samples):
                for metric, scale in (("psnr", 30.0), ("ssim", 1.0), ("l1", 0.2), ("foo", 5.0)):
                    rows.append({"sample": p * samples + s, "patient_id": f"p{p}", "metric": metric,
                                 "value": scale * rng.uniform(0.3, 1.0), "data_range": 2.0, "method": method})
    return pd.DataFrame(rows)


def independent_stats(df: pd.DataFrame, method: str, metric: str) -> tuple[float, float, int]:
    """Mean, SD, n across subjects of per-subject means, computed with plain numpy."""
    sel = df[(df["method"] == method) & (df["metric"] == metric)]
    per_subject = [sel.loc[sel["patient_id"] == p, "value"].to_numpy().mean() for p in sorted(set(sel["patient_id"]))]
    return float(np.mean(per_subject)), float(np.std(per_subject, ddof=1)), len(per_subject)


def md_cells(md: str) -> dict[str, list[str]]:
    """Markdown pipe table -> {first cell: [other cells]} (header under key '__header__')."""
    lines = [ln for ln in md.strip().splitlines() if not re.fullmatch(r"\|[-:|]+\|", ln)]
    out = {}
    for i, ln in enumerate(lines):
        cells = [c.strip() for c in ln.strip("|").split(" | ")]
        out["__header__" if i == 0 else cells[0]] = cells[1:]
    return out


def test_frame_is_subject_level_mean_sd_n() -> None:
    df = tidy_rows()
    tab = metric_table(df)
    for method in ("input", "ddim", "ddpm"):
        for metric in ("psnr", "ssim", "l1", "foo"):
            mean, sd, n = independent_stats(df, method, metric)
            assert tab.frame.loc[method, (metric, "mean")] == pytest.approx(mean, rel=1e-12)
            assert tab.frame.loc[method, (metric, "sd")] == pytest.approx(sd, rel=1e-12)
            assert tab.frame.loc[method, (metric, "n")] == n == 4
    assert list(tab.frame.index) == ["input", "ddim", "ddpm"]   # first-appearance order
    long = tab.long
    assert list(long.columns) == ["method", "metric", "mean", "sd", "n"] and len(long) == 12


def test_best_is_bold_in_the_right_direction() -> None:
    df = tidy_rows(seed=1)
    tab = metric_table(df)
    cells = md_cells(tab.to_markdown())
    header = cells["__header__"]
    for metric, higher in (("psnr", True), ("ssim", True), ("l1", False)):
        means = {m: independent_stats(df, m, metric)[0] for m in ("input", "ddim", "ddpm")}
        expected = (max if higher else min)(means, key=means.get)
        assert tab.best[metric] == expected
        col = next(i for i, h in enumerate(header) if h.split()[0] == metric)
        bold = [m for m in means if cells[m][col].startswith("**")]
        assert bold == [expected]
        assert header[col].endswith("↑" if higher else "↓")
    # unknown metric without a direction: no bold, not in best
    col = header.index("foo")
    assert not any(cells[m][col].startswith("**") for m in ("input", "ddim", "ddpm"))
    assert "foo" not in tab.best


def test_explicit_direction_overrides_and_enables_bold() -> None:
    df = tidy_rows(seed=2)
    tab = metric_table(df, higher_is_better={"foo": False, "psnr": False})
    means = {m: independent_stats(df, m, "foo")[0] for m in ("input", "ddim", "ddpm")}
    assert tab.best["foo"] == min(means, key=means.get)
    psnr = {m: independent_stats(df, m, "psnr")[0] for m in ("input", "ddim", "ddpm")}
    assert tab.best["psnr"] == min(psnr, key=psnr.get)


def test_default_directions() -> None:
    assert direction("PSNR") is True and direction("dice_posterior") is True and direction("icc") is True
    assert direction("fid") is False and direction("hd95") is False and direction("mae") is False
    assert direction("something") is None


def test_ties_are_all_bold() -> None:
    df = tidy_rows(methods=("a", "b", "c"))
    df.loc[(df["metric"] == "psnr") & (df["method"] == "b"), "value"] = 50.0
    df.loc[(df["metric"] == "psnr") & (df["method"] == "c"), "value"] = 50.0
    tab = metric_table(df, metrics=["psnr"])
    assert tab.bold["psnr"] == ("b", "c") and tab.best["psnr"] == "b"
    cells = md_cells(tab.to_markdown())
    assert cells["b"][0] == cells["c"][0] == "**50.00 ± 0.00**" and not cells["a"][0].startswith("**")


def test_paper_rows_labelled_and_never_bold() -> None:
    df = tidy_rows(seed=3)
    # the paper's DDIM is far better than any of ours: it must still not be bold
    tab = metric_table(df, metrics=["psnr", "ssim"], paper={"ddim": {"psnr": (99.0, 1.5)}, "Pix2Pix": {"ssim": 2.0}})
    md = tab.to_markdown()
    cells = md_cells(md)
    names = list(cells)[1:]
    assert names.index("ddim (paper)") == names.index("ddim") + 1      # right below our row
    assert names[-1] == "Pix2Pix (paper)"                                # unmatched paper group at the end
    assert cells["ddim (paper)"][:2] == ["99.00 ± 1.50", ""]
    assert cells["Pix2Pix (paper)"][:2] == ["", "2.000"]
    assert not any("**" in c for name in names if name.endswith("(paper)") for c in cells[name])
    psnr = {m: independent_stats(df, m, "psnr")[0] for m in ("input", "ddim", "ddpm")}
    assert tab.best["psnr"] == max(psnr, key=psnr.get)
    assert cells[max(psnr, key=psnr.get)][0].startswith("**")


def test_paper_as_dataframe() -> None:
    df = tidy_rows(seed=4)
    paper = pd.DataFrame({"psnr": [27.5, np.nan]}, index=["DDIM", "UNIT"])
    cells = md_cells(metric_table(df, metrics=["psnr"], paper=paper).to_markdown())
    assert cells["DDIM (paper)"][0] == "27.50" and cells["UNIT (paper)"][0] == ""


def test_nan_only_group_is_na_and_not_best() -> None:
    df = tidy_rows(seed=5)
    df.loc[(df["method"] == "ddpm") & (df["metric"] == "psnr"), "value"] = np.nan
    tab = metric_table(df, metrics=["psnr"])
    cells = md_cells(tab.to_markdown())
    assert cells["ddpm"][0] == NA and tab.frame.loc["ddpm", ("psnr", "n")] == 0
    assert tab.best["psnr"] != "ddpm"


def test_single_subject_shows_mean_without_sd() -> None:
    df = tidy_rows(seed=8, subjects=1, samples=2)
    tab = metric_table(df, metrics=["ssim"], decimals=4)
    cells = md_cells(tab.to_markdown())
    value = df[(df["method"] == "ddim") & (df["metric"] == "ssim")]["value"].mean()
    assert cells["ddim"][0].strip("*") == f"{value:.4f}" and cells["ddim"][1] == "1"


def test_html_uses_b_tags_and_escapes() -> None:
    df = tidy_rows(seed=6)
    df["method"] = df["method"].replace({"input": "<input>"})
    tab = metric_table(df, metrics=["psnr"])
    out = tab._repr_html_()
    assert out.startswith("<table>") and "&lt;input&gt;" in out and "**" not in out
    assert out.count("<b>") == 1 and f"<td>{tab.best['psnr']}</td><td><b>" in out


def test_several_group_columns() -> None:
    df = tidy_rows(seed=7)
    df["steps"] = np.where(df["sample"] % 2 == 0, 10, 50)
    tab = metric_table(df, metrics=["psnr"], by=["method", "steps"])
    assert tab.frame.shape[0] == 6
    sel = df[(df["method"] == "ddim") & (df["steps"] == 50) & (df["metric"] == "psnr")]
    per = sel.groupby("patient_id")["value"].mean()
    assert tab.frame.loc[("ddim", 50), ("psnr", "mean")] == pytest.approx(per.mean())
    assert "ddim / 50" in md_cells(tab.to_markdown())


@pytest.mark.parametrize("kwargs, message", [
    ({"metrics": ["fid"]}, "metric 'fid' is not in rows"),
    ({"by": "sampler"}, "lack column(s) sampler"),
])
def test_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(TableError, match=re.escape(message)):
        metric_table(tidy_rows(), **kwargs)


def test_empty_and_mixed_range_errors() -> None:
    with pytest.raises(TableError, match="rows is empty"):
        metric_table(tidy_rows().iloc[:0])
    df = tidy_rows()
    df.loc[df["method"] == "ddim", "data_range"] = 1.0
    with pytest.raises(TableError, match="mixes data_range"):
        metric_table(df)

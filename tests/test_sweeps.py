"""Sweeps, summary tables and the quickstart findings, on the trivial baselines (no training)."""
import pandas as pd
import pytest

import medgen.data  # noqa: F401 -- fills DATASETS
import medgen.methods  # noqa: F401 -- fills METHODS
from medgen.config import get_preset
from medgen.experiments import quickstart
from medgen.registry import DATASETS, METHODS, lookup
from medgen.sweeps import SweepEntry, mean_of, summary_table, sweep


@pytest.fixture(scope="module")
def setup():
    cfg = get_preset("ci", "quickstart")
    test_ds = lookup(DATASETS, cfg.data.dataset)(cfg.data, "test")
    entries = [
        SweepEntry("input", lookup(METHODS, "identity")(cfg), kind="baseline"),
        SweepEntry("gauss", lookup(METHODS, "gaussian_filter")(cfg), {"sigma": 1.0}, kind="baseline"),
    ]
    return cfg, test_ds, entries


def test_sweep_rows_and_columns(setup):
    cfg, ds, entries = setup
    rows = sweep(entries, ds, metrics=("psnr", "ssim"), data_range=2.0)
    assert len(rows) == 2 * 2 * len(ds)
    assert {"label", "kind", "sigma", "sec_per_image", "value", "patient_id", "data_range"} <= set(rows.columns)
    assert (rows["data_range"] == 2.0).all()
    assert rows.loc[rows.label == "input", "sigma"].isna().all()


def test_summary_table_matches_manual_subject_means(setup):
    cfg, ds, entries = setup
    rows = sweep(entries, ds, metrics=("psnr",), data_range=2.0)
    # give two samples the same patient so the per-subject averaging matters
    rows.loc[rows["sample"] == 1, "patient_id"] = rows.loc[rows["sample"] == 0, "patient_id"].iloc[0]
    table = summary_table(rows).set_index("label")
    sel = rows[rows.label == "gauss"]
    subj = sel.groupby("patient_id")["value"].mean()
    assert table.loc["gauss", "psnr mean"] == pytest.approx(round(subj.mean(), 3))
    assert table.loc["gauss", "psnr sd"] == pytest.approx(round(subj.std(), 3))
    assert table.loc["gauss", "n subjects"] == len(ds) - 1
    assert list(table.index) == ["input", "gauss"]  # entry order kept
    assert mean_of(rows, "gauss", "psnr") == pytest.approx(subj.mean())
    with pytest.raises(ValueError, match="no rows for label 'nope'"):
        mean_of(rows, "nope", "psnr")


def _fake_rows(values: dict[str, float], kinds: dict[str, str], options: dict[str, dict]) -> pd.DataFrame:
    recs = []
    for label, v in values.items():
        for pid in range(8):
            recs.append(dict(label=label, kind=kinds[label], metric="psnr", patient_id=f"p{pid}",
                             value=v + 0.01 * pid * (1 + len(label) % 3), **options.get(label, {})))
    return pd.DataFrame(recs)


def test_quickstart_findings_hold_and_fail():
    kinds = {"input (identity)": "baseline", "Gaussian filter": "baseline",
             "DDIM-10": "model", "DDIM-50": "model", "DPMPP-5": "model", "DPMPP-10": "model"}
    opts = {"DDIM-10": dict(sampler="ddim", steps=10), "DDIM-50": dict(sampler="ddim", steps=50),
            "DPMPP-5": dict(sampler="dpmpp", steps=5), "DPMPP-10": dict(sampler="dpmpp", steps=10)}
    good = _fake_rows({"input (identity)": 15, "Gaussian filter": 17, "DDIM-10": 19, "DDIM-50": 20,
                       "DPMPP-5": 19.5, "DPMPP-10": 19.9}, kinds, opts)
    f = quickstart.findings(good)
    assert f["model_beats_trivial_baselines_psnr"][0] is True
    assert f["fast_solver_matches_ddim"][0] is True and "needs 10 steps" in f["fast_solver_matches_ddim"][1]
    assert "Wilcoxon p = 0.0078" in f["model_beats_trivial_baselines_psnr"][1]  # 8 subjects, all better
    bad = _fake_rows({"input (identity)": 15, "Gaussian filter": 21, "DDIM-10": 19, "DDIM-50": 20,
                      "DPMPP-5": 18, "DPMPP-10": 19}, kinds, opts)
    f = quickstart.findings(bad)
    assert f["model_beats_trivial_baselines_psnr"][0] is False
    assert f["fast_solver_matches_ddim"][0] is False
    assert "vs 21.035 for the best trivial baseline (Gaussian filter" in f["model_beats_trivial_baselines_psnr"][1]
    # faster but 0.5 dB *better* is not "matching" (two-sided), and a mean gap without significance is no win
    over = _fake_rows({"input (identity)": 15, "Gaussian filter": 17, "DDIM-10": 17.01, "DDIM-50": 16.9,
                       "DPMPP-5": 17.4, "DPMPP-10": 17.5}, kinds, opts)
    low = over.patient_id.isin(["p0", "p1", "p2", "p3"])
    over.loc[(over.label == "DPMPP-10") & low, "value"] -= 1.0  # mean unchanged (17.5 dB), but half the
    over.loc[(over.label == "DPMPP-10") & ~low, "value"] += 1.0  # subjects are worse than the filter
    f = quickstart.findings(over)
    assert f["fast_solver_matches_ddim"][0] is False
    assert f["model_beats_trivial_baselines_psnr"][0] is False


def test_quickstart_entries_follow_preset_grid(setup):
    cfg, _, _ = setup
    model = lookup(METHODS, "identity")(cfg)  # stands in for the diffusion model: only labels/options are checked
    labels = [e.label for e in quickstart.entries(model, cfg)]
    grid = quickstart.STEP_GRID["ci"]
    assert labels[:2] == list(quickstart.BASELINES)
    assert len(labels) == 2 + sum(len(v) for v in grid.values())
    assert "DDIM-4" in labels and "DPMPP-2" in labels

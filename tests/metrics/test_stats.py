"""Tests for medgen.metrics.stats against pingouin / scipy / statsmodels and hand formulas."""
from __future__ import annotations

import numpy as np
import pingouin as pg
import pytest
from scipy import stats as sst
from statsmodels.stats.multitest import multipletests

from medgen.metrics import stats as ms

# Shrout & Fleiss (1979), Table 2: 6 targets x 4 judges, with their published ICCs (2 decimals).
SF_DATA = np.array([[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]], float)
SF_PUBLISHED = {("one_way_random", "single"): 0.17, ("two_way_random_absolute", "single"): 0.29,
                ("two_way_mixed_consistency", "single"): 0.71, ("one_way_random", "average"): 0.44,
                ("two_way_random_absolute", "average"): 0.62, ("two_way_mixed_consistency", "average"): 0.91}


def _pg_wide():
    """pingouin's shipped 'icc' example (8 wines x 4 judges) as a [n, k] matrix."""
    d = pg.read_dataset("icc")
    return d, d.pivot(index="Wine", columns="Judge", values="Scores").to_numpy(float)


def _icc_a1_by_hand(r: np.ndarray) -> float:
    """McGraw & Wong ICC(A,1) from two-way ANOVA mean squares, written independently."""
    n, k = r.shape
    grand = r.mean()
    ms_rows = k * ((r.mean(1) - grand) ** 2).sum() / (n - 1)
    ms_cols = n * ((r.mean(0) - grand) ** 2).sum() / (k - 1)
    resid = r - r.mean(1, keepdims=True) - r.mean(0, keepdims=True) + grand
    ms_err = (resid ** 2).sum() / ((n - 1) * (k - 1))
    return (ms_rows - ms_err) / (ms_rows + (k - 1) * ms_err + k * (ms_cols - ms_err) / n)


@pytest.mark.filterwarnings("ignore:The inplace keyword:DeprecationWarning")
@pytest.mark.parametrize("form", list(ms.ICC_FORMS))
@pytest.mark.parametrize("unit", ms.ICC_UNITS)
def test_icc_matches_pingouin_example(form, unit):
    long, wide = _pg_wide()
    ref = pg.intraclass_corr(data=long, targets="Wine", raters="Judge", ratings="Scores")
    row = ref.iloc[["ICC1", "ICC2", "ICC3", "ICC1k", "ICC2k", "ICC3k"].index(ms.ICC_FORMS[form][unit == "average"])]
    got = ms.icc_matrix(wide, form=form, unit=unit)
    assert got.value == pytest.approx(row["ICC"], abs=1e-12)
    # pingouin rounds its CI column to 2 decimals by default; ours is full precision.
    assert got.ci_low == pytest.approx(row["CI95"][0], abs=0.005 + 1e-9)
    assert got.ci_high == pytest.approx(row["CI95"][1], abs=0.005 + 1e-9)
    assert got.ci_low < got.value < got.ci_high
    assert (got.n, got.k) == (8, 4)


def test_icc_does_not_leak_pingouin_options():
    before = dict(pg.options)
    ms.icc_matrix(SF_DATA)
    assert dict(pg.options) == before


@pytest.mark.parametrize("key", list(SF_PUBLISHED))
def test_icc_shrout_fleiss_published(key):
    form, unit = key
    assert ms.icc_matrix(SF_DATA, form=form, unit=unit).value == pytest.approx(SF_PUBLISHED[key], abs=0.005)


def test_icc_two_raters_hand_formula_and_mixed_equals_random():
    rng = np.random.default_rng(3)
    truth = rng.normal(30, 10, 25)
    a = truth + rng.normal(0, 2, 25)
    b = truth + 1.5 + rng.normal(0, 2, 25)  # systematic offset: absolute < consistency
    ra = ms.icc(a, b, form="two_way_random_absolute")
    mx = ms.icc(a, b, form="two_way_mixed_absolute")
    assert ra.value == pytest.approx(_icc_a1_by_hand(np.stack([a, b], 1)), abs=1e-10)
    assert (mx.value, mx.ci_low, mx.ci_high) == (ra.value, ra.ci_low, ra.ci_high)
    assert ms.icc(a, b, form="two_way_mixed_consistency").value > ra.value
    assert ms.icc(a, b, unit="average").value > ra.value


def test_agreement_mad_sem():
    rng = np.random.default_rng(4)
    a = rng.normal(40, 8, 30)
    b = a + rng.normal(0, 3, 30)
    res = ms.agreement(a, b, form="two_way_mixed_absolute")
    assert res.mad == pytest.approx(sum(abs(x - y) for x, y in zip(a, b)) / 30)
    sd = np.sqrt(np.var(np.r_[a, b]) * 60 / 59)
    assert res.sem == pytest.approx(sd * np.sqrt(1 - res.icc.value))
    assert ms.sem(a, a, 1.0) == 0.0


def test_linear_regression_vs_scipy_and_exact_line():
    rng = np.random.default_rng(5)
    x = rng.uniform(10, 60, 40)
    y = 0.9 * x + 2 + rng.normal(0, 3, 40)
    got, ref = ms.linear_regression(x, y), sst.linregress(x, y)
    assert (got.slope, got.intercept, got.p) == pytest.approx((ref.slope, ref.intercept, ref.pvalue))
    assert got.r2 == pytest.approx(np.corrcoef(x, y)[0, 1] ** 2)
    exact = ms.linear_regression([1, 2, 3, 4], [3, 5, 7, 9])
    assert (exact.slope, exact.intercept, exact.r2) == pytest.approx((2.0, 1.0, 1.0))


def test_bland_altman_formula():
    a = np.array([10.0, 12.0, 15.0, 20.0, 25.0])
    b = np.array([11.0, 11.0, 13.0, 21.0, 22.0])
    d = [x - y for x, y in zip(a, b)]  # [-1, 1, 2, -1, 3]
    mean = sum(d) / 5
    sd = (sum((v - mean) ** 2 for v in d) / 4) ** 0.5
    got = ms.bland_altman(a, b)
    assert got.mean_diff == pytest.approx(0.8)
    assert got.sd_diff == pytest.approx(sd)
    assert (got.loa_low, got.loa_high) == pytest.approx((mean - 1.96 * sd, mean + 1.96 * sd))


def test_paired_tests_vs_scipy():
    rng = np.random.default_rng(6)
    a = rng.normal(0, 1, 20)
    b = a + 0.5 + rng.normal(0, 0.5, 20)
    got = ms.paired_tests(a, b)
    t, w = sst.ttest_rel(a, b), sst.wilcoxon(a, b)
    assert (got.t_stat, got.t_p, got.w_stat, got.w_p) == pytest.approx((t.statistic, t.pvalue, w.statistic, w.pvalue))
    assert got.t_p < 0.05 and got.w_p < 0.05


def test_compare_paired_applies_holm_per_test():
    rng = np.random.default_rng(10)
    ref = rng.normal(30, 5, 15)
    pairs = {"big": (ref + 2 + rng.normal(0, 1, 15), ref), "small": (ref + 0.3 + rng.normal(0, 1, 15), ref),
             "none": (ref + rng.normal(0, 1, 15), ref)}
    df = ms.compare_paired(pairs)
    assert list(df.index) == ["big", "small", "none"]
    for test, fn in (("t", sst.ttest_rel), ("w", sst.wilcoxon)):
        raw = [fn(a, b).pvalue for a, b in pairs.values()]
        np.testing.assert_allclose(df[f"{test}_p"], raw)
        np.testing.assert_allclose(df[f"{test}_p_holm"], multipletests(raw, method="holm")[1])
    assert bool(df.loc["big", "t_reject"]) and df.loc["big", "mean_diff"] == pytest.approx(
        np.mean(pairs["big"][0] - ref))


def test_holm_vs_statsmodels():
    # 0.01 ranked 2nd of 6 sits exactly on alpha / 5: Holm (and statsmodels) reject it.
    for p in (np.array([0.01, 0.04, 0.03, 0.005, 0.5, 0.02]),
              np.random.default_rng(9).uniform(0, 0.012, 12), np.array([0.3])):
        got = ms.holm(p)
        reject, p_adj, _, _ = multipletests(p, alpha=0.05, method="holm")
        np.testing.assert_array_equal(got["reject"], reject)
        np.testing.assert_allclose(got["p_adj"], p_adj)
    assert ms.holm([0.01, 0.04, 0.03, 0.005, 0.5, 0.02])["reject"].sum() == 2
    assert 0 < ms.holm(np.random.default_rng(9).uniform(0, 0.012, 12))["reject"].sum() < 12


def test_bootstrap_ci_contains_mean_and_is_deterministic():
    x = np.random.default_rng(7).normal(5.0, 2.0, 60)
    r1 = ms.bootstrap_ci(x, n_boot=1000, seed=11)
    r2 = ms.bootstrap_ci(x, n_boot=1000, seed=11)
    r3 = ms.bootstrap_ci(x, n_boot=1000, seed=12)
    assert r1 == r2 and (r3.ci_low, r3.ci_high) != (r1.ci_low, r1.ci_high)
    assert r1.ci_low < 5.0 < r1.ci_high
    assert r1.estimate == pytest.approx(x.mean())
    # percentile CI half-width ~ 1.96 * s / sqrt(n)
    assert (r1.ci_high - r1.ci_low) / 2 == pytest.approx(1.96 * x.std(ddof=1) / np.sqrt(60), rel=0.2)


@pytest.mark.parametrize("call, match", [
    (lambda: ms.icc([1, 2, 3], [1, 2]), "length mismatch"),
    (lambda: ms.icc([1, 2, np.nan], [1, 2, 3]), "NaN"),
    (lambda: ms.icc([1, 2], [1, 2]), "at least 3 subjects"),
    (lambda: ms.icc([1, 2, 3], [1, 2, 4], form="two_way"), "known: one_way_random"),
    (lambda: ms.icc([1, 2, 3], [1, 2, 4], unit="both"), "unknown ICC unit"),
    (lambda: ms.icc([2, 2, 2], [2, 2, 2]), "undefined"),
    (lambda: ms.icc_matrix(np.ones((4, 1))), "k_raters >= 2"),
    (lambda: ms.linear_regression([1, 1, 1], [1, 2, 3]), "constant"),
    (lambda: ms.paired_tests([1, 2, 3], [1, 2, 3]), "identical"),
    (lambda: ms.bland_altman([1, 2, 3], [1, 2, 3, 4]), "length mismatch"),
    (lambda: ms.holm([0.5, 1.5]), r"\[0, 1\]"),
    (lambda: ms.compare_paired({}), "empty"),
    (lambda: ms.bootstrap_ci([1.0, 2.0]), "at least 3"),
])
def test_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()

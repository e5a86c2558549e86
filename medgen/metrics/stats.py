"""Clinical agreement statistics for measurements taken on generated vs reference images.

Used for the downstream clinical evaluations of the spine papers: the enhancement paper's
Table IV (ICC with 95 % CI, MAD, SEM of ultrasound curve angles between raters / sessions) and
UXDiff's Fig. 3 (linear regression R^2 and Bland-Altman agreement of Cobb angles measured on
synthesized vs real X-ray). Inputs are 1D arrays of one measurement per subject (``[n]``);
outputs are small frozen dataclasses with named fields.

What is wrapped and what is written here:

* ICC: ``pingouin.intraclass_corr`` (values and F-based 95 % CIs). Its CI column is rounded to
  2 decimals by default through the global ``pingouin.options``; :func:`icc` turns that rounding
  off for the call only (and restores the option), so the CI is full precision.
  Mapping of the named forms (Shrout & Fleiss 1979 / McGraw & Wong 1996) to pingouin's types:

  ==============================  ===============  ==============
  ``form``                        unit="single"    unit="average"
  ==============================  ===============  ==============
  one_way_random                  ICC1  ICC(1,1)   ICC1k ICC(1,k)
  two_way_random_absolute         ICC2  ICC(A,1)   ICC2k ICC(A,k)
  two_way_mixed_absolute          ICC2  ICC(A,1)   ICC2k ICC(A,k)
  two_way_random_consistency      ICC3  ICC(C,1)   ICC3k ICC(C,k)
  two_way_mixed_consistency       ICC3  ICC(C,1)   ICC3k ICC(C,k)
  ==============================  ===============  ==============

  McGraw & Wong's two-way *mixed* absolute-agreement coefficient A-1 has the same formula (and
  CI) as the two-way *random* one; only the interpretation (raters fixed vs sampled) differs.
  The paper's ICC^a (two-way mixed, absolute agreement; intra-rater) and ICC^b (two-way random,
  absolute agreement; inter-rater) are therefore both ICC(A,1) numerically.
* MAD (mean absolute difference, ``mean |a - b|``) and SEM (standard error of measurement,
  ``SEM = SD * sqrt(1 - ICC)`` with SD the sample SD (ddof=1) of all 2n measurements pooled)
  are one-liners written here; no library offers them in this form.
* Linear regression: ``scipy.stats.linregress`` (R^2 = r^2).
* Bland-Altman: written here (three lines; pingouin's ``plot_blandaltman`` only draws).
  ``d = a - b``; bias = mean(d); SD = sd(d, ddof=1); limits = bias -/+ 1.96 SD.
* Paired tests: ``scipy.stats.ttest_rel`` and ``scipy.stats.wilcoxon``. Holm step-down
  correction: written here (see :func:`holm` for why not ``pingouin.multicomp``).
* Bootstrap CI: ``scipy.stats.bootstrap(method="percentile")`` seeded with ``rng=seed``.
"""
from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np
import pandas as pd
import pingouin as pg
from scipy import stats as sst

__all__ = [
    "ICC_FORMS", "ICC_UNITS", "ICCResult", "AgreementResult", "RegressionResult", "BlandAltmanResult",
    "PairedTestResult", "BootstrapResult", "StatsError", "icc", "icc_matrix", "agreement", "mad", "sem",
    "linear_regression", "bland_altman", "paired_tests", "compare_paired", "holm", "bootstrap_ci",
]

# form -> pingouin row index within intraclass_corr's output for (single, average).
ICC_FORMS: dict[str, tuple[str, str]] = {
    "one_way_random": ("ICC1", "ICC1k"),
    "two_way_random_absolute": ("ICC2", "ICC2k"),
    "two_way_mixed_absolute": ("ICC2", "ICC2k"),        # McGraw & Wong A-1: same formula as ICC2
    "two_way_random_consistency": ("ICC3", "ICC3k"),    # McGraw & Wong C-1: same formula as ICC3
    "two_way_mixed_consistency": ("ICC3", "ICC3k"),
}
ICC_UNITS = ("single", "average")
# Row order of pingouin.intraclass_corr's output (column "Type" holds e.g. "ICC(A,1)").
_PG_ROWS = ("ICC1", "ICC2", "ICC3", "ICC1k", "ICC2k", "ICC3k")
Z_95 = 1.96  # Bland-Altman multiplier for the 95 % limits of agreement (Bland & Altman 1986)


class StatsError(ValueError):
    """Bad input to a statistics function."""


@dataclass(frozen=True)
class ICCResult:
    value: float
    ci_low: float
    ci_high: float
    form: str
    unit: str
    pingouin_type: str  # e.g. "ICC2" (single) or "ICC2k" (average)
    n: int              # subjects
    k: int              # raters / sessions


@dataclass(frozen=True)
class AgreementResult:
    """Table IV row: ICC (95 % CI), MAD and SEM of two raters / sessions."""
    icc: ICCResult
    mad: float
    sem: float


@dataclass(frozen=True)
class RegressionResult:
    slope: float
    intercept: float
    r2: float
    p: float
    n: int


@dataclass(frozen=True)
class BlandAltmanResult:
    mean_diff: float
    sd_diff: float
    loa_low: float
    loa_high: float
    n: int


@dataclass(frozen=True)
class PairedTestResult:
    t_stat: float
    t_p: float
    w_stat: float
    w_p: float
    n: int


@dataclass(frozen=True)
class BootstrapResult:
    estimate: float
    ci_low: float
    ci_high: float
    n_boot: int
    seed: int


def _vec(x: Sequence[float] | np.ndarray | pd.Series, name: str) -> np.ndarray:
    """Validate a 1D finite float array ``[n]``."""
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 1:
        raise StatsError(f"{name}: expected a 1D array, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise StatsError(f"{name}: contains NaN or Inf")
    return a


def _pair(a, b, min_n: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Validate two paired 1D arrays of equal length >= ``min_n``."""
    a, b = _vec(a, "a"), _vec(b, "b")
    if a.shape != b.shape:
        raise StatsError(f"length mismatch: a has {a.size} values, b has {b.size}")
    if a.size < min_n:
        raise StatsError(f"need at least {min_n} subjects, got {a.size}")
    return a, b


@contextlib.contextmanager
def _pg_full_precision() -> Iterator[None]:
    """Turn off pingouin's global output rounding (and its pandas deprecation noise) for the block."""
    saved = dict(pg.options)
    pg.options["round"] = None
    pg.options["round.column.CI95"] = None
    try:
        with warnings.catch_warnings():
            # pingouin 0.7 calls DataFrame.dropna(inplace=True), deprecated in pandas 3.1.
            warnings.filterwarnings("ignore", message="The inplace keyword", category=DeprecationWarning)
            yield
    finally:
        pg.options.clear()
        pg.options.update(saved)


def icc_matrix(ratings: np.ndarray, *, form: str = "two_way_random_absolute", unit: str = "single") -> ICCResult:
    """ICC of ``ratings`` ``[n_subjects, k_raters]`` (n >= 3, k >= 2) with its 95 % CI."""
    if form not in ICC_FORMS:
        raise StatsError(f"unknown ICC form {form!r}; known: {', '.join(ICC_FORMS)}")
    if unit not in ICC_UNITS:
        raise StatsError(f"unknown ICC unit {unit!r}; known: {', '.join(ICC_UNITS)}")
    r = np.asarray(ratings, dtype=np.float64)
    if r.ndim != 2 or r.shape[1] < 2:
        raise StatsError(f"ratings: expected [n_subjects, k_raters >= 2], got shape {r.shape}")
    if not np.isfinite(r).all():
        raise StatsError("ratings: contains NaN or Inf")
    n, k = r.shape
    if n < 3:
        raise StatsError(f"need at least 3 subjects, got {n}")
    if np.ptp(r.mean(axis=1)) == 0 and np.ptp(r - r.mean(axis=1, keepdims=True)) == 0:
        raise StatsError("ratings are all equal within and between subjects; the ICC is undefined")
    # Long format: one row per (subject, rater) rating.
    long = pd.DataFrame({"subject": np.repeat(np.arange(n), k), "rater": np.tile(np.arange(k), n),
                         "score": r.ravel()})
    with _pg_full_precision():
        table = pg.intraclass_corr(data=long, targets="subject", raters="rater", ratings="score")
    pg_type = ICC_FORMS[form][ICC_UNITS.index(unit)]
    row = table.iloc[_PG_ROWS.index(pg_type)]
    lo, hi = (float(v) for v in row["CI95"])
    return ICCResult(float(row["ICC"]), lo, hi, form, unit, pg_type, n, k)


def icc(ratings_a, ratings_b, *, form: str = "two_way_random_absolute", unit: str = "single") -> ICCResult:
    """ICC between two raters / sessions, ``ratings_a`` and ``ratings_b`` ``[n]`` (one per subject)."""
    a, b = _pair(ratings_a, ratings_b)
    return icc_matrix(np.stack([a, b], axis=1), form=form, unit=unit)


def mad(a, b) -> float:
    """Mean absolute difference ``mean |a - b|`` of paired ``[n]`` measurements."""
    a, b = _pair(a, b, min_n=1)
    return float(np.mean(np.abs(a - b)))


def sem(a, b, icc_value: float) -> float:
    """Standard error of measurement ``SD * sqrt(1 - ICC)``, SD = sample SD (ddof=1) of all 2n values."""
    a, b = _pair(a, b, min_n=2)
    if not (np.isfinite(icc_value) and icc_value <= 1):
        raise StatsError(f"icc_value must be finite and <= 1, got {icc_value}")
    sd = np.std(np.concatenate([a, b]), ddof=1)
    return float(sd * np.sqrt(1.0 - icc_value))


def agreement(a, b, *, form: str = "two_way_random_absolute", unit: str = "single") -> AgreementResult:
    """One Table IV row for two raters / sessions ``[n]``: ICC (95 % CI), MAD, SEM."""
    res = icc(a, b, form=form, unit=unit)
    return AgreementResult(res, mad(a, b), sem(a, b, res.value))


def linear_regression(x, y) -> RegressionResult:
    """Least-squares fit ``y = slope * x + intercept`` of ``[n]`` arrays (scipy.stats.linregress)."""
    x, y = _pair(x, y)
    if np.ptp(x) == 0:
        raise StatsError("x is constant; the regression slope is undefined")
    fit = sst.linregress(x, y)
    return RegressionResult(float(fit.slope), float(fit.intercept), float(fit.rvalue ** 2),
                            float(fit.pvalue), x.size)


def bland_altman(a, b) -> BlandAltmanResult:
    """Bland-Altman agreement of ``[n]`` paired measurements (differences ``a - b``)."""
    a, b = _pair(a, b)
    d = a - b
    bias = float(d.mean())                      # mean difference
    sd = float(d.std(ddof=1))                   # SD of differences
    return BlandAltmanResult(bias, sd, bias - Z_95 * sd, bias + Z_95 * sd, d.size)


def paired_tests(a, b) -> PairedTestResult:
    """Paired t-test and Wilcoxon signed-rank test (two-sided) of ``[n]`` paired values across subjects."""
    a, b = _pair(a, b)
    if np.all(a == b):
        raise StatsError("a and b are identical; paired tests are undefined")
    t = sst.ttest_rel(a, b)
    w = sst.wilcoxon(a, b)
    return PairedTestResult(float(t.statistic), float(t.pvalue), float(w.statistic), float(w.pvalue), a.size)


def compare_paired(pairs: dict[str, tuple], *, alpha: float = 0.05) -> pd.DataFrame:
    """Paired t / Wilcoxon tests for several comparisons, each family Holm-corrected.

    ``pairs`` maps a comparison name (e.g. ``"ours vs cyclegan"``) to ``(a, b)``, two ``[n]``
    per-subject arrays. Returns one row per comparison with columns ``n, mean_diff, t_stat, t_p,
    t_p_holm, t_reject, w_stat, w_p, w_p_holm, w_reject`` (index: the names, in input order).
    """
    if not pairs:
        raise StatsError("pairs is empty; give at least one comparison")
    rows = {name: paired_tests(a, b) for name, (a, b) in pairs.items()}
    df = pd.DataFrame({
        "n": [r.n for r in rows.values()],
        "mean_diff": [float(np.mean(np.asarray(a, float) - np.asarray(b, float))) for a, b in pairs.values()],
        "t_stat": [r.t_stat for r in rows.values()], "t_p": [r.t_p for r in rows.values()],
        "w_stat": [r.w_stat for r in rows.values()], "w_p": [r.w_p for r in rows.values()],
    }, index=pd.Index(list(rows), name="comparison"))
    for test in ("t", "w"):  # Holm over the comparisons, separately for each test
        h = holm(df[f"{test}_p"].to_numpy(), alpha=alpha)
        df[f"{test}_p_holm"], df[f"{test}_reject"] = h["p_adj"], h["reject"]
    return df[["n", "mean_diff", "t_stat", "t_p", "t_p_holm", "t_reject", "w_stat", "w_p", "w_p_holm", "w_reject"]]


def holm(pvals, alpha: float = 0.05) -> dict[str, np.ndarray]:
    """Holm step-down correction of ``pvals`` ``[m]``: ``{"reject": bool [m], "p_adj": [m]}``.

    Written here rather than wrapping ``pingouin.multicomp``: pingouin rejects only when
    ``p_adj < alpha`` (strict), which disagrees with Holm (1979) -- reject while
    ``p_(i) <= alpha / (m - i)`` -- at the boundary (e.g. p = 0.01 ranked 2nd of 6).
    """
    p = _vec(pvals, "pvals")
    if p.size == 0 or (p < 0).any() or (p > 1).any():
        raise StatsError("pvals must be a non-empty array of values in [0, 1]")
    m = p.size
    order = np.argsort(p, kind="stable")
    factors = m - np.arange(m)                                   # m, m-1, ..., 1
    # Step-down: reject sorted hypotheses until the first p_(i) > alpha / (m - i).
    passed = p[order] <= alpha / factors
    n_reject = m if passed.all() else int(np.argmin(passed))
    # Adjusted p: running maximum of (m - i) * p_(i), capped at 1, back in input order.
    adj_sorted = np.minimum(np.maximum.accumulate(factors * p[order]), 1.0)
    p_adj, reject = np.empty(m), np.zeros(m, dtype=bool)
    p_adj[order] = adj_sorted
    reject[order[:n_reject]] = True
    return {"reject": reject, "p_adj": p_adj}


def bootstrap_ci(x, *, statistic: Callable[[np.ndarray], float] = np.mean, n_boot: int = 2000,
                 seed: int = 0, confidence: float = 0.95) -> BootstrapResult:
    """Percentile bootstrap CI of ``statistic`` over subjects ``x`` ``[n]`` (seeded, ``n_boot`` resamples)."""
    x = _vec(x, "x")
    if x.size < 3:
        raise StatsError(f"need at least 3 subjects, got {x.size}")
    if n_boot < 1 or not 0 < confidence < 1:
        raise StatsError(f"n_boot must be >= 1 and confidence in (0, 1), got {n_boot}, {confidence}")
    res = sst.bootstrap((x,), statistic, n_resamples=n_boot, method="percentile",
                        confidence_level=confidence, rng=np.random.default_rng(seed), vectorized=False)
    ci = res.confidence_interval
    return BootstrapResult(float(statistic(x)), float(ci.low), float(ci.high), n_boot, seed)

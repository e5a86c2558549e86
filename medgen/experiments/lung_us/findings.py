"""The study's claims (:func:`findings`), the paired tests they rest on (:func:`paired_tests`) and the
headline numbers of ``results.json`` (:func:`headline_metrics`)."""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats as sst

from medgen.experiments.common import concat, fmt_p, paired_comparisons, subject_mean
from medgen.experiments.lung_us.paper import (ALPHA, COVER_FRACTION, DPS, FLAG_ALPHA, RECON_METRICS, TIKHONOV,
                                              UNGUIDED)

__all__ = ["paired_tests", "findings", "headline_metrics"]


def paired_tests(rows: pd.DataFrame, *, metric: str = "psnr", alpha: float = ALPHA) -> pd.DataFrame:
    """Per operator, DPS vs each other method on ``metric`` across images: paired t and Wilcoxon,
    Holm-corrected within the operator (:func:`medgen.experiments.common.paired_comparisons`)."""
    out = []
    for name in dict.fromkeys(rows["operator"]):
        sel = rows[rows["operator"] == name]
        others = [m for m in dict.fromkeys(sel["method"]) if m != DPS]
        if DPS in set(sel["method"]) and others:
            res = paired_comparisons(sel, [(DPS, m) for m in others], metric, family=name, alpha=alpha)
            out.append(res.assign(operator=name))
    return concat(out)


def _test(tests: pd.DataFrame | None, operator: str, other: str) -> tuple[float, float]:
    """(mean_diff, Holm-adjusted paired-t p) of DPS vs ``other`` on ``operator`` (NaN when missing)."""
    if tests is None or tests.empty:
        return float("nan"), float("nan")
    sel = tests[(tests["operator"] == operator) & (tests["b"] == other)]
    if sel.empty:
        return float("nan"), float("nan")
    return float(sel["mean_diff"].iloc[0]), float(sel["t_p_holm"].iloc[0])


def _finding_flags(flags: pd.DataFrame | None, alpha: float) -> tuple[bool, str]:
    if flags is None or flags.empty:
        return False, "not evaluated: needs the memorization audit."
    total = flags[flags["category"] == "all"].iloc[0]
    n, rate, p0 = int(total["n_generated"]), float(total["flagged_fraction"]), float(total["calibration_rate"])
    k = int(round(rate * n))
    p = float(sst.binomtest(k, n, p0, alternative="greater").pvalue) if n else float("nan")
    holds = bool(n > 0 and p >= alpha)
    per = ", ".join(f"cat {r.category}: " + ("no generated images" if np.isnan(r.flagged_fraction)
                                             else f"{100 * r.flagged_fraction:.1f} %")
                    for r in flags.itertuples() if r.category != "all")
    text = (f"{k}/{n} generated images ({100 * rate:.1f} %) lie closer to a training image of their category "
            f"than the {100 * p0:.0f} % closest held-out images ({per}; {flags['space'].iloc[0]} space); "
            f"one-sided binomial test vs the {100 * p0:.0f} % calibration p = {fmt_p(p)}")
    if rate < p0 and n:
        text += "; below calibration: generated images are farther from the training set than real held-out ones"
    return holds, text + f"; holds when p >= {alpha} (no excess of near-copies)."


def _finding_categories(aeration: pd.DataFrame | None) -> tuple[bool, str]:
    if aeration is None or aeration.empty:
        return False, "not evaluated: needs the aeration statistics."
    per = aeration[aeration["category"] != "all"]
    total = aeration[aeration["category"] == "all"].iloc[0]
    ok = [(r.share_real == 0) or (r.share_generated >= COVER_FRACTION * r.share_real) for r in per.itertuples()]
    parts = ", ".join(f"cat {r.category}: {100 * r.share_generated:.0f} % vs {100 * r.share_real:.0f} %"
                      for r in per.itertuples())
    return bool(all(ok)), (f"generated vs training category shares {parts}; aeration KS D = "
                           f"{total['ks_statistic']:.3f}, p = {fmt_p(float(total['ks_p']))}; holds when every "
                           f"category's generated share is >= {COVER_FRACTION} x its training share.")


def _finding_fid(dist: pd.DataFrame | None) -> tuple[bool, str]:
    if dist is None or dist.empty:
        return False, "not evaluated: needs FID rows."
    parts, holds = [], True
    for space, sel in dist.groupby("space", sort=False):
        gen = sel[sel["comparison"].str.startswith("generated")]
        floor = sel[sel["comparison"].str.startswith("train")]
        if gen.empty or floor.empty:
            continue
        g, f = float(gen["fid"].iloc[0]), float(floor["fid"].iloc[0])
        holds &= g > f
        parts.append(f"{space} {g:.2f} vs floor {f:.2f} (n = {int(gen['n_other'].iloc[0])})")
    if not parts:
        return False, "not evaluated: needs generated and train-vs-held-out FID rows of one space."
    return bool(holds), ("FID generated vs held-out against the train-vs-held-out floor: " + "; ".join(parts)
                         + "; holds when the generated FID is above the floor in every space (expected: a small "
                           "model at a small preset does not match real data).")


def _finding_dps_unguided(rows: pd.DataFrame | None, tests: pd.DataFrame | None, alpha: float) -> tuple[bool, str]:
    if rows is None or rows.empty or DPS not in set(rows["method"]):
        return False, "not evaluated: needs DPS reconstruction rows."
    parts, holds, evaluated = [], True, False
    for name in dict.fromkeys(rows["operator"]):
        d, u, t = (subject_mean(rows, "psnr", operator=name, method=m) for m in (DPS, UNGUIDED, TIKHONOV))
        if np.isnan(d) or np.isnan(u):
            continue
        evaluated = True
        _, p = _test(tests, name, UNGUIDED)
        ok = bool(d > u and not np.isnan(p) and p < alpha and (np.isnan(t) or d > t))
        holds &= ok
        parts.append(f"{name}: {d:.2f} vs unguided {u:.2f} (Holm p = {fmt_p(p)}), Tikhonov {t:.2f} dB")
    if not evaluated:
        return False, "not evaluated: needs DPS and unguided-prior PSNR rows."
    return bool(holds), ("PSNR of DPS vs the unguided prior per operator: " + "; ".join(parts)
                         + f"; holds when DPS beats the unguided prior with Holm p < {alpha} and also the "
                           "Tikhonov baseline row on every operator.")


def _finding_dps_tikhonov(rows: pd.DataFrame | None, tests: pd.DataFrame | None, alpha: float,
                          operator: str = "us_acoustic") -> tuple[bool, str]:
    if rows is None or rows.empty or operator not in set(rows["operator"]):
        return False, f"not evaluated: needs {operator} reconstruction rows."
    d, t = (subject_mean(rows, "psnr", operator=operator, method=m) for m in (DPS, TIKHONOV))
    if np.isnan(d) or np.isnan(t):
        return False, f"not evaluated: needs DPS and Tikhonov PSNR rows of {operator}."
    _, p = _test(tests, operator, TIKHONOV)
    r_d, r_t = (subject_mean(rows, "residual", operator=operator, method=m) for m in (DPS, TIKHONOV))
    return bool(d > t and not np.isnan(p) and p < alpha), (
        f"{operator} (nonlinear operator): DPS {d:.2f} dB vs Tikhonov {t:.2f} dB (Holm p = {fmt_p(p)}); "
        f"measurement residual {r_d:.3f} vs {r_t:.3f}; holds when DPS is higher with Holm p < {alpha}.")


def findings(*, flags: pd.DataFrame | None = None, aeration: pd.DataFrame | None = None,
             distribution: pd.DataFrame | None = None, recon_rows: pd.DataFrame | None = None,
             tests: pd.DataFrame | None = None, alpha: float = ALPHA) -> dict[str, tuple[bool, str]]:
    """The study's claims as ``{name: (holds, one-line evidence with the numbers)}``:

    * ``memorization_flag_rate_near_calibration`` -- the share of generated images flagged (closer to
      a training image of their category than the 1 % closest held-out images) is not significantly
      above the 1 % calibration (one-sided binomial p >= ``FLAG_ALPHA``) -- the paper's "no memorization";
    * ``generated_covers_all_categories`` -- each category's generated share >= ``COVER_FRACTION`` x
      its training share (the paper: "not biased toward a particular category");
    * ``fid_above_floor`` -- generated-vs-held-out FID above the train-vs-held-out floor in every space
      (the honest expectation at small presets);
    * ``dps_beats_unguided_and_tikhonov_psnr`` -- on every operator DPS has a higher mean PSNR than the unguided
      prior (Holm p < ``alpha``) and than the Tikhonov baseline row (DESIGN: a winner must beat it);
    * ``dps_beats_tikhonov_us_acoustic`` -- on the nonlinear acoustic operator DPS beats Tikhonov
      (Holm p < ``alpha``).

    ``flags``: :func:`~medgen.experiments.lung_us.tables.flag_table`; ``aeration``:
    :func:`~medgen.experiments.lung_us.tables.aeration_table`; ``distribution``:
    :func:`~medgen.experiments.lung_us.tables.distribution_table`; ``recon_rows``:
    :attr:`~medgen.experiments.lung_us.rows.Reconstruction.rows`; ``tests``: :func:`paired_tests`.
    A finding whose inputs are missing does not hold and says "not evaluated". Record them with
    :meth:`medgen.reports.Report.findings`.
    """
    return {
        "memorization_flag_rate_near_calibration": _finding_flags(flags, FLAG_ALPHA),
        "generated_covers_all_categories": _finding_categories(aeration),
        "fid_above_floor": _finding_fid(distribution),
        "dps_beats_unguided_and_tikhonov_psnr": _finding_dps_unguided(recon_rows, tests, alpha),
        "dps_beats_tikhonov_us_acoustic": _finding_dps_tikhonov(recon_rows, tests, alpha),
    }


def headline_metrics(*, distribution: pd.DataFrame | None = None, flags: pd.DataFrame | None = None,
                     aeration: pd.DataFrame | None = None,
                     recon_rows: pd.DataFrame | None = None) -> dict[str, dict[str, float]]:
    """``{key: {metric: value}}`` for results.json: FID / KID (and the floor) per space, flag rates per
    category, category shares and the KS p, and the reconstruction metrics per operator x method
    (mean over subjects)."""
    out: dict[str, dict[str, float]] = {}
    if distribution is not None:
        for r in distribution.itertuples():
            key = f"prior [{r.space}]"
            suffix = "" if r.comparison.startswith("generated") else "_floor"
            out.setdefault(key, {}).update({f"fid{suffix}": round(float(r.fid), 4), f"kid{suffix}": float(r.kid),
                                            f"n_real{suffix}": float(r.n_real), f"n{suffix}": float(r.n_other)})
    if flags is not None:
        for r in flags.itertuples():
            key = f"memorization [{r.space}]"
            name = "all" if r.category == "all" else f"cat{r.category}"
            out.setdefault(key, {})[f"flag_rate_{name}"] = float(r.flagged_fraction)
            if not np.isnan(d := float(getattr(r, "nearest_pair_distance", np.nan))):
                out[key][f"nearest_distance_{name}"] = d
            out[key]["calibration_rate"] = float(r.calibration_rate)
    if aeration is not None:
        for r in aeration.itertuples():
            if r.category == "all":
                out.setdefault("aeration", {}).update({"ks_statistic": float(r.ks_statistic), "ks_p": float(r.ks_p)})
            else:
                out.setdefault("aeration", {}).update({f"share_generated_cat{r.category}": float(r.share_generated),
                                                       f"share_real_cat{r.category}": float(r.share_real)})
    if recon_rows is not None and not recon_rows.empty:
        for (operator, method), sel in recon_rows.groupby(["operator", "method"], sort=False):
            key = f"{method} [{operator}]"
            for metric in RECON_METRICS:
                v = subject_mean(sel, metric)
                if not np.isnan(v):
                    out.setdefault(key, {})[metric] = round(float(v), 4)
    return out

"""The paper's claims on our rows: :func:`findings`, the families of paired tests
(:func:`standard_comparisons`) and the headline numbers of ``results.json`` (:func:`headline_metrics`).

Subject means, paired tests (paired t as the paper, and Wilcoxon; Holm within a family) and
p-value text come from :mod:`medgen.experiments.common`.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from medgen.experiments.common import fmt_p, paired_comparisons, subject_mean

from .paper import ABLATION, LABELS, MEASURER_NOTE, PAIRED, REAL_CT, REGISTRATION_MODEL, UNPAIRED_CUT

__all__ = ["findings", "headline_metrics", "standard_comparisons", "tests_summary", "TESTS_SUMMARY_COLUMNS"]

TESTS_SUMMARY_COLUMNS = ("family", "comparison", "metric", "n", "mean_a", "mean_b", "t_p", "t_p_holm", "w_p_holm")


def _no_real(rows: pd.DataFrame) -> pd.DataFrame:
    """``rows`` without the real-CT ceiling rows (:data:`REAL_CT`): not a method."""
    return rows[rows["method"] != REAL_CT] if "method" in rows.columns else rows


def standard_comparisons(quality: pd.DataFrame, dice: pd.DataFrame, registration: pd.DataFrame | None = None,
                         ablation: pd.DataFrame | None = None, alpha: float = 0.05) -> pd.DataFrame:
    """The notebook's families of paired tests (each Holm-corrected on its own):

    * ``PSNR <contrast>``: DDIM image vs every other 2D method (paper: "DDIM image mode performed
      slightly better than ... (p < 0.001)");
    * ``Dice <contrast>``: every paired 2D method vs every CUT variant (paper: "CUT vs. all p < 0.001");
    * ``registration``: two vs one, two vs none, one vs none (Dice per volume, posterior Dice);
    * ``3D vs 2D``: every 3D method vs every 2D slice-wise model (posterior Dice per volume);
    * ``ablation <contrast>``: every ablation point / DDPM vs t=20, eta=1, w=0 of the same mode (PSNR).
    """
    parts, dice = [], _no_real(dice)
    q2 = quality[quality["dims"] == "2D"] if "dims" in quality.columns else quality
    for contrast in dict.fromkeys(q2.get("contrast", pd.Series(dtype=str))):
        rows = q2[q2["contrast"] == contrast]
        present = list(dict.fromkeys(rows["method"]))
        ref = LABELS["ddim_image"]
        if ref in present:
            parts.append(paired_comparisons(rows, [(ref, m) for m in present if m != ref], "psnr",
                                            family=f"PSNR {contrast}", alpha=alpha))
    d2 = dice[dice["setting"] == "2D"]
    for contrast in dict.fromkeys(d2.get("contrast", pd.Series(dtype=str))):
        rows = d2[d2["contrast"] == contrast]
        present = set(rows["method"])
        pairs = [(LABELS[p], LABELS[c]) for p in PAIRED for c in UNPAIRED_CUT
                 if LABELS[p] in present and LABELS[c] in present]
        if pairs:
            parts.append(paired_comparisons(rows, pairs, "dice_volume", family=f"Dice {contrast}", alpha=alpha))
    if registration is not None and not registration.empty:
        pairs = [("two", "one"), ("two", "none"), ("one", "none")]
        for metric in ("dice_volume", "dice_posterior_volume"):
            parts.append(paired_comparisons(registration, pairs, metric, by="registration",
                                            family=f"registration {metric}", alpha=alpha))
    d3 = dice[dice["setting"] == "3D"]
    dsw = dice[dice["setting"] == "2D slice-wise"]
    if not d3.empty and not dsw.empty:
        pairs = [(a, b) for a in dict.fromkeys(d3["method"]) for b in dict.fromkeys(dsw["method"])]
        parts.append(paired_comparisons(pd.concat([d3, dsw]), pairs, "dice_posterior_volume", family="3D vs 2D",
                                        alpha=alpha))
    if ablation is not None and not ablation.empty:
        for contrast in dict.fromkeys(ablation["contrast"]):
            rows = ablation[ablation["contrast"] == contrast]
            pairs = []
            for mode in ("DDIM noise", "DDIM image"):
                base = f"{mode} {ABLATION[0][0]}"
                pairs += [(m, base) for m in dict.fromkeys(rows["method"]) if m.startswith(mode) and m != base
                          and base in set(rows["method"])]
            if pairs:
                parts.append(paired_comparisons(rows, pairs, "psnr", family=f"ablation {contrast}", alpha=alpha))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def tests_summary(tests: pd.DataFrame, decimals: int = 4) -> pd.DataFrame:
    """The columns of :func:`standard_comparisons` a reader needs (:data:`TESTS_SUMMARY_COLUMNS`), rounded."""
    return tests[list(TESTS_SUMMARY_COLUMNS)].round(decimals)


def _p(rows: pd.DataFrame, a: str, b: str, metric: str, by: str = "method") -> float:
    """Raw paired-t p of ``a`` vs ``b`` (one comparison, no correction)."""
    return float(paired_comparisons(rows, [(a, b)], metric, by=by)["t_p"].iloc[0])


# --------------------------------------------------------------------------------------
# Findings
# --------------------------------------------------------------------------------------
def _finding_paired_vs_cut(dice: pd.DataFrame, alpha: float) -> tuple[bool, str]:
    d2 = dice[dice["setting"] == "2D"]
    holds, parts = True, []
    contrasts = list(dict.fromkeys(d2["contrast"])) if not d2.empty else []
    evaluated = False
    for contrast in contrasts:
        rows = d2[d2["contrast"] == contrast]
        paired = [LABELS[m] for m in PAIRED if LABELS[m] in set(rows["method"])]
        cut = [LABELS[m] for m in UNPAIRED_CUT if LABELS[m] in set(rows["method"])]
        if not paired or not cut:
            continue
        evaluated = True
        tests = paired_comparisons(rows, [(a, b) for a in paired for b in cut], "dice_volume", alpha=alpha)
        worst_paired = min(paired, key=lambda m: subject_mean(rows, "dice_volume", method=m))
        best_cut = max(cut, key=lambda m: subject_mean(rows, "dice_volume", method=m))
        wp, bc = (subject_mean(rows, "dice_volume", method=m) for m in (worst_paired, best_cut))
        p_worst = float(np.nanmax(tests["t_p_holm"].to_numpy(float))) if tests["t_p_holm"].notna().any() else np.nan
        ok = bool(wp > bc and not np.isnan(p_worst) and p_worst < alpha)
        holds &= ok
        parts.append(f"{contrast.upper()}: weakest paired {worst_paired} {wp:.3f} vs best CUT {best_cut} {bc:.3f} "
                     f"(largest Holm-corrected paired-t p = {fmt_p(p_worst)})")
    if not evaluated:
        return False, "not evaluated: needs at least one paired method and one CUT variant with Dice rows."
    return bool(holds), ("Dice per volume, " + "; ".join(parts) + f"; holds when every paired method beats every "
                         f"CUT variant with Holm p < {alpha} ({MEASURER_NOTE}).")


def _finding_registration(registration: pd.DataFrame, alpha: float,
                          alignment: pd.DataFrame | None) -> tuple[bool, str]:
    if registration is None or registration.empty or not {"one", "two"} <= set(registration["registration"]):
        return False, "not evaluated: needs Dice rows of models trained on one- and two-landmark registered data."
    one, two = (subject_mean(registration, "dice_volume", registration=r) for r in ("one", "two"))
    post = {r: subject_mean(registration, "dice_posterior_volume", registration=r) for r in ("one", "two")}
    p = _p(registration, "two", "one", "dice_volume", by="registration")
    holds = bool(two > one and not np.isnan(p) and p < alpha)
    text = (f"Dice per volume of {LABELS[REGISTRATION_MODEL]} (T2w, slice-wise) trained on two- vs one-landmark "
            f"registered volumes: {two:.3f} vs {one:.3f} (paired t p = {fmt_p(p)}); posterior Dice "
            f"{post['two']:.3f} vs {post['one']:.3f}")
    if alignment is not None and not alignment.empty:
        mm = alignment.groupby("registration")["spinous_mm"].mean()
        text += f"; spinous-process landmarks {mm.get('two', np.nan):.1f} vs {mm.get('one', np.nan):.1f} mm apart"
    return holds, text + f"; holds when two > one with p < {alpha}."


def _finding_ddim_modes(quality: pd.DataFrame) -> tuple[bool, str]:
    q2 = quality[quality["dims"] == "2D"] if "dims" in quality.columns else quality
    img, noise = LABELS["ddim_image"], LABELS["ddim_noise"]
    parts, holds, evaluated = [], True, False
    for contrast in dict.fromkeys(q2["contrast"]) if not q2.empty else []:
        rows = q2[q2["contrast"] == contrast]
        if not {img, noise} <= set(rows["method"]):
            continue
        evaluated = True
        a, b = subject_mean(rows, "psnr", method=img), subject_mean(rows, "psnr", method=noise)
        holds &= bool(a >= b)
        parts.append(f"{contrast.upper()}: {a:.2f} vs {b:.2f} dB (paired t p = {fmt_p(_p(rows, img, noise, 'psnr'))})")
    if not evaluated:
        return False, "not evaluated: needs PSNR rows of DDIM image and DDIM noise mode."
    return bool(holds), "PSNR of DDIM image vs noise mode (t=20, eta=1, w=0), " + "; ".join(parts) + "."


def _finding_3d(dice: pd.DataFrame) -> tuple[bool, str]:
    d3, dsw = dice[dice["setting"] == "3D"], dice[dice["setting"] == "2D slice-wise"]
    if d3.empty or dsw.empty:
        return False, "not evaluated: needs posterior Dice of a 3D model and of a 2D model on the same volumes."
    both = pd.concat([d3, dsw])
    means3 = {m: subject_mean(d3, "dice_posterior_volume", method=m) for m in dict.fromkeys(d3["method"])}
    means2 = {m: subject_mean(dsw, "dice_posterior_volume", method=m) for m in dict.fromkeys(dsw["method"])}
    b3, b2 = max(means3, key=means3.get), max(means2, key=means2.get)
    holds = bool(means3[b3] >= means2[b2])
    p = _p(both, b3, b2, "dice_posterior_volume")
    others = ", ".join(f"{m} {v:.3f}" for m, v in means3.items() if m != b3)
    return holds, (f"posterior-element Dice per volume (T2w test volumes): best 3D {b3} {means3[b3]:.3f} vs best 2D "
                   f"{b2} {means2[b2]:.3f} (paired t p = {fmt_p(p)})" + (f"; other 3D: {others}" if others else "")
                   + ".")


def findings(quality: pd.DataFrame, dice: pd.DataFrame, registration: pd.DataFrame | None = None, *,
             alignment: pd.DataFrame | None = None, alpha: float = 0.05) -> dict[str, tuple[bool, str]]:
    """The issue's four findings as ``{name: (holds, evidence sentence with the numbers)}``:

    * ``paired_methods_beat_cut_dice`` -- per contrast, every paired 2D method (Pix2Pix UNet /
      SA-UNet, DDIM noise / image) has a higher mean Dice per volume than every CUT variant and
      every such paired t-test is significant after Holm (p < ``alpha``);
    * ``two_landmarks_beat_one`` -- the model trained on two-landmark registered data has a higher
      mean Dice per volume than the one-landmark one, paired t p < ``alpha``;
    * ``ddim_image_ge_noise_psnr`` -- DDIM image mode's mean PSNR >= noise mode's in every contrast;
    * ``threed_ge_twod_posterior_dice`` -- the best 3D model's mean posterior-element Dice per volume
      >= the best 2D model's, on the same test volumes (2D slice-wise).

    ``quality``: Table 1 rows (``method, contrast, dims, patient_id, metric, value``); ``dice``:
    Dice rows (``method, contrast, setting`` in ``2D`` / ``3D`` / ``2D slice-wise``); ``registration``:
    Dice rows with a ``registration`` column (``none`` / ``one`` / ``two``); ``alignment``:
    :func:`alignment_table` (adds the landmark distance to the evidence). A finding whose rows
    are missing does not hold and says "not evaluated".
    """
    dice = _no_real(dice)
    return {
        "paired_methods_beat_cut_dice": _finding_paired_vs_cut(dice, alpha),
        "two_landmarks_beat_one": _finding_registration(registration, alpha, alignment),
        "ddim_image_ge_noise_psnr": _finding_ddim_modes(quality),
        "threed_ge_twod_posterior_dice": _finding_3d(dice),
    }


# --------------------------------------------------------------------------------------
# Headline numbers
# --------------------------------------------------------------------------------------
def headline_metrics(quality: pd.DataFrame, dice: pd.DataFrame,
                     registration: pd.DataFrame | None = None) -> dict[str, dict[str, float]]:
    """``{"<method> [<contrast>, <setting>]": {metric: mean}}`` for results.json: PSNR / SSIM / L1 and
    Dice per volume (bone, posterior) of every method, and the registration comparison's Dice."""
    out: dict[str, dict[str, float]] = {}
    for (method, contrast, dims), rows in quality.groupby(["method", "contrast", "dims"], sort=False):
        key = f"{method} [{contrast}, {dims}]"
        for metric in ("psnr", "ssim", "mae"):
            if metric in set(rows["metric"]):
                out.setdefault(key, {})[metric] = round(subject_mean(rows, metric, method=method), 4)
    for (method, contrast, setting), rows in dice.groupby(["method", "contrast", "setting"], sort=False):
        key = f"{method} [{contrast}, {setting if setting != '2D slice-wise' else '3D volumes, 2D slice-wise'}]"
        for metric in ("dice_volume", "dice_posterior_volume"):
            out.setdefault(key, {})[metric] = round(subject_mean(rows, metric, method=method), 4)
    if registration is not None and not registration.empty:
        for reg in dict.fromkeys(registration["registration"]):
            key = f"{LABELS[REGISTRATION_MODEL]} registration={reg} [t2w, 3D volumes, 2D slice-wise]"
            for metric in ("dice_volume", "dice_posterior_volume"):
                out.setdefault(key, {})[metric] = round(subject_mean(registration, metric, registration=reg), 4)
    return out

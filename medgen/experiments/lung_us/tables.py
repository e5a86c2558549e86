"""The study's tables: the config beside the paper's Table 1, FID / KID with the floor, the memorization
flag table, the aeration statistics, the per-operator reconstruction tables and the sweep / test summaries."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats as sst

from medgen.config import RunConfig
from medgen.experiments.lung_us.paper import (CATEGORIES, PAPER_N, PAPER_NEAREST, PAPER_SPACE, PAPER_TABLE1,
                                              RECON_METRICS)
from medgen.experiments.lung_us.plan import space_card

if TYPE_CHECKING:
    from medgen.experiments.lung_us.rows import LungSet, MemorizationResult

__all__ = ["config_table", "space_note", "distribution_table", "flag_table", "category_proportions", "aeration_ks",
           "aeration_table", "reconstruction_table", "operator_heading", "sweeps_summary", "tests_summary"]


def config_table(cfg: RunConfig) -> pd.DataFrame:
    """The paper's Table 1 (improved-diffusion settings) beside the prior config ``cfg`` of this run."""
    m, d, t = cfg.model, cfg.diffusion, cfg.train
    attn = [2 ** i for i, a in enumerate(m.attention_levels) if a]
    ours = {"diffusion_steps": d.timesteps, "image_size": cfg.data.image_size, "num_channels": m.channels[0],
            "num_res_blocks": m.layers_per_block,
            "attention_resolutions": f"middle: {m.mid_attention}; levels (downsampling factor): {attn or 'none'}",
            "learning_rate": t.lr, "batch_size": t.batch_size}
    rows = [{"parameter": k, "paper": str(v), "ours": str(ours[k])} for k, v in PAPER_TABLE1.items()]
    rows += [{"parameter": "noise schedule / learned variances", "paper": "cosine / optional (improved-diffusion)",
              "ours": f"{d.schedule} / {getattr(d, 'learn_sigma', False)}"},
             {"parameter": "training images / steps", "paper": f"{PAPER_N['train']} / not stated",
              "ours": f"{cfg.data.n_train} / {t.steps}"}]
    return pd.DataFrame(rows)


def space_note(space: str) -> str:
    """One markdown line: which feature weights the audit used, and why the paper's numbers are not comparable."""
    card = space_card(space)
    what = f"`{space}` ({card.weights_description})" if card is not None else f"`{space}`"
    why = ("the paper's network" if space == "resnet18" else
           "ImageNet ResNet18 weights do not ship offline; set MEDGEN_RESNET18_WEIGHTS to a local file to use them")
    return (f"Audit feature space: {what} -- {why}. The paper's closest-pair distances (column `paper`, "
            f"{PAPER_SPACE} on real lung images) are not comparable with ours: another feature space and other images.")


def distribution_table(feats: Mapping[str, Mapping[str, Any]], *, seed: int = 0,
                       comparisons: Sequence[tuple[str, str, str]] = (
                           ("generated vs held-out", "heldout", "generated"),
                           ("train vs held-out (floor)", "heldout", "train_matched"))) -> pd.DataFrame:
    """FID and KID per feature space and comparison ``(label, real set, other set)`` of ``feats``
    (``{space: {set name: features [n, D]}}``).

    KID uses 100 subsets of half the smaller set (at most 1,000), so ``kid_std`` shows its spread.
    Columns ``space, comparison, fid, kid, kid_std, n_real, n_other, warning``; ``warning`` is the
    small-sample note under :data:`medgen.metrics.distribution.MIN_SAMPLES` images, else "".
    """
    from medgen.metrics.distribution import MIN_SAMPLES, fid_from_features, kid_from_features
    rows = []
    for space, sets in feats.items():
        for label, real, other in comparisons:
            f1, f2 = sets[real], sets[other]
            n1, n2 = int(f1.shape[0]), int(f2.shape[0])
            # subsets of half the smaller set (at most 1000): with all images in every subset the std is 0
            kid, kid_sd = kid_from_features(f1, f2, seed=seed, subset_size=max(2, min(1000, min(n1, n2) // 2)))
            warn = (f"n = {n1} / {n2} < {MIN_SAMPLES}: biased and noisy, not comparable to published values"
                    if min(n1, n2) < MIN_SAMPLES else "")
            rows.append({"space": space, "comparison": label, "fid": fid_from_features(f1, f2), "kid": kid,
                         "kid_std": kid_sd, "n_real": n1, "n_other": n2, "warning": warn})
    return pd.DataFrame(rows)


def flag_table(mem: "MemorizationResult", n_generated: Mapping[int, int] | None = None) -> pd.DataFrame:
    """One row per aeration category (and ``all``): counts, median nearest-training distances of
    generated and held-out images, threshold, flag rate, calibration rate, the closest pair's
    distance and, in a column labelled "paper", the paper's closest-pair distance (ImageNet
    ResNet18 on real images: not comparable with ours)."""
    a = mem.audit
    frame = a.summary().rename(columns={"stratum": "category"})
    frame["category"] = frame["category"].astype(int)
    frame["excluded"] = [mem.excluded.get(int(c), 0) for c in frame["category"]]
    frame["calibration_rate"] = a.percentile / 100.0
    total = {"category": "all", "n_train": int(frame["n_train"].sum()), "n_heldout": int(frame["n_heldout"].sum()),
             "n_generated": int(frame["n_generated"].sum()),
             "median_distance_generated": float(np.median(a.generated_distance)),
             "median_distance_heldout": float(np.median(a.heldout_distance)), "threshold": np.nan,
             "flagged_fraction": float(a.flagged_fraction),
             "nearest_pair_distance": float(a.generated_distance.min()),
             "excluded": int(sum(mem.excluded.values())), "calibration_rate": a.percentile / 100.0}
    frame = pd.concat([frame, pd.DataFrame([total])], ignore_index=True)
    frame["space"] = mem.space
    frame[f"paper: nearest_pair_distance ({PAPER_SPACE}, real images; not comparable)"] = [
        PAPER_NEAREST.get(c, np.nan) if c != "all" else np.nan for c in frame["category"]]
    return frame


def category_proportions(categories: Mapping[str, np.ndarray]) -> pd.DataFrame:
    """Share of each aeration category (rows 0, 1, 2) per named set (columns) of labels ``[n]``."""
    out = {}
    for name, cats in categories.items():
        cats = np.asarray(cats, dtype=np.int64)
        if cats.size == 0:
            raise ValueError(f"category_proportions: set '{name}' is empty")
        out[name] = [float((cats == c).mean()) for c in CATEGORIES]
    return pd.DataFrame(out, index=pd.Index(list(CATEGORIES), name="category"))


def aeration_ks(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov test of aeration values ``[n]`` vs ``[m]`` -> (statistic, p)."""
    res = sst.ks_2samp(np.asarray(a, float), np.asarray(b, float))
    return float(res.statistic), float(res.pvalue)


def aeration_table(real: "LungSet", generated: "LungSet") -> pd.DataFrame:
    """Category shares (training vs generated) plus mean aeration and the KS test, one row per category
    and a final ``all`` row holding the KS statistic and p."""
    props = category_proportions({"share_real": real.category, "share_generated": generated.category})
    props["n_real"] = [int((real.category == c).sum()) for c in CATEGORIES]
    props["n_generated"] = [int((generated.category == c).sum()) for c in CATEGORIES]
    frame = props.reset_index()
    ks, p = aeration_ks(real.aeration, generated.aeration)
    total = {"category": "all", "share_real": 1.0, "share_generated": 1.0, "n_real": len(real),
             "n_generated": len(generated), "mean_aeration_real": float(real.aeration.mean()),
             "mean_aeration_generated": float(generated.aeration.mean()), "ks_statistic": ks, "ks_p": p}
    frame["mean_aeration_real"] = [float(real.aeration[real.category == c].mean()) if (real.category == c).any()
                                   else np.nan for c in CATEGORIES]
    frame["mean_aeration_generated"] = [float(generated.aeration[generated.category == c].mean())
                                        if (generated.category == c).any() else np.nan for c in CATEGORIES]
    return pd.concat([frame, pd.DataFrame([total])], ignore_index=True)


def reconstruction_table(rows: pd.DataFrame, operator: str) -> Any:
    """Mean +- SD across images of the reconstruction metrics of ``operator``, one row per method."""
    from medgen.tables import metric_table
    sel = rows[rows["operator"] == operator]
    metrics = [m for m in RECON_METRICS if m in set(sel["metric"])]
    return metric_table(sel, by="method", metrics=metrics,
                        higher_is_better={"residual": False, "aeration_error": False},
                        decimals={"psnr": 2, "ssim": 3, "residual": 3, "aeration_error": 3})


def operator_heading(operator: str, supervised: Mapping[str, Any]) -> str:
    """The markdown heading of an operator's reconstruction table (says when it has no supervised model)."""
    note = "" if operator in supervised else " (no supervised model: it was trained on ultrasound measurements only)"
    return f"**{operator}**{note}"


def sweeps_summary(sweeps: pd.DataFrame, metrics: Sequence[str] = ("psnr", "residual")) -> pd.DataFrame:
    """Mean of ``metrics`` over images per sweep point: index ``operator, sweep, guidance_scale, steps``,
    one column per metric."""
    sel = sweeps[sweeps["metric"].isin(list(metrics))]
    return sel.groupby(["operator", "sweep", "guidance_scale", "steps", "metric"])["value"].mean().unstack()


def tests_summary(tests: pd.DataFrame) -> pd.DataFrame:
    """The columns of :func:`~medgen.experiments.lung_us.findings.paired_tests` a reader compares: family,
    comparison, n, the two means and the raw and Holm-adjusted p-values."""
    return tests[["family", "comparison", "n", "mean_a", "mean_b", "t_p", "t_p_holm", "w_p_holm"]]

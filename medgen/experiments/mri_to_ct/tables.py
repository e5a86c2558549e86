"""Tables and figure inputs of the MRI -> CT notebook: our rows as mean +- SD per method, the paper's
numbers beside them only as rows labelled "(paper)"; row selection for the tables and box plots."""
from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

import pandas as pd
import torch

from medgen.predict import stack
from medgen.tables import MetricTable, metric_table

from .paper import (ABLATION, BONE_DICE, DICE_METRICS, LABELS, METHODS_3D, PAPER_REGISTRATION, PAPER_TABLE1,
                    PAPER_TABLE2, PAPER_TABLE3, PAPER_TABLE_S1, POSTERIOR_DICE, QUALITY_METRICS, REAL_CT)

__all__ = ["rows_for", "alignment_summary", "quality_table", "dice_table", "ablation_table", "ddpm_table",
           "registration_table", "figure_columns", "figure5", "box_paper"]

_DECIMALS = {"mae": 4, "mse": 4, "psnr": 2, "ssim": 3, "vifp": 3, "dice_volume": 3}


def rows_for(rows: pd.DataFrame, *, real: bool = True, **where: Any) -> pd.DataFrame:
    """The rows of ``rows`` whose columns equal ``where`` (a tuple / list / set value: any of them),
    in their order; ``real=False`` also drops the real-CT ceiling rows (:data:`REAL_CT`).

    ``rows_for(dice, contrast="t2w", setting="2D")``; ``rows_for(dice, setting=("3D", "2D slice-wise"),
    metric="dice_posterior_volume")``. A column the frame lacks selects nothing.
    """
    keep = pd.Series(True, index=rows.index)
    for column, value in where.items():
        if column not in rows.columns:
            return rows.iloc[0:0]
        keep &= rows[column].isin(value) if isinstance(value, (tuple, list, set)) else rows[column] == value
    if not real and "method" in rows.columns:
        keep &= rows["method"] != REAL_CT
    return rows[keep]


def alignment_summary(alignment: pd.DataFrame, decimals: int = 3) -> pd.DataFrame:
    """Mean of every :func:`alignment_table` column per registration (none / one / two), rounded."""
    return alignment.groupby("registration", sort=False).mean(numeric_only=True).round(decimals)


def _paper_rows(table: Mapping[str, Mapping[str, float]] | None, dims: str | None,
                present: Iterable[str] = ()) -> dict[str, Mapping[str, float]] | None:
    """Paper rows of one block: all (``dims`` None), the 2D methods' (``"2D"``) or the 3D methods' (``"3D"``);
    with ``present``, only those rows."""
    if table is None:
        return None
    three = {LABELS[m] for m in METHODS_3D}
    keep = {k: v for k, v in table.items() if dims is None or (k in three) == (dims == "3D")}
    present = set(present)
    return {k: v for k, v in keep.items() if k in present} if present else keep


def quality_table(rows: pd.DataFrame, paper_key: str, *, paper: Mapping[str, Any] | None = None) -> MetricTable:
    """Table 1 for one block (``t1w``, ``t2w`` or ``3d``): mean +- SD per method, paper rows alongside."""
    metrics = [m for m in QUALITY_METRICS if m in set(rows["metric"])]
    source = PAPER_TABLE1 if paper is None else paper
    return metric_table(rows, by="method", metrics=metrics, paper=_paper_rows(source.get(paper_key), None),
                        decimals={m: _DECIMALS[m] for m in QUALITY_METRICS})


def dice_table(rows: pd.DataFrame, paper_key: str, *, posterior: bool = False, dims: str | None = None,
               paper: Mapping[str, Any] | None = None) -> MetricTable:
    """Table 2 (``posterior=False``: bone) or Table 3 (posterior elements) for one block, paper rows
    alongside (``dims`` "2D" / "3D": only the paper's 2D / 3D rows)."""
    metrics = list(POSTERIOR_DICE if posterior else BONE_DICE)
    source = (PAPER_TABLE3 if posterior else PAPER_TABLE2) if paper is None else paper
    return metric_table(rows, by="method", metrics=metrics, paper=_paper_rows(source.get(paper_key), dims),
                        decimals=3)


def ablation_table(rows: pd.DataFrame, contrast: str) -> MetricTable:
    """The DDIM ablation / DDPM rows of ``contrast`` (``method`` = "DDIM image t=20, eta=1, w=0" ...),
    supplement Table S.1 alongside (the rows of the settings present)."""
    if "contrast" in rows.columns:
        rows = rows[rows["contrast"] == contrast]
    metrics = [m for m in (*QUALITY_METRICS, "dice_volume") if m in set(rows["metric"])]
    paper = _paper_rows(PAPER_TABLE_S1.get(contrast), None, rows["method"].unique())
    return metric_table(rows, by="method", metrics=metrics, paper=paper or None, decimals=dict(_DECIMALS))


def ddpm_table(ablation: pd.DataFrame, contrast: str) -> MetricTable:
    """DDPM (all T steps) vs DDIM t=20, eta=1, w=0 of each mode on the DDPM subjects of ``contrast``."""
    rows = ablation[ablation["contrast"] == contrast]
    keep = []
    for mode in ("DDIM noise", "DDIM image"):
        ddpm, base = f"{mode} DDPM", f"{mode} {ABLATION[0][0]}"
        ids = set(rows.loc[rows["method"] == ddpm, "patient_id"])
        keep.append(rows[(rows["method"] == ddpm) | ((rows["method"] == base) & rows["patient_id"].isin(ids))])
    sel = pd.concat(keep)
    if sel.empty:
        raise ValueError(f"ddpm_table: no DDPM rows for contrast '{contrast}'")
    return ablation_table(sel, contrast)


def registration_table(registration: pd.DataFrame) -> MetricTable:
    """Dice of the registration comparison per training-data registration (none / one / two), with the
    paper's Pix2Pix values (T2w, "Influence of Rigid Registration": one 0.68, two 0.73) as paper rows."""
    paper = {reg: {"dice_volume": v} for reg, v in PAPER_REGISTRATION["Pix2Pix"].items()}
    return metric_table(registration, by="registration", metrics=list(DICE_METRICS), paper=paper, decimals=3)


def figure_columns(items: Sequence[Mapping[str, Any]], translations: Mapping[str, torch.Tensor],
                   n: int = 4) -> dict[str, torch.Tensor]:
    """Columns of the Figure-5-like grid (:func:`medgen.plots.error_grid`): the items' input MRI, every
    method's translation ``[N, 1, *S]``, the items' reference CT (first ``n`` rows)."""
    cols = {"input (MRI)": stack(items, "source")[:n]}
    cols.update({name: t[:n] for name, t in translations.items()})
    cols["reference CT"] = stack(items, "target")[:n]
    return cols


def figure5(items: Sequence[Mapping[str, Any]], translations: Mapping[str, torch.Tensor], n: int = 3) -> Any:
    """The Figure-5-like grid: one row per method (reference CT, input MRI, each translation), for each of
    the first ``n`` items its image and its absolute error against the reference CT in HU (the spine
    phantom's ``ct`` modality: model range -> HU), one colour bar; the MRI row has no error map (a
    difference across modalities means nothing). 3D items: their middle sagittal slice."""
    import numpy as np

    import medgen.data.phantoms  # noqa: F401 -- fills PHANTOMS
    from medgen.plots import error_grid
    from medgen.registry import PHANTOMS, lookup

    ct = lookup(PHANTOMS, "spine_sagittal").modalities["ct"]
    hu_per_unit = float(np.diff(ct.from_model(np.array([0.0, 1.0])))[0])
    return error_grid(figure_columns(items, translations, n), "reference CT", n=n, no_error=("input (MRI)",),
                      error_scale=hu_per_unit, error_units="HU")


def box_paper(rows: pd.DataFrame, metric: str, posterior: bool = False) -> dict[tuple[str, str], float]:
    """``{(method, contrast): paper value}`` of Table 2 / 3 for the (method, contrast) pairs in ``rows``
    (the ``paper`` argument of :func:`medgen.plots.box_plot` with ``hue="contrast"``)."""
    table = PAPER_TABLE3 if posterior else PAPER_TABLE2
    pairs = rows[["method", "contrast"]].drop_duplicates().itertuples(index=False, name=None)
    return {(m, c): table[c][m][metric] for m, c in pairs if m in table.get(c, {}) and metric in table[c][m]}

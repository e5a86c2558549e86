"""Tidy rows of the MRI -> CT study: test items, Table 1 rows (:func:`quality_rows`), Dice rows
(:func:`dice_rows`) and the drivers the notebook runs (:func:`run_2d`, :func:`run_3d`,
:func:`run_registration`, :func:`run_ablation`).

Every driver finds its models with :func:`medgen.zoo.resolve`, translates with
:func:`medgen.predict.predict` (one generator seeded with ``Plan.seed`` per call, shared by
all its batches) and scores with :func:`medgen.score.score`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Any, Mapping, Sequence

import pandas as pd
import torch

import medgen.data  # noqa: F401 -- fills DATASETS
from medgen import zoo
from medgen.config import RunConfig
from medgen.experiments import spine_dice
from medgen.experiments.common import concat
from medgen.metrics.structure import SPINE_DISTANCE_PX, VIF_MIN_SIZE, spine_mask
from medgen.predict import predict, stack
from medgen.registry import DATASETS, lookup
from medgen.score import ROW_COLUMNS, score

from .paper import (FILL, LABELS, MEASURER_NOTE, QUALITY_METRICS, REAL_CT, REGISTRATION_MODEL, REGISTRATIONS,
                    SLICEWISE_LABEL)
from .plan import Plan, ablation_settings, ddpm_options, model_config, registration_config

__all__ = ["eval_items", "volume_slices", "segment", "quality_metrics", "quality_rows", "dice_rows", "dice_frame",
           "alignment_table", "Run2D", "run_2d", "run_3d", "run_registration", "run_ablation"]

Root = str | os.PathLike | None
QUALITY_COLUMNS = (*ROW_COLUMNS, "method", "contrast", "dims", "setting")


# --------------------------------------------------------------------------------------
# Test data
# --------------------------------------------------------------------------------------
def eval_items(cfg: RunConfig, n: int) -> list[dict[str, Any]]:
    """The first ``n`` test items of ``cfg``'s data (the paired / volume test split) with the spine mask.

    Each item gets ``mask`` ``[1, *S]`` = :func:`spine_mask` (10 px) of its ``labels_mri``, which
    :func:`quality_rows` applies with ``mask_mode="zero"``. Unpaired configs use the ``paired``
    test split (the unpaired kind's test split is paired too).
    """
    data = replace(cfg.data, n_test=n, dataset="paired" if cfg.data.dataset == "unpaired" else cfg.data.dataset)
    ds = lookup(DATASETS, data.dataset)(data, "test")
    items = [dict(ds[i]) for i in range(len(ds))]
    for item in items:
        item["mask"] = spine_mask(item["labels_mri"][None], SPINE_DISTANCE_PX)[0]
    return items


def volume_slices(items: Sequence[Mapping[str, Any]], preds: torch.Tensor | None = None) -> list[dict[str, Any]]:
    """The sagittal slices ``[1, H, W]`` of volume items ``[1, D, H, W]`` that contain spine labels.

    Slice items keep the volume's ``patient_id`` (a volume is one subject) and get ``slice_index``;
    ``source`` / ``target`` are the MRI / CT slices, ``pred`` the slice of ``preds`` ``[n, 1, D, H, W]``
    when given. ``mask`` is the 2D spine mask of the slice's ``labels_mri``.
    """
    out = []
    for i, item in enumerate(items):
        labels = item["labels_mri"]
        for s in range(labels.shape[0]):
            if not bool((labels[s] != 0).any()):
                continue
            sl = {"source": item["source"][:, s], "target": item["target"][:, s], "patient_id": item["patient_id"],
                  "slice_index": s, "labels_mri": labels[s], "mask": spine_mask(labels[s][None], SPINE_DISTANCE_PX)[0]}
            if preds is not None:
                sl["pred"] = preds[i][:, s]
            out.append(sl)
    return out


def segment(segmenter: Any, ct: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
    """Label maps ``LongTensor [n, *S]`` of CTs ``[n, 1, *S]`` (model range) by the CT segmenter."""
    return torch.cat([segmenter.segment(ct[s:s + batch_size]).cpu() for s in range(0, len(ct), batch_size)])


# --------------------------------------------------------------------------------------
# Rows
# --------------------------------------------------------------------------------------
def quality_metrics(size: int) -> tuple[str, ...]:
    """:data:`QUALITY_METRICS` computable at image side ``size`` (VIFp needs >= 41 px)."""
    return tuple(m for m in QUALITY_METRICS if m != "vifp" or size >= VIF_MIN_SIZE)


def quality_rows(preds: torch.Tensor, items: Sequence[Mapping[str, Any]], *, method: str, contrast: str,
                 dims: str = "2D", metrics: Sequence[str] | None = None, setting: str = "") -> pd.DataFrame:
    """Table 1 rows of translations ``preds [n, 1, *S]`` against ``items``' targets.

    2D items are scored as they are; volume items ``[1, D, H, W]`` on their sagittal slices with
    spine labels (:func:`volume_slices`). The spine mask zeroes (``fill`` :data:`FILL`) the pixels
    > 10 px from the spine in both images (:func:`medgen.score.score`, ``mask_mode="zero"``).
    Returns score's rows plus ``method, contrast, dims, setting``.
    """
    if preds.shape[0] != len(items):
        raise ValueError(f"quality_rows: {preds.shape[0]} translations for {len(items)} items")
    if preds.ndim == 5:
        scored = volume_slices(items, preds)
        pred = stack(scored, "pred")
    else:
        scored, pred = list(items), preds
    target = stack(scored, "target")
    rows = score(pred, target, tuple(metrics) if metrics else quality_metrics(int(target.shape[-1])),
                 data_range=2.0, mask=stack(scored, "mask"), mask_mode="zero", fill=FILL,
                 patient_ids=[str(it["patient_id"]) for it in scored], batch_size=16)
    return rows.assign(method=method, contrast=contrast, dims=dims, setting=setting)


def dice_rows(pred_labels: torch.Tensor, items: Sequence[Mapping[str, Any]], *, method: str, contrast: str,
              setting: str = "2D") -> pd.DataFrame:
    """Tables 2 / 3 rows: Dice of segmented translations ``pred_labels [n, *S]`` vs ``labels_mri``.

    Only ``complete`` vertebrae are scored. Tidy rows ``method, contrast, setting, patient_id,
    metric, value`` with metrics :data:`DICE_METRICS`; per-vertebra rows have ``patient_id``
    ``"<volume>/v<k>"`` (each vertebra one unit: the paper's pooled per-vertebra mean).
    ``attrs["measurer"]`` = :data:`MEASURER_NOTE`.
    """
    ref = torch.stack([it["labels_mri"] for it in items])
    include = torch.stack([torch.as_tensor(it["complete"], dtype=torch.bool) for it in items])
    table = spine_dice.dice_tables(pred_labels, ref, [str(it["patient_id"]) for it in items], include=include)
    return dice_frame(table, method=method, contrast=contrast, setting=setting)


def dice_frame(table: pd.DataFrame, *, method: str, contrast: str, setting: str) -> pd.DataFrame:
    """Tidy Dice rows from a :func:`spine_dice.dice_tables` result (see :func:`dice_rows`)."""
    vol, vert = table[table.level == "volume"], table[table.level == "vertebra"]
    parts = []
    for metric, frame, column, ids in (
            ("dice_volume", vol, "bone", vol.patient_id),
            ("dice_vertebra", vert, "bone", vert.patient_id + "/v" + vert.vertebra.astype(str)),
            ("dice_posterior_volume", vol, "posterior", vol.patient_id),
            ("dice_posterior_vertebra", vert, "posterior", vert.patient_id + "/v" + vert.vertebra.astype(str))):
        parts.append(pd.DataFrame({"patient_id": ids.to_numpy(), "metric": metric,
                                   "value": frame[column].to_numpy(dtype=float)}))
    out = pd.concat(parts, ignore_index=True).assign(method=method, contrast=contrast, setting=setting)
    out.attrs["measurer"] = MEASURER_NOTE
    return out


def alignment_table(cfg: RunConfig, n: int) -> pd.DataFrame:
    """Label overlap and landmark distances of the first ``n`` training volumes of ``cfg`` (3D),
    unregistered and registered with one / two landmarks per vertebra.

    One row per (registration, subject) with :func:`medgen.registration.alignment_scores`'s
    columns (``dice_bone``, ``dice_posterior``, ``body_mm``, ``spinous_mm``, ``axial_deg`` ...)
    and ``residual_mm`` (mean landmark residual of the fit; NaN for none).
    """
    from medgen.registration import alignment_scores, register_record

    data = replace(cfg.data, dataset="volume", registration="", n_train=max(n, 1))
    ds = lookup(DATASETS, "volume")(data, "train")
    records = ds.backend.records(list(range(min(n, len(ds.backend)))))
    rows = []
    for k, record in enumerate(records):
        for label, mode in REGISTRATIONS.items():
            moved = register_record(record, mode) if mode else record
            scores = alignment_scores(moved)
            rows.append({"registration": label, "patient_id": str(k), **scores,
                         "residual_mm": float(moved.get("registration_residual_mm", float("nan")))})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------
# Drivers: what the notebook runs (resolve, predict, score)
# --------------------------------------------------------------------------------------
@dataclass
class Run2D:
    """The 2D experiment of one contrast: test items, translations, Table 1 and Dice rows."""

    contrast: str
    items: list[dict[str, Any]]
    preds: dict[str, torch.Tensor]  # method label -> [n, 1, H, W]
    quality: pd.DataFrame
    dice: pd.DataFrame


def run_2d(p: Plan, contrast: str, segmenter: Any, *, root: Root = None, progress: bool = True) -> Run2D:
    """Every 2D method of the plan for ``contrast``: resolve, translate the 2D test split with the
    preset's inference settings (DDIM t=20, eta=1, w=0), score Table 1 and segment for Tables 2-3.
    The registered real CT is segmented too (:data:`REAL_CT`, the ceiling)."""
    items = eval_items(model_config(p, "ddim_image", contrast), p.n_test)
    dice = [dice_rows(segment(segmenter, stack(items, "target")), items, method=REAL_CT, contrast=contrast,
                      setting="2D")]
    quality, preds = [], {}
    for model_name in p.methods_2d:
        label = LABELS[model_name]
        model = zoo.resolve(model_config(p, model_name, contrast), root=root, progress=progress, label=label)
        preds[label] = predict(model, items, seed=p.seed).outputs
        quality.append(quality_rows(preds[label], items, method=label, contrast=contrast))
        dice.append(dice_rows(segment(segmenter, preds[label]), items, method=label, contrast=contrast))
    return Run2D(contrast, items, preds, concat(quality, QUALITY_COLUMNS), pd.concat(dice, ignore_index=True))


def run_registration(p: Plan, segmenter_3d: Any, volumes: Sequence[Mapping[str, Any]], *, root: Root = None,
                     progress: bool = True) -> tuple[pd.DataFrame, dict[str, torch.Tensor]]:
    """The registration comparison: :data:`REGISTRATION_MODEL` trained on none / one / two-landmark
    registered slices, each translating every sagittal slice of the test ``volumes`` (T2w).

    Returns Dice rows (with a ``registration`` column; ``setting`` "2D slice-wise") and the
    slice-wise translations ``{registration: [n, 1, D, H, W]}``.
    """
    rows, preds = [], {}
    label = LABELS[REGISTRATION_MODEL]
    for reg in REGISTRATIONS:
        model = zoo.resolve(registration_config(p, reg), root=root, progress=progress,
                            label=f"{label} ({reg} registration)")
        preds[reg] = predict(model, volumes, seed=p.seed, slicewise=True).outputs
        d = dice_rows(segment(segmenter_3d, preds[reg]), volumes, method=f"{label} ({reg})", contrast="t2w",
                      setting="2D slice-wise")
        rows.append(d.assign(registration=reg))
    return pd.concat(rows, ignore_index=True), preds


def run_3d(p: Plan, segmenter_3d: Any, volumes: Sequence[Mapping[str, Any]], slicewise: torch.Tensor | None = None,
           *, root: Root = None, progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, torch.Tensor]]:
    """The 3D models (T2w) on the test ``volumes``: Table 1 rows on their sagittal slices and Dice rows
    (setting "3D"); ``slicewise`` (the two-landmark 2D model's translations of the same volumes) adds
    the 2D comparison rows (setting "2D slice-wise") and the real CT its ceiling row."""
    quality, dice, preds = [], [], {}
    dice.append(dice_rows(segment(segmenter_3d, stack(volumes, "target"), 4), volumes, method=REAL_CT,
                          contrast="t2w", setting="3D"))
    if slicewise is not None:
        label = SLICEWISE_LABEL.format(label=LABELS[REGISTRATION_MODEL])
        preds[label] = slicewise
        quality.append(quality_rows(slicewise, volumes, method=label, contrast="t2w", dims="3D"))
        dice.append(dice_rows(segment(segmenter_3d, slicewise, 4), volumes, method=label, contrast="t2w",
                              setting="2D slice-wise"))
    for model_name in p.methods_3d:
        label = LABELS[model_name]
        model = zoo.resolve(model_config(p, model_name, "t2w"), root=root, progress=progress, label=label)
        preds[label] = predict(model, volumes, seed=p.seed, batch_size=4).outputs
        quality.append(quality_rows(preds[label], volumes, method=label, contrast="t2w", dims="3D"))
        dice.append(dice_rows(segment(segmenter_3d, preds[label], 4), volumes, method=label, contrast="t2w",
                              setting="3D"))
    return concat(quality), pd.concat(dice, ignore_index=True), preds


def run_ablation(p: Plan, run: Run2D, segmenter: Any, *, root: Root = None, progress: bool = True) -> pd.DataFrame:
    """The DDIM inference ablation and DDPM (all T steps, first ``p.n_ddpm`` subjects) of both DDIM
    modes on ``run``'s test items: Table 1 metrics and Dice per volume, ``method`` = "<mode> <setting>"."""
    rows = []
    for model_name in ("ddim_noise", "ddim_image"):
        if model_name not in p.methods_2d:
            continue
        cfg = model_config(p, model_name, run.contrast)
        model = zoo.resolve(cfg, root=root, progress=progress, label=LABELS[model_name])
        points = [(f"{LABELS[model_name]} {label}", opts, run.items) for label, opts in ablation_settings(p)]
        points.append((f"{LABELS[model_name]} DDPM", ddpm_options(cfg), run.items[:p.n_ddpm]))
        for name, opts, items in points:
            pred = predict(model, items, seed=p.seed, **opts).outputs
            rows.append(quality_rows(pred, items, method=name, contrast=run.contrast))
            d = dice_rows(segment(segmenter, pred), items, method=name, contrast=run.contrast)
            rows.append(d[d["metric"] == "dice_volume"])
    return concat(rows)

"""Dice tables of the spine MRI->CT paper (Tables 2 and 3) from label maps: pure functions for the notebook.

The paper segments every synthesized CT with a CT segmentation algorithm and reports the
"average Dice score per volume and per vertebra" (Table 2) and the same with the vertebral
body removed, i.e. of the posterior elements (Table 3). Here the label maps come from
medgen's CT segmenter (:mod:`medgen.methods.segmenter`, a stand-in for the paper's public
algorithm -- :data:`MEASURER_NOTE`, which every table carries in ``DataFrame.attrs["measurer"]``)
and the reference is the phantom's label map in the same frame: ``labels_mri`` (or the
registered ``labels_ct``) for a synthesized CT, which lives in the MRI frame; the registered
``labels_ct`` for the real CT of :func:`ceiling`.

Label maps hold ``10 * (v + 1) + sub`` (vertebra ``v = 0..9``, subregion ``sub`` 1 body, 2 arch,
3 spinous process; 0 background), as ``spine_sagittal``'s ``labels_ct`` / ``labels_mri``.

Definitions (all Dice values by :mod:`medgen.metrics.segmentation`)
------------------------------------------------------------------
* A *volume* is one patient: items (2D slices or 3D volumes) with the same patient id are
  concatenated along their first axis, so Dice is taken over the whole volume, as the paper
  does for its 2D models (slices stacked back into the series). A 2D phantom subject is one
  sagittal slice, i.e. a one-slice "volume".
* ``bone`` -- per volume: :func:`~medgen.metrics.segmentation.dice_foreground` of all bone labels
  together (label > 0 vs 0), the paper's "per vol.".
* per vertebra: :func:`~medgen.metrics.segmentation.dice_per_label` of the vertebra maps
  ``label // 10`` (the three subregions of vertebra ``v`` together); a vertebra absent from both
  maps of a volume gives no row (NaN), one only in the prediction gives 0. The paper's "per
  vert." is the pooled mean over all (volume, vertebra) rows,
  :func:`~medgen.metrics.segmentation.pooled_mean` (:func:`summarize`); ``bone_vertebra_mean``
  is the mean over the vertebrae present in one volume (per-volume values for paired tests).
* ``posterior`` -- the same on the posterior elements only (Table 3, "vertebral body removed"):
  maps with every body pixel (``sub == 1``) set to 0 in both, i.e. arch + spinous process.
  In 2D mid-sagittal slices the arch is nearly absent (the slice passes through the canal), so
  there it is essentially the spinous process.
* ``include`` (optional, ``[n, 10]`` bool per item): vertebrae to score; the others are set to 0
  in both maps before any Dice -- the paper excluded "partially visualized vertebrae". For
  phantoms pass the item meta ``complete`` (:func:`ceiling` does so by default).

Output of :func:`dice_tables`: a long DataFrame, one row per volume (``level="volume"``,
``vertebra`` = -1) and one per (volume, vertebra) present (``level="vertebra"``, ``vertebra`` =
``v``), columns ``patient_id, level, vertebra, bone, posterior, bone_vertebra_mean,
posterior_vertebra_mean`` (the last two only on volume rows, NaN elsewhere).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from medgen.data.batch import collate
from medgen.methods.segmenter import LABEL_KEY, MEASURER_NOTE, N_VERT
from medgen.metrics.segmentation import dice_foreground, dice_per_label, pooled_mean

__all__ = ["dice_tables", "summarize", "ceiling", "vertebra_map", "posterior_map", "COLUMNS", "MEASURER_NOTE"]

COLUMNS = ("patient_id", "level", "vertebra", "bone", "posterior", "bone_vertebra_mean", "posterior_vertebra_mean")


def vertebra_map(labels: torch.Tensor) -> torch.Tensor:
    """Vertebra map ``[*]``: ``v + 1`` on every pixel of vertebra ``v`` (all subregions), 0 elsewhere."""
    return torch.div(labels, 10, rounding_mode="floor")


def posterior_map(labels: torch.Tensor) -> torch.Tensor:
    """Vertebra map of the posterior elements only: body pixels (``sub == 1``) set to 0."""
    return torch.where(labels % 10 == 1, torch.zeros_like(labels), vertebra_map(labels))


def _as_long(x: torch.Tensor | np.ndarray, name: str) -> torch.Tensor:
    t = torch.as_tensor(x)
    if t.is_floating_point():  # a translate() output holds integer label values as floats
        if not torch.equal(t, t.round()):
            raise ValueError(f"dice_tables: {name} holds non-integer values (expected label values)")
    return t.long().cpu()


def _exclude(labels: torch.Tensor, include: torch.Tensor | None) -> torch.Tensor:
    """``labels`` ``[n, *S]`` with vertebrae not in ``include`` ``[n, 10]`` set to 0."""
    if include is None:
        return labels
    v = vertebra_map(labels)  # 1..10, 0 background
    keep = torch.cat([torch.zeros_like(include[:, :1]), include], 1)  # [n, 11]: index 0 = background
    mask = torch.gather(keep, 1, v.flatten(1)).view_as(labels)
    return torch.where(mask, labels, torch.zeros_like(labels))


def _groups(patient_ids: Sequence[str]) -> dict[str, list[int]]:
    """Patient id -> item indices, in order of first appearance."""
    out: dict[str, list[int]] = {}
    for i, pid in enumerate(patient_ids):
        out.setdefault(str(pid), []).append(i)
    return out


def _volume(labels: torch.Tensor, idx: list[int]) -> torch.Tensor:
    """Items ``idx`` of ``labels`` ``[n, *S]`` as one volume ``[1, sum, ...]``: concatenated along axis 0
    (2D items ``[H, W]`` become slices of ``[1, k, H, W]``, 3D items ``[D, H, W]`` are stacked in depth)."""
    items = labels[idx]
    if labels.ndim == 3:  # 2D items: k slices
        return items.unsqueeze(0) if len(idx) > 1 else items
    return torch.cat(list(items), 0).unsqueeze(0)


def _scores(pred: torch.Tensor, ref: torch.Tensor) -> tuple[float, dict[int, float]]:
    """Dice of the union and per vertebra (``v -> dice``, present ones) of vertebra maps ``[1, *S]``."""
    if not bool((pred > 0).any() or (ref > 0).any()):
        return float("nan"), {}
    union = float(dice_foreground(pred, ref)[0])
    labels = sorted(set(torch.unique(torch.cat([pred.flatten(), ref.flatten()])).tolist()) - {0})
    per = dice_per_label(pred, ref, labels)[0]
    return union, {int(lab) - 1: float(d) for lab, d in zip(labels, per) if not np.isnan(float(d))}


def dice_tables(pred_labels: torch.Tensor | np.ndarray, ref_labels: torch.Tensor | np.ndarray,
                patient_ids: Sequence[str], *, include: torch.Tensor | np.ndarray | None = None) -> pd.DataFrame:
    """Per-volume and per-vertebra Dice of bone and posterior elements (see the module docstring).

    ``pred_labels`` / ``ref_labels``: label maps ``[n, H, W]`` or ``[n, D, H, W]`` (or with a channel
    axis of 1, e.g. :meth:`Segmenter.translate` output ``[n, 1, *S]``); ``patient_ids``: ``n`` ids
    (items of one id form one volume); ``include``: ``[n, 10]`` bool, vertebrae to score.
    Returns the long DataFrame of :data:`COLUMNS`, with ``attrs["measurer"] = MEASURER_NOTE``.
    """
    pred, ref = _as_long(pred_labels, "pred_labels"), _as_long(ref_labels, "ref_labels")
    pred = pred[:, 0] if pred.ndim == ref.ndim + 1 and pred.shape[1] == 1 else pred
    ref = ref[:, 0] if ref.ndim == pred.ndim + 1 and ref.shape[1] == 1 else ref
    if pred.shape != ref.shape or pred.ndim not in (3, 4):
        raise ValueError(f"dice_tables: pred {tuple(pred.shape)} and ref {tuple(ref.shape)} must be the same "
                         "[n, H, W] or [n, D, H, W]")
    if len(patient_ids) != len(pred):
        raise ValueError(f"dice_tables: {len(patient_ids)} patient ids for {len(pred)} label maps")
    if include is not None:
        include = torch.as_tensor(include, dtype=torch.bool).cpu()
        if tuple(include.shape) != (len(pred), N_VERT):
            raise ValueError(f"dice_tables: include {tuple(include.shape)} must be [n, {N_VERT}] = "
                             f"[{len(pred)}, {N_VERT}]")
        pred, ref = _exclude(pred, include), _exclude(ref, include)
    rows: list[dict[str, Any]] = []
    for pid, idx in _groups(patient_ids).items():
        p, r = _volume(pred, idx), _volume(ref, idx)
        bone, bone_v = _scores(vertebra_map(p), vertebra_map(r))
        post, post_v = _scores(posterior_map(p), posterior_map(r))
        rows.append({"patient_id": pid, "level": "volume", "vertebra": -1, "bone": bone, "posterior": post,
                     "bone_vertebra_mean": _mean(bone_v.values()), "posterior_vertebra_mean": _mean(post_v.values())})
        for v in sorted(set(bone_v) | set(post_v)):
            rows.append({"patient_id": pid, "level": "vertebra", "vertebra": v, "bone": bone_v.get(v, float("nan")),
                         "posterior": post_v.get(v, float("nan")), "bone_vertebra_mean": float("nan"),
                         "posterior_vertebra_mean": float("nan")})
    table = pd.DataFrame(rows, columns=list(COLUMNS)).astype({"vertebra": int})
    table.attrs["measurer"] = MEASURER_NOTE
    return table


def _mean(values: Any) -> float:
    v = list(values)
    return float(np.mean(v)) if v else float("nan")


def summarize(table: pd.DataFrame) -> pd.Series:
    """The paper's Table 2 / 3 numbers of one :func:`dice_tables` result.

    ``bone_per_volume`` / ``posterior_per_volume``: mean over volumes (NaN-skipping);
    ``bone_per_vertebra`` / ``posterior_per_vertebra``: pooled mean over every (volume, vertebra)
    row (:func:`~medgen.metrics.segmentation.pooled_mean`); ``n_volumes``, ``n_vertebrae``.
    ``attrs["measurer"]`` says which segmenter produced the Dice.
    """
    vol, vert = table[table.level == "volume"], table[table.level == "vertebra"]
    out = pd.Series({
        "bone_per_volume": float(np.nanmean(vol.bone)) if vol.bone.notna().any() else float("nan"),
        "bone_per_vertebra": pooled_mean(torch.tensor(vert.bone.to_numpy(dtype=float))),
        "posterior_per_volume": float(np.nanmean(vol.posterior)) if vol.posterior.notna().any() else float("nan"),
        "posterior_per_vertebra": pooled_mean(torch.tensor(vert.posterior.to_numpy(dtype=float))),
        "n_volumes": float(len(vol)), "n_vertebrae": float(vert.bone.notna().sum()),
    })
    out.attrs["measurer"] = table.attrs.get("measurer", MEASURER_NOTE)
    return out


def ceiling(segmenter: Any, dataset: Any, *, batch_size: int = 16, complete_only: bool = True) -> pd.DataFrame:
    """The segmenter's Dice on the *real* CTs of ``dataset``: the ceiling for synthesized CTs.

    ``dataset``: items with ``source`` = CT ``[1, *S]`` (model range) and the reference label map in
    meta :data:`~medgen.methods.segmenter.LABEL_KEY` (``labels_ct``; registered onto the MRI frame
    together with the CT when ``data.registration`` is set), e.g. the segmenter's own test split
    ``DATASETS[cfg.data.dataset](cfg.data, "test")``. ``complete_only``: score only the vertebrae
    the item's meta ``complete`` marks (the paper leaves out partially visualised vertebrae;
    ignored when items have no ``complete``). Returns :func:`dice_tables` of all items.
    """
    preds, refs, ids, include = [], [], [], []
    for start in range(0, len(dataset), batch_size):
        batch = collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        preds.append(segmenter.segment(batch.source).cpu())
        refs.append(torch.stack(list(batch.meta[LABEL_KEY])))
        ids += list(batch.meta["patient_id"])
        if complete_only and "complete" in batch.meta:
            include.append(torch.stack(list(batch.meta["complete"])))
    inc = torch.cat(include) if complete_only and include else None
    return dice_tables(torch.cat(preds), torch.cat(refs), ids, include=inc)

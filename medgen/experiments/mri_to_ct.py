"""Notebook ``mri_to_ct``: the spine MRI -> CT paper (mri_to_ct_spine_ddim.txt) regenerated on phantoms.

What the notebook computes, and how each number is defined here
---------------------------------------------------------------
* **Table 1** (image quality): L1 (medgen's ``mae``), MSE, PSNR, SSIM, VIFp of the synthesized
  CT against the registered real CT, model range [-1, 1] (``data_range = 2``). The paper masks
  "pixels that were further than 10 pixels away from a segmented spine structure, setting them
  to zero": :func:`~medgen.metrics.structure.spine_mask` of the MRI-frame label map
  ``labels_mri`` (the frame the synthesized CT lives in), applied by
  :func:`medgen.evaluate.evaluate` with ``mask_mode="zero"`` and ``fill = 0`` -- our reading:
  the paper zeroes in its own image space, CT / 1000 HU, where 0 is water (0 HU), i.e. 0 in
  model range, not -1 (air). VIFp needs sides >= 41 px (four Gaussian scales,
  :func:`~medgen.metrics.structure.vifp`); at the 32 px of ``ci`` / ``smoke`` it is left out
  (``n/a``), from ``cpu`` (64 px) on it is computed.
  2D models are scored on the 2D test split (one sagittal phantom slice per subject). 3D
  models are scored **on the sagittal slices of their volumes** (every slice that contains a
  spine label; the 2D mask per slice; per-subject mean over the slices, then mean +- SD over
  volumes) -- the paper scores 256 x 256 sagittal crops of the test series.
* **Tables 2 and 3** (Dice, :mod:`medgen.experiments.spine_dice`): medgen's CT segmenter (a
  stand-in for the paper's public algorithm: :data:`MEASURER_NOTE`, printed with every Dice
  table) segments each synthesized CT; reference ``labels_mri``; only ``complete`` vertebrae
  (the paper left out partially visualised ones). ``dice_volume`` / ``dice_posterior_volume``:
  per volume; ``dice_vertebra`` / ``dice_posterior_vertebra``: per vertebra, every (volume,
  vertebra) pair one unit (``patient_id`` ``"<volume>/v<k>"``), so the table's mean is the
  paper's pooled mean and ``n`` counts vertebrae. 2D rows: one-slice volumes of the 2D test
  split, the 2D segmenter. 3D rows (T2w, as in the paper): test volumes, the 3D segmenter; the
  2D comparison on the same volumes translates every sagittal slice with a 2D model trained on
  ``volume_slices`` of the registered 3D training volumes (the paper's 2D training data) and
  stacks them (``2D slice-wise``).
* **Registration comparison** (paper "Influence of Rigid Registration", Figure 4): one 2D
  model (:data:`REGISTRATION_MODEL`) trained on the sagittal slices of 3D training volumes
  registered with none / one / two landmarks per vertebra (``volume_slices``, 3D registration
  before slicing -- the 1-vs-2-landmark effect is 3D, :mod:`medgen.registration`), each scored
  by the Dice of its slice-wise translations of the test volumes; plus the landmark residuals
  and label overlaps of the registered training volumes (:func:`alignment_table`).
* **DDIM inference ablation** (supplement, Table S.1): one parameter changed at a time from
  t = 20, eta = 1, w = 0 (:data:`ABLATION`); **DDPM vs DDIM**: the same trained network
  sampled with DDPM over all T training steps (:func:`ddpm_options`), on the first
  ``Plan.n_ddpm`` test subjects (fewer than the DDIM rows at small presets; the comparison
  pairs DDIM on the same subjects).
* **Paired tests** (:func:`paired_comparisons`): paired t-test (the paper's) and Wilcoxon across
  subjects, Holm-corrected within each family (:func:`medgen.metrics.stats.compare_paired`).
* **Findings** (:func:`findings`): the four claims of issue 5 with their numbers.

Per-preset work (:func:`plan`): ``ci`` only executes every code path (T2w, 4 test subjects,
the presets' 2-step trainings, a subset of ablation points); ``smoke`` trains shorter than the
``smoke`` presets (:data:`SMOKE_STEPS`, :data:`SMOKE_N_TRAIN`) so the whole notebook fits in
about half an hour on 2 shared CPU cores; ``cpu`` / ``paper`` use the presets unchanged (and
at ``cpu`` the shipped checkpoints under ``checkpoints/mri_to_ct/`` when their config equals
the preset's).

The paper's numbers (:data:`PAPER_TABLE1`, :data:`PAPER_TABLE2`, :data:`PAPER_TABLE3`,
:data:`PAPER_TABLE_S1`, :data:`PAPER_REGISTRATION`) are copied from the paper text and used
only as rows labelled "paper" in the tables.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from medgen.config import RunConfig, get_preset
from medgen.evaluate import evaluate
from medgen.experiments import spine_dice
from medgen.methods.segmenter import MEASURER_NOTE
from medgen.metrics.stats import StatsError, compare_paired
from medgen.metrics.structure import SPINE_DISTANCE_PX, VIF_MIN_SIZE, spine_mask
from medgen.presets.mri_to_ct import CONTRASTS, for_contrast, task
from medgen.registry import DATASETS, lookup
from medgen.tables import MetricTable, metric_table

__all__ = [
    "LABELS", "METHODS_2D", "METHODS_3D", "PAIRED", "UNPAIRED_CUT", "QUALITY_METRICS", "DICE_METRICS",
    "REGISTRATIONS", "REGISTRATION_MODEL", "SLICEWISE_LABEL", "REAL_CT", "SETTINGS", "ABLATION", "MEASURER_NOTE", "FILL",
    "PAPER_TABLE1", "PAPER_TABLE2", "PAPER_TABLE3", "PAPER_TABLE_S1", "PAPER_REGISTRATION", "FINDINGS",
    "Plan", "plan", "model_config", "registration_config", "segmenter_config", "load_model", "eval_items",
    "volume_slices", "translate_items", "translate_slicewise", "segment", "quality_rows", "dice_rows",
    "ablation_settings", "ddpm_options", "alignment_table", "quality_table", "dice_table", "ablation_table",
    "paired_comparisons", "standard_comparisons", "findings", "headline_metrics", "figure_columns", "ddpm_table",
    "box_paper", "registration_table", "Run2D", "run_2d", "run_3d", "run_registration", "run_ablation", "quality_metrics", "dice_frame",
]

# --------------------------------------------------------------------------------------
# Names
# --------------------------------------------------------------------------------------
LABELS: dict[str, str] = {  # preset model -> the paper's row name
    "cut_resnet": "CUT ResNet (unpaired)", "cut_sa_unet": "CUT SA-UNet (unpaired)",
    "pix2pix_unet": "Pix2Pix UNet", "pix2pix_sa_unet": "Pix2Pix SA-UNet", "syndiff": "SynDiff (unpaired)",
    "ddim_noise": "DDIM noise", "ddim_image": "DDIM image",
    "pix2pix_3d": "Pix2Pix 3D", "ddim_noise_3d": "DDIM 3D noise", "ddim_image_3d": "DDIM 3D image",
}
METHODS_2D = ("cut_resnet", "cut_sa_unet", "pix2pix_unet", "pix2pix_sa_unet", "syndiff", "ddim_noise", "ddim_image")
METHODS_3D = ("pix2pix_3d", "ddim_noise_3d", "ddim_image_3d")
PAIRED = ("pix2pix_unet", "pix2pix_sa_unet", "ddim_noise", "ddim_image")  # paired 2D methods (finding 1)
UNPAIRED_CUT = ("cut_resnet", "cut_sa_unet")
QUALITY_METRICS = ("mae", "mse", "psnr", "ssim", "vifp")  # mae = the paper's L1
DICE_METRICS = ("dice_volume", "dice_vertebra", "dice_posterior_volume", "dice_posterior_vertebra")
REGISTRATIONS = {"none": "", "one": "one", "two": "two"}  # label -> DataConfig.registration
REGISTRATION_MODEL = "pix2pix_unet"  # the 2D model of the registration comparison (deterministic, cheapest)
SLICEWISE_LABEL = "{label} 2D (slice-wise)"  # a 2D model translating the sagittal slices of a volume
REAL_CT = "real CT (segmenter ceiling)"  # Dice of the registered real CT: what a perfect translation reaches
SETTINGS = ("2D", "3D", "2D slice-wise")  # Dice rows: 2D test slices; 3D volumes; 2D model on the volumes' slices
FILL = 0.0  # value of the masked-out pixels: 0 in model range = 0 HU (the paper's "set to zero" in HU / 1000)
BASE_DDIM = {"sampler": "ddim", "steps": 20, "eta": 1.0, "guidance_scale": 0.0}  # the paper's 2D inference
ABLATION: tuple[tuple[str, dict[str, Any]], ...] = (  # one parameter changed at a time from BASE_DDIM
    ("t=20, eta=1, w=0", {}),
    ("t=10, eta=1, w=0", {"steps": 10}),
    ("t=50, eta=1, w=0", {"steps": 50}),
    ("t=20, eta=0, w=0", {"eta": 0.0}),
    ("t=20, eta=1, w=0.5", {"guidance_scale": 0.5}),
    ("t=20, eta=1, w=1", {"guidance_scale": 1.0}),
    ("t=20, eta=1, w=2", {"guidance_scale": 2.0}),
)
CI_ABLATION = ("t=20, eta=1, w=0", "t=10, eta=1, w=0", "t=20, eta=0, w=0", "t=20, eta=1, w=1")

# Smoke: shorter than the smoke presets (300 steps, 512 subjects) so the notebook fits ~30 min on 2 cores
# (measured from scratch on the shared machine: 150/50/50/150/150/100 steps took 18 min, 14 of them training).
SMOKE_STEPS = {"2d": 250, "gan_unpaired": 80, "3d": 100, "registration": 250, "segmenter": 200, "segmenter_3d": 150}
SMOKE_N_TRAIN = {"2d": 256, "3d": 32}  # training subjects (2D slices) / volumes

# --------------------------------------------------------------------------------------
# The paper's numbers (copied from the paper text; shown only as "paper" rows)
# --------------------------------------------------------------------------------------
_Q = ("mae", "mse", "psnr", "ssim", "vifp")


def _rows(table: Mapping[str, tuple[float, ...]], keys: Sequence[str]) -> dict[str, dict[str, float]]:
    return {label: dict(zip(keys, values)) for label, values in table.items()}


PAPER_TABLE1: dict[str, dict[str, dict[str, float]]] = {  # Table 1: {t1w | t2w | 3d: {row: {metric: value}}}
    "t1w": _rows({
        "CUT ResNet (unpaired)": (0.0224, 0.0050, 23.50, 0.835, 0.295),
        "CUT SA-UNet (unpaired)": (0.0295, 0.0083, 21.76, 0.819, 0.269),
        "Pix2Pix UNet": (0.0143, 0.0023, 27.37, 0.881, 0.392),
        "Pix2Pix SA-UNet": (0.0135, 0.0020, 27.82, 0.883, 0.394),
        "SynDiff (unpaired)": (0.0150, 0.0024, 27.01, 0.865, 0.373),
        "DDIM noise": (0.0136, 0.0021, 27.60, 0.879, 0.396),
        "DDIM image": (0.0131, 0.0020, 27.89, 0.887, 0.411)}, _Q),
    "t2w": _rows({
        "CUT ResNet (unpaired)": (0.0213, 0.0046, 23.72, 0.848, 0.312),
        "CUT SA-UNet (unpaired)": (0.0215, 0.0046, 23.75, 0.850, 0.311),
        "Pix2Pix UNet": (0.0142, 0.0023, 26.95, 0.895, 0.392),
        "Pix2Pix SA-UNet": (0.0142, 0.0023, 26.87, 0.890, 0.384),
        "SynDiff (unpaired)": (0.0140, 0.0022, 27.12, 0.885, 0.385),
        "DDIM noise": (0.0139, 0.0023, 26.92, 0.894, 0.391),
        "DDIM image": (0.0131, 0.0021, 27.36, 0.898, 0.401)}, _Q),
    "3d": _rows({  # from T2w
        "Pix2Pix 3D": (0.0188, 0.0039, 26.38, 0.889, 0.428),
        "DDIM 3D noise": (0.0194, 0.0041, 26.22, 0.894, 0.444),
        "DDIM 3D image": (0.0189, 0.0040, 26.22, 0.892, 0.434)}, _Q),
}
_D2 = ("dice_volume", "dice_vertebra")
PAPER_TABLE2: dict[str, dict[str, dict[str, float]]] = {  # Table 2: {t1w | t2w | mrsseg | mrsseg_ours: ...}
    "t1w": _rows({"CUT ResNet (unpaired)": (0.30, 0.28), "CUT SA-UNet (unpaired)": (0.09, 0.08),
                  "Pix2Pix UNet": (0.79, 0.80), "Pix2Pix SA-UNet": (0.82, 0.82), "SynDiff (unpaired)": (0.80, 0.81),
                  "DDIM noise": (0.78, 0.77), "DDIM image": (0.82, 0.83)}, _D2),
    "t2w": _rows({"CUT ResNet (unpaired)": (0.49, 0.46), "CUT SA-UNet (unpaired)": (0.26, 0.23),
                  "Pix2Pix UNet": (0.73, 0.69), "Pix2Pix SA-UNet": (0.75, 0.72), "SynDiff (unpaired)": (0.77, 0.74),
                  "DDIM noise": (0.72, 0.69), "DDIM image": (0.75, 0.72),
                  "Pix2Pix 3D": (0.79, 0.78), "DDIM 3D noise": (0.79, 0.78), "DDIM 3D image": (0.80, 0.79)}, _D2),
    "mrsseg": _rows({"CUT ResNet (unpaired)": (0.54, 0.49), "CUT SA-UNet (unpaired)": (0.02, 0.01),
                     "Pix2Pix UNet": (0.75, 0.74), "Pix2Pix SA-UNet": (0.77, 0.76), "SynDiff (unpaired)": (0.77, 0.76),
                     "DDIM noise": (0.75, 0.73), "DDIM image": (0.77, 0.76),
                     "Pix2Pix 3D": (0.78, 0.78), "DDIM 3D noise": (0.78, 0.78), "DDIM 3D image": (0.79, 0.78)}, _D2),
    "mrsseg_ours": _rows({"CUT ResNet (unpaired)": (0.54, 0.50), "CUT SA-UNet (unpaired)": (0.03, 0.02),
                          "Pix2Pix UNet": (0.76, 0.76), "Pix2Pix SA-UNet": (0.77, 0.77),
                          "SynDiff (unpaired)": (0.77, 0.76), "DDIM noise": (0.77, 0.78), "DDIM image": (0.78, 0.78),
                          "Pix2Pix 3D": (0.79, 0.80), "DDIM 3D noise": (0.80, 0.80),
                          "DDIM 3D image": (0.80, 0.80)}, _D2),
}
_D3 = ("dice_posterior_volume", "dice_posterior_vertebra")
PAPER_TABLE3: dict[str, dict[str, dict[str, float]]] = {  # Table 3 (posterior elements): {t1w | t2w | mrsseg_ours}
    "t1w": _rows({"CUT ResNet (unpaired)": (0.09, 0.09), "CUT SA-UNet (unpaired)": (0.01, 0.01),
                  "Pix2Pix UNet": (0.64, 0.62), "Pix2Pix SA-UNet": (0.68, 0.67), "SynDiff (unpaired)": (0.67, 0.67),
                  "DDIM noise": (0.61, 0.59), "DDIM image": (0.68, 0.67)}, _D3),
    "t2w": _rows({"CUT ResNet (unpaired)": (0.17, 0.15), "CUT SA-UNet (unpaired)": (0.07, 0.05),
                  "Pix2Pix UNet": (0.55, 0.50), "Pix2Pix SA-UNet": (0.59, 0.54), "SynDiff (unpaired)": (0.63, 0.58),
                  "DDIM noise": (0.50, 0.46), "DDIM image": (0.58, 0.53),
                  "Pix2Pix 3D": (0.69, 0.67), "DDIM 3D noise": (0.70, 0.68), "DDIM 3D image": (0.70, 0.68)}, _D3),
    "mrsseg_ours": _rows({"CUT ResNet (unpaired)": (0.16, 0.13), "CUT SA-UNet (unpaired)": (0.00, 0.00),
                          "Pix2Pix UNet": (0.56, 0.55), "Pix2Pix SA-UNet": (0.58, 0.56),
                          "SynDiff (unpaired)": (0.58, 0.57), "DDIM noise": (0.57, 0.56), "DDIM image": (0.58, 0.57),
                          "Pix2Pix 3D": (0.59, 0.58), "DDIM 3D noise": (0.60, 0.60),
                          "DDIM 3D image": (0.61, 0.60)}, _D3),
}
PAPER_TABLE_S1: dict[str, dict[str, dict[str, float]]] = {  # supplement Table S.1 (ablation, DDPM), per contrast
    "t1w": _rows({
        "DDIM noise t=10, eta=1, w=0": (0.0135, 0.0021, 27.64, 0.877, 0.395),
        "DDIM noise t=20, eta=0, w=0": (0.0139, 0.0022, 27.48, 0.875, 0.388),
        "DDIM noise t=20, eta=1, w=0": (0.0136, 0.0021, 27.60, 0.879, 0.396),
        "DDIM noise t=20, eta=1, w=1": (0.0140, 0.0023, 27.33, 0.880, 0.394),
        "DDIM noise t=20, eta=1, w=2": (0.0144, 0.0024, 27.02, 0.878, 0.388),
        "DDIM noise t=50, eta=1, w=0": (0.0139, 0.0022, 27.48, 0.880, 0.395),
        "DDIM noise DDPM": (0.0146, 0.0023, 27.18, 0.873, 0.381),
        "DDIM image t=10, eta=1, w=0": (0.0130, 0.0020, 28.00, 0.887, 0.411),
        "DDIM image t=20, eta=0, w=0": (0.0130, 0.0020, 27.95, 0.889, 0.415),
        "DDIM image t=20, eta=1, w=0": (0.0131, 0.0020, 27.89, 0.887, 0.411),
        "DDIM image t=20, eta=1, w=1": (0.0134, 0.0021, 27.65, 0.887, 0.408),
        "DDIM image t=20, eta=1, w=2": (0.0145, 0.0025, 26.88, 0.885, 0.398),
        "DDIM image t=50, eta=1, w=0": (0.0136, 0.0022, 27.57, 0.885, 0.407)}, _Q),
    "t2w": _rows({
        "DDIM noise t=10, eta=1, w=0": (0.0145, 0.0026, 26.49, 0.891, 0.387),
        "DDIM noise t=20, eta=0, w=0": (0.0142, 0.0024, 26.81, 0.888, 0.382),
        "DDIM noise t=20, eta=1, w=0": (0.0139, 0.0023, 26.92, 0.894, 0.391),
        "DDIM noise t=20, eta=1, w=1": (0.0140, 0.0023, 26.81, 0.894, 0.386),
        "DDIM noise t=20, eta=1, w=2": (0.0144, 0.0024, 26.59, 0.891, 0.379),
        "DDIM noise t=50, eta=1, w=0": (0.0138, 0.0022, 26.99, 0.894, 0.389),
        "DDIM noise DDPM": (0.0141, 0.0023, 26.87, 0.890, 0.381),
        "DDIM image t=10, eta=1, w=0": (0.0131, 0.0020, 27.39, 0.898, 0.401),
        "DDIM image t=20, eta=0, w=0": (0.0130, 0.0020, 27.41, 0.900, 0.404),
        "DDIM image t=20, eta=1, w=0": (0.0131, 0.0021, 27.36, 0.898, 0.401),
        "DDIM image t=20, eta=1, w=1": (0.0133, 0.0021, 27.27, 0.897, 0.398),
        "DDIM image t=20, eta=1, w=2": (0.0139, 0.0023, 26.89, 0.894, 0.387),
        "DDIM image t=50, eta=1, w=0": (0.0132, 0.0021, 27.31, 0.898, 0.401)}, _Q),
}
# Results "Influence of Rigid Registration": Dice (T2w) of models trained on one- vs two-landmark data;
# SynDiff without registration 0.75 (the paper gives no one-landmark Pix2Pix UNet / none values otherwise).
PAPER_REGISTRATION: dict[str, dict[str, float]] = {
    "Pix2Pix": {"one": 0.68, "two": 0.73}, "SynDiff": {"none": 0.75, "one": 0.74, "two": 0.77},
    "DDIM noise": {"one": 0.55, "two": 0.72}, "DDIM image": {"one": 0.70, "two": 0.75},
}
FINDINGS = ("paired_methods_beat_cut_dice", "two_landmarks_beat_one", "ddim_image_ge_noise_psnr",
            "threed_ge_twod_posterior_dice")


# --------------------------------------------------------------------------------------
# What runs at which preset
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Plan:
    """The work of one notebook run (:func:`plan`)."""

    preset: str
    contrasts: tuple[str, ...]  # MRI inputs of the 2D experiments ("t1w", "t2w")
    methods_2d: tuple[str, ...]
    methods_3d: tuple[str, ...]  # trained on T2w only, as in the paper
    n_test: int  # 2D test subjects
    n_test_3d: int  # test volumes (3D rows, registration comparison, slice-wise 2D)
    n_ddpm: int  # test subjects of the DDPM-vs-DDIM comparison
    ablation: tuple[str, ...]  # labels of ABLATION points
    ablation_contrasts: tuple[str, ...]
    steps: Mapping[str, int] = field(default_factory=dict)  # training steps per kind (empty: the presets')
    n_train: Mapping[str, int] = field(default_factory=dict)  # training subjects per kind (empty: the presets')
    seed: int = 0
    one_thread: bool = False  # train with one torch thread (ci / smoke on the shared 2-core machine)


def plan(preset: str, *, contrast: str = "both", methods: Sequence[str] | None = None, n_test: int | None = None,
         seed: int = 0) -> Plan:
    """The per-preset work: which contrasts, models, test sizes, ablation points and training lengths.

    ``contrast``: ``"t1w"``, ``"t2w"`` or ``"both"`` (``ci`` runs T2w only whatever is asked:
    it only executes the code paths); ``methods``: preset model names (default all 2D and 3D
    ones); ``n_test``: 2D test subjects (default per preset; the 3D volumes are capped by it).
    """
    if contrast not in (*CONTRASTS, "both"):
        raise ValueError(f"unknown contrast '{contrast}' (choose from t1w, t2w, both)")
    chosen = tuple(methods) if methods else METHODS_2D + METHODS_3D
    unknown = [m for m in chosen if m not in LABELS]
    if unknown:
        raise ValueError(f"unknown mri_to_ct method '{unknown[0]}' (choose from {', '.join(LABELS)})")
    contrasts = CONTRASTS if contrast == "both" else (contrast,)
    defaults = {"ci": (4, 3, 2), "smoke": (16, 8, 6), "cpu": (32, 16, 8), "paper": (128, 32, 16)}
    n2, n3, nd = defaults.get(preset, defaults["smoke"])
    if n_test is not None:
        n2, n3, nd = int(n_test), min(n3, int(n_test)), min(nd, int(n_test))
    steps: dict[str, int] = dict(SMOKE_STEPS) if preset == "smoke" else {}
    n_train: dict[str, int] = dict(SMOKE_N_TRAIN) if preset == "smoke" else {}
    if preset == "ci":
        contrasts = ("t2w",)
    ablation = CI_ABLATION if preset == "ci" else tuple(label for label, _ in ABLATION)
    return Plan(preset=preset, contrasts=contrasts, methods_2d=tuple(m for m in chosen if m in METHODS_2D),
                methods_3d=tuple(m for m in chosen if m in METHODS_3D), n_test=n2, n_test_3d=n3, n_ddpm=nd,
                ablation=ablation, ablation_contrasts=contrasts, steps=steps, n_train=n_train, seed=seed,
                one_thread=preset in ("ci", "smoke"))


def _kind(model: str) -> str:
    if model in METHODS_3D:
        return "3d"
    return "gan_unpaired" if model in UNPAIRED_CUT or model == "syndiff" else "2d"


def _shorten(cfg: RunConfig, steps: int | None, n_train: int | None, one_thread: bool = False) -> RunConfig:
    """``cfg`` with fewer training steps / subjects (warm-up and logging kept inside the run) and, with
    ``one_thread``, one torch thread: on the shared 2-core machine two threads per training process
    thrash against the other processes (measured 2-10x slower per step at ``ci`` / ``smoke``)."""
    if steps is not None:
        cfg = replace(cfg, train=replace(cfg.train, steps=steps, warmup_steps=min(cfg.train.warmup_steps, steps // 10),
                                         log_every=min(cfg.train.log_every, max(1, steps // 10))))
    if n_train is not None:
        cfg = replace(cfg, data=replace(cfg.data, n_train=n_train))
    if one_thread:
        cfg = replace(cfg, train=replace(cfg.train, num_threads=1))
    return cfg


def model_config(p: Plan, model: str, contrast: str = "t2w") -> RunConfig:
    """The preset config of ``model`` for ``contrast`` with the plan's seed, steps and subjects."""
    cfg = for_contrast(get_preset(p.preset, task(model)), contrast)
    kind = _kind(model)
    cfg = _shorten(cfg, p.steps.get(kind), p.n_train.get("3d" if kind == "3d" else "2d"), p.one_thread)
    return replace(cfg, seed=p.seed)


def registration_config(p: Plan, registration: str, model: str = REGISTRATION_MODEL) -> RunConfig:
    """2D ``model`` (T2w) trained on ``volume_slices`` of the 3D training volumes registered with
    ``registration`` (``none`` / ``one`` / ``two``), at the 3D presets' size, depth and volume count."""
    if registration not in REGISTRATIONS:
        raise ValueError(f"unknown registration '{registration}' (choose from {', '.join(REGISTRATIONS)})")
    cfg = model_config(p, model, "t2w")
    vol = get_preset(p.preset, task("ddim_image_3d")).data
    n_volumes = p.n_train.get("3d", vol.n_train)
    data = replace(cfg.data, dataset="volume_slices", image_size=vol.image_size, depth=vol.depth,
                   n_train=n_volumes, n_test=vol.n_test, registration=REGISTRATIONS[registration],
                   augment="mri_jitter")
    cfg = replace(cfg, data=data)
    return _shorten(cfg, p.steps.get("registration"), None, p.one_thread)


def segmenter_config(p: Plan, volume: bool = False) -> RunConfig:
    """The 2D (``volume=False``) or 3D CT segmenter of the preset, with the plan's steps."""
    cfg = get_preset(p.preset, task("segmenter_3d" if volume else "segmenter"))
    return replace(_shorten(cfg, p.steps.get("segmenter_3d" if volume else "segmenter"), None, p.one_thread), seed=p.seed)


def _shipped(cfg: RunConfig, root: Path) -> Path | None:
    """The shipped checkpoint folder of ``cfg`` (cpu preset) when its config equals ``cfg``."""
    from medgen.config import config_hash
    from medgen.checkpoint import read_config

    model = cfg.name.split("/", 1)[-1]
    names = [model] if cfg.method == "segmenter" else [f"{model}-{cfg.data.source}"]
    for name in names:
        folder = root / "checkpoints" / "mri_to_ct" / name
        if (folder / "config.json").is_file():
            try:
                if config_hash(read_config(folder)) == config_hash(cfg):
                    return folder
            except Exception:  # noqa: BLE001 -- an unreadable shipped checkpoint just means "train"
                return None
    return None


def load_model(cfg: RunConfig, *, root: str | Path = ".", progress: bool = False) -> Any:
    """The trained model of ``cfg``: the shipped checkpoint when its config equals ``cfg``, else
    :func:`medgen.train.train_or_load` under ``<root>/runs`` (cached by config hash)."""
    from medgen.checkpoint import load_translator
    from medgen.train import train_or_load

    root = Path(root)
    shipped = _shipped(cfg, root)
    if shipped is not None:
        return load_translator(shipped, config=cfg)
    return train_or_load(cfg, root=root / "runs", progress=progress)


# --------------------------------------------------------------------------------------
# Test data
# --------------------------------------------------------------------------------------
def eval_items(cfg: RunConfig, n: int) -> list[dict[str, Any]]:
    """The first ``n`` test items of ``cfg``'s data (the paired / volume test split) with the spine mask.

    Each item gets ``mask`` ``[1, *S]`` = :func:`spine_mask` (10 px) of its ``labels_mri``, which
    :func:`medgen.evaluate.evaluate` applies with ``mask_mode="zero"``. Unpaired configs use the
    ``paired`` test split (the unpaired kind's test split is paired too).
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
    ``source`` is the MRI slice, or the slice of ``preds`` ``[n, 1, D, H, W]`` when given (scoring a
    precomputed translation). ``mask`` is the 2D spine mask of the slice's ``labels_mri``.
    """
    out = []
    for i, item in enumerate(items):
        labels = item["labels_mri"]
        for s in range(labels.shape[0]):
            if not bool((labels[s] != 0).any()):
                continue
            source = preds[i][:, s] if preds is not None else item["source"][:, s]
            out.append({"source": source, "target": item["target"][:, s], "patient_id": item["patient_id"],
                        "slice_index": s, "labels_mri": labels[s],
                        "mask": spine_mask(labels[s][None], SPINE_DISTANCE_PX)[0]})
    return out


# --------------------------------------------------------------------------------------
# Translating and segmenting
# --------------------------------------------------------------------------------------
def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


@torch.no_grad()
def translate_items(model: Any, items: Sequence[Mapping[str, Any]], *, options: Mapping[str, Any] | None = None,
                    seed: int = 0, batch_size: int = 16) -> torch.Tensor:
    """``model.translate`` of every item's ``source`` -> ``[n, 1, *S]`` (one generator for all batches)."""
    gen, out = _generator(seed), []
    for start in range(0, len(items), batch_size):
        source = torch.stack([it["source"] for it in items[start:start + batch_size]])
        out.append(model.translate(source, generator=gen, **dict(options or {})).float().cpu())
    return torch.cat(out)


@torch.no_grad()
def translate_slicewise(model: Any, items: Sequence[Mapping[str, Any]], *, options: Mapping[str, Any] | None = None,
                        seed: int = 0, batch_size: int = 16) -> torch.Tensor:
    """A 2D model on every sagittal slice of volume items ``source [1, D, H, W]`` -> ``[n, 1, D, H, W]``."""
    gen, out = _generator(seed), []
    for item in items:
        slices = item["source"].permute(1, 0, 2, 3)  # [D, 1, H, W]
        parts = [model.translate(slices[s:s + batch_size], generator=gen, **dict(options or {})).float().cpu()
                 for s in range(0, len(slices), batch_size)]
        out.append(torch.cat(parts).permute(1, 0, 2, 3))  # [1, D, H, W]
    return torch.stack(out)


def segment(segmenter: Any, ct: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
    """Label maps ``LongTensor [n, *S]`` of CTs ``[n, 1, *S]`` (model range) by the CT segmenter."""
    return torch.cat([segmenter.segment(ct[s:s + batch_size]).cpu() for s in range(0, len(ct), batch_size)])


# --------------------------------------------------------------------------------------
# Rows
# --------------------------------------------------------------------------------------
class _Given:
    """A translator whose output is its input: scores precomputed translations with :func:`evaluate`."""

    def translate(self, source: torch.Tensor, **_: Any) -> torch.Tensor:
        return source


def quality_metrics(size: int) -> tuple[str, ...]:
    """:data:`QUALITY_METRICS` computable at image side ``size`` (VIFp needs >= 41 px)."""
    return tuple(m for m in QUALITY_METRICS if m != "vifp" or size >= VIF_MIN_SIZE)


def quality_rows(preds: torch.Tensor, items: Sequence[Mapping[str, Any]], *, method: str, contrast: str,
                 dims: str = "2D", metrics: Sequence[str] | None = None, setting: str = "") -> pd.DataFrame:
    """Table 1 rows of precomputed translations ``preds [n, 1, *S]`` against ``items``' targets.

    2D items are scored as they are; volume items ``[1, D, H, W]`` on their sagittal slices with
    spine labels (:func:`volume_slices`). The spine mask zeroes (``fill`` :data:`FILL`) the pixels
    > 10 px from the spine in both images. Returns :func:`evaluate`'s rows plus ``method,
    contrast, dims, setting``.
    """
    if preds.shape[0] != len(items):
        raise ValueError(f"quality_rows: {preds.shape[0]} translations for {len(items)} items")
    if preds.ndim == 5:
        scored = volume_slices(items, preds)
    else:
        scored = [{"source": preds[i], "target": it["target"], "mask": it["mask"], "patient_id": it["patient_id"]}
                  for i, it in enumerate(items)]
    size = int(scored[0]["target"].shape[-1])
    rows = evaluate(_Given(), scored, tuple(metrics) if metrics else quality_metrics(size), data_range=2.0,
                    mask_mode="zero", fill=FILL)
    return rows.drop(columns=["method"], errors="ignore").assign(method=method, contrast=contrast, dims=dims,
                                                               setting=setting)


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


# --------------------------------------------------------------------------------------
# Ablation, DDPM, registration residuals
# --------------------------------------------------------------------------------------
def ablation_settings(p: Plan) -> list[tuple[str, dict[str, Any]]]:
    """``[(label, translate options)]`` of the plan's DDIM ablation points (:data:`ABLATION`)."""
    return [(label, {**BASE_DDIM, **change}) for label, change in ABLATION if label in p.ablation]


def ddpm_options(cfg: RunConfig) -> dict[str, Any]:
    """DDPM over all ``cfg.diffusion.timesteps`` training steps (the paper's "DDPM" row)."""
    return {"sampler": "ddpm", "steps": int(cfg.diffusion.timesteps), "guidance_scale": 0.0}


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
# Tables
# --------------------------------------------------------------------------------------
def quality_table(rows: pd.DataFrame, paper_key: str, *, paper: Mapping[str, Any] | None = None) -> MetricTable:
    """Table 1 for one block (``t1w``, ``t2w`` or ``3d``): mean +- SD per method, paper rows alongside."""
    metrics = [m for m in QUALITY_METRICS if m in set(rows["metric"])]
    source = PAPER_TABLE1 if paper is None else paper
    return metric_table(rows, by="method", metrics=metrics, paper=_paper_rows(source.get(paper_key), None),
                        decimals={"mae": 4, "mse": 4, "psnr": 2, "ssim": 3, "vifp": 3})


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


def dice_table(rows: pd.DataFrame, paper_key: str, *, posterior: bool = False, dims: str | None = None,
               paper: Mapping[str, Any] | None = None) -> MetricTable:
    """Table 2 (``posterior=False``: bone) or Table 3 (posterior elements) for one block, paper rows
    alongside (``dims`` "2D" / "3D": only the paper's 2D / 3D rows)."""
    metrics = list(_D3 if posterior else _D2)
    source = (PAPER_TABLE3 if posterior else PAPER_TABLE2) if paper is None else paper
    return metric_table(rows, by="method", metrics=metrics, paper=_paper_rows(source.get(paper_key), dims),
                        decimals=3)


def ablation_table(rows: pd.DataFrame, contrast: str) -> MetricTable:
    """The DDIM ablation / DDPM rows of one contrast (``method`` = "DDIM image t=20, eta=1, w=0" ...),
    supplement Table S.1 alongside (the rows of the settings present)."""
    metrics = [m for m in (*QUALITY_METRICS, "dice_volume") if m in set(rows["metric"])]
    paper = _paper_rows(PAPER_TABLE_S1.get(contrast), None, rows["method"].unique())
    return metric_table(rows, by="method", metrics=metrics, paper=paper or None,
                        decimals={"mae": 4, "mse": 4, "psnr": 2, "ssim": 3, "vifp": 3, "dice_volume": 3})


# --------------------------------------------------------------------------------------
# Paired tests
# --------------------------------------------------------------------------------------
def _per_subject(rows: pd.DataFrame, by: str, group: str, metric: str) -> pd.Series:
    sel = rows[(rows[by] == group) & (rows["metric"] == metric)]
    return sel.groupby("patient_id")["value"].mean().dropna()


def paired_comparisons(rows: pd.DataFrame, pairs: Iterable[tuple[str, str]], metric: str, *, by: str = "method",
                       family: str = "", alpha: float = 0.05) -> pd.DataFrame:
    """Paired t-test (the paper's) and Wilcoxon of ``metric`` across subjects for each ``(a, b)`` of
    column ``by``, Holm-corrected over the family (:func:`medgen.metrics.stats.compare_paired`).

    Subjects are matched by ``patient_id`` (only those both groups have). Pairs with fewer than
    3 common subjects or identical values get NaN p-values. Columns: ``family, comparison, a, b,
    metric, mean_a, mean_b`` and compare_paired's ``n, mean_diff, t_p, t_p_holm, w_p, w_p_holm ...``.
    """
    pairs = [(a, b) for a, b in pairs]
    arrays: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    info = []
    for a, b in pairs:
        x, y = _per_subject(rows, by, a, metric), _per_subject(rows, by, b, metric)
        common = sorted(set(x.index) & set(y.index))
        xa, yb = x.reindex(common).to_numpy(float), y.reindex(common).to_numpy(float)
        name = f"{a} vs {b}"
        info.append({"family": family, "comparison": name, "a": a, "b": b, "metric": metric,
                     "mean_a": float(xa.mean()) if len(xa) else np.nan,
                     "mean_b": float(yb.mean()) if len(yb) else np.nan, "n": len(common)})
        if len(common) >= 3 and not np.allclose(xa, yb):
            arrays[name] = (xa, yb)
    out = pd.DataFrame(info)
    if arrays:
        try:
            tests = compare_paired(arrays, alpha=alpha).drop(columns=["n"])
        except StatsError:
            tests = pd.DataFrame(index=pd.Index([], name="comparison"))
        out = out.merge(tests, left_on="comparison", right_index=True, how="left")
    for col in ("mean_diff", "t_stat", "t_p", "t_p_holm", "t_reject", "w_stat", "w_p", "w_p_holm", "w_reject"):
        if col not in out.columns:
            out[col] = np.nan
    return out


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


# --------------------------------------------------------------------------------------
# Findings
# --------------------------------------------------------------------------------------
def _mean(rows: pd.DataFrame, by: str, group: str, metric: str) -> float:
    s = _per_subject(rows, by, group, metric)
    return float(s.mean()) if len(s) else float("nan")


def _p(rows: pd.DataFrame, a: str, b: str, metric: str, by: str = "method") -> float:
    t = paired_comparisons(rows, [(a, b)], metric, by=by)
    return float(t["t_p"].iloc[0])


def _fmt_p(p: float) -> str:
    return "n/a" if np.isnan(p) else f"{p:.3g}"


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
        worst_paired = min(paired, key=lambda m: _mean(rows, "method", m, "dice_volume"))
        best_cut = max(cut, key=lambda m: _mean(rows, "method", m, "dice_volume"))
        wp, bc = _mean(rows, "method", worst_paired, "dice_volume"), _mean(rows, "method", best_cut, "dice_volume")
        p_worst = float(np.nanmax(tests["t_p_holm"].to_numpy(float))) if tests["t_p_holm"].notna().any() else np.nan
        ok = bool(wp > bc and not np.isnan(p_worst) and p_worst < alpha)
        holds &= ok
        parts.append(f"{contrast.upper()}: weakest paired {worst_paired} {wp:.3f} vs best CUT {best_cut} {bc:.3f} "
                     f"(largest Holm-corrected paired-t p = {_fmt_p(p_worst)})")
    if not evaluated:
        return False, "not evaluated: needs at least one paired method and one CUT variant with Dice rows."
    return bool(holds), ("Dice per volume, " + "; ".join(parts) + f"; holds when every paired method beats every "
                         f"CUT variant with Holm p < {alpha} ({MEASURER_NOTE}).")


def _finding_registration(registration: pd.DataFrame, alpha: float,
                          alignment: pd.DataFrame | None) -> tuple[bool, str]:
    if registration is None or registration.empty or not {"one", "two"} <= set(registration["registration"]):
        return False, "not evaluated: needs Dice rows of models trained on one- and two-landmark registered data."
    one, two = (_mean(registration, "registration", r, "dice_volume") for r in ("one", "two"))
    post = {r: _mean(registration, "registration", r, "dice_posterior_volume") for r in ("one", "two")}
    p = _p(registration, "two", "one", "dice_volume", by="registration")
    holds = bool(two > one and not np.isnan(p) and p < alpha)
    text = (f"Dice per volume of {LABELS[REGISTRATION_MODEL]} (T2w, slice-wise) trained on two- vs one-landmark "
            f"registered volumes: {two:.3f} vs {one:.3f} (paired t p = {_fmt_p(p)}); posterior Dice "
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
        a, b = _mean(rows, "method", img, "psnr"), _mean(rows, "method", noise, "psnr")
        holds &= bool(a >= b)
        parts.append(f"{contrast.upper()}: {a:.2f} vs {b:.2f} dB (paired t p = {_fmt_p(_p(rows, img, noise, 'psnr'))})")
    if not evaluated:
        return False, "not evaluated: needs PSNR rows of DDIM image and DDIM noise mode."
    return bool(holds), "PSNR of DDIM image vs noise mode (t=20, eta=1, w=0), " + "; ".join(parts) + "."


def _finding_3d(dice: pd.DataFrame) -> tuple[bool, str]:
    d3, dsw = dice[dice["setting"] == "3D"], dice[dice["setting"] == "2D slice-wise"]
    if d3.empty or dsw.empty:
        return False, "not evaluated: needs posterior Dice of a 3D model and of a 2D model on the same volumes."
    both = pd.concat([d3, dsw])
    means3 = {m: _mean(d3, "method", m, "dice_posterior_volume") for m in dict.fromkeys(d3["method"])}
    means2 = {m: _mean(dsw, "method", m, "dice_posterior_volume") for m in dict.fromkeys(dsw["method"])}
    b3, b2 = max(means3, key=means3.get), max(means2, key=means2.get)
    holds = bool(means3[b3] >= means2[b2])
    p = _p(both, b3, b2, "dice_posterior_volume")
    others = ", ".join(f"{m} {v:.3f}" for m, v in means3.items() if m != b3)
    return holds, (f"posterior-element Dice per volume (T2w test volumes): best 3D {b3} {means3[b3]:.3f} vs best 2D "
                   f"{b2} {means2[b2]:.3f} (paired t p = {_fmt_p(p)})" + (f"; other 3D: {others}" if others else "")
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
# Headline numbers and figure
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
                out.setdefault(key, {})[metric] = round(_mean(rows, "method", method, metric), 4)
    for (method, contrast, setting), rows in dice.groupby(["method", "contrast", "setting"], sort=False):
        key = f"{method} [{contrast}, {setting if setting != '2D slice-wise' else '3D volumes, 2D slice-wise'}]"
        for metric in ("dice_volume", "dice_posterior_volume"):
            out.setdefault(key, {})[metric] = round(_mean(rows, "method", method, metric), 4)
    if registration is not None and not registration.empty:
        for reg in dict.fromkeys(registration["registration"]):
            key = f"{LABELS[REGISTRATION_MODEL]} registration={reg} [t2w, 3D volumes, 2D slice-wise]"
            for metric in ("dice_volume", "dice_posterior_volume"):
                out.setdefault(key, {})[metric] = round(_mean(registration, "registration", reg, metric), 4)
    return out


def figure_columns(inputs: torch.Tensor, translations: Mapping[str, torch.Tensor], reference: torch.Tensor,
                   n: int = 4) -> dict[str, torch.Tensor]:
    """Columns of the Figure-5-like grid: input MRI, every method, the reference CT (first ``n`` rows)."""
    cols = {"input (MRI)": inputs[:n]}
    cols.update({name: t[:n] for name, t in translations.items()})
    cols["reference CT"] = reference[:n]
    return cols


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


def box_paper(rows: pd.DataFrame, metric: str, posterior: bool = False) -> dict[tuple[str, str], float]:
    """``{(method, contrast): paper value}`` of Table 2 / 3 for the (method, contrast) pairs in ``rows``
    (the ``paper`` argument of :func:`medgen.plots.box_plot` with ``hue="contrast"``)."""
    table = PAPER_TABLE3 if posterior else PAPER_TABLE2
    pairs = rows[["method", "contrast"]].drop_duplicates().itertuples(index=False, name=None)
    return {(m, c): table[c][m][metric] for m, c in pairs if m in table.get(c, {}) and metric in table[c][m]}


def _no_real(rows: pd.DataFrame) -> pd.DataFrame:
    return rows[rows["method"] != REAL_CT] if "method" in rows.columns else rows


# --------------------------------------------------------------------------------------
# Drivers: what the notebook runs (train or load, translate, score)
# --------------------------------------------------------------------------------------
@dataclass
class Run2D:
    """The 2D experiment of one contrast: test items, translations, Table 1 and Dice rows."""

    contrast: str
    items: list[dict[str, Any]]
    preds: dict[str, torch.Tensor]  # method label -> [n, 1, H, W]
    quality: pd.DataFrame
    dice: pd.DataFrame


def run_2d(p: Plan, contrast: str, segmenter: Any, *, root: str | Path = ".", progress: bool = False) -> Run2D:
    """Every 2D method of the plan for ``contrast``: train or load, translate the 2D test split with the
    preset's inference settings (DDIM t=20, eta=1, w=0), score Table 1 and segment for Tables 2-3.
    The registered real CT is segmented too (:data:`REAL_CT`, the ceiling)."""
    items = eval_items(model_config(p, "ddim_image", contrast), p.n_test)
    real = torch.stack([it["target"] for it in items])
    dice = [dice_rows(segment(segmenter, real), items, method=REAL_CT, contrast=contrast, setting="2D")]
    quality, preds = [], {}
    for model_name in p.methods_2d:
        model = load_model(model_config(p, model_name, contrast), root=root, progress=progress)
        label = LABELS[model_name]
        preds[label] = translate_items(model, items, seed=p.seed)
        quality.append(quality_rows(preds[label], items, method=label, contrast=contrast))
        dice.append(dice_rows(segment(segmenter, preds[label]), items, method=label, contrast=contrast))
    q = pd.concat(quality, ignore_index=True) if quality else pd.DataFrame(
        columns=["sample", "patient_id", "metric", "value", "data_range", "method", "contrast", "dims", "setting"])
    return Run2D(contrast, items, preds, q, pd.concat(dice, ignore_index=True))


def run_registration(p: Plan, segmenter_3d: Any, volumes: Sequence[Mapping[str, Any]], *, root: str | Path = ".",
                     progress: bool = False) -> tuple[pd.DataFrame, dict[str, torch.Tensor]]:
    """The registration comparison: :data:`REGISTRATION_MODEL` trained on none / one / two-landmark
    registered slices, each translating every sagittal slice of the test ``volumes`` (T2w).

    Returns Dice rows (with a ``registration`` column; ``setting`` "2D slice-wise") and the
    slice-wise translations ``{registration: [n, 1, D, H, W]}``.
    """
    rows, preds = [], {}
    label = LABELS[REGISTRATION_MODEL]
    for reg in REGISTRATIONS:
        model = load_model(registration_config(p, reg), root=root, progress=progress)
        preds[reg] = translate_slicewise(model, volumes, seed=p.seed)
        d = dice_rows(segment(segmenter_3d, preds[reg]), volumes, method=f"{label} ({reg})", contrast="t2w",
                      setting="2D slice-wise")
        rows.append(d.assign(registration=reg))
    return pd.concat(rows, ignore_index=True), preds


def run_3d(p: Plan, segmenter_3d: Any, volumes: Sequence[Mapping[str, Any]], slicewise: torch.Tensor | None = None,
           *, root: str | Path = ".", progress: bool = False) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, torch.Tensor]]:
    """The 3D models (T2w) on the test ``volumes``: Table 1 rows on their sagittal slices and Dice rows
    (setting "3D"); ``slicewise`` (the two-landmark 2D model's translations of the same volumes) adds
    the 2D comparison rows (setting "2D slice-wise") and the real CT its ceiling row."""
    quality, dice, preds = [], [], {}
    real = torch.stack([it["target"] for it in volumes])
    dice.append(dice_rows(segment(segmenter_3d, real, 4), volumes, method=REAL_CT, contrast="t2w", setting="3D"))
    if slicewise is not None:
        label = SLICEWISE_LABEL.format(label=LABELS[REGISTRATION_MODEL])
        preds[label] = slicewise
        quality.append(quality_rows(slicewise, volumes, method=label, contrast="t2w", dims="3D"))
        dice.append(dice_rows(segment(segmenter_3d, slicewise, 4), volumes, method=label, contrast="t2w",
                              setting="2D slice-wise"))
    for model_name in p.methods_3d:
        model = load_model(model_config(p, model_name, "t2w"), root=root, progress=progress)
        label = LABELS[model_name]
        preds[label] = translate_items(model, volumes, seed=p.seed, batch_size=4)
        quality.append(quality_rows(preds[label], volumes, method=label, contrast="t2w", dims="3D"))
        dice.append(dice_rows(segment(segmenter_3d, preds[label], 4), volumes, method=label, contrast="t2w",
                              setting="3D"))
    q = pd.concat(quality, ignore_index=True) if quality else pd.DataFrame()
    return q, pd.concat(dice, ignore_index=True), preds


def run_ablation(p: Plan, run: Run2D, segmenter: Any, *, root: str | Path = ".",
                 progress: bool = False) -> pd.DataFrame:
    """The DDIM inference ablation and DDPM (all T steps, first ``p.n_ddpm`` subjects) of both DDIM
    modes on ``run``'s test items: Table 1 metrics and Dice per volume, ``method`` = "<mode> <setting>"."""
    rows = []
    for model_name in ("ddim_noise", "ddim_image"):
        if model_name not in p.methods_2d:
            continue
        cfg = model_config(p, model_name, run.contrast)
        model = load_model(cfg, root=root, progress=progress)
        points = [(f"{LABELS[model_name]} {label}", opts, run.items) for label, opts in ablation_settings(p)]
        points.append((f"{LABELS[model_name]} DDPM", ddpm_options(cfg), run.items[:p.n_ddpm]))
        for name, opts, items in points:
            pred = translate_items(model, items, options=opts, seed=p.seed)
            rows.append(quality_rows(pred, items, method=name, contrast=run.contrast))
            d = dice_rows(segment(segmenter, pred), items, method=name, contrast=run.contrast)
            rows.append(d[d["metric"] == "dice_volume"])
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()


def registration_table(registration: pd.DataFrame) -> MetricTable:
    """Dice of the registration comparison per training-data registration (none / one / two), with the
    paper's Pix2Pix values (T2w, "Influence of Rigid Registration": one 0.68, two 0.73) as paper rows."""
    paper = {reg: {"dice_volume": v} for reg, v in PAPER_REGISTRATION["Pix2Pix"].items()}
    return metric_table(registration, by="registration", metrics=list(DICE_METRICS), paper=paper, decimals=3)

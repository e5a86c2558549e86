"""Notebook ``mri_to_ct``: the spine MRI -> CT paper (mri_to_ct_spine_ddim.txt) regenerated on phantoms.

The package has the shape every paper shares: :mod:`.paper` (the paper's names and numbers),
:mod:`.plan` (what runs at which preset), :mod:`.rows` (tidy rows: :func:`medgen.zoo.resolve`
-> :func:`medgen.predict.predict` -> :func:`medgen.score.score`), :mod:`.tables` and
:mod:`.findings`; shared helpers come from :mod:`medgen.experiments.common`.
``from medgen.experiments import mri_to_ct as exp`` gives every public name.

What each number means
----------------------
* **Table 1** (image quality): L1 (``mae``), MSE, PSNR, SSIM, VIFp of the synthesized CT against
  the registered real CT, model range [-1, 1] (``data_range = 2``). The paper sets "pixels that
  were further than 10 pixels away from a segmented spine structure" to zero: the
  :func:`~medgen.metrics.structure.spine_mask` of the MRI-frame labels ``labels_mri`` is applied
  by :func:`medgen.score.score` with ``mask_mode="zero"`` and ``fill`` :data:`FILL` = 0 (our
  reading: 0 in the paper's CT / 1000 HU space is water, i.e. 0 in model range, not -1 = air).
  VIFp needs sides >= 41 px, so it is ``n/a`` at 32 px (``ci`` / ``smoke``). 2D models are
  scored on the 2D test split (one sagittal slice per subject); 3D models on the sagittal slices
  of their volumes that contain a spine label (2D mask per slice; per-subject mean over slices,
  then mean +- SD over volumes).
* **Tables 2 and 3** (Dice, :mod:`medgen.experiments.spine_dice`): medgen's CT segmenter (a
  stand-in for the paper's public algorithm: :data:`MEASURER_NOTE`, printed with every Dice
  table) segments each synthesized CT; reference ``labels_mri``; only ``complete`` vertebrae.
  ``dice_volume`` / ``dice_posterior_volume``: per volume; ``dice_vertebra`` /
  ``dice_posterior_vertebra``: every (volume, vertebra) pair one unit (``patient_id``
  ``"<volume>/v<k>"``: the paper's pooled mean; ``n`` counts vertebrae). Settings
  (:data:`SETTINGS`): ``2D`` (one-slice volumes of the 2D test split, 2D segmenter), ``3D`` (T2w
  test volumes, 3D segmenter), ``2D slice-wise`` (a 2D model trained on ``volume_slices`` of the
  registered 3D training volumes translating every sagittal slice of the same test volumes).
  :data:`REAL_CT` rows are the segmenter on the real CT: the ceiling, never a method.
* **Registration comparison** (paper "Influence of Rigid Registration", Figure 4): one 2D model
  (:data:`REGISTRATION_MODEL`) trained on the sagittal slices of 3D training volumes registered
  with none / one / two landmarks per vertebra (3D registration before slicing,
  :mod:`medgen.registration`), each scored by the Dice of its slice-wise translations of the
  test volumes; plus landmark residuals and label overlaps (:func:`alignment_table`).
* **DDIM inference ablation** (supplement Table S.1): one parameter changed at a time from
  t = 20, eta = 1, w = 0 (:data:`ABLATION`); **DDPM vs DDIM**: the same network sampled with
  DDPM over all T training steps (:func:`ddpm_options`) on the first ``Plan.n_ddpm`` test
  subjects, compared with DDIM on the same subjects (:func:`ddpm_table`).
* **Paired tests** (:func:`standard_comparisons`): paired t-test (the paper's) and Wilcoxon
  across subjects, Holm-corrected within each family.
* **Findings** (:func:`findings`): the paper's four claims (:data:`FINDINGS`) with their numbers.

Every translation of one driver call shares one generator seeded with ``Plan.seed`` (slice-wise:
one generator across all volumes), so reruns are equal. The paper's numbers (``PAPER_*``) are
used only as rows labelled "(paper)".
"""
from __future__ import annotations

from medgen.experiments.common import concat, paired_comparisons  # paired_comparisons: lung_us imports it from here

from .findings import TESTS_SUMMARY_COLUMNS, findings, headline_metrics, standard_comparisons, tests_summary
from .paper import (ABLATION, BASE_DDIM, BONE_DICE, CI_ABLATION, DICE_METRICS, FILL, FINDINGS, LABELS, MEASURER_NOTE,
                    METHODS_2D, METHODS_3D, PAIRED, PAPER_REGISTRATION, PAPER_TABLE1, PAPER_TABLE2, PAPER_TABLE3,
                    PAPER_TABLE_S1, POSTERIOR_DICE, QUALITY_METRICS, REAL_CT, REGISTRATION_MODEL, REGISTRATIONS,
                    SETTINGS, SLICEWISE_LABEL, UNPAIRED_CUT)
from .plan import (SMOKE_N_TRAIN, SMOKE_STEPS, Plan, ablation_settings, configs, ddpm_options, model_config, plan,
                   registration_config, segmenter_config)
from .rows import (Run2D, alignment_table, dice_frame, dice_rows, eval_items, quality_metrics, quality_rows, run_2d,
                   run_3d, run_ablation, run_registration, segment, volume_slices)
from .tables import (ablation_table, alignment_summary, box_paper, ddpm_table, dice_table, figure5, figure_columns,
                     quality_table, registration_table, rows_for)

__all__ = [
    # paper
    "LABELS", "METHODS_2D", "METHODS_3D", "PAIRED", "UNPAIRED_CUT", "QUALITY_METRICS", "DICE_METRICS", "BONE_DICE",
    "POSTERIOR_DICE", "REGISTRATIONS", "REGISTRATION_MODEL", "SLICEWISE_LABEL", "REAL_CT", "SETTINGS", "FILL",
    "BASE_DDIM", "ABLATION", "CI_ABLATION", "MEASURER_NOTE", "PAPER_TABLE1", "PAPER_TABLE2", "PAPER_TABLE3",
    "PAPER_TABLE_S1", "PAPER_REGISTRATION", "FINDINGS",
    # plan
    "SMOKE_STEPS", "SMOKE_N_TRAIN", "Plan", "plan", "configs", "model_config", "registration_config", "segmenter_config",
    "ablation_settings", "ddpm_options",
    # rows
    "eval_items", "volume_slices", "segment", "quality_metrics", "quality_rows", "dice_rows", "dice_frame",
    "alignment_table", "Run2D", "run_2d", "run_3d", "run_registration", "run_ablation",
    # tables
    "rows_for", "alignment_summary", "quality_table", "dice_table", "ablation_table", "ddpm_table",
    "registration_table", "figure_columns", "figure5", "box_paper",
    # findings
    "findings", "headline_metrics", "standard_comparisons", "tests_summary", "TESTS_SUMMARY_COLUMNS",
    # shared (medgen.experiments.common)
    "concat", "paired_comparisons",
]

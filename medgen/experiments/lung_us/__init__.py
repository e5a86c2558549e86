"""Notebook ``lung_ultrasound``: the lung-ultrasound diffusion study (lung_us_diffusion.txt) on the ``lung`` phantom.

The package has the shape every paper shares: :mod:`.paper` (the paper's numbers, names and
constants), :mod:`.plan` (what runs at which preset and the model configs; the models themselves
come from :func:`medgen.zoo.resolve`), :mod:`.rows` (data and drivers: generation, audit,
reconstruction rows scored by :func:`medgen.score.score`), :mod:`.tables`, :mod:`.figures` and
:mod:`.findings`. ``from medgen.experiments import lung_us as exp`` gives all public names.

What the notebook computes, and how each number is defined here
---------------------------------------------------------------
* **Data**: 2D lung sections of the ``lung`` phantom, its ``ct`` modality in model range
  ([-1, 1] = [-1000, 600] HU). The training set and the held-out set are the prior preset's
  ``train`` / ``test`` splits (disjoint phantom subjects). Real and generated images get their
  aeration and category from the image (:func:`aeration_of`, i.e.
  :func:`medgen.data.phantoms.lung.aeration_from_ct` on HU, the lung estimated below a fitted
  pleural line); the phantom's label stays beside it (``LungSet.aeration_label``). Categories:
  the paper's 0 (< 60 %), 1 (60-85 %), 2 (>= 85 %).
* **Section 2, the paper's evaluation done right** (:func:`run_generation`):

  - memorization audit (:func:`memorization`): for every generated image the L2 distance to its
    nearest training image of the same aeration category in a feature space (paper Eq. 2),
    per-category histograms (paper Fig. 3), closest pairs (Fig. 4) and the flag rate against
    the held-out calibration (:mod:`medgen.metrics.memorization`: threshold = 1st percentile of
    the held-out images' distances, so fresh samples are flagged at ~1 %). The paper used an
    ImageNet ResNet18, whose weights are not available offline: ``resnet18`` is used when
    ``$MEDGEN_RESNET18_WEIGHTS`` names a local weights file, else the ImageNet EfficientNet-Lite0
    space (:func:`memorization_space`). The paper's nearest-pair distances
    (:data:`PAPER_NEAREST`) are shown only in a column labelled "paper": distances from
    different feature spaces (and images) are not comparable. Generated images of a category
    without held-out or training images cannot be calibrated: they are left out and counted
    (``excluded``), never dropped silently.
  - FID and KID (:func:`distribution_table`): generated vs held-out and, as the floor, an
    equally large training subset vs held-out, in the ``inception`` and ``efficientnet_lite0``
    spaces; every row states n and the small-sample warning under 2,048 images.
  - aeration statistics (:func:`aeration_table`): category proportions of generated vs
    training images and the two-sample Kolmogorov-Smirnov test of their aeration values.
* **Section 3, guided reconstruction** (:func:`run_reconstruction`): held-out images measured
  by each operator of :mod:`medgen.inverse` (``us_linear``, ``us_acoustic`` -- the phantom's
  ultrasound operators -- and the paper's failed ``blur`` / ``inpaint``), ``y = A(x) + n``.
  Methods: DPS (the prior guided by the measurement, :func:`medgen.inverse.dps_reconstruct`,
  ancestral DDPM sampling over ``Plan.dps_steps`` respaced steps: :data:`DPS_SAMPLER`), the
  unguided prior (same sampler, guidance scale 0: it ignores y), Tikhonov with an
  automatically chosen lambda (the direct inverse, the trivial baseline row) and the supervised
  conditional DDPM -- only for the two ultrasound operators, whose measurements it was trained
  on (``lung_us/conditional_<operator>``). Every stochastic method draws ``Plan.n_samples``
  samples per input; its mean is scored by :func:`medgen.score.score` (:func:`recon_metrics`:
  PSNR, SSIM with ``data_range = 2``, the measurement residual and the aeration error, the
  last two closures of :mod:`medgen.inverse`) and its SD map shown. Sweeps over the guidance
  scale and the number of steps (DPS only, :func:`run_sweeps`); paired t / Wilcoxon tests across
  images, DPS vs each baseline on PSNR, Holm-corrected per operator (:func:`paired_tests`).
* **Findings** (:func:`findings`) with one-line evidence each; :func:`headline_metrics` for
  ``results.json``.

Per-preset work (:func:`plan`): ``ci`` only executes the code paths (a few images, the
presets' 2-step trainings, a 2-point sweep); ``smoke`` trains the presets' smoke models and
reconstructs a handful of images; ``cpu`` / ``paper`` use more images, samples and sweep points
(at ``cpu`` :func:`medgen.zoo.resolve` loads the shipped prior under ``checkpoints/lung_us/``
when its config equals the preset's).
"""
from __future__ import annotations

from medgen.experiments.lung_us.figures import figure_grid, plot_aeration, plot_sweeps
from medgen.experiments.lung_us.findings import findings, headline_metrics, paired_tests
from medgen.experiments.lung_us.paper import (ALPHA, CATEGORIES, CATEGORY_LABELS, COVER_FRACTION, DATA_RANGE, DPS,
                                              DPS_SAMPLER, FID_SPACES, FINDINGS, FLAG_ALPHA, FLAG_PERCENTILE, METHODS,
                                              OPERATORS, PAPER_N, PAPER_NEAREST, PAPER_SPACE, PAPER_TABLE1,
                                              RECON_METRICS, SUPERVISED, TASK_PRIOR, TASK_SUPERVISED, TIKHONOV,
                                              ULTRASOUND, UNGUIDED)
from medgen.experiments.lung_us.plan import (Plan, configs, dps_scale, memorization_space, plan, prior_config, space_card,
                                             supervised_config)
from medgen.experiments.lung_us.rows import (Generation, LungSet, MemorizationResult, Reconstruction, aeration_of,
                                             feature_sets, generate, generated_sections, measure_all, memorization,
                                             real_sections, recon_metrics, recon_rows, run_generation,
                                             run_reconstruction, run_sweeps)
from medgen.experiments.lung_us.tables import (aeration_ks, aeration_table, category_proportions, config_table,
                                               distribution_table, flag_table, operator_heading,
                                               reconstruction_table, space_note, sweeps_summary, tests_summary)

__all__ = [
    # paper: the paper's numbers, names, constants
    "PAPER_NEAREST", "PAPER_SPACE", "PAPER_TABLE1", "PAPER_N", "TASK_PRIOR", "TASK_SUPERVISED", "CATEGORIES",
    "CATEGORY_LABELS", "OPERATORS", "ULTRASOUND", "DPS", "UNGUIDED", "TIKHONOV", "SUPERVISED", "METHODS",
    "DPS_SAMPLER", "FID_SPACES", "FLAG_PERCENTILE", "RECON_METRICS", "DATA_RANGE", "FLAG_ALPHA", "COVER_FRACTION",
    "ALPHA", "FINDINGS",
    # plan
    "Plan", "plan", "configs", "prior_config", "supervised_config", "dps_scale", "memorization_space", "space_card",
    # rows
    "LungSet", "real_sections", "aeration_of", "generated_sections", "generate", "feature_sets",
    "MemorizationResult", "memorization", "Generation", "run_generation", "measure_all", "Reconstruction",
    "recon_metrics", "recon_rows", "run_reconstruction", "run_sweeps",
    # tables and figures
    "config_table", "space_note", "distribution_table", "flag_table", "category_proportions", "aeration_ks",
    "aeration_table", "reconstruction_table", "operator_heading", "sweeps_summary", "tests_summary",
    "plot_aeration", "plot_sweeps", "figure_grid",
    # findings
    "paired_tests", "findings", "headline_metrics",
]

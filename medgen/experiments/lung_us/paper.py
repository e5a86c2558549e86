"""The lung-ultrasound study's names and numbers: the paper's own values (shown only labelled "paper"),
task names, aeration categories, operators, method labels and the fixed constants of the analysis."""
from __future__ import annotations

from typing import Any

# DPS (and the unguided prior it is compared with) samples ancestrally -- DDPM over the respaced steps, Chung et
# al.'s Algorithm 1 -- not with the deterministic DDIM (eta 0): measured on the smoke prior (4 held-out images,
# 25 steps, scale 10) DDIM-DPS diverged (us_linear 10.7 dB, residual 0.29, worse than unguided 12.9 dB) while
# DDPM-DPS reached 22.1 dB (residual 0.07; unguided 14.7 dB). One constant, in the method.
from medgen.methods.ddpm import DPS_SAMPLER

__all__ = ["PAPER_NEAREST", "PAPER_SPACE", "PAPER_TABLE1", "PAPER_N", "TASK_PRIOR", "TASK_SUPERVISED", "CATEGORIES",
           "CATEGORY_LABELS", "OPERATORS", "ULTRASOUND", "DPS", "UNGUIDED", "TIKHONOV", "SUPERVISED", "METHODS",
           "DPS_SAMPLER", "FID_SPACES", "FLAG_PERCENTILE", "RECON_METRICS", "DATA_RANGE", "FLAG_ALPHA",
           "COVER_FRACTION", "ALPHA", "FINDINGS"]

# --------------------------------------------------------------------------------------
# The paper's numbers (copied from the paper text; shown only labelled "paper")
# --------------------------------------------------------------------------------------
PAPER_NEAREST: dict[int, float] = {0: 2.280, 1: 2.675, 2: 2.4774}  # Fig. 4: closest pair per category
PAPER_SPACE = "ImageNet ResNet18"  # the feature space of PAPER_NEAREST
PAPER_TABLE1: dict[str, Any] = {  # Table 1: the improved-diffusion configuration (the `paper` preset)
    "diffusion_steps": 4000, "image_size": 256, "num_channels": 96, "num_res_blocks": 2,
    "attention_resolutions": 1, "learning_rate": 1e-4, "batch_size": 128,
}
PAPER_N = {"train": 4500, "generated": 1000}  # the paper's training and generated image counts

# --------------------------------------------------------------------------------------
# Names
# --------------------------------------------------------------------------------------
TASK_PRIOR = "lung_us/prior"
TASK_SUPERVISED = "lung_us/conditional_{operator}"
CATEGORIES = (0, 1, 2)
CATEGORY_LABELS = {0: "0 (< 60 %)", 1: "1 (60-85 %)", 2: "2 (>= 85 %)"}
OPERATORS = ("us_linear", "us_acoustic", "blur", "inpaint")
ULTRASOUND = ("us_linear", "us_acoustic")  # the operators the supervised conditional DDPMs were trained on
DPS, UNGUIDED, TIKHONOV, SUPERVISED = "DPS", "unguided prior", "Tikhonov (auto lambda)", "supervised cDDPM"
METHODS = (DPS, UNGUIDED, TIKHONOV, SUPERVISED)
FID_SPACES = ("inception", "efficientnet_lite0")

# --------------------------------------------------------------------------------------
# Constants of the analysis
# --------------------------------------------------------------------------------------
FLAG_PERCENTILE = 1.0  # the audit's calibration: threshold = 1st percentile of held-out distances
RECON_METRICS = ("psnr", "ssim", "residual", "aeration_error")  # the reconstruction rows' metrics, in this order
DATA_RANGE = 2.0  # model range [-1, 1]: the data_range of PSNR / SSIM
FLAG_ALPHA = 0.05  # one-sided binomial test of "flag rate above the calibration rate"
COVER_FRACTION = 0.25  # a category is covered when its generated share >= this x its real share
ALPHA = 0.05
FINDINGS = ("memorization_flag_rate_near_calibration", "generated_covers_all_categories", "fid_above_floor",
            "dps_beats_unguided_and_tikhonov_psnr", "dps_beats_tikhonov_us_acoustic")

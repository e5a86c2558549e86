"""Networks: the 2D/3D conditional diffusion UNet and its building blocks."""
from medgen.nn.unet import Condition, UNet, validate_config

__all__ = ["Condition", "UNet", "validate_config"]

"""Methods (translators); importing this package registers every method in ``registry.METHODS``."""
from medgen.methods import autoencoder, baselines, cddpm, cut, ddpm, pix2pix, segmenter, syndiff  # noqa: F401  (register every method)
from medgen.methods.base import Method

__all__ = ["Method", "autoencoder", "baselines", "cddpm", "cut", "ddpm", "pix2pix", "segmenter", "syndiff"]

"""Methods (translators); importing this package registers every method in ``registry.METHODS``."""
from medgen.methods import baselines, cddpm, cut, pix2pix  # noqa: F401  (register identity, gaussian_filter, cddpm, cut, pix2pix)
from medgen.methods.base import Method

__all__ = ["Method", "baselines", "cddpm", "cut", "pix2pix"]

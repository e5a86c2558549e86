"""Methods (translators); importing this package registers every method in ``registry.METHODS``."""
from medgen.methods import baselines, cddpm, cut, pix2pix, segmenter, syndiff  # noqa: F401  (register every method)
from medgen.methods import ddpm  # noqa: F401,E402  (the unconditional prior of the lung-ultrasound study)
from medgen.methods.base import Method

__all__ = ["Method", "baselines", "cddpm", "cut", "pix2pix", "segmenter", "syndiff"]

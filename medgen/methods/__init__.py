"""Methods (translators); importing this package registers every method in ``registry.METHODS``."""
from medgen.methods import baselines, cddpm  # noqa: F401  (register identity, gaussian_filter, cddpm)
from medgen.methods.base import Method

__all__ = ["Method", "baselines", "cddpm"]

"""Methods (translators); importing this package registers every method in ``registry.METHODS``."""
from medgen.methods import baselines  # noqa: F401  (registers "identity", "gaussian_filter")
from medgen.methods.base import Method

__all__ = ["Method", "baselines"]

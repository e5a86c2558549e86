"""Hounsfield-unit display windows: :data:`WINDOWS` presets and :func:`window` (HU -> [0, 1])."""
from __future__ import annotations

import numpy as np

WINDOWS: dict[str, tuple[float, float]] = {  # CT display windows in HU: name -> (width, level)
    "soft_tissue": (400.0, 40.0),
    "lung": (1500.0, -600.0),
    "bone": (1800.0, 400.0),
}


def window(hu: np.ndarray, name: str | tuple[float, float]) -> np.ndarray:
    """Map HU (any shape) onto float32 [0, 1] with a display window, clipped.

    ``name`` is a key of :data:`WINDOWS` or a ``(width, level)`` pair in HU:
    ``(hu - (level - width / 2)) / width``. Written by hand (one line of NumPy) rather than
    through MONAI's ``ScaleIntensityRange`` to keep MONAI's import cost out of this module.
    """
    if isinstance(name, str):
        if name not in WINDOWS:
            raise ValueError(f"unknown window '{name}' (known: {', '.join(sorted(WINDOWS))})")
        width, level = WINDOWS[name]
    else:
        try:
            width, level = (float(v) for v in name)
        except (TypeError, ValueError):
            raise ValueError(f"window must be a name or a (width, level) pair, got {name!r}") from None
    if not (np.isfinite(width) and np.isfinite(level) and width > 0):
        raise ValueError(f"window width must be positive and finite, got width={width}, level={level}")
    low = level - width / 2.0
    return np.clip((np.asarray(hu, dtype=np.float64) - low) / width, 0.0, 1.0).astype(np.float32)

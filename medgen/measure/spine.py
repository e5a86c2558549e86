"""Coronal spine angles from landmarks: Cobb angle (radiograph) and curve angle (ultrasound).

These measurers work on landmark coordinates only, so the same code measures phantom ground
truth, landmarks annotated on real images and landmarks detected on generated images.

Conventions
-----------
* A point is ``(row, col)`` in pixels (rows grow downwards, as in an image array). Any
  isotropic unit works (mm as well as pixels); anisotropic pixels must be rescaled first,
  because they change angles.
* The *tilt* of a line is its angle in degrees against the image's horizontal axis as the
  image is displayed, counter-clockwise positive (the right end higher than the left end is
  positive). Lines have no direction: tilts are folded into ``[-90, 90)``, so swapping a
  line's two points gives the same tilt.
* Vertebra corners come in the order top-left, top-right, bottom-left, bottom-right
  (``landmarks[..., v, :, :]`` is ``[4, 2]``), vertebrae from cranial to caudal.
* Missing vertebrae are ``NaN`` landmarks; they take no part in the maxima below. A subject
  with fewer than one valid pair gives ``NaN``.

Why by hand: the Cobb angle is a maximum over endplate pairs and a few lines of NumPy;
no dependency implements it on landmark arrays.
"""
from __future__ import annotations

import numpy as np

__all__ = ["line_tilt", "endplate_tilts", "cobb_angle", "curve_angle", "tilt_range"]


def line_tilt(p0: np.ndarray, p1: np.ndarray) -> np.ndarray:
    """Tilt in degrees, folded into ``[-90, 90)``, of the lines from ``p0`` to ``p1``.

    ``p0``, ``p1``: ``[..., 2]`` points ``(row, col)``; returns ``[...]``.
    """
    p0, p1 = np.asarray(p0, dtype=np.float64), np.asarray(p1, dtype=np.float64)
    d_row, d_col = p1[..., 0] - p0[..., 0], p1[..., 1] - p0[..., 1]
    angle = np.degrees(np.arctan2(-d_row, d_col))  # rows grow downwards: "up" is -row
    return (angle + 90.0) % 180.0 - 90.0  # a line has no direction: fold to [-90, 90)


def endplate_tilts(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Upper and lower endplate tilts (degrees) of every vertebra.

    ``landmarks``: ``[..., V, 4, 2]`` corners (top-left, top-right, bottom-left, bottom-right)
    as ``(row, col)``. Returns ``(upper [..., V], lower [..., V])``.
    """
    lm = _check_points(landmarks, 4, "landmarks")
    return line_tilt(lm[..., 0, :], lm[..., 1, :]), line_tilt(lm[..., 2, :], lm[..., 3, :])


def tilt_range(upper: np.ndarray, lower: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Largest tilt difference over ordered pairs of lines, with the pair that gives it.

    With ``lower`` given (``[..., V]`` each): ``max over i <= j of |upper[i] - lower[j]|``, the
    upper line of vertebra ``i`` above (or on) the lower line of vertebra ``j``. Without it:
    ``max over i < j of |upper[i] - upper[j]|``. NaN tilts are skipped.
    Returns ``(angle [...], i [...], j [...])``; ``angle`` is NaN and ``i = j = -1`` where no
    valid pair exists.
    """
    a = np.asarray(upper, dtype=np.float64)
    b = a if lower is None else np.asarray(lower, dtype=np.float64)
    if a.shape != b.shape or a.ndim < 1:
        raise ValueError(f"tilt arrays must have equal shapes [..., V], got {a.shape} and {b.shape}")
    n_lines = a.shape[-1]
    diff = np.abs(a[..., :, None] - b[..., None, :])  # [..., i, j]
    allowed = np.triu(np.ones((n_lines, n_lines), dtype=bool), k=0 if lower is not None else 1)
    diff = np.where(allowed & np.isfinite(diff), diff, -np.inf)
    flat = diff.reshape(*diff.shape[:-2], n_lines * n_lines)
    best = flat.argmax(axis=-1)
    angle = np.take_along_axis(flat, best[..., None], axis=-1)[..., 0]
    valid = np.isfinite(angle)
    i = np.where(valid, best // n_lines, -1)
    j = np.where(valid, best % n_lines, -1)
    return np.where(valid, angle, np.nan), i, j


def cobb_angle(landmarks: np.ndarray, *, return_ends: bool = False
               ) -> np.ndarray | tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cobb angle in degrees from vertebra corner landmarks.

    The angle between the most tilted upper endplate above the apex and the most tilted lower
    endplate below it: ``max over i <= j of |upper_tilt[i] - lower_tilt[j]|`` (the major
    curve when there are several).

    ``landmarks``: ``[..., V, 4, 2]`` (``(row, col)``; corners top-left, top-right, bottom-left,
    bottom-right; vertebrae cranial to caudal). Returns ``[...]`` degrees, and with
    ``return_ends`` also the upper and lower end-vertebra indices ``[...]`` (-1 if undefined).
    """
    upper, lower = endplate_tilts(landmarks)
    angle, i, j = tilt_range(upper, lower)
    return (angle, i, j) if return_ends else angle


def curve_angle(tp_lines: np.ndarray, *, return_ends: bool = False
                ) -> np.ndarray | tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ultrasound curve angle (UCA) in degrees from transverse-process lines.

    Each vertebra contributes one line through its left and right transverse-process tips (in
    the lumbar spine the line along the lumbar lump pair); the UCA is the largest tilt
    difference between two of them, ``max over i < j of |tilt[i] - tilt[j]|``, i.e. the angle
    between the most tilted lines above and below the apex.

    ``tp_lines``: ``[..., V, 2, 2]`` (two points ``(row, col)`` per vertebra, cranial to caudal).
    Returns ``[...]`` degrees, and with ``return_ends`` the two line indices ``[...]``.
    """
    lines = _check_points(tp_lines, 2, "tp_lines")
    tilt = line_tilt(lines[..., 0, :], lines[..., 1, :])
    angle, i, j = tilt_range(tilt)
    return (angle, i, j) if return_ends else angle


def _check_points(arr: np.ndarray, n_points: int, name: str) -> np.ndarray:
    """``arr`` as float64 ``[..., V, n_points, 2]``; a wrong shape raises ValueError."""
    out = np.asarray(arr, dtype=np.float64)
    if out.ndim < 3 or out.shape[-2:] != (n_points, 2):
        raise ValueError(f"{name} must have shape [..., V, {n_points}, 2], got {out.shape}")
    return out

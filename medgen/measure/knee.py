"""Joint-space width (JSW) of a knee, measured on an antero-posterior radiograph.

The measurement is image analysis only (no ground truth), so the same code measures
phantom, real and generated radiographs (film density, bone bright; the femur at the top of
the image, the tibia at the bottom, the joint roughly horizontal and near the middle rows,
as in the knee crops of the xray2mri paper):

1. Optionally smooth the image (Gaussian, ``smooth_px``; off by default) and split it into air / soft tissue /
   bone with a three-class Otsu threshold (:func:`skimage.filters.threshold_multiotsu`).
2. In every column, within the central ``search`` band of rows, find the joint space as the
   deepest valley between a bright femur above and a bright tibia below: the row maximising
   ``min(max above, max below) - value``. The median valley row is the joint line; search
   again within ``NEAR`` of it (so that valleys elsewhere, e.g. under a sclerotic band, are
   not taken for the joint). A column counts when both sides reach the bone threshold; a
   valley shallower than ``min_depth`` of the bone / soft-tissue contrast there is a closed
   joint (width 0).
3. The femoral edge is the last row above the valley, and the tibial edge the first row
   below it, where the profile climbs back to half-way between the valley floor and the
   nearest bone maximum (within ``reach`` of the image height), located to a sub-pixel by
   linear interpolation. The column's width is the distance between the two edges.
4. The counted columns span the joint from margin to margin; the medial and lateral
   compartments are the two halves of that span without its outer and central
   ``trim`` fractions (the condyles' curved margins and the intercondylar notch). A
   compartment's JSW is the minimum of its columns' widths -- the minimum JSW that
   radiologists read (``percentile`` > 0 takes a low percentile instead, for noisy images).

Widths are in pixels along the rows. Where no joint is found (too few counted columns),
the result is NaN. Written by hand because no library measures radiographic JSW.

Gaps narrower than the blur (KL3-4 at 32 px) read too wide: rank single knees at >= 64 px
(accuracy on the knee phantom by image size: docs/paper_notes.md#knee). Any image with bright
rows above and below a darker one gets a number (even noise): check first that the image is a
knee radiograph.
"""
from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter
from skimage.filters import threshold_multiotsu, threshold_otsu

__all__ = ["compartment_widths", "joint_space_width", "JSWError"]

SEARCH = (0.2, 0.8)  # rows searched for the joint, as fractions of the image height
NEAR = 0.08  # second pass: valleys within this fraction of the height of the joint line
REACH = 0.15  # rows above / below the valley searched for the bone edge (fraction of height)
MIN_DEPTH = 0.1  # smallest valley depth, as a fraction of the bone - soft-tissue threshold gap
TRIM = 0.12  # fraction of the joint span dropped at each margin and on each side of the centre
SMOOTH_PX = 0.0  # Gaussian pre-smoothing (px); smoothing widens the edges of narrow gaps
PERCENTILE = 0.0  # percentile of a compartment's column widths reported as its JSW (0: minimum)
MIN_COLUMNS = 2  # counted columns a compartment needs


class JSWError(ValueError):
    """Bad input to the joint-space-width measurement (one-line message)."""


def _thresholds(img: np.ndarray) -> tuple[float, float]:
    """(soft-tissue, bone) thresholds of one image: three-class Otsu, or two-class Otsu if
    degenerate; a flat image has no bone (threshold +inf)."""
    if np.ptp(img) < 1e-6:
        return float(img.min()), np.inf
    try:
        low, high = threshold_multiotsu(img, classes=3)
    except ValueError:  # constant or nearly constant image
        high = float(threshold_otsu(img))
        low = float(img.min())
    return float(low), float(high)


def _valleys(p: np.ndarray, bone: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Deepest valley of each column of ``p [R, W]`` between two bright sides: its row ``[W]``,
    depth ``min(max above, max below) - value`` ``[W]``, and whether both sides reach ``bone``."""
    above = np.maximum.accumulate(p, axis=0)
    below = np.maximum.accumulate(p[::-1], axis=0)[::-1]
    depth = np.minimum(above, below) - p
    row = np.argmax(depth, axis=0)
    cols = np.arange(p.shape[1])
    both = (above[row, cols] >= bone) & (below[row, cols] >= bone)
    return row, depth[row, cols], both


def _column_widths(img: np.ndarray, search: tuple[float, float], reach: float,
                   min_depth: float) -> np.ndarray:
    """Joint-space width of every column of one image ``[H, W]`` -> ``[W]`` (NaN: not counted)."""
    h = img.shape[0]
    r0, r1 = int(np.floor(search[0] * h)), int(np.ceil(search[1] * h))
    p = img[r0:r1]  # [R, W]
    n_rows, cols = p.shape[0], np.arange(p.shape[1])
    low, bone = _thresholds(img)
    row, depth, both = _valleys(p, bone)
    if both.any():  # second pass: the deepest valley near the joint line (median valley row)
        joint = int(np.median(row[both]))
        near = max(2, int(round(NEAR * h)))
        a, b = max(joint - near, 0), min(joint + near + 1, n_rows)
        row, depth, _ = _valleys(p[a:b], bone)
        row = row + a
        # Bone on both sides anywhere in the band (a condyle's faint lower edge may not
        # reach the bone threshold within the window).
        both = (np.maximum.accumulate(p, axis=0)[row, cols] >= bone) \
            & (np.maximum.accumulate(p[::-1], axis=0)[::-1][row, cols] >= bone)
    floor = p[row, cols]
    # Bone above and below: the column crosses the joint. A valley shallower than min_depth
    # there is a closed joint (bone on bone): width 0.
    closed = both & (depth < min_depth * max(bone - low, 1e-6))
    counted = both & ~closed
    k = max(2, int(round(reach * h)))
    idx = np.arange(n_rows)[:, None]
    # Femoral edge: last row above the valley (within k) at or above half-way to the local maximum.
    up = (idx < row) & (idx >= row - k)
    level_f = np.where(up, p, -np.inf).max(axis=0)
    half_f = 0.5 * (floor + level_f)
    hit = up & (p >= half_f)
    e_f = np.where(hit.any(axis=0), n_rows - 1 - np.argmax(hit[::-1], axis=0), -1)
    # Tibial edge: first row below the valley (within k) at or above half-way.
    down = (idx > row) & (idx <= row + k)
    level_t = np.where(down, p, -np.inf).max(axis=0)
    half_t = 0.5 * (floor + level_t)
    hit = down & (p >= half_t)
    e_t = np.where(hit.any(axis=0), np.argmax(hit, axis=0), -1)
    counted &= (e_f >= 0) & (e_t >= 0)
    e_f, e_t = np.clip(e_f, 0, n_rows - 2), np.clip(e_t, 1, n_rows - 1)
    # Sub-pixel: linear interpolation of the half-way crossing with the next row inward.
    a, b = p[e_f, cols], p[e_f + 1, cols]
    top = e_f + np.clip((a - half_f) / np.maximum(a - b, 1e-9), 0.0, 1.0)
    a, b = p[e_t, cols], p[e_t - 1, cols]
    bottom = e_t - np.clip((a - half_t) / np.maximum(a - b, 1e-9), 0.0, 1.0)
    return np.where(counted, bottom - top, np.where(closed, 0.0, np.nan))


def compartment_widths(xray: np.ndarray, *, smooth_px: float = SMOOTH_PX, search: tuple[float, float] = SEARCH,
                       reach: float = REACH, min_depth: float = MIN_DEPTH, trim: float = TRIM,
                       percentile: float = PERCENTILE) -> np.ndarray:
    """Minimum joint-space width of the image-left and image-right compartments.

    ``xray``: ``[n, H, W]`` (or ``[H, W]``) radiographs, bone bright (film density or any
    monotone display scale). Returns ``[n, 2]`` float64 widths in pixels (rows), NaN where a
    compartment has fewer than ``MIN_COLUMNS`` counted columns. Which side is medial depends
    on the knee's laterality, which the image alone does not give.
    """
    arr = np.asarray(xray, dtype=np.float64)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or min(arr.shape[1:]) < 8:
        raise JSWError(f"joint_space_width needs radiographs [n, H, W] with H, W >= 8, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise JSWError("joint_space_width got a radiograph with NaN or infinite values")
    out = np.full((arr.shape[0], 2), np.nan)
    for i, img in enumerate(arr):
        img = gaussian_filter(img, smooth_px) if smooth_px > 0 else img
        widths = _column_widths(img, search, reach, min_depth)
        cols = np.nonzero(np.isfinite(widths))[0]
        if cols.size < 2 * MIN_COLUMNS:
            continue
        lo, hi = cols[0], cols[-1]
        span, mid = hi - lo, 0.5 * (lo + hi)
        x = np.arange(widths.size)
        sides = ((x >= lo + trim * span) & (x <= mid - trim * span),
                 (x >= mid + trim * span) & (x <= hi - trim * span))
        for j, side in enumerate(sides):
            vals = widths[side & np.isfinite(widths)]
            if vals.size >= MIN_COLUMNS:
                out[i, j] = np.percentile(vals, percentile)
    return out


def joint_space_width(xray: np.ndarray, *, reduce: str = "mean", **options: float) -> np.ndarray:
    """Joint-space width of each radiograph ``[n, H, W]`` -> ``[n]`` pixels (rows).

    ``reduce``: ``"mean"`` of the two compartments' minimum widths (the phantom's ``jsw_true``
    definition) or ``"min"`` (the narrower compartment). ``options`` go to
    :func:`compartment_widths`. NaN where the joint is not found.
    """
    if reduce not in ("mean", "min"):
        raise JSWError(f"joint_space_width reduce must be 'mean' or 'min', got {reduce!r}")
    widths = compartment_widths(xray, **options)
    with np.errstate(invalid="ignore"):
        return widths.mean(axis=1) if reduce == "mean" else widths.min(axis=1)

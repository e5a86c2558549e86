"""Side-by-side views of a phantom subject with its ground truth drawn on top.

One function, :func:`panels`, turns a phantom's output (``spec(numbers, ...)``) into RGB
images for the notebook gallery and the demo's phantom explorer, so both show exactly the
same thing::

    >>> from medgen.registry import PHANTOMS, lookup
    >>> arrays = lookup(PHANTOMS, "knee")([0], sizes="ci", kl_grade=3)      # doctest: +SKIP
    >>> views = panels("knee", arrays, 0, slice=0.5)                        # doctest: +SKIP
    >>> list(views)                                                         # doctest: +SKIP
    ['radiograph (JSW rows, RSSIM region)', 'MRI slice 0.50 (bone outline)']

Each anatomy has a source-modality panel and a target-modality panel (the pair a paper
translates between), plus a ground-truth panel where the truth is a map (air fraction).
Images are shown through their modality's fixed physical range (``Modality.to_model``),
never stretched per image, so what looks darker is darker. Overlays are drawn with
scikit-image's ``draw`` and ``segmentation.find_boundaries``.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np
from skimage.draw import disk, line
from skimage.segmentation import find_boundaries

import medgen.data.phantoms  # noqa: F401 -- fills PHANTOMS
from medgen.registry import PHANTOMS, lookup

__all__ = ["panels", "gray", "VIEWERS", "COLORS"]

RGB = np.ndarray  # uint8 [H, W, 3]
COLORS = {  # overlay colours (RGB 0-255)
    "landmark": (255, 64, 64), "cobb": (255, 200, 0), "tp": (0, 220, 255), "rib": (80, 255, 120),
    "lump": (255, 80, 255), "mri": (0, 200, 255), "ct": (255, 80, 80), "bone": (255, 200, 0),
    "region": (80, 255, 120), "lung": (0, 200, 255), "pleura": (255, 200, 0),
}


def gray(image: np.ndarray, modality: Any) -> RGB:
    """``[H, W]`` physical units -> RGB uint8 through the modality's fixed range."""
    unit = (modality.to_model(image) + 1.0) / 2.0
    return np.repeat((unit * 255.0 + 0.5).astype(np.uint8)[..., None], 3, axis=2)


def _upscale(rgb: RGB, min_side: int = 256) -> tuple[RGB, int]:
    """Nearest-neighbour enlargement so tiny ``ci`` images stay visible: ``(image, factor)``."""
    f = max(1, int(np.ceil(min_side / min(rgb.shape[:2]))))
    return np.repeat(np.repeat(rgb, f, axis=0), f, axis=1), f


def _point(rgb: RGB, rc: np.ndarray, color: tuple[int, int, int], radius: float = 2.5) -> None:
    """A filled dot at ``rc = (row, col)`` (NaN points are skipped)."""
    if np.all(np.isfinite(rc)):
        rr, cc = disk((float(rc[0]), float(rc[1])), radius, shape=rgb.shape[:2])
        rgb[rr, cc] = color


def _segment(rgb: RGB, a: np.ndarray, b: np.ndarray, color: tuple[int, int, int]) -> None:
    """A line from ``a`` to ``b`` (``(row, col)``), clipped to the image."""
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        return
    rr, cc = line(int(round(a[0])), int(round(a[1])), int(round(b[0])), int(round(b[1])))
    keep = (rr >= 0) & (rr < rgb.shape[0]) & (cc >= 0) & (cc < rgb.shape[1])
    rgb[rr[keep], cc[keep]] = color


def _outline(rgb: RGB, labels: np.ndarray, color: tuple[int, int, int], factor: int = 1) -> None:
    """Boundaries of a label map (at the original size, enlarged by ``factor``)."""
    edges = find_boundaries(np.repeat(np.repeat(labels, factor, 0), factor, 1), mode="inner")
    rgb[edges] = color


def _pick(arr: np.ndarray, index: int, slice_pos: float | None) -> np.ndarray:
    """Subject ``index`` of ``arr``; for a 3D subject ``[D, H, W]`` the slice at ``slice_pos`` in [0, 1]."""
    sub = arr[index]
    if sub.ndim == 3:
        d = int(round((0.5 if slice_pos is None else slice_pos) * (sub.shape[0] - 1)))
        sub = sub[d]
    return sub


# --------------------------------------------------------------------------------------
# One viewer per anatomy: (spec, arrays, index, **view) -> {title: RGB}
# --------------------------------------------------------------------------------------
def _spine_coronal(spec: Any, a: Mapping[str, np.ndarray], i: int, *, depth: int | None = None,
                   **_: Any) -> dict[str, RGB]:
    from medgen.measure.spine import cobb_angle

    d = int(a["optimal_depth"][i]) if depth is None else int(np.clip(depth, 0, a["us_vpi"].shape[1] - 1))
    us, f = _upscale(gray(a["us_vpi"][i, d], spec.modalities["us_vpi"]))
    if d == int(a["optimal_depth"][i]):
        for label, key in ((1, "tp"), (2, "rib"), (3, "lump")):
            _outline(us, a["seg"][i] == label, COLORS[key], f)
    for left, right in a["tp_landmarks"][i] * f:
        _point(us, left, COLORS["tp"]), _point(us, right, COLORS["tp"])
    xr, f = _upscale(gray(a["xray"][i], spec.modalities["xray"]))
    marks = a["landmarks"][i] * f  # [17, 4, 2]
    for quad in marks:  # corners TL, TR, BL, BR -> outline TL-TR-BR-BL
        for p, q in ((0, 1), (1, 3), (3, 2), (2, 0)):
            _segment(xr, quad[p], quad[q], COLORS["landmark"])
    angle, top, bottom = cobb_angle(a["landmarks"][i][None], return_ends=True)
    if top[0] >= 0:  # the two end plates of the Cobb angle, extended
        for p, q in ((marks[top[0], 0], marks[top[0], 1]), (marks[bottom[0], 2], marks[bottom[0], 3])):
            ext = (q - p) * 0.8
            _segment(xr, p - ext, q + ext, COLORS["cobb"])
    flag = "" if a["artifact_free"][i, d] else ", with artifacts"
    return {f"ultrasound VPI, depth {d + 1}/5{' (optimal)' if d == a['optimal_depth'][i] else ''}{flag}": us,
            f"radiograph, Cobb {float(a['cobb'][i]):.1f} deg (UCA {float(a['uca'][i]):.1f})": xr}


def _spine_sagittal(spec: Any, a: Mapping[str, np.ndarray], i: int, *, contrast: str = "t1w",
                    slice: float | None = None, **_: Any) -> dict[str, RGB]:
    if contrast not in ("t1w", "t2w"):
        raise ValueError(f"contrast must be t1w or t2w, got '{contrast}'")
    three_d = a[contrast].ndim == 4
    mri, f = _upscale(gray(_pick(a[contrast], i, slice), spec.modalities[contrast]))
    ct, _ = _upscale(gray(_pick(a["ct"], i, slice), spec.modalities["ct"]))
    for key, img, color in (("mri", mri, COLORS["mri"]), ("ct", ct, COLORS["ct"])):
        for part in ("body", "spinous"):
            for p in a[f"{part}_com_{key}"][i]:
                _point(img, (p[-2:] if three_d else p) * f, color)
    for p in a["body_com_mri"][i]:  # where the MRI landmarks fall in the CT: the misalignment
        _point(ct, (p[-2:] if three_d else p) * f, COLORS["mri"], radius=1.5)
    where = f" slice {0.5 if slice is None else slice:.2f}" if three_d else ""
    return {f"{contrast.upper()} MRI{where} (body / spinous centres)": mri,
            f"CT{where} (red: CT centres, blue: MRI centres before registration)": ct}


def _knee(spec: Any, a: Mapping[str, np.ndarray], i: int, *, slice: float | None = None,
          **_: Any) -> dict[str, RGB]:
    xr, f = _upscale(gray(a["xray"][i], spec.modalities["xray"]))
    _outline(xr, a["rssim_mask"][i] > 0, COLORS["region"], f)
    s = a["mri"].shape[1]
    d = int(round((0.5 if slice is None else slice) * (s - 1)))
    mri, f = _upscale(gray(a["mri"][i, d], spec.modalities["mri"]))
    _outline(mri, a["bone_mask"][i, d], COLORS["bone"], f)
    return {f"radiograph, KL {int(a['kl_grade'][i])}, JSW {float(a['jsw_true'][i]):.1f} px (green: RSSIM region)": xr,
            f"MRI slice {d + 1}/{s} (depth {a['slice_depth'][i, d]:.2f}; bone outline)": mri}


def _lung(spec: Any, a: Mapping[str, np.ndarray], i: int, *, measurement: str = "us_acoustic",
          **_: Any) -> dict[str, RGB]:
    if measurement not in ("us_linear", "us_acoustic"):
        raise ValueError(f"measurement must be us_linear or us_acoustic, got '{measurement}'")
    ct, f = _upscale(gray(a["ct"][i], spec.modalities["ct"]))
    _outline(ct, np.isin(a["lung_mask"][i], (1, 2, 3)), COLORS["lung"], f)
    air, _ = _upscale(gray(a["air_fraction"][i], spec.modalities["air_fraction"]))
    meas = gray(a[measurement][i], spec.modalities[measurement])  # [H, W'] (every k-th scan line)
    stretch = max(1, round(a["ct"].shape[-1] / meas.shape[1]))
    us, _ = _upscale(np.repeat(meas, stretch, axis=1))  # lateral stride undone for display
    cat = ("< 60 %", "60-85 %", "> 85 %")[int(a["aeration_category"][i])]
    return {f"lung section (aeration {float(a['aeration'][i]) * 100:.0f} %, {cat})": ct,
            "air fraction (ground truth)": air,
            f"ultrasound measurement ({measurement.removeprefix('us_')} operator)": us}


VIEWERS: dict[str, Callable[..., dict[str, RGB]]] = {
    "spine_coronal": _spine_coronal, "spine_sagittal": _spine_sagittal, "knee": _knee, "lung": _lung,
}


def panels(name: str, arrays: Mapping[str, np.ndarray], index: int = 0, **view: Any) -> dict[str, RGB]:
    """Titled RGB views ``{title: uint8 [H', W', 3]}`` of subject ``index`` of phantom ``name``.

    ``arrays`` is the phantom's output for a batch of subjects. ``view`` options:
    ``depth`` (spine_coronal: ultrasound depth 0-4, default the optimal one), ``contrast``
    (spine_sagittal: ``t1w`` or ``t2w``), ``slice`` (3D: position in [0, 1]), ``measurement``
    (lung: ``us_linear`` or ``us_acoustic``). Small images are enlarged (nearest neighbour).
    """
    spec = lookup(PHANTOMS, name)
    if name not in VIEWERS:
        raise ValueError(f"no viewer for phantom '{name}' (known: {', '.join(sorted(VIEWERS))})")
    n = len(next(iter(arrays.values())))
    if not 0 <= index < n:
        raise IndexError(f"subject index {index} out of range for {n} rendered subjects")
    return VIEWERS[name](spec, arrays, index, **view)

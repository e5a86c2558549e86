"""Rigid landmark registration of CT onto MRI (the MRI->CT spine paper's preprocessing).

Method
------
The paper ("Image preprocessing", "Influence of Rigid Registration", Figure 4) rigidly
registers every CT onto its MRI from landmark pairs: the centre of mass (CM) of each
vertebral body ("one" landmark per vertebra) or the body CM plus the spinous-process CM
("two"). One body point per vertebra leaves the rotation about the cranio-caudal axis
nearly free -- the body centres of a spine lie on one curve in the mid-sagittal plane, so
only the small sagitta of the curve pins that rotation -- and the posterior elements (arch,
spinous process) stay misaligned; the spinous CM, 30-50 mm behind the body, fixes it.

* :func:`landmarks` -- physical points (pixel coordinates times ``spacing_mm``, array axis
  order ``(row, col)`` / ``(slice, row, col)``) of the vertebrae marked ``complete``:
  fixed = MRI (``*_mri``), moving = CT (``*_ct``).
* :func:`fit_rigid` -- :func:`SimpleITK.LandmarkBasedTransformInitializer` (closed-form
  least squares: Horn's quaternion method in 3D) with a ``VersorRigid3DTransform`` (3D) or
  ``Euler2DTransform`` (2D). The transform maps fixed (MRI) points to moving (CT) points,
  which is what :func:`SimpleITK.Resample` needs to pull the CT onto the MRI grid.
* :func:`resample_to` -- :func:`SimpleITK.Resample` on the image's own grid (MRI and CT
  share one pixel grid in the phantom): linear for CT (outside: -1000 HU, air), nearest
  neighbour for label maps (outside: 0).
* :func:`register_record` -- the whole step on one per-subject record (what the dataset
  hook ``DataConfig.registration`` runs, :mod:`medgen.data.datasets`).
* :func:`alignment_scores` -- Dice of MRI vs CT label maps (bone, body, posterior elements)
  and landmark distances in mm: the numbers below.

Choice: ONE global rigid transform per subject
----------------------------------------------
As in the paper (whose Pointregistration code, as described in issue 5 -- not checked here,
the machine is offline -- makes one rigid least-squares fit of all landmark pairs of a
series), the whole CT gets a single rigid transform; the MRI frame is never moved, whichever
of the two is the data source. The phantom moves each
vertebra a little on its own (1.5 deg in-plane and 3 deg axial rotation, 0.5 mm, times
``misalignment``) and bends the CT (flexion), which no single rigid map can undo: the
residuals below are that part. A per-vertebra rigid fit would need one landmark triple per
vertebra (two points leave the rotation about their joining line free) and a deformable
blend between vertebrae for the soft tissue -- the deformable registration the paper names as
future work, not its method -- so it is not done here. Points whose vertebra is not
``complete`` (cut by the border, or clashing) are left out, as a landmark whose label is cut
has a biased CM.

2D and 3D
---------
Both work (``Euler2DTransform`` on ``[H, W]`` records). The 1-vs-2-landmark comparison is a
3D experiment: the 2D phantom (``Sizes(h, w, 0)``) only has in-plane motion (its mid-sagittal
plane maps onto itself), so in 2D one and two landmarks both recover the in-plane rigid part.
The paper registers 3D volumes and then slices them for its 2D models; here that is the
``volume_slices`` kind with ``DataConfig.registration`` set: each volume record is registered
in 3D before its slices are served.

Measured
--------
``spine_sagittal`` (``misalignment`` = mis.), seed 0, subjects 0..n-1, mean over subjects; Dice of ``labels_mri``
vs (registered) ``labels_ct``: bone (label > 0), body (sub 1), posterior elements (sub 2 + 3),
spinous process (sub 3); ``body`` / ``spinous``: mean distance (mm) of the CMs of the
complete vertebrae; ``fit``: mean landmark residual of the fit (mm) -- what the rigid map
cannot explain (per-vertebra motion, flexion, CM rasterisation):

===========================  ============  =====  ====  =========  =======  =======  ==========  ===========  ======
setting (subjects)           registration  bone   body  posterior  spinous  body mm  spinous mm  axial deg    fit mm
===========================  ============  =====  ====  =========  =======  =======  ==========  ===========  ======
3D 64x64x32, mis. 2.5 (24)   none          0.30   0.29  0.12       0.07     20.7     22.8        7.9          --
3D 64x64x32, mis. 2.5 (24)   one           0.65   0.78  0.30       0.16     1.7      16.8        25.2         1.7
3D 64x64x32, mis. 2.5 (24)   two           0.72   0.80  0.48       0.35     2.1      4.8         4.7          3.5
3D 64x64x32, mis. 1 (24)     none          0.53   0.57  0.31       0.30     8.3      9.1         3.2          --
3D 64x64x32, mis. 1 (24)     one           0.79   0.88  0.57       0.43     0.8      4.7         6.2          0.8
3D 64x64x32, mis. 1 (24)     two           0.84   0.88  0.72       0.66     0.9      2.1         1.9          1.5
3D 128x128x32, mis. 1 (8)    none          0.44   0.49  0.18       0.16     9.9      11.0        2.8          --
3D 128x128x32, mis. 1 (8)    one           0.77   0.89  0.49       0.32     0.8      7.7         10.6         0.8
3D 128x128x32, mis. 1 (8)    two           0.85   0.90  0.72       0.66     1.0      2.2         1.7          1.6
2D 64x64, mis. 2 (32)        none          0.40   0.40  0.33       0.33     15.8     16.0        (5.2)        --
2D 64x64, mis. 2 (32)        one           0.80   0.87  0.73       0.73     1.2      2.6         (3.0)        1.2
2D 64x64, mis. 2 (32)        two           0.81   0.87  0.74       0.74     1.3      2.4         (3.0)        1.9
===========================  ============  =====  ====  =========  =======  =======  ==========  ===========  ======

``axial deg``: rotation left per vertebra about the cranio-caudal axis (from the phantom's
``transforms``); 2D, in parentheses: the in-plane rotation left (``rotation_deg``).

So in 3D one landmark aligns the bodies (body Dice 0.29 -> 0.78, body CMs 21 -> 1.7 mm) but
not the posterior elements (spinous CMs still 17 mm apart, posterior Dice 0.30); two
landmarks bring the spinous processes to 4.8 mm (posterior Dice 0.48) at the cost of a
slightly larger body residual (the fit also weighs the posterior points). One landmark even
ADDS rotation about the cranio-caudal axis (25 deg left vs 8 deg before registration): the
body CMs lie nearly on one line, so that rotation is fitted to the few-mm sagitta of the
curve and amplifies the per-vertebra motion and CM rasterisation noise -- the paper's "the
spine could rotate around the cranio-caudal axis" (Figure 4A). Seeds 0-9 with 6 subjects at
``Sizes(48, 48, 24)``, misalignment 2.5 (the test's setting): posterior Dice two - one
0.07-0.29, spinous CM distance one - two 6.2-25 mm, axial rotation one - two 12-40 deg,
body Dice two - one -0.00-0.05. In 2D one and two landmarks are the same (no cranio-caudal
rotation to recover). Posterior Dice stays well below body Dice even with two landmarks: the
per-vertebra axial rotations (3 deg x misalignment) and the flexion, which one global rigid
map cannot undo, move the thin spinous processes by several mm at 2-6 mm voxels.

Speed (process time per subject, fit + resampling of ``ct``, ``labels_ct``, ``tissue_ct``;
in brackets the phantom's own rendering time per subject): 2D 64x64 2.5-3.2 ms (2.1 ms),
2D 256x256 3.6-4.1 ms (23 ms), 3D 48x48x24 4.4 ms (17 ms), 3D 64x64x32 7.5 ms (40 ms),
3D 128x128x32 20 ms (173 ms). The hook thus adds about 20 % to 3D loading and about doubles
the (cheap) 2D 64 px loading; records are cached after processing, so each subject is
registered once per split that fits the cache.

Limits: a subject needs at least 2 landmark pairs (else :class:`RegistrationError`; at
misalignment <= 2.5 every one of 256 subjects tried had >= 2 complete vertebrae). Coarse 3D
grids whose slice spacing exceeds the spinous process width (e.g. ``Sizes(32, 32, 8)``: 9 mm
slices) have no spinous labels at all (the phantom point-samples labels at the slice centre),
so ``complete`` is False everywhere and registration fails there; use ``depth >= 12`` at 32 px.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import SimpleITK as sitk

__all__ = ["RegistrationError", "MODES", "CT_AIR_HU", "landmark_keys", "landmarks", "fit_rigid",
           "landmark_residual", "transform_matrix", "resample_to", "register_record", "alignment_scores"]

MODES = ("one", "two")  # landmarks per vertebra: body CM; body CM + spinous-process CM
LANDMARK_NAMES = {"one": ("body_com",), "two": ("body_com", "spinous_com")}  # record keys "<name>_<frame>"
CT_AIR_HU = -1000.0  # CT value outside the moved field of view (air)
MIN_POINTS = 2  # landmark pairs per fit; with 2 (or collinear) 3D points ITK leaves the rotation about their line 0
SUB_BODY, SUB_ARCH, SUB_SPINOUS = 1, 2, 3  # label sub-values (spine_sagittal: 10 * (v + 1) + sub)


class RegistrationError(ValueError):
    """A record that cannot be registered as asked; one-line message."""


def landmark_keys(mode: str, *, reference: str = "mri", target: str = "ct") -> list[str]:
    """Record keys :func:`landmarks` needs for ``mode``: the CM arrays of both frames, ``complete``
    and ``spacing_mm``."""
    _check_mode(mode)
    return [f"{n}_{f}" for n in LANDMARK_NAMES[mode] for f in (reference, target)] + ["complete", "spacing_mm"]


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise RegistrationError(f"unknown registration mode {mode!r} (choose from {', '.join(MODES)})")


def landmarks(record: Mapping[str, Any], mode: str, *, reference: str = "mri",
              target: str = "ct") -> tuple[np.ndarray, np.ndarray]:
    """Physical landmark pairs ``(fixed [K, d], moving [K, d])`` (mm, array axis order) of a record.

    ``fixed`` from ``<name>_<reference>``, ``moving`` from ``<name>_<target>`` (pixel coordinates
    ``[V, d]``) times ``spacing_mm [d]``, over the names of ``mode`` (body CM; + spinous CM) and
    the vertebrae with ``complete [V]`` and finite points in both frames (vertebra-major order).
    """
    keys = landmark_keys(mode, reference=reference, target=target)
    missing = [k for k in keys if k not in record]
    if missing:
        raise RegistrationError(f"registration '{mode}' needs record keys {', '.join(keys)}; "
                                f"missing {', '.join(missing)}")
    spacing = np.asarray(record["spacing_mm"], dtype=np.float64)
    fixed = np.stack([np.asarray(record[f"{n}_{reference}"], np.float64) for n in LANDMARK_NAMES[mode]], 1)
    moving = np.stack([np.asarray(record[f"{n}_{target}"], np.float64) for n in LANDMARK_NAMES[mode]], 1)
    # [V, L, d] -> keep vertebrae that are complete and finite in every landmark of both frames
    ok = np.asarray(record["complete"], bool) & np.isfinite(fixed).all((1, 2)) & np.isfinite(moving).all((1, 2))
    d = spacing.shape[-1]
    return (fixed[ok] * spacing).reshape(-1, d), (moving[ok] * spacing).reshape(-1, d)


def _sitk_points(points: np.ndarray) -> np.ndarray:
    """Array axis order ``(slice, row, col)`` -> SimpleITK's ``(x, y, z) = (col, row, slice)``."""
    return np.asarray(points, dtype=np.float64)[..., ::-1]


def fit_rigid(fixed: np.ndarray, moving: np.ndarray) -> sitk.Transform:
    """Least-squares rigid transform mapping ``fixed [K, d]`` onto ``moving [K, d]`` (mm, array axis order).

    :func:`SimpleITK.LandmarkBasedTransformInitializer` with ``VersorRigid3DTransform`` (d = 3)
    or ``Euler2DTransform`` (d = 2), centred on the fixed centroid. The result maps points of
    the fixed frame (in SimpleITK's reversed axis order) to the moving frame.
    """
    fixed, moving = np.asarray(fixed, np.float64), np.asarray(moving, np.float64)
    if fixed.ndim != 2 or fixed.shape != moving.shape or fixed.shape[1] not in (2, 3):
        raise RegistrationError(f"fit_rigid needs fixed and moving points [K, 2|3] of one shape, "
                                f"got {fixed.shape} and {moving.shape}")
    d = fixed.shape[1]
    if len(fixed) < MIN_POINTS:
        raise RegistrationError(f"fit_rigid needs at least {MIN_POINTS} landmark pairs, got {len(fixed)}")
    tx = sitk.VersorRigid3DTransform() if d == 3 else sitk.Euler2DTransform()
    out = sitk.LandmarkBasedTransformInitializer(tx, _sitk_points(fixed).ravel().tolist(),
                                                 _sitk_points(moving).ravel().tolist())
    return sitk.VersorRigid3DTransform(out) if d == 3 else sitk.Euler2DTransform(out)


def landmark_residual(transform: sitk.Transform, fixed: np.ndarray, moving: np.ndarray) -> np.ndarray:
    """Distance ``[K]`` (mm) between ``transform(fixed)`` and ``moving`` (points ``[K, d]``, array axis order)."""
    d = np.shape(fixed)[1]
    mapped = np.array([transform.TransformPoint(p) for p in _sitk_points(fixed).tolist()]).reshape(-1, d)
    return np.linalg.norm(mapped - _sitk_points(moving), axis=1)


def transform_matrix(transform: sitk.Transform, d: int) -> np.ndarray:
    """Homogeneous matrix ``[d+1, d+1]`` of a SimpleITK rigid transform in array axis order (mm).

    SimpleITK: ``T(p) = R (p - c) + c + t``; in array order (axes reversed by the permutation
    ``P``): ``R' = P R P``, ``t' = P (c + t - R c)``.
    """
    r = np.array(transform.GetMatrix()).reshape(d, d)
    c, t = np.array(transform.GetCenter()), np.array(transform.GetTranslation())
    perm = np.eye(d)[::-1]
    m = np.eye(d + 1)
    m[:d, :d] = perm @ r @ perm
    m[:d, d] = perm @ (c + t - r @ c)
    return m


def resample_to(image: np.ndarray, transform: sitk.Transform, spacing: np.ndarray | tuple[float, ...], *,
                default: float, nearest: bool) -> np.ndarray:
    """``image [D, H, W] | [H, W]`` (moving frame) resampled onto the same grid through ``transform``
    (fixed -> moving, mm): ``out[p] = image(transform(p))``. Linear (``nearest=False``) or
    nearest-neighbour interpolation; ``default`` outside the image. Same dtype as ``image``."""
    arr = np.asarray(image)
    if arr.ndim not in (2, 3) or len(spacing) != arr.ndim:
        raise RegistrationError(f"resample_to needs a 2D or 3D image and one spacing per axis, "
                                f"got shape {arr.shape} and spacing {tuple(spacing)}")
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing([float(s) for s in np.asarray(spacing, np.float64)[::-1]])
    interp = sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear
    out = sitk.Resample(img, img, transform, interp, float(default), img.GetPixelID())
    return sitk.GetArrayFromImage(out).astype(arr.dtype, copy=False)


def _moved_keys(record: Mapping[str, Any], target: str) -> list[str]:
    """Image-shaped arrays of the target frame: ``target`` itself and ``*_<target>`` of its shape."""
    shape = np.shape(record[target])
    return [k for k, v in record.items() if (k == target or k.endswith(f"_{target}")) and isinstance(v, np.ndarray)
            and v.shape == shape]


def register_record(record: Mapping[str, Any], mode: str, *, reference: str = "mri",
                    target: str = "ct") -> dict[str, Any]:
    """A new record with the target frame (CT) rigidly moved onto the reference frame (MRI).

    Resampled (:func:`resample_to`): ``target`` (linear, :data:`CT_AIR_HU` outside) and every
    array ``*_<target>`` of its shape (integer: nearest, 0 outside; float: linear, 0 outside),
    i.e. ``ct``, ``labels_ct``, ``tissue_ct``. Moved: the target landmark arrays
    ``<name>_<target> [V, d]`` (pixel coordinates, through the inverse map) and, when present,
    the phantom's per-vertebra ``transforms [V, d+1, d+1]`` (MRI pixel -> registered CT pixel:
    what is left after the registration). Added: ``registration_residual_mm`` (mean landmark
    residual of the fit, float), ``registration_parameters`` (SimpleITK parameters: versor and
    translation in 3D, angle and translation in 2D; mm, SimpleITK's x, y, z axis order) and
    ``registration_center_mm`` (the rotation centre, same order). Other keys are kept.
    """
    _check_mode(mode)
    if target not in record:
        raise RegistrationError(f"registration '{mode}' needs the record key '{target}' (the image to move)")
    fixed, moving = landmarks(record, mode, reference=reference, target=target)
    tx = fit_rigid(fixed, moving)
    spacing = np.asarray(record["spacing_mm"], np.float64)
    d = len(spacing)
    out = dict(record)
    for key in _moved_keys(record, target):
        arr = np.asarray(record[key])
        integer = arr.dtype.kind in "iub"
        default = 0.0 if key != target else CT_AIR_HU
        out[key] = resample_to(arr, tx, spacing, default=default, nearest=integer)
    # pixel map fixed -> moving: M_pix = S^-1 M_mm S; target points move by its inverse
    scale = np.diag(np.append(spacing, 1.0))
    m_pix = np.linalg.inv(scale) @ transform_matrix(tx, d) @ scale
    inv = np.linalg.inv(m_pix)
    for name in LANDMARK_NAMES["two"]:
        key = f"{name}_{target}"
        if key in record:
            pts = np.asarray(record[key])
            out[key] = (pts.astype(np.float64) @ inv[:d, :d].T + inv[:d, d]).astype(pts.dtype)
    if "transforms" in record and np.shape(record["transforms"])[-2:] == (d + 1, d + 1):
        out["transforms"] = inv @ np.asarray(record["transforms"], np.float64)
    out["registration_residual_mm"] = float(landmark_residual(tx, fixed, moving).mean())
    out["registration_parameters"] = np.array(tx.GetParameters(), np.float64)
    out["registration_center_mm"] = np.array(tx.GetCenter(), np.float64)
    return out


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two boolean masks; NaN when both are empty. (NumPy: one line, and it avoids the 10 s
    MONAI import of :mod:`medgen.metrics.segmentation` on the data path.)"""
    total = int(a.sum()) + int(b.sum())
    return 2.0 * float(np.logical_and(a, b).sum()) / total if total else float("nan")


def alignment_scores(record: Mapping[str, Any], *, reference: str = "mri", target: str = "ct") -> dict[str, float]:
    """How well the target frame's vertebrae sit on the reference frame's, for one record.

    ``dice_bone`` (any label > 0), ``dice_body`` (sub 1), ``dice_posterior`` (sub 2 arch and 3
    spinous process), ``dice_spinous`` (sub 3) between ``labels_<reference>`` and
    ``labels_<target>``; ``body_mm`` / ``spinous_mm``: mean distance (mm) between the CMs of
    the ``complete`` vertebrae in the two frames; with the phantom's ``transforms``:
    ``rotation_deg`` / ``axial_deg`` (3D), the rotation left per vertebra (:func:`_residual_rotation`).
    """
    a, b = np.asarray(record[f"labels_{reference}"]), np.asarray(record[f"labels_{target}"])
    sub_a, sub_b = a % 10, b % 10
    out = {"dice_bone": _dice(a > 0, b > 0)}
    for name, subs in (("body", (SUB_BODY,)), ("posterior", (SUB_ARCH, SUB_SPINOUS)), ("spinous", (SUB_SPINOUS,))):
        out[f"dice_{name}"] = _dice((a > 0) & np.isin(sub_a, subs), (b > 0) & np.isin(sub_b, subs))
    spacing, ok = np.asarray(record["spacing_mm"], np.float64), np.asarray(record["complete"], bool)
    for name in LANDMARK_NAMES["two"]:
        diff = (np.asarray(record[f"{name}_{reference}"], np.float64) - record[f"{name}_{target}"]) * spacing
        out[f"{name.split('_')[0]}_mm"] = float(np.linalg.norm(diff[ok], axis=1).mean()) if ok.any() else float("nan")
    out.update(_residual_rotation(record, ok, spacing))
    return out


def _residual_rotation(record: Mapping[str, Any], ok: np.ndarray, spacing: np.ndarray) -> dict[str, float]:
    """Mean over the ``complete`` vertebrae of the rotation left between the frames, from the phantom's
    per-vertebra maps ``transforms [V, d+1, d+1]`` (pixel; in mm ``S M S^-1``): ``rotation_deg`` (whole
    angle) and, in 3D, ``axial_deg`` (|component about the cranio-caudal (row) axis|). {} without them."""
    from scipy.spatial.transform import Rotation

    d = len(spacing)
    t = np.asarray(record.get("transforms", np.zeros((0, 0, 0))))
    if t.shape[-2:] != (d + 1, d + 1) or not ok.any():
        return {}
    r = (spacing[:, None] * t[ok][:, :d, :d]) / spacing[None, :]  # rotation part of S M S^-1
    if d == 2:
        return {"rotation_deg": float(np.degrees(np.abs(np.arctan2(r[:, 1, 0], r[:, 0, 0]))).mean())}
    rotvec = Rotation.from_matrix(r).as_rotvec(degrees=True)  # array axes (slice, row, col) = world (x, y, z)
    return {"rotation_deg": float(np.linalg.norm(rotvec, axis=1).mean()),
            "axial_deg": float(np.abs(rotvec[:, 1]).mean())}

"""Rigid landmark registration of CT onto MRI (the MRI->CT spine paper's preprocessing).

The paper ("Image preprocessing", "Influence of Rigid Registration", Figure 4) rigidly
registers every CT onto its MRI from landmark pairs: the centre of mass (CM) of each
vertebral body ("one" landmark per vertebra) or the body CM plus the spinous-process CM
("two"). One body point per vertebra leaves the rotation about the cranio-caudal axis nearly
free (the body centres lie on one curve); the spinous CM, 30-50 mm behind the body, fixes it.

* :func:`landmarks` -- physical points (pixel coordinates times ``spacing_mm``, array axis
  order ``(row, col)`` / ``(slice, row, col)``) of the vertebrae marked ``complete``:
  fixed = MRI (``*_mri``), moving = CT (``*_ct``).
* :func:`fit_rigid` -- :func:`SimpleITK.LandmarkBasedTransformInitializer` (closed-form least
  squares) with a ``VersorRigid3DTransform`` (3D) or ``Euler2DTransform`` (2D). The transform
  maps fixed (MRI) points to moving (CT) points, which is what :func:`SimpleITK.Resample` needs.
* :func:`resample_to` -- :func:`SimpleITK.Resample` on the image's own grid: linear for CT
  (outside: -1000 HU, air), nearest neighbour for label maps (outside: 0).
* :func:`register_record` -- the whole step on one per-subject record (what the dataset hook
  ``DataConfig.registration`` runs, :mod:`medgen.data.datasets`).
* :func:`alignment_scores` -- Dice of MRI vs CT label maps (bone, body, posterior elements)
  and landmark distances in mm.

Choice (the paper's): ONE global rigid transform per subject, fitted to all landmark pairs of
the ``complete`` vertebrae (a cut label has a biased CM); the MRI frame is never moved. The
phantom's per-vertebra motion and CT flexion are what no single rigid map undoes; a
per-vertebra or deformable registration (the paper's future work) is not done.

2D and 3D both work. The 1-vs-2-landmark comparison is a 3D experiment: the 2D phantom only
has in-plane motion, so in 2D one and two landmarks both recover the in-plane rigid part. As
the paper registers volumes and then slices them, the ``volume_slices`` kind with
``DataConfig.registration`` registers each volume in 3D before serving its slices.

Limits: a subject needs at least 2 landmark pairs (else :class:`RegistrationError`). 3D grids
whose slice spacing exceeds the spinous process width (e.g. ``Sizes(32, 32, 8)``: 9 mm slices)
have no spinous labels, so no vertebra is ``complete`` and registration fails; use
``depth >= 12`` at 32 px.

Paper-faithfulness notes and the measured alignment (Dice and landmark distances for none /
one / two landmarks, speed): docs/paper_notes.md#registration
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

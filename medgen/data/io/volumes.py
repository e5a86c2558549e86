"""Medical images in physical units: :func:`read_volume` (NIfTI, DICOM, ``.npy``, 2D pictures)
and :func:`write_volume` (NIfTI).

:func:`read_volume` returns a frozen :class:`~medgen.data.io.common.Volume` (float32 ``[D, H, W]``
or ``[H, W]`` in physical units, spacing in mm per array axis, ``[4, 4]`` affine in NIfTI's
``(i, j, k)`` = reversed array order, unit, modality, notes; the fields are described there).

=============================  ==========================================================
input                          result
=============================  ==========================================================
NIfTI ``.nii`` / ``.nii.gz``   nibabel; values with ``scl_slope/scl_inter`` applied; NIfTI's
                               ``(i, j, k)`` array transposed to ``[k, j, i]`` = ``[D, H, W]``
                               (2D: ``(i, j)`` -> ``[H, W]``); spacing = header zooms reversed;
                               unit from the ``descrip`` field :func:`write_volume` fills
                               (``medgen unit=HU``), else ``"a.u."``. Trailing axes of length 1
                               beyond the third are squeezed; a real 4D series is rejected.
DICOM file (``.dcm``, or any   pydicom; one frame -> ``[H, W]``, multi-frame -> ``[D, H, W]``
file with the ``DICM`` magic)  (enhanced multi-frame: slope, spacing and positions from the
                               functional groups)
DICOM folder                   every non-hidden file except ``DICOMDIR`` is one single-frame
                               slice of one series; slices sorted by their position along the
                               slice normal (ImagePositionPatient . (row x column cosines)),
                               else by InstanceNumber (with a note); -> ``[D, H, W]``
``.npy``                       2D or 3D numeric array as float32, spacing 1 mm, ``"a.u."``
PNG / TIFF / JPEG              :func:`read_image`, unit ``"[0,1]"``, spacing 1 mm
=============================  ==========================================================

DICOM values (HU, a.u. or [0, 1] by modality), spacing and affine: :mod:`medgen.data.io.dicom`.

Rejected with a one-line :class:`ImageReadError` naming the file: missing, unsupported type,
empty, over ``max_bytes`` (per file) or over ``max_voxels``, not a NIfTI / DICOM / npy file,
truncated or unreadable (pydicom's ``MR_truncated.dcm``), DICOM without pixel data, a
compressed transfer syntax without an installed decoder (the message names the syntax),
NaN / Inf, wrong dimensionality, and a DICOM folder with mixed slice sizes, several series,
multi-frame files or two slices at one position.

:func:`write_volume` writes NIfTI float32 (int16 for integer label maps) to a temporary name and
renames it, so no reader ever sees half a file.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Sequence

import numpy as np

from medgen.data.io.common import (DICOM_SUFFIXES, MAX_VOLUME_BYTES, MAX_VOXELS, NIFTI_SUFFIXES, NPY_SUFFIXES,
                                   PIL_SUFFIXES, UNITS, VOLUME_SUFFIXES, ImageReadError, Volume, _check_file,
                                   _check_finite, _check_ndim, _check_voxels, _first_line, _note, _npy_header,
                                   atomic_path)
from medgen.data.io.dicom import _read_dicom_file, _read_dicom_folder
from medgen.data.io.images import read_image

_DESCRIP = re.compile(r"medgen unit=([^\s\x00]+)")  # what write_volume puts in the NIfTI descrip field


def read_volume(
    path: str | os.PathLike,
    *,
    max_bytes: int = MAX_VOLUME_BYTES,
    max_voxels: int = MAX_VOXELS,
    notes: list[str] | None = None,
) -> Volume:
    """Read a NIfTI / DICOM file, a DICOM folder, a ``.npy`` array or a 2D picture as a :class:`Volume`.

    Returns float32 ``[D, H, W]`` or ``[H, W]`` in physical units with spacing (mm per axis),
    affine and unit (module docstring). ``max_bytes`` limits each file, ``max_voxels`` the
    image. Conversion notes go to ``notes`` (a list) or are warned; they are also kept in
    ``Volume.notes``. Raises :class:`ImageReadError` (one line naming the file).
    """
    path = Path(path)
    collected: list[str] = []
    if path.is_dir():
        vol = _read_dicom_folder(path, max_bytes, max_voxels, collected)
    else:
        _check_file(path, max_bytes, suffixes=None)
        reader = {"nifti": _read_nifti, "dicom": _read_dicom_file, "npy": _read_npy_volume,
                  "picture": _read_picture}[_volume_kind(path)]
        vol = reader(path, max_voxels, collected)
    _check_finite(vol.array, path.name)
    for text in collected:
        _note(notes, text, stacklevel=3)  # attributed to read_volume's caller
    return Volume(vol.array, vol.spacing, vol.affine, vol.unit, vol.modality, tuple(collected))


def _volume_kind(path: Path) -> str:
    """Which reader handles ``path``: by extension, else by the DICOM ``DICM`` marker."""
    name = path.name.lower()
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if path.suffix.lower() in NPY_SUFFIXES:
        return "npy"
    if path.suffix.lower() in PIL_SUFFIXES:
        return "picture"
    if path.suffix.lower() in DICOM_SUFFIXES or _has_dicm_marker(path):
        return "dicom"
    raise ImageReadError(f"{path.name}: unsupported file type '{path.suffix or '(none)'}' "
                         f"(use {', '.join(VOLUME_SUFFIXES)} or a folder of DICOM slices)")


def _has_dicm_marker(path: Path) -> bool:
    """True when bytes 128-131 read ``DICM`` (the DICOM Part 10 preamble marker)."""
    with open(path, "rb") as fh:
        fh.seek(128)
        return fh.read(4) == b"DICM"


def _read_picture(path: Path, max_voxels: int, notes: list[str]) -> Volume:
    """PNG / TIFF / JPEG through :func:`read_image`: ``[H, W]`` in [0, 1], spacing 1 mm."""
    arr = read_image(path, max_pixels=max_voxels, max_bytes=2**62, notes=notes)
    return Volume(arr, (1.0, 1.0), None, "[0,1]")


def _read_npy_volume(path: Path, max_voxels: int, notes: list[str]) -> Volume:
    """A 2D / 3D numeric ``.npy`` array as float32 (unit ``a.u.``, spacing 1 mm); never unpickles."""
    shape, dtype = _npy_header(path)
    if dtype.hasobject:
        raise ImageReadError(f"{path.name}: object arrays are not supported (no pickles)")
    if dtype.kind not in "iuf":
        raise ImageReadError(f"{path.name}: unsupported dtype {dtype} for an image (use integers or floats)")
    _check_ndim(shape, path.name)
    _check_voxels(shape, path.name, max_voxels)
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ImageReadError(f"{path.name}: unreadable or truncated .npy file ({_first_line(exc)})") from None
    return Volume(arr.astype(np.float32), (1.0,) * arr.ndim, None, "a.u.")


# -- NIfTI ------------------------------------------------------------------------------
def _check_nifti_magic(path: Path) -> None:
    """Cheap signature check so a renamed text file says 'not a NIfTI file' rather than a nibabel trace."""
    with open(path, "rb") as fh:
        head = fh.read(352)
    if path.name.lower().endswith(".gz"):
        if head[:2] != b"\x1f\x8b":
            raise ImageReadError(f"{path.name}: not a NIfTI file (not gzip-compressed)")
        return
    sizes = {int.from_bytes(head[:4], "little"), int.from_bytes(head[:4], "big")}
    if not sizes & {348, 540}:  # sizeof_hdr of NIfTI-1 / NIfTI-2
        raise ImageReadError(f"{path.name}: not a NIfTI file (no NIfTI header)")
    if len(head) < 348:
        raise ImageReadError(f"{path.name}: truncated NIfTI header ({len(head)} bytes)")


def _read_nifti(path: Path, max_voxels: int, notes: list[str]) -> Volume:
    """NIfTI -> ``[D, H, W]`` / ``[H, W]`` (NIfTI's ``(i, j, k)`` reversed), zooms reversed, affine kept."""
    import nibabel as nib

    _check_nifti_magic(path)
    try:
        img = nib.load(str(path))
        shape = tuple(int(n) for n in img.shape)
    except Exception as exc:  # nibabel raises many types for bad headers
        raise ImageReadError(f"{path.name}: unreadable or truncated NIfTI file ({_first_line(exc)})") from None
    while len(shape) > 3 and shape[-1] == 1:  # [x, y, z, 1] -> [x, y, z]
        shape = shape[:-1]
    _check_ndim(shape, path.name)
    _check_voxels(shape, path.name, max_voxels)
    try:
        data = np.asarray(img.get_fdata(dtype=np.float32)).reshape(shape)
    except Exception as exc:  # truncated gzip streams raise EOFError / zlib.error / OSError ...
        raise ImageReadError(f"{path.name}: unreadable or truncated NIfTI data ({_first_line(exc)})") from None
    zooms = img.header.get_zooms()[: len(shape)]
    unit_match = _DESCRIP.search(np.asarray(img.header["descrip"]).item().decode("latin-1", "replace"))
    unit = unit_match.group(1) if unit_match and unit_match.group(1) in UNITS else "a.u."
    return Volume(np.ascontiguousarray(data.T), tuple(float(z) for z in reversed(zooms)),
                  np.asarray(img.affine, dtype=np.float64), unit)


def write_volume(
    path: str | os.PathLike,
    array: np.ndarray,
    *,
    spacing: Sequence[float] | None = None,
    affine: np.ndarray | None = None,
    unit: str | None = None,
) -> Path:
    """Write ``[D, H, W]`` or ``[H, W]`` as NIfTI (``.nii`` / ``.nii.gz``), atomically.

    Float arrays are stored as float32; integer / bool arrays (label maps) as int16.
    ``spacing`` is mm per array axis (default 1 mm); ``affine`` a ``[4, 4]`` voxel -> RAS
    matrix in NIfTI's ``(i, j, k) = (w, h, d)`` order (default ``diag(dx, dy, dz, 1)``);
    given both, they must agree. ``unit`` ("HU", "a.u." or "[0,1]") is recorded in the header
    so :func:`read_volume` returns it. NIfTI keeps spacing and affine as float32.
    """
    import nibabel as nib

    path = Path(path)
    name = path.name
    if not name.lower().endswith(NIFTI_SUFFIXES):
        raise ValueError(f"{name}: write_volume writes NIfTI only (use .nii or .nii.gz)")
    data, dtype = _nifti_data(np.asarray(array), name)
    zooms = _nifti_zooms(data.ndim, spacing, affine, name)
    aff = np.diag([*zooms, *([1.0] * (4 - len(zooms)))]) if affine is None else np.asarray(affine, np.float64)
    if unit is not None and unit not in UNITS:
        raise ValueError(f"{name}: unit must be one of {', '.join(UNITS)}, got {unit!r}")
    img = nib.Nifti1Image(data.T, aff)  # NIfTI (i, j, k) = reversed array axes
    img.header.set_data_dtype(dtype)
    img.header.set_zooms(zooms)
    img.header["descrip"] = f"medgen unit={unit}".encode() if unit else b""
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
    return path


def _nifti_data(arr: np.ndarray, name: str) -> tuple[np.ndarray, type]:
    """Check a 2D / 3D array to write: float -> float32 (finite), int / bool -> int16 (in range)."""
    if arr.ndim not in (2, 3) or arr.size == 0:
        raise ValueError(f"{name}: expected a non-empty 2D [H, W] or 3D [D, H, W] array, got shape {arr.shape}")
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all():
            raise ValueError(f"{name}: array contains NaN or Inf values")
        return arr.astype(np.float32), np.float32
    if arr.dtype.kind in "biu":
        lo, hi = int(arr.min()), int(arr.max())
        if lo < -32768 or hi > 32767:
            raise ValueError(f"{name}: label values span [{lo}, {hi}], outside int16")
        return arr.astype(np.int16), np.int16
    raise ValueError(f"{name}: cannot write dtype {arr.dtype} (use float or integer arrays)")


def _nifti_zooms(ndim: int, spacing: Sequence[float] | None, affine: np.ndarray | None,
                 name: str) -> tuple[float, ...]:
    """NIfTI zooms in ``(i, j, k)`` order from ``spacing`` (array order) and / or ``affine``."""
    from_affine = None
    if affine is not None:
        aff = np.asarray(affine, dtype=np.float64)
        if aff.shape != (4, 4) or not np.isfinite(aff).all():
            raise ValueError(f"{name}: affine must be a finite 4x4 matrix, got shape {aff.shape}")
        from_affine = tuple(float(v) for v in np.linalg.norm(aff[:3, :ndim], axis=0))
    if spacing is None:
        return from_affine or (1.0,) * ndim
    zooms = tuple(float(s) for s in reversed(tuple(spacing)))
    if len(zooms) != ndim or not all(np.isfinite(z) and z > 0 for z in zooms):
        raise ValueError(f"{name}: spacing must hold {ndim} positive values (mm per array axis), got {spacing}")
    if from_affine is not None and not np.allclose(zooms, from_affine, rtol=1e-5):
        raise ValueError(f"{name}: spacing {tuple(spacing)} disagrees with the affine's voxel sizes "
                         f"{tuple(reversed(from_affine))}")
    return zooms

"""One 2D image in [0, 1] from any supported file: the ``medgen sample`` input and the MRI->CT demo's upload.

2D pictures are read as they are; NIfTI / DICOM go through :func:`~medgen.data.io.read_volume`,
a 3D volume gives its middle sagittal slice turned to the phantoms' view, and physical units
are mapped onto [0, 1] by fixed rules (HU) or the paper's MRI rescale (arbitrary units).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from medgen.data.io.common import MAX_BYTES, MAX_VOLUME_BYTES, MAX_VOXELS, SUFFIXES, ImageReadError, Volume
from medgen.data.io.images import read_image, validate_array
from medgen.data.io.volumes import read_volume

PLANES = ("sagittal", "coronal", "axial")  # slice planes by the RAS axis of the slice normal (x, y, z)


def read_sample_input(path: str | os.PathLike, *, notes: list[str],
                      max_bytes: int | None = None, max_voxels: int | None = None) -> np.ndarray:
    """The ``sample`` input as float32 ``[H, W]`` in [0, 1] (model range is ``2 * x - 1``).

    * PNG / TIFF / JPEG / ``.npy``: :func:`~medgen.data.io.read_image` (2D, unchanged rules).
    * NIfTI (``.nii``, ``.nii.gz``), DICOM (``.dcm`` or the ``DICM`` marker) or a DICOM
      folder: :func:`~medgen.data.io.read_volume`; a 3D volume gives its middle sagittal slice
      and every image is turned to the phantoms' view (:func:`sagittal_view`); then values:
      ``a.u.`` (MRI) rescaled linearly ``[0, max] -> [0, 1]`` with ``max`` the volume's
      maximum -- the paper's MRI normalisation (the phantom's fixed a.u. map cannot apply:
      scanner units are arbitrary), negative values clipped to 0; ``HU`` by the phantom's
      fixed CT map ``(HU / 1000 + 1) / 2`` clipped; ``[0,1]`` kept.

    Every conversion adds a one-line note to ``notes``. ``max_bytes`` / ``max_voxels``
    default to read_image's / read_volume's limits. Raises
    :class:`~medgen.data.io.ImageReadError` (one line naming the file).
    """
    path = Path(path)
    if not path.is_dir() and path.suffix.lower() in SUFFIXES:
        return read_image(path, max_bytes=max_bytes or MAX_BYTES, notes=notes)
    vol = read_volume(path, max_bytes=max_bytes or MAX_VOLUME_BYTES, max_voxels=max_voxels or MAX_VOXELS,
                      notes=notes)
    image = sagittal_view(vol, path.name, notes)
    return validate_array(_unit_range(image, vol, path.name, notes), path.name, notes=notes)


def _axis_directions(vol: Volume) -> list[np.ndarray | None]:
    """RAS direction ``[3]`` of each array axis of ``vol`` (``affine`` columns reversed), or Nones."""
    if vol.affine is None:
        return [None] * vol.array.ndim
    cols = [vol.affine[:3, i] for i in range(3)]  # (w, h, d) order
    return [cols[2], cols[1], cols[0]][-vol.array.ndim:] if vol.array.ndim == 3 else [cols[1], cols[0]]


def sagittal_view(vol: Volume, name: str, notes: list[str]) -> np.ndarray:
    """``[H, W]`` of ``vol``: the middle sagittal slice of a 3D volume, shown as the phantoms are.

    3D: the array axis closest to left-right (RAS x) is sliced in its middle; without an
    affine the first axis is (said in a note). With an affine the slice is transposed /
    flipped so that rows run superior -> inferior and columns anterior -> posterior (the
    ``spine_sagittal`` view); a non-sagittal 2D slice is kept as stored, with a note.
    """
    arr, dirs = vol.array, _axis_directions(vol)
    if arr.ndim == 3:
        if dirs[0] is None:
            axis = 0
            notes.append(f"{name}: 3D volume {tuple(arr.shape)} without orientation; the middle slice along "
                         "the first axis is taken as sagittal")
        else:
            axis = int(np.argmax([abs(d[0]) / (np.linalg.norm(d) or 1.0) for d in dirs]))
            notes.append(f"{name}: 3D volume {tuple(arr.shape)}; middle sagittal slice {arr.shape[axis] // 2} of "
                         f"{arr.shape[axis]} (array axis {axis}, left-right) used")
        arr = np.take(arr, arr.shape[axis] // 2, axis=axis)
        dirs = [d for i, d in enumerate(dirs) if i != axis]
        normal = vol.affine[:3, 2 - axis] if vol.affine is not None else None
    else:
        normal = vol.affine[:3, 2] if vol.affine is not None else None  # the slice normal (k column)
    if normal is None:
        return arr
    plane = PLANES[int(np.argmax(np.abs(normal)))]
    if plane != "sagittal":
        notes.append(f"{name}: {plane} slice, not sagittal; used as stored")
        return arr
    rows, cols = dirs
    if abs(rows[2]) < abs(cols[2]):  # rows must run cranio-caudally (RAS z)
        arr, (rows, cols) = arr.T, (cols, rows)
    flips = [rows[2] > 0, cols[1] > 0]  # superior up (z decreasing downwards), anterior left (y decreasing)
    arr = arr[::-1 if flips[0] else 1, ::-1 if flips[1] else 1]
    return np.ascontiguousarray(arr)


def _unit_range(image: np.ndarray, vol: Volume, name: str, notes: list[str]) -> np.ndarray:
    """Physical units of ``vol`` -> [0, 1] (see :func:`read_sample_input`)."""
    if vol.unit == "HU":
        notes.append(f"{name}: CT in HU mapped by the phantoms' fixed CT map (HU / 1000 + 1) / 2, clipped to [0, 1]")
        return np.clip((image / 1000.0 + 1.0) / 2.0, 0.0, 1.0).astype(np.float32)
    if vol.unit != "a.u.":
        return np.clip(image, 0.0, 1.0).astype(np.float32)
    top = float(vol.array.max())
    if not top > 0:
        raise ImageReadError(f"{name}: no positive values (max {top:.4g}); cannot rescale [0, max] -> [0, 1]")
    if float(image.min()) < 0:
        notes.append(f"{name}: negative values clipped to 0")
    notes.append(f"{name}: {vol.modality or 'image'} in arbitrary units rescaled linearly [0, {top:.4g}] -> [0, 1] "
                 "(the paper's MRI normalisation; max of the whole volume)")
    return np.clip(image / top, 0.0, 1.0).astype(np.float32)

"""One 2D image in [0, 1] from any supported file: the ``medgen sample`` input and the MRI->CT demo's upload.

2D pictures are read as they are; NIfTI / DICOM go through :func:`~medgen.data.io.read_volume`,
a 3D volume gives its middle sagittal slice turned to the phantoms' view, and physical units
are mapped onto [0, 1] by fixed rules (HU) or the paper's MRI rescale (arbitrary units).
:func:`read_sample_stack` reads the ``[K, H, W]`` input of a model whose source has ``K``
channels (the five ultrasound depths): ``K`` files, or one ``.npy`` stack.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from medgen.data.io.common import (MAX_BYTES, MAX_PIXELS, MAX_VOLUME_BYTES, MAX_VOXELS, NPY_SUFFIXES, SUFFIXES,
                                   ImageReadError, Volume, _check_file, _npy_header)
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


def read_sample_stack(paths: str | os.PathLike | Sequence[str | os.PathLike], channels: int, *, notes: list[str],
                      max_bytes: int | None = None, max_voxels: int | None = None) -> np.ndarray:
    """The input of a model whose source has ``channels`` channels: float32 ``[channels, H, W]`` in [0, 1].

    ``paths``: ``channels`` files, one per channel in order, each read by :func:`read_sample_input`
    (any format it takes; all the same size); or one ``.npy`` file holding a ``[channels, H, W]``
    stack (uint8, uint16 or float in [0, 1]; every slice checked like a 2D image). A number of
    images that differs from ``channels`` is a one-line :class:`~medgen.data.io.ImageReadError`
    naming both numbers, as is a stack of images of different sizes.
    """
    paths = [Path(paths)] if isinstance(paths, (str, os.PathLike)) else [Path(p) for p in paths]
    if channels < 1:
        raise ValueError(f"read_sample_stack: channels must be >= 1, got {channels}")
    if not paths:
        raise ImageReadError(f"no source image given; the model's source has {channels} channel(s)")
    if len(paths) == 1 and paths[0].suffix.lower() in NPY_SUFFIXES and paths[0].is_file():
        stack = _npy_stack(paths[0], channels, max_bytes or MAX_BYTES, notes)
        if stack is not None:
            return stack
    if len(paths) != channels:
        names = ", ".join(p.name for p in paths)
        raise ImageReadError(f"got {len(paths)} source image(s) ({names}) but the model's source has {channels} "
                             f"channels; give one image per channel, in order, or one .npy [{channels}, H, W]")
    images = [read_sample_input(p, notes=notes, max_bytes=max_bytes, max_voxels=max_voxels) for p in paths]
    for p, image in zip(paths[1:], images[1:]):
        if image.shape != images[0].shape:
            raise ImageReadError(f"{p.name} is {image.shape[0]}x{image.shape[1]} but {paths[0].name} is "
                                 f"{images[0].shape[0]}x{images[0].shape[1]}; the images of a stack must have one size")
    return np.stack(images).astype(np.float32)


def _npy_stack(path: Path, channels: int, max_bytes: int, notes: list[str]) -> np.ndarray | None:
    """``[K, H, W]`` of a ``.npy`` stack with ``K == channels > 1``; None for a 2D image (read it as
    one); a one-line error for a stack of another ``K``."""
    _check_file(path, max_bytes, NPY_SUFFIXES)
    shape, dtype = _npy_header(path)
    is_stack = len(shape) == 3 and shape[0] > 1 and not (shape[-1] in (1, 3, 4) and shape[0] != channels)
    if not is_stack:
        return None
    if shape[0] != channels:
        raise ImageReadError(f"{path.name} holds a stack of {shape[0]} images {list(shape)} but the model's source "
                             f"has {channels} channels")
    if dtype.hasobject:
        raise ImageReadError(f"{path.name}: object arrays are not supported (no pickles)")
    if shape[1] * shape[2] > MAX_PIXELS:
        raise ImageReadError(f"{path.name}: images too large ({shape[2]}x{shape[1]}; limit {MAX_PIXELS:,} pixels)")
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ImageReadError(f"{path.name}: unreadable or truncated .npy file ({' '.join(str(exc).split())})") from None
    return np.stack([validate_array(a, f"{path.name}[{i}]", notes=notes) for i, a in enumerate(arr)])


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

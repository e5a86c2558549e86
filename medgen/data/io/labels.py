"""Integer label images (segmentations): :func:`write_labels` / :func:`read_labels`.

2D ``[H, W]`` label maps are stored as 8-bit PNG (16-bit when a label exceeds 255), 3D
``[D, H, W]`` (or 2D) ones as int16 NIfTI; reading takes the values as stored, never scaled.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from medgen.data.io.common import (MAX_VOLUME_BYTES, MAX_VOXELS, NIFTI_SUFFIXES, ImageReadError, _check_file,
                                   _check_finite, _check_ndim, _first_line, _npy_header, atomic_path)
from medgen.data.io.images import _check_size
from medgen.data.io.volumes import _read_nifti, _read_npy_volume, _volume_kind, write_volume


def write_labels(path: str | os.PathLike, labels: np.ndarray) -> Path:
    """Write an integer label image atomically: ``[H, W]`` -> 8-bit PNG (16-bit when a label
    exceeds 255), ``[D, H, W]`` or ``[H, W]`` -> int16 NIfTI (``.nii`` / ``.nii.gz``)."""
    path = Path(path)
    arr = np.asarray(labels)
    if arr.dtype.kind not in "biu":
        raise ValueError(f"{path.name}: label images must be integer or bool, got {arr.dtype}")
    if path.name.lower().endswith(NIFTI_SUFFIXES):
        return write_volume(path, arr)
    if path.suffix.lower() != ".png":
        raise ValueError(f"{path.name}: cannot write labels as '{path.suffix or '(none)'}' (use .png or .nii.gz)")
    if arr.ndim != 2 or arr.size == 0:
        raise ValueError(f"{path.name}: a PNG label image must be 2D [H, W], got shape {arr.shape}")
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi > 65535:
        raise ValueError(f"{path.name}: PNG labels must lie in 0..65535, got [{lo}, {hi}]")
    with atomic_path(path) as tmp:
        Image.fromarray(arr.astype(np.uint8 if hi <= 255 else np.uint16)).save(tmp, format="PNG")
    return path


def read_labels(path: str | os.PathLike, *, max_bytes: int = MAX_VOLUME_BYTES,
                max_voxels: int = MAX_VOXELS) -> np.ndarray:
    """Read an integer label image (PNG / TIFF, NIfTI or ``.npy``) as int32 ``[H, W]`` / ``[D, H, W]``.

    Values are taken as stored (never scaled); non-integer values are an :class:`ImageReadError`.
    """
    path = Path(path)
    _check_file(path, max_bytes, suffixes=None)
    kind = _volume_kind(path)
    if kind == "picture":
        arr = _read_label_picture(path, max_voxels)
    elif kind == "npy" and _npy_header(path)[1].kind in "biu":  # integers: exact at every width
        arr = np.load(path, allow_pickle=False)
        _check_ndim(arr.shape, path.name)
    elif kind in ("nifti", "npy"):
        arr = (_read_nifti if kind == "nifti" else _read_npy_volume)(path, max_voxels, []).array
    else:
        raise ImageReadError(f"{path.name}: label images must be PNG, TIFF, NIfTI or .npy (got DICOM)")
    arr = np.asarray(arr)
    if arr.dtype.kind == "f":
        _check_finite(arr, path.name)
        if not np.array_equal(arr, np.round(arr)):
            raise ImageReadError(f"{path.name}: label image holds non-integer values")
    return arr.astype(np.int32)


def _read_label_picture(path: Path, max_pixels: int) -> np.ndarray:
    """Raw integer values of a gray / palette PNG or TIFF (palette: the indices)."""
    try:
        with Image.open(path) as im:
            _check_size((im.height, im.width), path.name, max_pixels)
            im.load()
            if im.mode not in ("L", "P", "1", "I", "I;16", "I;16B", "I;16L"):
                raise ImageReadError(f"{path.name}: a label image must be single-channel, got mode '{im.mode}'")
            return np.asarray(im).astype(np.int64)
    except ImageReadError:
        raise
    except UnidentifiedImageError:
        raise ImageReadError(f"{path.name}: not an image (the file is not a readable PNG/TIFF)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageReadError(f"{path.name}: unreadable or truncated image ({_first_line(exc)})") from None

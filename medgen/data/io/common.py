"""What every reader and writer of :mod:`medgen.data.io` shares.

The error and warning types, the size limits and accepted extensions, the :class:`Volume`
type (here rather than in :mod:`~medgen.data.io.volumes` so that the DICOM and NIfTI readers
can build it without importing each other), conversion notes, the checks run before any
decoding (file, voxel count, finite values, dimensionality, ``.npy`` header) and atomic writes.

``Volume`` fields
-----------------
* ``array``: float32 ``[D, H, W]`` (3D) or ``[H, W]`` (2D) in physical units;
* ``spacing``: mm per array axis, ``(dz, dy, dx)`` or ``(dy, dx)``;
* ``affine``: ``[4, 4]`` voxel -> world (RAS+, mm) or ``None``. As in SimpleITK, its index
  order is the *reverse* of the array axes: ``world = affine @ (w, h, d, 1)`` for the voxel
  ``array[d, h, w]``. That is NIfTI's own ``(i, j, k)`` order, so a NIfTI affine is kept as
  stored and :func:`~medgen.data.io.write_volume` / :func:`~medgen.data.io.read_volume`
  round-trip array, spacing and affine exactly;
* ``unit``: ``"HU"`` (CT), ``"[0,1]"`` (display-referred images: radiographs, ultrasound,
  secondary captures, PNG/TIFF/JPEG) or ``"a.u."`` (MRI, PET, NIfTI / ``.npy`` of unknown unit);
* ``modality``: DICOM's Modality (``CT``, ``MR``, ``CR``, ``US`` ...) or ``""``;
* ``notes``: the conversion notes (also appended to ``notes=[]``, or warned when not collected).
"""
from __future__ import annotations

import contextlib
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

MAX_PIXELS = 4096 * 4096  # default largest accepted image (pixels)
MAX_BYTES = 50 * 1024 * 1024  # default largest accepted file (bytes)
PIL_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg")
NPY_SUFFIXES = (".npy",)
SUFFIXES = PIL_SUFFIXES + NPY_SUFFIXES  # every extension read_image accepts
_LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R BT.601 luminance weights (as PIL's "L")

MAX_VOXELS = 1 << 28  # default largest accepted volume (voxels: 1 GiB as float32)
MAX_VOLUME_BYTES = 1 << 30  # default largest accepted volume file (bytes, per file)
NIFTI_SUFFIXES = (".nii", ".nii.gz")
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
VOLUME_SUFFIXES = NIFTI_SUFFIXES + DICOM_SUFFIXES + NPY_SUFFIXES + PIL_SUFFIXES  # read_volume (+ folders)
UNITS = ("HU", "a.u.", "[0,1]")  # the units a Volume can carry


class ImageReadError(ValueError):
    """An image that cannot be used; ``str()`` is one line naming the file/array and the problem."""


class ImageConversionWarning(UserWarning):
    """An accepted image was converted (16-bit scaling, colour to grayscale, alpha dropped)."""


@dataclass(frozen=True, eq=False)
class Volume:
    """A medical image in physical units (see the module docstring for every field's convention)."""

    array: np.ndarray  # float32 [D, H, W] or [H, W], physical units
    spacing: tuple[float, ...]  # mm per array axis: (dz, dy, dx) or (dy, dx)
    affine: np.ndarray | None = None  # [4, 4] voxel (w, h, d, 1) -> world RAS+ mm, or None
    unit: str = "a.u."  # "HU" | "a.u." | "[0,1]"
    modality: str = ""  # DICOM Modality (CT, MR, CR, US ...) or ""
    notes: tuple[str, ...] = field(default=())  # one-line conversion notes

    @property
    def ndim(self) -> int:
        """2 for ``[H, W]``, 3 for ``[D, H, W]``."""
        return self.array.ndim


# --------------------------------------------------------------------------------------
# Notes and messages
# --------------------------------------------------------------------------------------
def _note(notes: list[str] | None, text: str, stacklevel: int = 4) -> None:
    """Record a conversion note (or warn when the caller did not ask for notes)."""
    if notes is None:
        warnings.warn(text, ImageConversionWarning, stacklevel=stacklevel)
    else:
        notes.append(text)


def _first_line(exc: BaseException) -> str:
    """The first line of an exception's message (library messages can span lines)."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


# --------------------------------------------------------------------------------------
# Checks before decoding
# --------------------------------------------------------------------------------------
def _check_file(path: Path, max_bytes: int, suffixes: Sequence[str] | None = SUFFIXES) -> None:
    """Existence, extension (unless ``suffixes`` is None) and byte-size checks before decoding."""
    if not path.exists():
        raise ImageReadError(f"{path.name}: file not found ({path})")
    if not path.is_file():
        raise ImageReadError(f"{path.name}: not a file ({path})")
    if suffixes is not None and path.suffix.lower() not in suffixes:
        raise ImageReadError(f"{path.name}: unsupported file type '{path.suffix or '(none)'}' "
                             f"(use {', '.join(suffixes)})")
    size = path.stat().st_size
    if size == 0:
        raise ImageReadError(f"{path.name}: empty file (0 bytes)")
    if size > max_bytes:
        raise ImageReadError(f"{path.name}: file too large ({size / 2**20:.1f} MB; limit {max_bytes / 2**20:.0f} MB)")


def _npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype from a ``.npy`` header; one-line errors for non-npy files."""
    fmt = np.lib.format
    with open(path, "rb") as fh:
        if fh.read(6) != b"\x93NUMPY":
            raise ImageReadError(f"{path.name}: not a .npy array file (no NumPy header)")
        fh.seek(0)
        try:
            version = fmt.read_magic(fh)
            reader = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
            shape, _, dtype = reader(fh)
        except (ValueError, OSError, EOFError, SyntaxError) as exc:
            raise ImageReadError(f"{path.name}: unreadable .npy header ({_first_line(exc)})") from None
    return tuple(int(n) for n in shape), np.dtype(dtype)


def _check_voxels(shape: Sequence[int], name: str, max_voxels: int) -> None:
    """Reject empty images and images with more than ``max_voxels`` voxels (before decoding)."""
    shape = tuple(int(n) for n in shape)
    count = int(np.prod(shape, dtype=np.float64))
    if count == 0:
        raise ImageReadError(f"{name}: empty image (shape {shape})")
    if count > max_voxels:
        raise ImageReadError(f"{name}: volume too large ({'x'.join(map(str, shape))} = {count:,} voxels; "
                             f"limit {max_voxels:,})")


def _check_finite(arr: np.ndarray, name: str) -> None:
    """Reject NaN / Inf values (one line with their counts)."""
    finite = np.isfinite(arr)
    if not finite.all():
        n_nan = int(np.isnan(arr).sum())
        raise ImageReadError(f"{name}: contains {n_nan} NaN and {int(arr.size - finite.sum()) - n_nan} Inf values")


def _check_ndim(shape: Sequence[int], name: str) -> None:
    """A volume is 2D ``[H, W]`` or 3D ``[D, H, W]``."""
    if len(shape) not in (2, 3):
        raise ImageReadError(f"{name}: expected a 2D [H, W] or 3D [D, H, W] image, got {len(shape)}D shape "
                             f"{tuple(shape)}")


# --------------------------------------------------------------------------------------
# Atomic writes
# --------------------------------------------------------------------------------------
@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same final suffix) to write; on success it is
    renamed onto ``path`` (:func:`os.replace`), on failure removed: ``with atomic_path(p) as tmp: ...``.

    The temporary name is random rather than from :func:`tempfile.mkstemp` so the file gets
    the usual permissions (umask) instead of mkstemp's 0600.
    """
    path = Path(path)
    name = path.name
    suffix = ".nii.gz" if name.lower().endswith(".nii.gz") else path.suffix
    tmp = path.parent / f".{name}.{os.urandom(6).hex()}.tmp{suffix}"
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise

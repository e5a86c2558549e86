"""Reading, checking and writing images: 2D pictures (PNG, TIFF, JPEG, ``.npy``) and
medical volumes (NIfTI, DICOM, ``.npy``), plus Hounsfield-unit display windows.

Two entry points, two contracts:

* :func:`read_image` -- a 2D picture as float32 ``[H, W]`` in ``[0, 1]`` (the demos' and the
  CLI's input; the model sees it through :func:`to_model_range` as ``[1, 1, size, size]`` in
  ``[-1, 1]``). The table below lists what it accepts.
* :func:`read_volume` -- a medical image in *physical units* as a :class:`Volume` (float32
  ``[D, H, W]`` or ``[H, W]``, spacing in mm, affine, unit); see "Volumes" below.

What is accepted, and how it is converted
-----------------------------------------
======================================  ==============================================  ========
input                                   conversion                                      note?
======================================  ==============================================  ========
8-bit grayscale (PNG ``L``, ``uint8``)  divided by 255                                  no
1-bit (PNG ``1``)                       0 -> 0.0, 1 -> 1.0                              no
16-bit grayscale (``I;16``, ``uint16``) divided by 65535 (full 16-bit scale, not the    yes
                                        image's own maximum)
float (TIFF ``F``, float16/32/64 npy)   kept; must already lie in [0, 1]                no
RGB / palette / CMYK / YCbCr            grayscale luminance 0.299 R + 0.587 G + 0.114 B  yes
RGBA / LA                               alpha dropped, then luminance as above           yes
``[H, W, 1]`` or ``[1, H, W]`` arrays   the channel axis is squeezed                     no
======================================  ==============================================  ========

Rejected with :class:`ImageReadError` (a ``ValueError`` whose message is one line naming the
file or array and the problem): a missing file; an unsupported extension; a file that is not
an image, is unreadable or truncated; a file over ``max_bytes`` or an image over
``max_pixels``; an empty image; NaN or Inf values; float values outside [0, 1] (scale them
first: this module never normalises an image by its own maximum); a wrong number of
dimensions (1D, 3D volumes, 4D, channels-first RGB, or a 3/4-channel *float* array, which is
ambiguous: it may be 3 or 4 slices rather than RGB(A)); dtypes without a defined full scale
(bool, complex, object, strings, signed or 32/64-bit integers).

Conversions that change the data (16-bit scaling, colour to gray, dropped alpha) produce a
one-line *note*: pass ``notes=[]`` to collect them (the demos show them), otherwise each is
issued as an :class:`ImageConversionWarning`.

Volumes
-------
:func:`read_volume` returns a frozen :class:`Volume`:

* ``array``: float32 ``[D, H, W]`` (3D) or ``[H, W]`` (2D) in physical units;
* ``spacing``: mm per array axis, ``(dz, dy, dx)`` or ``(dy, dx)``;
* ``affine``: ``[4, 4]`` voxel -> world (RAS+, mm) or ``None``. As in SimpleITK, its index
  order is the *reverse* of the array axes: ``world = affine @ (w, h, d, 1)`` for the voxel
  ``array[d, h, w]``. That is NIfTI's own ``(i, j, k)`` order, so a NIfTI affine is kept as
  stored and :func:`write_volume` / :func:`read_volume` round-trip array, spacing and affine
  exactly;
* ``unit``: ``"HU"`` (CT), ``"[0,1]"`` (display-referred images: radiographs, ultrasound,
  secondary captures, PNG/TIFF/JPEG) or ``"a.u."`` (MRI, PET, NIfTI / ``.npy`` of unknown unit);
* ``modality``: DICOM's Modality (``CT``, ``MR``, ``CR``, ``US`` ...) or ``""``;
* ``notes``: the conversion notes (also appended to ``notes=[]``, or warned when not collected).

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

DICOM values go through fixed maps, never the image's own minimum / maximum:

* CT: ``HU = stored * RescaleSlope + RescaleIntercept`` (``pydicom.pixels.apply_modality_lut``;
  per frame for enhanced multi-frame files, per slice for folders).
* MR, PT, NM: the same modality LUT / rescale, unit ``"a.u."``.
* Every other modality (CR, DX, MG, XA, RF, US, OT/SC ...) is display-referred: the stored
  value is mapped from its full ``BitsStored`` range onto [0, 1] and MONOCHROME1 (minimum
  shown white) is inverted (``1 - v``), so larger is always brighter (bone bright on a
  radiograph, as in the phantoms). For HU / a.u. images MONOCHROME1 only describes the
  display: values are kept, with a note.
* Colour (RGB, YBR, PALETTE COLOR; e.g. ultrasound with coloured overlays) becomes
  luminance ``0.299 R + 0.587 G + 0.114 B`` scaled to [0, 1], with a note.
* In-plane spacing: PixelSpacing (row, column), else ImagerPixelSpacing (detector plane, not
  corrected for magnification; note), else the ultrasound region's PhysicalDeltaY/X, else 1 mm
  (note). Between slices: the median step between sorted positions, else
  SpacingBetweenSlices, else SliceThickness, else 1 mm (note).
* Affine (when ImagePositionPatient and ImageOrientationPatient are present): DICOM's LPS
  turned into RAS (x and y negated); columns ``dx * row cosine``, ``dy * column cosine``, the
  slice step, and the first slice's position.

Rejected with a one-line :class:`ImageReadError` naming the file: missing, unsupported type,
empty, over ``max_bytes`` (per file) or over ``max_voxels``, not a NIfTI / DICOM / npy file,
truncated or unreadable (pydicom's ``MR_truncated.dcm``), DICOM without pixel data, a
compressed transfer syntax without an installed decoder (the message names the syntax),
NaN / Inf, wrong dimensionality, and a DICOM folder with mixed slice sizes, several series,
multi-frame files or two slices at one position.

Writers (:func:`write_image`, :func:`write_volume`, :func:`write_labels`) write a temporary
file in the target folder and :func:`os.replace` it, so no reader ever sees half a file.
:func:`write_volume` writes NIfTI float32 (int16 for integer label maps); :func:`write_labels`
/ :func:`read_labels` store integer label images as 8/16-bit PNG or int16 NIfTI.

Windows: :data:`WINDOWS` holds ``(width, level)`` presets in HU and :func:`window` maps HU onto
[0, 1] (``(hu - (level - width / 2)) / width``, clipped).
"""
from __future__ import annotations

import contextlib
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

MAX_PIXELS = 4096 * 4096  # default largest accepted image (pixels)
MAX_BYTES = 50 * 1024 * 1024  # default largest accepted file (bytes)
PIL_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg")
NPY_SUFFIXES = (".npy",)
SUFFIXES = PIL_SUFFIXES + NPY_SUFFIXES  # every extension read_image accepts
_LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R BT.601 luminance weights (as PIL's "L")
_FULL_SCALE = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}
_RANGE_TOL = 1e-6  # float images may overshoot [0, 1] by this much (rounding) and are clipped

MAX_VOXELS = 1 << 28  # default largest accepted volume (voxels: 1 GiB as float32)
MAX_VOLUME_BYTES = 1 << 30  # default largest accepted volume file (bytes, per file)
NIFTI_SUFFIXES = (".nii", ".nii.gz")
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
VOLUME_SUFFIXES = NIFTI_SUFFIXES + DICOM_SUFFIXES + NPY_SUFFIXES + PIL_SUFFIXES  # read_volume (+ folders)
UNITS = ("HU", "a.u.", "[0,1]")  # the units a Volume can carry
WINDOWS: dict[str, tuple[float, float]] = {  # CT display windows in HU: name -> (width, level)
    "soft_tissue": (400.0, 40.0),
    "lung": (1500.0, -600.0),
    "bone": (1800.0, 400.0),
}
_HU_MODALITIES = frozenset({"CT"})  # DICOM modalities whose rescaled values are Hounsfield units
_AU_MODALITIES = frozenset({"MR", "PT", "NM"})  # rescaled values in arbitrary / quantitative units
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])  # DICOM patient axes (LPS) -> NIfTI world axes (RAS)
_DESCRIP = re.compile(r"medgen unit=([^\s\x00]+)")  # what write_volume puts in the NIfTI descrip field


class ImageReadError(ValueError):
    """An image that cannot be used; ``str()`` is one line naming the file/array and the problem."""


class ImageConversionWarning(UserWarning):
    """An accepted image was converted (16-bit scaling, colour to grayscale, alpha dropped)."""


# --------------------------------------------------------------------------------------
# Checking in-memory arrays
# --------------------------------------------------------------------------------------
def validate_array(
    arr: np.ndarray,
    name: str = "array",
    *,
    max_pixels: int = MAX_PIXELS,
    notes: list[str] | None = None,
) -> np.ndarray:
    """Check an in-memory image and return it as float32 ``[H, W]`` in ``[0, 1]``.

    ``arr`` may be ``[H, W]``, ``[H, W, C]`` with C in {1, 3, 4} (uint8/uint16 only for C > 1)
    or ``[1, H, W]``, of dtype uint8, uint16 or float (see the module docstring for the
    rules). ``name`` names the array in error messages. Raises :class:`ImageReadError`.
    """
    try:
        arr = np.asarray(arr)
    except Exception as exc:  # e.g. ragged nested lists
        raise ImageReadError(f"{name}: cannot be read as an array ({_first_line(exc)})") from None
    _check_dtype(arr, name)
    scale = _FULL_SCALE.get(arr.dtype)
    if arr.dtype == np.uint16:
        _note(notes, f"{name}: 16-bit image scaled by 1/65535 to [0, 1]")
    arr = _to_2d(arr, name, notes)
    _check_size(arr.shape, name, max_pixels)
    if scale is not None:
        return (arr.astype(np.float64) / scale).astype(np.float32)
    return _check_float(arr, name)


def _check_dtype(arr: np.ndarray, name: str) -> None:
    """Reject dtypes without a defined full-scale value."""
    dt = arr.dtype
    if dt in _FULL_SCALE or dt.kind == "f":
        return
    if dt.kind == "b":
        raise ImageReadError(f"{name}: bool arrays (masks) are not images; pass uint8, uint16 or float in [0, 1]")
    if dt.kind in "iu":
        raise ImageReadError(f"{name}: integer dtype {dt} has no defined full-scale value; "
                             f"pass uint8, uint16 or float in [0, 1]")
    raise ImageReadError(f"{name}: unsupported dtype {dt}; pass uint8, uint16 or float in [0, 1]")


def _to_2d(arr: np.ndarray, name: str, notes: list[str] | None) -> np.ndarray:
    """Squeeze a channel axis or convert RGB(A) ``[H, W, 3|4]`` to luminance ``[H, W]``."""
    if arr.size == 0:
        raise ImageReadError(f"{name}: empty image (shape {tuple(arr.shape)})")
    if arr.ndim == 2:
        return arr
    if arr.ndim == 3 and arr.shape[-1] == 1:
        return arr[..., 0]
    if arr.ndim == 3 and arr.shape[0] == 1:
        return arr[0]
    if arr.ndim == 3 and arr.shape[-1] in (3, 4) and arr.dtype in _FULL_SCALE:
        return _luminance(arr, name, notes)
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        raise ImageReadError(f"{name}: {arr.shape[-1]}-channel {arr.dtype} array of shape {tuple(arr.shape)} is "
                             f"ambiguous (RGB(A) must be uint8 or uint16); pass one 2D [H, W] image")
    raise ImageReadError(f"{name}: expected a 2D image [H, W] (or [H, W, 1|3|4]), got {arr.ndim}D shape "
                         f"{tuple(arr.shape)}")


def _luminance(arr: np.ndarray, name: str, notes: list[str] | None) -> np.ndarray:
    """``[H, W, 3|4]`` uint8/uint16 RGB(A) -> ``[H, W]`` float64 luminance in the same integer scale."""
    kind = "RGBA" if arr.shape[-1] == 4 else "RGB"
    rgb = arr[..., :3].astype(np.float64)
    if kind == "RGBA":
        _note(notes, f"{name}: RGBA image; alpha channel dropped and colour converted to grayscale luminance")
    elif np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2]):
        _note(notes, f"{name}: gray image stored as RGB; read as grayscale")
    else:
        _note(notes, f"{name}: RGB colour image converted to grayscale luminance (0.299 R + 0.587 G + 0.114 B)")
    return rgb @ _LUMA  # float64 in the input's integer scale (uint16 precision kept)


def _check_size(shape: Sequence[int], name: str, max_pixels: int) -> None:
    """Reject images with more than ``max_pixels`` pixels."""
    h, w = int(shape[0]), int(shape[1])
    if h * w > max_pixels:
        raise ImageReadError(f"{name}: image too large ({w}x{h} = {h * w:,} pixels; limit {max_pixels:,})")


def _check_float(arr: np.ndarray, name: str) -> np.ndarray:
    """A float ``[H, W]`` array must be finite and lie in [0, 1]."""
    finite = np.isfinite(arr)
    if not finite.all():
        n_nan = int(np.isnan(arr).sum())
        n_inf = int(arr.size - finite.sum()) - n_nan
        raise ImageReadError(f"{name}: contains {n_nan} NaN and {n_inf} Inf values")
    lo, hi = float(arr.min()), float(arr.max())
    if lo < -_RANGE_TOL or hi > 1 + _RANGE_TOL:
        raise ImageReadError(f"{name}: float values span [{lo:.4g}, {hi:.4g}]; float images must lie in [0, 1] "
                             f"(rescale with a fixed range, not the image's own maximum)")
    return np.clip(arr, 0.0, 1.0).astype(np.float32)


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
# Reading files
# --------------------------------------------------------------------------------------
def read_image(
    path: str | os.PathLike,
    *,
    max_pixels: int = MAX_PIXELS,
    max_bytes: int = MAX_BYTES,
    notes: list[str] | None = None,
) -> np.ndarray:
    """Read a PNG / TIFF / JPEG / ``.npy`` file as float32 ``[H, W]`` in ``[0, 1]``.

    8-bit images are divided by 255, 16-bit ones by 65535; colour is converted to grayscale
    luminance (see the module docstring). Raises :class:`ImageReadError` with a one-line
    message naming the file for every unusable input.
    """
    path = Path(path)
    _check_file(path, max_bytes)
    if path.suffix.lower() in NPY_SUFFIXES:
        arr = _load_npy(path, max_pixels)
    else:
        arr = _load_pil(path, max_pixels, notes)
    return validate_array(arr, path.name, max_pixels=max_pixels, notes=notes)


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


def _load_npy(path: Path, max_pixels: int) -> np.ndarray:
    """Check a ``.npy`` header (magic, dtype, shape) before loading the array (never unpickles)."""
    shape, dtype = _npy_header(path)
    if dtype.hasobject:
        raise ImageReadError(f"{path.name}: object arrays are not supported (no pickles)")
    if 2 <= len(shape) <= 3 and all(shape):
        _check_size(shape[1:] if (len(shape) == 3 and shape[0] == 1) else shape[:2], path.name, max_pixels)
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ImageReadError(f"{path.name}: unreadable or truncated .npy file ({_first_line(exc)})") from None


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


def _load_pil(path: Path, max_pixels: int, notes: list[str] | None) -> np.ndarray:
    """Decode an image with PIL into ``[H, W]`` or ``[H, W, 3|4]`` uint8/uint16/float32."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                _check_size((im.height, im.width), path.name, max_pixels)
                return _pil_to_array(im, path.name, notes)
    except ImageReadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageReadError(f"{path.name}: image too large (decompression-bomb limit)") from None
    except UnidentifiedImageError:
        raise ImageReadError(f"{path.name}: not an image (the file is not a readable PNG/TIFF/JPEG)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageReadError(f"{path.name}: unreadable or truncated image ({_first_line(exc)})") from None


def _pil_to_array(im: Image.Image, name: str, notes: list[str] | None) -> np.ndarray:
    """Pixel data of an opened PIL image as a numpy array in its native bit depth."""
    im.load()
    mode = im.mode
    if mode.startswith("I;16"):
        return np.asarray(im).astype(np.uint16)
    if mode == "1":
        return np.asarray(im.convert("L"))
    if mode in ("L", "F", "RGB", "RGBA"):
        return np.asarray(im)
    if mode == "I":
        arr = np.asarray(im)
        if arr.size and arr.min() >= 0 and arr.max() <= 65535:
            return arr.astype(np.uint16)
        raise ImageReadError(f"{name}: 32-bit integer image with values outside 0..65535 is not supported")
    if mode == "LA":
        _note(notes, f"{name}: gray + alpha image; alpha channel dropped")
        return np.asarray(im.getchannel("L"))
    if mode in ("P", "PA"):  # palette: expand to RGB(A); _luminance notes the conversion
        return np.asarray(im.convert("RGBA" if mode == "PA" or "transparency" in im.info else "RGB"))
    if mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        _note(notes, f"{name}: {mode} image converted to RGB")
        return np.asarray(im.convert("RGB"))
    raise ImageReadError(f"{name}: unsupported PIL image mode '{mode}'")


# --------------------------------------------------------------------------------------
# Model range and writing
# --------------------------------------------------------------------------------------
def to_model_range(arr: np.ndarray, size: int | tuple[int, int] | None = None) -> torch.Tensor:
    """``[H, W]`` in [0, 1] -> float32 tensor ``[1, 1, h, w]`` in [-1, 1].

    ``size`` (an int for a square, or ``(h, w)``) resizes with antialiased bilinear
    interpolation (``torch.nn.functional.interpolate``); ``None`` keeps ``[H, W]``.
    """
    arr = validate_array(arr, "image", max_pixels=2**62, notes=[])
    x = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))[None, None]
    if size is not None:
        hw = (size, size) if isinstance(size, int) else tuple(size)
        if tuple(x.shape[-2:]) != hw:
            x = F.interpolate(x, size=hw, mode="bilinear", antialias=True, align_corners=False)
    return (x * 2.0 - 1.0).clamp_(-1.0, 1.0)


def from_model_range(x: torch.Tensor) -> np.ndarray:
    """Model-range tensor ``[H, W]``, ``[1, H, W]`` or ``[1, 1, H, W]`` -> float32 ``[H, W]`` in [0, 1]."""
    t = x.detach().float().cpu()
    while t.ndim > 2 and t.shape[0] == 1:
        t = t[0]
    if t.ndim != 2:
        raise ValueError(f"from_model_range: expected one 2D image, got shape {tuple(x.shape)}")
    return ((t.clamp(-1.0, 1.0) + 1.0) / 2.0).numpy().astype(np.float32)


def write_image(path: str | os.PathLike, arr: np.ndarray, *, bits: int = 8) -> Path:
    """Write ``[H, W]`` in [0, 1] as an 8- or 16-bit grayscale PNG (``bits``) or a float32 ``.npy``.

    Returns the path written. Raises ``ValueError`` (one line) for a bad array, extension or
    bit depth.
    """
    path = Path(path)
    img = validate_array(arr, path.name, max_pixels=2**62, notes=[])
    suffix = path.suffix.lower()
    if suffix == ".npy":
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.save(fh, img.astype(np.float32))
    elif suffix == ".png":
        quantized = _quantize(img, bits, path.name)
        with atomic_path(path) as tmp:
            Image.fromarray(quantized).save(tmp, format="PNG")
    else:
        raise ValueError(f"{path.name}: cannot write '{suffix or '(none)'}' (use .png or .npy)")
    return path


def _quantize(img: np.ndarray, bits: int, name: str) -> np.ndarray:
    """``[H, W]`` in [0, 1] -> rounded uint8 (bits=8) or uint16 (bits=16)."""
    if bits == 8:
        return np.round(img * 255.0).astype(np.uint8)
    if bits == 16:
        return np.round(img.astype(np.float64) * 65535.0).astype(np.uint16)
    raise ValueError(f"{name}: bits must be 8 or 16, got {bits}")


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


# --------------------------------------------------------------------------------------
# Volumes: NIfTI, DICOM, npy
# --------------------------------------------------------------------------------------
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


# -- label images --------------------------------------------------------------------------
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


# -- DICOM ----------------------------------------------------------------------------------
def _dcmread(path: Path) -> Any:
    """``pydicom.dcmread`` with one-line errors; the dataset must hold pixel data."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ds = pydicom.dcmread(str(path))
        except InvalidDicomError:
            raise ImageReadError(f"{path.name}: not a DICOM file (no 'DICM' marker)") from None
        except Exception as exc:  # pydicom raises many types for broken files
            raise ImageReadError(f"{path.name}: unreadable or truncated DICOM file ({_first_line(exc)})") from None
    if not any(key in ds for key in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        eof = [str(w.message) for w in caught if "end of file" in str(w.message).lower()]
        if eof:
            raise ImageReadError(f"{path.name}: truncated DICOM file (no pixel data; {eof[0].splitlines()[0]})")
        kind = getattr(ds.get("SOPClassUID"), "name", "") or "dataset"
        raise ImageReadError(f"{path.name}: not an image (DICOM {kind} without pixel data)")
    return ds


def _dicom_pixels(ds: Any, name: str, max_voxels: int) -> np.ndarray:
    """Decoded stored values ``[F, H, W]`` or ``[F, H, W, 3]`` (pydicom converts YBR to RGB)."""
    from pydicom.pixels import get_decoder, pixel_array

    frames = _n_frames(ds)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    _check_voxels((frames, int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0), samples), name, max_voxels)
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if ts is not None and ts.is_compressed:
        try:
            available = get_decoder(ts).is_available
        except (NotImplementedError, ValueError):
            available = False
        if not available:
            raise ImageReadError(f"{name}: no decoder installed for transfer syntax '{ts.name}' ({ts}); "
                                 f"install pylibjpeg with its plugins or python-gdcm, or decompress the file")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            arr = pixel_array(ds)
        except Exception as exc:  # decoders raise many types for short or corrupt data
            raise ImageReadError(f"{name}: unreadable or truncated pixel data ({_first_line(exc)})") from None
    return arr[None] if frames == 1 else arr


def _n_frames(ds: Any) -> int:
    """NumberOfFrames (1 when absent)."""
    try:
        return max(1, int(ds.get("NumberOfFrames", 1) or 1))
    except (TypeError, ValueError):
        return 1


def _fg_item(ds: Any, sequence: str, frame: int) -> Any:
    """Item of functional-group ``sequence`` for ``frame`` (per-frame, else shared), or None."""
    for groups, index in (("PerFrameFunctionalGroupsSequence", frame), ("SharedFunctionalGroupsSequence", 0)):
        items = ds.get(groups)
        if items and len(items) > index:
            seq = items[index].get(sequence)
            if seq:
                return seq[0]
    return None


def _dicom_values(ds: Any, stored: np.ndarray, name: str, notes: list[str]) -> tuple[np.ndarray, str]:
    """Stored values ``[F, H, W]`` / ``[F, H, W, 3]`` -> float32 ``[F, H, W]`` physical and unit."""
    modality = str(ds.get("Modality", "") or "").upper()
    photometric = str(ds.get("PhotometricInterpretation", "") or "").upper()
    if photometric == "PALETTE COLOR" or stored.ndim == 4:
        return _dicom_colour(ds, stored, photometric, modality, name, notes), "[0,1]"
    if modality in _HU_MODALITIES or modality in _AU_MODALITIES or stored.dtype.kind == "f":
        if photometric == "MONOCHROME1":
            notes.append(f"{name}: MONOCHROME1 {modality} kept in physical units (inversion only affects display)")
        values = _modality_lut(ds, stored, name, modality, notes)
        return values.astype(np.float32), "HU" if modality in _HU_MODALITIES else "a.u."
    return _display_referred(ds, stored, photometric, modality, name, notes), "[0,1]"


def _modality_lut(ds: Any, stored: np.ndarray, name: str, modality: str, notes: list[str]) -> np.ndarray:
    """Modality LUT / rescale (``pydicom.pixels.apply_modality_lut``), per frame where the
    enhanced functional groups give per-frame slopes. ``[F, H, W]`` float64 out."""
    from pydicom.pixels import apply_modality_lut

    def source(frame: int) -> Any:
        item = _fg_item(ds, "PixelValueTransformationSequence", frame)
        return item if item is not None and "RescaleSlope" in item and "RescaleIntercept" in item else ds

    if modality in _HU_MODALITIES and "RescaleSlope" not in source(0) and "ModalityLUTSequence" not in ds:
        notes.append(f"{name}: CT without RescaleSlope/RescaleIntercept; stored values taken as HU")
    if ds.get("PerFrameFunctionalGroupsSequence"):
        return np.stack([np.asarray(apply_modality_lut(stored[f], source(f)), np.float64)
                         for f in range(stored.shape[0])])
    return np.asarray(apply_modality_lut(stored, source(0)), dtype=np.float64)


def _stored_range(ds: Any, dtype: np.dtype) -> tuple[float, float]:
    """The full range of stored values from BitsStored and PixelRepresentation."""
    bits = int(ds.get("BitsStored", 0) or 0) or np.dtype(dtype).itemsize * 8
    if int(ds.get("PixelRepresentation", 0) or 0) == 1:
        return -(2.0 ** (bits - 1)), 2.0 ** (bits - 1) - 1
    return 0.0, 2.0**bits - 1


def _display_referred(ds: Any, stored: np.ndarray, photometric: str, modality: str, name: str,
                      notes: list[str]) -> np.ndarray:
    """Grayscale display-referred image -> [0, 1] over the full stored range; MONOCHROME1 inverted."""
    lo, hi = _stored_range(ds, stored.dtype)
    values = (stored.astype(np.float64) - lo) / (hi - lo)
    slope, intercept = float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)
    if (slope, intercept) != (1.0, 0.0):
        notes.append(f"{name}: RescaleSlope/Intercept ignored for display-referred {modality or 'image'}; "
                     f"stored values scaled to [0, 1]")
    if photometric == "MONOCHROME1":
        values = 1.0 - values
        notes.append(f"{name}: MONOCHROME1 inverted so that larger values are brighter")
    return np.clip(values, 0.0, 1.0).astype(np.float32)


def _dicom_colour(ds: Any, stored: np.ndarray, photometric: str, modality: str, name: str,
                  notes: list[str]) -> np.ndarray:
    """Colour DICOM (RGB / YBR already converted / PALETTE COLOR) -> luminance in [0, 1]."""
    from pydicom.pixels import apply_color_lut

    if photometric == "PALETTE COLOR":
        rgb = np.asarray(apply_color_lut(stored, ds))
        full = 255.0 if rgb.dtype == np.uint8 else 65535.0
    else:
        rgb = stored
        full = 2.0 ** int(ds.get("BitsStored", 8) or 8) - 1
    rgb = rgb[..., :3].astype(np.float64)
    what = f"colour {modality} ({photometric})" if modality else f"colour image ({photometric})"
    if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2]):
        notes.append(f"{name}: gray {modality or 'image'} stored as {photometric}; read as grayscale")
    else:
        notes.append(f"{name}: {what} converted to grayscale luminance (0.299 R + 0.587 G + 0.114 B)")
    return np.clip(rgb @ _LUMA / full, 0.0, 1.0).astype(np.float32)


def _positive_pair(value: Any) -> tuple[float, float] | None:
    """Two positive finite floats from a DICOM multi-value, or None."""
    try:
        pair = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    if len(pair) == 2 and all(np.isfinite(v) and v > 0 for v in pair):
        return pair[0], pair[1]
    return None


def _inplane_spacing(ds: Any, name: str, notes: list[str]) -> tuple[float, float]:
    """(row spacing dy, column spacing dx) in mm, with the fall-backs of the module docstring."""
    measures = _fg_item(ds, "PixelMeasuresSequence", 0)
    for source in (measures, ds):
        pair = _positive_pair(source.get("PixelSpacing")) if source is not None else None
        if pair:
            return pair
    pair = _positive_pair(ds.get("ImagerPixelSpacing"))
    if pair:
        notes.append(f"{name}: ImagerPixelSpacing used (detector plane, not corrected for magnification)")
        return pair
    for region in ds.get("SequenceOfUltrasoundRegions") or ():
        if region.get("PhysicalUnitsXDirection") == 3 and region.get("PhysicalUnitsYDirection") == 3:  # cm
            pair = _positive_pair((region.get("PhysicalDeltaY"), region.get("PhysicalDeltaX")))
            if pair:
                return (pair[0] * 10.0, pair[1] * 10.0)
    notes.append(f"{name}: no valid pixel spacing in the header; 1 mm assumed")
    return (1.0, 1.0)


def _slice_gap(ds: Any) -> float | None:
    """SpacingBetweenSlices, else SliceThickness (functional groups first), or None."""
    measures = _fg_item(ds, "PixelMeasuresSequence", 0)
    for source in (measures, ds):
        for key in ("SpacingBetweenSlices", "SliceThickness"):
            try:
                value = float(source.get(key)) if source is not None and source.get(key) is not None else 0.0
            except (TypeError, ValueError):
                value = 0.0
            if np.isfinite(value) and value > 0:
                return abs(value)
    return None


def _orientation(ds: Any, frame: int = 0) -> np.ndarray | None:
    """ImageOrientationPatient ``[6]`` (row cosine, column cosine) or None."""
    item = _fg_item(ds, "PlaneOrientationSequence", frame)
    value = (item if item is not None else ds).get("ImageOrientationPatient")
    try:
        iop = np.asarray([float(v) for v in value], dtype=np.float64) if value is not None else None
    except (TypeError, ValueError):
        return None
    return iop if iop is not None and iop.shape == (6,) and np.isfinite(iop).all() else None


def _position(ds: Any, frame: int | None = None) -> np.ndarray | None:
    """ImagePositionPatient ``[3]`` of the dataset or of one frame (functional groups), or None."""
    source = _fg_item(ds, "PlanePositionSequence", frame) if frame is not None else ds
    value = source.get("ImagePositionPatient") if source is not None else None
    try:
        ipp = np.asarray([float(v) for v in value], dtype=np.float64) if value is not None else None
    except (TypeError, ValueError):
        return None
    return ipp if ipp is not None and ipp.shape == (3,) and np.isfinite(ipp).all() else None


def _affine(iop: np.ndarray, origin: np.ndarray, dy: float, dx: float, step: np.ndarray) -> np.ndarray:
    """Voxel ``(w, h, d, 1)`` -> RAS mm from DICOM geometry (LPS) and the slice step vector."""
    aff = np.eye(4)
    aff[:3, 0] = iop[:3] * dx  # along a row = increasing column index
    aff[:3, 1] = iop[3:] * dy  # along a column = increasing row index
    aff[:3, 2] = step
    aff[:3, 3] = origin
    aff[:3] = _LPS_TO_RAS @ aff[:3]
    return aff


def _stack_spacing(positions: np.ndarray, normal: np.ndarray, fallback: float | None, name: str,
                   notes: list[str]) -> float:
    """Slice spacing: median step of ``positions [n, 3]`` along ``normal`` (notes if irregular)."""
    if len(positions) < 2:
        if fallback is None:
            notes.append(f"{name}: no slice spacing in the header; 1 mm assumed")
        return fallback or 1.0
    steps = np.abs(np.diff(positions @ normal))
    dz = float(np.median(steps))
    if steps.max() - steps.min() > 0.01 * dz + 1e-3:
        notes.append(f"{name}: irregular slice spacing ({steps.min():.4g}-{steps.max():.4g} mm); "
                     f"median {dz:.4g} mm used")
    return dz


def _read_dicom_file(path: Path, max_voxels: int, notes: list[str]) -> Volume:
    """One DICOM file: ``[H, W]`` (one frame) or ``[D, H, W]`` (multi-frame, frames in file order)."""
    ds = _dcmread(path)
    stored = _dicom_pixels(ds, path.name, max_voxels)
    values, unit = _dicom_values(ds, stored, path.name, notes)
    dy, dx = _inplane_spacing(ds, path.name, notes)
    modality = str(ds.get("Modality", "") or "")
    iop = _orientation(ds)
    normal = np.cross(iop[:3], iop[3:]) if iop is not None else None
    if values.shape[0] == 1:
        ipp = _position(ds) if _position(ds) is not None else _position(ds, 0)
        thickness = _slice_gap(ds) or 1.0
        affine = _affine(iop, ipp, dy, dx, normal * thickness) if iop is not None and ipp is not None else None
        return Volume(values[0], (dy, dx), affine, unit, modality)
    frames = [_position(ds, f) for f in range(values.shape[0])]
    if iop is not None and all(p is not None for p in frames):
        positions = np.stack(frames)  # type: ignore[arg-type]
        dz = _stack_spacing(positions, normal, _slice_gap(ds), path.name, notes)
        affine = _affine(iop, positions[0], dy, dx, (positions[-1] - positions[0]) / (len(positions) - 1))
    else:
        gap = _slice_gap(ds)
        if gap is None:
            notes.append(f"{path.name}: no slice spacing in the header; 1 mm assumed")
        dz, affine = gap or 1.0, None
    return Volume(values, (dz, dy, dx), affine, unit, modality)


def _dicom_folder_files(folder: Path) -> list[Path]:
    """The slice files of a DICOM folder: every non-hidden regular file except DICOMDIR."""
    files = sorted(p for p in folder.iterdir()
                   if p.is_file() and not p.name.startswith(".") and p.name.upper() != "DICOMDIR")
    if not files:
        raise ImageReadError(f"{folder.name}: empty folder (no DICOM slices)")
    return files


def _read_dicom_folder(folder: Path, max_bytes: int, max_voxels: int, notes: list[str]) -> Volume:
    """A folder of single-frame slices of one series -> ``[D, H, W]`` sorted along the slice normal."""
    files = _dicom_folder_files(folder)
    datasets = []
    for f in files:
        _check_file(f, max_bytes, suffixes=None)
        datasets.append(_dcmread(f))
    _check_series(folder, files, datasets, max_voxels)
    order, positions, iop = _slice_order(folder, files, datasets, notes)
    slices, slice_notes, unit = [], [], "a.u."
    for i in order:  # each slice with its own rescale; notes name the folder, once per kind
        stored = _dicom_pixels(datasets[i], files[i].name, max_voxels)
        values, unit = _dicom_values(datasets[i], stored, folder.name, slice_notes)
        slices.append(values[0])
    first = datasets[order[0]]
    dy, dx = _inplane_spacing(first, folder.name, slice_notes)
    notes.extend(dict.fromkeys(slice_notes))
    if positions is not None and iop is not None:
        normal = np.cross(iop[:3], iop[3:])
        dz = _stack_spacing(positions, normal, _slice_gap(first), folder.name, notes)
        step = (positions[-1] - positions[0]) / (len(positions) - 1) if len(positions) > 1 else normal * dz
        affine = _affine(iop, positions[0], dy, dx, step)
    else:
        gap = _slice_gap(first)
        if gap is None:
            notes.append(f"{folder.name}: no slice spacing in the header; 1 mm assumed")
        dz, affine = gap or 1.0, None
    return Volume(np.stack(slices), (dz, dy, dx), affine, unit, str(first.get("Modality", "") or ""))


def _check_series(folder: Path, files: list[Path], datasets: list[Any], max_voxels: int) -> None:
    """One series of single-frame slices, all of one size, within the voxel limit."""
    series = {str(ds.get("SeriesInstanceUID", "")) for ds in datasets}
    if len(series) > 1:
        raise ImageReadError(f"{folder.name}: holds {len(series)} DICOM series; put one series per folder")
    shapes = [(int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)) for ds in datasets]
    for f, ds, shape in zip(files, datasets, shapes):
        if _n_frames(ds) > 1:
            raise ImageReadError(f"{folder.name}: {f.name} is a multi-frame file; a folder must hold "
                                 f"single-frame slices (read the file on its own)")
        if shape != shapes[0]:
            raise ImageReadError(f"{folder.name}: mixed slice sizes ({files[0].name} is {shapes[0][0]}x"
                                 f"{shapes[0][1]}, {f.name} is {shape[0]}x{shape[1]})")
    _check_voxels((len(files), *shapes[0]), folder.name, max_voxels)


def _slice_order(folder: Path, files: list[Path], datasets: list[Any],
                 notes: list[str]) -> tuple[list[int], np.ndarray | None, np.ndarray | None]:
    """Slice order (indices), sorted positions ``[n, 3]`` and orientation, or InstanceNumber order."""
    iop = _orientation(datasets[0])
    positions = [_position(ds) for ds in datasets]
    if iop is not None and all(p is not None for p in positions):
        pos = np.stack(positions)  # type: ignore[arg-type]
        depth = pos @ np.cross(iop[:3], iop[3:])
        order = [int(i) for i in np.argsort(depth, kind="stable")]
        same = np.flatnonzero(np.diff(depth[order]) < 1e-4)
        if same.size:
            a, b = files[order[same[0]]].name, files[order[same[0] + 1]].name
            raise ImageReadError(f"{folder.name}: two slices at the same position ({a}, {b})")
        return order, pos[order], iop
    numbers = [ds.get("InstanceNumber") for ds in datasets]
    if all(n is not None for n in numbers):
        notes.append(f"{folder.name}: no slice positions; slices ordered by InstanceNumber")
        return [int(i) for i in np.argsort([int(n) for n in numbers], kind="stable")], None, None
    raise ImageReadError(f"{folder.name}: cannot order the slices (no ImagePositionPatient or InstanceNumber)")


# --------------------------------------------------------------------------------------
# Hounsfield-unit windows
# --------------------------------------------------------------------------------------
def window(hu: np.ndarray, name: str | tuple[float, float]) -> np.ndarray:
    """Map HU (any shape) onto float32 [0, 1] with a display window, clipped.

    ``name`` is a key of :data:`WINDOWS` or a ``(width, level)`` pair in HU:
    ``(hu - (level - width / 2)) / width``. Written by hand (one line of NumPy) rather than
    through MONAI's ``ScaleIntensityRange`` to keep MONAI's import cost out of this module.
    """
    if isinstance(name, str):
        if name not in WINDOWS:
            raise ValueError(f"unknown window '{name}' (known: {', '.join(sorted(WINDOWS))})")
        width, level = WINDOWS[name]
    else:
        try:
            width, level = (float(v) for v in name)
        except (TypeError, ValueError):
            raise ValueError(f"window must be a name or a (width, level) pair, got {name!r}") from None
    if not (np.isfinite(width) and np.isfinite(level) and width > 0):
        raise ValueError(f"window width must be positive and finite, got width={width}, level={level}")
    low = level - width / 2.0
    return np.clip((np.asarray(hu, dtype=np.float64) - low) / width, 0.0, 1.0).astype(np.float32)


# --------------------------------------------------------------------------------------
# One 2D sagittal image from any supported file (medgen sample, the MRI->CT demo)
# --------------------------------------------------------------------------------------
# The sample command's input reading: 2D pictures as they are; NIfTI / DICOM through
# medgen.data.read_volume, the middle sagittal slice of a 3D volume, physical units mapped
# onto [0, 1] by fixed rules (HU) or the paper's MRI rescale (arbitrary units).
PLANES = ("sagittal", "coronal", "axial")  # slice planes by the RAS axis of the slice normal (x, y, z)


def read_sample_input(path: str | os.PathLike, *, notes: list[str],
                      max_bytes: int | None = None, max_voxels: int | None = None) -> Any:
    """The ``sample`` input as float32 ``[H, W]`` in [0, 1] (model range is ``2 * x - 1``).

    * PNG / TIFF / JPEG / ``.npy``: :func:`medgen.data.read_image` (2D, unchanged rules).
    * NIfTI (``.nii``, ``.nii.gz``), DICOM (``.dcm`` or the ``DICM`` marker) or a DICOM
      folder: :func:`medgen.data.read_volume`; a 3D volume gives its middle sagittal slice
      and every image is turned to the phantoms' view (:func:`sagittal_view`); then values:
      ``a.u.`` (MRI) rescaled linearly ``[0, max] -> [0, 1]`` with ``max`` the volume's
      maximum -- the paper's MRI normalisation (the phantom's fixed a.u. map cannot apply:
      scanner units are arbitrary), negative values clipped to 0; ``HU`` by the phantom's
      fixed CT map ``(HU / 1000 + 1) / 2`` clipped; ``[0,1]`` kept.

    Every conversion adds a one-line note to ``notes``. ``max_bytes`` / ``max_voxels``
    default to read_image's / read_volume's limits. Raises
    :class:`~medgen.data.ImageReadError` (one line naming the file).
    """
    path = Path(path)
    if not path.is_dir() and path.suffix.lower() in SUFFIXES:
        return read_image(path, max_bytes=max_bytes or MAX_BYTES, notes=notes)
    vol = read_volume(path, max_bytes=max_bytes or MAX_VOLUME_BYTES, max_voxels=max_voxels or MAX_VOXELS,
                         notes=notes)
    image = sagittal_view(vol, path.name, notes)
    return validate_array(_unit_range(image, vol, path.name, notes), path.name, notes=notes)


def _axis_directions(vol: Any) -> list[Any]:
    """RAS direction ``[3]`` of each array axis of ``vol`` (``affine`` columns reversed), or Nones."""
    if vol.affine is None:
        return [None] * vol.array.ndim
    cols = [vol.affine[:3, i] for i in range(3)]  # (w, h, d) order
    return [cols[2], cols[1], cols[0]][-vol.array.ndim:] if vol.array.ndim == 3 else [cols[1], cols[0]]


def sagittal_view(vol: Any, name: str, notes: list[str]) -> Any:
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


def _unit_range(image: Any, vol: Any, name: str, notes: list[str]) -> Any:
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

"""2D pictures (PNG, TIFF, JPEG, ``.npy``): reading, checking, the model range and writing.

:func:`read_image` gives a 2D picture as float32 ``[H, W]`` in ``[0, 1]`` (the demos' and the
CLI's input; the model sees it through :func:`to_model_range` as ``[1, 1, size, size]`` in
``[-1, 1]``). The table below lists what it accepts.

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

:func:`write_image` writes ``[H, W]`` in [0, 1] as 8/16-bit PNG or float32 ``.npy`` to a temporary
name and renames it (:func:`~medgen.data.io.common.atomic_path`).
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from medgen.data.io.common import (_LUMA, MAX_BYTES, MAX_PIXELS, NPY_SUFFIXES, ImageReadError, _check_file,
                                   _first_line, _note, _npy_header, atomic_path)

_FULL_SCALE = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}
_RANGE_TOL = 1e-6  # float images may overshoot [0, 1] by this much (rounding) and are clipped


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

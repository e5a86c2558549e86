"""medgen.data.io: every accepted format, every rejection (one-line messages) and the writers."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from assertions import raises_one_line  # noqa: E402  (tests/ is on sys.path)
import torch
from PIL import Image

from medgen.data.io import (
    ImageConversionWarning,
    ImageReadError,
    from_model_range,
    read_image,
    to_model_range,
    validate_array,
    write_image,
)

RAMP8 = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (8, 1))  # [8, 64] 0..252


def _png(tmp_path: Path, arr: np.ndarray, name: str = "img.png", mode: str | None = None) -> Path:
    path = tmp_path / name
    im = Image.fromarray(arr) if mode is None else Image.fromarray(arr).convert(mode)
    im.save(path)
    return path


def _raises(match: str, fn, *args, **kw) -> str:
    """Call ``fn``; assert a one-line ImageReadError containing ``match``."""
    return raises_one_line(ImageReadError, match, fn, *args, **kw)


# ------------------------------------------------------------------------------------------
# happy paths
# ------------------------------------------------------------------------------------------
def test_png_8bit_scaled_by_255(tmp_path: Path) -> None:
    notes: list[str] = []
    out = read_image(_png(tmp_path, RAMP8), notes=notes)
    assert out.dtype == np.float32 and out.shape == (8, 64)
    np.testing.assert_allclose(out, RAMP8 / 255.0, atol=1e-7)
    assert notes == []  # plain 8-bit gray needs no note


def test_png_16bit_scaled_by_65535_with_note(tmp_path: Path) -> None:
    arr = np.array([[0, 1000], [40000, 65535]], dtype=np.uint16)
    notes: list[str] = []
    out = read_image(_png(tmp_path, arr, "deep.png"), notes=notes)
    np.testing.assert_allclose(out, arr / 65535.0, atol=1e-7)
    assert len(notes) == 1 and "16-bit" in notes[0] and "65535" in notes[0] and "deep.png" in notes[0]


def test_tiff_16bit_and_float(tmp_path: Path) -> None:
    arr16 = np.array([[0, 65535], [32768, 1]], dtype=np.uint16)
    Image.fromarray(arr16).save(tmp_path / "a.tif")
    np.testing.assert_allclose(read_image(tmp_path / "a.tif", notes=[]), arr16 / 65535.0, atol=1e-7)
    arrf = np.array([[0.0, 0.25], [0.5, 1.0]], dtype=np.float32)
    Image.fromarray(arrf).save(tmp_path / "f.tiff")
    np.testing.assert_array_equal(read_image(tmp_path / "f.tiff"), arrf)


def test_rgb_png_converted_to_luminance_with_note(tmp_path: Path) -> None:
    rgb = np.zeros((4, 4, 3), dtype=np.uint8)
    rgb[..., 0] = 200  # pure red-ish
    rgb[..., 2] = 100
    notes: list[str] = []
    out = read_image(_png(tmp_path, rgb, "colour.png"), notes=notes)
    np.testing.assert_allclose(out, (0.299 * 200 + 0.114 * 100) / 255.0, atol=1e-6)
    assert len(notes) == 1 and "grayscale" in notes[0] and "RGB" in notes[0]


def test_gray_stored_as_rgb_is_exact(tmp_path: Path) -> None:
    rgb = np.repeat(RAMP8[..., None], 3, axis=-1)
    notes: list[str] = []
    out = read_image(_png(tmp_path, rgb), notes=notes)
    np.testing.assert_allclose(out, RAMP8 / 255.0, atol=1e-6)
    assert "gray image stored as RGB" in notes[0]


def test_rgba_drops_alpha_with_note(tmp_path: Path) -> None:
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., :3] = 128
    rgba[..., 3] = 7  # nearly transparent: must not change the gray value
    notes: list[str] = []
    out = read_image(_png(tmp_path, rgba), notes=notes)
    np.testing.assert_allclose(out, 128 / 255.0, atol=1e-6)
    assert "alpha" in notes[0]


def test_palette_and_1bit_and_jpeg(tmp_path: Path) -> None:
    pal = _png(tmp_path, RAMP8, "pal.png", mode="P")
    np.testing.assert_allclose(read_image(pal, notes=[]), RAMP8 / 255.0, atol=1 / 255)
    bits = _png(tmp_path, (RAMP8 > 128).astype(np.uint8) * 255, "bits.png", mode="1")
    np.testing.assert_array_equal(read_image(bits), (RAMP8 > 128).astype(np.float32))
    Image.fromarray(np.full((16, 16), 100, np.uint8)).save(tmp_path / "x.jpg", quality=95)
    np.testing.assert_allclose(read_image(tmp_path / "x.jpg"), 100 / 255, atol=2 / 255)


def test_npy_float_and_uint8_and_channel_axes(tmp_path: Path) -> None:
    arr = np.linspace(0, 1, 12, dtype=np.float64).reshape(3, 4)
    np.save(tmp_path / "a.npy", arr)
    out = read_image(tmp_path / "a.npy")
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, arr, atol=1e-7)
    np.save(tmp_path / "b.npy", RAMP8[None])  # [1, H, W]
    np.testing.assert_allclose(read_image(tmp_path / "b.npy"), RAMP8 / 255.0, atol=1e-7)
    np.testing.assert_allclose(validate_array(RAMP8[..., None]), RAMP8 / 255.0, atol=1e-7)  # [H, W, 1]


def test_notes_become_warnings_when_not_collected() -> None:
    with pytest.warns(ImageConversionWarning, match="16-bit"):
        validate_array(np.zeros((2, 2), np.uint16), "w")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        quiet = validate_array(np.zeros((2, 2), np.uint8), "quiet")  # nothing to say for 8-bit gray
    assert quiet.dtype == np.float32 and quiet.shape == (2, 2)


def test_float_rounding_overshoot_is_clipped() -> None:
    out = validate_array(np.array([[-1e-8, 1 + 1e-8]], dtype=np.float64))
    assert out.min() == 0.0 and out.max() == 1.0


# ------------------------------------------------------------------------------------------
# rejections (each one line, naming the file and the problem)
# ------------------------------------------------------------------------------------------
def test_missing_file(tmp_path: Path) -> None:
    _raises("nope.png: file not found", read_image, tmp_path / "nope.png")


def test_directory_and_unsupported_extension(tmp_path: Path) -> None:
    (tmp_path / "d.png").mkdir()
    _raises("d.png: not a file", read_image, tmp_path / "d.png")
    (tmp_path / "x.gif").write_bytes(b"GIF89a")
    _raises("x.gif: unsupported file type '.gif'", read_image, tmp_path / "x.gif")


def test_text_file_named_png(tmp_path: Path) -> None:
    (tmp_path / "fake.png").write_text("hello, I am not an image\n")
    _raises("fake.png: not an image", read_image, tmp_path / "fake.png")


def test_text_file_named_npy(tmp_path: Path) -> None:
    (tmp_path / "fake.npy").write_text("1 2 3\n")
    _raises("fake.npy: not a .npy array file", read_image, tmp_path / "fake.npy")


def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "zero.png").write_bytes(b"")
    _raises("zero.png: empty file", read_image, tmp_path / "zero.png")


def test_truncated_png(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    data = _png(tmp_path, rng.integers(0, 255, (64, 64), dtype=np.uint8)).read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    _raises("cut.png: unreadable or truncated image", read_image, tmp_path / "cut.png")


def test_truncated_npy(tmp_path: Path) -> None:
    np.save(tmp_path / "full.npy", np.zeros((64, 64), np.float32))
    data = (tmp_path / "full.npy").read_bytes()
    (tmp_path / "cut.npy").write_bytes(data[: len(data) // 2])
    _raises("cut.npy: unreadable or truncated .npy", read_image, tmp_path / "cut.npy")


def test_too_many_bytes(tmp_path: Path) -> None:
    path = _png(tmp_path, RAMP8)
    _raises("file too large", read_image, path, max_bytes=10)


def test_too_many_pixels_png_is_rejected_before_decoding(tmp_path: Path) -> None:
    path = _png(tmp_path, np.zeros((300, 400), np.uint8), "big.png")
    msg = _raises("big.png: image too large", read_image, path, max_pixels=300 * 400 - 1)
    assert "400x300" in msg


def test_too_many_pixels_default_limit(tmp_path: Path) -> None:
    path = _png(tmp_path, np.zeros((4097, 4096), np.uint8), "huge.png")  # compresses to ~17 KB
    _raises("huge.png: image too large", read_image, path)


def test_too_many_pixels_npy(tmp_path: Path) -> None:
    np.save(tmp_path / "big.npy", np.zeros((30, 40), np.float32))
    _raises("big.npy: image too large", read_image, tmp_path / "big.npy", max_pixels=100)


def test_nan_and_inf(tmp_path: Path) -> None:
    arr = np.full((4, 4), 0.5, np.float32)
    arr[0, 0] = np.nan
    arr[1, 1] = np.inf
    np.save(tmp_path / "nan.npy", arr)
    _raises("nan.npy: contains 1 NaN and 1 Inf values", read_image, tmp_path / "nan.npy")
    _raises("upload: contains 1 NaN", validate_array, arr, "upload")


def test_float_out_of_range() -> None:
    _raises("float values span [0, 1000]", validate_array, np.array([[0.0, 1000.0]]))


@pytest.mark.parametrize(
    "arr, match",
    [
        (np.zeros((5,), np.float32), "expected a 2D image"),
        (np.zeros((8, 8, 8), np.float32), "got 3D shape (8, 8, 8)"),
        (np.zeros((2, 8, 8, 1), np.float32), "got 4D"),
        (np.zeros((3, 8, 8), np.uint8), "got 3D shape (3, 8, 8)"),  # channels-first RGB
        (np.zeros((8, 8, 4), np.float32), "4-channel float32 array"),  # 4 slices, not RGBA
        (np.array(0.5), "got 0D"),
    ],
)
def test_wrong_ndim(arr: np.ndarray, match: str) -> None:
    _raises(match, validate_array, arr, "x")


def test_wrong_ndim_npy_file(tmp_path: Path) -> None:
    np.save(tmp_path / "vol.npy", np.zeros((4, 8, 8), np.float32))
    _raises("vol.npy: expected a 2D image", read_image, tmp_path / "vol.npy")


@pytest.mark.parametrize(
    "arr, match",
    [
        (np.zeros((4, 4), bool), "bool arrays (masks) are not images"),
        (np.zeros((4, 4), np.complex64), "unsupported dtype complex64"),
        (np.zeros((4, 4), np.int16), "integer dtype int16 has no defined full-scale"),
        (np.zeros((4, 4), np.uint32), "integer dtype uint32"),
        (np.array([["a", "b"]]), "unsupported dtype <U1"),
    ],
)
def test_unsupported_dtype(arr: np.ndarray, match: str) -> None:
    _raises(match, validate_array, arr, "x")


def test_object_npy_is_refused_without_unpickling(tmp_path: Path) -> None:
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    _raises("obj.npy: object arrays are not supported", read_image, tmp_path / "obj.npy")


def test_empty_arrays(tmp_path: Path) -> None:
    _raises("x: empty image (shape (0, 5))", validate_array, np.zeros((0, 5), np.float32), "x")
    np.save(tmp_path / "e.npy", np.zeros((0, 0), np.float32))
    _raises("e.npy: empty image", read_image, tmp_path / "e.npy")


def test_ragged_input_is_one_line() -> None:
    _raises("cannot be read as an array", validate_array, [[1, 2], [3]], "ragged")


# ------------------------------------------------------------------------------------------
# model range and writing
# ------------------------------------------------------------------------------------------
def test_to_model_range_maps_and_resizes() -> None:
    arr = np.zeros((64, 64), np.float32)
    arr[:, 32:] = 1.0
    x = to_model_range(arr, 16)
    assert x.shape == (1, 1, 16, 16) and x.dtype == torch.float32
    assert x.min().item() == -1.0 and x.max().item() == 1.0
    assert torch.allclose(x[..., :7], torch.tensor(-1.0)) and torch.allclose(x[..., 9:], torch.tensor(1.0))
    assert to_model_range(arr).shape == (1, 1, 64, 64)
    assert to_model_range(np.ones((10, 30), np.float32), (8, 12)).shape == (1, 1, 8, 12)


def test_to_model_range_antialiases_a_checkerboard() -> None:
    checker = (np.indices((64, 64)).sum(0) % 2).astype(np.float32)  # 1-pixel checkerboard
    x = to_model_range(checker, 16)
    assert torch.allclose(x, torch.zeros_like(x), atol=0.05)  # averaged to mid-gray, no aliasing


def test_from_model_range_roundtrip() -> None:
    arr = np.linspace(0, 1, 16, dtype=np.float32).reshape(4, 4)
    np.testing.assert_allclose(from_model_range(to_model_range(arr)), arr, atol=1e-6)
    with pytest.raises(ValueError, match="one 2D image"):
        from_model_range(torch.zeros(2, 1, 4, 4))


@pytest.mark.parametrize("bits, dtype, levels", [(8, np.uint8, 255), (16, np.uint16, 65535)])
def test_write_png_roundtrip(tmp_path: Path, bits: int, dtype: type, levels: int) -> None:
    arr = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    path = write_image(tmp_path / f"o{bits}.png", arr, bits=bits)
    raw = np.asarray(Image.open(path))
    assert raw.dtype == dtype and raw.max() == levels
    np.testing.assert_allclose(read_image(path, notes=[]), arr, atol=0.5 / levels + 1e-7)


def test_write_npy_roundtrip_and_errors(tmp_path: Path) -> None:
    arr = np.random.default_rng(1).random((5, 7)).astype(np.float32)
    np.testing.assert_array_equal(read_image(write_image(tmp_path / "o.npy", arr)), arr)
    with pytest.raises(ValueError, match="cannot write '.bmp'"):
        write_image(tmp_path / "o.bmp", arr)
    with pytest.raises(ValueError, match="bits must be 8 or 16"):
        write_image(tmp_path / "o.png", arr, bits=12)
    with pytest.raises(ImageReadError, match="NaN"):
        write_image(tmp_path / "n.png", np.full((2, 2), np.nan, np.float32))

"""medgen.data.io volumes: NIfTI / DICOM / npy reading, NIfTI and label writing, HU windows.

Real DICOM files come from pydicom's test files and the pydicom-data wheel
(``get_testdata_file(name, download=False)``: never downloads); the expected values are
derived independently from pydicom's own raw pixels and header fields.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from assertions import raises_one_line  # noqa: E402  (tests/ is on sys.path)
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import apply_modality_lut
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from medgen.data import io
from medgen.data.io import (WINDOWS, ImageReadError, Volume, read_labels, read_volume, window, write_image,
                            write_labels, write_volume)


def _testfile(name: str) -> Path:
    """A pydicom / pydicom-data test file, never downloaded (skip when the wheel lacks it)."""
    try:
        path = get_testdata_file(name, download=False)
    except Exception:  # pragma: no cover - depends on the installed wheels
        path = None
    if path is None:
        pytest.skip(f"{name} not installed")
    return Path(path)


def _raw(name: str) -> tuple[Dataset, np.ndarray]:
    ds = pydicom.dcmread(_testfile(name))
    return ds, ds.pixel_array


def _raises(match: str, fn, *args, **kw) -> str:
    """Call ``fn``; assert a one-line ImageReadError containing ``match``."""
    return raises_one_line(ImageReadError, match, fn, *args, **kw)


def write_ct_slice(path: Path, stored: np.ndarray, *, z: float, slope: float = 2.0, intercept: float = -1024.0,
                   spacing: tuple[float, float] = (0.5, 0.75), series: str = "1.2.826.0.1.3680043.99.1",
                   instance: int = 1, positions: bool = True) -> Path:
    """A minimal single-frame CT DICOM file (int16 stored values) with the given geometry."""
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.SeriesInstanceUID, ds.InstanceNumber = "CT", series, instance
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    ds.PixelSpacing, ds.SliceThickness = list(spacing), 2.5
    if positions:
        ds.ImagePositionPatient = [-10.0, -20.0, z]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelData = stored.astype("<i2").tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


# ------------------------------------------------------------------------------------------
# NIfTI
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_nifti_roundtrip_keeps_array_spacing_affine_and_unit(tmp_path: Path, suffix: str) -> None:
    arr = np.random.default_rng(0).normal(0, 300, (4, 5, 6)).astype(np.float32)  # [D, H, W]
    affine = np.array([[0.0, 0.5, 0.0, -12.5], [-0.75, 0.0, 0.0, 30.25], [0.0, 0.0, 2.5, 7.0], [0, 0, 0, 1]])
    path = write_volume(tmp_path / f"ct{suffix}", arr, affine=affine, unit="HU")
    vol = read_volume(path)
    assert isinstance(vol, Volume) and vol.array.dtype == np.float32
    np.testing.assert_array_equal(vol.array, arr)
    np.testing.assert_array_equal(vol.affine, affine)  # float32-representable entries: exact
    # affine columns (i, j, k) = (w, h, d): |col0| = 0.75 (w), |col1| = 0.5 (h), |col2| = 2.5 (d)
    assert vol.spacing == (2.5, 0.5, 0.75)
    assert vol.unit == "HU" and vol.modality == ""
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left


def test_nifti_axis_order_is_reversed_nifti_ijk(tmp_path: Path) -> None:
    arr = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)  # [D, H, W]
    path = write_volume(tmp_path / "v.nii.gz", arr, spacing=(3.0, 2.0, 1.0))
    img = nib.load(str(path))
    data = np.asarray(img.dataobj)
    assert data.shape == (4, 3, 2)  # NIfTI (i, j, k) = (w, h, d)
    assert data[3, 1, 0] == arr[0, 1, 3]
    assert img.header.get_zooms() == (1.0, 2.0, 3.0)
    assert img.header.get_data_dtype() == np.float32
    # a file made by nibabel directly reads back transposed, zooms reversed
    ijk = np.random.default_rng(1).random((5, 6, 7)).astype(np.float32)
    other = nib.Nifti1Image(ijk, np.diag([0.5, 0.25, 4.0, 1.0]))
    nib.save(other, str(tmp_path / "o.nii"))
    vol = read_volume(tmp_path / "o.nii")
    assert vol.array.shape == (7, 6, 5) and vol.spacing == (4.0, 0.25, 0.5) and vol.unit == "a.u."
    np.testing.assert_array_equal(vol.array, ijk.transpose(2, 1, 0))


def test_nifti_2d_and_label_map_int16(tmp_path: Path) -> None:
    img2d = np.random.default_rng(2).random((7, 9)).astype(np.float32)
    vol = read_volume(write_volume(tmp_path / "a.nii.gz", img2d, spacing=(0.5, 0.25)))
    np.testing.assert_array_equal(vol.array, img2d)
    assert vol.spacing == (0.5, 0.25)
    seg = np.random.default_rng(3).integers(0, 400, (3, 7, 9))
    path = write_volume(tmp_path / "seg.nii.gz", seg)
    assert nib.load(str(path)).header.get_data_dtype() == np.int16
    np.testing.assert_array_equal(read_labels(path), seg)
    with pytest.raises(ValueError, match="outside int16"):
        write_volume(tmp_path / "big.nii.gz", np.array([[0, 40000]]))


def test_write_volume_rejects_and_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_volume(tmp_path / "keep.nii.gz", np.ones((2, 3, 4), np.float32))
    before = path.read_bytes()
    with pytest.raises(ValueError, match="NaN"):
        write_volume(path, np.full((2, 3, 4), np.nan, np.float32))
    with pytest.raises(ValueError, match="NIfTI only"):
        write_volume(tmp_path / "x.png", np.ones((2, 3), np.float32))
    with pytest.raises(ValueError, match="disagrees"):
        write_volume(tmp_path / "y.nii", np.ones((2, 3, 4), np.float32), spacing=(1, 1, 1),
                     affine=np.diag([2, 1, 1, 1]))

    def crash(img, filename):  # write half a file, then fail like a full disk
        Path(filename).write_bytes(b"\x1f\x8bhalf")
        raise OSError("disk full")

    monkeypatch.setattr(nib, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        write_volume(path, np.zeros((2, 3, 4), np.float32))
    assert path.read_bytes() == before  # the old file is intact
    assert [p.name for p in tmp_path.iterdir()] == ["keep.nii.gz"]  # and no temporary is left


def test_nifti_rejections(tmp_path: Path) -> None:
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 3, 2), np.float32), np.eye(4)), str(tmp_path / "t.nii.gz"))
    _raises("t.nii.gz: expected a 2D [H, W] or 3D [D, H, W] image, got 4D", read_volume, tmp_path / "t.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 3, 1), np.float32), np.eye(4)), str(tmp_path / "s.nii.gz"))
    assert read_volume(tmp_path / "s.nii.gz").array.shape == (3, 4, 4)  # trailing singleton squeezed
    bad = np.zeros((3, 4, 5), np.float32)
    bad[0, 0, 0], bad[1, 1, 1] = np.nan, np.inf
    nib.save(nib.Nifti1Image(bad, np.eye(4)), str(tmp_path / "nan.nii"))
    _raises("nan.nii: contains 1 NaN and 1 Inf values", read_volume, tmp_path / "nan.nii")
    good = write_volume(tmp_path / "g.nii.gz", np.random.default_rng(0).random((8, 16, 16)).astype(np.float32))
    data = good.read_bytes()
    (tmp_path / "cut.nii.gz").write_bytes(data[: len(data) // 2])
    _raises("cut.nii.gz: unreadable or truncated NIfTI", read_volume, tmp_path / "cut.nii.gz")
    (tmp_path / "text.nii").write_text("not a nifti at all" * 30)
    _raises("text.nii: not a NIfTI file", read_volume, tmp_path / "text.nii")
    _raises("volume too large (16x16x8 = 2,048 voxels; limit 100)", read_volume, good, max_voxels=100)
    _raises("g.nii.gz: file too large", read_volume, good, max_bytes=100)


# ------------------------------------------------------------------------------------------
# npy, pictures, generic rejections
# ------------------------------------------------------------------------------------------
def test_npy_and_png_volumes(tmp_path: Path) -> None:
    hu = np.random.default_rng(4).integers(-1024, 3071, (3, 4, 5)).astype(np.int16)
    np.save(tmp_path / "hu.npy", hu)
    vol = read_volume(tmp_path / "hu.npy")
    assert vol.array.dtype == np.float32 and vol.unit == "a.u." and vol.spacing == (1.0, 1.0, 1.0)
    np.testing.assert_array_equal(vol.array, hu)
    np.save(tmp_path / "four.npy", np.zeros((1, 2, 3, 4), np.float32))
    _raises("four.npy: expected a 2D [H, W] or 3D [D, H, W] image, got 4D", read_volume, tmp_path / "four.npy")
    np.save(tmp_path / "b.npy", np.zeros((3, 3), bool))
    _raises("b.npy: unsupported dtype bool", read_volume, tmp_path / "b.npy")
    ramp = np.arange(0, 65536, 257, dtype=np.uint16).reshape(16, 16)
    Image.fromarray(ramp).save(tmp_path / "r16.png")
    vol = read_volume(tmp_path / "r16.png", notes=[])
    assert vol.unit == "[0,1]" and vol.spacing == (1.0, 1.0) and vol.affine is None
    np.testing.assert_allclose(vol.array, ramp / 65535.0, atol=1e-7)
    assert any("16-bit" in n for n in vol.notes)


def test_missing_empty_and_unsupported(tmp_path: Path) -> None:
    _raises("nope.nii.gz: file not found", read_volume, tmp_path / "nope.nii.gz")
    (tmp_path / "empty").mkdir()
    _raises("empty: empty folder (no DICOM slices)", read_volume, tmp_path / "empty")
    (tmp_path / "x.gif").write_bytes(b"GIF89a")
    _raises("x.gif: unsupported file type '.gif'", read_volume, tmp_path / "x.gif")
    (tmp_path / "zero.dcm").write_bytes(b"")
    _raises("zero.dcm: empty file", read_volume, tmp_path / "zero.dcm")
    (tmp_path / "text.dcm").write_text("hello, I am not a DICOM file\n" * 10)
    _raises("text.dcm: not a DICOM file", read_volume, tmp_path / "text.dcm")


# ------------------------------------------------------------------------------------------
# DICOM written here (known slope / intercept / geometry)
# ------------------------------------------------------------------------------------------
def test_synthetic_ct_file_hu_spacing_affine(tmp_path: Path) -> None:
    stored = np.arange(-6, 6, dtype=np.int16).reshape(3, 4) * 100
    path = write_ct_slice(tmp_path / "one.dcm", stored, z=5.0, slope=2.0, intercept=-1024.0)
    vol = read_volume(path)
    assert vol.unit == "HU" and vol.modality == "CT" and vol.array.shape == (3, 4)
    np.testing.assert_array_equal(vol.array, stored * 2.0 - 1024.0)
    assert vol.spacing == (0.5, 0.75)  # PixelSpacing = (row spacing, column spacing)
    # voxel (w=3, h=2): LPS = IPP + 3 * 0.75 * (1, 0, 0) + 2 * 0.5 * (0, 1, 0) = (-7.75, -19, 5); RAS negates x, y
    np.testing.assert_allclose(vol.affine @ [3, 2, 0, 1], [7.75, 19.0, 5.0, 1.0])


def test_synthetic_ct_folder_sorted_by_position_with_per_slice_rescale(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    folder = tmp_path / "series"
    folder.mkdir()
    z = [12.5, 7.5, 10.0, 5.0]  # written out of order; file names do not follow z either
    slices = [rng.integers(0, 2000, (6, 5)).astype(np.int16) for _ in z]
    intercepts = [-1024.0, -1000.0, -1024.0, -900.0]
    for i, (zi, s, b) in enumerate(zip(z, slices, intercepts)):
        write_ct_slice(folder / f"IM{i:04d}", s, z=zi, slope=1.0, intercept=b, instance=10 - i)
    vol = read_volume(folder)
    order = np.argsort(z)
    expected = np.stack([slices[i] * 1.0 + intercepts[i] for i in order])
    np.testing.assert_array_equal(vol.array, expected)
    assert vol.spacing == (2.5, 0.5, 0.75) and vol.unit == "HU"
    np.testing.assert_allclose(vol.affine @ [0, 0, 3, 1], [10.0, 20.0, 12.5, 1.0])  # last slice at z = 12.5
    # the NIfTI written from it keeps geometry and values
    back = read_volume(write_volume(tmp_path / "ct.nii.gz", vol.array, affine=vol.affine, unit="HU"))
    np.testing.assert_array_equal(back.array, vol.array)
    np.testing.assert_allclose(back.affine, vol.affine)
    assert back.spacing == vol.spacing


def test_folder_without_positions_uses_instance_number(tmp_path: Path) -> None:
    folder = tmp_path / "s"
    folder.mkdir()
    for i, inst in enumerate([3, 1, 2]):
        write_ct_slice(folder / f"f{i}.dcm", np.full((4, 4), inst, np.int16), z=0.0, slope=1.0, intercept=0.0,
                       instance=inst, positions=False)
    notes: list[str] = []
    vol = read_volume(folder, notes=notes)
    np.testing.assert_array_equal(vol.array[:, 0, 0], [1, 2, 3])
    assert vol.affine is None and vol.spacing[0] == 2.5  # SliceThickness as the fall-back
    assert any("InstanceNumber" in n for n in notes)


def test_folder_rejections(tmp_path: Path) -> None:
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    write_ct_slice(mixed / "a.dcm", np.zeros((4, 4), np.int16), z=0.0)
    write_ct_slice(mixed / "b.dcm", np.zeros((8, 4), np.int16), z=1.0)
    _raises("mixed: mixed slice sizes (a.dcm is 4x4, b.dcm is 8x4)", read_volume, mixed)
    two = tmp_path / "two"
    two.mkdir()
    write_ct_slice(two / "a.dcm", np.zeros((4, 4), np.int16), z=0.0, series="1.2.3.1")
    write_ct_slice(two / "b.dcm", np.zeros((4, 4), np.int16), z=1.0, series="1.2.3.2")
    _raises("two: holds 2 DICOM series", read_volume, two)
    same = tmp_path / "same"
    same.mkdir()
    write_ct_slice(same / "a.dcm", np.zeros((4, 4), np.int16), z=3.0)
    write_ct_slice(same / "b.dcm", np.zeros((4, 4), np.int16), z=3.0)
    _raises("same: two slices at the same position (a.dcm, b.dcm)", read_volume, same)
    junk = tmp_path / "junk"
    junk.mkdir()
    write_ct_slice(junk / "a.dcm", np.zeros((4, 4), np.int16), z=0.0)
    (junk / "readme.txt").write_text("notes about the scan\n" * 20)
    _raises("readme.txt: not a DICOM file", read_volume, junk)
    _raises("same: volume too large (2x4x4 = 32 voxels; limit 10)", read_volume, same, max_voxels=10)


# ------------------------------------------------------------------------------------------
# Real DICOM test files (pydicom / pydicom-data)
# ------------------------------------------------------------------------------------------
def test_real_ct_small_hu_and_spacing() -> None:
    ds, raw = _raw("CT_small.dcm")
    vol = read_volume(_testfile("CT_small.dcm"))
    by_hand = raw.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_array_equal(vol.array, by_hand)
    np.testing.assert_array_equal(vol.array, apply_modality_lut(raw, ds))
    assert float(ds.RescaleIntercept) == -1024.0 and vol.unit == "HU" and vol.modality == "CT"
    assert vol.spacing == pytest.approx((0.661468, 0.661468))


def test_real_ct_512() -> None:
    ds, raw = _raw("693_UNCR.dcm")
    vol = read_volume(_testfile("693_UNCR.dcm"))
    assert vol.array.shape == (512, 512) and float(ds.RescaleIntercept) == -1024.0
    np.testing.assert_array_equal(vol.array, raw * float(ds.RescaleSlope) - 1024.0)
    assert vol.spacing == pytest.approx((0.478516, 0.478516)) and vol.unit == "HU"


@pytest.mark.parametrize("name, bits", [("RG1_UNCR.dcm", 15), ("RG3_UNCR.dcm", 10)])
def test_real_cr_monochrome1_inverted_to_unit_range(name: str, bits: int) -> None:
    ds, raw = _raw(name)
    assert ds.PhotometricInterpretation == "MONOCHROME1" and ds.Modality == "CR" and ds.BitsStored == bits
    notes: list[str] = []
    vol = read_volume(_testfile(name), notes=notes)
    assert vol.unit == "[0,1]" and vol.modality == "CR" and vol.array.shape == raw.shape
    np.testing.assert_allclose(vol.array, 1.0 - raw / (2.0**bits - 1), atol=1e-6)
    assert any("MONOCHROME1 inverted" in n for n in notes)
    assert vol.spacing == (1.0, 1.0) and any("1 mm assumed" in n for n in notes)  # no usable PixelSpacing


def test_real_mr_small() -> None:
    ds, raw = _raw("MR_small.dcm")
    vol = read_volume(_testfile("MR_small.dcm"))
    assert vol.unit == "a.u." and vol.modality == "MR" and vol.spacing == (0.3125, 0.3125)
    np.testing.assert_array_equal(vol.array, raw)  # no rescale in the header: values as stored


def test_real_multiframe_mr() -> None:
    ds, raw = _raw("emri_small.dcm")
    vol = read_volume(_testfile("emri_small.dcm"), notes=[])
    assert raw.shape == (10, 64, 64) and vol.array.shape == (10, 64, 64) and len(vol.spacing) == 3
    np.testing.assert_array_equal(vol.array, raw)


def test_real_colour_ultrasound_luminance_with_note() -> None:
    ds, raw = _raw("US1_UNCR.dcm")
    assert ds.PhotometricInterpretation == "RGB" and raw.shape == (480, 640, 3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        vol = read_volume(_testfile("US1_UNCR.dcm"))  # notes not collected: issued as warnings
    warned = [str(w.message) for w in caught if issubclass(w.category, io.ImageConversionWarning)]
    assert any("luminance" in w for w in warned) and any("1 mm assumed" in w for w in warned)
    assert all(w.filename == __file__ for w in caught)  # attributed to the caller's line
    expected = (0.299 * raw[..., 0] + 0.587 * raw[..., 1] + 0.114 * raw[..., 2]) / 255.0
    np.testing.assert_allclose(vol.array, expected, atol=1e-6)
    assert vol.unit == "[0,1]" and vol.modality == "US"
    assert any("colour US (RGB) converted to grayscale luminance" in n for n in vol.notes)


@pytest.mark.parametrize("name, match", [
    ("MR_truncated.dcm", "MR_truncated.dcm: unreadable or truncated pixel data"),
    ("emri_small_jpeg_2k_lossless_too_short.dcm", "emri_small_jpeg_2k_lossless_too_short.dcm: truncated DICOM file"),
    ("rtplan.dcm", "rtplan.dcm: not an image (DICOM RT Plan Storage without pixel data)"),
])
def test_real_broken_files_give_one_line(name: str, match: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # pydicom's own warnings must not leak out either
        _raises(match, read_volume, _testfile(name))


def test_compressed_without_decoder_names_the_transfer_syntax() -> None:
    from pydicom.pixels import get_decoder

    path = _testfile("MR_small_jpeg_ls_lossless.dcm")
    ts = pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID
    if get_decoder(ts).is_available:
        pytest.skip("a JPEG-LS decoder is installed here")
    _raises("no decoder installed for transfer syntax 'JPEG-LS Lossless Image Compression'", read_volume, path)


# ------------------------------------------------------------------------------------------
# Label images and windows
# ------------------------------------------------------------------------------------------
def test_label_png_8_and_16_bit(tmp_path: Path) -> None:
    small = np.array([[0, 1], [2, 255]])
    path = write_labels(tmp_path / "s.png", small)
    assert np.asarray(Image.open(path)).dtype == np.uint8
    np.testing.assert_array_equal(read_labels(path), small)
    big = np.array([[0, 256], [1000, 65535]])
    path = write_labels(tmp_path / "b.png", big)
    assert np.asarray(Image.open(path)).dtype == np.uint16
    np.testing.assert_array_equal(read_labels(path), big)
    with pytest.raises(ValueError, match="integer or bool"):
        write_labels(tmp_path / "f.png", np.zeros((2, 2), np.float32))
    write_volume(tmp_path / "frac.nii.gz", np.full((2, 2), 0.5, np.float32))
    _raises("frac.nii.gz: label image holds non-integer values", read_labels, tmp_path / "frac.nii.gz")


def test_write_image_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_image(tmp_path / "a.png", np.zeros((4, 4), np.float32))
    before = path.read_bytes()

    def crash(self, fp, *args, **kw):
        Path(fp).write_bytes(b"\x89PNG half")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        write_image(path, np.ones((4, 4), np.float32))
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["a.png"]


@pytest.mark.parametrize("name", sorted(WINDOWS))
def test_window_edges(name: str) -> None:
    width, level = WINDOWS[name]
    hu = np.array([level - width / 2 - 100, level - width / 2, level - width / 4, level, level + width / 2,
                   level + width / 2 + 100])
    out = window(hu, name)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [0.0, 0.0, 0.25, 0.5, 1.0, 1.0], atol=1e-6)


def test_window_values_and_errors() -> None:
    assert WINDOWS == {"soft_tissue": (400, 40), "lung": (1500, -600), "bone": (1800, 400)}
    np.testing.assert_allclose(window(np.array([-160.0, 240.0]), "soft_tissue"), [0.0, 1.0])
    np.testing.assert_allclose(window(np.array([-1350.0, 150.0]), "lung"), [0.0, 1.0])
    np.testing.assert_allclose(window(np.array([-500.0, 1300.0]), "bone"), [0.0, 1.0])
    np.testing.assert_allclose(window(np.array([0.0, 50.0, 100.0]), (100, 50)), [0.0, 0.5, 1.0])
    with pytest.raises(ValueError) as info:
        window(np.zeros(2), "brain")
    assert str(info.value) == "unknown window 'brain' (known: bone, lung, soft_tissue)"
    with pytest.raises(ValueError, match="width must be positive"):
        window(np.zeros(2), (0, 40))

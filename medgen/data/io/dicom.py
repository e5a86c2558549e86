"""DICOM files and folders of slices as :class:`~medgen.data.io.common.Volume` (pydicom), for
:func:`~medgen.data.io.read_volume`.

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

Pixel decoding, the modality LUT and palette colour go through pydicom (``pixel_array``,
``apply_modality_lut``, ``apply_color_lut``); only the geometry and the unit rules are ours.
Not through MONAI's ``PydicomReader`` or SimpleITK's ``ImageSeriesReader``: the first sorts a
folder by InstanceNumber and z alone, rescales every modality and only warns on mixed slice
sizes, and neither maps display-referred modalities (BitsStored range, MONOCHROME1) or colour
as above nor fails with one line naming the file.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from medgen.data.io.common import _LUMA, ImageReadError, Volume, _check_file, _check_voxels, _first_line

_HU_MODALITIES = frozenset({"CT"})  # DICOM modalities whose rescaled values are Hounsfield units
_AU_MODALITIES = frozenset({"MR", "PT", "NM"})  # rescaled values in arbitrary / quantitative units
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])  # DICOM patient axes (LPS) -> NIfTI world axes (RAS)


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

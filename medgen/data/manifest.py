"""CSV manifests of real (or phantom-written) data: reading, checking and splitting.

The manifest format
-------------------
A dataset is a folder holding ``manifest.csv`` (any name works for :func:`read_manifest`)
and, optionally, a ``dataset.json`` sidecar beside it::

    patient_id,source,target,us_depths,cobb
    P001,images/P001_us.png,images/P001_xr.png,us/P001_0.png|us/P001_1.png,23.5
    P002,images/P002_us.png,images/P002_xr.png,us/P002_0.png|us/P002_1.png,41.0

* ``patient_id`` (required, non-empty): splits are by patient, several rows may share one.
* Image columns: paths relative to the CSV's folder (absolute paths work too) to PNG / TIFF /
  JPEG, NIfTI, DICOM files or DICOM folders, or ``.npy``. A cell ``a.png|b.png`` stacks
  the files along a new first axis (``[K, H, W]``, e.g. the 5 ultrasound depths).
* Label columns: numbers are parsed, strings kept; a label column may also hold paths to
  per-subject ``.npy`` arrays (landmarks), declared in the sidecar with type ``"array"``.

The sidecar's keys (modalities with their fixed maps and ``png_range``, label meanings and
types, label maps, split defaults) and how undescribed columns are classified: :mod:`medgen.data.sidecar`.

Without a sidecar entry a column holding only image paths is an image column and its
modality is inferred from the files of the first rows:

* PNG / TIFF / JPEG and display-referred DICOM (CR, DX, US ...): unit ``"[0,1]"``, low 0, high 1;
* DICOM CT (or a NIfTI written by :func:`medgen.data.io.write_volume` with unit HU): ``"HU"``
  over the full 12-bit CT range -1024 .. 3071;
* MRI DICOM, NIfTI and ``.npy`` of unknown unit: ``"a.u."`` with one *per-dataset* fixed
  scale: ``high`` = the 99.5th percentile and ``low`` = min(0, 0.5th percentile) of the values
  of the first ``SCALE_ROWS`` rows (each image subsampled to at most ``SCALE_SAMPLES`` values).
  Never per image: every image of the column shares the map, and :meth:`Manifest.split`
  and :func:`write_split_manifests` carry the same map to both sides.

Checks and errors
-----------------
:class:`ManifestError` (a ``ValueError``) has a one-line message naming the file and the row
/ column, e.g. ``manifest.csv row 7 (line 9) column target: 64x64, expected 128x128 like
row 0``. Rows count from 0 (the first data row; the same index :meth:`Manifest.load` takes)
and ``line`` is the line of the CSV file. :func:`read_manifest` checks eagerly what is cheap:
a missing file, a missing ``patient_id`` column, an empty patient id, duplicated columns,
ragged rows, a bad sidecar, a referenced file that does not exist, and a label that is not a
number where the sidecar says it is. What needs decoding -- an unreadable image, mixed image
sizes within a column -- is checked lazily by :meth:`Manifest.load`, or for every row at
once by :meth:`Manifest.validate`.

Writing
-------
:mod:`medgen.data.writers` writes this format: :func:`~medgen.data.writers.write_split_manifests`
(hashed train / test manifests of a manifest), :func:`~medgen.data.writers.write_phantom_dataset`
(a phantom rendered into it) and :func:`~medgen.data.writers.write_item_dataset` (the items of a
registered dataset, ``medgen phantoms toy_shapes``). Both sides share :data:`SEP`, the ``"|"``
that joins several files of one cell. ``write_split_manifests`` and ``write_phantom_dataset``
stay importable from here.
"""
from __future__ import annotations

import csv
import io as _stdio
import os
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from medgen.data import io
from medgen.data.io import ImageReadError
from medgen.data.phantoms.base import Modality
from medgen.data.sidecar import (LABEL_TYPES, PATIENT, SEP, SIDECAR_NAME, ManifestError, _build_schema,  # noqa: F401
                                 _first_line, _read_sidecar, _Schema, _sidecar_dict, split_cell)
from medgen.data.splits import check_disjoint, near_duplicate_ids, patient_split, split_hash

__all__ = ["ManifestError", "Manifest", "read_manifest", "split_cell", "MANIFEST_NAME", "SIDECAR_NAME", "SPLIT_NAME",
           "SEP", "HU_RANGE", "LABEL_TYPES"]

MANIFEST_NAME = "manifest.csv"  # CSV name written by write_phantom_dataset (and looked for in a folder)
SPLIT_NAME = "split.json"  # split record written by write_split_manifests
SCALE_ROWS = 8  # rows read to infer the fixed a.u. scale of a column without a sidecar entry
SCALE_PERCENTILE = 99.5  # percentile of those rows' values used as the a.u. column's "high"
SCALE_SAMPLES = 1 << 18  # at most this many values per image enter the percentile (strided)
HU_RANGE = (-1024.0, 3071.0)  # full 12-bit CT range in HU (inferred CT columns)
DEFAULT_SPLIT = {"test_fraction": 0.2, "seed": 0}  # Manifest.split defaults without a sidecar "split"
_TRUE, _FALSE = {"1", "true", "yes"}, {"0", "false", "no"}


# --------------------------------------------------------------------------------------
# Manifest
# --------------------------------------------------------------------------------------
class Manifest:
    """Rows of a CSV manifest with typed access to images (physical units) and labels.

    Build it with :func:`read_manifest`; :meth:`subset` / :meth:`split` return manifests that
    share the schema (and the fixed modality maps) of the manifest they came from.
    """

    def __init__(self, schema: _Schema, rows: Sequence[Mapping[str, str]], row_ids: Sequence[int],
                 lines: Sequence[int], shapes: dict[str, tuple[int, tuple[int, ...]]] | None = None) -> None:
        self._schema = schema
        self._rows = [dict(r) for r in rows]
        self._row_ids = list(row_ids)  # row index in the CSV file (0 = first data row)
        self._lines = list(lines)  # line number in the CSV file
        self._shapes = {} if shapes is None else shapes  # column -> (CSV row, shape) of the reference

    # -- description --------------------------------------------------------------------
    @property
    def path(self) -> Path:
        """The CSV file."""
        return self._schema.path

    @property
    def root(self) -> Path:
        """The folder relative paths are resolved against (the CSV's folder)."""
        return self._schema.root

    @property
    def columns(self) -> tuple[str, ...]:
        """Every CSV column in file order (``patient_id`` included)."""
        return self._schema.columns

    @property
    def image_columns(self) -> tuple[str, ...]:
        """Columns of intensity images (each has a :attr:`modalities` entry) and label maps."""
        return tuple(c for c in self.columns if c != PATIENT and self._schema.kind(c) in ("image", "label_map"))

    @property
    def path_columns(self) -> tuple[str, ...]:
        """Columns whose cells are file paths (images, label maps, array labels)."""
        return tuple(self._schema.path_columns())

    @property
    def label_maps(self) -> tuple[str, ...]:
        """Columns of integer label images (segmentations)."""
        return self._schema.label_maps

    @property
    def label_columns(self) -> tuple[str, ...]:
        """Scalar and array label columns (what :meth:`labels` returns)."""
        return tuple(c for c in self.columns if c in self._schema.label_types)

    @property
    def label_types(self) -> dict[str, str]:
        """Label column -> type (float, int, bool, str or array)."""
        return dict(self._schema.label_types)

    @property
    def label_meanings(self) -> dict[str, str]:
        """Label column -> meaning (from the sidecar; "" when none)."""
        return {c: self._schema.meanings.get(c, "") for c in self.label_columns}

    @property
    def modalities(self) -> dict[str, Modality]:
        """Image column -> :class:`Modality` (unit and fixed [low, high] map to the model range)."""
        return dict(self._schema.modalities)

    @property
    def sidecar(self) -> dict[str, Any]:
        """The resolved sidecar (declared and inferred entries) as written next to split manifests."""
        return _sidecar_dict(self._schema)

    @property
    def patient_ids(self) -> list[str]:
        """The patient id of every row (repeated when a patient has several rows)."""
        return [r[PATIENT] for r in self._rows]

    @property
    def split_hash(self) -> str:
        """:func:`medgen.data.splits.split_hash` of this manifest's patients."""
        return split_hash(self.patient_ids)

    def __len__(self) -> int:
        return len(self._rows)

    def __repr__(self) -> str:
        return (f"Manifest({self.path.name!r}, rows={len(self)}, patients={len(set(self.patient_ids))}, "
                f"images={list(self.image_columns)}, labels={list(self.label_columns)})")

    # -- access -------------------------------------------------------------------------
    def cell(self, row: int, column: str) -> str:
        """The raw CSV text of one cell."""
        self._check_row(row)
        if column not in self.columns:
            raise ManifestError(f"{self.path.name}: no column '{column}' (columns: {', '.join(self.columns)})")
        return self._rows[row][column]

    def paths(self, row: int, column: str) -> list[Path]:
        """The files one cell refers to (several for ``a|b`` cells), resolved against :attr:`root`."""
        return [self.root / part for part in split_cell(self.cell(row, column))]

    def load(self, row: int, column: str) -> np.ndarray:
        """One cell's image(s) as an array.

        Image columns: float32 ``[H, W]`` / ``[D, H, W]`` in physical units (``[K, ...]`` for a
        cell of K files); label maps: int32; array columns: the ``.npy`` as stored. Raises
        :class:`ManifestError` naming row, column and file for a missing or unreadable file,
        and for an image whose size differs from the column's first row.
        """
        self._check_row(row)
        kind = self._kind(column)
        if kind not in ("image", "label_map", "array"):
            raise ManifestError(f"{self._where(row, column)}: not an image column (a {kind} column)")
        paths = self.paths(row, column)
        if not paths:
            raise ManifestError(f"{self._where(row, column)}: empty cell (no file)")
        arrays = [self._read(path, kind, row, column) for path in paths]
        if len({a.shape for a in arrays}) > 1:
            shapes = ", ".join(_shape_text(a.shape) for a in arrays)
            raise ManifestError(f"{self._where(row, column)}: the files of one cell differ in size ({shapes})")
        arr = arrays[0] if len(arrays) == 1 else np.stack(arrays)
        if kind != "array":
            self._check_shape(row, column, arr.shape)
        return arr

    def labels(self, row: int) -> dict[str, Any]:
        """Label column -> value for one row: float / int / bool / str, a loaded array for array
        columns, ``None`` for an empty cell."""
        self._check_row(row)
        out: dict[str, Any] = {}
        for column in self.label_columns:
            text = self._rows[row][column]
            if text == "":
                out[column] = None
            elif self._schema.label_types[column] == "array":
                out[column] = self.load(row, column)
            else:
                out[column] = _parse_label(text, self._schema.label_types[column], self._where(row, column))
        return out

    def validate(self) -> None:
        """Load every image and label of every row once (sizes, decoding, values); raise the first error."""
        for row in range(len(self)):
            for column in self.columns:
                if column != PATIENT and self._kind(column) in ("image", "label_map") and self._rows[row][column]:
                    self.load(row, column)
            self.labels(row)

    # -- subsets and splits -------------------------------------------------------------
    def subset(self, rows: Sequence[int]) -> Manifest:
        """The manifest of ``rows`` (indices into this manifest), sharing the schema and size checks."""
        idx = [int(r) for r in rows]
        for r in idx:
            self._check_row(r)
        return Manifest(self._schema, [self._rows[r] for r in idx], [self._row_ids[r] for r in idx],
                        [self._lines[r] for r in idx], self._shapes)

    def split(self, test_fraction: float | None = None, seed: int | None = None) -> tuple[Manifest, Manifest]:
        """Patient-level ``(train, test)`` manifests (:func:`medgen.data.splits.patient_split`).

        Defaults come from the sidecar's ``"split"`` entry, else test_fraction 0.2 and seed 0.
        The split depends only on the set of patient ids and the seed, not on the row order.
        """
        test_fraction, seed = self.split_args(test_fraction, seed)
        train_ids, test_ids = patient_split(self.patient_ids, test_fraction, seed)
        check_disjoint(train_ids, test_ids)
        test_set = set(test_ids)
        train_rows = [i for i, pid in enumerate(self.patient_ids) if pid not in test_set]
        test_rows = [i for i, pid in enumerate(self.patient_ids) if pid in test_set]
        return self.subset(train_rows), self.subset(test_rows)

    def split_args(self, test_fraction: float | None = None, seed: int | None = None) -> tuple[float, int]:
        """``(test_fraction, seed)`` with the sidecar's ``"split"`` defaults (else 0.2 and 0) filled in."""
        defaults = {**DEFAULT_SPLIT, **(self._schema.extra.get("split") or {})}
        return (float(defaults["test_fraction"] if test_fraction is None else test_fraction),
                int(defaults["seed"] if seed is None else seed))

    # -- internals ----------------------------------------------------------------------
    def _kind(self, column: str) -> str:
        try:
            return self._schema.kind(column)
        except KeyError:
            known = ", ".join(self.columns)
            raise ManifestError(f"{self.path.name}: no column '{column}' (columns: {known})") from None

    def _check_row(self, row: int) -> None:
        if not isinstance(row, (int, np.integer)) or not 0 <= int(row) < len(self._rows):
            raise ManifestError(f"{self.path.name}: row {row} out of range (0..{len(self._rows) - 1})")

    def _where(self, row: int, column: str | None = None) -> str:
        """``manifest.csv row 7 (line 9) column target`` (CSV row and line of this manifest's ``row``)."""
        text = f"{self.path.name} row {self._row_ids[row]} (line {self._lines[row]})"
        return text if column is None else f"{text} column {column}"

    def _read(self, path: Path, kind: str, row: int, column: str) -> np.ndarray:
        """One file of a cell, converted for its column kind (ManifestError with the context)."""
        where = f"{self._where(row, column)}: {_rel(path, self.root)}"
        if not path.exists():
            raise ManifestError(f"{where}: file not found")
        try:
            if kind == "label_map":
                return io.read_labels(path)
            if kind == "array":
                return _load_npy_array(path)
            vol = io.read_volume(path, notes=[])
        except (ImageReadError, ValueError) as exc:
            raise ManifestError(f"{where}: {_first_line(exc)}") from None
        arr = vol.array
        png = self._schema.png_ranges.get(column)
        if png is not None and path.suffix.lower() in io.PIL_SUFFIXES:  # stored (v - low) / (high - low)
            arr = (png[0] + arr.astype(np.float64) * (png[1] - png[0])).astype(np.float32)
        return arr

    def _check_shape(self, row: int, column: str, shape: tuple[int, ...]) -> None:
        """Every image of a column has the size of the column's first row (reference loaded once)."""
        if column not in self._shapes and row != 0 and self._rows[0][column]:
            self.load(0, column)  # sets the reference from this manifest's first row
        ref = self._shapes.setdefault(column, (self._row_ids[row], tuple(shape)))
        if ref[1] != tuple(shape):
            raise ManifestError(f"{self._where(row, column)}: {_shape_text(shape)}, expected "
                                f"{_shape_text(ref[1])} like row {ref[0]}")


def _shape_text(shape: Sequence[int]) -> str:
    return "x".join(str(int(n)) for n in shape)


def _rel(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def _load_npy_array(path: Path) -> np.ndarray:
    """A per-subject ``.npy`` array (landmarks ...), never unpickled."""
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ImageReadError(f"{path.name}: unreadable .npy array ({_first_line(exc)})") from None


def _parse_label(text: str, kind: str, where: str) -> Any:
    """A CSV label cell as float / int / bool / str."""
    if kind == "str":
        return text
    try:
        if kind == "int":
            value = float(text)
            if not value.is_integer():
                raise ValueError
            return int(value)
        if kind == "bool":
            low = text.strip().lower()
            if low in _TRUE or low in _FALSE:
                return low in _TRUE
            raise ValueError
        return float(text)
    except ValueError:
        raise ManifestError(f"{where}: {text!r} is not {'an integer' if kind == 'int' else 'a ' + kind}") from None


# --------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------
def read_manifest(path: str | os.PathLike) -> Manifest:
    """Read a manifest CSV (or the ``manifest.csv`` of a folder) and its ``dataset.json`` sidecar.

    Checks eagerly what needs no decoding (module docstring) and infers the modality of
    image columns the sidecar does not describe (reading the first rows' files).
    """
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_NAME
    if not path.is_file():
        raise ManifestError(f"{path.name}: manifest file not found ({path})")
    columns, rows, lines = _read_csv(path)
    _warn_near_duplicate_ids(path, [row[PATIENT] for row in rows])
    sidecar = _read_sidecar(path.parent / SIDECAR_NAME, columns, path.name)
    schema = _build_schema(path, columns, rows, lines, sidecar)
    manifest = Manifest(schema, rows, list(range(len(rows))), lines)
    _check_paths(manifest)
    _check_labels(manifest)
    return _infer_modalities(manifest)


def _warn_near_duplicate_ids(path: Path, patient_ids: Sequence[str]) -> None:
    """One-line warning naming patient ids that differ only by case or whitespace (``P01`` / ``p01``):
    the split keeps them apart as different patients, a leak if they are one."""
    groups = near_duplicate_ids(patient_ids)
    if groups:
        shown = "; ".join(" / ".join(repr(pid) for pid in group) for group in groups[:5])
        more = f" and {len(groups) - 5} more" if len(groups) > 5 else ""
        warnings.warn(f"{path.name}: patient ids that differ only by case or whitespace are split as different "
                      f"patients: {shown}{more} (write them alike if they are one patient)", stacklevel=3)


def _read_csv(path: Path) -> tuple[tuple[str, ...], list[dict[str, str]], list[int]]:
    """Header, rows (stripped cells) and their line numbers; one-line errors."""
    name = path.name
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{name}: unreadable CSV ({_first_line(exc)})") from None
    reader = csv.reader(_stdio.StringIO(text))
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise ManifestError(f"{name}: empty file (no header)") from None
    except csv.Error as exc:
        raise ManifestError(f"{name}: unreadable CSV header ({exc})") from None
    if "" in header:
        raise ManifestError(f"{name}: column {header.index('') + 1} of the header has no name")
    dupes = sorted({h for h in header if header.count(h) > 1})
    if dupes:
        raise ManifestError(f"{name}: duplicated column(s) {', '.join(dupes)}")
    if PATIENT not in header:
        raise ManifestError(f"{name}: no '{PATIENT}' column (columns: {', '.join(header)})")
    rows, lines = [], []
    try:
        for cells in reader:
            if not any(c.strip() for c in cells):
                continue  # blank line
            line = reader.line_num
            if len(cells) != len(header):
                raise ManifestError(f"{name} row {len(rows)} (line {line}): {len(cells)} cells, "
                                    f"the header has {len(header)}")
            row = {h: c.strip() for h, c in zip(header, cells)}
            if not row[PATIENT]:
                raise ManifestError(f"{name} row {len(rows)} (line {line}): empty {PATIENT}")
            rows.append(row)
            lines.append(line)
    except csv.Error as exc:
        raise ManifestError(f"{name} line {reader.line_num}: {exc}") from None
    if not rows:
        raise ManifestError(f"{name}: no data rows")
    return tuple(header), rows, lines


def _check_paths(manifest: Manifest) -> None:
    """Every referenced file exists (row, column and path named otherwise)."""
    schema = manifest._schema
    for column in schema.path_columns():
        for row in range(len(manifest)):
            for path in manifest.paths(row, column):
                if not path.exists():
                    raise ManifestError(f"{manifest._where(row, column)}: file not found: "
                                        f"{_rel(path, manifest.root)}")


def _check_labels(manifest: Manifest) -> None:
    """Typed label cells parse (e.g. a number where the sidecar says float)."""
    for column, kind in manifest._schema.label_types.items():
        if kind in ("float", "int", "bool"):
            for row in range(len(manifest)):
                text = manifest._rows[row][column]
                if text:
                    _parse_label(text, kind, manifest._where(row, column))


def _infer_modalities(manifest: Manifest) -> Manifest:
    """Replace placeholder modalities (unit "?") by ones inferred from the first rows' files."""
    schema = manifest._schema
    todo = [c for c, m in schema.modalities.items() if m.unit == "?"]
    if not todo:
        return manifest
    modalities = dict(schema.modalities)
    for column in todo:
        modalities[column] = _infer_modality(manifest, column)
    new = _Schema(schema.path, schema.columns, modalities, schema.png_ranges, schema.label_maps,
                  schema.label_types, schema.meanings, schema.extra, schema.modality_notes)
    return Manifest(new, manifest._rows, manifest._row_ids, manifest._lines)


def _infer_modality(manifest: Manifest, column: str) -> Modality:
    """The fixed map of an undeclared image column (module docstring: units and the a.u. scale)."""
    rows = [r for r in range(len(manifest)) if manifest._rows[r][column]][:SCALE_ROWS]
    samples, unit = [], None
    for row in rows:
        for path in manifest.paths(row, column):
            try:
                vol = io.read_volume(path, notes=[])
            except ImageReadError as exc:
                raise ManifestError(f"{manifest._where(row, column)}: {_rel(path, manifest.root)}: "
                                    f"{_first_line(exc)}") from None
            unit = unit or vol.unit
            if unit != "a.u.":
                break
            flat = vol.array.ravel()
            samples.append(flat[:: max(1, flat.size // SCALE_SAMPLES)])
        if unit != "a.u.":
            break
    if unit == "HU":
        return Modality(column, "HU", *HU_RANGE, "inferred: CT in Hounsfield units, full 12-bit range")
    if unit == "[0,1]":
        return Modality(column, "[0,1]", 0.0, 1.0, "inferred: display-referred image in [0, 1]")
    values = np.concatenate(samples).astype(np.float64)
    high = float(np.percentile(values, SCALE_PERCENTILE))
    low = min(0.0, float(np.percentile(values, 100.0 - SCALE_PERCENTILE)))
    if not high > low:
        high = low + 1.0
    return Modality(column, "a.u.", low, high,
                    f"inferred: fixed per-dataset scale, {SCALE_PERCENTILE:g}th percentile of rows "
                    f"0-{rows[-1] if rows else 0}")


def __getattr__(name: str) -> Any:
    """The writers' old import path: ``from medgen.data.manifest import write_phantom_dataset`` still works."""
    if name in ("write_split_manifests", "write_phantom_dataset"):
        from medgen.data import writers

        return getattr(writers, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

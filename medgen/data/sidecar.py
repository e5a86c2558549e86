"""The ``dataset.json`` sidecar of a manifest and the column schema it gives (:class:`_Schema`).

The sidecar (every key optional) sits beside the CSV::

    {"phantom": "knee" | null,
     "modalities": {"target": {"unit": "HU", "low": -1024, "high": 3071, "description": "...",
                               "png_range": [low, high]}},      # optional, see below
     "labels": {"cobb": "Cobb angle [deg]",                     # meaning, type inferred
                "kl": {"meaning": "KL grade", "type": "int"}},  # float | int | bool | str | array
     "label_maps": ["seg"],                                      # integer label-image columns
     "split": {"test_fraction": 0.2, "seed": 0}}                 # defaults of Manifest.split

``modalities`` gives each image column's :class:`~medgen.data.phantoms.base.Modality`, the
*fixed* map of its physical range ``[low, high]`` onto the model range. ``png_range``
says that the column's 8/16-bit pictures store ``(value - low) / (high - low)`` rather
than the value itself (``write_phantom_dataset`` does this for modalities whose range is not
[0, 1]); :meth:`Manifest.load` undoes it. Other keys (``seed``, ``sizes`` ...) are kept.

Without a sidecar entry a column holding only image paths (``a.png|b.png``: several files of one
cell, joined by :data:`SEP`) is an image column whose modality :mod:`medgen.data.manifest` infers
from the files. Label maps must be declared (they look like images). Other columns are labels
whose type is inferred: ``int`` when every non-empty cell is an integer, else ``float`` when every
one is a number, else ``str``; an empty cell is a missing label (``None``).

Also the format's shared vocabulary: :class:`ManifestError`, :data:`PATIENT`, :data:`SEP`,
:func:`split_cell`. :func:`_sidecar_dict` writes the resolved sidecar (declared and inferred entries).
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from medgen.data import io
from medgen.data.phantoms.base import Modality

__all__ = ["ManifestError", "split_cell", "SIDECAR_NAME", "PATIENT", "SEP", "LABEL_TYPES"]

SIDECAR_NAME = "dataset.json"  # sidecar beside the CSV
PATIENT = "patient_id"  # the required column
SEP = "|"  # joins several files in one cell (stacked along a new first axis); every writer uses it
LABEL_TYPES = ("float", "int", "bool", "str", "array")
_MODALITY_KEYS = ("unit", "low", "high", "description", "png_range")  # other keys are kept as written
_INT = re.compile(r"[+-]?\d+")


class ManifestError(ValueError):
    """A manifest, sidecar or referenced file that cannot be used; one line naming file and row / column."""


@dataclass(frozen=True)
class _Schema:
    """What every column of a manifest means (shared by a manifest and its subsets)."""

    path: Path  # the CSV
    columns: tuple[str, ...]  # every CSV column, in file order
    modalities: Mapping[str, Modality]  # image column -> fixed map (declared or inferred)
    png_ranges: Mapping[str, tuple[float, float]]  # image column -> (low, high) its pictures are scaled by
    label_maps: tuple[str, ...]  # integer label-image columns
    label_types: Mapping[str, str]  # label column -> one of LABEL_TYPES
    meanings: Mapping[str, str]  # label column -> meaning
    extra: Mapping[str, Any]  # other sidecar keys (phantom, seed, sizes, split ...)
    modality_notes: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # other keys per modality

    @property
    def root(self) -> Path:
        return self.path.parent

    def kind(self, column: str) -> str:
        """"image", "label_map", "array", "label" or "id"."""
        if column in self.modalities:
            return "image"
        if column in self.label_maps:
            return "label_map"
        if column in self.label_types:
            return "array" if self.label_types[column] == "array" else "label"
        if column == PATIENT:
            return "id"
        raise KeyError(column)

    def path_columns(self) -> list[str]:
        """Columns whose cells are file paths (images, label maps, arrays)."""
        return [c for c in self.columns if c != PATIENT and self.kind(c) in ("image", "label_map", "array")]


def split_cell(text: str) -> list[str]:
    """The file paths of one cell: ``"a.png|b.png"`` -> ``["a.png", "b.png"]`` (split on :data:`SEP`)."""
    return [part.strip() for part in text.split(SEP) if part.strip()]


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _read_sidecar(path: Path, columns: Sequence[str], csv_name: str) -> dict[str, Any]:
    """The sidecar as a checked dict ({} when absent)."""
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{path.name}: unreadable JSON ({_first_line(exc)})") from None
    if not isinstance(data, dict):
        raise ManifestError(f"{path.name}: expected a JSON object, got {type(data).__name__}")

    def need(ok: bool, text: str) -> None:
        if not ok:
            raise ManifestError(f"{path.name}: {text}")

    for key, kind in (("modalities", dict), ("labels", dict), ("label_maps", list)):
        need(isinstance(data.get(key, kind()), kind), f"'{key}' must be a JSON {kind.__name__}")
    need(data.get("split") is None or isinstance(data["split"], dict), "'split' must be an object or null")
    named = [*data.get("modalities", {}), *data.get("labels", {}), *data.get("label_maps", [])]
    for column in named:
        need(column in columns, f"column '{column}' is not in {csv_name} (columns: {', '.join(columns)})")
        need(column != PATIENT and named.count(column) == 1,
             f"column '{column}' is listed more than once (modalities / labels / label_maps)")
    for column, entry in data.get("modalities", {}).items():
        need(isinstance(entry, dict) and isinstance(entry.get("unit"), str),
             f"modality '{column}' needs an object with 'unit', 'low' and 'high'")
        low, high = entry.get("low"), entry.get("high")
        need(_is_number(low) and _is_number(high) and float(high) > float(low),
             f"modality '{column}': 'low' and 'high' must be numbers with high > low, got {low!r}, {high!r}")
        rng = entry.get("png_range")
        need(rng is None or (isinstance(rng, list) and len(rng) == 2 and all(map(_is_number, rng))
                             and float(rng[1]) > float(rng[0])),
             f"modality '{column}': 'png_range' must be [low, high] with high > low")
    for column, entry in data.get("labels", {}).items():
        kind = entry.get("type") if isinstance(entry, dict) else None
        need(isinstance(entry, (str, dict)) and (kind is None or kind in LABEL_TYPES),
             f"label '{column}': expected a meaning string or {{'meaning', 'type'}} with type in "
             f"{', '.join(LABEL_TYPES)}")
    return data


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _looks_like_path(part: str, root: Path) -> bool:
    """A cell part names an image file (by extension) or a folder (a DICOM series)."""
    low = part.lower()
    return low.endswith(io.VOLUME_SUFFIXES) or (root / part).is_dir()


def _build_schema(path: Path, columns: Sequence[str], rows: list[dict[str, str]], lines: list[int],
                  sidecar: dict[str, Any]) -> _Schema:
    """Column kinds from the sidecar, the rest inferred (images by path-like cells, labels by type)."""
    modalities: dict[str, Modality] = {}
    png_ranges: dict[str, tuple[float, float]] = {}
    notes: dict[str, dict[str, Any]] = {}
    for column, entry in sidecar.get("modalities", {}).items():
        modalities[column] = Modality(column, entry["unit"], float(entry["low"]), float(entry["high"]),
                                      str(entry.get("description", "")))
        notes[column] = {k: v for k, v in entry.items() if k not in _MODALITY_KEYS}
        if entry.get("png_range") is not None:
            png_ranges[column] = (float(entry["png_range"][0]), float(entry["png_range"][1]))
    label_maps = tuple(c for c in columns if c in sidecar.get("label_maps", []))
    label_types: dict[str, str] = {}
    meanings: dict[str, str] = {}
    for column, entry in sidecar.get("labels", {}).items():
        meanings[column] = entry if isinstance(entry, str) else str(entry.get("meaning", ""))
        if isinstance(entry, dict) and entry.get("type"):
            label_types[column] = entry["type"]
    for column in columns:
        if column == PATIENT or column in modalities or column in label_maps or column in label_types:
            continue
        cells = [r[column] for r in rows if r[column]]
        paths = bool(cells) and all(_looks_like_path(p, path.parent) for c in cells for p in split_cell(c))
        if paths and column in meanings:
            label_types[column] = "array"  # a declared label holding per-subject files
        elif paths:
            modalities[column] = Modality(column, "?", 0.0, 1.0)  # placeholder, inferred from the files
        else:
            label_types[column] = _infer_label_type(cells)
    label_types = {c: label_types[c] for c in columns if c in label_types}
    extra = {k: v for k, v in sidecar.items() if k not in ("modalities", "labels", "label_maps")}
    return _Schema(path, tuple(columns), modalities, png_ranges, label_maps, label_types, meanings, extra, notes)


def _infer_label_type(cells: Sequence[str]) -> str:
    """int when every non-empty cell is an integer, float when every one is a number, else str."""
    if cells and all(_INT.fullmatch(c) for c in cells):
        return "int"
    try:
        [float(c) for c in cells]
    except ValueError:
        return "str"
    return "float" if cells else "str"


def _sidecar_dict(schema: _Schema) -> dict[str, Any]:
    """The sidecar describing ``schema`` (declared and inferred entries; extra keys kept)."""
    modalities = {}
    for column, m in schema.modalities.items():
        entry: dict[str, Any] = {"unit": m.unit, "low": m.low, "high": m.high, "description": m.description}
        if column in schema.png_ranges:
            entry["png_range"] = list(schema.png_ranges[column])
        entry.update(schema.modality_notes.get(column, {}))
        modalities[column] = entry
    labels = {c: {"meaning": schema.meanings.get(c, ""), "type": t} for c, t in schema.label_types.items()}
    out = {"phantom": schema.extra.get("phantom"), "modalities": modalities, "labels": labels,
           "label_maps": list(schema.label_maps)}
    out.update({k: v for k, v in schema.extra.items() if k not in out})
    return out

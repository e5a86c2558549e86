"""Writing datasets in the manifest format that :mod:`medgen.data.manifest` reads.

Three writers, one format (``manifest.csv`` + files relative to it; several files of one cell
joined with :data:`medgen.data.manifest.SEP`, ``"|"``, the separator the reader splits on):

* :func:`write_split_manifests` writes ``train.csv`` / ``test.csv`` of a manifest (paths
  rewritten relative to the output folder), the resolved ``dataset.json`` (inferred
  modalities included, so both sides keep one fixed map) and ``split.json`` (seed, fraction,
  each side's ``split_hash``). Every file is written to a temporary name and all are renamed
  only after all were written.
* :func:`write_phantom_dataset` renders a phantom into the format with a sidecar (physical
  units kept: 16-bit PNG of a fixed range, NIfTI float32, ``.npy``). The folder is built in a
  temporary folder and renamed at the end, so nothing is ever half-written.
* :func:`write_item_dataset` writes the items of a registered dataset (``medgen phantoms
  toy_shapes``): 8-bit PNGs of each item's model-range ``[C, H, W]`` tensors (one file per
  channel, joined with ``"|"``; the middle slice of a ``[C, D, H, W]`` volume) and its scalar
  metadata as label columns, without a sidecar.
"""
from __future__ import annotations

import csv
import io as _stdio
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from medgen.data import io
from medgen.data.manifest import (MANIFEST_NAME, PATIENT, SEP, SIDECAR_NAME, SPLIT_NAME, Manifest, ManifestError,
                                  split_cell)
from medgen.data.phantoms.base import TEST_OFFSET, Modality, PhantomSpec, Sizes, as_numbers
from medgen.data.splits import check_disjoint

__all__ = ["write_split_manifests", "write_phantom_dataset", "write_item_dataset", "subject_numbers", "CHUNK"]

CHUNK = 32  # subjects rendered at once by write_phantom_dataset (bounds memory)
ITEM_IMAGES = ("source", "target", "mask")  # item keys write_item_dataset stores as images


# --------------------------------------------------------------------------------------
# CSV and JSON text
# --------------------------------------------------------------------------------------
def _csv_text(columns: Sequence[str], rows: Sequence[Mapping[str, str]]) -> str:
    buf = _stdio.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([row[c] for c in columns])
    return buf.getvalue()


def _json_text(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=False) + "\n"


# --------------------------------------------------------------------------------------
# Split manifests
# --------------------------------------------------------------------------------------
def _rewrite_rows(manifest: Manifest, out_dir: Path) -> list[dict[str, str]]:
    """Rows with every relative path re-expressed relative to ``out_dir`` (absolute ones kept)."""
    columns = manifest.path_columns
    rows = []
    for row in range(len(manifest)):
        new = {column: manifest.cell(row, column) for column in manifest.columns}
        for column in columns:
            parts = []
            for part in split_cell(new[column]):
                if Path(part).is_absolute():
                    parts.append(part)
                else:
                    target = os.path.abspath(manifest.root / part)
                    parts.append(Path(os.path.relpath(target, os.path.abspath(out_dir))).as_posix())
            new[column] = SEP.join(parts)
        rows.append(new)
    return rows


def write_split_manifests(manifest: Manifest, out_dir: str | os.PathLike, test_fraction: float | None = None,
                          seed: int | None = None) -> tuple[Path, Path]:
    """Write ``train.csv``, ``test.csv``, ``dataset.json`` and ``split.json`` into ``out_dir``.

    The split is :meth:`Manifest.split` (patient-level, order-independent); overlapping
    patients are refused (:func:`medgen.data.splits.check_disjoint`). Paths are rewritten
    relative to ``out_dir``; ``dataset.json`` is the resolved sidecar (inferred modalities
    included) with the split's ``test_fraction`` / ``seed``; ``split.json`` records seed,
    fraction and each side's ``split_hash``, patients and rows. Every file is written to a
    temporary name first and all are renamed only after all were written. Returns
    ``(train_csv, test_csv)``.
    """
    out_dir = Path(out_dir)
    test_fraction, seed = manifest.split_args(test_fraction, seed)
    train, test = manifest.split(test_fraction, seed)
    check_disjoint(train.patient_ids, test.patient_ids)
    out_dir.mkdir(parents=True, exist_ok=True)
    sidecar = {**manifest.sidecar, "split": {"test_fraction": test_fraction, "seed": seed}}
    record = {"seed": seed, "test_fraction": test_fraction, "source": str(manifest.path)}
    files: dict[str, str] = {}
    for side, part in (("train", train), ("test", test)):
        files[f"{side}.csv"] = _csv_text(manifest.columns, _rewrite_rows(part, out_dir))
        record[side] = {"csv": f"{side}.csv", "split_hash": part.split_hash,
                        "patients": len(set(part.patient_ids)), "rows": len(part)}
    files[SIDECAR_NAME] = _json_text(sidecar)
    files[SPLIT_NAME] = _json_text(record)
    _write_all(out_dir, files)
    return out_dir / "train.csv", out_dir / "test.csv"


def _write_all(out_dir: Path, files: Mapping[str, str]) -> None:
    """Write every file to a temporary name, then rename them all (nothing half-written)."""
    temps: list[tuple[Path, Path]] = []
    try:
        for name, text in files.items():
            tmp = out_dir / f".{name}.{os.urandom(6).hex()}.tmp"
            tmp.write_text(text, encoding="utf-8")
            temps.append((tmp, out_dir / name))
        for tmp, final in temps:
            os.replace(tmp, final)
    finally:
        for tmp, _ in temps:
            if tmp.exists():
                tmp.unlink()


# --------------------------------------------------------------------------------------
# Writing a phantom as a dataset
# --------------------------------------------------------------------------------------
@dataclass
class _Plan:
    """How one key of a phantom's output is stored."""

    key: str
    kind: str  # "image" | "label_map" | "scalar" | "array"
    fmt: str  # "png" | "nifti" | "csv" | "npy"
    multi: bool = False  # K files per subject ([n, K, H, W] / [n, K, D, H, W])
    clipped: int = 0  # PNG pixels clipped to [low, high]
    total: int = 0  # PNG pixels written


def _nifti_unit(modality: Modality) -> bool:
    """Modalities stored as NIfTI float32 even in 2D: Hounsfield units and MRI (by the unit's words)."""
    return bool(set(re.findall(r"[A-Z]+", modality.unit.upper())) & {"HU", "MR", "MRI"})


def _plan_key(spec: PhantomSpec, key: str, arr: np.ndarray, sizes: Sizes) -> _Plan:
    """Storage of one output key from its role in the spec and its per-subject shape."""
    per = arr.shape[1:]
    is_volume = len(per) == 3 and sizes.depth > 0 and per[0] == sizes.depth
    if key in spec.modalities or key in spec.label_maps:
        if len(per) not in (2, 3, 4):
            raise ManifestError(f"phantom '{spec.name}': image '{key}' has per-subject shape {per}, "
                                f"expected [H, W], [D, H, W] or [K, H, W]")
        multi = (len(per) == 3 and not is_volume) or len(per) == 4
        three_d = len(per) == 4 or is_volume
        if key in spec.label_maps:
            return _Plan(key, "label_map", "nifti" if three_d else "png", multi)
        nifti = three_d or _nifti_unit(spec.modalities[key])
        return _Plan(key, "image", "nifti" if nifti else "png", multi)
    return _Plan(key, "scalar", "csv") if len(per) == 0 else _Plan(key, "array", "npy")


def _label_type(arr: np.ndarray, plan: _Plan) -> str:
    if plan.kind == "array":
        return "array"
    return {"b": "bool", "i": "int", "u": "int", "f": "float"}.get(arr.dtype.kind, "str")


def _format_scalar(value: Any) -> str:
    """CSV text of a scalar label that parses back to the same value (floats: shortest repr)."""
    if isinstance(value, (bool, np.bool_)):
        return "1" if value else "0"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return repr(float(value))
    return str(value)


class _PhantomWriter:
    """Writes rendered chunks of a phantom into ``folder`` and collects the CSV rows."""

    def __init__(self, spec: PhantomSpec, sizes: Sizes, folder: Path) -> None:
        self.spec, self.sizes, self.folder = spec, sizes, folder
        self.plans: dict[str, _Plan] = {}
        self.label_types: dict[str, str] = {}
        self.rows: list[dict[str, str]] = []

    def add(self, numbers: np.ndarray, arrays: Mapping[str, np.ndarray]) -> None:
        """Write the subjects ``numbers`` of one rendered chunk."""
        if not self.plans:
            self._plan(arrays)
        for key in self.plans:
            if key not in arrays or len(arrays[key]) != len(numbers):
                raise ManifestError(f"phantom '{self.spec.name}': output '{key}' missing or not of length "
                                    f"{len(numbers)} in a chunk")
        for i, number in enumerate(numbers):
            pid = f"{self.spec.name}-{int(number):06d}"
            row = {PATIENT: pid}
            for key, plan in self.plans.items():
                row[key] = self._write(plan, pid, arrays[key][i])
            self.rows.append(row)

    def _plan(self, arrays: Mapping[str, np.ndarray]) -> None:
        order = [*self.spec.modalities, *self.spec.label_maps, *self.spec.labels, *sorted(arrays)]
        for key in dict.fromkeys(order):
            if key in arrays:
                arr = np.asarray(arrays[key])
                plan = self.plans[key] = _plan_key(self.spec, key, arr, self.sizes)
                if plan.kind in ("scalar", "array"):
                    self.label_types[key] = _label_type(arr, plan)
                if plan.fmt in ("png", "nifti", "npy"):
                    (self.folder / key).mkdir()

    def _write(self, plan: _Plan, pid: str, value: np.ndarray) -> str:
        """Write one subject's value of one key; return its CSV cell."""
        if plan.kind == "scalar":
            return _format_scalar(value.item() if isinstance(value, np.ndarray) else value)
        if plan.kind == "array":
            rel = f"{plan.key}/{pid}.npy"
            np.save(self.folder / rel, np.asarray(value))
            return rel
        items = list(value) if plan.multi else [value]
        suffix = ".png" if plan.fmt == "png" else ".nii.gz"
        names = [f"{plan.key}/{pid}{suffix}"] if not plan.multi else \
            [f"{plan.key}/{pid}_{k}{suffix}" for k in range(len(items))]
        for rel, item in zip(names, items):
            self._write_image(plan, self.folder / rel, np.asarray(item))
        return SEP.join(names)

    def _write_image(self, plan: _Plan, path: Path, item: np.ndarray) -> None:
        if plan.kind == "label_map":
            io.write_labels(path, item)
            return
        modality = self.spec.modalities[plan.key]
        if plan.fmt == "nifti":
            io.write_volume(path, item.astype(np.float32), unit="HU" if modality.unit == "HU" else "a.u.")
            return
        # 16-bit PNG of (value - low) / (high - low); values outside [low, high] are clipped (and
        # counted: the model's fixed map clips them too, see Modality.to_model).
        if not np.isfinite(item).all():
            raise ManifestError(f"phantom '{self.spec.name}': image '{plan.key}' contains NaN or Inf")
        scaled = (item.astype(np.float64) - modality.low) / (modality.high - modality.low)
        plan.clipped += int(((scaled < 0.0) | (scaled > 1.0)).sum())
        plan.total += scaled.size
        io.write_image(path, np.clip(scaled, 0.0, 1.0), bits=16)

    def sidecar(self, extra: Mapping[str, Any]) -> dict[str, Any]:
        """dataset.json for the written columns."""
        modalities = {}
        for key, plan in self.plans.items():
            if plan.kind != "image":
                continue
            m = self.spec.modalities[key]
            entry: dict[str, Any] = {"unit": m.unit, "low": m.low, "high": m.high, "description": m.description,
                                     "storage": "NIfTI float32, physical units" if plan.fmt == "nifti" else
                                     "16-bit PNG of (value - low) / (high - low), clipped to [low, high]"}
            if plan.fmt == "png":
                entry["png_range"] = [m.low, m.high]
                entry["clipped_fraction"] = plan.clipped / max(plan.total, 1)
            modalities[key] = entry
        labels = {k: {"meaning": self.spec.labels.get(k, ""), "type": t} for k, t in self.label_types.items()}
        label_maps = [k for k, p in self.plans.items() if p.kind == "label_map"]
        return {"phantom": self.spec.name, **extra, "modalities": modalities, "labels": labels,
                "label_maps": label_maps}


def write_phantom_dataset(
    spec: PhantomSpec,
    numbers: Sequence[int] | np.ndarray | int,
    out_dir: str | os.PathLike,
    *,
    seed: int = 0,
    sizes: Sizes | str = "ci",
    controls: Mapping[str, float] | None = None,
    progress: bool = False,
    overwrite: bool = False,
    chunk: int = CHUNK,
) -> Path:
    """Render phantom subjects ``numbers`` and write them as a manifest dataset; return the CSV path.

    Subjects are rendered ``chunk`` at a time (``spec(numbers, seed=, sizes=, **controls)``) so
    memory stays bounded. Storage per key (``<key>/<patient_id>[_k].<ext>``):

    * 2D images (``[n, H, W]``; ``[n, K, H, W]`` -> K files joined with ``|``): 16-bit PNG of
      ``(value - low) / (high - low)`` with the modality's ``[low, high]`` (``png_range`` in the
      sidecar; values outside are clipped and the clipped fraction recorded), except Hounsfield
      and MRI units, which go to NIfTI float32 like every 3D image (``[n, D, H, W]`` with
      ``D == sizes.depth``): exact;
    * label maps: 8/16-bit PNG (2D) or int16 NIfTI (3D);
    * scalar labels (``[n]``): CSV columns; other arrays (landmarks ...): one ``.npy`` per subject.

    Patient ids are ``"<phantom>-000123"``. The folder is built in a temporary folder beside
    ``out_dir`` and renamed at the end; an existing non-empty ``out_dir`` is an error unless
    ``overwrite``. Reading it back with :func:`read_manifest` and :meth:`Manifest.load`
    reproduces the arrays (PNG: to 16-bit quantisation, ``(high - low) / 131070``).
    """
    numbers = as_numbers(numbers)
    if numbers.size == 0:
        raise ManifestError(f"phantom '{spec.name}': no subjects to write")
    size = spec.sizes_for(sizes) if isinstance(sizes, str) else sizes
    out_dir = Path(out_dir)
    _check_target(out_dir, overwrite)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.urandom(6).hex()}"
    tmp.mkdir()
    try:
        writer = _PhantomWriter(spec, size, tmp)
        starts = range(0, len(numbers), max(1, int(chunk)))
        if progress:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc=f"writing {spec.name}", unit="chunk")
        for start in starts:
            part = numbers[start:start + max(1, int(chunk))]
            writer.add(part, spec(part, seed=seed, sizes=size, **dict(controls or {})))
        extra = {"seed": int(seed), "sizes": {"height": size.height, "width": size.width, "depth": size.depth},
                 "controls": dict(controls or {}), "subjects": int(len(numbers))}
        columns = [PATIENT, *writer.plans]
        (tmp / MANIFEST_NAME).write_text(_csv_text(columns, writer.rows), encoding="utf-8")
        (tmp / SIDECAR_NAME).write_text(_json_text(writer.sidecar(extra)), encoding="utf-8")
        _publish(tmp, out_dir, overwrite)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir / MANIFEST_NAME


def _check_target(out_dir: Path, overwrite: bool) -> None:
    """``out_dir`` must be absent or empty, unless ``overwrite``; never a file."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ManifestError(f"{out_dir.name}: exists and is not a folder ({out_dir})")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise ManifestError(f"{out_dir.name}: folder exists and is not empty; pass overwrite=True to replace it")


def _publish(tmp: Path, out_dir: Path, overwrite: bool) -> None:
    """Rename the finished ``tmp`` folder onto ``out_dir`` (an old one is moved aside, then removed)."""
    _check_target(out_dir, overwrite)
    if not out_dir.exists():
        os.replace(tmp, out_dir)
        return
    old = out_dir.parent / f".{out_dir.name}.old-{os.urandom(6).hex()}"
    os.replace(out_dir, old)
    try:
        os.replace(tmp, out_dir)
    except BaseException:
        os.replace(old, out_dir)
        raise
    shutil.rmtree(old, ignore_errors=True)


def subject_numbers(split: str, n: int) -> list[int]:
    """The first ``n`` phantom subject numbers of ``split``: ``0..`` for train, ``TEST_OFFSET..`` for test."""
    if split not in ("train", "test"):
        raise ValueError(f"unknown split '{split}' (choose from train, test)")
    start = 0 if split == "train" else TEST_OFFSET
    return list(range(start, start + n))


# --------------------------------------------------------------------------------------
# Writing the items of a registered dataset (medgen phantoms toy_shapes)
# --------------------------------------------------------------------------------------
def write_item_dataset(dataset: Any, out_dir: str | os.PathLike, n: int) -> tuple[Path, int]:
    """Write the first ``n`` items of ``dataset`` into ``out_dir`` with a ``manifest.csv``.

    ``dataset[i]`` is an item dict: ``source`` / ``target`` ``[C, H, W]`` or ``[C, D, H, W]`` in the
    model range ``[-1, 1]``, optional ``mask`` (same shape, in [0, 1]), ``patient_id`` and scalar
    metadata. Each channel becomes an 8-bit PNG ``<index>_<patient>_<key>[_c<k>].png``; a cell of
    several channels joins its files with ``"|"`` (:data:`~medgen.data.manifest.SEP`), so
    :meth:`~medgen.data.manifest.Manifest.load` stacks them back to ``[C, H, W]`` (in [0, 1]).
    Scalars (numbers, strings, one-element tensors) become label columns. The folder may exist;
    files are overwritten. Returns ``(manifest.csv path, number of rows)``.
    """
    import pandas as pd

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = [_write_item(out, i, dataset[i]) for i in range(min(n, len(dataset)))]
    pd.DataFrame(rows).to_csv(out / MANIFEST_NAME, index=False)
    return out / MANIFEST_NAME, len(rows)


def _write_item(out: Path, index: int, item: Mapping[str, Any]) -> dict[str, Any]:
    """Write one dataset item; returns its manifest row."""
    pid = str(item.get("patient_id", index))
    stem = f"{index:04d}_{_safe(pid)}"
    row: dict[str, Any] = {PATIENT: pid}
    for key in ITEM_IMAGES:
        if item.get(key) is not None:
            files = _write_planes(out, f"{stem}_{key}", item[key], model_range=key != "mask")
            row[key] = SEP.join(files)
    row.update(_scalar_labels(item))
    return row


def _safe(text: str) -> str:
    """``text`` usable in a file name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "x"


def _planes(tensor: Any) -> list[Any]:
    """Displayable 2D planes ``[H, W]`` of one item tensor ``[C, H, W]`` or ``[C, D, H, W]`` (middle slice)."""
    t = tensor.detach().float().cpu()
    if t.ndim == 4:
        t = t[:, t.shape[1] // 2]
    if t.ndim != 3:
        raise ValueError(f"cannot write an item tensor of shape {tuple(tensor.shape)} as images")
    return [t[c] for c in range(t.shape[0])]


def _write_planes(out: Path, stem: str, tensor: Any, *, model_range: bool) -> list[str]:
    """Write each channel of ``tensor`` (``[C, H, W]`` / ``[C, D, H, W]``) as an 8-bit PNG; returns the file names."""
    names = []
    planes = _planes(tensor)
    for c, plane in enumerate(planes):
        name = f"{stem}.png" if len(planes) == 1 else f"{stem}_c{c}.png"
        image = io.from_model_range(plane) if model_range else plane.clamp(0, 1).numpy()
        io.write_image(out / name, image)
        names.append(name)
    return names


def _scalar_labels(item: Mapping[str, Any]) -> dict[str, Any]:
    """Meta values of an item that fit in a CSV cell (numbers, strings, 1-element tensors)."""
    labels = {}
    for key, value in item.items():
        if key in (*ITEM_IMAGES, PATIENT):
            continue
        if hasattr(value, "numel") and value.numel() == 1:
            value = value.item()
        if isinstance(value, (int, float, str, bool)):
            labels[key] = value
    return labels

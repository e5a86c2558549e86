"""The machinery shared by every dataset kind: :class:`_RecordDataset` (a ``torch`` ``Dataset``).

It builds the record source (phantom or manifest), checks keys and shapes against the kind,
maps records to model-range items (``source [C,*S]``, ``target [1,*S]``, ``mask [1,*S]``, meta),
keeps an LRU cache of processed records and applies the train split's augmentation.
Subclasses (:mod:`medgen.data.datasets.kinds`) set a kind's shape rules and item layout.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

import medgen.data.phantoms  # noqa: F401 -- fills PHANTOMS
from medgen.config import DataConfig
from medgen.data.datasets.common import CACHE_BYTES, REGISTRATIONS, SPLITS, DatasetError, is_mri, resize_source
from medgen.data.datasets.keys import _parse_keys, _split_key, select_image
from medgen.data.datasets.sources import ManifestSource, PhantomSource, _is_points
from medgen.data.phantoms.base import TEST_OFFSET, Modality, PhantomError
from medgen.data.splits import split_hash as _split_hash
from medgen.registry import PHANTOMS, lookup


def _meta_value(value: Any) -> Any:
    """A label as stored in a record: NumPy scalars -> Python scalars, arrays kept (compact)."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value[()]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _manifest_size(first_shape: Sequence[int], cfg: DataConfig) -> tuple[int, int]:
    """``(H, W)`` of a manifest's items: width ``cfg.image_size``, height ``cfg.image_height`` or the
    aspect ratio of the first row's image (``first_shape``, ``[..., H0, W0]``)."""
    h0, w0 = first_shape[-2:]
    return (cfg.image_height or max(8, int(round(cfg.image_size * h0 / w0))), cfg.image_size)


def spatial_shape(cfg: DataConfig, spatial_dims: int = 2) -> tuple[int, ...]:
    """The spatial size ``S`` of the items a dataset built from ``cfg`` serves, without rendering any.

    ``(H, W)`` for ``spatial_dims=2``, ``(D, H, W)`` for 3. ``W = cfg.image_size``; ``H =
    cfg.image_height`` when set, else the phantom's paper aspect ratio (``PhantomSpec.sizes_at``),
    the manifest's first row (one image is read) or ``W`` (``toy_shapes`` and other square data);
    ``D = cfg.depth`` when set, else the phantom's scaled paper depth or the manifest's first
    source volume's slices, else ``W``. What a model that
    makes images from nothing (``ddpm.generate``) or resizes its input (``segmenter``) needs to know.
    """
    w, h, depth = cfg.image_size, cfg.image_size, cfg.depth
    phantom, manifest = cfg.phantom.strip(), cfg.manifest.strip()
    if phantom:
        sizes = lookup(PHANTOMS, phantom).sizes_at(w, cfg.depth)
        h, depth = sizes.height, depth or sizes.depth
    elif manifest:
        from medgen.data.manifest import read_manifest

        full = read_manifest(manifest)
        if len(full.patient_ids):
            first = np.shape(full.load(0, _split_key(_parse_keys(cfg.source)[0])[0]))
            h, depth = _manifest_size(first, cfg)[0], depth or (first[0] if len(first) == 3 else 0)
    h = cfg.image_height or h
    return (h, w) if spatial_dims == 2 else (depth or w, h, w)


class _RecordDataset(Dataset):
    """Shared machinery of the dataset kinds (see :mod:`medgen.data.datasets`); subclasses set the kind's rules."""

    kind = ""
    volumes = False  # True: 3D arrays are volumes [D, H, W] rendered at sizes_at(image_size, depth)

    def __init__(self, cfg: DataConfig, split: str, *, seed: int = 0) -> None:
        if split not in SPLITS:
            raise DatasetError(f"unknown split '{split}' for dataset kind '{self.kind}' "
                               f"(choose from {', '.join(SPLITS)})")
        self.cfg, self.split, self.seed = cfg, split, seed
        self.source_keys, self.target_key = _parse_keys(cfg.source), cfg.target.strip()
        if not self.source_keys:
            raise DatasetError(f"dataset kind '{self.kind}' needs data.source (one or more image keys joined by ',')")
        self.image_keys = list(dict.fromkeys([*self.source_keys, *([self.target_key] if self.target_key else [])]))
        self._keyspec = {k: _split_key(k) for k in self.image_keys}  # key -> (backend key, selector)
        self._bases = list(dict.fromkeys(b for b, _ in self._keyspec.values()))
        self._registration = cfg.registration.strip()
        if self._registration not in REGISTRATIONS:
            raise DatasetError(f"unknown data.registration {cfg.registration!r} (choose from '', 'one', 'two')")
        self.backend = self._make_backend()
        self._layout(self._probe())
        self._check_window()
        self._index()
        self.split_hash = _split_hash(self.patient_ids) if self.patient_ids else ""
        self._cache: OrderedDict[int, dict[str, Any]] = OrderedDict()
        self._capacity = 1
        self.augment = None
        if cfg.augment.strip():
            from medgen.data.augment import build_augment  # MONAI import only when augmenting

            self.augment = build_augment(cfg.augment, len(self.spatial_shape), seed=seed,
                                         mri_channels=self._mri_channels(), label_keys=self._label_keys_at_s,
                                         point_keys=self._point_keys)

    # -- backend ---------------------------------------------------------------------
    def _make_backend(self) -> PhantomSource | ManifestSource:
        cfg = self.cfg
        phantom, manifest = cfg.phantom.strip(), cfg.manifest.strip()
        if bool(phantom) == bool(manifest):
            raise DatasetError(f"dataset kind '{self.kind}' needs exactly one of data.phantom (a phantom name) and "
                               f"data.manifest (a CSV path); got data.phantom={phantom!r} and "
                               f"data.manifest={manifest!r}")
        n = cfg.n_train if self.split == "train" else cfg.n_test
        if not 0 <= n <= TEST_OFFSET:
            raise DatasetError(f"data.n_{self.split} must be in [0, {TEST_OFFSET}], got {n}")
        if cfg.image_size < 8:
            raise DatasetError(f"dataset kind '{self.kind}' needs data.image_size >= 8, got {cfg.image_size}")
        return self._phantom_backend(phantom, n) if phantom else self._manifest_backend(manifest, n)

    def _phantom_backend(self, name: str, n: int) -> PhantomSource:
        try:
            spec = lookup(PHANTOMS, name)
        except KeyError as err:
            raise DatasetError(str(err)) from None
        self._check_keys(tuple(spec.modalities), f"phantom '{name}'")
        try:
            sizes = spec.sizes_at(self.cfg.image_size, self.cfg.depth)
            if self.cfg.image_height > 0:  # an explicit height instead of the paper's aspect ratio
                sizes = replace(sizes, height=self.cfg.image_height)
            if not self.volumes:
                sizes = replace(sizes, depth=0)  # 2D kinds: the phantom's 2D images
            elif sizes.depth == 0 and self.cfg.depth > 0:  # a 2D-sized phantom that also renders volumes
                sizes = replace(sizes, depth=self.cfg.depth)
        except (PhantomError, KeyError) as err:
            raise DatasetError(f"phantom '{name}' has no size for image_size={self.cfg.image_size}: {err}") from None
        numbers = np.arange(n) + (0 if self.split == "train" else TEST_OFFSET)
        return PhantomSource(spec, numbers, seed=self.seed, sizes=sizes)

    def _manifest_backend(self, path: str, n: int) -> ManifestSource:
        from medgen.data.manifest import read_manifest

        full = read_manifest(path)
        self._check_keys(tuple(full.modalities), f"manifest '{Path(path).name}'")
        train, test = full.split(self.cfg.test_fraction, self.cfg.split_seed)
        part = train if self.split == "train" else test
        size, depth = None, self.cfg.depth or None
        if len(full.patient_ids):
            # the aspect ratio (and depth) of the manifest's first row, unless data.image_height is set
            first = np.asarray(full.load(0, self._keyspec[self.source_keys[0]][0]))
            size = _manifest_size(first.shape, self.cfg)
            if self.volumes and depth is None:
                vol_key = self._keyspec[self.target_key or self.source_keys[0]][0]
                vol = first if first.ndim == 3 else np.asarray(full.load(0, vol_key))
                depth = vol.shape[0] if vol.ndim == 3 else None
        return ManifestSource(part, size=size, depth=depth, volumes=self.volumes,
                              rows=range(min(n, len(part.patient_ids))))

    def _check_keys(self, known: Sequence[str], where: str) -> None:
        targets = [self.target_key] if self.target_key else []
        for field_name, keys in (("source", self.source_keys), ("target", targets)):
            for key in keys:
                if self._keyspec[key][0] not in known:
                    raise DatasetError(f"unknown data.{field_name} key '{key}' for {where} (keys: {', '.join(known)})")

    def _probe(self) -> dict[str, Any] | None:
        probe = self._register(self.backend.probe(self._bases))
        if probe is not None:
            for base in self._bases:
                if base not in probe:
                    raise DatasetError(f"{self.backend.describe()} did not produce key '{base}' "
                                       f"for dataset kind '{self.kind}'")
        return probe

    def _image(self, raw: dict[str, Any], key: str) -> np.ndarray:
        """The physical-unit image of ``key`` in a raw record (``name[i]`` / ``name[label]`` picks one image
        of a ``[K, H, W]`` stack: a fixed index, or the subject's integer label such as ``optimal_depth``)."""
        return select_image(raw, key, self._keyspec[key], self.backend.describe)
    # -- layout: shapes, channels, meta keys ---------------------------------------------
    def _dims_error(self, key: str, shape: tuple[int, ...], needs: str) -> DatasetError:
        role = "source" if key in self.source_keys else "target"
        if self.volumes and isinstance(self.backend, PhantomSource) and self.backend.sizes.depth == 0:
            needs += "; this phantom's sizes are 2D: set data.depth > 0 if it renders volumes"
        return DatasetError(f"data.{role} key '{key}' of {self.backend.describe()} has per-subject shape "
                            f"{tuple(shape)} but dataset kind '{self.kind}' needs {needs}")

    def _check_dims(self, shapes: dict[str, tuple[int, ...]]) -> tuple[int, ...]:
        """Check every key's per-subject shape against the kind; return the item spatial shape ``S``."""
        raise NotImplementedError

    def _layout(self, probe: dict[str, Any] | None) -> None:
        self.spatial_shape: tuple[int, ...] = ()
        self.source_channels = 0
        self._depth = 1
        self._has_mask = False
        self._channels_per_key: dict[str, int] = {}
        self._meta_keys: list[str] = []
        self._label_keys_at_s: list[str] = []
        self._point_keys: list[str] = []
        self._resize_keys: list[str] = []
        if probe is None:  # an empty manifest split: nothing to check or serve
            return
        shapes = {k: tuple(self._image(probe, k).shape) for k in self.image_keys}
        self._resize_keys = self._source_resize_keys(shapes)
        for key in self._resize_keys:  # checked as if already on the target's grid
            shapes[key] = shapes[key][:-2] + shapes[self.target_key][-2:]
        self.spatial_shape = self._check_dims(shapes)
        self._channels_per_key = {k: (shapes[k][0] if self.kind == "multi_depth" else 1) for k in self.source_keys}
        self.source_channels = sum(self._channels_per_key.values())
        if "mask" in probe:
            mshape = tuple(np.shape(probe["mask"]))
            if mshape not in (self.spatial_shape, self._full_shape()):
                raise DatasetError(f"mask of {self.backend.describe()} has shape {mshape}, expected "
                                   f"{self.spatial_shape} for dataset kind '{self.kind}'")
            self._has_mask = True
        skip = set(self.backend.keys) | {"mask"}
        self._meta_keys = [k for k in probe if k not in skip]
        maps = set(self.backend.label_maps)
        self._label_keys_at_s = [k for k in self._meta_keys if k in maps and self._item_shape(np.shape(probe[k]))
                                 == self.spatial_shape]
        self._point_keys = [k for k in self._meta_keys if _is_points(probe[k], self.backend.meanings.get(k, ""))]

    def _source_resize_keys(self, shapes: dict[str, tuple[int, ...]]) -> list[str]:
        """Source keys whose ``[H', W']`` differs from the target's (resized when ``source_resize``)."""
        if not self.cfg.source_resize:
            return []
        if not self.target_key:
            raise DatasetError(f"data.source_resize=True needs a data.target to resize to (dataset kind "
                               f"'{self.kind}' has none)")
        tgt = shapes[self.target_key]
        for key in self.source_keys:
            if len(shapes[key]) < 2 or len(tgt) < 2:
                raise self._dims_error(key, shapes[key], "at least 2 spatial axes to resize (data.source_resize)")
        return [k for k in self.source_keys if k != self.target_key and shapes[k][-2:] != tgt[-2:]]

    def _full_shape(self) -> tuple[int, ...]:
        """Per-subject shape of a volume whose slices are the items (volume_slices); else ``S``."""
        return self.spatial_shape

    def _item_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """Shape an array of per-subject ``shape`` has in an item (volume_slices slices matching volumes)."""
        return tuple(shape)

    def _check_window(self) -> None:
        window = self.cfg.window.strip()
        self._window = window
        if not window:
            return
        from medgen.data import io

        known = getattr(io, "WINDOWS", {})
        if window not in known:
            raise DatasetError(f"unknown data.window '{window}' (known: {', '.join(known) or 'none'})")
        hu = [k for k in self.image_keys if str(self._modality(k).unit).upper() == "HU"]
        if not hu:
            raise DatasetError(f"data.window='{window}' but none of the keys {', '.join(self.image_keys)} of "
                               f"{self.backend.describe()} is in HU")

    def _mri_channels(self) -> list[int]:
        """Source channel indices that hold MRI (``mri_jitter`` touches only these)."""
        out, start = [], 0
        for key in self.source_keys:
            n = self._channels_per_key.get(key, 1)
            if is_mri(self._keyspec[key][0], self._modality(key)):
                out += range(start, start + n)
            start += n
        return out

    # -- items -----------------------------------------------------------------------------
    def _index(self) -> None:
        """Item -> record mapping and ``patient_ids`` (one item per record by default)."""
        self._n_items = len(self.backend)
        self.patient_ids = list(self.backend.patient_ids)

    def __len__(self) -> int:
        return self._n_items

    def _record_of(self, index: int) -> list[int]:
        """Records an item needs (source record first)."""
        return [index]

    def _build_item(self, index: int, records: list[dict[str, Any]]) -> dict[str, Any]:
        raise NotImplementedError

    def _check_index(self, index: int) -> int:
        if not -len(self) <= index < len(self):
            raise IndexError(f"{self.kind} {self.split} index {index} out of range for {len(self)} items")
        return int(index) % len(self)

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = self._check_index(index)
        recs = self._record_of(index)
        got = self._fetch(recs, prefetch=True)
        return self._finish(self._build_item(index, [got[r] for r in recs]))

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        """Items ``indices`` with every missing subject rendered in one call (DataLoader batch path)."""
        idx = [self._check_index(i) for i in indices]
        needs = [self._record_of(i) for i in idx]
        got = self._fetch([r for rs in needs for r in rs], prefetch=False)
        key = getattr(indices, "augment_key", None)  # (step, rank) from medgen.train.StepBatchSampler
        if key is not None and self.augment is not None:
            self.augment.reseed(*key)  # draws keyed on the step: a resumed run repeats them exactly
        return [self._finish(self._build_item(i, [got[r] for r in rs])) for i, rs in zip(idx, needs)]

    def _finish(self, item: dict[str, Any]) -> dict[str, Any]:
        return self.augment(item) if self.augment is not None and self.split == "train" else item

    # -- cache -------------------------------------------------------------------------------
    def _cache_get(self, r: int) -> dict[str, Any]:
        self._cache.move_to_end(r)
        return self._cache[r]

    def _fetch(self, records: list[int], *, prefetch: bool) -> dict[int, dict[str, Any]]:
        """Processed records (rendering / reading the missing ones together); LRU-cached."""
        got = {r: self._cache_get(r) for r in dict.fromkeys(records) if r in self._cache}
        missing = [r for r in dict.fromkeys(records) if r not in got]
        if missing and prefetch and self.backend.prefetch > 1:  # sequential access: fill the whole chunk
            start = missing[0] - missing[0] % self.backend.prefetch
            extra = range(start, min(start + self.backend.prefetch, len(self.backend)))
            missing += [r for r in extra if r not in self._cache and r not in missing]
        if missing:
            for r, raw in zip(missing, self.backend.records(missing, self._bases)):
                got[r] = self._process(raw)
                self._cache_put(r, got[r])
        return got

    def _cache_put(self, r: int, rec: dict[str, Any]) -> None:
        if len(self._cache) == 0:  # size the LRU from the first record
            nbytes = sum(a.nbytes for a in rec["images"].values())
            nbytes += rec["mask"].nbytes if rec["mask"] is not None else 0
            nbytes += sum(v.nbytes for v in rec["meta"].values() if isinstance(v, np.ndarray))
            self._capacity = max(self.backend.prefetch, CACHE_BYTES // max(1, nbytes))
        self._cache[r] = rec
        self._cache.move_to_end(r)
        while len(self._cache) > self._capacity:
            self._cache.popitem(last=False)

    def _register(self, raw: dict[str, Any] | None) -> dict[str, Any] | None:
        """With ``data.registration`` set: the record with its CT rigidly moved onto the MRI
        (:func:`medgen.registration.register_record`, 3D records in 3D, 2D records in 2D)."""
        if raw is None or not self._registration:
            return raw
        from medgen.registration import RegistrationError, register_record

        try:
            return register_record(raw, self._registration)
        except RegistrationError as err:
            raise DatasetError(f"data.registration={self._registration!r} on {self.backend.describe()}: "
                               f"{err}") from None

    def _process(self, raw: dict[str, Any]) -> dict[str, Any]:
        """Raw record (physical units) -> model-range images, mask and compact meta."""
        raw = self._register(raw)
        images = {k: self._to_model(k, self._image(raw, k)) for k in self.image_keys}
        size = self.spatial_shape[-2:]
        for key in self._resize_keys:  # data.source_resize: onto the target's [H, W]
            images[key] = resize_source(torch.from_numpy(images[key]), size).numpy()
        mask = (np.asarray(raw["mask"]) > 0).astype(np.float32) if self._has_mask else None
        meta = {k: _meta_value(raw[k]) for k in self._meta_keys if k in raw}
        return {"images": images, "mask": mask, "meta": meta}

    def _modality(self, key: str) -> Modality:
        return self.backend.modality(self._keyspec[key][0])

    def _to_model(self, key: str, arr: Any) -> np.ndarray:
        """Physical units -> float32 [-1, 1]: the modality's fixed map, or the HU window when set."""
        mod = self._modality(key)
        if self._window and str(mod.unit).upper() == "HU":
            from medgen.data.io import window

            return (np.asarray(window(np.asarray(arr, dtype=np.float32), self._window), dtype=np.float32)
                    * 2.0 - 1.0).clip(-1.0, 1.0)
        return mod.to_model(arr)

    def _channels(self, arr: np.ndarray, key: str, slice_index: int | None) -> np.ndarray:
        """One key's channels ``[c, *S]`` (a K-stack keeps its K; volume_slices takes the slice)."""
        if slice_index is not None and arr.ndim == 3:
            arr = arr[slice_index]
        return arr if self.kind == "multi_depth" and key in self.source_keys else arr[None]

    def _assemble(self, src: dict[str, Any], tgt: dict[str, Any] | None, patient_id: str,
                  slice_index: int | None = None) -> dict[str, Any]:
        """The item dict from the source record ``src`` and the target record ``tgt``."""
        item: dict[str, Any] = {
            "source": torch.from_numpy(np.concatenate([self._channels(src["images"][k], k, slice_index)
                                                       for k in self.source_keys]))}
        if tgt is not None:
            item["target"] = torch.from_numpy(np.array(self._channels(tgt["images"][self.target_key],
                                                                      self.target_key, slice_index)))
        mask = src["mask"]
        if mask is not None and slice_index is not None and mask.ndim == 3:
            mask = mask[slice_index]
        item["mask"] = (torch.from_numpy(np.array(mask[None])) if mask is not None
                        else torch.ones((1, *self.spatial_shape), dtype=torch.float32))
        item["patient_id"] = patient_id
        maps = set(self.backend.label_maps)
        for k, v in src["meta"].items():
            if isinstance(v, np.ndarray):
                if slice_index is not None and k in maps and v.shape == self._full_shape():
                    v = v[slice_index]
                v = torch.from_numpy(np.array(v, dtype=np.int64 if k in maps else None))
            item[k] = v
        return item

    def __repr__(self) -> str:
        target = f"{self.target_key!r}" if self.target_key else "none"
        augment = self.cfg.augment if self.augment and self.split == "train" else "none"
        return (f"{type(self).__name__}(kind={self.kind!r}, split={self.split!r}, {self.backend.describe()}, "
                f"source={','.join(self.source_keys)!r} ({self.source_channels} ch), target={target}, "
                f"n={len(self)}, spatial={self.spatial_shape}, augment={augment!r}, "
                f"split_hash={self.split_hash!r})")

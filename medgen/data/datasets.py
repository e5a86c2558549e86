"""Phantom- and manifest-backed datasets: the five dataset kinds every paper trains on.

Each kind is registered in :data:`medgen.registry.DATASETS` and built as
``DATASETS[kind](cfg: DataConfig, split, *, seed=0)`` with ``split`` in ``{"train", "test"}``.

Backends (exactly one of ``cfg.phantom`` / ``cfg.manifest`` must be set)
-----------------------------------------------------------------------
Both give the same per-subject *records* (one dict of arrays in physical units per subject /
manifest row), so every kind works on phantoms and on real data alike.

* :class:`PhantomSource` -- ``cfg.phantom`` names a :data:`registry.PHANTOMS` anatomy. Subjects
  ``0 .. n_train-1`` form the train split and ``TEST_OFFSET ..`` (500000) the test split, so the
  splits are disjoint and the test set does not change when the training set grows; patient
  ids are ``"<phantom>-000123"``. Subjects are rendered on the fly, up to ``CHUNK`` per vectorised
  call (fewer for large volumes: ``CHUNK_VOXELS``), at ``spec.sizes_at(cfg.image_size, cfg.depth)``
  for the 3D kinds and at the same height x width with ``depth = 0`` (the phantom's 2D images)
  for the 2D kinds. Subject ``k`` depends only on
  ``(seed, k)``, so items do not depend on the chunking or the access order.
* :class:`ManifestSource` -- ``cfg.manifest`` is a CSV read by :func:`medgen.data.manifest.
  read_manifest`, split by patient with ``cfg.test_fraction`` / ``cfg.split_seed``; ``n_train`` /
  ``n_test`` cap the rows taken from each split (its first rows in CSV order). Images of
  another size are resized (scikit-image ``resize``: antialiased linear for images, nearest
  for label maps and masks) to width ``cfg.image_size`` and the aspect ratio of the
  manifest's first row (its first source image); volumes keep that row's number of slices
  unless ``cfg.depth`` is set; ``[K, H, W]`` stacks are resized in-plane only. Landmark arrays
  (float arrays ``[..., 2|3]``) are rescaled with the image.

Kinds
-----
=================  =================================================  ===============================
kind               source -> target (per subject)                     item spatial shape ``S``
=================  =================================================  ===============================
``paired``         2D ``[H, W]`` -> 2D ``[H, W]``                     ``[H, W]``
``unpaired``       as ``paired``; on the train split source and       ``[H, W]``
                   target come from disjoint halves of the patients
                   (hashed, :func:`splits.patient_split` at 0.5); the
                   test split stays paired so it can be scored
``multi_depth``    ``[K, H, W]`` stacks -> 2D (K channels per key)    ``[H, W]``
``volume_slices``  2D (shared by all slices, e.g. the knee            ``[H, W]``, one item per slice
                   radiograph) or ``[D, H, W]`` (matching slice) ->
                   ``[D, H, W]``; items carry ``depth = s / (D - 1)``
                   and ``slice_index = s``
``volume``         ``[D, H, W]`` -> ``[D, H, W]``                     ``[D, H, W]``
=================  =================================================  ===============================

``n_train`` / ``n_test`` count subjects (``volume_slices`` has ``D`` items per subject).

Image keys: a modality key (``"ct"``), or ``"name[i]"`` / ``"name[label]"`` for one image of a
``[K, H, W]`` stack -- a fixed index, or the subject's own integer label, e.g.
``"us_vpi[optimal_depth]"`` for the single-VPI spine task -- which is then a 2D image.

Items
-----
``source [C,*S]`` (``cfg.source`` may join several keys with "," -> channels) and ``target
[1,*S]`` (absent when ``cfg.target == ""``), float32 in model range via the modality's fixed
map ``Modality.to_model`` -- or, with ``cfg.window`` set, ``io.window(hu, cfg.window) * 2 - 1`` for
every HU modality; ``mask [1,*S]`` (ones unless the backend provides a ``mask`` image, > 0 ->
1); ``patient_id``; the backend's labels as meta: scalars as Python ``int`` / ``float`` /
``bool``, label maps as ``LongTensor [*S]`` (sliced for ``volume_slices``), other arrays
(landmarks, per-depth flags) as tensors, unsliced even for ``volume_slices`` (e.g. the knee's
``slice_depth [D]``; the item's own ``depth`` is the slice's). The train split applies
:func:`medgen.data.augment.build_augment` ``(cfg.augment)``; the test split never augments.

Source resizing (``cfg.source_resize``): normally every image key of an item must have the
same spatial shape. With ``source_resize=True`` each source image is instead resized in-plane
(its last two axes) to the target's ``[H, W]`` by :func:`resize_source`, after the map to
model range, so e.g. the lung phantom's ultrasound measurements on their ``[H, ceil(W / 2)]``
scan-line grid (``ultrasound.STRIDE = (1, 2)``) pair with the ``[H, W]`` CT for
channel-concatenated conditioning. Leading axes (a stack's K, a volume's D) must still match.
It needs a target (``DatasetError`` otherwise); the resized record is what the LRU caches.

``.patient_ids`` lists the item patients in index order (for ``unpaired`` train: every patient
the split uses, source patients then target patients), ``.split_hash`` fingerprints them
(:func:`splits.split_hash`), so :func:`medgen.train.train_or_load` can refuse an overlapping split.

Caching: processed records are kept in an LRU of ``CACHE_BYTES``; a split that fits is thus
rendered / read once (the toy set's "precompute"). ``__getitems__`` (used by ``DataLoader``
with a batch sampler) renders all missing subjects of a batch in one vectorised call.

Errors (:class:`DatasetError`, one line): unknown source / target key (listing the known
keys), ``phantom`` and ``manifest`` both or neither set, a key of the wrong dimensionality
for the kind (naming key, shape and kind), a window without an HU modality.
"""
from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

import medgen.data.phantoms  # noqa: F401 -- fills PHANTOMS
from medgen.config import DataConfig
from medgen.data.phantoms.base import TEST_OFFSET, Modality, PhantomError, PhantomSpec, Sizes
from medgen.data.splits import patient_split
from medgen.data.splits import split_hash as _split_hash
from medgen.registry import DATASETS, PHANTOMS, lookup, register

__all__ = ["DatasetError", "PhantomSource", "ManifestSource", "PairedDataset", "UnpairedDataset",
           "MultiDepthDataset", "VolumeSlicesDataset", "VolumeDataset", "KINDS", "TEST_OFFSET",
           "phantom_patient_id", "is_mri", "resize_source"]

CHUNK = 64  # phantom subjects rendered per vectorised call (at most) ...
CHUNK_VOXELS = 1 << 24  # ... and at most this many voxels per image array per call (bounds the memory)
CACHE_BYTES = 1 << 28  # processed records kept in memory (256 MiB); a split that fits is rendered once
KINDS = ("paired", "unpaired", "multi_depth", "volume_slices", "volume")
SPLITS = ("train", "test")
UNPAIRED_SEED_SALT = 1  # the source/target halves of `unpaired` use patient_split(seed=split_seed + 1)
REGISTRATIONS = ("", "one", "two")  # data.registration: none, one / two landmarks per vertebra (medgen.registration)
MRI_KEYS = ("t1w", "t2w", "t1", "t2", "mri", "mr", "flair", "pd")  # image keys taken as MRI (besides unit)


class DatasetError(ValueError):
    """A dataset that cannot be built as configured; one-line message."""


def resize_source(source: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Resize ``source [B, C, H', W']`` (model range) to ``[B, C, H, W]`` with ``size = (H, W)``.

    Bilinear on pixel centres (``torch.nn.functional.interpolate``, ``align_corners=False``,
    so a pixel at ``i`` of the source grid sits at ``(i + 0.5) H / H' - 0.5`` of the target
    grid), edge-replicating at the border; ``antialias=True``, which changes nothing when
    upsampling (the lung measurements: width W/2 -> W) and low-pass filters when
    downsampling. Any number of leading axes works (``[..., H', W']``); float32 in and out.
    Used by the datasets (``DataConfig.source_resize``) and for measurement tensors handed to a
    channel-concatenated conditional model, so both see the same interpolation.
    """
    size = tuple(int(v) for v in size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"resize_source: size must be (H, W) with positive sides, got {size}")
    if source.ndim < 2:
        raise ValueError(f"resize_source: source must be [..., H', W'], got shape {tuple(source.shape)}")
    if tuple(source.shape[-2:]) == size:
        return source
    lead = source.shape[:-2]
    flat = source.reshape(1, -1, *source.shape[-2:])  # interpolate acts per channel: stack every leading axis
    out = torch.nn.functional.interpolate(flat.float(), size=size, mode="bilinear", align_corners=False,
                                          antialias=True)
    return out.reshape(*lead, *size).to(source.dtype)


def phantom_patient_id(phantom: str, number: int) -> str:
    """Patient id of phantom subject ``number``: ``"knee-000123"``."""
    return f"{phantom}-{number:06d}"


def is_mri(key: str, modality: Modality | None) -> bool:
    """True for an MRI image: its unit mentions MRI or its key is a usual MRI name (t1w, t2w, mri ...)."""
    unit = (getattr(modality, "unit", "") or "").upper()
    return "MRI" in unit or "MR " in f"{unit} " or key.lower() in MRI_KEYS


# --------------------------------------------------------------------------------------
# Record sources: per-subject dicts of physical-unit arrays
# --------------------------------------------------------------------------------------
class PhantomSource:
    """Subjects ``numbers`` of a phantom, rendered ``CHUNK`` at a time at ``sizes``.

    ``records(indices, keys)`` returns one dict per index with every array of the phantom's
    output for that subject (images ``[H, W]`` / ``[D, H, W]`` / ``[K, H, W]`` in physical units,
    label maps, labels); ``keys`` is ignored (a phantom renders everything at once).
    """

    def __init__(self, spec: PhantomSpec, numbers: Sequence[int] | np.ndarray, *, seed: int, sizes: Sizes) -> None:
        self.spec, self.seed, self.sizes = spec, seed, sizes
        voxels = sizes.height * sizes.width * max(1, sizes.depth)
        self.chunk = max(1, min(CHUNK, CHUNK_VOXELS // voxels))  # subjects per generate() call
        self.prefetch = self.chunk  # records worth rendering together on a single-item miss
        self.numbers = np.asarray(numbers, dtype=np.int64)
        self.patient_ids = [phantom_patient_id(spec.name, int(k)) for k in self.numbers]
        self.keys = tuple(spec.modalities)
        self.label_maps = tuple(spec.label_maps)
        self.meanings = dict(spec.labels)  # label key -> "meaning [unit]" (tells landmarks apart)

    def describe(self) -> str:
        return f"phantom '{self.spec.name}'"

    def modality(self, key: str) -> Modality:
        return self.spec.modalities[key]

    def __len__(self) -> int:
        return len(self.numbers)

    def records(self, indices: Sequence[int], keys: Sequence[str] = ()) -> list[dict[str, Any]]:
        """Render subjects ``numbers[indices]`` (in chunks of CHUNK) and split them into records."""
        return self._render(self.numbers[np.asarray(indices, dtype=np.int64)])

    def probe(self, keys: Sequence[str] = ()) -> dict[str, Any]:
        """One record to learn the shapes from (the first subject; the split's first number if empty)."""
        number = self.numbers[:1] if len(self.numbers) else np.array([TEST_OFFSET])
        return self._render(number)[0]

    def _render(self, numbers: np.ndarray) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for start in range(0, len(numbers), self.chunk):
            chunk = numbers[start:start + self.chunk]
            try:
                arrays = self.spec(chunk, seed=self.seed, sizes=self.sizes)
            except PhantomError as err:
                hint = "" if self.sizes.depth else "; 2D kinds render depth 0: use kind 'volume_slices' or 'volume'"
                raise DatasetError(f"phantom '{self.spec.name}' cannot render {self.sizes}: {err}{hint}") from None
            out += [{k: v[j] for k, v in arrays.items()} for j in range(len(chunk))]
        return out


class ManifestSource:
    """Rows of a manifest (a CSV of real data; :mod:`medgen.data.manifest`), resized on load.

    ``size``: ``(H, W)`` every image is resized to; ``depth``: slices of every volume (None: keep);
    ``volumes``: whether 3D arrays are volumes ``[D, H, W]`` (3D kinds) or stacks ``[K, H, W]``
    of K images (2D kinds: resized in-plane only). ``rows`` caps / selects the rows used.
    """

    prefetch = 1  # rows are files: read only what is asked

    def __init__(self, manifest: Any, *, size: tuple[int, int] | None, depth: int | None, volumes: bool,
                 rows: Sequence[int] | None = None) -> None:
        self.manifest, self.size, self.depth, self.volumes = manifest, size, depth, volumes
        all_ids = [str(p) for p in manifest.patient_ids]
        self.rows = list(range(len(all_ids))) if rows is None else [int(r) for r in rows]
        self.patient_ids = [all_ids[r] for r in self.rows]
        self.keys = tuple(manifest.modalities)
        self.label_maps = tuple(getattr(manifest, "label_maps", ()))
        self.meanings = dict(getattr(manifest, "label_meanings", {}))

    def describe(self) -> str:
        return f"manifest '{Path(str(getattr(self.manifest, 'path', 'manifest'))).name}'"

    def modality(self, key: str) -> Modality:
        return self.manifest.modalities[key]

    def __len__(self) -> int:
        return len(self.rows)

    def records(self, indices: Sequence[int], keys: Sequence[str] = ()) -> list[dict[str, Any]]:
        """Load ``keys`` (plus label maps, a ``mask`` column and the row's labels) of rows ``indices``."""
        return [self._record(self.rows[int(i)], keys) for i in indices]

    def probe(self, keys: Sequence[str] = ()) -> dict[str, Any] | None:
        """The first row's record with ``keys`` (None for an empty split)."""
        return self.records([0], keys)[0] if self.rows else None

    def _record(self, row: int, keys: Sequence[str]) -> dict[str, Any]:
        extra = [*self.label_maps, *(["mask"] if "mask" in self.keys else [])]
        rec: dict[str, Any] = {}
        scale: tuple[float, ...] | None = None  # resize factor per axis of the first requested image
        for key in dict.fromkeys([*keys, *extra]):
            raw = np.asarray(self.manifest.load(row, key))
            rec[key] = self._resize(raw, nearest=key in extra)
            if scale is None and key in keys:
                scale = tuple(o / i for o, i in zip(rec[key].shape, raw.shape))
        for name, value in dict(self.manifest.labels(row)).items():
            points = _is_points(value, self.meanings.get(name, ""))
            rec[name] = _rescale_points(value, scale) if points and scale is not None else value
        return rec

    def _target_shape(self, arr: np.ndarray) -> tuple[int, ...]:
        """Spatial output shape of ``arr`` (2D, stack or volume) at this source's size."""
        if self.size is None:
            return arr.shape
        if arr.ndim == 2:
            return self.size
        if self.volumes:
            return (self.depth or arr.shape[0], *self.size)
        return (arr.shape[0], *self.size)

    def _resize(self, arr: np.ndarray, nearest: bool) -> np.ndarray:
        """Resize ``arr`` ``[H, W]`` / ``[D, H, W]`` / ``[K, H, W]`` to the source's size.

        :func:`skimage.transform.resize`: linear with Gaussian anti-aliasing (edge-replicating,
        so a constant image stays constant up to its border) for images, nearest without
        smoothing for label maps and masks. A stack's K axis keeps its length, so it is never
        smoothed. (MONAI's ``Resize`` anti-aliasing pads with zeros and pulls the border towards
        0 -- towards soft tissue in HU -- so it is not used here.)
        """
        from skimage.transform import resize

        shape = self._target_shape(arr)
        if tuple(arr.shape) == tuple(shape):
            return arr
        if nearest:
            out = resize(arr, shape, order=0, anti_aliasing=False, preserve_range=True, mode="edge")
            return np.rint(out).astype(arr.dtype)
        out = resize(arr.astype(np.float32), shape, order=1, anti_aliasing=True, preserve_range=True, mode="edge")
        return out.astype(np.float32)


def _rescale_points(value: Any, scale: tuple[float, ...]) -> Any:
    """Landmarks ``[..., 2|3]`` (pixel centres) scaled with the image: ``(p + 0.5) * s - 0.5``."""
    arr = np.asarray(value)
    if all(f == 1.0 for f in scale):
        return value
    s = np.ones(arr.shape[-1])  # axes the image does not have (e.g. a slice index of a 2D row) keep 1
    n = min(len(scale), arr.shape[-1])
    s[arr.shape[-1] - n:] = scale[len(scale) - n:]
    return ((arr + 0.5) * s - 0.5).astype(arr.dtype)


# --------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------
_KEY = re.compile(r"^([^\[\],]+?)\s*(?:\[\s*([^\[\],]+?)\s*\])?$")  # "us_vpi" or "us_vpi[optimal_depth]"


def _parse_keys(text: str) -> list[str]:
    """``"t1w, t2w"`` -> ``["t1w", "t2w"]`` (empty entries dropped)."""
    return [k.strip() for k in text.split(",") if k.strip()]


def _split_key(key: str) -> tuple[str, str | None]:
    """``"us_vpi[optimal_depth]"`` -> ``("us_vpi", "optimal_depth")``; ``"ct"`` -> ``("ct", None)``."""
    m = _KEY.match(key)
    if m is None:
        raise DatasetError(f"bad image key '{key}' (use 'name' or 'name[index]' / 'name[label]')")
    return m.group(1), m.group(2)


def _meta_value(value: Any) -> Any:
    """A label as stored in a record: NumPy scalars -> Python scalars, arrays kept (compact)."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value[()]
    if isinstance(value, np.generic):
        return value.item()
    return value


_POINTS = re.compile(r"\((slice, ?)?row, ?col\)|\[pixels?[\] ]|landmark", re.IGNORECASE)  # meanings of landmarks


def _is_points(value: Any, meaning: str = "") -> bool:
    """Landmarks in pixel coordinates: a float array ``[..., 2|3]`` with at least two axes whose
    meaning says "(row, col)", "[pixel" or "landmark" (an undocumented label: the shape alone), so
    e.g. the spine's per-vertebra ``transforms [V, 3, 3]`` are not mistaken for points."""
    arr = np.asarray(value) if isinstance(value, np.ndarray) else None
    if arr is None or arr.ndim < 2 or arr.dtype.kind != "f" or arr.shape[-1] not in (2, 3):
        return False
    return not meaning or _POINTS.search(meaning) is not None


class _RecordDataset(Dataset):
    """Shared machinery of the dataset kinds (see the module docstring); subclasses set the kind's rules."""

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
            # the aspect ratio (and depth) of the manifest's first row
            first = np.asarray(full.load(0, self._keyspec[self.source_keys[0]][0]))
            h0, w0 = first.shape[-2:]
            size = (max(8, int(round(self.cfg.image_size * h0 / w0))), self.cfg.image_size)
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
        base, sel = self._keyspec[key]
        arr = np.asarray(raw[base])
        if sel is None:
            return arr
        if re.fullmatch(r"-?\d+", sel):
            idx = int(sel)
        elif sel in raw and np.ndim(raw[sel]) == 0:
            idx = int(np.asarray(raw[sel]))
        else:
            raise DatasetError(f"image key '{key}': '{sel}' is neither an index nor a scalar label of "
                               f"{self.backend.describe()}")
        if arr.ndim != 3 or not -arr.shape[0] <= idx < arr.shape[0]:
            raise DatasetError(f"image key '{key}': cannot take image {idx} of shape {arr.shape}")
        return arr[idx]

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


class _TwoDimensional(_RecordDataset):
    """paired / unpaired: 2D source keys -> a 2D target, all ``[H, W]``."""

    def _check_dims(self, shapes: dict[str, tuple[int, ...]]) -> tuple[int, ...]:
        for key in self.image_keys:
            if len(shapes[key]) != 2:
                hint = "; use kind 'multi_depth', 'volume_slices' or 'volume'" if len(shapes[key]) == 3 else ""
                raise self._dims_error(key, shapes[key], f"a 2D image [H, W]{hint}")
        return _same_shape(self, shapes, self.image_keys)

    def _build_item(self, index: int, records: list[dict[str, Any]]) -> dict[str, Any]:
        src = records[0]
        return self._assemble(src, src if self.target_key else None, self.patient_ids[index])


def _same_shape(ds: _RecordDataset, shapes: dict[str, tuple[int, ...]], keys: Sequence[str],
                axes: slice = slice(None)) -> tuple[int, ...]:
    """The common shape (over ``axes``) of ``keys``; a mismatch names the first differing key."""
    ref = shapes[keys[0]][axes]
    for key in keys[1:]:
        if shapes[key][axes] != ref:
            raise ds._dims_error(key, shapes[key], f"the same size as '{keys[0]}' {shapes[keys[0]]}")
    return tuple(ref)


@register(DATASETS, "paired")
class PairedDataset(_TwoDimensional):
    """2D source image(s) -> 2D target of the same subject: items ``source [C,H,W]``, ``target [1,H,W]``."""

    kind = "paired"


@register(DATASETS, "unpaired")
class UnpairedDataset(_TwoDimensional):
    """2D source and target from disjoint patients on the train split (paired on the test split).

    The train split's patients are divided by :func:`splits.patient_split` (0.5, ``split_seed + 1``)
    into a source half and a target half; item ``i`` takes source record ``i`` of the source
    half and target record ``i mod m`` of the target half. ``patient_id`` is the source patient,
    ``target_patient_id`` the target one; ``.patient_ids`` lists both halves.
    """

    kind = "unpaired"

    def _index(self) -> None:
        super()._index()
        self._pairs: list[tuple[int, int]] | None = None
        if self.split != "train" or not self.target_key or len(self.backend) == 0:
            return
        ids = list(self.backend.patient_ids)
        if len(set(ids)) < 2:
            raise DatasetError(f"dataset kind 'unpaired' needs at least 2 training patients in "
                               f"{self.backend.describe()}, got {len(set(ids))}")
        src_half, _ = patient_split(ids, 0.5, seed=self.cfg.split_seed + UNPAIRED_SEED_SALT)
        src_half = set(src_half)
        src = [r for r, p in enumerate(ids) if p in src_half]
        tgt = [r for r, p in enumerate(ids) if p not in src_half]
        self._pairs = [(r, tgt[i % len(tgt)]) for i, r in enumerate(src)]
        self._n_items = len(self._pairs)
        self.patient_ids = [ids[r] for r in src] + [ids[r] for r in tgt]
        self._ids = ids

    def _record_of(self, index: int) -> list[int]:
        return [index] if self._pairs is None else list(self._pairs[index])

    def _build_item(self, index: int, records: list[dict[str, Any]]) -> dict[str, Any]:
        if self._pairs is None:
            return super()._build_item(index, records)
        src_r, tgt_r = self._pairs[index]
        item = self._assemble(records[0], records[1], self._ids[src_r])
        item["target_patient_id"] = self._ids[tgt_r]
        return item


@register(DATASETS, "multi_depth")
class MultiDepthDataset(_RecordDataset):
    """``[K, H, W]`` source stacks (e.g. the 5 ultrasound depths) as K channels each -> a 2D target."""

    kind = "multi_depth"

    def _check_dims(self, shapes: dict[str, tuple[int, ...]]) -> tuple[int, ...]:
        for key in self.source_keys:
            if len(shapes[key]) != 3:
                raise self._dims_error(key, shapes[key], "a stack of K images [K, H, W]")
        if self.target_key and len(shapes[self.target_key]) != 2:
            raise self._dims_error(self.target_key, shapes[self.target_key], "a 2D target [H, W]")
        return _same_shape(self, {k: s[-2:] for k, s in shapes.items()}, self.image_keys)

    def _build_item(self, index: int, records: list[dict[str, Any]]) -> dict[str, Any]:
        src = records[0]
        return self._assemble(src, src if self.target_key else None, self.patient_ids[index])


@register(DATASETS, "volume_slices")
class VolumeSlicesDataset(_RecordDataset):
    """2D slices of 3D volumes: one item per (subject, slice ``s``) with ``depth = s / (D - 1)``.

    The target (or, without a target, the first 3D source key) is a volume ``[D, H, W]``; each
    source key is either the matching volume (its slice ``s`` is taken) or a 2D image shared by
    all slices of the subject (the knee radiograph). Items are ordered subject-major.
    """

    kind = "volume_slices"
    volumes = True

    def _check_dims(self, shapes: dict[str, tuple[int, ...]]) -> tuple[int, ...]:
        vol_keys = [k for k in self.image_keys if len(shapes[k]) == 3]
        ref = self.target_key or (vol_keys[0] if vol_keys else self.source_keys[0])
        if len(shapes[ref]) != 3:
            raise self._dims_error(ref, shapes[ref], "a 3D volume [D, H, W] to slice")
        self._volume_shape = shapes[ref]
        for key in self.image_keys:
            if shapes[key] not in (self._volume_shape, self._volume_shape[1:]):
                raise self._dims_error(key, shapes[key], f"a volume {self._volume_shape} or a 2D image "
                                                         f"{self._volume_shape[1:]} matching '{ref}'")
        self._depth = self._volume_shape[0]
        return tuple(self._volume_shape[1:])

    def _full_shape(self) -> tuple[int, ...]:
        return tuple(getattr(self, "_volume_shape", self.spatial_shape))

    def _item_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(shape[1:]) if tuple(shape) == self._full_shape() else tuple(shape)

    def _index(self) -> None:
        super()._index()
        self._n_items = len(self.backend) * self._depth
        self.patient_ids = [p for p in self.backend.patient_ids for _ in range(self._depth)]

    def _record_of(self, index: int) -> list[int]:
        return [index // self._depth]

    def _build_item(self, index: int, records: list[dict[str, Any]]) -> dict[str, Any]:
        s = index % self._depth
        src = records[0]
        item = self._assemble(src, src if self.target_key else None, self.patient_ids[index], slice_index=s)
        item["depth"] = s / (self._depth - 1) if self._depth > 1 else 0.0
        item["slice_index"] = s
        return item


@register(DATASETS, "volume")
class VolumeDataset(_RecordDataset):
    """3D source volume(s) -> a 3D target: items ``source [C,D,H,W]``, ``target [1,D,H,W]``."""

    kind = "volume"
    volumes = True

    def _check_dims(self, shapes: dict[str, tuple[int, ...]]) -> tuple[int, ...]:
        for key in self.image_keys:
            if len(shapes[key]) != 3:
                raise self._dims_error(key, shapes[key], "a 3D volume [D, H, W]")
        return _same_shape(self, shapes, self.image_keys)

    def _build_item(self, index: int, records: list[dict[str, Any]]) -> dict[str, Any]:
        src = records[0]
        return self._assemble(src, src if self.target_key else None, self.patient_ids[index])

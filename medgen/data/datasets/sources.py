"""Record sources of the datasets: per-subject dicts of physical-unit arrays.

:class:`PhantomSource` renders phantom subjects (images ``[H, W]`` / ``[D, H, W]`` / ``[K, H, W]``,
label maps, labels), :class:`ManifestSource` reads manifest rows and resizes them; both expose
``records(indices, keys)``, ``probe(keys)``, ``patient_ids``, ``keys``, ``label_maps``, ``meanings``.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from medgen.data.datasets.common import CHUNK, CHUNK_VOXELS, DatasetError, phantom_patient_id
from medgen.data.phantoms.base import TEST_OFFSET, Modality, PhantomError, PhantomSpec, Sizes


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


_POINTS = re.compile(r"\((slice, ?)?row, ?col\)|\[pixels?[\] ]|landmark", re.IGNORECASE)  # meanings of landmarks


def _is_points(value: Any, meaning: str = "") -> bool:
    """Landmarks in pixel coordinates: a float array ``[..., 2|3]`` with at least two axes whose
    meaning says "(row, col)", "[pixel" or "landmark" (an undocumented label: the shape alone), so
    e.g. the spine's per-vertebra ``transforms [V, 3, 3]`` are not mistaken for points."""
    arr = np.asarray(value) if isinstance(value, np.ndarray) else None
    if arr is None or arr.ndim < 2 or arr.dtype.kind != "f" or arr.shape[-1] not in (2, 3):
        return False
    return not meaning or _POINTS.search(meaning) is not None

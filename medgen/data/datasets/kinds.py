"""The five dataset kinds, registered in :data:`medgen.registry.DATASETS` on import:
``paired`` / ``unpaired`` (2D ``[H, W]``), ``multi_depth`` (``[K, H, W]`` stacks as channels -> 2D),
``volume_slices`` (2D slices ``[H, W]`` of ``[D, H, W]`` volumes) and ``volume`` (``[D, H, W]``).
"""
from __future__ import annotations

from typing import Any, Sequence

from medgen.data.datasets.base import _RecordDataset
from medgen.data.datasets.common import UNPAIRED_SEED_SALT, DatasetError
from medgen.data.splits import patient_split
from medgen.registry import DATASETS, register


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

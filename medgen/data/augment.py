"""Training-time augmentation of dataset items, built from MONAI dictionary transforms.

``build_augment(recipe, spatial_dims, *, seed=0)`` returns a callable ``item -> item`` for the
dataset items of :mod:`medgen.data.datasets` (``source [C,*S]``, ``target [C,*S]``, ``mask
[1,*S]``, meta). A recipe is a ``+``-joined list of the names below, applied in the order
written (``"elastic3d+flip+mri_jitter"``); ``""`` is the identity. The datasets apply
``build_augment(cfg.augment, ...)`` to the **train split only**.

==============  ======================================================================================
``flip``        random horizontal flip (the last, W axis) with probability ``FLIP_PROB`` of ``source``,
                ``target``, ``mask`` and the item's label maps together (:class:`monai.transforms.Flipd`
                after our own draw, so that landmark columns ``col -> W - 1 - col`` follow the image).
                Assumes left-right symmetric labels (a mirrored scoliosis has the same Cobb angle); a
                sagittal image flipped this way swaps anterior and posterior, so do not use it there.
``mri_jitter``  the MRI->CT spine paper's "random color jitter (brightness, contrast randomization:
                0.2)" on the **MRI channels of the source only** (which channels are MRI is told by
                the dataset: ``mri_channels``): per channel, on the ``[0, 1]`` intensity
                ``u = (x + 1) / 2``, brightness ``u * (1 + b)`` (:class:`~monai.transforms.
                RandScaleIntensity`) then contrast ``mean + (u - mean) * (1 + c)`` (:class:`~monai.
                transforms.RandScaleIntensityFixedMean`), ``b, c ~ U(-0.2, 0.2)`` -- exactly
                torchvision's ``ColorJitter(brightness=0.2, contrast=0.2)`` on ``[0, 1]`` images --
                then clipped to ``[0, 1]`` and mapped back. Targets (CT) and non-MRI sources are never
                touched.
``elastic3d``   the paper's elastic deformation ("3D image deformations using the elastic deformation
                Python plugin" to "simulate weak scoliosis and unaligned acquisition") with one
                random field for ``source``, ``target``, ``mask`` and label maps (bilinear for images,
                nearest for masks / label maps). 3D items: :class:`~monai.transforms.Rand3DElasticd`
                (white noise smoothed by a Gaussian of ``ELASTIC_SIGMA * W`` voxels); 2D items
                (e.g. the slices of ``volume_slices``): its in-plane counterpart
                :class:`~monai.transforms.Rand2DElasticd` (random offsets on a control grid of
                spacing ``ELASTIC_SPACING * size``, bicubic in between). Either way the displacement
                has a standard deviation of about ``ELASTIC_DISPLACEMENT * W`` pixels, so the
                deformation looks the same at every size. Landmark arrays (``point_keys``) cannot
                follow a free-form field and are removed from every item when the recipe has it.
==============  ======================================================================================

Determinism: every random transform draws from one ``numpy.random.RandomState(seed)``, so the
same sequence of items gives the same outputs for a seed. Inside a ``DataLoader`` worker the
state is re-seeded once from ``(seed, worker_info.seed)``, so workers do not repeat each
other's draws. In training, ``medgen.train.fit``'s batch sampler hands each batch a key
``(step, rank)`` and the dataset calls :meth:`Augment.reseed` with it, so the augmentations of a
batch depend only on its step: a run resumed after a kill draws exactly what the uninterrupted
run drew, with or without workers.

Only glue is written here: the transforms themselves are MONAI's. The flip is drawn by hand
(then applied with ``Flipd``) because ``RandFlipd`` does not say whether it flipped, which
the landmark update needs.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch
from monai.transforms import (Flipd, Rand2DElasticd, Rand3DElasticd, RandScaleIntensity,
                              RandScaleIntensityFixedMean)

__all__ = ["RECIPES", "AugmentError", "Augment", "build_augment"]

FLIP_PROB = 0.5  # probability of a horizontal flip
JITTER = 0.2  # brightness and contrast factors are drawn from 1 +- JITTER (the paper's 0.2)
ELASTIC_PROB = 0.9  # share of items deformed (the paper grew the data 10x with deformed copies)
ELASTIC_DISPLACEMENT = 0.03  # displacement standard deviation as a fraction of the width ("weak" deformation)
ELASTIC_SPACING = 0.25  # 2D control-point spacing as a fraction of each side (about 5 points per side)
ELASTIC_SIGMA = 0.08  # 3D smoothing Gaussian sigma as a fraction of the width (voxels)
RECIPES = ("flip", "mri_jitter", "elastic3d")  # known recipe names
IMAGE_KEYS = ("source", "target")  # interpolated bilinearly
MASK_KEY = "mask"  # interpolated nearest; pixels pulled in from outside the image become 0


class AugmentError(ValueError):
    """A bad augmentation recipe; one-line message."""


class Augment:
    """A callable ``item -> item`` applying the recipe's transforms in order (see the module docstring).

    ``item``: ``source [C,*S]``, optional ``target [C,*S]`` and ``mask [1,*S]`` float tensors,
    label maps ``[*S]`` under ``label_keys``, landmarks ``[..., 2|3]`` (last coordinate = column)
    under ``point_keys``, other meta passed through. Returns a new dict; the input is not modified.
    """

    def __init__(self, recipes: Sequence[str], spatial_dims: int, *, seed: int = 0,
                 mri_channels: Sequence[int] | None = None, label_keys: Sequence[str] = (),
                 point_keys: Sequence[str] = ()) -> None:
        self.recipes, self.spatial_dims, self.seed = tuple(recipes), spatial_dims, seed
        self.mri_channels = None if mri_channels is None else tuple(int(c) for c in mri_channels)
        self.label_keys, self.point_keys = tuple(label_keys), tuple(point_keys)
        self._state = np.random.RandomState(seed)
        self._worker: int | None = None
        self._elastic: dict[tuple[int, ...], Any] = {}  # one MONAI elastic transform per spatial shape
        self._brightness = RandScaleIntensity(factors=JITTER, prob=1.0)
        self._contrast = RandScaleIntensityFixedMean(factors=JITTER, prob=1.0, fixed_mean=True)
        for t in (self._brightness, self._contrast):
            t.set_random_state(state=self._state)
        self._ops: list[Callable[[dict[str, Any]], dict[str, Any]]] = [
            {"flip": self._flip, "mri_jitter": self._jitter, "elastic3d": self._deform}[r] for r in self.recipes]

    def __call__(self, item: dict[str, Any]) -> dict[str, Any]:
        if not self._ops:
            return item
        self._reseed_in_worker()
        out = dict(item)
        for op in self._ops:
            out = op(out)
        return out

    def __repr__(self) -> str:
        return (f"Augment({'+'.join(self.recipes)!r}, spatial_dims={self.spatial_dims}, seed={self.seed}, "
                f"mri_channels={self.mri_channels})")

    def reseed(self, *key: int) -> None:
        """Restart the random stream at ``(seed, *key)`` (e.g. the training step and the rank):
        draws then depend only on the key and the order within it, so a resumed run repeats them."""
        self._state.seed([self.seed % 2**32, *(int(k) % 2**32 for k in key)])
        self._worker = -1  # a keyed stream is already distinct per batch: no per-worker reseed

    # ------------------------------------------------------------------------------
    def _reseed_in_worker(self) -> None:
        """Give each DataLoader worker its own stream (a forked copy would repeat the parent's)."""
        info = torch.utils.data.get_worker_info()
        if info is not None and self._worker is not None and self._worker < 0:
            return
        if info is not None and self._worker != info.id:
            self._worker = info.id
            self._state.seed([self.seed % 2**32, info.seed % 2**32])

    def _spatial_keys(self, item: dict[str, Any]) -> tuple[list[str], list[str]]:
        """``(image keys, nearest keys)`` present in ``item``; label maps get a channel axis on the way."""
        spatial = tuple(item["source"].shape[1:])
        images = [k for k in IMAGE_KEYS if item.get(k) is not None]
        nearest = [MASK_KEY] if item.get(MASK_KEY) is not None else []
        nearest += [k for k in self.label_keys if k in item and tuple(np.shape(item[k])) == spatial]
        return images, nearest

    def _flip(self, item: dict[str, Any]) -> dict[str, Any]:
        """Horizontal flip of every spatial key (and landmark columns) with probability FLIP_PROB."""
        if self._state.uniform() >= FLIP_PROB:
            return item
        images, nearest = self._spatial_keys(item)
        keys = images + nearest
        d = {k: _channel_first(item[k], k in self.label_keys) for k in keys}
        d = Flipd(keys, spatial_axis=self.spatial_dims - 1)(d)
        out = dict(item)
        out.update({k: _restore(d[k], item[k], k in self.label_keys) for k in keys})
        width = item["source"].shape[-1]
        for k in self.point_keys:
            if k in out:
                pts = torch.as_tensor(out[k]).clone()
                pts[..., -1] = width - 1 - pts[..., -1]  # (row, col) / (slice, row, col): col is last
                out[k] = pts
        return out

    def _jitter(self, item: dict[str, Any]) -> dict[str, Any]:
        """Brightness then contrast jitter of each MRI source channel on the [0, 1] scale."""
        src = torch.as_tensor(item["source"])
        channels = range(src.shape[0]) if self.mri_channels is None else self.mri_channels
        if not channels:
            return item
        src = src.clone()
        for c in channels:
            u = (src[c:c + 1] + 1.0) / 2.0  # model range -> [0, 1]
            u = self._contrast(self._brightness(u))
            src[c] = torch.as_tensor(u)[0].clamp(0.0, 1.0) * 2.0 - 1.0
        out = dict(item)
        out["source"] = src
        return out

    def _deform(self, item: dict[str, Any]) -> dict[str, Any]:
        """One random elastic field applied to every spatial key; landmark keys are dropped."""
        out = {k: v for k, v in item.items() if k not in self.point_keys}
        images, nearest = self._spatial_keys(item)
        keys = images + nearest
        d = {k: _channel_first(item[k], k in self.label_keys).float() for k in keys}
        modes = ["bilinear"] * len(images) + ["nearest"] * len(nearest)
        pads = ["border"] * len(images) + ["zeros" if k == MASK_KEY else "border" for k in nearest]
        d = self._elastic_for(tuple(item["source"].shape[1:]), keys, modes, pads)(d)
        out.update({k: _restore(d[k], item[k], k in self.label_keys) for k in keys})
        return out

    def _elastic_for(self, spatial: tuple[int, ...], keys: list[str], modes: list[str], pads: list[str]) -> Any:
        """The MONAI elastic transform for this spatial shape and key set (built once, shared state)."""
        cache_key = (*spatial, *keys)
        if cache_key not in self._elastic:
            width = spatial[-1]
            disp = ELASTIC_DISPLACEMENT * width  # displacement std in pixels
            if len(spatial) == 2:
                # RandDeformGrid adds mag * N(0, 1) pixels at each control point: mag = disp.
                spacing = tuple(max(2.0, ELASTIC_SPACING * s) for s in spatial)
                t = Rand2DElasticd(keys, spacing=spacing, magnitude_range=(disp, disp), prob=ELASTIC_PROB,
                                   mode=modes, padding_mode=pads)
            else:
                # Rand3DElastic smooths U(-1, 1) noise (std 1/sqrt(3)) with a normalised Gaussian of
                # sigma s voxels: the result has std (1/sqrt(3)) * (2 sqrt(pi) s)^(-3/2); scale to disp.
                sigma = max(1.0, ELASTIC_SIGMA * width)
                smoothed_std = (1.0 / np.sqrt(3.0)) * (2.0 * np.sqrt(np.pi) * sigma) ** -1.5
                mag = disp / smoothed_std
                t = Rand3DElasticd(keys, sigma_range=(sigma, sigma), magnitude_range=(mag, mag),
                                   prob=ELASTIC_PROB, mode=modes, padding_mode=pads)
            t.set_random_state(state=self._state)
            self._elastic[cache_key] = t
        return self._elastic[cache_key]


def _channel_first(x: Any, is_label: bool) -> torch.Tensor:
    """A plain tensor with a channel axis: label maps ``[*S]`` get ``[1,*S]``."""
    t = torch.as_tensor(x)
    return t[None] if is_label else t


def _restore(x: Any, like: Any, is_label: bool) -> torch.Tensor:
    """MONAI output -> a plain tensor of the input's dtype and layout (label maps rounded, channel dropped)."""
    t = torch.as_tensor(x)
    t = t.as_tensor() if hasattr(t, "as_tensor") else t  # MetaTensor -> Tensor
    ref = torch.as_tensor(like)
    if is_label:
        t = t[0]
    if not ref.is_floating_point():
        t = torch.round(t)
    return t.to(ref.dtype).contiguous()


def build_augment(recipe: str, spatial_dims: int, *, seed: int = 0, mri_channels: Sequence[int] | None = None,
                  label_keys: Sequence[str] = (), point_keys: Sequence[str] = ()) -> Augment:
    """The augmentation ``item -> item`` of ``recipe`` (names joined by "+"; ``""`` = identity).

    ``spatial_dims``: 2 for items ``[C, H, W]``, 3 for ``[C, D, H, W]``. ``mri_channels``: the
    source channels that are MRI (``mri_jitter`` touches only these; ``None`` = all source
    channels). ``label_keys``: integer label maps ``[*S]`` in the items that must follow flips and
    deformations; ``point_keys``: landmark arrays ``[..., 2|3]`` in pixel coordinates.
    Raises :class:`AugmentError` for an unknown name or bad ``spatial_dims``.
    """
    if spatial_dims not in (2, 3):
        raise AugmentError(f"augmentation needs spatial_dims 2 or 3, got {spatial_dims}")
    names = [r.strip() for r in recipe.split("+")] if recipe.strip() else []
    for name in names:
        if name not in RECIPES:
            raise AugmentError(f"unknown augmentation '{name}' in data.augment='{recipe}' "
                               f"(known: {', '.join(RECIPES)})")
    return Augment(names, spatial_dims, seed=seed, mri_channels=mri_channels, label_keys=label_keys,
                   point_keys=point_keys)

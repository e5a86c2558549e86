"""Shared pieces of the dataset kinds: :class:`DatasetError`, the constants, patient ids, MRI keys
and :func:`resize_source` (``[..., H', W']`` -> ``[..., H, W]``, the ``source_resize`` interpolation).
"""
from __future__ import annotations

from typing import Sequence

import torch

from medgen.data.phantoms.base import Modality

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

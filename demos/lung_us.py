"""Demo tab "Lung ultrasound": guided reconstruction of lung sections and prior samples with a
memorization readout (lung_us_diffusion paper, issue 6 section 5).

Model: the unconditional DDPM prior ``lung_us/prior`` (:class:`medgen.methods.ddpm.UnconditionalDDPM`).
The shipped checkpoint ``checkpoints/lung_us/prior`` (``cpu`` preset, 64 px) is loaded when it
exists; otherwise the prior is trained by :func:`medgen.train.train_or_load` at ``smoke`` (``ci``
when the demo runs at ``ci``) on the first use, with a progress bar, and cached under the runs
folder -- the pattern of the spine tab (:mod:`demos.mri_to_ct`).

Reconstruction section
----------------------
* **Truth** (optional): a ``lung`` phantom test-split subject (number ``k`` = subject
  ``TEST_OFFSET + k``, seed 0, rendered at the model's size) or an uploaded lung image. Uploads
  go through :func:`medgen.data.io.read_sample_input` (PNG / TIFF / JPEG / ``.npy`` 2D, NIfTI /
  DICOM: the middle sagittal slice of a 3D volume) and are treated as a CT section **in the
  phantom's window**: a picture's gray ``[0, 1]`` is ``[-1000, 600] HU`` (the ``ct`` modality:
  model value ``2 g - 1``); a volume in HU -- which ``read_sample_input`` maps by the spine's
  fixed map ``(HU / 1000 + 1) / 2`` -- is mapped back to HU (exact on ``[-1000, 1000]``, which holds
  the window) and through the lung ``ct`` modality. Every input is resized (antialiased
  bilinear) to the model's size. Uploads are outside the training distribution (phantoms only).
* **Measurement** ``y = A(x) + n``: one of :data:`medgen.inverse.OPERATORS` (the phantom's
  ``us_linear`` / ``us_acoustic`` ultrasound operators, or the paper's ``blur`` / ``inpaint``)
  at the model's size, with Gaussian noise of std ``noise`` in **measurement units** (the
  operator's own; the phantom's ultrasound noise is 0.02 a.u.) from a generator seeded with
  ``seed`` (:func:`medgen.inverse.measure`). Or an uploaded measurement: a ``.npy`` array
  whose shape is the operator's output ``[H', W']`` (``[1, H', W']`` and ``[1, 1, H', W']``
  accepted); an uploaded measurement has no known truth.
* **Reconstruction**: diffusion posterior sampling (:meth:`UnconditionalDDPM.reconstruct`,
  normalised DPS step of size ``scale``), with the notebook's DPS sampler
  (:data:`medgen.experiments.lung_us.DPS_SAMPLER`: ancestral DDPM over ``steps`` respaced steps,
  Chung et al.'s Algorithm 1 -- deterministic DDIM (eta 0) diverged under guidance) and its
  default steps (``Plan.dps_steps`` of the model's preset), ``n`` samples from a generator
  seeded with ``seed + 1``. The handler is a generator: the sampler's callback
  hands the x0 estimate of sample 0 to the page every ``k``-th step (``k`` = steps / 20,
  rounded up), which Gradio streams. Shown: the first sample, the mean and SD map over the
  samples (SD in HU), and a table of aeration and its category (truth: the phantom's lung
  mask for phantoms, else the lung estimated below a fitted pleural line,
  :func:`medgen.data.phantoms.lung.aeration_from_ct`), PSNR / SSIM (``data_range = 2`` in
  model range) when a truth is known, and the RMS measurement residual ``||y - A(x)|| /
  sqrt(M)`` (compare with the noise std) -- :func:`medgen.inverse.reconstruction_metrics`.

Generate section
----------------
``n`` samples of the prior (its sampler, ``steps``, generator seeded with ``seed``), each with
its aeration and category and a memorization readout: the distance to the nearest training
image of the same aeration category (the paper's Eq. 2; all training images when the
category has none), that image, and the held-out calibration threshold -- the 1st percentile
of the held-out (test-split) images' nearest-training distances in that category, as the
notebook's audit: a distance below it is flagged. Distances are L2 in **pixel space**
(model range) by default: the experiment's feature space (:func:`medgen.experiments.lung_us.memorization_space`,
EfficientNet-Lite0 unless ``MEDGEN_RESNET18_WEIGHTS`` names a ResNet18 file) embeds about 7
images/s on one CPU thread here (measured 0.15 s/image, 32 px inputs resized to 224), i.e.
~11 minutes for the ``cpu`` prior's 4,500 training images, so it is offered as an option and
cached after its first use.

The handlers are plain functions of the component values (methods of :class:`Tab`; API
names ``lung_us_input``, ``lung_us_simulate``, ``lung_us_reconstruct``, ``lung_us_generate``).
Every problem ends as a one-line status message, never a traceback.
"""
from __future__ import annotations

import functools
import logging
import math
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import gradio as gr
import numpy as np
import torch

from demos import models
from demos.quickstart import _error_status, _md, _one_line, out_dir, resolve_runs_root
from medgen.data.io import DICOM_SUFFIXES, MAX_BYTES, SUFFIXES

__all__ = ["Tab", "build_tab", "DemoError", "LungInput", "Measurement", "load_phantom", "load_upload",
           "load_measurement", "simulate_measurement", "stream_dps", "check_reconstruct", "check_generate", "get_model",
           "memorization_readout", "OPERATOR_LABELS", "PIXEL_SPACE"]

LOG = logging.getLogger(__name__)
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
HU_RANGE = 1600.0  # model range width 2 <-> 1600 HU (the lung ct modality: [-1000, 600] HU)
SD_MAX_HU = 400.0  # SD map colour scale 0 .. SD_MAX_HU HU
DISPLAY_PX = 256
UPLOAD_MAX_VOXELS = 1 << 25
MEASUREMENT_MAX_ELEMENTS = 1 << 22  # largest uploaded measurement (entries)
PIXEL_SPACE = "pixels"
CALIBRATION_PERCENTILE = 1.0  # as the notebook's audit (medgen.experiments.lung_us.FLAG_PERCENTILE)
UPLOAD_TYPES = list(SUFFIXES) + list(DICOM_SUFFIXES) + [".nii", ".gz"]
HU_NOTE = "CT in HU mapped by the phantoms' fixed CT map"  # read_sample_input's note for HU volumes
OOD_NOTE = ("**Outside the training distribution:** the prior was trained on simulated lung phantoms only; the "
            "upload is treated as a CT section in the phantom's window ([-1000, 600] HU).")


class DemoError(ValueError):
    """A one-line problem to show the user (bad settings, bad measurement, model unavailable)."""


@dataclass
class LungInput:
    """A truth image ``x`` ``[S, S]`` in model range, with ``lung_mask`` ``[S, S]`` and aeration for phantoms."""

    x: np.ndarray
    label: str
    phantom: bool
    lung_mask: np.ndarray | None = None
    aeration: float | None = None  # the phantom's own (exact) aeration
    notes: list[str] = field(default_factory=list)


@dataclass
class Measurement:
    """``y`` ``[1, 1, H', W']`` (measurement units) of ``operator``; ``truth`` when simulated from one."""

    y: torch.Tensor
    operator: Any
    noise_std: float | None  # None: uploaded (unknown)
    truth: LungInput | None
    label: str


# --------------------------------------------------------------------------------------
# Model (loaded once, lazily; trained at smoke when no checkpoint is shipped)
# --------------------------------------------------------------------------------------
def default_checkpoints() -> Path:
    """``<repo>/checkpoints/lung_us`` (the shipped ``cpu`` prior lives in ``prior/``)."""
    return models.checkpoints_root("lung_us")


def _train_config(preset: str) -> Callable[[], Any]:
    """``() -> config`` a missing prior is trained with (:func:`demos.models.train_preset`)."""
    def build() -> Any:
        from medgen.config import get_preset
        from medgen.presets.lung_us import PRIOR

        return get_preset(models.train_preset(preset), PRIOR)
    return build


def model_config(preset: str, ckpts: Path) -> Any:
    """The prior's config (shipped checkpoint ``ckpts/prior``, else the training preset); cheap."""
    return models.model_config(ckpts / "prior", _train_config(preset))


def describe_model(preset: str, ckpts: Path) -> str:
    """``"shipped `cpu` checkpoint, 64 px"`` or ``"trained at `smoke` on first use, 32 px"``."""
    return models.describe(ckpts / "prior", _train_config(preset))


def is_loaded(preset: str, ckpts: Path, runs: Path) -> bool:
    """Whether the prior is already in memory."""
    return models.is_loaded(ckpts / "prior", _train_config(preset), runs)


def get_model(preset: str, ckpts: Path, runs: Path, progress: Callable[..., Any] | None = None) -> Any:
    """The prior (eval mode), loaded once by :func:`demos.models.get_model`: the shipped checkpoint,
    else trained (or loaded from the runs cache) at smoke with a progress bar."""
    return models.get_model(ckpts / "prior", _train_config(preset), runs, label="the lung prior", progress=progress)


# --------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------
def _number(value: Any, name: str, lo: float, hi: float, integer: bool) -> float:
    """``value`` as a finite float in ``[lo, hi]`` (an integer when ``integer``). Raises DemoError."""
    try:
        v = float(0 if value is None else value)
    except (TypeError, ValueError):
        raise DemoError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(v) or not lo <= v <= hi or (integer and not v.is_integer()):
        kind = "an integer" if integer else "a number"
        raise DemoError(f"{name} must be {kind} in [{lo:g}, {hi:g}], got {value}")
    return v


@functools.lru_cache(maxsize=16)
def _phantom_arrays(subject: int, size: int) -> dict[str, np.ndarray]:
    from medgen.data.phantoms.base import TEST_OFFSET, Sizes
    from medgen.data.phantoms.lung import SPEC  # the registered `lung` spec (no registry scan: faster first use)

    arrays = SPEC([TEST_OFFSET + subject], seed=0, sizes=Sizes(size, size, 0))
    return {k: np.asarray(v[0]) for k, v in arrays.items()}


def load_phantom(subject: Any, size: int) -> LungInput:
    """Test-split lung subject ``subject`` at ``size`` px: the ``ct`` section in model range ``[S, S]``."""
    from medgen.data.phantoms.lung import CT

    k = int(_number(subject, "subject", 0, MAX_SUBJECT, True))
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
    if any(HU_NOTE in n for n in notes):  # HU volume: undo the spine map, apply the lung ct modality
        x = CT.to_model(x * 1000.0)  # (HU / 1000 + 1) / 2 = g  ->  HU = (2 g - 1) * 1000
        notes.append("HU mapped to the lung window [-1000, 600] HU (values outside clipped)")
    else:
        notes.append("gray values read as the lung window: 0 = -1000 HU, 1 = 600 HU")
    return LungInput(x.astype(np.float32), Path(path).name, False, notes=notes)


def resolve_input(upload: str | None, subject: Any, size: int) -> LungInput:
    """The uploaded image if any, else the phantom."""
    return load_upload(upload, size) if upload else load_phantom(subject, size)


def check_operator(operator: Any) -> str:
    """A known operator name. Raises DemoError."""
    if operator not in OPERATOR_LABELS:
        raise DemoError(f"unknown operator '{operator}' (choose from {', '.join(OPERATOR_LABELS)})")
    return str(operator)


def make_operator(name: str, size: int) -> Any:
    """:func:`medgen.inverse.make_operator` ``name`` at ``size`` (the model's)."""
    from medgen.inverse import make_operator as make

    return make(check_operator(name), size=size)


def simulate_measurement(inp: LungInput, operator: str, noise: Any, seed: Any) -> Measurement:
    """``y = A(x) + noise * n`` ``[1, 1, H', W']`` with ``n`` from a generator seeded with ``seed``."""
    from medgen.inverse import measure

    std = _number(noise, "noise", 0.0, MAX_NOISE, False)
    s = int(_number(seed, "seed", 0, 2**62, True))
    op = make_operator(operator, inp.x.shape[0])
    x = torch.from_numpy(np.ascontiguousarray(inp.x, np.float32))[None, None]
    y = measure(op, x, std, torch.Generator().manual_seed(s))
    return Measurement(y, op, std, inp, f"{operator} of {inp.label}, noise std {std:g}, seed {s}")


def load_measurement(path: str | os.PathLike, operator: str, size: int) -> Measurement:
    """An uploaded ``.npy`` measurement of ``operator`` at ``size``; its shape must be the operator's
    output ``[H', W']`` (or with leading 1s). Raises DemoError (one line)."""
    p = Path(path)
    op = make_operator(operator, size)
    want = tuple(op.measurement_mask.shape[-2:])
    if p.suffix.lower() != ".npy":
        raise DemoError(f"{p.name}: a measurement must be a .npy array of shape {want[0]}x{want[1]}")
    if p.stat().st_size > MAX_BYTES:
        raise DemoError(f"{p.name}: file too large ({p.stat().st_size / 2**20:.1f} MB; limit {MAX_BYTES >> 20} MB)")
    try:
        arr = np.load(p, allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 -- any unreadable file is one line
        raise DemoError(f"{p.name}: not a readable .npy array ({' '.join(str(exc).split())})") from None
    if arr.dtype.kind not in "fiu" or arr.size > MEASUREMENT_MAX_ELEMENTS:
        raise DemoError(f"{p.name}: need a real numeric array of at most {MEASUREMENT_MAX_ELEMENTS} entries, "
                        f"got dtype {arr.dtype} with {arr.size} entries")
    squeezed = arr.reshape(arr.shape[-2:]) if arr.ndim >= 2 and all(d == 1 for d in arr.shape[:-2]) else arr
    if squeezed.shape != want:
        raise DemoError(f"{p.name}: measurement shape {tuple(arr.shape)} does not match the {operator} operator's "
                        f"output {want[0]}x{want[1]} at the model's {size} px")
    if not np.isfinite(squeezed).all():
        raise DemoError(f"{p.name}: measurement contains NaN or infinite values")
    y = torch.from_numpy(np.ascontiguousarray(squeezed, np.float32))[None, None]
    return Measurement(y, op, None, None, f"uploaded {p.name} ({operator})")


def resolve_measurement(image_upload: str | None, subject: Any, operator: Any, noise: Any, seed: Any,
                        measurement_upload: str | None, size: int) -> Measurement:
    """The uploaded measurement if any, else the simulated one of the truth (upload or phantom)."""
    name = check_operator(operator)
    if measurement_upload:
        return load_measurement(measurement_upload, name, size)
    return simulate_measurement(resolve_input(image_upload, subject, size), name, noise, seed)


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
    return ReconSettings(_number(scale, "scale", 0.0, MAX_SCALE, False),
                         int(_number(steps, "steps", 1, MAX_STEPS, True)),
                         int(_number(n_samples, "samples", 1, MAX_SAMPLES, True)),
                         int(_number(seed, "seed", 0, 2**62, True)))


def check_generate(n: Any, steps: Any, seed: Any) -> tuple[int, int, int]:
    """Validated ``(n, steps, seed)`` of the Generate section. Raises DemoError."""
    return (int(_number(n, "images", 1, MAX_GENERATE, True)), int(_number(steps, "steps", 1, MAX_STEPS, True)),
            int(_number(seed, "seed", 0, 2**62, True)))


def dps_sampler() -> str:
    """The notebook's DPS sampler (:data:`medgen.experiments.lung_us.DPS_SAMPLER`; ``"ddpm"`` if absent)."""
    from medgen.experiments import lung_us as experiment

    return str(getattr(experiment, "DPS_SAMPLER", "ddpm"))


def stream_every(steps: int) -> int:
    """Stream every k-th x0 estimate: about :data:`STREAM_FRAMES` frames per run."""
    return max(1, math.ceil(steps / STREAM_FRAMES))


def stream_dps(model: Any, m: Measurement, s: ReconSettings, progress: Callable[..., Any] | None = None,
               every: int | None = None) -> Iterator[tuple[Any, ...]]:
    """DPS of ``m`` with the prior ``model``, streamed: yields ``("frame", i, n, x0 [S, S])`` -- the x0
    estimate of sample 0 after step ``i`` of ``n``, every ``every``-th step (default :func:`stream_every`)
    and at the last -- then ``("done", samples [N, 1, 1, S, S])``. Re-raises the sampler's exception.

    The sampler runs in a worker thread; its callback hands frames to this generator through a
    queue (a sampler callback cannot yield to Gradio itself). ``progress((i, n), desc=...)`` every step.
    """
    k = every or stream_every(s.steps)
    items: queue.Queue = queue.Queue()

    def callback(d: dict) -> None:
        i, n = int(d["i"]) + 1, int(d["n"])
        if progress is not None:
            progress((i, n), desc=f"guided sampling step {i} of {n}")
        if i % k == 0 or i == n:
            items.put(("frame", i, n, d["x0"][0, 0, 0].detach().float().cpu().numpy().copy()))

    def work() -> None:
        try:
            out = model.reconstruct(m.y, operator=m.operator, scale=s.scale, steps=s.steps, n_samples=s.n_samples,
                                    sampler=dps_sampler(), generator=torch.Generator().manual_seed(s.seed + 1),
                                    callback=callback)
            items.put(("done", out.float().cpu()[:, :1]))
        except BaseException as exc:  # noqa: BLE001 -- re-raised in the consumer
            items.put(("error", exc))

    worker = threading.Thread(target=work, name="lung-us-dps", daemon=True)
    worker.start()
    while True:
        item = items.get()
        if item[0] == "frame":
            yield item
            continue
        worker.join()
        if item[0] == "error":
            raise item[1]
        yield item
        return


# --------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------
def _aeration(x: np.ndarray, mask: np.ndarray | None) -> float:
    from medgen.data.phantoms.lung import CT, aeration_from_ct

    return float(aeration_from_ct(CT.from_model(x)[None], None if mask is None else mask[None])[0])


def metrics_markdown(samples: torch.Tensor, m: Measurement) -> str:
    """Markdown table: aeration / category of truth, posterior mean and samples; PSNR / SSIM against
    the truth (when known); RMS residual. ``samples`` ``[N, 1, 1, H, W]``."""
    from medgen.data.phantoms.lung import aeration_category
    from medgen.inverse import reconstruction_metrics, residual_norm

    mean = samples.mean(0)
    truth = m.truth
    mask = None if truth is None or truth.lung_mask is None else truth.lung_mask
    how = "phantom lung mask" if mask is not None else "lung estimated below the fitted pleural line"
    lines = ["| | aeration | category | PSNR (dB) | SSIM | residual (RMS) |", "|---|---|---|---|---|---|"]

    def cat(a: float) -> str:
        return str(int(aeration_category(np.array([a]))[0]))

    if truth is not None:
        a_t = truth.aeration if truth.aeration is not None else _aeration(truth.x, mask)
        x_t = torch.from_numpy(truth.x)[None, None]
        noise = f"{m.noise_std:g} (noise std)"
        lines.append(f"| truth | {a_t:.3f} | {cat(a_t)} | - | - | {noise} |")
        rows = {"posterior mean": reconstruction_metrics(mean, x_t, m.y, m.operator,
                                                         lung_mask=None if mask is None else mask[None]),
                "samples": reconstruction_metrics(samples, x_t, m.y, m.operator,
                                                  lung_mask=None if mask is None else mask[None])}
        for name, df in rows.items():
            if name == "samples" and len(df) < 2:
                continue
            if len(df) == 1:
                r = df.iloc[0]
                lines.append(f"| {name} | {r.aeration_recon:.3f} | {int(r.category_recon)} | {r.psnr:.2f} | "
                             f"{r.ssim:.3f} | {r.residual:.4f} |")
            else:
                def ms(col: str, f: str) -> str:
                    return f"{df[col].mean():{f}} ± {df[col].std(ddof=1):{f}}"
                cats = "/".join(str(int(c)) for c in df.category_recon)
                lines.append(f"| {len(df)} samples (mean ± SD) | {ms('aeration_recon', '.3f')} | {cats} | "
                             f"{ms('psnr', '.2f')} | {ms('ssim', '.3f')} | {ms('residual', '.4f')} |")
    else:
        root_m = math.sqrt(m.operator.n_measurements)
        for name, x in (("posterior mean", mean),) + tuple((f"sample {i}", samples[i]) for i in range(len(samples))):
            a = _aeration(x[0, 0].numpy(), None)
            res = float(residual_norm(m.operator, m.y, x.to(m.y))[0]) / root_m
            lines.append(f"| {name} | {a:.3f} | {cat(a)} | - | - | {res:.4f} |")
    lines.append(f"\nAeration: mean air fraction of the lung ({how}); categories 0 (< 60 %), 1 (60-85 %), "
                 "2 (>= 85 %). PSNR / SSIM in model range (data range 2). Residual: ||y - A(x)|| / sqrt(M) in "
                 "measurement units -- about the noise std when x explains y." +
                 ("" if truth is not None else " No truth for an uploaded measurement: PSNR / SSIM cannot be shown."))
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# Memorization readout
# --------------------------------------------------------------------------------------
@dataclass
class Reference:
    """Training images ``[N, 1, H, W]`` with categories and their ``feats``; held-out thresholds per
    category (key ``"all"`` for the whole set)."""

    images: torch.Tensor
    category: np.ndarray
    ids: list[str]
    feats: torch.Tensor
    thresholds: dict[Any, float]
    space: str
    n_heldout: int


_REFERENCES: dict[tuple[str, ...], Reference] = {}


def _embed(images: torch.Tensor, space: str) -> torch.Tensor:
    """``[n, 1, H, W]`` -> ``[n, D]``: the pixels themselves, or :func:`medgen.metrics.features.features`."""
    if space == PIXEL_SPACE:
        return images.flatten(1).double()
    from medgen.metrics.features import features

    return features(images, space).double()


def reference_set(cfg: Any, space: str, progress: Callable[..., Any] | None = None) -> Reference:
    """The prior's training images and the held-out calibration thresholds in ``space`` (cached)."""
    from medgen.config import config_hash
    from medgen.experiments.lung_us import real_sections
    from medgen.metrics.memorization import nearest_neighbours

    key = (config_hash(cfg), space)
    if key not in _REFERENCES:
        if progress is not None:
            progress(0.0, desc=f"embedding {cfg.data.n_train} training and {cfg.data.n_test} held-out images "
                               f"({space}, once)")
        train, held = real_sections(cfg, "train"), real_sections(cfg, "test")
        ft, fh = _embed(train.images, space), _embed(held.images, space)
        thresholds: dict[Any, float] = {}
        d_all, _ = nearest_neighbours(fh, ft)
        thresholds["all"] = float(np.percentile(d_all, CALIBRATION_PERCENTILE))
        for c in sorted(set(train.category.tolist()) & set(held.category.tolist())):
            t_idx, h_idx = np.flatnonzero(train.category == c), np.flatnonzero(held.category == c)
            d, _ = nearest_neighbours(fh[torch.as_tensor(h_idx)], ft[torch.as_tensor(t_idx)])
            thresholds[int(c)] = float(np.percentile(d, CALIBRATION_PERCENTILE))
        _REFERENCES[key] = Reference(train.images, train.category, train.patient_ids, ft, thresholds, space, len(held))
    return _REFERENCES[key]


def memorization_readout(images: torch.Tensor, ref: Reference) -> list[dict[str, Any]]:
    """Per generated image ``[n, 1, H, W]``: aeration, category, nearest training image of the same
    category (all when the category has no training or held-out images), distance, threshold, flag."""
    from medgen.data.phantoms.lung import CT, aeration_category, aeration_from_ct
    from medgen.metrics.memorization import nearest_neighbours

    aer = aeration_from_ct(CT.from_model(images[:, 0].numpy()))
    cats = aeration_category(aer)
    feats = _embed(images, ref.space)
    out = []
    for i in range(len(images)):
        c = int(cats[i])
        pool = np.flatnonzero(ref.category == c) if c in ref.thresholds else np.arange(len(ref.category))
        d, j = nearest_neighbours(feats[i:i + 1], ref.feats[torch.as_tensor(pool)])
        thr = ref.thresholds[c if c in ref.thresholds else "all"]
        out.append({"aeration": float(aer[i]), "category": c, "stratum": c if c in ref.thresholds else "all",
                    "distance": float(d[0]), "nearest": int(pool[j[0]]), "nearest_id": ref.ids[int(pool[j[0]])],
                    "threshold": thr, "flagged": bool(d[0] < thr)})
    return out


def readout_markdown(rows: list[dict[str, Any]], ref: Reference) -> str:
    """The readout table (one row per generated image) and what the numbers mean."""
    where = ("L2 distance in **pixel space** (model range [-1, 1])" if ref.space == PIXEL_SPACE else
             f"L2 distance in the **`{ref.space}`** feature space (as the notebook's audit)")
    lines = ["| image | aeration | category | nearest training image | distance | held-out threshold | flagged |",
             "|---|---|---|---|---|---|---|"]
    for i, r in enumerate(rows):
        scope = f"category {r['stratum']}" if r["stratum"] != "all" else "all categories"
        lines.append(f"| {i} | {r['aeration']:.3f} | {r['category']} | #{r['nearest']} ({_md(r['nearest_id'])}, "
                     f"{scope}) | {r['distance']:.4g} | {r['threshold']:.4g} | {'**yes**' if r['flagged'] else 'no'} |")
    lines.append(f"\n{where} to the nearest of the prior's {len(ref.category)} training images of the same aeration "
                 f"category (the paper's Eq. 2). Threshold: the {CALIBRATION_PERCENTILE:g}st percentile of the "
                 f"{ref.n_heldout} held-out images' nearest-training distances in that category; a fresh sample is "
                 f"flagged about {CALIBRATION_PERCENTILE:g} % of the time, a copy of a training image almost always.")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# Display
# --------------------------------------------------------------------------------------
def _enlarge(img: np.ndarray, kx: int | None = None) -> np.ndarray:
    """``[h, w(, 3)]`` enlarged (nearest) by ``k`` along rows and ``kx`` along columns (to ~DISPLAY_PX)."""
    k = max(1, DISPLAY_PX // img.shape[0])
    kx = kx or max(1, DISPLAY_PX // img.shape[1])
    return np.repeat(np.repeat(img, k, axis=0), kx, axis=1)


def _u8(img01: np.ndarray) -> np.ndarray:
    return np.round(np.clip(img01, 0.0, 1.0) * 255.0).astype(np.uint8)


def show_image(x: np.ndarray) -> np.ndarray:
    """``[S, S]`` model range -> enlarged uint8 gray (the lung window [-1000, 600] HU)."""
    return _enlarge(_u8((np.asarray(x) + 1.0) / 2.0))


def show_measurement(y: torch.Tensor) -> np.ndarray:
    """``[1, 1, H', W']`` -> enlarged uint8 gray, scaled min..max of ``y`` (any units), square-ish."""
    a = y[0, 0].numpy().astype(np.float64)
    lo, hi = float(a.min()), float(a.max())
    return _enlarge(_u8((a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)))


def show_sd(sd_hu: np.ndarray) -> np.ndarray:
    """``[S, S]`` SD in HU -> enlarged RGB uint8 (magma, 0 .. :data:`SD_MAX_HU`)."""
    from matplotlib import colormaps

    return _enlarge(_u8(colormaps["magma"](np.clip(sd_hu / SD_MAX_HU, 0.0, 1.0))[..., :3]))


def _out_dir() -> Path:
    return out_dir("lung-us")


def _save(name: str, arr: np.ndarray) -> str:
    path = _out_dir() / f"{name}_{time.time_ns()}.npy"
    np.save(path, np.asarray(arr, np.float32))
    return str(path)


def _input_status(inp: LungInput, size: int) -> str:
    a = f"aeration {inp.aeration:.3f}" if inp.aeration is not None else "aeration estimated from the image"
    paragraphs = [f"Input: **{_md(inp.label)}** at {size}x{size} px ({a})."]
    if not inp.phantom:
        paragraphs.append(OOD_NOTE)
    notes = "\n".join(f"- Note: {_md(n)}" for n in inp.notes)
    return "\n\n".join(paragraphs + ([notes] if notes else []))


# --------------------------------------------------------------------------------------
# Handlers
# --------------------------------------------------------------------------------------
class Tab:
    """The tab's state (preset, checkpoint and runs folders) and its handlers."""

    def __init__(self, preset: str, runs_root: str | os.PathLike | None = None,
                 checkpoints: str | os.PathLike | None = None) -> None:
        self.preset = preset
        self.runs = resolve_runs_root(runs_root)
        self.ckpts = Path(checkpoints) if checkpoints is not None else default_checkpoints()

    @property
    def size(self) -> int:
        """The prior's image size (inputs are resized to it)."""
        return int(model_config(self.preset, self.ckpts).data.image_size)

    @property
    def sampling(self) -> str:
        """The prior's sampler: ``"ddpm"``, or e.g. ``"ddim (eta 0)"``."""
        s = model_config(self.preset, self.ckpts).sample
        return s.sampler + (f" (eta {s.eta:g})" if s.sampler == "ddim" else "")

    def default_steps(self) -> int:
        """The prior's generation steps (``cfg.sample.steps``)."""
        return int(model_config(self.preset, self.ckpts).sample.steps)

    def dps_scale(self, operator: str) -> float:
        """The notebook's default DPS scale of ``operator`` at the model's preset (``DPS_SCALE``; smoke's if
        the checkpoint's preset has none)."""
        from medgen.experiments.lung_us import dps_scale
        from medgen.presets.lung_us import DPS_SCALE

        preset = model_config(self.preset, self.ckpts).preset
        return dps_scale(operator, preset if preset in DPS_SCALE else "smoke")

    def dps_steps(self) -> int:
        """The notebook's DPS steps at the model's preset (``Plan.dps_steps``), else :meth:`default_steps`."""
        from medgen.experiments.lung_us import plan

        try:
            return int(plan(model_config(self.preset, self.ckpts).preset).dps_steps)
        except Exception:  # noqa: BLE001 -- an unknown preset (custom checkpoint): the prior's own steps
            return self.default_steps()

    def status(self) -> str:
        """The model's one-line status (shown when the page loads)."""
        return (f"Prior: {describe_model(self.preset, self.ckpts)}; sampler {self.sampling}. Pick a phantom or "
                "upload a lung image, simulate its measurement, reconstruct.")

    def _model(self, progress: Callable[..., Any] | None) -> Any:
        return get_model(self.preset, self.ckpts, self.runs, progress)

    def on_input(self, upload: str | None, subject: Any) -> tuple[Any, str]:
        """Show the truth -> (truth image, status)."""
        try:
            inp = resolve_input(upload, subject, self.size)
        except (ValueError, KeyError) as exc:  # DemoError, ImageReadError, PhantomError
            return None, _error_status(_one_line(exc))
        return show_image(inp.x), _input_status(inp, self.size)

    def simulate(self, upload: str | None, subject: Any, operator: Any, noise: Any, seed: Any,
                 measurement_upload: str | None) -> tuple[Any, Any, Any, str]:
        """Simulate (or read) the measurement -> (truth image, measurement image, measurement .npy, status)."""
        try:
            m = resolve_measurement(upload, subject, operator, noise, seed, measurement_upload, self.size)
        except (ValueError, KeyError) as exc:
            return None, None, None, _error_status(_one_line(exc))
        shape = "x".join(str(s) for s in m.y.shape[-2:])
        status = f"Measurement: {_md(m.label)}, {shape} entries (display scaled min..max)."
        if m.truth is not None:
            status += "\n\n" + _input_status(m.truth, self.size)
        truth = show_image(m.truth.x) if m.truth is not None else None
        return truth, show_measurement(m.y), _save(f"measurement_{m.operator.name}", m.y[0, 0].numpy()), status

    def reconstruct(self, upload: str | None, subject: Any, operator: Any, noise: Any, seed: Any,
                    measurement_upload: str | None, scale: Any, steps: Any, n_samples: Any,
                    progress: Callable[..., Any] | None = None, every: int | None = None
                    ) -> Iterator[tuple[Any, ...]]:
        """Reconstruct handler (a generator) -> (status, truth, measurement, live x0, sample 0, mean, SD map,
        metrics, samples .npy).

        Intermediate yields carry the x0 estimate of sample 0 every ``every``-th step (default
        :func:`stream_every`) and skip the other outputs. Problems end as one line."""
        empty = (None,) * 6 + ("", None)
        try:
            s = check_reconstruct(scale, steps, n_samples, seed)
            m = resolve_measurement(upload, subject, operator, noise, seed, measurement_upload, self.size)
        except (ValueError, KeyError) as exc:
            yield (_error_status(_one_line(exc)), *empty)
            return
        skip = gr.skip()
        shown = (show_image(m.truth.x) if m.truth is not None else None, show_measurement(m.y))
        loading = not is_loaded(self.preset, self.ckpts, self.runs)
        yield (f"Loading the prior ({describe_model(self.preset, self.ckpts)})..." if loading else
               "Starting guided sampling...", *shown, *([skip] * 6))
        try:
            model = self._model(progress)
        except Exception as exc:  # noqa: BLE001 -- report, never a traceback in the page
            LOG.exception("lung_us model failed")
            yield (_error_status(f"the prior could not be loaded: {_one_line(exc)}"), *empty)
            return
        start = time.perf_counter()
        try:
            for item in stream_dps(model, m, s, progress, every):
                if item[0] == "frame":
                    yield (f"Guided sampling: step {item[1]} of {item[2]} (x0 estimate of sample 0)...",
                           skip, skip, show_image(item[3]), *([skip] * 5))
                else:
                    samples = item[1]
        except Exception as exc:  # noqa: BLE001 -- handed to the page as one line
            LOG.exception("lung_us reconstruction failed")
            yield (_error_status(f"the reconstruction failed: {_one_line(exc)}"), *empty)
            return
        seconds = time.perf_counter() - start
        try:
            table = metrics_markdown(samples, m)
        except Exception as exc:  # noqa: BLE001
            LOG.exception("lung_us metrics failed")
            table = f"Metrics unavailable: {_md(_one_line(exc))}"
        x = samples[:, 0, 0].numpy()  # [N, H, W]
        sd_hu = x.std(0) * HU_RANGE / 2.0  # population SD, as medgen.inverse.mean_sd_maps
        status = (f"Done: DPS with {m.operator.name}, scale {s.scale:g}, {s.steps} {dps_sampler()} steps, "
                  f"{len(x)} sample{'s' if len(x) > 1 else ''}, seed {s.seed} (noise seed {s.seed}, "
                  f"sampling seed {s.seed + 1}), "
                  f"in {seconds:.1f} s ({describe_model(self.preset, self.ckpts)}). Max SD {sd_hu.max():.0f} HU."
                  f"\n\nMeasurement: {_md(m.label)}.")
        if m.truth is not None and not m.truth.phantom:
            status += "\n\n" + OOD_NOTE
        yield (status, *shown, show_image(x[0]), show_image(x[0]), show_image(x.mean(0)), show_sd(sd_hu), table,
               _save(f"reconstruction_{m.operator.name}_seed{s.seed}", x))

    def generate(self, n: Any, steps: Any, seed: Any, space: Any = PIXEL_SPACE,
                 progress: Callable[..., Any] | None = None) -> tuple[Any, ...]:
        """Generate handler -> (status, generated gallery, nearest-training gallery, readout table)."""
        try:
            n_i, steps_i, seed_i = check_generate(n, steps, seed)
            if space not in self.spaces():
                raise DemoError(f"unknown distance space '{space}' (choose from {', '.join(self.spaces())})")
        except DemoError as exc:
            return _error_status(_one_line(exc)), None, None, ""
        try:
            model = self._model(progress)
            start = time.perf_counter()
            with torch.inference_mode():
                images = model.generate(n_i, generator=torch.Generator().manual_seed(seed_i), steps=steps_i)
            images = images.float().cpu()[:, :1]
            seconds = time.perf_counter() - start
            ref = reference_set(model.config, str(space), progress)
            rows = memorization_readout(images, ref)
        except Exception as exc:  # noqa: BLE001
            LOG.exception("lung_us generation failed")
            return _error_status(f"generation failed: {_one_line(exc)}"), None, None, ""
        gen = [(show_image(images[i, 0].numpy()), f"#{i}: aeration {r['aeration']:.2f}, category {r['category']}")
               for i, r in enumerate(rows)]
        near = [(show_image(ref.images[r["nearest"], 0].numpy()),
                 f"nearest to #{i}: training #{r['nearest']}, d = {r['distance']:.3g}"
                 f"{' (flagged)' if r['flagged'] else ''}") for i, r in enumerate(rows)]
        flagged = sum(r["flagged"] for r in rows)
        status = (f"Done: {n_i} image{'s' if n_i > 1 else ''} from the prior ({self.sampling}, {steps_i} steps, seed "
                  f"{seed_i}) in {seconds:.1f} s; {flagged} of {n_i} flagged "
                  f"({describe_model(self.preset, self.ckpts)}).")
        return status, gen, near, readout_markdown(rows, ref)

    @staticmethod
    def spaces() -> list[str]:
        """Distance spaces offered: pixels (fast) and the notebook's feature space."""
        from medgen.experiments.lung_us import memorization_space

        return [PIXEL_SPACE, memorization_space()]


# --------------------------------------------------------------------------------------
# Layout
# --------------------------------------------------------------------------------------
def _image(label: str, elem_id: str) -> gr.Image:
    return gr.Image(label=label, format="png", interactive=False, buttons=["download", "fullscreen"], height=260,
                    elem_id=elem_id)


def build_tab(preset: str, *, runs_root: str | os.PathLike | None = None,
              checkpoints: str | os.PathLike | None = None) -> None:
    """Lay out the "Lung ultrasound" tab inside the current ``gr.Tab`` and wire its events."""
    tab = Tab(preset, runs_root, checkpoints)
    gr.Markdown(
        "### Lung ultrasound: guided reconstruction with a diffusion prior\n"
        "An unconditional DDPM trained on simulated 2D lung sections reconstructs a section from its measurement "
        "by diffusion posterior sampling. Pick a `lung` phantom or upload a lung image (PNG, NIfTI or DICOM; "
        "treated as a CT section in the phantom's window, [-1000, 600] HU, and resized to the model's size), "
        "simulate its measurement (or upload one as `.npy`), and watch the x0 estimate evolve. "
        "Below: sample the prior and check each sample against its nearest training image.", elem_id="lus-intro")
    status = gr.Markdown(tab.status, elem_id="lus-status")
    with gr.Row():
        with gr.Column():
            subject = gr.Number(0, precision=0, minimum=0, maximum=MAX_SUBJECT, label="Phantom subject (test split)",
                                elem_id="lus-subject")
            show = gr.Button("Show input", elem_id="lus-show")
            upload = gr.File(label="...or upload a lung image (clear it to use the phantom)", file_types=UPLOAD_TYPES,
                             type="filepath", height=110, elem_id="lus-upload")
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
        truth = _image("Truth (lung window -1000..600 HU)", "lus-truth")
        meas = _image("Measurement y (scaled min..max)", "lus-measurement")
        live = _image("x0 estimate (live) / first sample", "lus-live")
    with gr.Row():
        sample0 = _image("Reconstruction: sample 0", "lus-sample")
        mean = _image("Mean over samples", "lus-mean")
        sd = _image(f"SD over samples (0-{SD_MAX_HU:.0f} HU, magma)", "lus-sd")
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

    def input_fn(up: str | None, subj: Any) -> tuple[Any, str]:
        return tab.on_input(up, subj)

    def simulate_fn(up: str | None, subj: Any, op: Any, nz: Any, sd_: Any, mu: str | None) -> tuple[Any, ...]:
        return tab.simulate(up, subj, op, nz, sd_, mu)

    def run_fn(up: str | None, subj: Any, op: Any, nz: Any, sd_: Any, mu: str | None, sc: Any, t: Any, n: Any,
               progress: gr.Progress = gr.Progress(track_tqdm=True)) -> Iterator[tuple[Any, ...]]:
        yield from tab.reconstruct(up, subj, op, nz, sd_, mu, sc, t, n, progress)

    def gen_fn(n: Any, t: Any, sd_: Any, sp: Any, progress: gr.Progress = gr.Progress(track_tqdm=True)
               ) -> tuple[Any, ...]:
        return tab.generate(n, t, sd_, sp, progress)

    show.click(input_fn, [upload, subject], [truth, status], api_name="lung_us_input")
    upload.upload(input_fn, [upload, subject], [truth, status], api_visibility="private")
    subject.submit(input_fn, [upload, subject], [truth, status], api_visibility="private")
    operator.change(lambda op: tab.dps_scale(op) if op in OPERATOR_LABELS else gr.skip(), operator, scale,
                    api_visibility="private")
    simulate.click(simulate_fn, [upload, subject, operator, noise, seed, meas_upload], [truth, meas, meas_file, status],
                   api_name="lung_us_simulate")
    run_btn.click(run_fn, [upload, subject, operator, noise, seed, meas_upload, scale, steps, n_samples],
                  [status, truth, meas, live, sample0, mean, sd, metrics, raw], api_name="lung_us_reconstruct",
                  show_progress_on=[sample0])
    gen_btn.click(gen_fn, [n_gen, gen_steps, gen_seed, space], [gen_status, gallery, nearest, readout],
                  api_name="lung_us_generate", show_progress_on=[gallery])

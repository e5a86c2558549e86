"""Quickstart tab: a conditional DDPM restores blurred, speckled toy shapes.

The model is found by :mod:`medgen.zoo`: the shipped ``cpu`` quickstart checkpoint when there is
one, else the ``smoke`` preset (``ci`` for a ``ci`` demo) loaded -- or trained once -- from the
runs folder (``runs_root``, ``$MEDGEN_RUNS`` or ``<repo>/runs``) on the first Run, then kept in
memory (``zoo.resolve(..., keep=True)``).

Inputs are an uploaded PNG / TIFF / JPEG / ``.npy`` image (read by
:func:`medgen.data.io.read_image`: 16-bit and colour images are accepted with a note, bad
files are refused with a one-line message) or one of the toy_shapes *test* examples, which
come with their ground truth. Every input is resized to the model's ``image_size``.

The handlers (:func:`on_upload`, :func:`on_example`, :func:`run`) are plain functions of
the component values, so the gradio client (API names ``quickstart_load_upload``,
``quickstart_pick_example``, ``quickstart_run``) and tests can call them directly.
"""
from __future__ import annotations

import functools
import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import gradio as gr
import numpy as np
import torch

from demos import ui
from demos.ui import DemoError, error_status, gray, image_component, input_status, md, one_line, out_dir, train_preset
from medgen import zoo
from medgen.config import ConfigError, RunConfig, get_preset
from medgen.data.io import SUFFIXES, ImageReadError, from_model_range, read_image, to_model_range, write_image

LOG = logging.getLogger(__name__)
TASK = "quickstart"
SAMPLERS = {"ddpm": "DDPM (ancestral)", "ddim": "DDIM", "dpmpp": "DPM-Solver++ 2M"}
N_EXAMPLES = 4  # example inputs drawn from the toy_shapes test split
N_SNAPSHOTS = 6  # predicted-x0 frames kept for the step-by-step gallery
MAX_STEPS = 250  # upper end of the steps slider (never above the training T)
DATA_RANGE = 2.0  # metrics on model range [-1, 1]
NO_INPUT = "Pick an example or upload an image first."


@dataclass
class InputImage:
    """A model input: ``source`` ``[S, S]`` in [0, 1], optional ground truth ``target`` ``[S, S]``."""

    source: np.ndarray
    target: np.ndarray | None
    label: str
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------
# Examples
# --------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=4)
def _examples(cfg: RunConfig) -> tuple[tuple[str, np.ndarray, np.ndarray], ...]:
    """``(label, source [S, S], target [S, S])`` in [0, 1] for the first test items."""
    import medgen.data  # noqa: F401 -- fills DATASETS
    from medgen.registry import DATASETS, lookup

    dataset = lookup(DATASETS, cfg.data.dataset)(cfg.data, "test")
    out = []
    for k in range(min(N_EXAMPLES, len(dataset))):
        item = dataset[k]
        label = f"Example {k + 1} ({item.get('patient_id', f'test #{k}')})"
        out.append((label, from_model_range(item["source"]), from_model_range(item["target"])))
    return tuple(out)


def example_labels(cfg: RunConfig) -> list[str]:
    """Dropdown labels of the examples (empty when the dataset cannot be built)."""
    try:
        return [label for label, _, _ in _examples(cfg)]
    except Exception as exc:  # a missing or broken dataset must not break the hub
        LOG.warning("quickstart examples unavailable: %s", exc)
        return []


# --------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------
def load_upload(cfg: RunConfig, path: str | os.PathLike) -> InputImage:
    """Read an uploaded file and resize it to the model size. Raises ImageReadError."""
    notes: list[str] = []
    arr = read_image(path, notes=notes)
    size = cfg.data.image_size
    if arr.shape != (size, size):
        aspect = "" if arr.shape[0] == arr.shape[1] else " (aspect ratio not kept)"
        notes.append(f"resized from {arr.shape[1]}x{arr.shape[0]} to the model's {size}x{size}{aspect}")
    source = from_model_range(to_model_range(arr, size))
    return InputImage(source, None, Path(path).name, notes)


def load_example(cfg: RunConfig, label: str) -> InputImage:
    """The example called ``label`` with its ground truth. Raises DemoError for unknown labels."""
    for name, source, target in _examples(cfg):
        if name == label:
            return InputImage(source, target, name)
    raise DemoError(f"unknown example '{label}'")


def resolve_input(cfg: RunConfig, upload: str | None, example: str | None) -> InputImage:
    """The current input: the uploaded file if any, else the picked example."""
    if upload:
        return load_upload(cfg, upload)
    if example:
        return load_example(cfg, example)
    raise DemoError(NO_INPUT)


def _input_status(inp: InputImage, size: int) -> str:
    """Status Markdown for a loaded input: what it is plus one line per conversion note."""
    truth = "with ground truth" if inp.target is not None else "no ground truth (metrics need an example)"
    return input_status(inp.label, size, f", {truth}", inp.notes)


def on_upload(cfg: RunConfig, path: str | None) -> tuple[Any, Any, Any, str]:
    """Upload handler -> (example dropdown, input preview, ground truth, status)."""
    if not path:
        return gr.skip(), None, None, NO_INPUT
    try:
        inp = load_upload(cfg, path)
    except (ImageReadError, DemoError) as exc:
        return None, None, None, error_status(str(exc))
    return None, gray(inp.source), None, _input_status(inp, cfg.data.image_size)


def on_example(cfg: RunConfig, label: str | None) -> tuple[Any, Any, Any, str]:
    """Example handler -> (upload file, input preview, ground truth, status)."""
    if not label:
        return gr.skip(), None, None, NO_INPUT
    try:
        inp = load_example(cfg, label)
    except Exception as exc:  # an unknown label, or the dataset itself is unavailable
        return gr.skip(), None, None, error_status(one_line(exc))
    return None, gray(inp.source), gray(inp.target), _input_status(inp, cfg.data.image_size)


# --------------------------------------------------------------------------------------
# Running the model
# --------------------------------------------------------------------------------------
def check_settings(cfg: RunConfig, sampler: str, steps: Any, eta: Any, seed: Any) -> tuple[str, int, float, int]:
    """Validate the sampling settings (the API can send anything). Raises DemoError."""
    if sampler not in SAMPLERS:
        raise DemoError(f"unknown sampler '{sampler}' (choose from {', '.join(SAMPLERS)})")
    max_steps = min(cfg.diffusion.timesteps, MAX_STEPS)
    try:
        steps_i, eta_f, seed_i = int(steps), float(eta), int(seed if seed is not None else 0)
    except (TypeError, ValueError):
        raise DemoError(f"steps, eta and seed must be numbers (got {steps!r}, {eta!r}, {seed!r})") from None
    if not 1 <= steps_i <= max_steps:
        raise DemoError(f"steps must be between 1 and {max_steps}, got {steps_i}")
    if not 0.0 <= eta_f <= 1.0:
        raise DemoError(f"eta must be between 0 and 1, got {eta_f}")
    if not 0 <= seed_i < 2**63:
        raise DemoError(f"seed must be a non-negative integer, got {seed_i}")
    return sampler, steps_i, eta_f, seed_i


def _snapshot_steps(n: int) -> set[int]:
    """Indices (0-based) of the sampling steps whose predicted x0 the gallery shows."""
    return {int(round(v)) for v in np.linspace(0, n - 1, min(N_SNAPSHOTS, n))}


def _sampling_callback(n: int, frames: list[tuple[np.ndarray, str]],
                       progress: Callable[..., Any]) -> Callable[[dict], None]:
    """Callback for ``translate``: drives ``progress`` and keeps a few predicted-x0 frames."""
    keep = _snapshot_steps(n)

    def callback(info: dict) -> None:
        i, total = int(info.get("i", 0)), int(info.get("n", n))
        progress((min(i + 1, total), total), desc=f"sampling step {min(i + 1, total)} of {total}")
        if i in keep and info.get("x0") is not None:
            frames.append((gray(from_model_range(info["x0"][:1])), f"step {i + 1}/{total}: predicted x0"))

    return callback


def translate(model: Any, inp: InputImage, sampler: str, steps: int, eta: float, seed: int,
              progress: Callable[..., Any]) -> tuple[torch.Tensor, list[tuple[np.ndarray, str]]]:
    """Sample the model once: output ``[1, 1, S, S]`` in [-1, 1] and the gallery frames."""
    frames: list[tuple[np.ndarray, str]] = []
    source = to_model_range(inp.source)
    generator = torch.Generator().manual_seed(seed)
    options: dict[str, Any] = {"sampler": sampler, "steps": steps}
    if sampler == "ddim":
        options["eta"] = eta
    with torch.inference_mode():
        out = model.translate(source, generator=generator, callback=_sampling_callback(steps, frames, progress),
                              **options)
    return out.float().cpu(), frames


def metrics_markdown(pred: torch.Tensor, inp: InputImage) -> str:
    """PSNR / SSIM of the output and of the input itself against the ground truth (Markdown)."""
    if inp.target is None:
        return "No ground truth for uploads: pick an example to see PSNR / SSIM."
    try:
        from medgen.metrics.image import psnr, ssim
    except ImportError:
        return "PSNR / SSIM unavailable (medgen.metrics.image is not installed)."
    target = to_model_range(inp.target)
    rows = [("model output", pred), ("input, unchanged (trivial baseline)", to_model_range(inp.source))]
    lines = ["| vs ground truth | PSNR (dB) | SSIM |", "|---|---|---|"]
    for name, x in rows:
        p = psnr(x, target, data_range=DATA_RANGE).item()
        s = ssim(x, target, data_range=DATA_RANGE).item()
        lines.append(f"| {name} | {p:.2f} | {s:.3f} |")
    size = inp.target.shape[0]
    lines.append(f"\nOn the {size}x{size} model grid, model range [-1, 1], data_range = {DATA_RANGE:g}.")
    return "\n".join(lines)


def _save_raw(out01: np.ndarray, inp: InputImage, sampler: str, steps: int, seed: int) -> str:
    """Write the output at model resolution as a 16-bit PNG; returns its path."""
    stem = re.sub(r"[^A-Za-z0-9]+", "_", Path(inp.label).stem).strip("_")[:40] or "input"
    path = out_dir("quickstart") / f"{stem}_{sampler}{steps}_seed{seed}_{time.time_ns()}.png"
    return str(write_image(path, out01, bits=16))


def _model_status(cfg: RunConfig, runs: Path | None, hint: str = NO_INPUT) -> str:
    """One-line status of the model (shown when the page loads), ending with ``hint`` (what to do next)."""
    name = f"Model: quickstart, {zoo.describe(cfg)}"
    if zoo.is_loaded(cfg, runs=runs):
        return f"{name}, loaded. {hint}"
    if zoo.shipped(cfg) is not None:
        return f"{name}; it loads on the first Run. {hint}"
    return (f"{name}: the first Run loads it from `{md(str(zoo.runs_root(None, runs)))}`, or trains it there "
            f"({cfg.train.steps} steps, once; `make reproduce` caches it beforehand). {hint}")


def first_example(cfg: RunConfig) -> InputImage | None:
    """The example the page shows at load (the first one; None when the dataset cannot be built)."""
    labels = example_labels(cfg)
    return load_example(cfg, labels[0]) if labels else None


def run(cfg: RunConfig, runs: Path | None, upload: str | None, example: str | None, sampler: str, steps: Any,
        eta: Any, seed: Any, progress: Callable[..., Any]) -> Iterator[tuple[Any, ...]]:
    """Run handler (a generator) -> (status, output, gallery, ground truth, metrics, raw file, verdict).

    Every problem ends as a one-line status message; the outputs are cleared. The verdict
    (:func:`demos.ui.verdict_markdown`) says whether the input lies within the model's training
    distribution (a model trained on first use has no calibration until ``medgen upgrade``: not assessed).
    """
    empty = (None, [], gr.skip(), "", None, "")
    try:
        settings = check_settings(cfg, sampler, steps, eta, seed)
        inp = resolve_input(cfg, upload, example)
    except (ImageReadError, DemoError) as exc:
        yield (error_status(str(exc)), *empty)
        return
    if not zoo.is_loaded(cfg, runs=runs):
        yield (f"Loading the quickstart model ({zoo.describe(cfg)}; trained once if it is not cached yet)...",
               *([gr.skip()] * 6))
    try:
        model = zoo.resolve(cfg, runs=runs, keep=True, label="the quickstart model", report=progress)
        verdict = ui.assess(model, inp.source * 2.0 - 1.0)
        pred, frames = translate(model, inp, *settings, progress=progress)
    except Exception as exc:  # report, never show a traceback in the page
        LOG.exception("quickstart run failed")
        yield (error_status(f"the model failed: {one_line(exc)}"), *empty)
        return
    out01 = from_model_range(pred[:1])
    status = _input_status(inp, cfg.data.image_size).splitlines()
    status[0] = f"Done: {SAMPLERS[settings[0]]}, {settings[1]} steps, seed {settings[3]}. " + status[0]
    yield ("\n".join(status), gray(out01), frames, gray(inp.target), metrics_markdown(pred[:1], inp),
           _save_raw(out01, inp, settings[0], settings[1], settings[3]), ui.verdict_markdown(verdict))


# --------------------------------------------------------------------------------------
# Layout
# --------------------------------------------------------------------------------------
@dataclass
class _Components:
    """The tab's components (passed to :func:`_wire`)."""

    status: gr.Markdown
    example: gr.Dropdown
    upload: gr.File
    sampler: gr.Dropdown
    steps: gr.Slider
    eta: gr.Slider
    seed: gr.Number
    run: gr.Button
    preview: gr.Image
    truth: gr.Image
    output: gr.Image
    metrics: gr.Markdown
    raw: gr.File
    gallery: gr.Gallery
    verdict: gr.Markdown


def build_tab(preset: str, *, runs_root: str | os.PathLike | None = None) -> None:
    """Lay out the quickstart tab inside the current ``gr.Tab`` and wire its events."""
    cfg = _config(preset)
    runs = Path(runs_root) if runs_root is not None else None
    size = cfg.data.image_size
    gr.Markdown(
        "### Conditional DDPM: restore blurred, speckled toy shapes\n"
        f"The source is a degraded *toy_shapes* phantom; the model predicts the clean target. "
        f"**Inputs are resized to {size}x{size} px** (the model's image size) and shown enlarged.",
        elem_id="qs-intro")
    first = first_example(cfg)  # shown at load: Run works straight away
    hint = f"{md(first.label)} is shown: press Run, or pick another example or upload an image." if first else NO_INPUT
    status = gr.Markdown(functools.partial(_model_status, cfg, runs, hint), elem_id="qs-status")
    with gr.Row(elem_id="qs-controls"):
        example, upload = _input_controls(cfg, first.label if first else None)
        sampler, steps, eta, seed, run_btn = _settings(cfg)
    with gr.Row(elem_id="qs-images"):
        with gr.Column(min_width=200):
            preview = image_component(f"Model input ({size}x{size})", "qs-input", 280,
                                      gray(first.source) if first else None)
            verdict = ui.verdict_box("qs-verdict")
        truth = image_component("Ground truth (examples only)", "qs-truth", 280, gray(first.target) if first else None)
        output = image_component(f"Output ({size}x{size})", "qs-output", 280)
    with gr.Row(elem_id="qs-results"):
        metrics = gr.Markdown("", elem_id="qs-metrics")
        raw = gr.File(label=f"Output at {size}x{size} (16-bit PNG)", interactive=False, elem_id="qs-download")
    gallery = gr.Gallery(label="Predicted x0 during sampling (denoising progress)", columns=N_SNAPSHOTS, rows=1,
                         height="auto", format="png", buttons=["fullscreen"], interactive=False,
                         elem_id="qs-gallery")  # "auto": the row of square tiles is never cut off
    _wire(cfg, runs, _Components(status, example, upload, sampler, steps, eta, seed, run_btn, preview, truth,
                                 output, metrics, raw, gallery, verdict))


def _input_controls(cfg: RunConfig, example_label: str | None) -> tuple[gr.Dropdown, gr.File]:
    """Example picker (showing ``example_label``) and upload box (in one column)."""
    with gr.Column(elem_id="qs-inputs"):
        example = gr.Dropdown(example_labels(cfg), value=example_label, label="Example from the toy_shapes test split",
                              elem_id="qs-example")
        upload = gr.File(label="...or upload an image", file_types=list(SUFFIXES), type="filepath", height=120,
                         elem_id="qs-upload")
        gr.Markdown("PNG, TIFF, JPEG or `.npy`; up to 50 MB and 4096x4096 px. Colour is converted to gray "
                    "luminance, 16-bit images are scaled by 1/65535, float `.npy` must lie in [0, 1].",
                    elem_id="qs-upload-help")
    return example, upload


def _settings(cfg: RunConfig) -> tuple[gr.Dropdown, gr.Slider, gr.Slider, gr.Number, gr.Button]:
    """Sampler, steps, eta, seed and the Run button (in one column)."""
    max_steps = min(cfg.diffusion.timesteps, MAX_STEPS)
    with gr.Column(elem_id="qs-settings"):
        sampler = gr.Dropdown([(label, name) for name, label in SAMPLERS.items()], value=cfg.sample.sampler,
                              label="Sampler", elem_id="qs-sampler")
        steps = gr.Slider(1, max_steps, value=min(cfg.sample.steps, max_steps), step=1, label="Sampling steps",
                          elem_id="qs-steps")
        eta = gr.Slider(0.0, 1.0, value=cfg.sample.eta, step=0.05, label="eta (DDIM only; 0 is deterministic)",
                        interactive=cfg.sample.sampler == "ddim", elem_id="qs-eta")
        seed = gr.Number(0, precision=0, minimum=0, label="Seed", elem_id="qs-seed")
        run_btn = gr.Button("Run", variant="primary", elem_id="qs-run")
    return sampler, steps, eta, seed, run_btn


def _config(preset: str) -> RunConfig:
    """The quickstart model's config: the shipped ``cpu`` one, else the ``smoke`` (``ci``) preset to train.
    A bad preset name is a one-line ConfigError."""
    try:
        get_preset(preset, TASK)  # the demo's own preset must exist
        return zoo.pick(get_preset("cpu", TASK), get_preset(train_preset(preset), TASK))
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(f"quickstart preset '{preset}': {one_line(exc)}") from None


def _clear_outputs() -> tuple[None, list, str, None, str]:
    """A new input invalidates the last output, gallery, metrics, download and verdict."""
    return None, [], "", None, ""


def _wire(cfg: RunConfig, runs: Path | None, c: _Components) -> None:
    """Connect the events (each handler gets ``cfg`` / ``runs`` bound)."""

    def upload_fn(path: str | None) -> tuple[Any, Any, Any, str]:
        return on_upload(cfg, path)

    def example_fn(label: str | None) -> tuple[Any, Any, Any, str]:
        return on_example(cfg, label)

    def run_fn(upload_path: str | None, label: str | None, sampler_name: str, n_steps: float, eta_value: float,
               seed_value: float, progress: gr.Progress = gr.Progress(track_tqdm=True)) -> Iterator[tuple[Any, ...]]:
        yield from run(cfg, runs, upload_path, label, sampler_name, n_steps, eta_value, seed_value, progress)

    results = [c.output, c.gallery, c.metrics, c.raw, c.verdict]
    c.upload.upload(upload_fn, [c.upload], [c.example, c.preview, c.truth, c.status],
                    api_name="quickstart_load_upload").then(_clear_outputs, None, results, api_visibility="private")
    c.upload.clear(lambda: (None, None, NO_INPUT), None, [c.preview, c.truth, c.status], api_visibility="private")
    c.example.input(example_fn, [c.example], [c.upload, c.preview, c.truth, c.status],
                    api_name="quickstart_pick_example").then(_clear_outputs, None, results, api_visibility="private")
    c.sampler.change(lambda s: gr.update(interactive=s == "ddim"), [c.sampler], [c.eta], api_visibility="private")
    c.run.click(run_fn, [c.upload, c.example, c.sampler, c.steps, c.eta, c.seed],
                [c.status, c.output, c.gallery, c.truth, c.metrics, c.raw, c.verdict], api_name="quickstart_run",
                show_progress_on=[c.output])  # the status line stays readable while training / sampling

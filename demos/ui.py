"""What every demo tab shows the same way: one-line errors, escaped Markdown, status lines,
enlarged images, read-only image components, downloadable outputs, the preset a missing
model is trained at, and the hub's style (:data:`CSS`). A tab is layout plus calls into medgen and
into this module.

Models come from :mod:`medgen.zoo` (``zoo.pick(cpu_config, train_config)``, then
``zoo.resolve(cfg, keep=True, ...)``); :func:`train_preset` names the second config's preset.
A model with per-sample conditions (``model.condition_keys``) gets one input each from
:func:`condition_inputs` and ``translate(cond=condition_values(...))``; a model whose source
has several channels (the five ultrasound depths) takes its uploads through :func:`read_stack`.

Out-of-distribution guard (:mod:`medgen.ood`): every tab that translates an input shows, beside the
input image, :func:`verdict_box` -- :func:`verdict_markdown` of ``ood.assess`` (:func:`assess`):
within / outside the training distribution with score and threshold, or why it was not assessed --
and offers :func:`override_checkbox`; an upload whose DICOM Modality differs from the model's
training modality is refused in one line by :func:`check_upload` unless that box is ticked.
"""
from __future__ import annotations

import functools
import math
import os
import queue
import re
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import gradio as gr
import numpy as np

__all__ = ["DemoError", "DISPLAY_PX", "CSS", "one_line", "md", "error_status", "input_status", "number", "out_dir",
           "save_array", "to_u8", "enlarge", "gray", "show_model", "show_sd", "image_component", "stream",
           "train_preset", "condition_inputs", "condition_values", "read_stack", "OVERRIDE_LABEL", "override_checkbox",
           "verdict_box", "verdict_markdown", "check_upload", "assess", "VERDICT_PENDING"]

DISPLAY_PX = 256  # images are enlarged (nearest neighbour, integer factor) to about this size
CSS = """
#hub-style { display: none; }
.prose th { word-break: keep-all; overflow-wrap: normal; hyphens: none; }
.upload-container { min-height: 150px; padding-top: 28px; }
.verdict { border-left: 4px solid #9ca3af; padding-left: 8px; }
"""  # the hub's style (demos.app; its carrier takes no room): table headers wrap between words only ("aeration", not "aeratio / n");
# file drop zones tall enough, with room under their floating label, that the upload icon stays visible


class DemoError(ValueError):
    """A one-line problem to show the user (bad settings, no input, model unavailable)."""


# --------------------------------------------------------------------------------------
# Text
# --------------------------------------------------------------------------------------
def one_line(exc: BaseException) -> str:
    """An exception as one line of text, whitespace collapsed (the UI never shows a traceback)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def md(text: str) -> str:
    """Escape Markdown control characters in user-provided text (file names)."""
    return re.sub(r"([\\`*_{}\[\]<>#|])", r"\\\1", text)


def error_status(message: str) -> str:
    """One-line error for a status Markdown (and a toast)."""
    gr.Warning(message)
    return f"**Error:** {md(message)}"


def input_status(label: str, size: int, detail: str, notes: Sequence[str] = (), warning: str | None = None) -> str:
    """Status Markdown of a loaded input: ``Input: **label** at SxS px<detail>.``, then ``warning``
    (e.g. out of the training distribution) and one ``- Note:`` line per conversion note."""
    paragraphs = [f"Input: **{md(label)}** at {size}x{size} px{detail}."]
    if warning:
        paragraphs.append(warning)
    if notes:
        paragraphs.append("\n".join(f"- Note: {md(n)}" for n in notes))
    return "\n\n".join(paragraphs)  # blank lines: separate Markdown paragraphs


def number(value: Any, name: str, lo: float, hi: float, integer: bool = False) -> float:
    """``value`` as a finite float in ``[lo, hi]`` (an integer when ``integer``). Raises DemoError."""
    try:
        v = float(0 if value is None else value)
    except (TypeError, ValueError):
        raise DemoError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(v) or not lo <= v <= hi or (integer and not v.is_integer()):
        kind = "an integer" if integer else "a number"
        raise DemoError(f"{name} must be {kind} in [{lo:g}, {hi:g}], got {value}")
    return v


# --------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------
@functools.cache
def out_dir(tab: str) -> Path:
    """Private folder of one tab (under ``$GRADIO_TEMP_DIR`` when set) for its downloadable raw outputs."""
    return Path(tempfile.mkdtemp(prefix=f"medgen-{tab}-", dir=os.environ.get("GRADIO_TEMP_DIR") or None))


def save_array(tab: str, stem: str, arr: Any) -> str:
    """``arr`` as float32 ``.npy`` in :func:`out_dir` of ``tab``, named ``<stem>_<ns>.npy``; returns the path."""
    path = out_dir(tab) / f"{stem}_{time.time_ns()}.npy"
    np.save(path, np.asarray(arr, np.float32))
    return str(path)


# --------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------
def to_u8(img01: np.ndarray) -> np.ndarray:
    """``[0, 1]`` (clipped) -> uint8."""
    return np.round(np.clip(img01, 0.0, 1.0) * 255.0).astype(np.uint8)


def enlarge(img: np.ndarray, *, stretch: bool = False) -> np.ndarray:
    """``[h, w]`` or ``[h, w, 3]`` enlarged by an integer factor (nearest) to about :data:`DISPLAY_PX`;
    ``stretch``: rows and columns by their own factors (a non-square measurement shown square-ish)."""
    k = max(1, DISPLAY_PX // max(img.shape[:2]))
    kx = max(1, DISPLAY_PX // img.shape[1]) if stretch else k
    k = max(1, DISPLAY_PX // img.shape[0]) if stretch else k
    return np.repeat(np.repeat(img, k, axis=0), kx, axis=1)


def gray(img01: np.ndarray | None) -> np.ndarray | None:
    """``[h, w]`` in [0, 1] -> enlarged uint8 gray image (None stays None)."""
    return None if img01 is None else enlarge(to_u8(img01))


def show_model(x: np.ndarray) -> np.ndarray:
    """``[h, w]`` in model range ``[-1, 1]`` -> enlarged uint8 gray image."""
    return enlarge(to_u8((np.asarray(x) + 1.0) / 2.0))


def show_sd(sd: np.ndarray, vmax: float) -> np.ndarray:
    """An SD map ``[h, w]`` -> enlarged RGB uint8 (magma, 0 .. ``vmax``, clipped above)."""
    from matplotlib import colormaps

    return enlarge(to_u8(colormaps["magma"](np.clip(np.asarray(sd) / vmax, 0.0, 1.0))[..., :3]))


def image_component(label: str, elem_id: str, height: int = 260, value: np.ndarray | None = None) -> gr.Image:
    """A read-only PNG image view (enlarged pixels; download and fullscreen, no share button), showing
    ``value`` at load when given."""
    return gr.Image(value, label=label, format="png", interactive=False, buttons=["download", "fullscreen"],
                    height=height, elem_id=elem_id)


# --------------------------------------------------------------------------------------
# Streaming
# --------------------------------------------------------------------------------------
def stream(work: Callable[[Callable[[Any], None]], Any]) -> Iterator[tuple[str, Any]]:
    """Run ``work(emit)`` in a worker thread; yield ``("frame", x)`` for every ``emit(x)`` as it comes,
    then ``("done", work's result)``; re-raise work's exception. A sampler's callback cannot yield to
    Gradio itself: it emits into a queue that this generator (the handler) drains."""
    items: queue.Queue = queue.Queue()

    def run() -> None:
        try:
            items.put(("done", work(lambda x: items.put(("frame", x)))))
        except BaseException as exc:  # noqa: BLE001 -- re-raised in the consumer
            items.put(("error", exc))

    worker = threading.Thread(target=run, name="demo-stream", daemon=True)
    worker.start()
    while True:
        kind, value = items.get()
        if kind == "frame":
            yield kind, value
            continue
        worker.join()
        if kind == "error":
            raise value
        yield kind, value
        return


# --------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------
def train_preset(preset: str) -> str:
    """The preset a tab trains a model at when no ``cpu`` checkpoint is shipped: ``ci`` for a ``ci``
    demo, else ``smoke`` (``zoo.pick(cpu_config, config_at(train_preset(preset)))``)."""
    return "ci" if preset == "ci" else "smoke"


# --------------------------------------------------------------------------------------
# Per-sample conditions and multi-channel inputs
# --------------------------------------------------------------------------------------
def _condition_meta(key: str, phantom: str) -> tuple[Any, str]:
    """``(Control or None, label text)`` of condition ``key`` from phantom ``phantom``'s spec ("" : none)."""
    if not phantom:
        return None, key
    import medgen.data  # noqa: F401 -- fills PHANTOMS
    from medgen.registry import PHANTOMS, lookup

    spec = lookup(PHANTOMS, phantom)
    control = spec.controls.get(key)
    meaning = control.description if control is not None and control.description else spec.labels.get(key, "")
    meaning = re.sub(r"\s*\([^()]*\[n[^()]*\)\s*$", "", meaning)  # drop the "(float32 [n])" array note
    return control, f"{key}: {meaning}" if meaning else key


def condition_inputs(keys: Sequence[str], phantom: str = "") -> list[Any]:
    """One input per condition key of a model (``model.condition_keys``), in order, for a tab's layout
    (call inside ``gr.Blocks``): a ``gr.Slider`` over the range of the phantom's control of that name
    (e.g. ``spine_coronal``'s ``cobb``, 0-60 degrees), else a ``gr.Number`` labelled with the phantom's
    label description (e.g. ``uca``). Pass their values to :func:`condition_values`."""
    inputs: list[Any] = []
    for key in keys:
        control, label = _condition_meta(key, phantom)
        if control is None:
            inputs.append(gr.Number(label=label, value=0.0, elem_id=f"cond-{key}"))
        else:
            inputs.append(gr.Slider(minimum=control.low, maximum=control.high, step=control.step or None,
                                    value=control.default, label=label, elem_id=f"cond-{key}"))
    return inputs


def condition_values(keys: Sequence[str], values: Sequence[Any], phantom: str = "") -> dict[str, float]:
    """``{key: value}`` for ``translate(cond=...)`` from the inputs' values (same order as ``keys``):
    each a finite number, within the phantom control's range where there is one. Raises DemoError."""
    if len(values) != len(keys):
        raise DemoError(f"{len(values)} condition value(s) for {len(keys)} condition(s) ({', '.join(keys)})")
    out = {}
    for key, value in zip(keys, values):
        control, _ = _condition_meta(key, phantom)
        lo, hi = (control.low, control.high) if control is not None else (-math.inf, math.inf)
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise DemoError(f"{key} must be a number, got {value!r}") from None
        if not math.isfinite(v):
            raise DemoError(f"{key} must be a finite number, got {value!r}")
        out[key] = number(v, key, lo, hi, integer=control is not None and control.step == 1)
    return out


def read_stack(files: Any, channels: int) -> tuple[np.ndarray, list[str]]:
    """Uploaded files (paths or Gradio file objects, in channel order) -> ``([channels, H, W]`` in [0, 1],
    conversion notes): one file per channel, or one ``.npy`` ``[channels, H, W]``
    (:func:`medgen.data.io.read_sample_stack`). A count that differs from ``channels`` (or any
    unreadable file) is a one-line DemoError naming both numbers."""
    from medgen.data.io import ImageReadError, read_sample_stack

    items = [] if files is None else [files] if isinstance(files, (str, os.PathLike)) else list(files)
    paths = [os.fspath(f) if isinstance(f, (str, os.PathLike)) else str(getattr(f, "path", None) or f.name)
             for f in items]
    if not paths:
        raise DemoError(f"no input: upload {channels} image(s), one per channel, or one .npy [{channels}, H, W]")
    notes: list[str] = []
    try:
        return read_sample_stack(paths, channels, notes=notes), notes
    except (ImageReadError, ValueError) as exc:
        raise DemoError(one_line(exc)) from None


# --------------------------------------------------------------------------------------
# Out-of-distribution guard (medgen.ood)
# --------------------------------------------------------------------------------------
OVERRIDE_LABEL = "Use a file of another modality anyway (its DICOM Modality differs from the model's training data)"
OVERRIDE_HINT = "tick 'Use a file of another modality anyway' to translate it"  # ends a refusal line
VERDICT_PENDING = "Training distribution: checked when the model is loaded (press the run button)."


def override_checkbox(elem_id: str) -> gr.Checkbox:
    """The explicit override of the modality guard (off by default)."""
    return gr.Checkbox(False, label=OVERRIDE_LABEL, elem_id=elem_id)


def verdict_box(elem_id: str) -> gr.Markdown:
    """Where the input's out-of-distribution verdict is shown (beside the input image)."""
    return gr.Markdown("", elem_id=elem_id, elem_classes=["verdict"])


def check_upload(path: str | os.PathLike, cfg: Any, allow: Any, model: str) -> tuple[str, str | None]:
    """The modality guard on an uploaded file (:func:`medgen.ood.check_input`): ``(Modality code, note or
    None)``; another modality than ``cfg``'s training data raises one-line ``ModalityMismatchError``
    naming both and the checkbox, unless ``allow``."""
    from medgen import ood

    return ood.check_input(path, cfg, allow=bool(allow), model=model, hint=OVERRIDE_HINT, what="the upload")


def assess(model: Any, x: np.ndarray, modality: str = "", notes: Sequence[str] = ()) -> Any:
    """:func:`medgen.ood.assess` of one model-range input ``[H, W]`` (or ``[C, H, W]``): its :class:`Verdict`."""
    import torch

    from medgen import ood

    t = torch.as_tensor(np.asarray(x, np.float32))
    return ood.assess(model, t.reshape(1, -1, *t.shape[-2:]), modality=modality, notes=notes)[0]


def verdict_markdown(verdict: Any) -> str:
    """Markdown of a :class:`medgen.ood.Verdict` (None: :data:`VERDICT_PENDING`): **Within / Outside the
    training distribution**, score against threshold and how the threshold was set, the modality notes."""
    if verdict is None:
        return VERDICT_PENDING
    if not verdict.assessed:
        head = f"**Training distribution not assessed:** {md(verdict.reason or 'no calibration')}."
    else:
        rule = (f"nearest-training distance in {verdict.space} features; threshold = {verdict.percentile:g}th "
                f"percentile of {verdict.n_heldout} held-out training images")
        if verdict.within:
            head = (f"**Within the training distribution**: score {verdict.score:.3g} <= threshold "
                    f"{verdict.threshold:.3g} ({rule}).")
        else:
            head = (f"**Outside the training distribution**: score {verdict.score:.3g} > threshold "
                    f"{verdict.threshold:.3g} ({rule}). **The output is not trustworthy.**")
    notes = "\n".join(f"- {md(n)}" for n in verdict.notes)
    return head + (f"\n\n{notes}" if notes else "")

"""Demo tab "Phantom explorer": move a slider, see both modalities of a phantom re-rendered.

One sub-tab per anatomy. The sliders are the phantom's own controls (``spec.controls``:
Cobb angle, BMI, KL grade, aeration, spine segment, sagittal slice, misalignment ...), plus
view options that only change what is shown (ultrasound depth, T1w/T2w contrast, MRI slice,
ultrasound operator). Images come from :func:`medgen.data.phantoms.views.panels`, the same
views as notebook 01, with the ground truth drawn on top.

Rendering is at the phantom's size for the demo's preset (``paper`` renders at the ``cpu``
size so a slider stays interactive); the last few renders are cached, so view options that
do not change the subject return at once. Errors come back as one line in the status box.
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

import gradio as gr
import numpy as np

import medgen.data.phantoms  # noqa: F401 -- fills PHANTOMS
from demos.ui import DemoError, error_status, image_component, md, one_line
from medgen.data.phantoms.base import PRESETS, TEST_OFFSET
from medgen.data.phantoms.views import panels
from medgen.registry import PHANTOMS

__all__ = ["build_tab", "render", "VIEW_OPTIONS", "ANATOMY_TITLES"]

ANATOMY_TITLES = {  # sub-tab title per phantom, in display order
    "spine_coronal": "Scoliotic spine: ultrasound / X-ray",
    "spine_sagittal": "Spine: MRI / CT",
    "knee": "Knee: X-ray / MRI",
    "lung": "Lung: section / ultrasound",
}
DEPTHS = ["optimal", "1", "2", "3", "4", "5"]
VIEW_OPTIONS: dict[str, list[tuple[str, str, Any]]] = {  # anatomy -> (view option, label, choices or (lo, hi, step, value))
    "spine_coronal": [("depth", "Ultrasound depth shown (1 = shallowest)", DEPTHS)],
    "spine_sagittal": [("contrast", "MRI contrast", ["t1w", "t2w"])],
    "knee": [("slice", "MRI slice (antero-posterior position)", (0.0, 1.0, 0.02, 0.5))],
    "lung": [("measurement", "Ultrasound forward operator", ["us_acoustic", "us_linear"])],
}
N_PANELS = {"lung": 3}  # images per anatomy (default 2)
MAX_SUBJECT = 99_999  # subject numbers offered (test-split subjects TEST_OFFSET + k)


def demo_sizes(spec: Any, preset: str) -> Any:
    """The phantom's size at ``preset``, capped at the ``cpu`` size to stay interactive."""
    if preset not in PRESETS:
        raise DemoError(f"unknown preset '{preset}' (choose from {', '.join(PRESETS)})")
    capped = PRESETS[min(PRESETS.index(preset), PRESETS.index("cpu"))]
    return spec.sizes_for(capped)


@functools.lru_cache(maxsize=16)
def _render_cached(name: str, preset: str, subject: int, controls: tuple[tuple[str, float], ...]
                   ) -> dict[str, np.ndarray]:
    spec = PHANTOMS[name]
    return spec([TEST_OFFSET + subject], seed=0, sizes=demo_sizes(spec, preset), **dict(controls))


def _view_kwargs(name: str, view: dict[str, Any]) -> dict[str, Any]:
    """Page values -> ``panels`` options (depth "optimal" -> None, "3" -> index 2)."""
    out = dict(view)
    if name == "spine_coronal":
        d = str(out.pop("depth", "optimal"))
        if d not in DEPTHS:
            raise DemoError(f"depth must be one of {', '.join(DEPTHS)}, got '{d}'")
        out["depth"] = None if d == "optimal" else int(d) - 1
    return out


def _labels_line(name: str, arrays: dict[str, np.ndarray]) -> str:
    """The scalar ground truth of the rendered subject as one Markdown line."""
    spec = PHANTOMS[name]
    parts = []
    for key in spec.labels:
        v = arrays.get(key)
        if v is not None and np.ndim(v) == 1 and np.issubdtype(np.asarray(v).dtype, np.number):
            x = np.asarray(v)[0]
            parts.append(f"{key} = {x:.3g}" if np.issubdtype(np.asarray(v).dtype, np.floating) else f"{key} = {int(x)}")
    return "Ground truth: " + ", ".join(parts[:8]) if parts else ""


def render(name: str, preset: str, subject: float, controls: dict[str, float], view: dict[str, Any]
           ) -> tuple[str, list[tuple[str, np.ndarray]]]:
    """Render one subject: ``(status markdown, [(title, RGB uint8 [H, W, 3]), ...])``.

    Raises :class:`DemoError` / ``ValueError`` with a one-line message on bad input.
    """
    if name not in PHANTOMS:
        raise DemoError(f"unknown phantom '{name}' (known: {', '.join(sorted(PHANTOMS))})")
    if subject is None or not float(subject).is_integer() or not 0 <= subject <= MAX_SUBJECT:
        raise DemoError(f"subject must be an integer in [0, {MAX_SUBJECT}], got {subject}")
    spec = PHANTOMS[name]
    fixed = spec.check_controls(controls)
    arrays = _render_cached(name, preset, int(subject), tuple(sorted(fixed.items())))
    views = panels(name, arrays, 0, **_view_kwargs(name, view))
    size = demo_sizes(spec, preset)
    shape = f"{size.height}x{size.width}" + (f"x{size.depth}" if size.depth else "")
    status = f"Subject {int(subject)} of the {name} phantom, rendered at {shape} px. {_labels_line(name, arrays)}"
    return status, list(views.items())


def _handler(name: str, preset: str, control_names: Sequence[str], view_names: Sequence[str], n_panels: int):
    """The event function of one anatomy: (subject, *controls, *views) -> (status, *images)."""

    def fn(subject: float, *values: Any) -> tuple[Any, ...]:
        controls = dict(zip(control_names, values[:len(control_names)]))
        view = dict(zip(view_names, values[len(control_names):]))
        try:
            status, views = render(name, preset, subject, controls, view)
        except (ValueError, IndexError, KeyError) as exc:
            return (error_status(one_line(exc)),) + (gr.update(value=None),) * n_panels
        images = [gr.update(value=img, label=title) for title, img in views[:n_panels]]
        return (status,) + tuple(images)

    return fn


def _view_component(name: str, option: str, label: str, spec_: Any) -> gr.components.Component:
    if isinstance(spec_, tuple):
        lo, hi, step, value = spec_
        return gr.Slider(lo, hi, value=value, step=step, label=label, elem_id=f"ph-{name}-{option}")
    return gr.Radio(spec_, value=spec_[0], label=label, elem_id=f"ph-{name}-{option}")


def _first_render(name: str, preset: str, n_panels: int) -> tuple[str, list[tuple[str, np.ndarray | None]]]:
    """Subject 0 at the default controls and view options, rendered when the tab is built so the page
    shows it at load (no button press; a few ms): ``(status, [(title, image), ...])``, ``n_panels`` long.
    A failure leaves the panels empty, with the one-line message as the status."""
    controls = {key: c.default for key, c in PHANTOMS[name].controls.items()}
    view = {opt: choices[3] if isinstance(choices, tuple) else choices[0]
            for opt, _, choices in VIEW_OPTIONS.get(name, [])}
    try:
        status, views = render(name, preset, 0, controls, view)
    except (ValueError, IndexError, KeyError) as exc:
        status, views = f"**Error:** {md(one_line(exc))}", []
    views = list(views[:n_panels])
    return status, views + [(f"panel {i + 1}", None) for i in range(len(views), n_panels)]


def _anatomy_tab(name: str, preset: str) -> None:
    """Controls, images and events of one anatomy (inside the current ``gr.Tab``)."""
    spec = PHANTOMS[name]
    gr.Markdown(spec.card.strip().split("\n\n")[0], elem_id=f"ph-{name}-intro")
    n_panels = N_PANELS.get(name, 2)
    first_status, first_views = _first_render(name, preset, n_panels)
    with gr.Row():
        with gr.Column(scale=1, min_width=260):
            subject = gr.Number(0, precision=0, minimum=0, maximum=MAX_SUBJECT, label="Subject (test split)",
                                elem_id=f"ph-{name}-subject")
            sliders = [gr.Slider(c.low, c.high, value=c.default, step=c.step or None,
                                 label=f"{key}: {c.description}" if c.description else key,
                                 elem_id=f"ph-{name}-{key}") for key, c in spec.controls.items()]
            views = [_view_component(name, opt, label, choices) for opt, label, choices in VIEW_OPTIONS.get(name, [])]
            button = gr.Button("Render", variant="primary", elem_id=f"ph-{name}-render")
        with gr.Column(scale=3):
            status = gr.Markdown(first_status, elem_id=f"ph-{name}-status")
            with gr.Row():
                images = [image_component(title, f"ph-{name}-panel{i}", 420, img)
                          for i, (title, img) in enumerate(first_views)]
    fn = _handler(name, preset, list(spec.controls), [v[0] for v in VIEW_OPTIONS.get(name, [])], n_panels)
    inputs, outputs = [subject, *sliders, *views], [status, *images]
    button.click(fn, inputs, outputs, api_name=f"phantom_{name}")
    for comp in sliders + [v for v in views if isinstance(v, gr.Slider)]:
        comp.release(fn, inputs, outputs, api_visibility="private")
    for comp in [subject] + [v for v in views if isinstance(v, gr.Radio)]:
        comp.change(fn, inputs, outputs, api_visibility="private")


def build_tab(preset: str, *, runs_root: Any = None) -> None:
    """The "Phantom explorer" tab: one sub-tab per registered anatomy (``runs_root`` unused)."""
    gr.Markdown("### Phantom explorer\nThe simulated patients every paper runs on, with their ground truth. "
                "Move a slider to re-render; view options only change what is shown.", elem_id="ph-intro")
    with gr.Tabs(elem_id="ph-tabs"):
        for name, title in ANATOMY_TITLES.items():
            if name in PHANTOMS:
                with gr.Tab(title, id=f"ph-{name}", elem_id=f"ph-tab-{name}"):
                    _anatomy_tab(name, preset)

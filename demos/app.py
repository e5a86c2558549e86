"""The medgen demo hub: a Gradio ``Blocks`` app with one tab per paper.

>>> from demos.app import build_app
>>> build_app("ci").launch(server_name="127.0.0.1", share=False)   # or: python -m demos.app

The hub runs fully offline: analytics are disabled before gradio is imported, it listens on
127.0.0.1 without a share link, and uploads go to a private temporary folder
(``GRADIO_TEMP_DIR``) instead of ``/tmp/gradio``.

Adding a paper: write ``demos/<paper>.py`` with ``build_tab(preset, *, runs_root=None)``
and append ``("<tab title>", <paper>.build_tab)`` to :data:`TABS`. Papers without a demo
have no tab.
"""
from __future__ import annotations

import argparse
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # before gradio is imported: no outside lookups
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
if not os.environ.get("GRADIO_TEMP_DIR"):
    os.environ["GRADIO_TEMP_DIR"] = tempfile.mkdtemp(prefix="medgen-gradio-")

import gradio as gr  # noqa: E402

from demos import lung_us, mri_to_ct, phantoms, quickstart, ui  # noqa: E402

TabBuilder = Callable[..., None]  # build_tab(preset: str, *, runs_root: Path | None) -> None

# (tab title, builder) in display order; later papers append theirs.
TABS: list[tuple[str, TabBuilder]] = [
    ("Quickstart: toy shapes", quickstart.build_tab),
    ("Phantom explorer", phantoms.build_tab),
    ("Spine MRI -> CT", mri_to_ct.build_tab),
    ("Lung ultrasound", lung_us.build_tab),
]

MAX_FILE_SIZE = "60mb"  # gradio's own upload cap; medgen.data.io rejects files over 50 MB with a clearer message
HEADER = (
    "# medgen demos\n"
    "Diffusion-based medical image translation on **simulated phantoms** (no patient data). "
    "Preset **`{preset}`**: {purpose}. Everything runs locally on this machine."
)
PRESET_PURPOSE = {
    "ci": "tiny models that exercise the code path, not the result",
    "smoke": "tiny, briefly trained models",
    "cpu": "CPU-trained models that show the papers' orderings on phantoms",
    "paper": "the papers' own hyperparameters (GPU)",
}


def _slug(title: str) -> str:
    """``"Quickstart: toy shapes"`` -> ``"quickstart-toy-shapes"`` (for elem_ids)."""
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


def build_app(preset: str = "ci", *, runs_root: str | os.PathLike | None = None) -> gr.Blocks:
    """The hub: a header and one tab per entry of :data:`TABS` (preset ``ci|smoke|cpu|paper``).

    ``runs_root`` is where trained models are cached (default ``$MEDGEN_RUNS`` or
    ``<repo>/runs``). Models load lazily on the first Run, so building is fast.
    """
    root = Path(runs_root) if runs_root is not None else None
    with gr.Blocks(title="medgen demos", analytics_enabled=False) as app:
        # the style travels with the app (gradio 6 takes css= only in launch(), which medgen demo calls itself)
        gr.HTML(f"<style>{ui.CSS}</style>", js_on_load=None, elem_id="hub-style")
        gr.Markdown(HEADER.format(preset=preset, purpose=PRESET_PURPOSE.get(preset, "custom preset")),
                    elem_id="hub-header")
        with gr.Tabs(elem_id="hub-tabs"):
            for title, builder in TABS:
                with gr.Tab(title, id=_slug(title), elem_id=f"tab-{_slug(title)}"):
                    builder(preset, runs_root=root)
    app.queue(default_concurrency_limit=1)  # one model run at a time on a small CPU
    return app


def launch(preset: str = "smoke", host: str = "127.0.0.1", port: int = 7860, *,
           runs_root: str | os.PathLike | None = None, **kwargs: Any) -> gr.Blocks:
    """Build the hub and serve it on ``host:port`` (never shared); returns the running app.

    ``kwargs`` go to ``gr.Blocks.launch`` (e.g. ``prevent_thread_lock=True`` in tests, then
    ``app.close()``).
    """
    app = build_app(preset, runs_root=runs_root)
    kwargs.setdefault("max_file_size", MAX_FILE_SIZE)
    app.launch(server_name=host, server_port=port, share=False, **kwargs)
    return app


def _parser() -> argparse.ArgumentParser:
    """``python -m demos.app [--preset P] [--host H] [--port N] [--runs DIR]``."""
    p = argparse.ArgumentParser(prog="python -m demos.app", description="Serve the medgen demo hub.")
    p.add_argument("--preset", default="smoke", help="ci, smoke, cpu or paper (default: smoke)")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=7860, help="port (default: 7860)")
    p.add_argument("--runs", default=None, help="folder of cached models (default: $MEDGEN_RUNS or <repo>/runs)")
    return p


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point: parse arguments and serve until interrupted."""
    args = _parser().parse_args(argv)
    from medgen.config import ConfigError, get_preset

    try:
        get_preset(args.preset, "quickstart")
    except ConfigError as exc:
        _parser().error(str(exc))
    launch(args.preset, args.host, args.port, runs_root=args.runs)


if __name__ == "__main__":
    main()

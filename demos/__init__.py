"""Gradio demos: one tab per paper in a single hub (:func:`demos.app.build_app`).

``python -m demos.app --preset smoke`` (or ``medgen demo``) serves the hub on
http://127.0.0.1:7860. Each tab module exposes ``build_tab(preset, *, runs_root=None)``,
which lays out its components inside the hub's current ``gr.Tab``; importing a tab module
does not import gradio's heavy server parts or load a model.
"""

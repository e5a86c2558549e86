"""Pinned behaviour: the seeded ``ci`` results of every notebook and the shipped checkpoints' outputs.

A refactor must not change what medgen computes. :func:`notebook_results` runs a notebook at the
``ci`` preset through papermill (the same path as ``medgen reproduce``) in a fresh runs folder and
returns its ``results.json`` metrics and findings; :func:`checkpoint_outputs` translates one fixed,
seeded input with every shipped checkpoint. ``python tests/pinned.py --write`` records both in
``tests/pinned_ci.json`` (once, before a refactor); ``tests/test_pinned.py`` recomputes and compares.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PINNED = Path(__file__).with_name("pinned_ci.json")
NOTEBOOKS = ("00_quickstart", "01_phantoms", "lung_ultrasound", "mri_to_ct")
CHECKPOINTS = sorted(p.parent.relative_to(ROOT / "checkpoints").as_posix()
                     for p in (ROOT / "checkpoints").glob("*/*/config.json"))


def notebook_results(stem: str) -> dict[str, Any]:
    """``{"metrics": ..., "findings": {name: holds}}`` of ``notebooks/<stem>.ipynb`` run at ``ci``.

    Models come from ``runs/`` when cached there (on a clean clone: trained from scratch, as the
    pinned values were); ``reports/<stem>/ci/results.json`` is rewritten by the run."""
    results_path = ROOT / "reports" / stem / "ci" / "results.json"
    results_path.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, MEDGEN_PRESET="ci")
        proc = subprocess.run([sys.executable, "-m", "papermill", str(ROOT / "notebooks" / f"{stem}.ipynb"),
                               str(Path(tmp) / f"{stem}.ipynb"), "-k", "python3", "--cwd", str(ROOT / "notebooks"),
                               "--log-level", "ERROR"], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"notebook {stem} failed at ci: {proc.stderr.strip().splitlines()[-1:]}")
    results = json.loads(results_path.read_text())
    return {"metrics": results["metrics"],
            "findings": {name: f["holds"] for name, f in results["findings"].items()}}


def checkpoint_outputs(name: str) -> list[float]:
    """Statistics of one shipped checkpoint's output for a fixed seeded input: mean, SD and 8 pixels."""
    import torch

    from medgen.checkpoint import load_translator, read_config

    torch.set_num_threads(1)
    folder = ROOT / "checkpoints" / name
    cfg = read_config(folder)
    model = load_translator(folder)
    size = cfg.data.image_size
    shape = (1, cfg.model.cond_image_channels or cfg.model.in_channels, size, size)
    src = torch.rand(shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
    if cfg.method == "ddpm":  # the prior: unguided generation is its sampling path
        out = model.generate(1, generator=torch.Generator().manual_seed(0), steps=5)
    else:
        out = model.outputs_for(src, generator=torch.Generator().manual_seed(0))
    flat = out.double().flatten()
    picks = flat[torch.linspace(0, flat.numel() - 1, 8).long()]
    return [float(flat.mean()), float(flat.std())] + [float(v) for v in picks]


def compute() -> dict[str, Any]:
    """Everything that is pinned, computed now."""
    return {"notebooks": {stem: notebook_results(stem) for stem in NOTEBOOKS},
            "checkpoints": {name: checkpoint_outputs(name) for name in CHECKPOINTS}}


def close(a: Any, b: Any, tol: float = 1e-4) -> bool:
    """Recursive equality of pinned values; floats within ``tol`` (absolute or relative)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(close(a[k], b[k], tol) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(close(x, y, tol) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        if a is None or b is None:
            return a is b
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return abs(a - b) <= tol * max(1.0, abs(a), abs(b))
    return a == b


if __name__ == "__main__":
    if "--write" in sys.argv:
        PINNED.write_text(json.dumps(compute(), indent=1, sort_keys=True) + "\n")
        print("wrote", PINNED)

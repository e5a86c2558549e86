"""``medgen reproduce``: run the paper notebooks through papermill and index the reports.

Each ``notebooks/<stem>.ipynb`` is executed with the parameter ``preset`` (papermill inserts
it after the cell tagged ``parameters``) inside ``notebooks/``, and the executed copy is
written to ``reports/<stem>/<preset>/<stem>.ipynb`` beside the tables, figures and
``results.json`` the notebook saves through :class:`medgen.reports.Report`. Afterwards
``reports/index.md`` is rebuilt.

A failing notebook is reported and skipped; the others still run, and
:class:`ReproduceError` is raised at the end naming every failure.

>>> from medgen.reproduce import reproduce
>>> reproduce("smoke", papers=["spine"])       # doctest: +SKIP
"""
from __future__ import annotations

import contextlib
import os
import re
import sys
import time
from pathlib import Path
from typing import Sequence

from medgen import progress as status
from medgen.reports import build_index, repo_root
from medgen.utils import set_env

NOTEBOOK_DIR = "notebooks"
REPORT_DIR = "reports"


class ReproduceError(RuntimeError):
    """One or more notebooks failed; ``failed`` names them, ``outputs`` lists what ran."""

    def __init__(self, failed: Sequence[str], outputs: Sequence[Path]) -> None:
        super().__init__(f"{len(failed)} notebook(s) failed: {', '.join(failed)} "
                         "(see the executed copies under reports/ for the failing cell)")
        self.failed = list(failed)
        self.outputs = list(outputs)


def parse_papers(papers: str | Sequence[str] | None) -> list[str]:
    """``"spine, knee"`` / ``["spine", "knee"]`` -> ``["spine", "knee"]``; empty means all."""
    if papers is None:
        return []
    items = [papers] if isinstance(papers, str) else list(papers)
    return [word for item in items for word in re.split(r"[,\s]+", item) if word]


def select_notebooks(notebook_dir: Path, papers: str | Sequence[str] | None = None) -> list[Path]:
    """Sorted ``*.ipynb`` in ``notebook_dir`` whose stem contains one of ``papers`` (all if empty)."""
    if not notebook_dir.is_dir():
        raise FileNotFoundError(f"notebook folder {notebook_dir} does not exist")
    notebooks = sorted(p for p in notebook_dir.glob("*.ipynb") if not p.name.startswith("."))
    words = parse_papers(papers)
    if words:
        notebooks = [p for p in notebooks if any(w.lower() in p.stem.lower() for w in words)]
    if not notebooks:
        names = ", ".join(p.stem for p in sorted(notebook_dir.glob("*.ipynb"))) or "none"
        raise ValueError(f"no notebook in {notebook_dir} matches papers {words} (notebooks: {names})")
    return notebooks


def output_path(reports_dir: Path, notebook: Path, preset: str) -> Path:
    """``reports/<stem>/<preset>/<stem>.ipynb``."""
    return reports_dir / notebook.stem / preset / notebook.name


def run_notebook(notebook: Path, output: Path, preset: str, *, kernel: str = "python3",
                 progress: bool = True) -> None:
    """Execute one notebook with papermill (cwd = its folder); raises on a failing cell."""
    import papermill  # imported here: it takes a second and only this command needs it

    output.parent.mkdir(parents=True, exist_ok=True)
    papermill.execute_notebook(str(notebook), str(output), parameters={"preset": preset},
                               kernel_name=kernel, cwd=str(notebook.parent), progress_bar=progress)


def _short_error(exc: BaseException) -> str:
    """The first line of an exception (papermill's messages span many lines)."""
    name = getattr(exc, "ename", None) or type(exc).__name__
    value = getattr(exc, "evalue", None) or str(exc)
    first = next((line for line in str(value).splitlines() if line.strip()), "")
    return f"{name}: {first}"


def reproduce(preset: str = "smoke", papers: str | Sequence[str] | None = None, *,
              root: str | os.PathLike[str] | None = None, kernel: str = "python3", retrain: bool = False) -> list[Path]:
    """Run the selected notebooks at ``preset``; returns the executed notebooks' paths.

    ``papers`` selects notebooks whose file stem contains any of the words (``None`` or
    empty: all). ``root`` is the repository root (default: :func:`repo_root`). ``retrain``: the kernels
    ignore the shipped checkpoints (``RETRAIN=1``, :func:`medgen.zoo.retrain_requested`). Raises
    :class:`ReproduceError` after running the others if any notebook failed.
    """
    root_path = Path(root).resolve() if root is not None else repo_root()
    notebooks = select_notebooks(root_path / NOTEBOOK_DIR, papers)
    reports_dir = root_path / REPORT_DIR
    outputs: list[Path] = []
    failed: list[str] = []
    with set_env("MEDGEN_ROOT", str(root_path)), (set_env("RETRAIN", "1") if retrain
                                                     else contextlib.nullcontext()):
        for i, notebook in enumerate(notebooks, 1):
            out = output_path(reports_dir, notebook, preset)
            print(f"[{i}/{len(notebooks)}] {notebook.name} (preset {preset}) -> {out.relative_to(root_path)}",
                  flush=True)
            start = time.monotonic()
            try:
                with status.watch():  # the kernel's status lines (which model trains / samples, how far)
                    run_notebook(notebook, out, preset, kernel=kernel)
            except Exception as exc:  # noqa: BLE001 - any failure of one notebook must not stop the rest
                failed.append(notebook.stem)
                print(f"[{i}/{len(notebooks)}] FAILED {notebook.name} after {time.monotonic() - start:.0f} s: "
                      f"{_short_error(exc)}", file=sys.stderr, flush=True)
                continue
            outputs.append(out)
            print(f"[{i}/{len(notebooks)}] done {notebook.name} in {time.monotonic() - start:.0f} s", flush=True)
        index = build_index(reports_dir)
    print(f"reports: {index}")
    if failed:
        raise ReproduceError(failed, outputs)
    return outputs

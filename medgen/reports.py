"""What a notebook leaves behind: tables, figures and ``results.json`` under ``reports/``.

This implements the report contract of DESIGN.md. Each notebook run writes to
``<repo root>/reports/<notebook>/<preset>/``:

* ``<name>.csv`` and ``<name>.md`` for every table (:meth:`Report.table`),
* ``<name>.png`` for every figure (:meth:`Report.figure`),
* ``results.json`` with exactly the keys ``notebook, preset, git_sha, seed, created,
  metrics, findings`` (:meth:`Report.save`),

and :func:`build_index` writes ``reports/index.md`` linking every notebook's latest run.

Reports always land in the repository root whatever the working directory (nbval and
papermill run a notebook inside ``notebooks/``): see :func:`repo_root`.

>>> rep = Report("00_quickstart", "ci")                     # doctest: +SKIP
>>> rep.table("psnr", df); rep.figure("samples", fig)       # doctest: +SKIP
>>> rep.metric("cddpm", "psnr", 21.3)                       # doctest: +SKIP
>>> rep.finding("beats_baseline", True, "21.3 dB vs 17.1 dB for the input.")  # doctest: +SKIP
>>> rep.save()                                              # doctest: +SKIP
"""
from __future__ import annotations

import json
import math
import os
import subprocess
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

RESULT_KEYS = ("notebook", "preset", "git_sha", "seed", "created", "metrics", "findings")
INDEX_NAME = "index.md"
BENCHMARK_DIR = "benchmark"
FIGURE_DPI = 120


# --------------------------------------------------------------------------------------
# Repository root and git
# --------------------------------------------------------------------------------------
def _find_project(start: Path) -> Path | None:
    """The first of ``start`` and its parents that holds a ``pyproject.toml``."""
    for folder in (start, *start.parents):
        if (folder / "pyproject.toml").is_file():
            return folder
    return None


def repo_root() -> Path:
    """The medgen repository root.

    ``$MEDGEN_ROOT`` if set; else the checkout this package was imported from (an editable
    install); else the nearest folder above the working directory with a ``pyproject.toml``;
    else the working directory.
    """
    env = os.environ.get("MEDGEN_ROOT")
    if env:
        return Path(env).expanduser().resolve()
    package_parent = Path(__file__).resolve().parent.parent
    if (package_parent / "pyproject.toml").is_file():
        return package_parent
    return _find_project(Path.cwd().resolve()) or Path.cwd().resolve()


def resolve_reports_root(root: str | os.PathLike[str] = "reports") -> Path:
    """``root`` itself if absolute, else ``root`` under :func:`repo_root`."""
    path = Path(root).expanduser()
    return path if path.is_absolute() else repo_root() / path


def git_sha(cwd: str | os.PathLike[str] | None = None) -> str:
    """``git rev-parse HEAD`` of the repository (``"unknown"`` outside git)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd or repo_root(),
                             capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    sha = out.stdout.strip()
    return sha or "unknown"


# --------------------------------------------------------------------------------------
# Markdown tables
# --------------------------------------------------------------------------------------
# pandas.DataFrame.to_markdown needs the optional `tabulate` package; a pipe table is a few
# lines, so medgen formats it itself rather than adding a dependency for it.
def _cell(value: Any, floatfmt: str) -> str:
    """One markdown cell: floats formatted, missing values empty, pipes escaped."""
    if value is None or (pd.api.types.is_scalar(value) and pd.isna(value)):
        return ""
    if isinstance(value, (float, np.floating)):
        return format(float(value), floatfmt)
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(df: pd.DataFrame, *, index: bool = False, floatfmt: str = ".3f") -> str:
    """A GitHub pipe table of ``df``; numeric columns are right-aligned."""
    frame = df.reset_index() if index else df
    columns = [str(c) for c in frame.columns]
    numeric = [pd.api.types.is_numeric_dtype(frame[c]) and not pd.api.types.is_bool_dtype(frame[c])
               for c in frame.columns]
    header = "| " + " | ".join(c.replace("|", "\\|") for c in columns) + " |"
    rule = "|" + "|".join("---:" if num else "---" for num in numeric) + "|"
    rows = ["| " + " | ".join(_cell(v, floatfmt) for v in row) + " |"
            for row in frame.itertuples(index=False, name=None)]
    return "\n".join([header, rule, *rows]) + "\n"


def _one_line(text: str) -> str:
    """``text`` on one line, safe inside a markdown table cell."""
    return " ".join(str(text).split()).replace("|", "\\|")


# --------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------
class Report:
    """Collects one notebook run's tables, figures, metrics and findings.

    ``Report(notebook, preset)`` writes to ``reports/<notebook>/<preset>/`` under the
    repository root (``root`` may name another folder; relative paths are taken from the
    repository root). ``results.json`` is only written by :meth:`save`.
    """

    def __init__(self, notebook: str, preset: str, *, root: str | os.PathLike[str] = "reports",
                 seed: int = 0) -> None:
        for label, value in (("notebook", notebook), ("preset", preset)):
            if not value or "/" in value or "\\" in value or value in (".", ".."):
                raise ValueError(f"report {label} name {value!r} must be a non-empty name without slashes")
        self.notebook, self.preset, self.seed = notebook, preset, int(seed)
        self.root = resolve_reports_root(root)
        self._metrics: dict[str, dict[str, float | None]] = {}
        self._findings: dict[str, dict[str, Any]] = {}

    def __repr__(self) -> str:
        return f"Report({self.notebook!r}, {self.preset!r}, dir={str(self.dir)!r})"

    @property
    def dir(self) -> Path:
        """``reports/<notebook>/<preset>/`` (created on first use)."""
        path = Path(self.root) / self.notebook / self.preset
        path.mkdir(parents=True, exist_ok=True)
        return path

    def table(self, name: str, df: pd.DataFrame, *, index: bool = False, floatfmt: str = ".3f") -> Path:
        """Write ``<name>.csv`` (full precision) and ``<name>.md``; returns the markdown path."""
        df.to_csv(self.dir / f"{name}.csv", index=index)
        path = self.dir / f"{name}.md"
        path.write_text(markdown_table(df, index=index, floatfmt=floatfmt))
        return path

    def figure(self, name: str, fig: Any) -> Path:
        """Write a matplotlib figure as ``<name>.png`` (dpi 120); the figure stays open."""
        path = self.dir / f"{name}.png"
        fig.savefig(path, dpi=FIGURE_DPI, bbox_inches="tight")
        return path

    def metric(self, method: str, name: str, value: float) -> None:
        """Record one headline number: ``metrics[method][name] = value``."""
        value = float(value)
        self._metrics.setdefault(str(method), {})[str(name)] = None if math.isnan(value) else value

    def metrics(self, values: Mapping[str, Mapping[str, float]]) -> None:
        """Record many headline numbers: ``{method: {metric: value}}``."""
        for method, per_metric in values.items():
            for name, value in per_metric.items():
                self.metric(method, name, value)

    def finding(self, name: str, holds: bool, evidence: str) -> None:
        """Record whether a claim of the paper holds, with one sentence of numeric evidence."""
        self._findings[str(name)] = {"holds": bool(holds), "evidence": " ".join(str(evidence).split())}

    def findings(self, found: Mapping[str, tuple[bool, str]], *, echo: bool = True) -> dict[str, tuple[bool, str]]:
        """Record every ``{name: (holds, evidence)}`` of a paper's ``findings(...)`` and, with ``echo``,
        print one ``HOLDS · name: evidence`` / ``DOES NOT HOLD · ...`` line each; returns ``found``."""
        for name, (holds, evidence) in found.items():
            self.finding(name, holds, evidence)
            if echo:
                print(f"{'HOLDS' if holds else 'DOES NOT HOLD'} · {name}: {evidence}")
        return dict(found)

    def failed(self) -> dict[str, str]:
        """``{name: evidence}`` of the recorded findings that do not hold."""
        return {name: f["evidence"] for name, f in self._findings.items() if not f["holds"]}

    def results(self) -> dict[str, Any]:
        """The ``results.json`` content (exactly :data:`RESULT_KEYS`)."""
        return {
            "notebook": self.notebook,
            "preset": self.preset,
            "git_sha": git_sha(),
            "seed": self.seed,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "metrics": self._metrics,
            "findings": self._findings,
        }

    def save(self) -> Path:
        """Write ``results.json`` and return its path."""
        path = self.dir / "results.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.results(), indent=2, sort_keys=False) + "\n")
        tmp.replace(path)
        return path


# --------------------------------------------------------------------------------------
# Index
# --------------------------------------------------------------------------------------
@dataclass
class _Run:
    """One ``reports/<notebook>/<preset>/`` folder as found on disk."""

    path: Path
    results: dict[str, Any] | None

    @property
    def created(self) -> str:
        """ISO time of the run (``results.json`` if present, else the folder's mtime)."""
        if self.results and self.results.get("created"):
            return str(self.results["created"])
        return datetime.fromtimestamp(self.path.stat().st_mtime, timezone.utc).isoformat(timespec="seconds")


def _load_run(path: Path) -> _Run:
    """Read a run folder; an unreadable ``results.json`` counts as missing."""
    try:
        results = json.loads((path / "results.json").read_text())
    except (OSError, ValueError):
        results = None
    return _Run(path, results if isinstance(results, dict) else None)


PRESET_RANK = {"paper": 0, "cpu": 1, "smoke": 2, "ci": 3}  # which run of a notebook is its headline
PRESET_ROLE = {"paper": "the paper's budget", "cpu": "the findings at CPU budget", "smoke": "code-path check",
               "ci": "test run"}


def _is_run(path: Path) -> bool:
    """A notebook run folder: it holds ``results.json`` or an executed notebook (not e.g. screenshots)."""
    return path.is_dir() and ((path / "results.json").is_file() or any(path.glob("*.ipynb")))


def _runs_by_notebook(root: Path) -> dict[str, list[_Run]]:
    """``{notebook: [runs, headline first]}`` for every notebook folder under ``root``: the run of the
    largest preset (:data:`PRESET_RANK`: paper, cpu, smoke, ci; unknown presets after ci) is the
    headline -- a fresh ``smoke`` check does not hide the ``cpu`` results -- then newest first. ``ci`` runs
    (test artifacts, git-ignored) are listed only for a notebook that has no other run."""
    out: dict[str, list[_Run]] = {}
    for nb_dir in sorted(p for p in root.iterdir() if p.is_dir() and p.name != BENCHMARK_DIR
                         and not p.name.startswith(".")):
        runs = sorted((_load_run(p) for p in sorted(nb_dir.iterdir()) if _is_run(p)),
                      key=lambda r: r.created, reverse=True)
        real = [r for r in runs if r.path.name != "ci"]
        if runs:
            out[nb_dir.name] = sorted(real or runs, key=lambda r: PRESET_RANK.get(r.path.name, len(PRESET_RANK)))
    return out


def _link(root: Path, path: Path, text: str | None = None) -> str:
    """A markdown link to ``path`` relative to the reports root."""
    return f"[{text or path.name}]({path.relative_to(root).as_posix()})"


def _artifacts(root: Path, run: _Run) -> list[str]:
    """Bullet lines linking the executed notebook, results.json, tables and figures."""
    files = sorted(p for p in run.path.iterdir() if p.is_file())
    lines = [f"- executed notebook: {_link(root, p)}" for p in files if p.suffix == ".ipynb"]
    if (run.path / "results.json").is_file():
        lines.append(f"- results: {_link(root, run.path / 'results.json')}")
    tables = [f"{_link(root, p, p.stem)} ({_link(root, p.with_suffix('.csv'), 'csv')})"
              for p in files if p.suffix == ".md" and p.with_suffix(".csv").is_file()]
    if tables:
        lines.append("- tables: " + ", ".join(tables))
    figures = [_link(root, p, p.stem) for p in files if p.suffix == ".png"]
    if figures:
        lines.append("- figures: " + ", ".join(figures))
    return lines


def _manifest_line(run: _Run) -> str:
    """``preset `x` · git `sha` · seed n · created t`` of a run."""
    res = run.results or {}
    sha = str(res.get("git_sha", "unknown"))
    preset = res.get("preset", run.path.name)
    return f"preset `{preset}` · git `{sha[:12]}` · seed {res.get('seed', '?')} · created {run.created}"


def _findings_table(results: Mapping[str, Any] | None) -> list[str]:
    """Markdown lines of the findings table (or a note when there are none)."""
    findings = (results or {}).get("findings") or {}
    if not findings:
        return ["No findings recorded."]
    lines = ["| finding | holds | evidence |", "|---|---|---|"]
    for name, item in findings.items():
        holds = "yes" if item.get("holds") else "**no**"
        lines.append(f"| {_one_line(name)} | {holds} | {_one_line(item.get('evidence', ''))} |")
    return lines


def _notebook_section(root: Path, notebook: str, runs: list[_Run]) -> list[str]:
    """The index section of one notebook: its headline run in full, other runs linked with their role."""
    latest = runs[0]
    role = PRESET_ROLE.get(latest.path.name)
    lines = [f"## {notebook}", "", f"Headline run{f' ({role})' if role else ''}: {_manifest_line(latest)}", ""]
    if latest.results is None:
        lines += ["**No results.json: the run failed or did not finish.**", ""]
    lines += _artifacts(root, latest) + [""] + _findings_table(latest.results) + [""]
    if len(runs) > 1:
        others = [_link(root, r.path, f"{r.path.name} ({r.created}{'; ' + PRESET_ROLE[r.path.name] if r.path.name in PRESET_ROLE else ''})")
                  for r in runs[1:]]
        lines += ["Other runs: " + ", ".join(others), ""]
    return lines


def _summary_row(root: Path, notebook: str, run: _Run) -> str:
    """One row of the overview table."""
    res = run.results or {}
    findings = res.get("findings") or {}
    held = sum(bool(f.get("holds")) for f in findings.values())
    status = f"{held}/{len(findings)}" if run.results is not None else "no results"
    anchor = notebook.lower().replace(" ", "-")
    return (f"| [{notebook}](#{anchor}) | {res.get('preset', run.path.name)} | "
            f"`{str(res.get('git_sha', 'unknown'))[:12]}` | {res.get('seed', '?')} | {run.created} | {status} |")


def _benchmark_lines(root: Path) -> list[str]:
    """Links to the benchmark tables in ``reports/benchmark/``."""
    bench = root / BENCHMARK_DIR
    tables = sorted(bench.glob("*.csv")) if bench.is_dir() else []
    if not tables:
        return []
    links = [f"- {_link(root, p.with_suffix('.md'), p.stem) if p.with_suffix('.md').is_file() else p.stem}"
             f" ({_link(root, p, 'csv')})" for p in tables]
    return ["## Benchmarks", "", *links, ""]


def build_index(root: str | os.PathLike[str] = "reports") -> Path:
    """Write ``<root>/index.md`` linking every notebook's headline run (:func:`_runs_by_notebook`) and its
    other runs; returns its path."""
    root_path = resolve_reports_root(root)
    root_path.mkdir(parents=True, exist_ok=True)
    by_nb = _runs_by_notebook(root_path)
    lines = ["# medgen reports", "",
             "Generated by `medgen reproduce` (`medgen.reports.build_index`); do not edit by hand.", ""]
    if by_nb:
        lines += ["| notebook | preset | git SHA | seed | created | findings holding |",
                  "|---|---|---|---|---|---|"]
        lines += [_summary_row(root_path, nb, runs[0]) for nb, runs in by_nb.items()] + [""]
    else:
        lines += ["No notebook has been run yet: `make reproduce`.", ""]
    for nb, runs in by_nb.items():
        lines += _notebook_section(root_path, nb, runs)
    lines += _benchmark_lines(root_path)
    path = root_path / INDEX_NAME
    path.write_text("\n".join(lines).rstrip("\n") + "\n")
    return path

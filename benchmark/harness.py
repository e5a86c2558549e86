"""The harness every benchmark shares: report rows and files, progress lines, interleaved timing, the entry point.

A benchmark is ``parse_args(argv) -> args`` and ``run(args) -> list[Row]``; :func:`run_benchmark`
runs it and writes ``<out>/<name>.csv`` (columns ``measure,value,unit,goal,holds``) and
``<name>.md`` (the same table under a provenance line: command, machine, time, load average).

The machine is shared and noisy, so a goal is a *ratio of two things timed in the same run*:
:func:`interleave` runs the arms alternately (forward order on even rounds, reversed on odd
ones, after untimed warm-up calls) and :func:`ratio_rows` reports the median of the per-round
ratios beside two rows that say how far to trust it (the interquartile range of the per-round
ratios, and the ratio of the fastest rounds). See benchmark/README.md.

Also here, for the benchmarks that time untrained networks: :func:`randomize_zero_init` and
:func:`n_parameters`.
"""
from __future__ import annotations

import argparse

import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import pandas as pd
import torch
from torch import nn

from medgen.reports import markdown_table, resolve_reports_root

COLUMNS = ("measure", "value", "unit", "goal", "holds")
METHOD = "Ratios are medians of per-round ratios of interleaved runs; see benchmark/README.md."


# --------------------------------------------------------------------------------------
# Rows and report
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Row:
    """One line of the report. ``goal`` is e.g. ``"<= 1.03"`` or ``"report"``; ``holds`` is None for report rows."""

    measure: str
    value: float
    unit: str
    goal: str = "report"
    holds: bool | None = None


def goal_row(measure: str, value: float, unit: str, op: str, threshold: float) -> Row:
    """A row with a goal ``value <op> threshold`` (op is ``"<="`` or ``">="``); NaN never holds."""
    ok = value <= threshold if op == "<=" else value >= threshold
    return Row(measure, value, unit, f"{op} {threshold:g}", bool(ok) and not math.isnan(value))


def to_frame(rows: Sequence[Row]) -> pd.DataFrame:
    """The rows as a DataFrame with the report columns (``holds`` empty for report-only rows)."""
    records = [(r.measure, float(r.value), r.unit, r.goal, "" if r.holds is None else str(r.holds)) for r in rows]
    return pd.DataFrame.from_records(records, columns=list(COLUMNS))


def to_markdown(rows: Sequence[Row]) -> str:
    """The rows as a GitHub markdown table (values to 4 significant digits)."""
    return markdown_table(to_frame(rows), floatfmt=".4g")


def write_report(rows: Sequence[Row], out_dir: Path, header: str, *, name: str, title: str) -> tuple[Path, Path]:
    """Write ``<name>.csv`` and ``<name>.md`` (same table, under a provenance line) to ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out_dir / f"{name}.csv", out_dir / f"{name}.md"
    to_frame(rows).to_csv(csv_path, index=False, float_format="%.6g")
    md_path.write_text(f"# {title}\n\n{header}\n\n{to_markdown(rows)}")
    return csv_path, md_path


def add_output_options(p: argparse.ArgumentParser, *, threads: int = 2) -> argparse.ArgumentParser:
    """``--threads`` (torch threads) and ``--out`` (report folder): the options every benchmark shares."""
    p.add_argument("--threads", type=int, default=threads, help=f"torch threads (default: {threads})")
    p.add_argument("--out", default="reports/benchmark", help="output folder (default: reports/benchmark)")
    return p


def logger(name: str) -> Callable[[str], None]:
    """``log(message)`` printing ``[<name> HH:MM:SS] message`` progress lines on stdout (one per benchmark)."""
    def log(message: str) -> None:
        print(f"[{name} {time.strftime('%H:%M:%S')}] {message}", flush=True)
    return log


# --------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------
def timed(fn: Callable[[], object]) -> float:
    """Wall-clock seconds of one call of ``fn``."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleave(arms: Mapping[str, Callable[[], object]], repeats: int, label: str, warmup: int = 1, *,
               log: Callable[[str], None] | None = None) -> dict[str, list[float]]:
    """Time each arm ``repeats`` times, alternating arm order every round; returns seconds per arm.

    ``log`` (a :func:`logger`) prints one progress line per round; None prints them as ``[benchmark ...]``.
    """
    log = log or logger("benchmark")
    names = list(arms)
    for _ in range(warmup):
        for name in names:
            arms[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            times[name].append(timed(arms[name]))
        done = ", ".join(f"{n} {times[n][-1]:.3f}s" for n in names)
        log(f"{label} round {r + 1}/{repeats}: {done}")
    return times


def paired_ratio(numerator: Sequence[float], denominator: Sequence[float]) -> float:
    """Median over rounds of ``numerator[r] / denominator[r]``."""
    return statistics.median(a / b for a, b in zip(numerator, denominator))


def ratio_rows(measure: str, numerator: Sequence[float], denominator: Sequence[float], op: str,
               threshold: float) -> list[Row]:
    """The goal row (median of per-round ratios) plus two rows that show how far to trust it:
    the interquartile range of the per-round ratios, and the ratio of the fastest rounds
    (noise on a shared machine only ever slows a run down, so the minima are its least
    disturbed samples)."""
    ratios = [a / b for a, b in zip(numerator, denominator)]
    q1, _, q3 = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else (ratios[0],) * 3
    short = measure.split(":")[0]
    return [
        goal_row(measure, statistics.median(ratios), "x", op, threshold),
        Row(f"{short}: IQR of the per-round ratios", q3 - q1, "x"),
        Row(f"{short}: ratio of the fastest rounds", min(numerator) / min(denominator), "x"),
    ]


def paired_diff(a: Sequence[float], b: Sequence[float]) -> float:
    """Median over rounds of ``a[r] - b[r]``."""
    return statistics.median(x - y for x, y in zip(a, b))


# --------------------------------------------------------------------------------------
# Untrained networks
# --------------------------------------------------------------------------------------
def randomize_zero_init(net: nn.Module, std: float = 0.02) -> nn.Module:
    """Give all-zero parameters (the UNet zero-initialises ``conv_out``) small random values.

    An untrained zero-output network would make output comparisons trivial (speed.py's
    medgen-vs-diffusers check: x0 = a x_t exactly); the speed does not depend on the values.
    """
    with torch.no_grad():
        for p in net.parameters():
            if not p.any():
                p.normal_(0.0, std)
    return net


def n_parameters(net: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in net.parameters() if p.requires_grad)


# --------------------------------------------------------------------------------------
# The entry point
# --------------------------------------------------------------------------------------
def load_average() -> str:
    """The machine's 1-minute load average (other processes compete for the cores), or "n/a"."""
    try:
        return f"{os.getloadavg()[0]:.1f}"
    except (AttributeError, OSError):
        return "n/a"


def header(argv: Sequence[str], load_before: str, seconds: float, *, module: str, method: str = METHOD) -> str:
    """Provenance line of a benchmark's markdown report: command, machine, time, load, ``method``."""
    command = " ".join([f"python -m {module}", *argv])
    return (f"`{command}` on {platform.machine()} ({os.cpu_count()} cores, {torch.get_num_threads()} torch "
            f"threads, torch {torch.__version__}), {time.strftime('%Y-%m-%d %H:%M')}, {seconds:.0f} s; "
            f"1-minute load average {load_before} at the start and {load_average()} at the end. {method}")


def run_benchmark(argv: Sequence[str] | None, *, parse_args: Callable, run: Callable, name: str, title: str,
                  module: str, method: str | None = None) -> int:
    """The entry point every benchmark shares: parse ``argv``, ``run(args) -> rows``, write
    ``<out>/<name>.csv`` / ``.md`` with the provenance header (``method`` as its last sentence),
    print the table. Returns 0."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    start, load_before = time.perf_counter(), load_average()
    rows = run(args)
    extra = {} if method is None else {"method": method}
    provenance = header(argv, load_before, time.perf_counter() - start, module=module, **extra)
    csv_path, md_path = write_report(rows, resolve_reports_root(args.out), provenance, name=name, title=title)
    print(to_markdown(rows))
    print(f"[{name} {time.strftime('%H:%M:%S')}] wrote {csv_path} and {md_path} in "
          f"{time.perf_counter() - start:.0f} s", flush=True)
    return 0

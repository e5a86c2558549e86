"""Phantom generation speed against what a training step consumes (goal: >= 20x).

Run ``python -m benchmark.phantoms [--quick] [--presets smoke,cpu,paper]``; it writes
``reports/benchmark/phantoms.{csv,md}`` (columns ``measure,value,unit,goal,holds``) and
prints the table.

Method
------
For each registered phantom and each preset, at the phantom's size for that preset
(``spec.sizes_for(preset)``):

* **Generation** — items per second of ``spec(numbers, sizes=...)`` for a fresh batch of
  subjects (new subject numbers every round, so nothing is cached), everything the
  simulator returns included (both modalities, noise, ground truth, measurements). An *item*
  is what the paper's dataset yields per training sample: one image pair, except the knee,
  whose volume gives ``depth`` slice items per subject (the paper trains on slices).
* **Consumption** — items per second one training step uses: ``batch / step time`` of the
  diffusion training step (``diffusion_loss`` forward + backward + AdamW step) of the
  quickstart task's UNet at that preset, built for this phantom's input/output channels and
  rendered size. For ``paper`` the step runs at batch 2 (a paper-size batch on 2 CPU
  cores takes minutes; per-item time is close to batch-independent at these sizes), so its
  consumption is that of a CPU: a GPU consumes far faster, which the row's note says.
* **Ratio** = generation / consumption, goal ``>= 20``. The two are timed alternately in
  the same rounds (median of per-round ratios; see ``benchmark/harness.py`` on why ratios).

The phantom's channels follow the paper that uses it (``TASKS`` below). Nothing here trains
a model; the UNet weights are random, which does not change the step time.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from benchmark.harness import Row, add_output_options, goal_row, logger, write_report
import medgen.data.phantoms  # noqa: F401 -- fills PHANTOMS
from medgen.config import get_preset
from medgen.diffusion.losses import diffusion_loss
from medgen.diffusion.parameterization import Denoiser
from medgen.diffusion.schedules import NoiseSchedule
from medgen.nn.unet import Condition, UNet
from medgen.registry import PHANTOMS
from medgen.reports import resolve_reports_root

GOAL = 20.0  # generation must be at least this many times faster than a training step consumes
PRESETS = ("smoke", "cpu", "paper")
PAPER_BATCH = 2  # training-step batch at the paper size on CPU (see the module docstring)

log = logger("phantoms")  # progress lines on stdout


@dataclass(frozen=True)
class Task:
    """How a paper trains on a phantom: condition channels, target channels, items per subject."""

    source_channels: int  # channels concatenated to x_t as the condition (0: unconditional)
    target_channels: int  # channels of the generated image
    slices_per_subject: bool = False  # True: each subject yields `depth` 2D items (slice training)


TASKS = {
    "spine_coronal": Task(5, 1),  # 5 ultrasound depths -> radiograph (UXDiff; enhancement: 5 -> 1 too)
    "spine_sagittal": Task(2, 1),  # T1w + T2w -> CT (2D)
    "knee": Task(1, 1, slices_per_subject=True),  # radiograph -> one MRI slice at a target depth
    "lung": Task(0, 1),  # unconditional DDPM of lung sections
}


def items_per_subject(name: str, sizes) -> int:
    """Training items one rendered subject gives."""
    task = TASKS.get(name, Task(1, 1))
    return max(1, sizes.depth) if task.slices_per_subject else 1


def generation_seconds(spec, sizes, n: int, start: int) -> float:
    """Seconds to render subjects ``start .. start + n - 1``."""
    t0 = time.perf_counter()
    spec(np.arange(start, start + n), seed=0, sizes=sizes)
    return time.perf_counter() - t0


class TrainStep:
    """One diffusion training step of the quickstart UNet of ``preset`` at a phantom's size."""

    def __init__(self, name: str, preset: str, sizes, batch: int, seed: int = 0) -> None:
        cfg = get_preset(preset, "quickstart")
        task = TASKS.get(name, Task(1, 1))
        model = replace(cfg.model, in_channels=task.target_channels, out_channels=task.target_channels,
                        cond_image_channels=task.source_channels)
        torch.manual_seed(seed)
        self.denoiser = Denoiser(UNet(model), NoiseSchedule.from_config(cfg.diffusion),
                                 prediction=cfg.diffusion.prediction)
        self.opt = torch.optim.AdamW(self.denoiser.parameters(), lr=cfg.train.lr)
        g = torch.Generator().manual_seed(seed)
        shape = (sizes.height, sizes.width)
        self.x0 = torch.rand((batch, task.target_channels, *shape), generator=g) * 2 - 1
        self.cond = (Condition(image=torch.rand((batch, task.source_channels, *shape), generator=g) * 2 - 1)
                     if task.source_channels else None)
        self.batch = batch

    def __call__(self) -> float:
        """Seconds of one step (forward, backward, optimiser)."""
        t0 = time.perf_counter()
        self.opt.zero_grad(set_to_none=True)
        diffusion_loss(self.denoiser, self.x0, self.cond)["loss"].backward()
        self.opt.step()
        return time.perf_counter() - t0


def calibrate(spec, sizes, target_s: float) -> int:
    """Subjects per timed generation call so that one call takes about ``target_s`` seconds."""
    n, start = 1, 900_000
    while True:
        dt = generation_seconds(spec, sizes, n, start)
        start += n
        if dt >= target_s or n >= 256:
            return n
        n = min(256, max(n * 2, int(n * target_s / max(dt, 1e-3))))


def measure(name: str, preset: str, rounds: int, target_s: float) -> list[Row]:
    """Rows for one phantom at one preset."""
    spec = PHANTOMS[name]
    sizes = spec.sizes_for(preset)
    per_subject = items_per_subject(name, sizes)
    batch = PAPER_BATCH if preset == "paper" else get_preset(preset, "quickstart").train.batch_size
    step = TrainStep(name, preset, sizes, batch)
    step()  # warm-up
    n = calibrate(spec, sizes, target_s)
    gen, use, ratios = [], [], []
    for r in range(rounds):
        g_s = generation_seconds(spec, sizes, n, 1_000_000 + r * n)
        s_s = step()
        gen.append(n * per_subject / g_s)
        use.append(batch / s_s)
        ratios.append(gen[-1] / use[-1])
    size = f"{sizes.height}x{sizes.width}" + (f"x{sizes.depth}" if sizes.depth else "")
    tag = f"{name} {preset} ({size})"
    note = " (CPU step at batch 2; a GPU consumes more)" if preset == "paper" else ""
    return [
        Row(f"{tag}: generation", statistics.median(gen), "items/s", "report", None),
        Row(f"{tag}: training step consumes{note}", statistics.median(use), "items/s", "report", None),
        goal_row(f"{tag}: generation / consumption", statistics.median(ratios), "x", ">=", GOAL),
    ]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmark.phantoms", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="one round, short calls: checks the code path")
    p.add_argument("--presets", default=",".join(PRESETS), help="comma-separated presets (default: smoke,cpu,paper)")
    p.add_argument("--phantoms", default="", help="comma-separated phantoms (default: all registered)")
    p.add_argument("--rounds", type=int, default=5, help="timed rounds per phantom and preset (default: 5)")
    return add_output_options(p).parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    names = [n for n in args.phantoms.split(",") if n] or sorted(PHANTOMS)
    presets = [p for p in args.presets.split(",") if p]
    rounds, target = (1, 0.05) if args.quick else (args.rounds, 0.5)
    rows: list[Row] = []
    t0 = time.perf_counter()
    for name in names:
        for preset in presets:
            log(f"{name} at {preset}")
            rows += measure(name, preset, rounds, target)
    out = resolve_reports_root(args.out)
    header = (f"`python -m benchmark.phantoms {' '.join(sys.argv[1:] if argv is None else argv)}` "
              f"({time.perf_counter() - t0:.0f} s, {args.threads} threads, {rounds} round(s))")
    csv, md = write_report(rows, Path(out), header, name="phantoms", title="Phantom generation speed")
    print(md.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

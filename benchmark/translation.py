"""Translation speed of every spine MRI -> CT translator: seconds per 2D slice and per 3D volume.

Run ``python -m benchmark.translation [--quick]``; it writes ``reports/benchmark/translation.csv``
and ``translation.md`` (columns ``measure,value,unit,goal,holds``) and prints the table.

What is timed
-------------
Every translator of :mod:`medgen.presets.mri_to_ct` (``MODELS`` without the ``MEASURERS``),
built from ``get_preset(preset, task=...)`` (default preset ``cpu``: 64 x 64 slices, 3D volumes
64 x 64 x 32) through ``registry.lookup(METHODS, cfg.method)``, and timed end to end through
its :meth:`~medgen.methods.base.Method.translate` under ``torch.inference_mode`` on the
preset's sampling settings:

* DDIM noise / image mode: ``cfg.sample`` (DDIM, t = 20 in 2D and t = 25 in 3D, eta 1).
* DDPM: the noise-mode network with ``sampler="ddpm"`` over all T = ``cfg.diffusion.timesteps``
  (1000) steps, timed against DDIM in its own interleaved rounds (it takes ~T/t times longer);
  2D at batch 1 (``--ddpm-batches``), 3D only with ``--ddpm-3d`` (a 3D DDPM-1000 volume takes
  over an hour on 2 cores).
* pix2pix (UNet, SA-UNet, 3D), CUT (ResNet, SA-UNet): one generator pass.
* SynDiff: its 4-step reverse chain (``schedule.steps``).

The weights are random (seeded; all-zero tensors such as the UNet's zero-initialised output
conv get small random values, :func:`benchmark.harness.randomize_zero_init`) and the source
is uniform noise in [-1, 1]: the time of a forward pass does not depend on the weights' or
the image's values, so no training is needed. 2D runs at batch 1 and batch 8 (``--batches``);
seconds per slice = seconds per batch / batch. 3D runs at batch 1 (one volume).

As in every benchmark (:mod:`benchmark.harness`, benchmark/README.md), the machine is shared
and noisy: the arms of a group run alternately (:func:`benchmark.harness.interleave`, one
untimed warm-up call each), absolute times are medians over rounds, and every ratio is the
median of per-round ratios, with its interquartile range and the ratio of the fastest rounds
beside it. Nothing here has a goal: every row is ``report``.

Duration on the shared 2-core machine (cpu preset, all translators): ``--quick`` (one round
after one warm-up call, DDPM t=100) took 14-19 minutes; a DDIM step of the cpu-preset UNet at
64 px, batch 1, took 0.7-1.6 s there (convolutions at ~1 GFLOP/s), so the full run (3 rounds
after a warm-up, then one round of DDPM over all 1000 steps at batch 1) takes roughly 40-60
minutes. ``--models``, ``--batches``, ``--repeats`` and ``--ddpm-steps`` shrink it.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import dataclass, replace
from typing import Callable, Sequence

import torch

from benchmark.harness import Row, interleave, logger, n_parameters, randomize_zero_init, ratio_rows, run_benchmark
import medgen.methods  # noqa: F401 -- fills METHODS
from medgen.config import RunConfig, get_preset
from medgen.methods.base import Method
from medgen.presets import mri_to_ct
from medgen.registry import METHODS, lookup

NAME, TITLE = "translation", "Translation speed (spine MRI -> CT)"
DDPM_OF = {2: "ddim_noise", 3: "ddim_noise_3d"}  # whose network DDPM runs on (same net as DDIM)
# (numerator, denominator) translator pairs whose time ratio is reported
RATIOS_2D = (("ddim_noise", "pix2pix_unet"), ("ddim_noise", "pix2pix_sa_unet"), ("ddim_image", "ddim_noise"),
             ("syndiff", "ddim_noise"), ("cut_sa_unet", "cut_resnet"), ("pix2pix_sa_unet", "pix2pix_unet"))
RATIOS_3D = (("ddim_noise_3d", "pix2pix_3d"), ("ddim_image_3d", "ddim_noise_3d"))


def translators() -> tuple[str, ...]:
    """The mri_to_ct models that translate MRI to CT (the measurers segment CT instead)."""
    return tuple(m for m in mri_to_ct.MODELS if m not in mri_to_ct.MEASURERS)


log = logger("translation")  # progress lines on stdout


# --------------------------------------------------------------------------------------
# Translators
# --------------------------------------------------------------------------------------
@dataclass
class Translator:
    """One preset model with random weights, and how it translates (``options`` for translate)."""

    model: str
    cfg: RunConfig
    method: Method
    what: str  # e.g. "DDIM t=20", "one generator pass"
    options: dict

    @property
    def dims(self) -> int:
        return self.cfg.model.spatial_dims

    def source(self, batch: int, seed: int = 0) -> torch.Tensor:
        """Uniform [-1, 1] source ``[batch, C_s, S, S]`` (2D) or ``[batch, C_s, D, S, S]`` (3D) at the preset's size."""
        d = self.cfg.data
        shape = (d.image_size, d.image_size) if self.dims == 2 else (d.depth, d.image_size, d.image_size)
        g = torch.Generator().manual_seed(seed)
        return torch.rand(batch, self.cfg.model.cond_image_channels, *shape, generator=g) * 2 - 1

    def arm(self, batch: int, seed: int = 0, **options) -> Callable[[], torch.Tensor]:
        """A call translating one fixed batch (same noise seed every call)."""
        source = self.source(batch, seed)
        opts = {**self.options, **options}

        def call() -> torch.Tensor:
            with torch.inference_mode():
                return self.method.translate(source, generator=torch.Generator().manual_seed(seed), **opts)

        return call


def describe(cfg: RunConfig, method: Method) -> str:
    """How ``method`` translates at its preset's settings (for row labels)."""
    if cfg.method == "cddpm":
        return f"{cfg.sample.sampler.upper()} t={cfg.sample.steps}"
    if cfg.method == "syndiff":
        return f"{method.schedule.steps}-step reverse chain"
    return f"one {cfg.options.generator} generator pass"


def build(model: str, preset: str, seed: int = 0) -> Translator:
    """``model`` of the mri_to_ct task at ``preset`` with seeded random weights, in eval mode."""
    cfg = get_preset(preset, task=mri_to_ct.task(model))
    torch.manual_seed(seed)
    method = randomize_zero_init(lookup(METHODS, cfg.method)(cfg)).eval()
    return Translator(model, cfg, method, describe(cfg, method), {})


def ddpm_of(t: Translator, steps: int) -> Translator:
    """The same network sampled by DDPM over ``steps`` respaced steps (``steps = T``: every step)."""
    return replace(t, what=f"DDPM t={steps}", options={"sampler": "ddpm", "steps": steps})


def size_tag(t: Translator) -> str:
    d = t.cfg.data
    return f"{d.image_size}x{d.image_size}" if t.dims == 2 else f"{d.image_size}x{d.image_size}x{d.depth}"


# --------------------------------------------------------------------------------------
# Measures
# --------------------------------------------------------------------------------------
def report_ratio_rows(what: str, numerator: Sequence[float], denominator: Sequence[float]) -> list[Row]:
    """:func:`benchmark.harness.ratio_rows` as report rows: ``"<what>: median of per-round ratios"``,
    ``"<what>: IQR ..."``, ``"<what>: ratio of the fastest rounds"`` (``what`` must hold no colon)."""
    if ":" in what:
        raise ValueError(f"ratio label '{what}' must not contain ':'")
    rows = ratio_rows(f"{what}: median of per-round ratios", numerator, denominator, ">=", 0.0)
    return [replace(rows[0], goal="report", holds=None), *rows[1:]]


def measure_group(ts: Sequence[Translator], batch: int, repeats: int, warmup: int,
                  pairs: Sequence[tuple[str, str]]) -> tuple[list[Row], dict[str, float]]:
    """Interleaved translate() times of ``ts`` at ``batch``: rows (s per slice / volume, the ``pairs``
    ratios) and model -> median seconds per slice / volume."""
    dims, tag = ts[0].dims, size_tag(ts[0])
    unit, group = ("s/slice", f"2D {tag}, batch {batch}") if dims == 2 else ("s/volume", f"3D {tag}, batch {batch}")
    arms = {t.model: t.arm(batch) for t in ts}
    times = interleave(arms, repeats, group, warmup=warmup, log=log)
    per_item = {t.model: statistics.median(times[t.model]) / batch for t in ts}
    rows = [Row(f"{group}: {t.model} ({t.what})", per_item[t.model], unit) for t in ts]
    for num, den in pairs:
        if num in times and den in times:
            rows += report_ratio_rows(f"{group} time {num} / {den}", times[num], times[den])
    return rows, per_item


def measure_ddpm(t: Translator, batch: int, steps: int, rounds: int, warmup: int) -> list[Row]:
    """DDPM over ``steps`` steps against the preset's DDIM, same network and batch, interleaved."""
    ddpm = ddpm_of(t, steps)
    group = f"{t.dims}D {size_tag(t)}, batch {batch}"
    unit = "s/slice" if t.dims == 2 else "s/volume"
    ddim_arm = t.arm(batch)
    for _ in range(warmup):  # DDPM needs no warm-up call of its own: its first of many steps is one
        ddim_arm()
    times = interleave({"ddim": ddim_arm, "ddpm": ddpm.arm(batch)}, rounds, f"{group} DDPM vs DDIM", warmup=0,
                       log=log)
    n_ddim = t.cfg.sample.steps
    per_step = [(a / steps) / (b / n_ddim) for a, b in zip(times["ddpm"], times["ddim"])]
    return [
        Row(f"{group}: {t.model} network, {ddpm.what} (T={t.cfg.diffusion.timesteps})",
            statistics.median(times["ddpm"]) / batch, unit),
        Row(f"{group}: {t.model} network, {t.what} (same rounds as DDPM)", statistics.median(times["ddim"]) / batch,
            unit),
        *report_ratio_rows(f"{group} time {ddpm.what} / {t.what} (step ratio {steps / n_ddim:g})",
                           times["ddpm"], times["ddim"]),
        Row(f"{group}: time per step, DDPM / DDIM", statistics.median(per_step), "x"),
    ]


def batching_rows(per_slice: dict[int, dict[str, float]]) -> list[Row]:
    """Per 2D model, s/slice at batch 1 over s/slice at the largest batch (medians of separate groups)."""
    big = max(per_slice, default=1)
    if 1 not in per_slice or big == 1:
        return []
    return [Row(f"2D batching gain {m}: s/slice at batch 1 / at batch {big}", v / per_slice[big][m], "x")
            for m, v in per_slice[1].items()]


# --------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Plan:
    """Rounds of one run (``--quick`` shrinks them); ``ddpm_steps`` 0 means all T."""

    repeats: int
    warmup: int
    ddpm_rounds: int
    ddpm_steps: int


def make_plan(quick: bool, repeats: int | None, ddpm_steps: int | None) -> Plan:
    """Full (3 rounds, DDPM over all T steps in 1 round) or quick (1 round, DDPM t=100); one warm-up call.

    One DDPM round suffices: its T network calls already average the machine's noise over
    minutes, and its DDIM partner runs right before it.
    """
    plan = Plan(1, 1, 1, 100) if quick else Plan(3, 1, 1, 0)
    if repeats:
        plan = replace(plan, repeats=repeats, ddpm_rounds=repeats)
    if ddpm_steps is not None:
        plan = replace(plan, ddpm_steps=ddpm_steps)
    return plan


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(prog="python -m benchmark.translation", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="one round, DDPM t=100 (checks the code path)")
    p.add_argument("--out", default="reports/benchmark", help="folder for translation.csv / translation.md")
    p.add_argument("--preset", default="cpu", help="mri_to_ct preset of every model (default cpu: 64 px, 64x64x32)")
    p.add_argument("--models", default="", help="comma-separated subset of the translators (default all)")
    p.add_argument("--batches", default="1,8", help="2D batch sizes (3D always batch 1)")
    p.add_argument("--repeats", type=int, default=None, help="timed rounds per group (default 3, quick 1)")
    p.add_argument("--ddpm-steps", type=int, default=None, help="DDPM steps (default all T; quick 100; 0 = T)")
    p.add_argument("--ddpm-batches", default="1", help="2D batch sizes of the DDPM-vs-DDIM rounds (default 1)")
    p.add_argument("--ddpm-3d", action="store_true", help="also time DDPM on the 3D network (slow)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    return p.parse_args(argv)


def selected(models: str) -> list[str]:
    """The translators named in ``models`` (all when empty); unknown names are a one-line error."""
    names = [m for m in models.split(",") if m] or list(translators())
    unknown = [m for m in names if m not in translators()]
    if unknown:
        raise ValueError(f"unknown translator '{unknown[0]}' (choose from {', '.join(translators())})")
    return names


def run(args: argparse.Namespace) -> list[Row]:
    """Build the selected translators and run every measure; returns the rows."""
    plan = make_plan(args.quick, args.repeats, args.ddpm_steps)
    torch.set_num_threads(args.threads)
    batches = sorted({int(b) for b in args.batches.split(",") if b})
    ts = [build(m, args.preset) for m in selected(args.models)]
    log(f"preset {args.preset}, {len(ts)} translators, 2D batches {batches}, {torch.get_num_threads()} threads, "
        f"plan {plan}")
    rows = [Row(f"parameters {t.model}", n_parameters(t.method) / 1e6, "M") for t in ts]
    by_dims = {d: [t for t in ts if t.dims == d] for d in (2, 3)}
    per_slice: dict[int, dict[str, float]] = {}
    for batch in batches if by_dims[2] else []:
        group_rows, per_slice[batch] = measure_group(by_dims[2], batch, plan.repeats, plan.warmup, RATIOS_2D)
        rows += group_rows
    if by_dims[3]:
        rows += measure_group(by_dims[3], 1, plan.repeats, plan.warmup, RATIOS_3D)[0]
    rows += batching_rows(per_slice)
    ddpm_2d = sorted({int(b) for b in args.ddpm_batches.split(",") if b})
    for dims, ddpm_batches in ((2, ddpm_2d), (3, [1] if args.ddpm_3d else [])):
        base = next((t for t in by_dims[dims] if t.model == DDPM_OF[dims]), None)
        for batch in ddpm_batches if base is not None else []:
            steps = plan.ddpm_steps or base.cfg.diffusion.timesteps
            rows += measure_ddpm(base, batch, steps, plan.ddpm_rounds, plan.warmup)
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: run, write the CSV and markdown, print the table (:func:`benchmark.harness.run_benchmark`)."""
    return run_benchmark(argv, parse_args=parse_args, run=run, name=NAME, title=TITLE, module="benchmark.translation",
                         method="Random weights (speed does not depend on training); times are medians over "
                                "interleaved rounds, ratios medians of per-round ratios; see benchmark/translation.py.")


if __name__ == "__main__":
    sys.exit(main())

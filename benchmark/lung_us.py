"""Speed of the lung-ultrasound prior: unconditional generation and DPS-guided reconstruction.

Run ``python -m benchmark.lung_us [--quick]``; it writes ``reports/benchmark/lung_us.csv`` and
``lung_us.md`` (columns ``measure,value,unit,goal,holds``) and prints the table. Issue 6,
section 6: "images/s of unconditional sampling (DDIM-50 and the fast solver) and seconds per
guided reconstruction (the guidance backward pass makes each step cost about 3 forwards:
report the measured ratio)".

What is timed
-------------
The prior of task ``lung_us/prior`` (:class:`medgen.methods.ddpm.UnconditionalDDPM`) built from
``get_preset(preset, task="lung_us/prior")`` (default preset ``cpu``: 64 px, UNet
(32, 64, 96, 128), middle-block attention, learned variances, 3.5 M parameters), with
seeded random weights (all-zero tensors get small random values,
:func:`benchmark.harness.randomize_zero_init`): the time of a forward or backward pass does not
depend on the weights, so no training is needed.

* (g) Generation: :meth:`~medgen.methods.ddpm.UnconditionalDDPM.generate` of one batch (1 and 8,
  ``--batches``) with DDIM over 50 respaced steps, eta 0 (the preset's sampler) and with
  DPM-Solver++ (2M) (``sampler="dpmpp"``, 20 steps, one network call per step), arms
  interleaved. Rows: images/s of each, ms per step of each and their per-step ratio (both
  make one network call per step, so about 1), the whole-run time ratio DDIM / DPM-Solver++
  (the fast solver's speed-up, about 50 / 20), and the batching gain.
* (r) Guided reconstruction: :meth:`~medgen.methods.ddpm.UnconditionalDDPM.reconstruct`, i.e.
  :func:`medgen.inverse.dps_reconstruct`, of one measurement (batch 1, ``n_samples`` 1) with
  each operator of :data:`medgen.inverse.OPERATORS` (``us_linear``, ``us_acoustic``, ``blur``,
  ``inpaint``; guidance scale ``DPS_DEFAULTS["scale"]`` = 10) against the same call with
  scale 0 (the unguided prior: the same sampler, steps, ``x_T`` and code path, without the
  gradient), with DPS's own sampler (:data:`medgen.methods.ddpm.DPS_SAMPLER`, ancestral DDPM,
  as the lung_us experiment and demo run it; ``--recon-sampler ddim`` for DDIM eta 0) over the
  preset's ``cfg.sample.steps`` (50) respaced steps (the per-step cost does not depend on the sampler), all arms
  interleaved. Rows: seconds per reconstruction and the per-step time ratio guided /
  unguided per operator: the number of unguided steps a guided step costs. A guided step
  runs the network forward with the autograd graph, the operator and its backward, and the
  backward pass through the network; the issue's "about 3 forwards" assumes a backward
  costs two forwards.
* (o) Operators alone: per call, each operator's forward (no gradient) and forward +
  backward (the guidance objective ``||y - A(x)||`` differentiated w.r.t. ``x``) at batch 1,
  against one network forward (no gradient) and one network forward + backward (the
  gradient of ``x0_hat.sum()`` w.r.t. ``x_t``, as the guidance takes it, without the
  operator), interleaved. Rows: ms per call and, per operator, the operator's forward +
  backward over one network forward (shows the operators are a negligible part of a guided
  step), and the network's forward + backward over its forward (the guided step's cost in
  forwards without any operator).
* (p) Paper network: the ``paper`` preset prior (256 px, 61 M parameters) for one short
  round: ``--paper-steps`` unguided and ``us_linear``-guided steps at batch 1, after an
  untimed one-step call of each. Rows: seconds per step of each and their ratio (one round:
  no spread). A 256 px forward is ~280 GFLOP (~6 s on one core), so the full run uses 2 steps.

As in every benchmark (:mod:`benchmark.harness`, benchmark/README.md), the machine is shared
and noisy: the arms of a group run alternately (:func:`benchmark.harness.interleave`, one
untimed warm-up call each), absolute times are medians over rounds, and every ratio is the
median of per-round ratios, with its interquartile range and the ratio of the fastest rounds
beside it. Nothing here has a goal: every row is ``report``. The default thread count is the
preset's ``train.num_threads`` (1 at ``cpu``: 2 threads thrash on the shared 2-core machine).

Duration on the shared 2-core machine at 1 thread (cpu preset, load average ~4, i.e. other
jobs held the cores): ``--quick`` (one round after one warm-up call, no (p)) took 163-175 s;
one network forward at 64 px, batch 1, took ~80 ms (DDIM-50 ~4 s per image, a guided DDIM-50
reconstruction 7-9 s), and one step of the paper network 5 s unguided, 14 s guided (one
round, ~3 GB resident). The full run (5 rounds after a warm-up, (p) with 2 steps) therefore
takes roughly 8-10 minutes. ``--only``, ``--batches``, ``--operators``, ``--repeats`` and the
step options shrink a run.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import dataclass, replace
from typing import Callable, Sequence

import torch

from benchmark.harness import Row, interleave, logger, n_parameters, randomize_zero_init, run_benchmark
from benchmark.translation import report_ratio_rows
import medgen.data  # noqa: F401 -- fills DATASETS
import medgen.methods  # noqa: F401 -- fills METHODS
from medgen.config import RunConfig, get_preset
from medgen.inverse import OPERATORS, measure
from medgen.methods.ddpm import DPS_DEFAULTS, DPS_SAMPLER, UnconditionalDDPM
from medgen.presets.lung_us import PRIOR
from medgen.registry import DATASETS, METHODS, lookup

NAME, TITLE = "lung_us", "Lung-ultrasound prior speed (generation and guided reconstruction)"
MEASURES = "grop"  # (g) generation, (r) reconstruction, (o) operators, (p) paper network
SAMPLER_NAMES = {"ddim": "DDIM", "ddpm": "DDPM", "dpmpp": "DPM-Solver++ 2M"}
UNGUIDED = "unguided"


log = logger("lung_us")  # progress lines on stdout


# --------------------------------------------------------------------------------------
# The prior
# --------------------------------------------------------------------------------------
@dataclass
class Prior:
    """The lung prior of one preset with random weights (eval mode), and a lung section to measure."""

    preset: str
    cfg: RunConfig
    method: UnconditionalDDPM
    truth: torch.Tensor  # [1, 1, S, S] a lung phantom section (model range), the measured image

    @property
    def size(self) -> int:
        return self.cfg.data.image_size

    @property
    def tag(self) -> str:
        return f"{self.preset} {self.size}x{self.size}"


def lung_section(cfg: RunConfig) -> torch.Tensor:
    """The first held-out lung section of the preset's dataset ``[1, 1, S, S]`` (one image rendered)."""
    data = replace(cfg.data, n_test=1)
    return lookup(DATASETS, data.dataset)(data, "test")[0]["source"][None].float()


def build(preset: str, seed: int = 0) -> Prior:
    """The ``lung_us/prior`` model of ``preset`` with seeded random weights, in eval mode."""
    cfg = get_preset(preset, task=PRIOR)
    torch.manual_seed(seed)
    method = randomize_zero_init(lookup(METHODS, cfg.method)(cfg)).eval()
    return Prior(preset, cfg, method, lung_section(cfg))


def sampler_label(sampler: str, steps: int) -> str:
    """E.g. ``"DDIM-50"``, ``"DPM-Solver++ 2M-20"``."""
    return f"{SAMPLER_NAMES.get(sampler, sampler)}-{steps}"


# --------------------------------------------------------------------------------------
# (g) unconditional generation
# --------------------------------------------------------------------------------------
def generation_arm(p: Prior, batch: int, sampler: str, steps: int, seed: int = 0) -> Callable[[], torch.Tensor]:
    """A call generating one batch ``[batch, 1, S, S]`` from the same ``x_T`` every time."""
    return lambda: p.method.generate(batch, generator=torch.Generator().manual_seed(seed), sampler=sampler,
                                     steps=steps)


def measure_generation(p: Prior, batch: int, ddim_steps: int, fast_steps: int, repeats: int,
                       warmup: int) -> tuple[list[Row], dict[str, float]]:
    """Interleaved DDIM (eta 0) and DPM-Solver++ generation of one batch: rows and arm -> images/s."""
    steps = {"ddim": ddim_steps, "dpmpp": fast_steps}
    label = {s: sampler_label(s, n) for s, n in steps.items()}
    group = f"(g) generate {p.tag}, batch {batch}"
    arms = {s: generation_arm(p, batch, s, n) for s, n in steps.items()}
    times = interleave(arms, repeats, group, warmup=warmup, log=log)
    per_step = {s: [t / steps[s] for t in times[s]] for s in steps}
    ips = {s: batch / statistics.median(times[s]) for s in steps}
    rows = [Row(f"{group}: {label['ddim']} (eta 0) images/s", ips["ddim"], "img/s"),
            Row(f"{group}: {label['dpmpp']} images/s", ips["dpmpp"], "img/s"),
            Row(f"{group}: {label['ddim']} time per step", 1e3 * statistics.median(per_step["ddim"]), "ms"),
            Row(f"{group}: {label['dpmpp']} time per step", 1e3 * statistics.median(per_step["dpmpp"]), "ms"),
            *report_ratio_rows(f"{group} time per step {label['dpmpp']} / {label['ddim']}", per_step["dpmpp"],
                               per_step["ddim"]),
            *report_ratio_rows(f"{group} time {label['ddim']} / {label['dpmpp']} (fast-solver speed-up)",
                               times["ddim"], times["dpmpp"])]
    return rows, {label[s]: v for s, v in ips.items()}


def batching_rows(p: Prior, ips: dict[int, dict[str, float]]) -> list[Row]:
    """Per sampler, images/s at the largest batch over images/s at batch 1 (medians of separate groups)."""
    big = max(ips, default=1)
    if 1 not in ips or big == 1:
        return []
    return [Row(f"(g) generate {p.tag}, batching gain {name}: images/s at batch {big} / at batch 1",
                ips[big][name] / v, "x") for name, v in ips[1].items()]


# --------------------------------------------------------------------------------------
# (r) guided reconstruction
# --------------------------------------------------------------------------------------
def measurement(p: Prior, name: str, seed: int = 0) -> tuple[torch.nn.Module, torch.Tensor]:
    """Operator ``name`` at the prior's size and ``y = A(truth) + noise`` (its default noise std)."""
    op = p.method.operator(name)
    return op, measure(op, p.truth, generator=torch.Generator().manual_seed(seed))


def reconstruction_arm(p: Prior, name: str, scale: float, sampler: str, steps: int,
                       seed: int = 0) -> Callable[[], torch.Tensor]:
    """A call reconstructing the measurement of ``name`` (``scale`` 0: the unguided prior), same ``x_T`` every call."""
    op, y = measurement(p, name, seed)
    return lambda: p.method.reconstruct(y, generator=torch.Generator().manual_seed(seed), operator=op, scale=scale,
                                        steps=steps, sampler=sampler, n_samples=1)


def measure_reconstruction(p: Prior, operators: Sequence[str], scale: float, sampler: str, steps: int,
                           repeats: int, warmup: int) -> list[Row]:
    """Interleaved DPS reconstructions per operator and the unguided prior (batch 1, n_samples 1)."""
    what = sampler_label(sampler, steps) + (" (eta 0)" if sampler == "ddim" else "")
    group = f"(r) reconstruct {p.tag}, batch 1"
    arms = {UNGUIDED: reconstruction_arm(p, operators[0], 0.0, sampler, steps)}
    arms.update({op: reconstruction_arm(p, op, scale, sampler, steps) for op in operators})
    times = interleave(arms, repeats, f"{group}, {what}", warmup=warmup, log=log)
    rows = [Row(f"{group}: {UNGUIDED} {what} (scale 0)", statistics.median(times[UNGUIDED]), "s"),
            Row(f"{group}: {UNGUIDED} time per step", 1e3 * statistics.median(times[UNGUIDED]) / steps, "ms")]
    for op in operators:
        rows += [Row(f"{group}: DPS {op} {what} (scale {scale:g})", statistics.median(times[op]), "s"),
                 Row(f"{group}: DPS {op} time per step", 1e3 * statistics.median(times[op]) / steps, "ms")]
    for op in operators:  # same steps on both sides: the time ratio is the per-step ratio
        rows += report_ratio_rows(f"{group} time per step DPS {op} / {UNGUIDED}", times[op], times[UNGUIDED])
    return rows


# --------------------------------------------------------------------------------------
# (o) operators alone against the network
# --------------------------------------------------------------------------------------
def repeated(fn: Callable[[], object], calls: int) -> Callable[[], None]:
    """``fn`` called ``calls`` times (one timed arm call)."""
    def call() -> None:
        for _ in range(calls):
            fn()
    return call


def operator_calls(op: torch.nn.Module, y: torch.Tensor, x: torch.Tensor) -> tuple[Callable, Callable]:
    """(forward without gradient, forward + backward of ``||y - A(x)||`` w.r.t. ``x``) of one operator."""
    def forward() -> torch.Tensor:
        with torch.no_grad():
            return op(x)

    def forward_backward() -> torch.Tensor:
        xg = x.detach().clone().requires_grad_(True)
        objective = (y - op(xg)).flatten(1).pow(2).sum(1).clamp_min(1e-20).sqrt()  # the guidance objective
        return torch.autograd.grad(objective.sum(), xg)[0]

    return forward, forward_backward


def network_calls(p: Prior, x: torch.Tensor) -> tuple[Callable, Callable]:
    """(one denoiser forward without gradient, forward + backward of ``x0_hat.sum()`` w.r.t. ``x_t``)."""
    t = torch.full((x.shape[0],), p.cfg.diffusion.timesteps // 2)

    def forward() -> object:
        with torch.no_grad():
            return p.method.denoiser(x, t, None)

    def forward_backward() -> torch.Tensor:
        xg = x.detach().clone().requires_grad_(True)
        return torch.autograd.grad(p.method.denoiser(xg, t, None).x0.sum(), xg)[0]

    return forward, forward_backward


def measure_operators(p: Prior, operators: Sequence[str], op_calls: int, net_calls: int, repeats: int,
                      warmup: int) -> list[Row]:
    """ms per call of each operator (forward; forward + backward) and of the network, interleaved."""
    group = f"(o) per call {p.tag}, batch 1"
    x = torch.rand(1, 1, p.size, p.size, generator=torch.Generator().manual_seed(1)) * 2 - 1
    calls: dict[str, int] = {}
    arms: dict[str, Callable[[], None]] = {}
    for name, fns, n in [("network", network_calls(p, x), net_calls),
                         *[(op, operator_calls(*measurement(p, op), x), op_calls) for op in operators]]:
        for kind, fn in zip(("forward", "forward+backward"), fns):
            arms[f"{name} {kind}"], calls[f"{name} {kind}"] = repeated(fn, n), n
    times = interleave(arms, repeats, group, warmup=warmup, log=log)
    per_call = {a: [t / calls[a] for t in ts] for a, ts in times.items()}
    rows = [Row(f"{group}: {a}", 1e3 * statistics.median(v), "ms") for a, v in per_call.items()]
    net = per_call["network forward"]
    rows += report_ratio_rows(f"{group} network forward+backward / network forward",
                              per_call["network forward+backward"], net)
    for op in operators:
        rows += report_ratio_rows(f"{group} {op} forward+backward / network forward",
                                  per_call[f"{op} forward+backward"], net)
    return rows


# --------------------------------------------------------------------------------------
# (p) the paper network, one short round
# --------------------------------------------------------------------------------------
def measure_paper(preset: str, steps: int, sampler: str, scale: float, operator: str = "us_linear") -> list[Row]:
    """Seconds per unguided and per guided step of the ``preset`` prior at batch 1: one round after a 1-step call each."""
    log(f"(p) building the {preset} prior")
    p = build(preset)
    group = f"(p) {p.tag} ({n_parameters(p.method) / 1e6:.1f} M parameters), batch 1, {SAMPLER_NAMES[sampler]}"
    for name, s in ((UNGUIDED, 0.0), (operator, scale)):  # untimed warm-up: one step each
        reconstruction_arm(p, operator, s, sampler, 1)()
    arms = {UNGUIDED: reconstruction_arm(p, operator, 0.0, sampler, steps),
            operator: reconstruction_arm(p, operator, scale, sampler, steps)}
    times = interleave(arms, 1, f"{group}, {steps} steps", warmup=0, log=log)
    unguided, guided = times[UNGUIDED][0] / steps, times[operator][0] / steps
    return [Row(f"{group}: {UNGUIDED} time per step ({steps} steps, one round)", unguided, "s"),
            Row(f"{group}: DPS {operator} time per step ({steps} steps, one round)", guided, "s"),
            Row(f"{group}: time per step DPS {operator} / {UNGUIDED} (one round)", guided / unguided, "x")]


# --------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Plan:
    """Rounds of one run (``--quick`` shrinks them); ``paper_steps`` 0 skips (p)."""

    repeats: int
    warmup: int
    paper_steps: int


def make_plan(quick: bool, repeats: int | None, paper_steps: int | None) -> Plan:
    """Full (5 rounds after one warm-up call, paper network 2 steps) or quick (1 round, no paper network).

    Five rounds rather than translation's three: a round of (g) and (r) is short (tens of
    seconds), so a few more of them make the medians and the IQR worth reading.
    """
    plan = Plan(1, 1, 0) if quick else Plan(5, 1, 2)
    if repeats:
        plan = replace(plan, repeats=repeats)
    if paper_steps is not None:
        plan = replace(plan, paper_steps=paper_steps)
    return plan


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(prog="python -m benchmark.lung_us", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="one round, no paper network (checks the code path)")
    p.add_argument("--out", default="reports/benchmark", help="folder for lung_us.csv / lung_us.md")
    p.add_argument("--preset", default="cpu", help="preset of the lung_us/prior model (default cpu: 64 px)")
    p.add_argument("--only", default=MEASURES, help="subset of the measures: g(eneration), r(econstruction), "
                                                    "o(perators), p(aper network)")
    p.add_argument("--batches", default="1,8", help="generation batch sizes (default 1,8)")
    p.add_argument("--ddim-steps", type=int, default=50, help="DDIM steps of (g) (default 50)")
    p.add_argument("--fast-steps", type=int, default=20, help="DPM-Solver++ 2M steps of (g) (default 20)")
    p.add_argument("--recon-sampler", default=None, help="sampler of (r) and (p) (default: DPS_SAMPLER, ancestral DDPM)")
    p.add_argument("--recon-steps", type=int, default=None, help="steps of (r) (default: the preset's, 50)")
    p.add_argument("--scale", type=float, default=float(DPS_DEFAULTS["scale"]), help="DPS guidance scale (default 10)")
    p.add_argument("--operators", default=",".join(OPERATORS), help="operators of (r) and (o) (default all)")
    p.add_argument("--op-calls", type=int, default=20, help="operator calls per timed arm call in (o)")
    p.add_argument("--net-calls", type=int, default=3, help="network calls per timed arm call in (o)")
    p.add_argument("--paper-preset", default="paper", help="preset of the large network of (p)")
    p.add_argument("--paper-steps", type=int, default=None, help="steps of (p) (default 2; quick 0 = skip)")
    p.add_argument("--repeats", type=int, default=None, help="timed rounds per group (default 5, quick 1)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: the preset's train.num_threads)")
    return p.parse_args(argv)


def selected(operators: str) -> list[str]:
    """The operators named in ``operators`` (all when empty); unknown names are a one-line error."""
    names = [o for o in operators.split(",") if o] or list(OPERATORS)
    unknown = [o for o in names if o not in OPERATORS]
    if unknown:
        raise ValueError(f"unknown operator '{unknown[0]}' (choose from {', '.join(OPERATORS)})")
    return names


def run(args: argparse.Namespace) -> list[Row]:
    """Build the prior and run the selected measures; returns the rows."""
    plan = make_plan(args.quick, args.repeats, args.paper_steps)
    cfg = get_preset(args.preset, task=PRIOR)
    torch.set_num_threads(args.threads or cfg.train.num_threads)
    operators, batches = selected(args.operators), sorted({int(b) for b in args.batches.split(",") if b})
    sampler, steps = args.recon_sampler or DPS_SAMPLER, args.recon_steps or cfg.sample.steps
    log(f"preset {args.preset}, {torch.get_num_threads()} threads, measures {args.only}, plan {plan}")
    p = build(args.preset)
    rows = [Row(f"parameters {PRIOR} {args.preset}", n_parameters(p.method) / 1e6, "M")]
    if "g" in args.only:
        ips: dict[int, dict[str, float]] = {}
        for batch in batches:
            group_rows, ips[batch] = measure_generation(p, batch, args.ddim_steps, args.fast_steps, plan.repeats,
                                                        plan.warmup)
            rows += group_rows
        rows += batching_rows(p, ips)
    if "r" in args.only:
        rows += measure_reconstruction(p, operators, args.scale, sampler, steps, plan.repeats, plan.warmup)
    if "o" in args.only:
        rows += measure_operators(p, operators, args.op_calls, args.net_calls, plan.repeats, plan.warmup)
    if "p" in args.only and plan.paper_steps > 0:
        rows += measure_paper(args.paper_preset, plan.paper_steps, sampler, args.scale)
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: run, write the CSV and markdown, print the table (:func:`benchmark.harness.run_benchmark`)."""
    return run_benchmark(argv, parse_args=parse_args, run=run, name=NAME, title=TITLE, module="benchmark.lung_us",
                         method="Random weights (speed does not depend on training); times are medians over "
                                "interleaved rounds, ratios medians of per-round ratios; see benchmark/lung_us.py.")


if __name__ == "__main__":
    sys.exit(main())

"""Speed benchmark of medgen's default UNet, samplers and training loop (CPU, fp32).

Run ``python -m benchmark.speed [--quick] [--out reports/benchmark]``; it writes
``speed.csv`` and ``speed.md`` (columns ``measure,value,unit,goal,holds``) and prints the table.

Method
------
The machine is shared and noisy, so every goal is a *ratio of two things timed in the same
run*. The two (or more) things compared are run as alternating "arms": round ``r`` runs
every arm once, in forward order on even rounds and reversed order on odd rounds (so a slow
drift hits both sides equally), after one untimed warm-up call of each arm. A ratio is the
median over rounds of the per-round ratio; absolute times are medians over rounds. Beside
each goal ratio two rows say how far to trust it: the interquartile range of the per-round
ratios, and the ratio of the fastest rounds (noise on a shared machine only slows a run
down, so the minima are the least disturbed samples). All sampling is under
``torch.inference_mode``; torch uses the preset's thread count.

The model is ``UNet(get_preset(preset, "quickstart").model)`` (default preset ``cpu``) at the
image size of that preset's data config, batch 16, with the preset's noise schedule and
parameterization, wrapped in medgen's ``Denoiser``; the condition is a batch of toy test images.

(a) Sampler overhead: time of ``ddim_sample`` with N steps divided by the time of N calls of
    the Denoiser on the same batch and the same N timesteps (no sampler arithmetic). Goal <= 1.03.
(b) medgen vs diffusers DDIM: diffusers' ``DDIMScheduler`` (the same betas, prediction type,
    trailing spacing, x0 clipping, final alpha 1, eta 0) driven by a plain loop calling the
    same network, against ``ddim_sample`` with the Denoiser, from the same x_T. Ratio
    diffusers_time / medgen_time, goal >= 1.0; the max abs difference of the two outputs is a
    row (goal <= 1e-3, i.e. below one 8-bit grey level 2/255 of the [-1, 1] range). As the two
    loops differ only outside the network, each loop's own cost per step is also timed with a
    negligible stand-in network (``0.5 x``; fastest of 50 runs).
(c) Training throughput: ``medgen.train.fit`` on the preset's training split (EMA and gradient
    clipping as the preset configures them) against a plain loop (same UNet config, the same
    in-memory batch, default ``torch.optim.AdamW`` with the preset's lr/betas/weight decay,
    the same v/eps/x0 MSE loss written out by hand). fit's per-step time is the interval
    between consecutive ``training_step`` calls (a wrapper records them), which covers data
    loading, forward, backward, clipping, the optimiser, EMA and logging, but not set-up or
    the final checkpoint; fit runs at the same thread count. To show where the time goes, the
    plain loop also runs with the preset's clipping + EMA (the same work as fit; its phases
    forward+backward, clip, AdamW and EMA timed separately), and with that plus the method's
    own ``training_step`` as the loss; the differences between these arms split fit's extra
    time into clip/EMA, the method's loss path and fit's own loop. Blocks of 10 steps
    alternate between the arms; per block the median step time. Goal: fit / plain >= 0.95.
(d) Achieved GFLOP/s: FLOPs of one UNet forward counted by ``FlopCounterMode`` (convs,
    matmuls and attention; a multiply-add is 2 FLOPs) over its median time, against the
    measured GFLOP/s of a square fp32 ``torch.mm`` timed alternately with it. Report only.
(e) Fast-solver NFE: a quickstart model from ``train_or_load(get_preset("smoke"), root="runs")``
    translates the whole toy test split with DDIM-50 and with DPM-Solver++ (2M) at each NFE of
    the grid, every run from the same x_T (the same generator seed; ``translate`` draws x_T
    first). NFE is counted by a hook on the network. Reported: mean PSNR (data_range 2) per
    run, and the smallest NFE whose PSNR is within 0.2 dB of DDIM-50's (two-sided,
    ``|dPSNR| <= 0.2``): goal <= 25. Two-sided because few-step samples are smoother and score
    *higher* PSNR than converged ones (PSNR rewards blur towards the posterior mean), so a
    one-sided "at least DDIM-50 - 0.2 dB" rule is met trivially by the coarsest solve; that
    one-sided NFE is reported beside it for the reader who wants "no worse in PSNR".
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler
from torch import nn
from torch.utils.data import Dataset
from torch.utils.flop_counter import FlopCounterMode

from benchmark.harness import (Row, goal_row, interleave, logger, n_parameters, paired_diff, paired_ratio,
                               randomize_zero_init, ratio_rows, run_benchmark, timed)
import medgen.data  # noqa: F401 -- fills DATASETS
import medgen.methods  # noqa: F401 -- fills METHODS
from medgen.config import RunConfig, get_preset
from medgen.data.batch import Batch, collate
from medgen.diffusion.parameterization import Denoiser
from medgen.diffusion.samplers import ddim_sample
from medgen.diffusion.schedules import NoiseSchedule, respace
from medgen.metrics.image import psnr
from medgen.nn.unet import Condition, UNet
from medgen.registry import DATASETS, METHODS, lookup
from medgen.train import fit, train_or_load

FULL_NFES = (5, 8, 10, 15, 20, 25, 30, 50)
QUICK_NFES = (5, 10, 20)
PSNR_TOLERANCE_DB = 0.2
REFERENCE_STEPS = 50
PLAIN_PHASES = ("fwd_bwd", "clip", "adamw", "ema")  # timed parts of a plain-loop step
PREDICTION_TO_DIFFUSERS = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}


log = logger("speed")  # progress lines on stdout


# --------------------------------------------------------------------------------------
# The benchmarked model
# --------------------------------------------------------------------------------------
@dataclass
class SpeedSetup:
    """The UNet under test, its Denoiser and one fixed batch (``x_T``, condition, target)."""

    cfg: RunConfig
    net: nn.Module
    denoiser: Denoiser
    x_T: torch.Tensor  # [B, out_channels, S, S]
    source: torch.Tensor  # [B, cond_image_channels, S, S]
    target: torch.Tensor  # [B, out_channels, S, S]

    @property
    def batch_size(self) -> int:
        return self.x_T.shape[0]

    def cond(self, image: torch.Tensor | None = None) -> Condition:
        """The network condition for the batch (channel-concatenated source image)."""
        return Condition(image=self.source if image is None else image)


def fixed_batch(cfg: RunConfig, batch_size: int) -> Batch:
    """``batch_size`` toy test samples (cycled if the split is smaller)."""
    dataset = lookup(DATASETS, cfg.data.dataset)(cfg.data, "test")
    return collate([dataset[i % len(dataset)] for i in range(batch_size)])


def build_setup(preset: str, batch_size: int, seed: int = 0) -> SpeedSetup:
    """The default UNet of ``preset`` (quickstart task) with random init, and its batch."""
    cfg = get_preset(preset, "quickstart")
    torch.manual_seed(seed)
    net = randomize_zero_init(UNet(cfg.model)).eval()
    schedule = NoiseSchedule.from_config(cfg.diffusion)
    denoiser = Denoiser(net, schedule, prediction=cfg.diffusion.prediction, clip_x0=cfg.diffusion.clip_x0)
    batch = fixed_batch(cfg, batch_size)
    generator = torch.Generator().manual_seed(seed)
    x_T = torch.randn(batch.target.shape, generator=generator)
    return SpeedSetup(cfg, net, denoiser, x_T, batch.source, batch.target)


# --------------------------------------------------------------------------------------
# (a) sampler overhead
# --------------------------------------------------------------------------------------
def measure_sampler_overhead(s: SpeedSetup, steps: int, repeats: int) -> list[Row]:
    """time(N-step DDIM) / (N x time(one Denoiser forward)), same batch and timesteps."""
    timesteps = respace(s.cfg.diffusion.timesteps, steps, s.cfg.sample.spacing)
    cond = s.cond()
    t_batches = [t.repeat(s.batch_size) for t in timesteps]

    def sample() -> None:
        ddim_sample(s.denoiser, s.x_T, timesteps, cond, eta=0.0)

    def forwards() -> None:
        for t in t_batches:
            s.denoiser(s.x_T, t, cond)

    with torch.inference_mode():
        times = interleave({"ddim": sample, "forwards": forwards}, repeats, f"(a) DDIM-{steps} vs {steps} forwards",
                           log=log)
    return [
        Row(f"(a) DDIM-{steps} sample, batch {s.batch_size}", statistics.median(times["ddim"]), "s"),
        Row("(a) one UNet forward via Denoiser", 1e3 * statistics.median(times["forwards"]) / steps, "ms"),
        *ratio_rows("(a) sampler overhead: DDIM time / (N x forward time)", times["ddim"], times["forwards"],
                    "<=", 1.03),
    ]


# --------------------------------------------------------------------------------------
# (b) medgen DDIM vs diffusers DDIMScheduler
# --------------------------------------------------------------------------------------
def diffusers_scheduler(s: SpeedSetup) -> DDIMScheduler:
    """A diffusers DDIMScheduler configured like medgen's DDIM (same betas, spacing, clipping, final alpha 1)."""
    d = s.cfg.diffusion
    scheduler = DDIMScheduler(
        num_train_timesteps=d.timesteps,
        trained_betas=s.denoiser.schedule.betas.numpy(),
        prediction_type=PREDICTION_TO_DIFFUSERS[d.prediction],
        clip_sample=d.clip_x0,
        clip_sample_range=1.0,
        set_alpha_to_one=True,
        steps_offset=0,
        timestep_spacing=s.cfg.sample.spacing,
    )
    return scheduler


def diffusers_ddim(s: SpeedSetup, scheduler: DDIMScheduler, use_clipped_eps: bool, steps: int,
                   cond: Condition) -> torch.Tensor:
    """Deterministic DDIM with diffusers' scheduler driving the raw network: x_T -> x_0."""
    scheduler.set_timesteps(steps)
    x = s.x_T
    for t in scheduler.timesteps:
        out = s.net(x, t.repeat(s.batch_size), cond)
        x = scheduler.step(out, t, x, eta=0.0, use_clipped_model_output=use_clipped_eps).prev_sample
    return x


def medgen_clips_eps(s: SpeedSetup) -> bool:
    """Whether medgen's Denoiser re-derives eps from the clipped x0 (diffusers' use_clipped_model_output)."""
    x = torch.full_like(s.x_T[:1], 3.0)  # far outside [-1, 1]: x0 will be clipped
    t = torch.tensor([s.cfg.diffusion.timesteps // 2])
    with torch.inference_mode():
        pred = s.denoiser(x, t, s.cond(s.source[:1]))
        a = s.denoiser.schedule.alphas_cumprod[t].float().view(-1, 1, 1, 1)
        eps_from_x0 = (x - a.sqrt() * pred.x0) / (1 - a).sqrt()
    return bool(torch.allclose(pred.eps, eps_from_x0, atol=1e-4))


def measure_vs_diffusers(s: SpeedSetup, steps: int, repeats: int) -> list[Row]:
    """diffusers_time / medgen_time for N-step DDIM (eta 0), and max |output difference|."""
    clipped = medgen_clips_eps(s)
    scheduler = diffusers_scheduler(s)
    timesteps = respace(s.cfg.diffusion.timesteps, steps, s.cfg.sample.spacing)
    scheduler.set_timesteps(steps)
    if not torch.equal(scheduler.timesteps.long(), timesteps.long()):
        log(f"(b) WARNING timesteps differ: diffusers {scheduler.timesteps.tolist()} medgen {timesteps.tolist()}")
    cond = s.cond()
    outs: dict[str, torch.Tensor] = {}

    def medgen() -> None:
        outs["medgen"] = ddim_sample(s.denoiser, s.x_T, timesteps, cond, eta=0.0)

    def diffusers() -> None:
        outs["diffusers"] = diffusers_ddim(s, scheduler, clipped, steps, cond)

    with torch.inference_mode():
        times = interleave({"medgen": medgen, "diffusers": diffusers}, repeats,
                           f"(b) DDIM-{steps} medgen vs diffusers", log=log)
    diff = (outs["medgen"] - outs["diffusers"]).abs().max().item()
    return [
        Row(f"(b) diffusers DDIMScheduler loop DDIM-{steps}", statistics.median(times["diffusers"]), "s"),
        *ratio_rows("(b) speed ratio diffusers_time / medgen_time", times["diffusers"], times["medgen"], ">=", 1.0),
        goal_row("(b) max |medgen - diffusers| output", diff, "model range", "<=", 1e-3),
        *loop_cost_rows(s, scheduler, clipped, steps),
    ]


class NullNet(nn.Module):
    """A stand-in network with negligible cost (``0.5 x``), to time a sampler loop's own work."""

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: object = None) -> torch.Tensor:
        return 0.5 * x


def loop_cost_rows(s: SpeedSetup, scheduler: DDIMScheduler, clipped: bool, steps: int, repeats: int = 50) -> list[Row]:
    """Per-step cost of each DDIM loop without the network (the only part in which the two differ)."""
    null = NullNet()
    denoiser = Denoiser(null, s.denoiser.schedule, prediction=s.denoiser.prediction, clip_x0=s.denoiser.clip_x0)
    null_setup = replace(s, net=null, denoiser=denoiser)
    timesteps = respace(s.cfg.diffusion.timesteps, steps, s.cfg.sample.spacing)
    arms = {"medgen": lambda: ddim_sample(denoiser, s.x_T, timesteps, None, eta=0.0),
            "diffusers": lambda: diffusers_ddim(null_setup, scheduler, clipped, steps, None)}
    with torch.inference_mode():
        times = {k: [timed(fn) for _ in range(repeats)] for k, fn in arms.items()}
    return [Row(f"(b) {name} DDIM loop cost per step without the network", 1e3 * min(v) / steps, "ms")
            for name, v in times.items()]


# --------------------------------------------------------------------------------------
# (c) training throughput: fit() vs a plain loop
# --------------------------------------------------------------------------------------
def handwritten_loss(net: nn.Module, alphas_cumprod: torch.Tensor, prediction: str, source: torch.Tensor,
                     x0: torch.Tensor) -> torch.Tensor:
    """MSE between the network output and its target (eps, x0 or v) at uniform random t, in a few lines.

    ``alphas_cumprod``: float32 ``[T]``; ``source`` ``[B, C_s, *S]`` (the condition); ``x0`` ``[B, C, *S]``.
    """
    t = torch.randint(0, alphas_cumprod.shape[0], (x0.shape[0],))
    noise = torch.randn_like(x0)
    a = alphas_cumprod[t].view(-1, *([1] * (x0.dim() - 1)))
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
    target = {"eps": noise, "x0": x0, "v": a.sqrt() * noise - (1 - a).sqrt() * x0}[prediction]
    return F.mse_loss(net(x_t, t, Condition(image=source)), target)


@dataclass
class PlainTrainer:
    """A plain PyTorch training loop on one fixed batch: default AdamW, a loss function, optional clip/EMA."""

    params: list[nn.Parameter]
    loss: Callable[[], torch.Tensor]
    optimizer: torch.optim.Optimizer
    ema: list[torch.Tensor]
    ema_decay: float

    @classmethod
    def create(cls, params: list[nn.Parameter], loss: Callable[[], torch.Tensor], s: SpeedSetup) -> "PlainTrainer":
        """AdamW with the preset's lr / betas / weight decay; the EMA copy starts at the weights."""
        tc = s.cfg.train
        opt = torch.optim.AdamW(params, lr=tc.lr, betas=tc.betas, weight_decay=tc.weight_decay)
        return cls(params, loss, opt, [p.detach().clone() for p in params], tc.ema_decay)

    @classmethod
    def handwritten(cls, s: SpeedSetup, seed: int = 0) -> "PlainTrainer":
        """A fresh UNet of the preset trained with :func:`handwritten_loss` on the fixed batch."""
        torch.manual_seed(seed)
        net = UNet(s.cfg.model).train()
        ac = s.denoiser.schedule.alphas_cumprod.float()
        loss = partial(handwritten_loss, net, ac, s.cfg.diffusion.prediction, s.source, s.target)
        return cls.create(list(net.parameters()), loss, s)

    @classmethod
    def method_loss(cls, s: SpeedSetup, batch: Batch, seed: int = 0) -> "PlainTrainer":
        """A fresh method of the preset trained with its own ``training_step`` loss on ``batch``."""
        torch.manual_seed(seed)
        method = lookup(METHODS, s.cfg.method)(s.cfg).train()
        group, params = next(iter(method.param_groups().items()))
        generator = torch.Generator().manual_seed(seed)
        return cls.create(list(params), lambda: method.training_step(batch, group, generator)["loss"], s)

    def step(self, clip: float, ema: bool) -> dict[str, float]:
        """One optimiser step; ``clip`` > 0 clips the global grad norm, ``ema`` updates the EMA copy.

        Returns the seconds of each phase: ``fwd_bwd``, ``clip``, ``adamw``, ``ema`` and ``total``.
        """
        stamps = [time.perf_counter()]
        self.optimizer.zero_grad(set_to_none=True)
        self.loss().backward()
        stamps.append(time.perf_counter())
        if clip > 0:
            nn.utils.clip_grad_norm_(self.params, clip)
        stamps.append(time.perf_counter())
        self.optimizer.step()
        stamps.append(time.perf_counter())
        if ema:
            with torch.no_grad():
                for e, p in zip(self.ema, self.params):
                    e.lerp_(p, 1.0 - self.ema_decay)
        stamps.append(time.perf_counter())
        phases = dict(zip(PLAIN_PHASES, (b - a for a, b in zip(stamps, stamps[1:]))))
        return {**phases, "total": stamps[-1] - stamps[0]}

    def run(self, steps: int, clip: float, ema: bool) -> list[dict[str, float]]:
        """Phase seconds of each of ``steps`` steps."""
        return [self.step(clip, ema) for _ in range(steps)]


class StepClock:
    """Records a timestamp at every ``training_step`` call of a method (wraps the bound method)."""

    def __init__(self, method: nn.Module) -> None:
        self.stamps: list[float] = []
        inner = method.training_step

        def training_step(*args, **kwargs):
            self.stamps.append(time.perf_counter())
            return inner(*args, **kwargs)

        object.__setattr__(method, "training_step", training_step)

    def intervals(self) -> list[float]:
        """Seconds between consecutive calls."""
        return [b - a for a, b in zip(self.stamps, self.stamps[1:])]


def fit_step_times(cfg: RunConfig, dataset: Dataset, steps: int, seed: int = 0) -> list[float]:
    """Per-step seconds of ``medgen.train.fit`` over ``steps`` steps (first interval dropped)."""
    torch.manual_seed(seed)
    method = lookup(METHODS, cfg.method)(cfg)
    clock = StepClock(method)
    calls_per_step = max(1, len(method.param_groups())) * cfg.train.grad_accum
    # The plain loop's thread count, so both sides of the ratio run with the same threads.
    train_cfg = replace(cfg.train, steps=steps, ckpt_every=0, sample_every=0, num_threads=torch.get_num_threads())
    with tempfile.TemporaryDirectory(prefix="medgen-speed-fit-") as tmp:
        fit(method, dataset, train_cfg, out_dir=Path(tmp) / "run", seed=seed, resume=False, progress=False)
    per_call = clock.intervals()[calls_per_step:]  # drop the first step (warm-up)
    return [sum(per_call[i:i + calls_per_step]) for i in range(0, len(per_call) - calls_per_step + 1, calls_per_step)]


StepTimes = list[dict[str, float]]  # per step: phase -> seconds (at least "total")


def training_arms(s: SpeedSetup, dataset: Dataset, steps: int) -> dict[str, Callable[[], StepTimes]]:
    """Block-level arms of (c); each returns the step times of one block (its first step dropped)."""
    tc = s.cfg.train
    clip, ema = tc.grad_clip, tc.ema_decay > 0
    plain = PlainTrainer.handwritten(s)
    train_batch = collate([dataset[i % len(dataset)] for i in range(tc.batch_size)])
    with_method = PlainTrainer.method_loss(s, train_batch)
    return {
        "plain": lambda: plain.run(steps, clip=0.0, ema=False)[1:],
        "same_work": lambda: plain.run(steps, clip=clip, ema=ema)[1:],
        "method_loss": lambda: with_method.run(steps, clip=clip, ema=ema)[1:],
        "fit": lambda: [{"total": t} for t in fit_step_times(s.cfg, dataset, steps + 1)],
    }


def run_training_rounds(arms: Mapping[str, Callable[[], StepTimes]], rounds: int) -> dict[str, list[dict[str, float]]]:
    """Per round and arm, the median seconds of every phase; arm order alternates per round (after a warm-up)."""
    names = list(arms)
    for name in names:
        arms[name]()
    medians: dict[str, list[dict[str, float]]] = {n: [] for n in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            steps = arms[name]()
            medians[name].append({k: statistics.median(st[k] for st in steps) for k in steps[0]})
        log(f"(c) round {r + 1}/{rounds}: "
            + ", ".join(f"{n} {medians[n][-1]['total'] * 1e3:.0f} ms/step" for n in names))
    return medians


def measure_training(s: SpeedSetup, steps: int, rounds: int) -> list[Row]:
    """Images/s of fit() vs plain loops, their ratios, and where the time goes."""
    tc = s.cfg.train
    log(f"(c) building the {s.cfg.data.dataset} train split (n={s.cfg.data.n_train})")
    dataset = lookup(DATASETS, s.cfg.data.dataset)(s.cfg.data, "train")
    med = run_training_rounds(training_arms(s, dataset, steps), rounds)
    total = {n: [m["total"] for m in v] for n, v in med.items()}
    ips = {n: tc.batch_size / statistics.median(v) for n, v in total.items()}
    same = f"plain + clip {tc.grad_clip:g} + EMA {tc.ema_decay:g}"
    rows = [
        Row("(c) train images/s, plain loop (AdamW only)", ips["plain"], "img/s"),
        Row(f"(c) train images/s, {same}", ips["same_work"], "img/s"),
        Row(f"(c) train images/s, {same}, loss = method.training_step", ips["method_loss"], "img/s"),
        Row("(c) train images/s, medgen.train.fit", ips["fit"], "img/s"),
        *ratio_rows("(c) fit / plain loop throughput", total["plain"], total["fit"], ">=", 0.95),
        Row(f"(c) fit / {same} throughput (same work)", paired_ratio(total["same_work"], total["fit"]), "x"),
    ]
    for phase in PLAIN_PHASES:
        ms = 1e3 * statistics.median(m[phase] for m in med["same_work"])
        rows.append(Row(f"(c) {same} step: {phase}", ms, "ms"))
    fwd_bwd = {n: [m["fwd_bwd"] for m in med[n]] for n in ("same_work", "method_loss")}
    rows += [
        Row("(c) step time added by method.training_step over the hand-written loss (fwd+bwd)",
            1e3 * paired_diff(fwd_bwd["method_loss"], fwd_bwd["same_work"]), "ms"),
        Row("(c) step time added by fit over the same loop with method.training_step",
            1e3 * paired_diff(total["fit"], total["method_loss"]), "ms"),
    ]
    return rows


# --------------------------------------------------------------------------------------
# (d) achieved GFLOP/s
# --------------------------------------------------------------------------------------
def forward_flops(s: SpeedSetup) -> int:
    """FLOPs of one UNet forward on the batch, counted by FlopCounterMode."""
    t = torch.full((s.batch_size,), s.cfg.diffusion.timesteps // 2)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        s.net(s.x_T, t, s.cond())
    return int(counter.get_total_flops())


def measure_flops(s: SpeedSetup, repeats: int, mm_size: int) -> list[Row]:
    """UNet forward GFLOP/s vs square fp32 matmul GFLOP/s, timed alternately."""
    flops = forward_flops(s)
    t = torch.full((s.batch_size,), s.cfg.diffusion.timesteps // 2)
    cond = s.cond()
    a, b = torch.randn(mm_size, mm_size), torch.randn(mm_size, mm_size)
    arms = {"unet": lambda: s.net(s.x_T, t, cond), "mm": lambda: torch.mm(a, b)}
    with torch.inference_mode():
        times = interleave(arms, repeats, f"(d) UNet forward vs mm {mm_size}^2", log=log)
    unet_gflops = flops / statistics.median(times["unet"]) / 1e9
    mm_gflops = 2 * mm_size**3 / statistics.median(times["mm"]) / 1e9
    fraction = statistics.median(flops / u / (2 * mm_size**3 / m) for u, m in zip(times["unet"], times["mm"]))
    return [
        Row(f"(d) UNet forward FLOPs per image ({s.x_T.shape[-1]} px)", flops / s.batch_size / 1e9, "GFLOP"),
        Row(f"(d) UNet forward achieved, batch {s.batch_size}", unet_gflops, "GFLOP/s"),
        Row(f"(d) fp32 torch.mm {mm_size}x{mm_size} achieved", mm_gflops, "GFLOP/s"),
        Row("(d) UNet / matmul GFLOP/s fraction", fraction, "fraction"),
    ]


# --------------------------------------------------------------------------------------
# (e) NFE of DPM-Solver++ to match DDIM-50 PSNR
# --------------------------------------------------------------------------------------
class NFECounter:
    """Counts forward calls of every UNet inside a module (hooks; remove with :meth:`close`)."""

    def __init__(self, module: nn.Module) -> None:
        self.calls = 0
        nets = [m for m in module.modules() if isinstance(m, UNet)]
        self.handles = [m.register_forward_pre_hook(self._hook) for m in nets]

    def _hook(self, *_: object) -> None:
        self.calls += 1

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def translate_psnr(method: nn.Module, batch: Batch, seed: int, **options) -> tuple[float, int]:
    """Mean PSNR (data_range 2) of ``method.translate`` on ``batch`` from the x_T of ``seed``; and its NFE."""
    counter = NFECounter(method)
    try:
        with torch.inference_mode():
            pred = method.translate(batch.source, generator=torch.Generator().manual_seed(seed), **options)
    finally:
        counter.close()
    return float(psnr(pred, batch.target, data_range=2.0).mean()), counter.calls


def smallest_nfe(psnrs: Mapping[int, float], reference: float, two_sided: bool) -> float:
    """Smallest NFE within PSNR_TOLERANCE_DB of ``reference`` (NaN if none)."""
    for nfe in sorted(psnrs):
        gap = psnrs[nfe] - reference
        if (abs(gap) if two_sided else -gap) <= PSNR_TOLERANCE_DB:
            return float(nfe)
    return math.nan


def measure_fast_solver(preset: str, root: str, nfes: Sequence[int], seed: int = 0) -> list[Row]:
    """PSNR of DDIM-50 and DPM-Solver++ at each NFE on the toy test split, same x_T."""
    cfg = get_preset(preset, "quickstart")
    log(f"(e) train_or_load quickstart/{preset} under {root}/ (cached by config hash)")
    method = train_or_load(cfg, root=root).eval()
    dataset = lookup(DATASETS, cfg.data.dataset)(cfg.data, "test")
    batch = collate([dataset[i] for i in range(len(dataset))])
    base = float(psnr(batch.source, batch.target, data_range=2.0).mean())
    ref, ref_nfe = translate_psnr(method, batch, seed, sampler="ddim", steps=REFERENCE_STEPS, eta=0.0)
    log(f"(e) DDIM-{REFERENCE_STEPS}: {ref:.3f} dB ({ref_nfe} network calls); source input {base:.3f} dB")
    rows = [Row(f"(e) PSNR source input (trivial baseline), n={len(batch)}", base, "dB"),
            Row(f"(e) PSNR DDIM-{REFERENCE_STEPS}", ref, "dB")]
    psnrs: dict[int, float] = {}
    for nfe in nfes:
        psnrs[nfe], calls = translate_psnr(method, batch, seed, sampler="dpmpp", steps=nfe)
        log(f"(e) dpmpp NFE {nfe}: {psnrs[nfe]:.3f} dB ({calls} network calls)")
        rows.append(Row(f"(e) PSNR dpmpp NFE={nfe} ({calls} net calls)", psnrs[nfe], "dB"))
    rows.append(goal_row(f"(e) smallest dpmpp NFE with |PSNR - DDIM-{REFERENCE_STEPS}| <= 0.2 dB",
                         smallest_nfe(psnrs, ref, two_sided=True), "NFE", "<=", 25))
    rows.append(Row(f"(e) smallest dpmpp NFE with PSNR >= DDIM-{REFERENCE_STEPS} - 0.2 dB",
                    smallest_nfe(psnrs, ref, two_sided=False), "NFE"))
    return rows


# --------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Plan:
    """Sizes of one benchmark run (``--quick`` shrinks them)."""

    steps: int
    repeats: int
    train_steps: int
    train_rounds: int
    mm_size: int
    nfes: tuple[int, ...]


def make_plan(quick: bool, steps: int | None = None, repeats: int | None = None) -> Plan:
    """Full or quick sizes; ``steps`` overrides N of (a) and (b), ``repeats`` every round count."""
    plan = Plan(4, 3, 4, 2, 512, QUICK_NFES) if quick else Plan(20, 15, 10, 5, 2048, FULL_NFES)
    if steps:
        plan = replace(plan, steps=steps)
    if repeats:
        plan = replace(plan, repeats=repeats, train_rounds=repeats)
    return plan


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(prog="python -m benchmark.speed", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="few repeats and steps (development)")
    p.add_argument("--out", default="reports/benchmark", help="folder for speed.csv / speed.md")
    p.add_argument("--preset", default="cpu", help="quickstart preset whose UNet is timed (a-d)")
    p.add_argument("--quality-preset", default="smoke", help="quickstart preset trained/loaded for (e)")
    p.add_argument("--root", default="runs", help="train_or_load cache folder for (e)")
    p.add_argument("--batch", type=int, default=16, help="batch size of (a), (b), (d)")
    p.add_argument("--steps", type=int, default=None, help="DDIM steps N of (a), (b) (default 20; quick 4)")
    p.add_argument("--repeats", type=int, default=None, help="timed rounds of every measure (default 9, quick 3)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: the preset's train.num_threads)")
    p.add_argument("--only", default="abcde", help="subset of the measures to run, e.g. 'ab'")
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> list[Row]:
    """Run the selected measures and return their rows."""
    plan = make_plan(args.quick, args.steps, args.repeats)
    cfg = get_preset(args.preset, "quickstart")
    torch.set_num_threads(args.threads or cfg.train.num_threads)
    log(f"preset {args.preset}: UNet {cfg.model.channels}, {cfg.data.image_size} px, batch {args.batch}, "
        f"{torch.get_num_threads()} threads, plan {plan}")
    s = build_setup(args.preset, args.batch)
    rows = [Row(f"UNet parameters ({args.preset} preset)", n_parameters(s.net) / 1e6, "M")]
    if "a" in args.only:
        rows += measure_sampler_overhead(s, plan.steps, plan.repeats)
    if "b" in args.only:
        rows += measure_vs_diffusers(s, plan.steps, plan.repeats)
    if "c" in args.only:
        rows += measure_training(s, plan.train_steps, plan.train_rounds)
    if "d" in args.only:
        rows += measure_flops(s, plan.repeats, plan.mm_size)
    if "e" in args.only:
        rows += measure_fast_solver(args.quality_preset, args.root, plan.nfes)
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: run, write the CSV and markdown, print the table."""
    return run_benchmark(argv, parse_args=parse_args, run=run, name="speed", title="Speed benchmark",
                         module="benchmark.speed")


if __name__ == "__main__":
    sys.exit(main())
